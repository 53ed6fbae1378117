"""The admission rules as pure functions: no socket, no event loop."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from vio.errors import Refusal
from vio.models import SessionKind, SessionStatus, WaitingRoomPolicy
from vio.rooms.admission import (
    InviteFacts,
    Person,
    Role,
    RoomView,
    SessionFacts,
    admission,
    goes_straight_in,
)

START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)  # 6:00 PM in Chicago
FACTS = SessionFacts(
    session_id=1, program_id=1, title="Evening", kind=SessionKind.GROUP,
    status=SessionStatus.SCHEDULED, starts_at=START, ends_at=START + timedelta(hours=3),
    timezone="America/Chicago", waiting_room=WaitingRoomPolicy.THERAPIST_ADMITS,
    therapist_ids=frozenset({10}), patient_ids=frozenset({1, 2}),
    consented_patient_ids=frozenset({1}), checked_in_patient_ids=frozenset({1}))
ROOM = RoomView(removed=frozenset(), locked=False, ended=False, occupancy=0, capacity=3,
                therapist_present=False, reconnecting=frozenset())
PATIENT = Person("patient:1", Role.PATIENT, "Dana R.", patient_id=1)
THERAPIST = Person("staff:10", Role.THERAPIST, "Jordan", staff_id=10)
EARLY = timedelta(minutes=15)
NOW = START + timedelta(minutes=5)


def refused(person=PATIENT, facts=FACTS, room=ROOM, now=NOW):
    with pytest.raises(Refusal) as refusal:
        admission(person, facts, room, now, EARLY)
    return refusal.value


def test_a_rostered_consented_checked_in_patient_enters():
    admission(PATIENT, FACTS, ROOM, NOW, EARLY)


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"person": None}, "not-signed-in"),
    ({"facts": None}, "no-such-session"),
    ({"person": Person("patient:3", Role.PATIENT, "X", patient_id=3)}, "not-on-roster"),
    ({"person": Person("patient:2", Role.PATIENT, "Y", patient_id=2)}, "consent-missing"),
    ({"person": Person("staff:11", Role.THERAPIST, "Z", staff_id=11)}, "not-on-roster"),
    ({"facts": FACTS.__class__(**{**FACTS.__dict__, "status": SessionStatus.CANCELLED})},
     "session-cancelled"),
    ({"now": START + timedelta(hours=3)}, "session-ended"),
    ({"room": RoomView(**{**ROOM.__dict__, "ended": True})}, "session-ended"),
    ({"now": START - timedelta(minutes=27)}, "too-early"),
    ({"room": RoomView(**{**ROOM.__dict__, "removed": frozenset({"patient:1"})})}, "removed"),
    ({"room": RoomView(**{**ROOM.__dict__, "locked": True})}, "room-locked"),
    ({"room": RoomView(**{**ROOM.__dict__, "occupancy": 3})}, "room-full"),
    ({"facts": FACTS.__class__(**{**FACTS.__dict__, "checked_in_patient_ids": frozenset()})},
     "check-in-needed"),
])
def test_each_refusal(kwargs, code):
    assert refused(**kwargs).code == code


def test_too_early_says_when_the_room_opens():
    refusal = refused(now=START - timedelta(minutes=27))
    assert refusal.message == "Your session opens at 5:45 PM CST, in 12 minutes."


def test_the_window_opens_early_and_closes_at_the_end():
    admission(PATIENT, FACTS, ROOM, START - EARLY, EARLY)
    admission(PATIENT, FACTS, ROOM, FACTS.ends_at - timedelta(seconds=1), EARLY)


def test_therapists_enter_locked_and_full_rooms_and_admins_of_the_program_enter_any():
    room = RoomView(**{**ROOM.__dict__, "locked": True, "occupancy": 3})
    admission(THERAPIST, FACTS, room, NOW, EARLY)
    admin = Person("staff:99", Role.THERAPIST, "Admin", is_admin=True, staff_id=99,
                   program_id=1)
    admission(admin, FACTS, room, NOW, EARLY)


def test_an_admin_of_another_program_is_not_on_the_roster():
    other = Person("staff:98", Role.THERAPIST, "Other admin", is_admin=True, staff_id=98,
                   program_id=2)
    assert refused(person=other).code == "not-on-roster"
    unknown = Person("staff:97", Role.THERAPIST, "No program", is_admin=True, staff_id=97)
    assert refused(person=unknown).code == "not-on-roster"  # program always: fails closed


def test_a_reconnecting_patient_gets_back_into_a_locked_room_and_skips_waiting():
    room = RoomView(**{**ROOM.__dict__, "locked": True, "reconnecting": frozenset({"patient:1"})})
    admission(PATIENT, FACTS, room, NOW, EARLY)
    assert goes_straight_in(PATIENT, FACTS, room)


@pytest.mark.parametrize(("policy", "therapist_present", "straight_in"), [
    (WaitingRoomPolicy.THERAPIST_ADMITS, True, False),
    (WaitingRoomPolicy.AUTO_WITH_THERAPIST, False, False),
    (WaitingRoomPolicy.AUTO_WITH_THERAPIST, True, True),
    (WaitingRoomPolicy.OPEN, False, True),
])
def test_waiting_room_policy(policy, therapist_present, straight_in):
    facts = FACTS.__class__(**{**FACTS.__dict__, "waiting_room": policy})
    room = RoomView(**{**ROOM.__dict__, "therapist_present": therapist_present})
    assert goes_straight_in(PATIENT, facts, room) is straight_in
    assert goes_straight_in(THERAPIST, facts, room)


FAMILY = Person("family-invite:1", Role.FAMILY, "Angela", family_invite_id=1,
                family_member_id=5)
INVITE = InviteFacts(family_member_id=5, expires_at=FACTS.ends_at, revoked=False,
                     consent_active=True)


def _with_invite(**changes):
    return FACTS.__class__(**{**FACTS.__dict__, "invites": {1: replace(INVITE, **changes)}})


def test_family_members_always_wait():
    family = FAMILY
    facts = FACTS.__class__(**{**_with_invite().__dict__, "waiting_room": WaitingRoomPolicy.OPEN})
    admission(family, facts, ROOM, NOW, EARLY)
    assert not goes_straight_in(family, facts, RoomView(**{**ROOM.__dict__,
                                                           "therapist_present": True}))


@pytest.mark.parametrize(("facts", "now", "code"), [
    (FACTS, NOW, "wrong-session"),
    (_with_invite(family_member_id=6), NOW, "wrong-session"),
    (_with_invite(revoked=True), NOW, "invite-revoked"),
    (_with_invite(consent_active=False), NOW, "consent-revoked"),
    (_with_invite(expires_at=NOW - timedelta(minutes=1)), NOW, "invite-expired"),
    (_with_invite(), FACTS.ends_at, "session-ended"),
    (_with_invite(), START - timedelta(minutes=30), "too-early"),
])
def test_each_family_invite_refusal(facts, now, code):
    assert refused(person=FAMILY, facts=facts, now=now).code == code


def test_capacity_counts_people_not_connections():
    full = RoomView(**{**ROOM.__dict__, "occupancy": 3, "present": frozenset({"patient:1"})})
    admission(PATIENT, FACTS, full, NOW, EARLY)  # her other window already holds her place
    locked = RoomView(**{**ROOM.__dict__, "locked": True, "present": frozenset({"patient:1"})})
    admission(PATIENT, FACTS, locked, NOW, EARLY)
