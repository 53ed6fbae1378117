"""The outreach list: patients with unexcused absences in a row, until staff reach out.

DESIGN.md: two unexcused absences in a row should prompt outreach. The count is the
program's (``Program.absences_before_outreach``). A patient is on the list while the absences
in a row since staff last recorded a contact (``dosage.absence_streak``) reach it; recording a
contact (with a note, audited) takes them off, and only absences after it count toward the
next time. An excused absence (the therapist's override, or the patient's own "I can't make
it") neither counts nor ends the row. Functions leave committing to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from vio import audit_chain
from vio.attendance import records
from vio.attendance.dismissals import NOTE_MAX_CHARS
from vio.attendance.dosage import ScheduledAttendance, absence_streak
from vio.attendance.models import OutreachContact
from vio.identity import patient_identity, staff_identity
from vio.models import Patient, Program, Session, StaffUser


class OutreachRefused(ValueError):
    """A contact that cannot be recorded; ``code`` says why, the message in words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class OutreachDue:
    """A patient to reach out to, and the sessions of their absences in a row (oldest
    first)."""

    patient: Patient
    absences: tuple[ScheduledAttendance, ...]
    sessions: tuple[Session, ...]


async def last_contacts(db: AsyncSession, patient_ids: Sequence[int]) -> dict[int, datetime]:
    if not patient_ids:
        return {}
    rows = await db.execute(select(OutreachContact.patient_id, func.max(OutreachContact.at))
                            .where(OutreachContact.patient_id.in_(sorted(set(patient_ids))))
                            .group_by(OutreachContact.patient_id))
    return {int(patient_id): at for patient_id, at in rows}


async def outreach_due(db: AsyncSession, program: Program, patients: Sequence[Patient],
                       now: datetime, lookback_days: int) -> list[OutreachDue]:
    """Which of ``patients`` are on the outreach list now, with their absences in a row
    (among the sessions of the last ``lookback_days``)."""
    if not patients:
        return []
    ids = [p.id for p in patients]
    found = await records.scheduled_attendance(db, program, now - timedelta(days=lookback_days),
                                               now, ids)
    contacts = await last_contacts(db, ids)
    due = [(p, streak) for p in patients
           if len(streak := absence_streak(found.get(p.id, []), now, contacts.get(p.id)))
           >= program.absences_before_outreach]
    session_ids = sorted({a.session_id for _, streak in due for a in streak})
    sessions = {s.id: s for s in (await db.execute(
        select(Session).where(Session.id.in_(session_ids)))).scalars()} if session_ids else {}
    return [OutreachDue(p, streak, tuple(sessions[a.session_id] for a in streak))
            for p, streak in due]


def checked_note(value: object) -> str:
    note = value.strip() if isinstance(value, str) else ""
    if not note:
        raise OutreachRefused("note-required", "Write a note saying how you reached the patient.")
    if len(note) > NOTE_MAX_CHARS:
        raise OutreachRefused("note-too-long", f"Keep the note under {NOTE_MAX_CHARS} characters.")
    return note


async def record_contact(db: AsyncSession, program: Program, patient: Patient, staff: StaffUser,
                         note: object, now: datetime, lookback_days: int) -> OutreachContact:
    """Record that ``staff`` reached out to ``patient``, who must be on the list; audited."""
    text = checked_note(note)
    due = await outreach_due(db, program, [patient], now, lookback_days)
    if not due:
        raise OutreachRefused("not-on-list", f"{patient.legal_name} is not on the outreach list.")
    sessions = [s.id for s in due[0].sessions]
    contact = OutreachContact(patient_id=patient.id, recorded_by=staff.id, at=now, note=text,
                              sessions=sessions)
    db.add(contact)
    await db.flush()
    await audit_chain.audit(db, now, staff_identity(staff.id), "outreach-recorded",
                            patient_identity(patient.id), sessions=sessions, note=text)
    return contact
