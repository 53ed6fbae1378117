"""The re-check of the people in a room (``vio.rooms.standing``): the pure rule, the room's
transition, and the look-up against a real database after real revocations."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.conftest import TEST_KEYS
from vio import family, identity
from vio.clock import ManualClock
from vio.db import session_factory
from vio.errors import refusal
from vio.identity import EndReason, SignInRules
from vio.models import (
    AttendanceKind,
    Consent,
    ConsentKind,
    SessionKind,
    SessionStatus,
    SignInKind,
    StaffUser,
    WaitingRoomPolicy,
)
from vio.rooms.admission import Person, Role, SessionFacts
from vio.rooms.effects import Close, Recheck, Record, Send
from vio.rooms.lookup import DatabasePeople
from vio.rooms.outbox import Outbox
from vio.rooms.room import Room
from vio.rooms.standing import GONE, Standing, refusal_for
from vio.settings import Settings

THERAPIST = Person("staff:10", Role.THERAPIST, "Jordan", staff_id=10, sign_in_id=100)
PATIENT = Person("patient:1", Role.PATIENT, "Dana", patient_id=1, sign_in_id=101)
FAMILY = Person("family-invite:3", Role.FAMILY, "Angela", family_invite_id=3,
                family_member_id=9, sign_in_id=102)
STANDING = Standing(ended_sign_ins={}, inactive_staff=frozenset(),
                    consented_patients=frozenset({1}), revoked_invites=frozenset(),
                    unconsented_invites=frozenset())


@pytest.mark.parametrize(("person", "change", "code"), [
    (THERAPIST, {}, None),
    (PATIENT, {}, None),
    (FAMILY, {}, None),
    (THERAPIST, {"ended_sign_ins": {100: EndReason.SIGNED_OUT.value}}, "signed-out"),
    (THERAPIST, {"ended_sign_ins": {100: EndReason.DEACTIVATED.value}}, "signed-out"),
    (THERAPIST, {"ended_sign_ins": {100: GONE}}, "signed-out"),
    (THERAPIST, {"inactive_staff": frozenset({10})}, "signed-out"),
    (PATIENT, {"ended_sign_ins": {101: EndReason.LINKS_REVOKED.value}}, "signed-out"),
    (PATIENT, {"ended_sign_ins": {101: EndReason.CONSENT_REVOKED.value}}, "consent-missing"),
    (PATIENT, {"consented_patients": frozenset()}, "consent-missing"),
    (FAMILY, {"ended_sign_ins": {102: EndReason.CONSENT_REVOKED.value}}, "consent-revoked"),
    (FAMILY, {"ended_sign_ins": {102: EndReason.LINKS_REVOKED.value}}, "invite-revoked"),
    (FAMILY, {"revoked_invites": frozenset({3})}, "invite-revoked"),
    (FAMILY, {"unconsented_invites": frozenset({3})}, "consent-revoked"),
    (dataclasses.replace(PATIENT, sign_in_id=None), {}, None),
    (PATIENT, {"ended_sign_ins": {100: EndReason.SIGNED_OUT.value}}, None),  # not hers
])
def test_who_loses_their_place(person, change, code):
    found = refusal_for(person, dataclasses.replace(STANDING, **change))
    assert (found.code if found else None) == code


START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
SETTINGS = Settings.from_env({}, secret_key="x", room_recheck_seconds=15,
                             attendance_heartbeat_seconds=15)
FACTS = SessionFacts(
    session_id=1, program_id=1, title="Evening", kind=SessionKind.GROUP,
    status=SessionStatus.OPEN, starts_at=START, ends_at=START + timedelta(hours=3),
    timezone="America/Chicago", waiting_room=WaitingRoomPolicy.OPEN,
    therapist_ids=frozenset({10}), patient_ids=frozenset({1}),
    consented_patient_ids=frozenset({1}), checked_in_patient_ids=frozenset({1}))


def test_the_room_rechecks_on_its_clock_and_removes_whom_it_is_told():
    clock = ManualClock(START + timedelta(minutes=1))
    room = Room(FACTS, SETTINGS, clock)
    jordan, _ = room.join(THERAPIST, Outbox(64), FACTS)
    dana, _ = room.join(PATIENT, Outbox(64), FACTS)
    assert not any(isinstance(e, Recheck) for e in room.tick())  # the clock starts now
    clock.advance(timedelta(seconds=14))
    assert not any(isinstance(e, Recheck) for e in room.tick())
    clock.advance(timedelta(seconds=1))
    assert any(isinstance(e, Recheck) for e in room.tick())
    effects = room.remove_connections({dana.id: refusal("consent-missing"), "p-gone":
                                       refusal("signed-out")})
    assert [e.message["type"] for e in effects if isinstance(e, Send) and dana.outbox in e.to] \
        == ["refused"]
    assert [e.event.kind for e in effects if isinstance(e, Record)] == [AttendanceKind.REMOVED]
    assert [e.reason.code for e in effects if isinstance(e, Close) and e.outbox is dana.outbox] \
        == ["consent-missing"]
    assert list(room.participants) == [jordan.id]
    assert "patient:1" not in room.removed  # she may come back once the records let her


async def test_the_records_decide_who_stays(db, engine, demo, clock):
    rules = SignInRules(idle=timedelta(minutes=30), lifetime=timedelta(hours=12),
                        second_factor=timedelta(minutes=5))
    people = DatabasePeople(session_factory(engine, TEST_KEYS), clock, rules)
    now = clock.now()
    dana = demo.patients["Dana Reyes"]
    staff = (await identity.start_sign_in(db, SignInKind.STAFF, now, rules,
                                          staff_id=demo.therapist.id)).row
    patient = (await identity.start_sign_in(db, SignInKind.PATIENT, now, rules,
                                            patient_id=dana.id)).row
    await db.commit()
    room = {"p-t": Person(f"staff:{demo.therapist.id}", Role.THERAPIST, "Jordan",
                          staff_id=demo.therapist.id, sign_in_id=staff.id),
            "p-d": Person(f"patient:{dana.id}", Role.PATIENT, "Dana", patient_id=dana.id,
                          sign_in_id=patient.id)}
    assert await people.standing(SessionKind.GROUP, room) == {}

    group_consent = (await db.execute(select(Consent).where(
        Consent.patient_id == dana.id,
        Consent.kind == ConsentKind.GROUP_PARTICIPATION))).scalar_one()
    await family.revoke_consent(db, group_consent, "staff:1", now)
    await db.commit()
    found = await people.standing(SessionKind.GROUP, room)
    assert {pid: r.code for pid, r in found.items()} == {"p-d": "consent-missing"}
    assert await people.standing(SessionKind.INDIVIDUAL, room) == {}  # needs no group consent

    therapist = await db.get(StaffUser, demo.therapist.id)
    therapist.active = False
    await db.commit()
    found = await people.standing(SessionKind.INDIVIDUAL, room)
    assert {pid: r.code for pid, r in found.items()} == {"p-t": "signed-out"}
    therapist.active = True
    await identity.end_sign_ins(db, now, EndReason.SIGNED_OUT, sign_in_id=staff.id)
    await db.commit()
    found = await people.standing(SessionKind.INDIVIDUAL, room)
    assert {pid: r.code for pid, r in found.items()} == {"p-t": "signed-out"}
