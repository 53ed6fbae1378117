"""Who may enter a session's room, and whether they wait first: every rule in one place.

Pure functions over plain facts, checked on every join and rejoin. The order of the checks is
the order of ``admission``: identity, belonging (roster and consents, or a family member's
invite and the consent naming them; for staff, ``vio.policy.runs_session``: one of the
session's therapists, or an admin of its program), session status, join window, removal,
lock, capacity, and the patient's check-in for this session. ``goes_straight_in`` then says
whether the person enters the room or waits to be admitted. Every refusal is a ``Refusal``
with a code from ``docs/protocol.md`` and a sentence for the person.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from vio.errors import Refusal, refusal
from vio.models import SessionKind, SessionStatus, WaitingRoomPolicy
from vio.policy import runs_session


class Role(enum.StrEnum):
    PATIENT = "patient"
    THERAPIST = "therapist"
    FAMILY = "family"


@dataclass(frozen=True)
class Person:
    """Someone asking to enter; ``identity`` is stable across their devices and reconnections."""

    identity: str
    role: Role
    name: str
    is_admin: bool = False
    patient_id: int | None = None
    staff_id: int | None = None
    family_invite_id: int | None = None
    family_member_id: int | None = None
    device: str | None = None  # for family members: the browser their invite is used on
    program_id: int | None = None  # the program the person belongs to (staff, patients)
    sign_in_id: int | None = None  # the sign-in the connection came with; ends it when it ends

    @property
    def is_therapist(self) -> bool:
        return self.role is Role.THERAPIST


@dataclass(frozen=True)
class InviteFacts:
    """One family invite to this session, as the records say now."""

    family_member_id: int
    expires_at: datetime
    revoked: bool
    consent_active: bool  # the patient's family-disclosure consent naming this person


@dataclass(frozen=True)
class Expected:
    """Someone the session expects: a patient on its roster, or an invited family member."""

    identity: str
    name: str
    role: Role


@dataclass(frozen=True)
class SessionFacts:
    """What the records say about one session, loaded when someone asks to join."""

    session_id: int
    program_id: int
    title: str
    kind: SessionKind
    status: SessionStatus
    starts_at: datetime
    ends_at: datetime
    timezone: str
    waiting_room: WaitingRoomPolicy
    therapist_ids: frozenset[int]
    # Patients who belong: on the roster (or the session's own patient) with active enrollment.
    patient_ids: frozenset[int]
    # Of those, the ones whose consents for this kind of session are active now.
    consented_patient_ids: frozenset[int]
    # Patients who have confirmed where they are for this session.
    checked_in_patient_ids: frozenset[int] = field(default_factory=frozenset)
    # Every family invite to this session, by invite id (revoked and expired ones too).
    invites: dict[int, InviteFacts] = field(default_factory=dict)
    # Who is expected (the roster's patients, then invited family members), for the therapists.
    expected: tuple[Expected, ...] = ()


@dataclass(frozen=True)
class RoomView:
    """The live room's side of the rules."""

    removed: frozenset[str]
    locked: bool
    ended: bool
    occupancy: int  # people (not connections) in the room or waiting
    capacity: int
    therapist_present: bool
    reconnecting: frozenset[str]  # identities that dropped within the reconnect grace
    present: frozenset[str] = frozenset()  # identities in the room or waiting now


EMPTY_ROOM = RoomView(removed=frozenset(), locked=False, ended=False, occupancy=0, capacity=1,
                      therapist_present=False, reconnecting=frozenset())


def _local(moment: datetime, timezone: str) -> str:
    return moment.astimezone(ZoneInfo(timezone)).strftime("%-I:%M %p %Z")


def _minutes_text(delta: timedelta) -> str:
    minutes = max(1, round(delta.total_seconds() / 60))
    if minutes < 60:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} hour{'s' if hours != 1 else ''}"


def _belongs(person: Person, facts: SessionFacts, now: datetime) -> None:
    if person.is_therapist:
        if not runs_session(is_admin=person.is_admin, staff_program_id=person.program_id,
                            staff_id=person.staff_id, session_program_id=facts.program_id,
                            therapist_ids=facts.therapist_ids):
            raise Refusal("not-on-roster", "You are not one of this session's therapists.")
    elif person.role is Role.PATIENT:
        if person.patient_id not in facts.patient_ids:
            raise Refusal("not-on-roster",
                          "This session isn't on your schedule. Please check with your care team.")
        if person.patient_id not in facts.consented_patient_ids:
            raise refusal("consent-missing")
    else:
        invite = facts.invites.get(person.family_invite_id or -1)
        if invite is None or invite.family_member_id != person.family_member_id:
            raise refusal("wrong-session")
        if invite.revoked:
            raise refusal("invite-revoked")
        if not invite.consent_active:
            raise refusal("consent-revoked")
        if facts.status is not SessionStatus.ENDED and now < facts.ends_at and (
                now >= invite.expires_at or facts.status is SessionStatus.CANCELLED):
            raise refusal("invite-expired")


def admission(person: Person | None, facts: SessionFacts | None, room: RoomView,
              now: datetime, join_early: timedelta) -> None:
    """Raise ``Refusal`` with a code and a kind sentence, or return: the person may enter."""
    if person is None:
        raise refusal("not-signed-in")
    if facts is None:
        raise refusal("no-such-session")
    _belongs(person, facts, now)
    if facts.status is SessionStatus.CANCELLED:
        raise refusal("session-cancelled")
    if facts.status is SessionStatus.ENDED or room.ended or now >= facts.ends_at:
        raise refusal("session-ended")
    opens_at = facts.starts_at - join_early
    if now < opens_at:
        raise Refusal("too-early",
                      f"Your session opens at {_local(opens_at, facts.timezone)}, "
                      f"in {_minutes_text(opens_at - now)}.")
    if person.identity in room.removed:
        raise refusal("removed")
    returning = person.identity in room.reconnecting or person.identity in room.present
    if room.locked and not person.is_therapist and not returning:
        raise refusal("room-locked")
    # Capacity counts people: someone already here (another window) takes no second place.
    if room.occupancy >= room.capacity and not person.is_therapist \
            and person.identity not in room.present:
        raise refusal("room-full")
    if person.role is Role.PATIENT and person.patient_id not in facts.checked_in_patient_ids:
        raise refusal("check-in-needed")


def goes_straight_in(person: Person, facts: SessionFacts, room: RoomView) -> bool:
    """True: into the room; False: into the waiting room until a therapist admits them."""
    if person.is_therapist or person.identity in room.reconnecting:
        return True
    if person.role is Role.FAMILY:
        return False
    if facts.waiting_room is WaitingRoomPolicy.OPEN:
        return True
    return (facts.waiting_room is WaitingRoomPolicy.AUTO_WITH_THERAPIST
            and room.therapist_present)
