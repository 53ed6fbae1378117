"""Loading what the admission rules need from the database, and writing the room's outcomes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vio import clinic
from vio.models import Consent, ConsentKind, Patient, Session, SessionKind, SessionStatus
from vio.pages.common import Viewer, ViewerRole
from vio.rooms.admission import Person, Role, SessionFacts

# Consents a patient needs, by kind of session (DESIGN.md "Consent").
NEEDED_CONSENTS = {
    SessionKind.GROUP: {ConsentKind.TELEHEALTH, ConsentKind.GROUP_PARTICIPATION},
    SessionKind.MULTI_FAMILY: {ConsentKind.TELEHEALTH, ConsentKind.GROUP_PARTICIPATION},
    SessionKind.INDIVIDUAL: {ConsentKind.TELEHEALTH},
    SessionKind.FAMILY: {ConsentKind.TELEHEALTH},
}


def person_for(viewer: Viewer, family_name: str | None = None) -> Person | None:
    if viewer.staff is not None:
        return Person(identity=f"staff:{viewer.staff.id}", role=Role.THERAPIST,
                      name=viewer.staff.name, is_admin=viewer.role is ViewerRole.ADMIN,
                      staff_id=viewer.staff.id)
    if viewer.patient is not None:
        return Person(identity=f"patient:{viewer.patient.id}", role=Role.PATIENT,
                      name=viewer.patient.display_name, patient_id=viewer.patient.id)
    return None


async def load_facts(db: AsyncSession, session_id: int, now: datetime) -> SessionFacts | None:
    session = await db.get(Session, session_id)
    if session is None:
        return None
    day = session.starts_at.date()
    if session.group_id is not None:
        candidates = await clinic.roster(db, session.group_id, day)
    elif session.patient_id is not None:
        patient = await db.get(Patient, session.patient_id)
        candidates = [patient] if patient is not None else []
    else:
        candidates = []
    members = [p for p in candidates if p.is_enrolled_on(now.date())]
    consents = (await db.execute(select(Consent).where(
        Consent.patient_id.in_([p.id for p in members])))).scalars().all()
    needed = NEEDED_CONSENTS[session.kind]
    consented = frozenset(
        p.id for p in members
        if needed <= {c.kind for c in consents if c.patient_id == p.id and c.active_at(now)})
    return SessionFacts(
        session_id=session.id, program_id=session.program_id, title=session.title,
        kind=session.kind, status=session.status, starts_at=session.starts_at,
        ends_at=session.ends_at, timezone=session.timezone, waiting_room=session.waiting_room,
        therapist_ids=frozenset(await clinic.session_therapist_ids(db, session.id)),
        patient_ids=frozenset(p.id for p in members), consented_patient_ids=consented)


async def set_status(db: AsyncSession, session_id: int, status: SessionStatus) -> None:
    session = await db.get(Session, session_id)
    if session is not None and session.status is not status:
        session.status = status
        await db.commit()


async def extend(db: AsyncSession, session_id: int, minutes: int) -> datetime | None:
    session = await db.get(Session, session_id)
    if session is None:
        return None
    session.extended_minutes += minutes
    await db.commit()
    return session.ends_at
