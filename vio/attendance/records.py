"""Attendance records in the database: each session's people, the review, and weekly dosage.

Loads the room's log for many sessions at once (heartbeats only where a stopped server left a
connection open), adds rostered patients who never came as absent, applies the therapist's
overrides, and writes overrides and sign-offs with an audit event. Functions leave committing
to the caller.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from vio import audit_chain, clinic
from vio.attendance.dosage import (
    DosagePlan,
    IsoWeek,
    ScheduledAttendance,
    WeeklyDosage,
    dosage_by_week,
    local_day,
    local_midnight,
    weekly_dosage,
)
from vio.attendance.intervals import (
    HOLD_ACTIONS,
    AttendanceStatus,
    Event,
    Hold,
    PersonAttendance,
    Presence,
    SessionWindow,
    attendance_by_person,
    needs_heartbeats,
    presence_now,
)
from vio.attendance.models import REASON_MAX_CHARS, AbsenceNotice, AttendanceReview
from vio.attendance.notices import notices_for
from vio.identity import family_invite_identity, patient_identity, staff_identity
from vio.models import (
    AttendanceEvent,
    AttendanceKind,
    AuditEvent,
    EnrollmentStatus,
    Patient,
    Program,
    RosterMembership,
    Session,
    SessionKind,
    SessionStatus,
    SessionTherapist,
    StaffRole,
    StaffUser,
)

IDS_PER_QUERY = 500
PATIENT_ROLE = "patient"
THERAPIST_ROLE = "therapist"
ROLE_ORDER = {"therapist": 0, "patient": 1, "family": 2}
# DESIGN.md: family psychotherapy with the patient 90847, without the patient 90846.
FAMILY_WITH_PATIENT = "90847"
FAMILY_WITHOUT_PATIENT = "90846"
ATTENDED = frozenset({AttendanceStatus.PRESENT, AttendanceStatus.PARTIAL})
# A room opens before its scheduled start and may be extended: holds are looked for this far
# either side of the sessions' scheduled times.
HOLD_MARGIN = timedelta(hours=12)
# An end this much before the scheduled (extended) end is an early end.
EARLY_END_TOLERANCE = timedelta(minutes=1)


class SessionOutcome(enum.StrEnum):
    """How a session went, for lists of past sessions."""

    UPCOMING = "upcoming"
    LIVE = "live"
    HELD = "held"
    ENDED_EARLY = "ended early"
    NOT_HELD = "not held"  # over, and no patient or family member ever came in
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class PersonRecord:
    """One person's measured attendance at a session, the therapist's override if any, and
    the patient's notice that they can't make it (excuses an absence, nothing else)."""

    attendance: PersonAttendance
    override: AttendanceReview | None = None
    notice: AbsenceNotice | None = None  # the patient said ahead they can't make it

    @property
    def person(self) -> str:
        return self.attendance.person

    @property
    def role(self) -> str:
        return self.attendance.role

    @property
    def patient_id(self) -> int | None:
        return self.attendance.patient_id

    @property
    def status(self) -> AttendanceStatus:
        if self.override is not None and self.override.status is not None:
            return self.override.status
        if self.notice is not None and self.attendance.status is AttendanceStatus.ABSENT:
            return AttendanceStatus.EXCUSED
        return self.attendance.status


@dataclass(frozen=True)
class SessionAttendance:
    """Who attended one session, for how long and how, as reviewed."""

    session: Session
    window: SessionWindow
    people: tuple[PersonRecord, ...]
    sign_off: AttendanceReview | None = None
    ended_at: datetime | None = None  # when the room ended the session (early or on time)
    presence: dict[str, Presence] = field(default_factory=dict)  # while the session runs

    @property
    def locked(self) -> bool:
        return self.sign_off is not None

    def is_over(self, now: datetime) -> bool:
        """Whether the session has ended: its time is up, or the room ended it."""
        return (now >= self.window.ends_at or self.ended_at is not None
                or self.session.status is SessionStatus.ENDED)

    def is_live(self, now: datetime) -> bool:
        return (self.session.status is not SessionStatus.CANCELLED and not self.is_over(now)
                and (now >= self.window.starts_at or self.session.status is SessionStatus.OPEN))

    @property
    def ended_early(self) -> bool:
        return (self.ended_at is not None
                and self.ended_at < self.window.ends_at - EARLY_END_TOLERANCE)

    def outcome(self, now: datetime) -> SessionOutcome:
        if self.session.status is SessionStatus.CANCELLED:
            return SessionOutcome.CANCELLED
        if not self.is_over(now):
            return SessionOutcome.LIVE if self.is_live(now) else SessionOutcome.UPCOMING
        if not any(p.attendance.attended_seconds > 0 for p in self.people
                   if p.role != THERAPIST_ROLE):
            return SessionOutcome.NOT_HELD
        return SessionOutcome.ENDED_EARLY if self.ended_early else SessionOutcome.HELD

    def presence_of(self, person: str) -> Presence:
        return self.presence.get(person, Presence.NOT_HERE)

    def count(self, presence: Presence) -> int:
        """How many people are ``presence`` now (the therapists too)."""
        return sum(1 for p in self.presence.values() if p is presence)

    @property
    def patients(self) -> tuple[PersonRecord, ...]:
        return tuple(p for p in self.people if p.role == PATIENT_ROLE)

    def record_for(self, person: str) -> PersonRecord | None:
        return next((p for p in self.people if p.person == person), None)

    @property
    def patient_attended(self) -> bool:
        """Whether the session's patient (or, for groups, any patient) attended."""
        wanted = self.session.patient_id
        return any(p.status in ATTENDED for p in self.patients
                   if wanted is None or p.patient_id == wanted)

    @property
    def billing_code(self) -> str:
        if self.session.kind is SessionKind.FAMILY:
            return FAMILY_WITH_PATIENT if self.patient_attended else FAMILY_WITHOUT_PATIENT
        return self.session.billing_code


def _chunks(ids: Collection[int]) -> Iterator[list[int]]:
    ordered = sorted(ids)
    for start in range(0, len(ordered), IDS_PER_QUERY):
        yield ordered[start:start + IDS_PER_QUERY]


EVENT_COLUMNS = (AttendanceEvent.id, AttendanceEvent.session_id, AttendanceEvent.at,
                 AttendanceEvent.kind, AttendanceEvent.person, AttendanceEvent.role,
                 AttendanceEvent.connection, AttendanceEvent.patient_id, AttendanceEvent.detail)


async def load_events(db: AsyncSession, session_ids: Collection[int]) -> dict[int, list[Event]]:
    """The log of each session; heartbeats only for sessions where they decide something."""
    events: dict[int, list[Event]] = defaultdict(list)
    conn = await db.connection()  # plain rows: no ORM bookkeeping for a large log
    for chunk in _chunks(session_ids):
        rows = await conn.execute(select(*EVENT_COLUMNS).where(
            AttendanceEvent.session_id.in_(chunk),
            AttendanceEvent.kind != AttendanceKind.HEARTBEAT))
        for row in rows:
            events[row.session_id].append(Event(*row))
    unsettled = [sid for sid, logged in events.items() if needs_heartbeats(logged)]
    for chunk in _chunks(unsettled):
        rows = await conn.execute(select(*EVENT_COLUMNS).where(
            AttendanceEvent.session_id.in_(chunk),
            AttendanceEvent.kind == AttendanceKind.HEARTBEAT))
        for row in rows:
            events[row.session_id].append(Event(*row))
    return events


async def expected_patients(db: AsyncSession,
                            sessions: Sequence[Session]) -> dict[int, set[int]]:
    """Patients each session expects: its own patient, and its group's roster that local day."""
    group_ids = {s.group_id for s in sessions if s.group_id is not None}
    rosters: dict[int, list[tuple[RosterMembership, date, date]]] = defaultdict(list)
    for chunk in _chunks(group_ids):
        rows = await db.execute(
            select(RosterMembership, Patient.enrolled_on, Patient.enrollment_ends_on)
            .join(Patient, Patient.id == RosterMembership.patient_id)
            .where(RosterMembership.group_id.in_(chunk)))
        for membership, enrolled_on, ends_on in rows:
            rosters[membership.group_id].append((membership, enrolled_on, ends_on))
    expected: dict[int, set[int]] = {}
    for session in sessions:
        ids: set[int] = set()
        if session.status is not SessionStatus.CANCELLED:
            day = local_day(session.starts_at, session.timezone)
            members = rosters.get(session.group_id, []) if session.group_id is not None else []
            ids = {m.patient_id for m, enrolled_on, ends_on in members
                   if m.covers(day) and enrolled_on <= day <= ends_on}
            if session.patient_id is not None:
                ids.add(session.patient_id)
        expected[session.id] = ids
    return expected


async def load_reviews(db: AsyncSession,
                       session_ids: Collection[int]) -> dict[int, list[AttendanceReview]]:
    reviews: dict[int, list[AttendanceReview]] = defaultdict(list)
    for chunk in _chunks(session_ids):
        rows = await db.execute(select(AttendanceReview).where(
            AttendanceReview.session_id.in_(chunk)).order_by(AttendanceReview.at,
                                                              AttendanceReview.id))
        for review in rows.scalars():
            reviews[review.session_id].append(review)
    return reviews


async def load_holds(db: AsyncSession, sessions: Sequence[Session]) -> dict[int, list[Hold]]:
    """The therapists' holds of people's media in each session (the room audits each one)."""
    holds: dict[int, list[Hold]] = defaultdict(list)
    if not sessions:
        return holds
    ids = {s.id for s in sessions}
    start = min(s.starts_at for s in sessions) - HOLD_MARGIN
    end = max(s.ends_at for s in sessions) + HOLD_MARGIN
    rows = await db.execute(select(AuditEvent.at, AuditEvent.actor, AuditEvent.action,
                                   AuditEvent.target, AuditEvent.detail).where(
        AuditEvent.action.in_(list(HOLD_ACTIONS)), AuditEvent.at >= start, AuditEvent.at < end))
    for at, actor, action, target, detail in rows:
        session_id = detail.get("session") if isinstance(detail, dict) else None
        if isinstance(session_id, int) and session_id in ids:
            holds[session_id].append(Hold(at, target, HOLD_ACTIONS[action], actor))
    return holds


def _ended_at(events: Iterable[Event]) -> datetime | None:
    return min((e.at for e in events if e.kind is AttendanceKind.SESSION_ENDED), default=None)


def _assemble(session: Session, events: list[Event], expected: set[int],
              reviews: list[AttendanceReview], threshold: int,
              holds: Sequence[Hold] = (), now: datetime | None = None,
              notices: dict[tuple[int, int], AbsenceNotice] | None = None,
              ) -> SessionAttendance:
    window = SessionWindow(session.starts_at, session.ends_at)
    running = (now is not None and _ended_at(events) is None
               and session.status not in (SessionStatus.ENDED, SessionStatus.CANCELLED)
               and now < window.extended_by(events).ends_at)
    measured = attendance_by_person(events, window, threshold, holds,
                                    as_of=now if running else None)
    window = window.extended_by(events)
    for patient_id in expected:
        person = patient_identity(patient_id)
        if person not in measured:
            measured[person] = PersonAttendance.absent(person, PATIENT_ROLE, patient_id, window)
    overrides = {r.person: r for r in reviews if r.person is not None and r.status is not None}
    sign_off = next((r for r in reviews if r.is_sign_off), None)
    people = sorted(measured.values(), key=lambda p: (ROLE_ORDER.get(p.role, len(ROLE_ORDER)),
                                                      p.person))
    return SessionAttendance(session=session, window=window, sign_off=sign_off,
                             people=tuple(PersonRecord(
                                 p, overrides.get(p.person),
                                 (notices or {}).get((session.id, p.patient_id or 0))
                                 if p.role == PATIENT_ROLE else None) for p in people),
                             ended_at=_ended_at(events), presence=presence_now(events))


async def session_attendance(db: AsyncSession, sessions: Sequence[Session],
                             present_threshold_percent: int,
                             now: datetime | None = None) -> list[SessionAttendance]:
    """Each session's attendance record, in the order the sessions were given; with ``now``,
    a session still running counts the people in its room until now."""
    ids = [s.id for s in sessions]
    events = await load_events(db, ids)
    expected = await expected_patients(db, sessions)
    reviews = await load_reviews(db, ids)
    holds = await load_holds(db, sessions)
    notices = await notices_for(db, ids)
    return [_assemble(s, events.get(s.id, []), expected[s.id], reviews.get(s.id, []),
                      present_threshold_percent, holds.get(s.id, []), now, notices)
            for s in sessions]


async def session_record(db: AsyncSession, session: Session, program: Program,
                         now: datetime | None = None) -> SessionAttendance:
    return (await session_attendance(db, [session], program.present_threshold_percent,
                                     now))[0]


async def program_sessions(db: AsyncSession, program_id: int, start: datetime, end: datetime,
                           staff: StaffUser | None = None,
                           patient_ids: Collection[int] | None = None) -> list[Session]:
    """The program's sessions starting in [start, end): a therapist's own, or all for admins;
    with ``patient_ids``, only those the patients may have belonged in or came to."""
    query = (select(Session).where(Session.program_id == program_id, Session.starts_at >= start,
                                   Session.starts_at < end)
             .order_by(Session.starts_at, Session.id))
    if staff is not None and staff.role is not StaffRole.ADMIN:
        query = query.join(SessionTherapist, SessionTherapist.session_id == Session.id).where(
            SessionTherapist.staff_id == staff.id)
    if patient_ids is not None:
        ids = list(patient_ids)
        groups = select(RosterMembership.group_id).where(RosterMembership.patient_id.in_(ids))
        came = select(AttendanceEvent.session_id).where(AttendanceEvent.patient_id.in_(ids))
        query = query.where(or_(Session.patient_id.in_(ids), Session.group_id.in_(groups),
                                Session.id.in_(came)))
    return list((await db.execute(query)).scalars())


async def records_between(db: AsyncSession, program: Program, first_day: date, last_day: date,
                          staff: StaffUser | None = None) -> list[SessionAttendance]:
    """Attendance of the sessions starting on local days ``first_day``..``last_day``."""
    start = local_midnight(first_day, program.timezone)
    end = local_midnight(last_day + timedelta(days=1), program.timezone)
    sessions = await program_sessions(db, program.id, start, end, staff)
    return await session_attendance(db, sessions, program.present_threshold_percent)


# --- review: overrides and sign-off ---------------------------------------------------------

class ReviewRefused(ValueError):
    """An override or sign-off that cannot be made; ``code`` says why, the message in words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


async def _signed_off(db: AsyncSession, session_id: int) -> bool:
    return (await db.execute(select(AttendanceReview.id).where(
        AttendanceReview.session_id == session_id,
        AttendanceReview.signed_off_at.is_not(None)).limit(1))).first() is not None


async def override_status(db: AsyncSession, record: SessionAttendance, person: str,
                          status: AttendanceStatus, reason: str, staff: StaffUser,
                          now: datetime) -> AttendanceReview:
    """Give ``person`` a status at this session, with the therapist's reason; audited."""
    reason = reason.strip()
    if record.locked or await _signed_off(db, record.session.id):
        raise ReviewRefused("signed-off", "This attendance is signed off and can't be changed.")
    if not reason:
        raise ReviewRefused("reason-required", "Give a reason for changing the status.")
    if len(reason) > REASON_MAX_CHARS:
        raise ReviewRefused("reason-too-long",
                            f"Keep the reason under {REASON_MAX_CHARS} characters.")
    current = record.record_for(person)
    if current is None:
        raise ReviewRefused("no-such-person", "That person has no record at this session.")
    review = AttendanceReview(session_id=record.session.id, person=person, status=status,
                              reason=reason, by_staff_id=staff.id, at=now)
    db.add(review)
    await audit_chain.audit(db, now, staff_identity(staff.id), "attendance-override",
                            f"session:{record.session.id}", person=person, status=status.value,
                            measured=current.attendance.status.value, reason=reason)
    await db.flush()
    return review


async def sign_off(db: AsyncSession, record: SessionAttendance, staff: StaffUser,
                   now: datetime) -> AttendanceReview:
    """Lock the session's attendance as reviewed; audited."""
    if record.locked or await _signed_off(db, record.session.id):
        raise ReviewRefused("signed-off", "This attendance is already signed off.")
    if not record.is_over(now):
        raise ReviewRefused("not-over", "Sign off once the session has ended.")
    review = AttendanceReview(session_id=record.session.id, by_staff_id=staff.id, at=now,
                              signed_off_at=now, signed_off_by=staff.id)
    db.add(review)
    await audit_chain.audit(db, now, staff_identity(staff.id), "attendance-sign-off",
                            f"session:{record.session.id}",
                            statuses={p.person: p.status.value for p in record.people})
    await db.flush()
    return review


# --- weekly dosage ----------------------------------------------------------------------------

async def scheduled_attendance(db: AsyncSession, program: Program, start: datetime,
                               end: datetime, patient_ids: Collection[int],
                               whole_program: bool = False,
                               ) -> dict[int, list[ScheduledAttendance]]:
    """Each patient's sessions starting in [start, end) that were not cancelled, as reviewed."""
    sessions = await program_sessions(db, program.id, start, end,
                                      patient_ids=None if whole_program else patient_ids)
    held = [s for s in sessions if s.status is not SessionStatus.CANCELLED]
    wanted = set(patient_ids)
    result: dict[int, list[ScheduledAttendance]] = {pid: [] for pid in wanted}
    # A session ended early was scheduled only for what was held: it is over at its end.
    ended = await clinic.room_end_moments(
        db, (s.id for s in held if s.status is SessionStatus.ENDED))
    for record in await session_attendance(db, held, program.present_threshold_percent):
        ends_at = record.window.ends_at
        if record.session.id in ended:
            ends_at = max(record.window.starts_at, min(ends_at, ended[record.session.id]))
        for person in record.patients:
            if person.patient_id in wanted:
                result[person.patient_id].append(ScheduledAttendance(
                    record.session.id, record.window.starts_at, ends_at,
                    person.status, person.attendance.intervals))
    return result


async def patient_dosage(db: AsyncSession, patient: Patient, program: Program,
                         now: datetime) -> list[WeeklyDosage]:
    """The patient's dosage in every week of their enrollment."""
    plan = DosagePlan.for_patient(patient, program)
    weeks = plan.weeks()
    if not weeks:
        return []
    start, _ = weeks[0].bounds(program.timezone)
    _, end = weeks[-1].bounds(program.timezone)
    sessions = await scheduled_attendance(db, program, start, end, {patient.id})
    return dosage_by_week(plan, sessions[patient.id], now)


async def patient_week_dosage(db: AsyncSession, patient: Patient, program: Program,
                              week: IsoWeek, now: datetime) -> WeeklyDosage:
    plan = DosagePlan.for_patient(patient, program)
    start = min(local_midnight(plan.enrolled_on, program.timezone),
                week.previous().bounds(program.timezone)[0])
    _, end = week.bounds(program.timezone)
    sessions = await scheduled_attendance(db, program, start, end, {patient.id})
    return weekly_dosage(plan, sessions[patient.id], week, now)


async def program_week_dosage(db: AsyncSession, program: Program, week: IsoWeek,
                              now: datetime) -> list[tuple[Patient, WeeklyDosage]]:
    """Every active patient's dosage in ``week``, by name.

    Loads the week and the one before; only patients absent from every session loaded, whose
    absence streak may reach further back, get their earlier sessions loaded too.
    """
    first, last = week.monday, week.days[-1]
    patients = list((await db.execute(select(Patient).where(
        Patient.program_id == program.id, Patient.status == EnrollmentStatus.ACTIVE,
        Patient.enrolled_on <= last, Patient.enrollment_ends_on >= first)
        .order_by(Patient.legal_name, Patient.id))).scalars())
    ids = {p.id for p in patients}
    start, _ = week.previous().bounds(program.timezone)
    _, end = week.bounds(program.timezone)
    sessions = await scheduled_attendance(db, program, start, end, ids, whole_program=True)
    as_of = min(now, end)
    streaking = [p for p in patients
                 if local_midnight(p.enrolled_on, program.timezone) < start
                 and not any(s.status in ATTENDED for s in sessions[p.id] if s.ends_at <= as_of)]
    if streaking:
        earliest = local_midnight(min(p.enrolled_on for p in streaking), program.timezone)
        earlier = await scheduled_attendance(db, program, earliest, start,
                                             {p.id for p in streaking})
        for patient_id, found in earlier.items():
            sessions[patient_id] = found + sessions[patient_id]
    return [(p, weekly_dosage(DosagePlan.for_patient(p, program), sessions[p.id], week, now))
            for p in patients]


# --- names ----------------------------------------------------------------------------------

async def person_names(db: AsyncSession, persons: Iterable[str]) -> dict[str, str]:
    """What staff call each person: a patient's legal name, a staff member's name."""
    ids: dict[str, set[int]] = defaultdict(set)
    for person in persons:
        kind, _, raw = person.partition(":")
        if raw.isdigit():
            ids[kind].add(int(raw))
    names: dict[str, str] = {}
    for chunk in _chunks(ids["patient"]):
        for pid, name in await db.execute(
                select(Patient.id, Patient.legal_name).where(Patient.id.in_(chunk))):
            names[patient_identity(pid)] = name
    for chunk in _chunks(ids["staff"]):
        for sid, name in await db.execute(
                select(StaffUser.id, StaffUser.name).where(StaffUser.id.in_(chunk))):
            names[staff_identity(sid)] = name
    for invite in ids["family-invite"]:
        names[family_invite_identity(invite)] = f"Family member (invite {invite})"
    return names
