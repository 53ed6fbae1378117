"""Who is asking: sign-in sessions kept on the server, room tickets bound to them, and the
identity strings that name a person in rooms, attendance and audit.

An identity string is ``kind:id``: ``staff:3``, ``patient:12``, ``family-invite:7``. It is built
and read only here.

A sign-in is a ``SignInSession`` row. The browser's cookie carries only its opaque token (256
random bits; the row keeps the token's SHA-256), so ending the row ends the sign-in at once,
wherever the cookie was copied to. A sign-in ends on sign-out, when the person's links or
consent are revoked or their account is turned off (``end_sign_ins``), after
``SignInRules.idle`` without a request (unless ``in_live_room`` says the sign-in holds a live
room connection), and ``SignInRules.lifetime`` after it began in any case. A live room, which
makes no HTTP requests, marks its people's sign-ins as seen with every attendance heartbeat
(``keep_signed_in``), so a therapist leaving a long group is still signed in, on any node.

A room ticket names the sign-in that opened the room page, so each browser tab keeps its person
and a ticket is worth nothing once that sign-in has ended. ``Viewer`` is who is asking on one
request or connection; the pages make one from the cookie or a ticket (``vio.pages.common``).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from vio.models import (
    Patient,
    SignInKind,
    SignInSession,
    StaffRole,
    StaffUser,
)
from vio.security import Signer, secret_hash

STAFF = "staff"
PATIENT = "patient"
FAMILY_INVITE = "family-invite"
FAMILY_MEMBER = "family-member"
SESSION = "session"
_KINDS = (STAFF, PATIENT, FAMILY_INVITE, FAMILY_MEMBER, SESSION)


def identity(kind: str, record_id: int) -> str:
    """``kind:id`` for one of the kinds above."""
    assert kind in _KINDS, kind
    return f"{kind}:{record_id}"


def staff_identity(staff_id: int) -> str:
    return identity(STAFF, staff_id)


def patient_identity(patient_id: int) -> str:
    return identity(PATIENT, patient_id)


def family_invite_identity(invite_id: int) -> str:
    return identity(FAMILY_INVITE, invite_id)


def family_member_identity(member_id: int) -> str:
    return identity(FAMILY_MEMBER, member_id)


def session_identity(session_id: int) -> str:
    return identity(SESSION, session_id)


def parse_identity(value: str) -> tuple[str, int] | None:
    """``(kind, id)`` of an identity string, or None if it is not one."""
    kind, sep, raw = value.partition(":")
    if not sep or kind not in _KINDS or not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return None
    return kind, int(raw)


class ViewerRole(enum.StrEnum):
    ANONYMOUS = "anonymous"
    PATIENT = "patient"
    FAMILY = "family"
    THERAPIST = "therapist"
    ADMIN = "admin"


@dataclass(frozen=True)
class Viewer:
    """Who is asking: nobody, a staff member, a patient, or a family member with an invite."""

    role: ViewerRole
    staff: StaffUser | None = None
    patient: Patient | None = None
    family_invite_id: int | None = None
    family_name: str | None = None  # the name a family member chose for the room
    device: str | None = None  # a family member's browser, so one invite serves one device
    sign_in_id: int | None = None  # the SignInSession this request is signed in with

    @property
    def is_staff(self) -> bool:
        return self.staff is not None

    @property
    def program_id(self) -> int | None:
        if self.staff is not None:
            return self.staff.program_id
        if self.patient is not None:
            return self.patient.program_id
        return None

    @property
    def actor(self) -> str:
        if self.staff is not None:
            return staff_identity(self.staff.id)
        if self.patient is not None:
            return patient_identity(self.patient.id)
        if self.family_invite_id is not None:
            return family_invite_identity(self.family_invite_id)
        return "anonymous"


ANONYMOUS = Viewer(ViewerRole.ANONYMOUS)


# --- sign-in sessions ---------------------------------------------------------------------

SEEN_WRITE_SECONDS = 15  # last_seen_at is written at most this often per sign-in


@dataclass(frozen=True)
class SignInRules:
    idle: timedelta
    lifetime: timedelta
    second_factor: timedelta


class EndReason(enum.StrEnum):
    SIGNED_OUT = "signed-out"
    IDLE = "idle"
    EXPIRED = "expired"
    LINKS_REVOKED = "links-revoked"
    CONSENT_REVOKED = "consent-revoked"
    DEACTIVATED = "deactivated"
    NOT_ENROLLED = "not-enrolled"


@dataclass(frozen=True)
class NewSignIn:
    """A sign-in just made: the cookie's token (shown once) and its row."""

    token: str
    row: SignInSession


async def start_sign_in(db: AsyncSession, kind: SignInKind, now: datetime, rules: SignInRules,
                        *, staff_id: int | None = None, patient_id: int | None = None,
                        family_invite_id: int | None = None,
                        family_member_id: int | None = None, family_name: str | None = None,
                        device: str | None = None,
                        second_factor_pending: bool = False) -> NewSignIn:
    """Store a new sign-in session and return the token for the cookie (flushed, not
    committed)."""
    token = secrets.token_urlsafe(32)
    lifetime = rules.second_factor if second_factor_pending else rules.lifetime
    row = SignInSession(
        token_hash=secret_hash(token), kind=kind, staff_id=staff_id, patient_id=patient_id,
        family_invite_id=family_invite_id, family_member_id=family_member_id,
        family_name=family_name, device=device, created_at=now, last_seen_at=now,
        expires_at=now + lifetime, second_factor_pending=second_factor_pending)
    db.add(row)
    await db.flush()
    return NewSignIn(token, row)


def _still_live(row: SignInSession, now: datetime, rules: SignInRules,
                in_live_room: Callable[[int], bool]) -> EndReason | None:
    """Why this sign-in has ended by now, or None while it holds."""
    if now >= row.expires_at:
        return EndReason.EXPIRED
    if now - row.last_seen_at > rules.idle and not in_live_room(row.id):
        return EndReason.IDLE
    return None


async def live_sign_in(db: AsyncSession, row: SignInSession | None, now: datetime,
                       rules: SignInRules, in_live_room: Callable[[int], bool],
                       touch: bool = True) -> SignInSession | None:
    """The row if its sign-in holds now (and marks it seen); ends it if it has lapsed."""
    if row is None or row.ended_at is not None:
        return None
    lapsed = _still_live(row, now, rules, in_live_room)
    if lapsed is not None:
        row.ended_at, row.end_reason = now, lapsed.value
        await db.commit()
        return None
    if touch and (now - row.last_seen_at).total_seconds() >= SEEN_WRITE_SECONDS:
        row.last_seen_at = now
        await db.commit()
    return row


async def keep_signed_in(db: AsyncSession, sign_in_ids: Iterable[int], now: datetime) -> int:
    """Mark open sign-ins as seen now: they hold live room connections, which make no HTTP
    requests (``vio.rooms.room.Room.tick``). Ended or expired sign-ins stay ended. Leaves
    committing to the caller; returns how many were marked."""
    ids = sorted(set(sign_in_ids))
    if not ids:
        return 0
    rows = (await db.execute(select(SignInSession).where(
        SignInSession.id.in_(ids), SignInSession.ended_at.is_(None),
        SignInSession.expires_at > now))).scalars().all()
    for row in rows:
        row.last_seen_at = max(row.last_seen_at, now)
    return len(rows)


async def sign_in_for_token(db: AsyncSession, token: object, now: datetime, rules: SignInRules,
                            in_live_room: Callable[[int], bool]) -> SignInSession | None:
    if not isinstance(token, str) or not token.isascii() or len(token) > 100:
        return None
    row = (await db.execute(select(SignInSession).where(
        SignInSession.token_hash == secret_hash(token)))).scalar_one_or_none()
    return await live_sign_in(db, row, now, rules, in_live_room)


async def end_sign_ins(db: AsyncSession, now: datetime, reason: EndReason, *,
                       sign_in_id: int | None = None, staff_id: int | None = None,
                       patient_id: int | None = None, family_member_id: int | None = None,
                       family_invite_id: int | None = None) -> list[int]:
    """End every open sign-in matching one of the given ids; returns the ids of those ended.
    Leaves committing to the caller."""
    conditions: list[ColumnElement[bool]] = []
    if sign_in_id is not None:
        conditions.append(SignInSession.id == sign_in_id)
    if staff_id is not None:
        conditions.append(SignInSession.staff_id == staff_id)
    if patient_id is not None:
        conditions.append(and_(SignInSession.patient_id == patient_id,
                               SignInSession.kind == SignInKind.PATIENT))
    if family_member_id is not None:
        conditions.append(SignInSession.family_member_id == family_member_id)
    if family_invite_id is not None:
        conditions.append(SignInSession.family_invite_id == family_invite_id)
    if not conditions:
        return []
    rows = (await db.execute(select(SignInSession).where(
        SignInSession.ended_at.is_(None), *conditions))).scalars().all()
    for row in rows:
        row.ended_at, row.end_reason = now, reason.value
    return [row.id for row in rows]


def _staff_viewer(staff: StaffUser | None, sign_in_id: int) -> Viewer:
    if staff is None or not staff.active:
        return ANONYMOUS
    role = ViewerRole.ADMIN if staff.role is StaffRole.ADMIN else ViewerRole.THERAPIST
    return Viewer(role, staff=staff, sign_in_id=sign_in_id)


async def viewer_for(db: AsyncSession, row: SignInSession | None, now: datetime) -> Viewer:
    """The person a live sign-in names (a pending second factor names no one)."""
    if row is None or row.second_factor_pending:
        return ANONYMOUS
    if row.kind is SignInKind.STAFF and row.staff_id is not None:
        return _staff_viewer(await db.get(StaffUser, row.staff_id), row.id)
    if row.kind is SignInKind.PATIENT and row.patient_id is not None:
        patient = await db.get(Patient, row.patient_id)
        if patient is not None and patient.is_enrolled_on(now.date()):
            return Viewer(ViewerRole.PATIENT, patient=patient, sign_in_id=row.id)
        row.ended_at, row.end_reason = now, EndReason.NOT_ENROLLED.value
        await db.commit()
        return ANONYMOUS
    if row.kind is SignInKind.FAMILY and row.family_invite_id is not None:
        return Viewer(ViewerRole.FAMILY, family_invite_id=row.family_invite_id,
                      family_name=row.family_name, device=row.device, sign_in_id=row.id)
    return ANONYMOUS


async def viewer_from_cookie(db: AsyncSession, token: object, now: datetime,
                             rules: SignInRules,
                             in_live_room: Callable[[int], bool]) -> Viewer:
    """The person the cookie's sign-in token names, after the idle and lifetime rules."""
    return await viewer_for(db, await sign_in_for_token(db, token, now, rules, in_live_room),
                            now)


# --- room tickets ---------------------------------------------------------------------------

ROOM_TICKET_NAMESPACE = "room-ticket"
ROOM_TICKET_MAX_AGE_SECONDS = 12 * 3600


def room_ticket(signer: Signer, viewer: Viewer, session_id: int) -> str:
    """A signed ticket naming the sign-in that opened a room page, for one session."""
    return ticket_for_sign_in(signer, viewer.sign_in_id, session_id)


def ticket_for_sign_in(signer: Signer, sign_in_id: int | None, session_id: int) -> str:
    return signer.sign({"sid": sign_in_id, "s": session_id}, ROOM_TICKET_NAMESPACE)


def ticket_sign_in(signer: Signer, ticket: str, session_id: int) -> int | None:
    """The sign-in a room ticket names, if the ticket is genuine and for this session (whether
    that sign-in still holds is for the caller to look up)."""
    payload = signer.unsign(ticket, ROOM_TICKET_NAMESPACE, ROOM_TICKET_MAX_AGE_SECONDS)
    if not isinstance(payload, dict) or payload.get("s") != session_id:
        return None
    sign_in_id = payload.get("sid")
    if not isinstance(sign_in_id, int) or isinstance(sign_in_id, bool) \
            or not 0 < sign_in_id < 2 ** 62:
        return None
    return sign_in_id


async def viewer_from_ticket(signer: Signer, db: AsyncSession, ticket: str, session_id: int,
                             now: datetime, rules: SignInRules,
                             in_live_room: Callable[[int], bool]) -> Viewer:
    """The person a room ticket names, if it is genuine, for this session, and the sign-in
    that issued it still holds."""
    sign_in_id = ticket_sign_in(signer, ticket, session_id)
    if sign_in_id is None:
        return ANONYMOUS
    row = await live_sign_in(db, await db.get(SignInSession, sign_in_id), now, rules,
                             in_live_room)
    return await viewer_for(db, row, now)
