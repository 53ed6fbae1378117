"""Attendance exports: CSV rows (one per person per session) and a FHIR R4 Bundle of Encounters.

The CSV carries what a telehealth claim needs (DESIGN.md, "Telehealth records"): actual first
join and last leave, minutes by modality, modifier 95 for any audio-video minutes or else 93 for
audio-only minutes (93 needs a reason, so ``modality_note`` is left for staff to fill in), place
of service 10 when the patient checked in at home and 02 otherwise, and the billing code the
record supports (a family session is 90847 when the patient attended, 90846 without them).
Times are ISO 8601 with the program time zone's offset. ``parse_csv`` reads the rows back.

The FHIR Bundle (type ``collection``) holds one Encounter per patient per session: each patient's
encounter names only that patient and the session's staff and family members, never the other
group members (42 CFR Part 2). ``export_attendance`` loads, formats and audits one export.

Every export carries the 42 CFR § 2.32 notice that must accompany a disclosure of Part 2
records: the CSV's first line is the notice (``REDISCLOSURE_NOTICE``, one quoted cell, then the
header), and the Bundle and each Encounter carry ``meta.security`` labels: confidentiality
``R`` (restricted) and the ``42CFRPart2`` privacy law, with the notice's text in the Bundle's
``meta.tag``.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import io
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from vio import audit_chain
from vio.attendance.intervals import SECONDS_PER_MINUTE, AttendanceStatus
from vio.attendance.records import (
    PersonRecord,
    SessionAttendance,
    person_names,
    records_between,
)
from vio.models import Program, SessionKind, SessionStatus, StaffUser

MODIFIER_AUDIO_VIDEO = "95"
MODIFIER_AUDIO_ONLY = "93"
PLACE_OF_SERVICE_HOME = "10"
PLACE_OF_SERVICE_ELSEWHERE = "02"
PATIENT_ROLE = "patient"
THERAPIST_ROLE = "therapist"

CPT_SYSTEM = "http://www.ama-assn.org/go/cpt"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
VIRTUAL_ENCOUNTER = "VR"
PARTICIPATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
PRIMARY_PERFORMER = "PPRF"
PARTICIPANT = "PART"
UCUM = "http://unitsofmeasure.org"
ENCOUNTER_NAMESPACE = uuid.UUID("6f1c1a52-3f0e-4d3c-9a57-1e0f0c3b7a10")

# 42 CFR § 2.32(a)(1), as amended in 2024: the statement that accompanies each disclosure.
REDISCLOSURE_NOTICE = (
    "This record which has been disclosed to you is protected by Federal confidentiality rules "
    "(42 CFR part 2). These rules prohibit you from using or disclosing this record, or "
    "testimony that describes the information contained in this record, in any civil, "
    "criminal, administrative, or legislative proceedings by any Federal, State, or local "
    "authority, against the patient, unless authorized by the consent of the patient, except "
    "as provided at 42 CFR 2.12(c)(5) or as authorized by a court in accordance with 42 CFR "
    "2.64 or 2.65. In addition, the Federal rules prohibit you from making any other use or "
    "disclosure of this record unless at least one of the following applies: (i) Further use "
    "or disclosure is expressly permitted by the written consent of the individual whose "
    "information is being disclosed in this record or as otherwise permitted by 42 CFR part "
    "2. (ii) You are a covered entity or business associate and have received the record for "
    "treatment, payment, or health care operations, or (iii) You have received the record "
    "from a covered entity or business associate as permitted by 45 CFR part 164, subparts A "
    "and E. A general authorization for the release of medical or other information is NOT "
    "sufficient to meet the required elements of written consent to further use or redisclose "
    "the record (see 42 CFR 2.31).")
CONFIDENTIALITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
PART2_SECURITY = [
    {"system": CONFIDENTIALITY_SYSTEM, "code": "R", "display": "restricted"},
    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "42CFRPart2",
     "display": "42 CFR Part2"},
]
NOTICE_TAG_SYSTEM = "urn:vio:notice"
SESSION_TITLE_URL = "urn:vio:session-title"  # the session's title, on each Encounter

SERVICE_NAMES = {
    SessionKind.GROUP: "Group psychotherapy",
    SessionKind.INDIVIDUAL: "Individual psychotherapy",
    SessionKind.FAMILY: "Family psychotherapy",
    SessionKind.MULTI_FAMILY: "Multiple-family group psychotherapy",
}
# Cells a spreadsheet would run as a formula are written with a leading apostrophe.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
ESCAPE = "'"


class ExportFormat(enum.StrEnum):
    CSV = "csv"
    FHIR = "fhir"


@dataclass(frozen=True)
class AttendanceRow:
    """One person at one session, as exported."""

    session_id: int
    title: str
    kind: SessionKind
    code: str  # the session's billing-code hint when it was scheduled
    session_status: SessionStatus
    person: str
    role: str
    patient_id: int | None
    scheduled_start: datetime
    scheduled_end: datetime
    first_join: datetime | None
    last_leave: datetime | None
    attended_minutes: int
    audio_video_minutes: int
    audio_only_minutes: int
    check_in_location: str
    status: AttendanceStatus
    modifier: str
    modality_note: str
    place_of_service: str
    billing_code: str  # the code this record supports
    name: str = ""  # what staff call the person (PHI: exports are audited and carry the notice)
    held_minutes: int = 0  # of audio_video_minutes, time a therapist held video or microphone


_FIELDS = [f.name for f in dataclasses.fields(AttendanceRow)]
# The name next to the identity it belongs to.
CSV_COLUMNS = tuple(dict.fromkeys(
    [*_FIELDS[:_FIELDS.index("person") + 1], "name", *_FIELDS]))


def modifier_for(audio_video_minutes: int, audio_only_minutes: int) -> str:
    if audio_video_minutes > 0:
        return MODIFIER_AUDIO_VIDEO
    return MODIFIER_AUDIO_ONLY if audio_only_minutes > 0 else ""


def _local(moment: datetime | None, zone: ZoneInfo) -> datetime | None:
    return None if moment is None else moment.astimezone(zone).replace(microsecond=0)


def held_note(held_minutes: int) -> str:
    """What the record says about minutes a therapist's hold would otherwise have made 93."""
    if held_minutes <= 0:
        return ""
    return (f"{held_minutes} min audio-video with the video or microphone held by the "
            f"therapist")


def _row(record: SessionAttendance, person: PersonRecord, zone: ZoneInfo,
         names: Mapping[str, str]) -> AttendanceRow:
    measured = person.attendance
    check_in = measured.check_in
    place = ""
    if person.role == PATIENT_ROLE:
        place = (PLACE_OF_SERVICE_HOME if check_in is not None and check_in.at_home
                 else PLACE_OF_SERVICE_ELSEWHERE)
    session = record.session
    return AttendanceRow(
        session_id=session.id, title=session.title, kind=session.kind,
        code=session.billing_code, session_status=session.status, person=person.person,
        role=person.role, patient_id=person.patient_id,
        scheduled_start=session.starts_at.astimezone(zone),
        scheduled_end=record.window.ends_at.astimezone(zone),
        first_join=_local(measured.first_join, zone), last_leave=_local(measured.last_leave, zone),
        attended_minutes=measured.attended_minutes,
        audio_video_minutes=measured.audio_video_minutes,
        audio_only_minutes=measured.audio_only_minutes,
        check_in_location=check_in.location if check_in is not None else "",
        status=person.status,
        modifier=modifier_for(measured.audio_video_minutes, measured.audio_only_minutes),
        modality_note=held_note(measured.held_minutes), place_of_service=place,
        billing_code=record.billing_code, name=names.get(person.person, ""),
        held_minutes=measured.held_minutes)


def attendance_rows(records: Iterable[SessionAttendance], timezone: str,
                    names: Mapping[str, str] | None = None) -> list[AttendanceRow]:
    """One row per person per session; ``names`` (identity to name) fills the name column."""
    zone = ZoneInfo(timezone)
    return [_row(record, person, zone, names or {}) for record in records
            for person in record.people]


# --- CSV ----------------------------------------------------------------------------------------

def _text_cell(value: str) -> str:
    return ESCAPE + value if value.startswith(FORMULA_STARTS) else value


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, str):
        return _text_cell(value)
    return str(value)


def write_csv(rows: Iterable[AttendanceRow]) -> str:
    """The notice (first line, one cell), the header, then one line per row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([REDISCLOSURE_NOTICE])
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(getattr(row, name)) for name in CSV_COLUMNS])
    return out.getvalue()


class CsvProblem(ValueError):
    """The CSV is not an attendance export; the message names the line and column."""


def _parse_moment(text: str) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("time has no UTC offset")
    return moment


def _parse_row(cells: dict[str, str]) -> AttendanceRow:
    def text(name: str) -> str:
        value = cells[name]
        return value[1:] if value.startswith(ESCAPE) else value

    def moment(name: str) -> datetime:
        found = _parse_moment(cells[name])
        if found is None:
            raise ValueError("time is missing")
        return found

    patient_id = cells["patient_id"]
    return AttendanceRow(
        session_id=int(cells["session_id"]), title=text("title"),
        kind=SessionKind(cells["kind"]), code=text("code"),
        session_status=SessionStatus(cells["session_status"]), person=text("person"),
        role=text("role"), patient_id=int(patient_id) if patient_id else None,
        scheduled_start=moment("scheduled_start"), scheduled_end=moment("scheduled_end"),
        first_join=_parse_moment(cells["first_join"]),
        last_leave=_parse_moment(cells["last_leave"]),
        attended_minutes=int(cells["attended_minutes"]),
        audio_video_minutes=int(cells["audio_video_minutes"]),
        audio_only_minutes=int(cells["audio_only_minutes"]),
        check_in_location=text("check_in_location"), status=AttendanceStatus(cells["status"]),
        modifier=text("modifier"), modality_note=text("modality_note"),
        place_of_service=text("place_of_service"), billing_code=text("billing_code"),
        name=text("name"), held_minutes=int(cells["held_minutes"]))


def parse_csv(text: str) -> list[AttendanceRow]:
    """Rows of an attendance CSV export, or ``CsvProblem`` naming the first bad line."""
    reader = csv.reader(io.StringIO(text))
    notice = next(reader, None)
    if notice != [REDISCLOSURE_NOTICE]:
        raise CsvProblem("line 1: not an attendance export (the 42 CFR part 2 notice is missing)")
    header = next(reader, None)
    if header is None or tuple(header) != CSV_COLUMNS:
        raise CsvProblem("line 2: not an attendance export (the columns differ)")
    rows = []
    for line, cells in enumerate(reader, start=3):
        if not cells:
            continue
        if len(cells) != len(CSV_COLUMNS):
            raise CsvProblem(f"line {line}: expected {len(CSV_COLUMNS)} cells, got {len(cells)}")
        try:
            rows.append(_parse_row(dict(zip(CSV_COLUMNS, cells, strict=True))))
        except (ValueError, KeyError) as exc:
            raise CsvProblem(f"line {line}: {exc}") from None
    return rows


# --- FHIR ---------------------------------------------------------------------------------------

def _fhir_id(person: str) -> str:
    """``staff:1`` -> ``1`` for Practitioner, ``family-invite:7`` -> ``family-invite-7``."""
    kind, _, raw = person.partition(":")
    return raw if kind in ("staff", "patient") else person.replace(":", "-")


def _period(start: datetime | None, end: datetime | None, zone: ZoneInfo) -> dict[str, str]:
    period: dict[str, str] = {}
    if start is not None:
        period["start"] = start.astimezone(zone).isoformat(timespec="seconds")
    if end is not None:
        period["end"] = end.astimezone(zone).isoformat(timespec="seconds")
    return period


def _reference(resource: str, person: str, names: Mapping[str, str]) -> dict[str, str]:
    reference = {"reference": f"{resource}/{_fhir_id(person)}"}
    if names.get(person):
        reference["display"] = names[person]
    return reference


def _participant(person: PersonRecord, zone: ZoneInfo,
                 names: Mapping[str, str]) -> dict[str, Any]:
    measured = person.attendance
    is_staff = person.role == THERAPIST_ROLE
    code = PRIMARY_PERFORMER if is_staff else PARTICIPANT
    resource = "Practitioner" if is_staff else "RelatedPerson"
    return {"type": [{"coding": [{"system": PARTICIPATION_SYSTEM, "code": code}],
                      "text": person.role}],
            "individual": _reference(resource, person.person, names),
            "period": _period(measured.first_join, measured.last_leave, zone)}


def _encounter_status(record: SessionAttendance, patient: PersonRecord, others_came: bool,
                      now: datetime) -> str:
    if record.session.status is SessionStatus.CANCELLED:
        return "cancelled"
    if now < record.window.starts_at:
        return "planned"
    if now < record.window.ends_at and record.session.status is not SessionStatus.ENDED:
        return "in-progress"
    came = patient.status in (AttendanceStatus.PRESENT, AttendanceStatus.PARTIAL)
    if came or (record.session.kind is SessionKind.FAMILY and others_came):
        return "finished"
    return "cancelled"


def _encounter(record: SessionAttendance, patient: PersonRecord, zone: ZoneInfo,
               now: datetime, names: Mapping[str, str]) -> dict[str, Any]:
    session = record.session
    others = [p for p in record.people
              if p.role != PATIENT_ROLE and p.attendance.attended_seconds > 0]
    code = record.billing_code
    encounter_id = f"session-{session.id}-patient-{patient.patient_id}"
    measured = patient.attendance
    if measured.attended_seconds > 0:
        start, end, seconds = measured.first_join, measured.last_leave, measured.attended_seconds
    else:  # the family met without the patient (90846)
        family = [p.attendance for p in others if p.role != THERAPIST_ROLE]
        start = min((p.first_join for p in family if p.first_join), default=None)
        end = max((p.last_leave for p in family if p.last_leave), default=None)
        seconds = max((p.attended_seconds for p in family), default=0)
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": encounter_id,
        "meta": {"security": [dict(label) for label in PART2_SECURITY]},
        "status": _encounter_status(record, patient, bool(others), now),
        "class": {"system": ACT_CODE_SYSTEM, "code": VIRTUAL_ENCOUNTER,
                  "display": "virtual"},
        "type": [{"coding": [{"system": CPT_SYSTEM, "code": code}],
                  "text": SERVICE_NAMES[session.kind]}],
        "serviceType": {"text": SERVICE_NAMES[session.kind]},
        "subject": _reference("Patient", patient.person, names),
        "participant": [_participant(p, zone, names) for p in others],
        "length": {"value": seconds // SECONDS_PER_MINUTE, "unit": "min", "system": UCUM,
                   "code": "min"},
    }
    if session.title:
        encounter["extension"] = [{"url": SESSION_TITLE_URL, "valueString": session.title}]
    period = _period(start, end, zone)
    if period:
        encounter["period"] = period
    if not encounter["participant"]:
        del encounter["participant"]
    return encounter


def fhir_bundle(records: Iterable[SessionAttendance], timezone: str,
                now: datetime, names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A FHIR R4 Bundle (type collection) with one Encounter per patient per session;
    ``names`` adds each reference's ``display``."""
    zone = ZoneInfo(timezone)
    entries = []
    for record in records:
        for patient in record.patients:
            encounter = _encounter(record, patient, zone, now, names or {})
            full_url = f"urn:uuid:{uuid.uuid5(ENCOUNTER_NAMESPACE, encounter['id'])}"
            entries.append({"fullUrl": full_url, "resource": encounter})
    return {"resourceType": "Bundle",
            "meta": {"security": [dict(label) for label in PART2_SECURITY],
                     "tag": [{"system": NOTICE_TAG_SYSTEM, "code": "42CFR2.32",
                              "display": REDISCLOSURE_NOTICE}]},
            "type": "collection",
            "timestamp": now.astimezone(zone).isoformat(timespec="seconds"),
            "total": len(entries), "entry": entries}


# --- one export, audited --------------------------------------------------------------------

@dataclass(frozen=True)
class Export:
    content: str
    media_type: str
    filename: str
    count: int  # rows (CSV) or encounters (FHIR)


async def export_attendance(db: AsyncSession, program: Program, first_day: date,
                            last_day: date, export_format: ExportFormat, actor: str,
                            now: datetime, staff: StaffUser | None = None) -> Export:
    """Load, format and audit one export of the sessions on ``first_day``..``last_day``.

    ``staff`` limits a therapist to their own sessions; admins and the command line see all.
    """
    if last_day < first_day:
        raise ValueError("The export must end on or after the day it starts.")
    records = await records_between(db, program, first_day, last_day, staff)
    names = await person_names(db, [p.person for r in records for p in r.people])
    stem = f"attendance-{first_day.isoformat()}-{last_day.isoformat()}"
    export: Export
    if export_format is ExportFormat.CSV:
        rows = attendance_rows(records, program.timezone, names)
        export = Export(write_csv(rows), "text/csv; charset=utf-8", f"{stem}.csv", len(rows))
    else:
        bundle = fhir_bundle(records, program.timezone, now, names)
        export = Export(json.dumps(bundle, indent=1), "application/fhir+json",
                        f"{stem}.fhir.json", bundle["total"])
    await audit_chain.audit(db, now, actor, "attendance-exported", f"program:{program.id}",
                            format=export_format.value, first_day=first_day.isoformat(),
                            last_day=last_day.isoformat(), count=export.count)
    await db.flush()
    return export
