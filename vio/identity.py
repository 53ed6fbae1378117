"""Who is asking, and the identity strings that name a person in rooms, attendance and audit.

An identity string is ``kind:id``: ``staff:3``, ``patient:12``, ``family-invite:7``. It is built
and read only here. ``Viewer`` is who is asking on one request or connection; the pages make one
from the sign-in cookie or a room ticket (``vio.pages.common``), the rooms read it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from vio.models import Patient, StaffRole, StaffUser
from vio.security import Signer

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

    @property
    def is_staff(self) -> bool:
        return self.staff is not None

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


ROOM_TICKET_NAMESPACE = "room-ticket"
ROOM_TICKET_MAX_AGE_SECONDS = 12 * 3600


def _staff_viewer(staff: StaffUser | None) -> Viewer:
    if staff is None or not staff.active:
        return ANONYMOUS
    role = ViewerRole.ADMIN if staff.role is StaffRole.ADMIN else ViewerRole.THERAPIST
    return Viewer(role, staff=staff)


async def viewer_from_cookie(cookie: MutableMapping[str, Any], db: AsyncSession, *,
                             idle_logoff_minutes: int, today: date) -> Viewer:
    """The person the sign-in cookie names, after the idle sign-out rule for staff."""
    staff_id = cookie.get("staff_id")
    if isinstance(staff_id, int):
        seen = cookie.get("seen")
        if not isinstance(seen, (int, float)) or time.time() - seen > idle_logoff_minutes * 60:
            cookie.clear()
            return ANONYMOUS
        viewer = _staff_viewer(await db.get(StaffUser, staff_id))
        if viewer.staff is not None:
            cookie["seen"] = int(time.time())
        return viewer
    patient_id = cookie.get("patient_id")
    if isinstance(patient_id, int):
        patient = await db.get(Patient, patient_id)
        if patient is not None and patient.is_enrolled_on(today):
            return Viewer(ViewerRole.PATIENT, patient=patient)
        cookie.clear()
        return ANONYMOUS
    invite_id = cookie.get("family_invite_id")
    if isinstance(invite_id, int):
        return Viewer(ViewerRole.FAMILY, family_invite_id=invite_id,
                      family_name=cookie.get("family_name"), device=cookie.get("device"))
    return ANONYMOUS


def room_ticket(signer: Signer, viewer: Viewer, session_id: int) -> str:
    """A signed ticket naming who opened a room page, so each browser tab keeps its person."""
    return signer.sign(
        {"who": viewer.actor, "s": session_id, "n": viewer.family_name, "d": viewer.device},
        ROOM_TICKET_NAMESPACE)


async def viewer_from_ticket(signer: Signer, db: AsyncSession, ticket: str, session_id: int,
                             today: date) -> Viewer:
    """The person a room ticket names, if it is genuine, fresh and for this session."""
    payload = signer.unsign(ticket, ROOM_TICKET_NAMESPACE, ROOM_TICKET_MAX_AGE_SECONDS)
    if not isinstance(payload, dict) or payload.get("s") != session_id:
        return ANONYMOUS
    parsed = parse_identity(str(payload.get("who", "")))
    if parsed is None:
        return ANONYMOUS
    kind, record_id = parsed
    if kind == STAFF:
        return _staff_viewer(await db.get(StaffUser, record_id))
    if kind == PATIENT:
        patient = await db.get(Patient, record_id)
        if patient is not None and patient.is_enrolled_on(today):
            return Viewer(ViewerRole.PATIENT, patient=patient)
    if kind == FAMILY_INVITE:
        name, device = payload.get("n"), payload.get("d")
        return Viewer(ViewerRole.FAMILY, family_invite_id=record_id,
                      family_name=name if isinstance(name, str) else None,
                      device=device if isinstance(device, str) else None)
    return ANONYMOUS
