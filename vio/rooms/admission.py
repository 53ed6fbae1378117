"""Who may enter a session's room, and whether they wait first: every rule in one place.

Pure functions over plain facts, checked on every join and rejoin. The order of the checks is
the order of ``admission``: identity, belonging (roster and consents), session status, join
window, removal, lock, capacity, and the patient's check-in for this session.
``goes_straight_in`` then says whether the person enters the room or waits to be admitted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from vio.errors import Refusal
from vio.models import SessionKind, SessionStatus, WaitingRoomPolicy


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
    family_member_id: int | None = None
    device: str | None = None  # for family members: the browser their invite is used on

    @property
    def is_therapist(self) -> bool:
        return self.role is Role.THERAPIST


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
    # Family members with a valid invite to this session.
    invited_family_ids: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class RoomView:
    """The live room's side of the rules."""

    removed: frozenset[str]
    locked: bool
    ended: bool
    occupancy: int
    capacity: int
    therapist_present: bool
    reconnecting: frozenset[str]  # identities that dropped within the reconnect grace


def _local(moment: datetime, timezone: str) -> str:
    return moment.astimezone(ZoneInfo(timezone)).strftime("%-I:%M %p")


def _minutes_text(delta: timedelta) -> str:
    minutes = max(1, round(delta.total_seconds() / 60))
    if minutes < 60:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} hour{'s' if hours != 1 else ''}"


def admission(person: Person | None, facts: SessionFacts | None, room: RoomView,
              now: datetime, join_early: timedelta) -> None:
    """Raise ``Refusal`` with a code and a kind sentence, or return: the person may enter."""
    if person is None:
        raise Refusal("not-signed-in",
                      "Please open your personal link again, or sign in, to join this session.")
    if facts is None:
        raise Refusal("no-such-session", "We can't find this session.")
    if person.is_therapist:
        if not (person.is_admin or person.staff_id in facts.therapist_ids):
            raise Refusal("not-on-roster", "You are not one of this session's therapists.")
    elif person.role is Role.PATIENT:
        if person.patient_id not in facts.patient_ids:
            raise Refusal("not-on-roster",
                          "This session isn't on your schedule. Please check with your care team.")
        if person.patient_id not in facts.consented_patient_ids:
            raise Refusal("consent-missing",
                          "Before you can join, we need your signed consent for video sessions. "
                          "Please contact your care team.")
    elif person.family_member_id not in facts.invited_family_ids:
        raise Refusal("wrong-session", "This invitation is for a different session.")

    if facts.status is SessionStatus.CANCELLED:
        raise Refusal("session-cancelled", "This session was cancelled.")
    if facts.status is SessionStatus.ENDED or room.ended or now >= facts.ends_at:
        raise Refusal("session-ended", "This session has ended.")
    opens_at = facts.starts_at - join_early
    if now < opens_at:
        raise Refusal("too-early",
                      f"Your session opens at {_local(opens_at, facts.timezone)}, "
                      f"in {_minutes_text(opens_at - now)}.")
    if person.identity in room.removed:
        raise Refusal("removed", "A therapist has removed you from this session.")
    if room.locked and not person.is_therapist and person.identity not in room.reconnecting:
        raise Refusal("room-locked",
                      "The therapist has closed this session to newcomers. "
                      "Please contact your care team.")
    if room.occupancy >= room.capacity and not person.is_therapist:
        raise Refusal("room-full", "This session is full right now.")
    if person.role is Role.PATIENT and person.patient_id not in facts.checked_in_patient_ids:
        raise Refusal("check-in-needed",
                      "Please confirm where you are right now before joining.")


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
