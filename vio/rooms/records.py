"""Loading what the admission rules need from the database, and writing the room's outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from vio import audit_chain, clinic, family
from vio.clock import Clock
from vio.errors import refusal
from vio.identity import (
    Viewer,
    ViewerRole,
    family_invite_identity,
    keep_signed_in,
    patient_identity,
    staff_identity,
)
from vio.models import (
    AttendanceEvent,
    AttendanceKind,
    Base,
    Consent,
    ConsentKind,
    FamilyInvite,
    FamilyMember,
    Patient,
    Program,
    Session,
    SessionKind,
    SessionStatus,
)
from vio.rooms import fences
from vio.rooms.admission import Expected, InviteFacts, Person, Role, SessionFacts
from vio.rooms.effects import RoomEvent
from vio.rooms.live import RoomStore

# Consents a patient needs, by kind of session (DESIGN.md "Consent").
NEEDED_CONSENTS = {
    SessionKind.GROUP: {ConsentKind.TELEHEALTH, ConsentKind.GROUP_PARTICIPATION},
    SessionKind.MULTI_FAMILY: {ConsentKind.TELEHEALTH, ConsentKind.GROUP_PARTICIPATION},
    SessionKind.INDIVIDUAL: {ConsentKind.TELEHEALTH},
    SessionKind.FAMILY: {ConsentKind.TELEHEALTH},
}


class SavedRoom(Base):
    """What a live room knows that must outlive the process serving it (``Room.durable``)."""

    __tablename__ = "room_states"

    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    state: Mapped[dict[str, Any]]
    saved_at: Mapped[datetime]
    epoch: Mapped[int | None] = mapped_column(BigInteger)  # of the room that saved it


async def load_room_state(db: AsyncSession,
                          session_id: int) -> tuple[dict[str, Any], datetime] | None:
    """The room's saved durable state and when it was saved, if it was ever open."""
    saved = await db.get(SavedRoom, session_id)
    return None if saved is None else (dict(saved.state), saved.saved_at)


async def save_room_state(db: AsyncSession, session_id: int, state: dict[str, Any],
                          at: datetime, epoch: int | None = None) -> None:
    saved = await db.get(SavedRoom, session_id)
    if saved is None:
        db.add(SavedRoom(session_id=session_id, state=state, saved_at=at, epoch=epoch))
    else:
        saved.state, saved.saved_at, saved.epoch = state, at, epoch
    await db.commit()


async def person_for(db: AsyncSession, viewer: Viewer) -> Person | None:
    """The person behind a viewer (None: nobody signed in). Admission checks the rest."""
    if viewer.family_invite_id is not None:
        invite = await db.get(FamilyInvite, viewer.family_invite_id)
        member = None if invite is None else await db.get(FamilyMember, invite.family_member_id)
        if invite is None or member is None:
            raise refusal("invite-unknown")
        return Person(identity=family_invite_identity(invite.id), role=Role.FAMILY,
                      name=viewer.family_name or member.name, family_invite_id=invite.id,
                      family_member_id=member.id, device=viewer.device,
                      sign_in_id=viewer.sign_in_id)
    return staff_or_patient(viewer)


def staff_or_patient(viewer: Viewer) -> Person | None:
    if viewer.staff is not None:
        return Person(identity=staff_identity(viewer.staff.id), role=Role.THERAPIST,
                      name=viewer.staff.name, is_admin=viewer.role is ViewerRole.ADMIN,
                      staff_id=viewer.staff.id, program_id=viewer.staff.program_id,
                      sign_in_id=viewer.sign_in_id)
    if viewer.patient is not None:
        return Person(identity=patient_identity(viewer.patient.id), role=Role.PATIENT,
                      name=viewer.patient.display_name, patient_id=viewer.patient.id,
                      program_id=viewer.patient.program_id, sign_in_id=viewer.sign_in_id)
    return None


async def _invites(db: AsyncSession, session_id: int,
                   now: datetime) -> tuple[dict[int, InviteFacts], list[Expected]]:
    """Every invite to the session, and the family members whose invites still stand."""
    invites = (await db.execute(select(FamilyInvite).where(
        FamilyInvite.session_id == session_id).order_by(FamilyInvite.id))).scalars().all()
    facts = {}
    expected = []
    for invite in invites:
        member = await db.get(FamilyMember, invite.family_member_id)
        consent = None if member is None else await family.active_disclosure_consent(
            db, member, now)
        facts[invite.id] = InviteFacts(family_member_id=invite.family_member_id,
                                       expires_at=invite.expires_at,
                                       revoked=invite.revoked_at is not None,
                                       consent_active=consent is not None)
        if member is not None and invite.revoked_at is None and consent is not None:
            expected.append(Expected(family_invite_identity(invite.id), member.name,
                                     Role.FAMILY))
    return facts, expected


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
    checked_in = frozenset((await db.execute(select(AttendanceEvent.patient_id).where(
        AttendanceEvent.session_id == session.id,
        AttendanceEvent.kind == AttendanceKind.CHECKED_IN))).scalars())
    invites, family_expected = await _invites(db, session.id, now)
    expected = (*(Expected(patient_identity(p.id), p.display_name, Role.PATIENT)
                  for p in members), *family_expected)
    return SessionFacts(
        session_id=session.id, program_id=session.program_id, title=session.title,
        kind=session.kind, status=session.status, starts_at=session.starts_at,
        ends_at=session.ends_at, timezone=session.timezone, waiting_room=session.waiting_room,
        therapist_ids=frozenset(await clinic.session_therapist_ids(db, session.id)),
        patient_ids=frozenset(p.id for p in members), consented_patient_ids=consented,
        checked_in_patient_ids=frozenset(i for i in checked_in if i is not None),
        invites=invites, expected=expected)


async def append_event(db: AsyncSession, session_id: int, at: datetime, event: RoomEvent,
                       epoch: int | None = None) -> None:
    """Append one attendance event and commit it (refused when ``epoch`` is behind)."""
    db.add(AttendanceEvent(session_id=session_id, at=at, kind=event.kind, person=event.person,
                           role=event.role, connection=event.connection,
                           patient_id=event.patient_id, detail=event.detail, epoch=epoch))
    await db.commit()


async def latest_check_in(db: AsyncSession, session_id: int,
                          patient_id: int) -> dict[str, Any] | None:
    row = (await db.execute(select(AttendanceEvent).where(
        AttendanceEvent.session_id == session_id, AttendanceEvent.patient_id == patient_id,
        AttendanceEvent.kind == AttendanceKind.CHECKED_IN).order_by(AttendanceEvent.id.desc())
        .limit(1))).scalar_one_or_none()
    return None if row is None else dict(row.detail)


async def safety_card(db: AsyncSession, session_id: int, patient_id: int, actor: str,
                      now: datetime) -> dict[str, Any]:
    """Where the patient said they are, whom to call, and the local emergency number; audited."""
    patient = await db.get(Patient, patient_id)
    assert patient is not None
    program = await db.get(Program, patient.program_id)
    assert program is not None
    check_in = await latest_check_in(db, session_id, patient_id)
    await audit_chain.audit(db, now, actor, "safety-card-view", patient_identity(patient_id),
                            session=session_id)
    await db.commit()
    return {"location": check_in, "usual_location": patient.usual_location,
            "home_address": patient.home_address, "phone": patient.phone,
            "emergency_contact": {"name": patient.emergency_contact_name,
                                  "phone": patient.emergency_contact_phone},
            "emergency_number": program.emergency_number}


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


class DatabaseRoomStore(RoomStore):
    """The rooms' store: each write in its own transaction, committed before the room goes on.

    Writes from every room of the process go one at a time (``_writing``): on SQLite a storm
    of joins then queues here instead of failing with "database is locked". A write carrying
    an epoch the database refuses raises ``fences.StaleEpoch``.
    """

    def __init__(self, db: async_sessionmaker[AsyncSession], clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._writing = asyncio.Lock()

    async def audit(self, actor: str, action: str, target: str, **detail: object) -> None:
        async with self._writing, self.db() as session:
            await audit_chain.audit(session, self.clock.now(), actor, action, target, **detail)
            await session.commit()

    @asynccontextmanager
    async def _fenced(self, session_id: int, epoch: int | None) -> AsyncIterator[AsyncSession]:
        """One write's transaction, refused if ``epoch`` is behind the room's (attendance and
        the saved state pass None here: their rows carry the epoch, and the database's triggers
        refuse them)."""
        async with self._writing, self.db() as session:
            try:
                await fences.check(session, session_id, epoch)
                yield session
            except DBAPIError as error:
                if fences.is_stale(error):
                    raise fences.StaleEpoch(f"room {session_id}: a write of an old epoch") from None
                raise

    async def set_status(self, session_id: int, status: SessionStatus,
                         epoch: int | None = None) -> None:
        async with self._fenced(session_id, epoch) as session:
            await set_status(session, session_id, status)

    async def extend(self, session_id: int, minutes: int,
                     epoch: int | None = None) -> datetime | None:
        async with self._fenced(session_id, epoch) as session:
            return await extend(session, session_id, minutes)

    async def record(self, session_id: int, event: RoomEvent, epoch: int | None = None) -> None:
        async with self._fenced(session_id, None) as session:
            await append_event(session, session_id, self.clock.now(), event, epoch)

    async def save_state(self, session_id: int, state: dict[str, Any],
                         epoch: int | None = None) -> None:
        async with self._fenced(session_id, None) as session:
            await save_room_state(session, session_id, state, self.clock.now(), epoch)

    async def keep_signed_in(self, sign_in_ids: tuple[int, ...]) -> None:
        async with self._writing, self.db() as session:
            await keep_signed_in(session, sign_in_ids, self.clock.now())
            await session.commit()

    async def safety_card(self, session_id: int, patient_id: int, actor: str) -> dict[str, Any]:
        async with self._writing, self.db() as session:
            return await safety_card(session, session_id, patient_id, actor,
                                             self.clock.now())
