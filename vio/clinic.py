"""Clinic records: the operations staff pages, the command line and the demo share.

Functions take an ``AsyncSession`` and leave committing to the caller unless they say otherwise.
Every change is written to the audit chain with ``audit`` (``vio.audit_chain``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from vio.models import (
    DEFAULT_BILLING_CODE,
    AttendanceEvent,
    AttendanceKind,
    GroupTherapist,
    Patient,
    PatientLink,
    RosterMembership,
    Session,
    SessionKind,
    SessionSeries,
    SessionTherapist,
    StaffUser,
    WaitingRoomPolicy,
)
from vio.policy import Scope, session_where
from vio.scheduling import parse_weekdays, weekly_occurrences
from vio.security import Signer, new_secret, same_secret, secret_hash

PATIENT_LINK_NAMESPACE = "patient-link"
# Signature age cap; the link's real expiry is the enrollment end, checked in the database.
PATIENT_LINK_MAX_AGE_SECONDS = 2 * 365 * 24 * 3600


async def staff_by_email(db: AsyncSession, email: str) -> StaffUser | None:
    return (await db.execute(
        select(StaffUser).where(StaffUser.email == email.strip().lower()))).scalar_one_or_none()


# --- patient links -------------------------------------------------------------------------

class LinkProblem(enum.StrEnum):
    MALFORMED = "link-malformed"
    UNKNOWN = "link-unknown"
    REVOKED = "link-revoked"
    EXPIRED = "link-expired"


LINK_PROBLEM_TEXT = {
    LinkProblem.MALFORMED: "This link is not complete. Please copy the whole link and try again.",
    LinkProblem.UNKNOWN: "We don't recognise this link. Please ask your care team for a new one.",
    LinkProblem.REVOKED: "This link has been turned off. Please ask your care team for a new one.",
    LinkProblem.EXPIRED: "This link has expired. Please ask your care team for a new one.",
}


async def issue_patient_link(db: AsyncSession, signer: Signer, patient: Patient,
                             now: datetime, until: datetime | None = None) -> str:
    """A new personal link token for ``patient``, valid until the end of their enrollment
    (or ``until``, if sooner: a link sent by email works until its session ends)."""
    secret = new_secret()
    expires = datetime.combine(patient.enrollment_ends_on + timedelta(days=1), time(0), UTC)
    if until is not None:
        expires = min(expires, until)
    link = PatientLink(patient_id=patient.id, secret_hash=secret_hash(secret), created_at=now,
                       expires_at=expires)
    db.add(link)
    await db.flush()
    return signer.sign({"l": link.id, "s": secret}, PATIENT_LINK_NAMESPACE)


async def resolve_patient_link(db: AsyncSession, signer: Signer, token: str,
                               now: datetime) -> Patient | LinkProblem:
    payload = signer.unsign(token, PATIENT_LINK_NAMESPACE, PATIENT_LINK_MAX_AGE_SECONDS)
    if (not isinstance(payload, dict) or not isinstance(payload.get("l"), int)
            or not isinstance(payload.get("s"), str)):
        return LinkProblem.MALFORMED
    link = await db.get(PatientLink, payload["l"])
    if link is None or not same_secret(link.secret_hash, payload["s"]):
        return LinkProblem.UNKNOWN
    if link.revoked_at is not None:
        return LinkProblem.REVOKED
    patient = await db.get(Patient, link.patient_id)
    if patient is None:
        return LinkProblem.UNKNOWN
    if now >= link.expires_at or not patient.is_enrolled_on(now.date()):
        return LinkProblem.EXPIRED
    return patient


async def has_live_link(db: AsyncSession, patient_id: int, now: datetime) -> bool:
    """Whether the patient holds a personal link that works now (not turned off or expired)."""
    return (await db.execute(select(PatientLink.id).where(
        PatientLink.patient_id == patient_id, PatientLink.revoked_at.is_(None),
        PatientLink.expires_at > now).limit(1))).first() is not None


async def revoke_patient_links(db: AsyncSession, patient_id: int, now: datetime) -> int:
    links = (await db.execute(select(PatientLink).where(
        PatientLink.patient_id == patient_id, PatientLink.revoked_at.is_(None)))).scalars().all()
    for link in links:
        link.revoked_at = now
    return len(links)


# --- groups and rosters ---------------------------------------------------------------------

async def roster(db: AsyncSession, group_id: int, day: date) -> list[Patient]:
    """Patients on the group's roster on ``day``."""
    rows = (await db.execute(
        select(Patient, RosterMembership)
        .join(RosterMembership, RosterMembership.patient_id == Patient.id)
        .where(RosterMembership.group_id == group_id)
        .order_by(Patient.legal_name))).all()
    return [patient for patient, membership in rows if membership.covers(day)]


async def group_therapist_ids(db: AsyncSession, group_id: int) -> list[int]:
    return list((await db.execute(select(GroupTherapist.staff_id).where(
        GroupTherapist.group_id == group_id))).scalars())


# --- sessions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionPlan:
    """What staff fill in to schedule a session or a weekly series of them."""

    program_id: int
    title: str
    kind: SessionKind
    timezone: str
    duration_minutes: int
    therapist_ids: tuple[int, ...]
    group_id: int | None = None
    patient_id: int | None = None
    billing_code: str | None = None
    waiting_room: WaitingRoomPolicy = WaitingRoomPolicy.THERAPIST_ADMITS

    def check(self) -> None:
        if not self.title.strip():
            raise ValueError("A session needs a title.")
        if not 5 <= self.duration_minutes <= 8 * 60:
            raise ValueError("Duration must be between 5 minutes and 8 hours.")
        if self.kind is SessionKind.GROUP and self.group_id is None:
            raise ValueError("A group session needs a group.")
        if self.kind is not SessionKind.GROUP and self.group_id is None \
                and self.patient_id is None:
            raise ValueError("This kind of session needs a patient.")
        if not self.therapist_ids:
            raise ValueError("A session needs at least one therapist.")


async def schedule_session(db: AsyncSession, plan: SessionPlan, starts_at: datetime,
                           series_id: int | None = None) -> Session:
    plan.check()
    session = Session(
        program_id=plan.program_id, series_id=series_id, title=plan.title.strip(),
        kind=plan.kind, group_id=plan.group_id, patient_id=plan.patient_id,
        starts_at=starts_at, duration_minutes=plan.duration_minutes, timezone=plan.timezone,
        billing_code=plan.billing_code or DEFAULT_BILLING_CODE[plan.kind],
        waiting_room=plan.waiting_room)
    db.add(session)
    await db.flush()
    for staff_id in plan.therapist_ids:
        db.add(SessionTherapist(session_id=session.id, staff_id=staff_id))
    return session


async def schedule_series(db: AsyncSession, plan: SessionPlan, first_day: date, weeks: int,
                          weekdays: str, local_start: time) -> list[Session]:
    """A weekly series and all its sessions, at the same local time every time."""
    plan.check()
    days = parse_weekdays(weekdays)
    if not 1 <= weeks <= 52:
        raise ValueError("A series runs from 1 to 52 weeks.")
    series = SessionSeries(
        program_id=plan.program_id, title=plan.title.strip(), kind=plan.kind,
        group_id=plan.group_id, patient_id=plan.patient_id,
        weekdays=",".join(map(str, days)), local_start=local_start,
        duration_minutes=plan.duration_minutes, timezone=plan.timezone, first_day=first_day,
        weeks=weeks)
    db.add(series)
    await db.flush()
    return [await schedule_session(db, plan, start, series_id=series.id)
            for start in weekly_occurrences(first_day, weeks, days, local_start, plan.timezone)]


async def session_therapist_ids(db: AsyncSession, session_id: int) -> list[int]:
    return list((await db.execute(select(SessionTherapist.staff_id).where(
        SessionTherapist.session_id == session_id))).scalars())


def sessions_between(start: datetime, end: datetime) -> Select[Session]:
    return (select(Session).where(Session.starts_at >= start, Session.starts_at < end)
            .order_by(Session.starts_at))


async def sessions_for_staff(db: AsyncSession, scope: Scope, start: datetime,
                             end: datetime) -> list[Session]:
    """The sessions in [start, end) that ``vio.policy`` lets this staff member see: an admin's
    whole program's, a therapist's those they are assigned to."""
    query = sessions_between(start, end).where(session_where(scope))
    return list((await db.execute(query)).scalars())


async def sessions_for_patient(db: AsyncSession, patient: Patient, start: datetime,
                               end: datetime) -> list[Session]:
    """Sessions the patient belongs in: their own, and their groups' while on the roster."""
    memberships = (await db.execute(select(RosterMembership).where(
        RosterMembership.patient_id == patient.id))).scalars().all()
    sessions = (await db.execute(sessions_between(start, end).where(
        Session.program_id == patient.program_id))).scalars().all()
    mine = []
    for session in sessions:
        if session.patient_id == patient.id or (session.group_id is not None and any(
                m.group_id == session.group_id and m.covers(session.starts_at.date())
                for m in memberships)):
            mine.append(session)
    return mine


async def room_end_moments(db: AsyncSession, session_ids: Iterable[int]) -> dict[int, datetime]:
    """When each of these sessions' rooms ended (its first ``session-ended`` event), for the
    sessions whose room has ended. A session ended early is over at that moment: what was
    held is all that was scheduled."""
    ids = sorted(set(session_ids))
    if not ids:
        return {}
    rows = await db.execute(
        select(AttendanceEvent.session_id, func.min(AttendanceEvent.at))
        .where(AttendanceEvent.session_id.in_(ids),
               AttendanceEvent.kind == AttendanceKind.SESSION_ENDED)
        .group_by(AttendanceEvent.session_id))
    return {int(session_id): ended for session_id, ended in rows}
