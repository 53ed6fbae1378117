"""What the room must send for the live room page (issue #16, the room), without a browser.

The roster the therapists see (who is expected and not here yet), the waiting room hearing
that a therapist arrived, the safety card's content from the records, and the live room
keeping its people signed in: in process against the state machine, against real SQLite for
the records, and over a real WebSocket to the real app for the sign-in that outlasts the idle
limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from tests.conftest import csrf_from, seconds
from tests.test_room import FACTS, PATIENTS, SETTINGS, START, THERAPIST, join
from tests.test_session_rules import Clinic, loopback_only  # noqa: F401
from tests.test_sessions import fetch
from tests.wsclient import Client
from vio import identity
from vio.clock import ManualClock
from vio.demo import ROSTER
from vio.errors import REFUSAL_TEXT
from vio.models import (
    AttendanceKind,
    Patient,
    Session,
    SessionKind,
    SignInKind,
    SignInSession,
)
from vio.rooms import records
from vio.rooms.admission import Expected, Role
from vio.rooms.effects import KeepSignedIn, RoomEvent, Send
from vio.rooms.room import Room

EXPECTED = (Expected("patient:1", "Patient 1", Role.PATIENT),
            Expected("patient:2", "Patient 2", Role.PATIENT),
            Expected("family-invite:5", "Angela L.", Role.FAMILY))


def room_expecting() -> Room:
    facts = dataclasses.replace(FACTS, expected=EXPECTED)
    return Room(facts, SETTINGS, ManualClock(START + timedelta(minutes=1)))


def messages_to(effects: list, box: object, kind: str) -> list[dict]:
    return [e.message for e in effects
            if isinstance(e, Send) and box in e.to and e.message["type"] == kind]


def statuses(expected: list[dict]) -> dict[str, str]:
    return {e["name"]: e["status"] for e in expected}


# --- the roster -----------------------------------------------------------------------------

def test_a_therapist_arriving_gets_the_roster_in_welcome_and_updates_as_people_come_and_go():
    room = room_expecting()
    patient, _ = join(room, PATIENTS[0])  # waits: the therapist admits
    therapist, effects = join(room, THERAPIST)
    (welcome,) = messages_to(effects, therapist.outbox, "welcome")
    assert statuses(welcome["expected"]) == {
        "Patient 1": "waiting", "Patient 2": "not-here", "Angela L.": "not-here"}
    assert [e["role"] for e in welcome["expected"]] == ["patient", "patient", "family"]

    effects = room.admit(therapist, patient.id)
    (roster,) = messages_to(effects, therapist.outbox, "roster")
    assert statuses(roster["expected"])["Patient 1"] == "in-room"
    assert messages_to(effects, patient.outbox, "roster") == []  # therapists only

    effects = room.leave(patient)
    (roster,) = messages_to(effects, therapist.outbox, "roster")
    assert statuses(roster["expected"])["Patient 1"] == "not-here"


def test_a_patient_never_sees_the_roster():
    room = room_expecting()
    therapist, _ = join(room, THERAPIST)
    room.admit_all(therapist)
    patient, effects = join(room, PATIENTS[1])
    room.admit(therapist, patient.id)
    assert all("expected" not in m for m in messages_to(effects, patient.outbox, "waiting"))
    later = room.admit_all(therapist)
    assert messages_to(later, patient.outbox, "roster") == []


# --- the waiting room hears of the therapist ------------------------------------------------

def test_the_waiting_room_hears_when_a_therapist_arrives_and_when_the_last_one_leaves():
    room = room_expecting()
    patient, effects = join(room, PATIENTS[0])
    (first,) = messages_to(effects, patient.outbox, "waiting")
    assert first["session"]["therapist_present"] is False
    assert first["session"]["title"] == FACTS.title and first["session"]["starts_at"]
    assert "hasn't joined yet" in first["message"]

    therapist, effects = join(room, THERAPIST)
    (again,) = messages_to(effects, patient.outbox, "waiting")
    assert again["session"]["therapist_present"] is True
    assert "is here" in again["message"]

    effects = room.leave(therapist)
    (after,) = messages_to(effects, patient.outbox, "waiting")
    assert after["session"]["therapist_present"] is False


# --- keeping the room's people signed in --------------------------------------------------

def test_the_heartbeat_keeps_every_connected_sign_in_alive():
    room = room_expecting()
    staff = dataclasses.replace(THERAPIST, sign_in_id=71)
    therapist, _ = join(room, staff)
    join(room, dataclasses.replace(PATIENTS[0], sign_in_id=72))  # waiting counts too
    join(room, PATIENTS[1])  # no sign-in: nothing to keep
    keep = [e for e in room.tick() if isinstance(e, KeepSignedIn)]
    assert keep == [KeepSignedIn((71, 72))]
    assert [e for e in room.tick() if isinstance(e, KeepSignedIn)] == []  # once a heartbeat
    room.clock.advance(timedelta(seconds=SETTINGS.attendance_heartbeat_seconds))  # type: ignore[attr-defined]
    room.leave(therapist)
    keep = [e for e in room.tick() if isinstance(e, KeepSignedIn)]
    assert keep == [KeepSignedIn((72,))]


async def test_keep_signed_in_marks_open_sign_ins_and_leaves_ended_ones_ended(db, demo, clock,
                                                                            settings):
    now = clock.now()
    rules = identity.SignInRules(idle=timedelta(minutes=settings.idle_logoff_minutes),
                                 lifetime=timedelta(hours=8), second_factor=timedelta(minutes=5))
    live = await identity.start_sign_in(db, SignInKind.STAFF, now, rules,
                                        staff_id=demo.therapist.id)
    ended = await identity.start_sign_in(db, SignInKind.STAFF, now, rules,
                                         staff_id=demo.therapist.id)
    ended.row.ended_at, ended.row.end_reason = now, "signed-out"
    await db.commit()
    later = now + timedelta(minutes=settings.idle_logoff_minutes + 5)
    assert await identity.keep_signed_in(db, [live.row.id, ended.row.id, 999999], later) == 1
    await db.commit()
    db.expire_all()
    rows = {r.id: r for r in (await db.execute(select(SignInSession))).scalars()}
    def naive(moment):  # type: ignore[no-untyped-def]
        return moment.replace(tzinfo=None)

    assert naive(rows[live.row.id].last_seen_at) == naive(later)
    assert rows[ended.row.id].ended_at is not None
    assert naive(rows[ended.row.id].last_seen_at) == naive(now)
    held = await identity.live_sign_in(db, rows[live.row.id], later, rules, lambda _: False,
                                       touch=False)
    assert held is not None  # kept: no request for longer than the idle limit, yet signed in


async def test_a_therapist_is_still_signed_in_after_a_room_longer_than_the_idle_limit(
        live_server, db, live_settings, clock):
    place = Clinic(live_server, db, live_settings, clock)
    url = await place.url()
    cookie = await place.staff()
    idle = timedelta(minutes=live_settings.idle_logoff_minutes, seconds=30)
    async with Client(url, cookie) as therapist:
        assert (await therapist.join())["type"] == "welcome"
        sign_in = (await db.execute(select(SignInSession).where(
            SignInSession.ended_at.is_(None), SignInSession.staff_id.is_not(None)))
        ).scalars().one()
        sign_in_id, seen_before = sign_in.id, sign_in.last_seen_at
        clock.advance(idle)  # a long stretch of group without a single page request
        deadline = time.monotonic() + seconds(10)
        while True:  # the room's next heartbeat marks the sign-in as seen
            db.expire_all()
            row = await db.get(SignInSession, sign_in_id)
            assert row is not None
            if row.last_seen_at > seen_before + idle - timedelta(seconds=5):
                break
            assert time.monotonic() < deadline, "the live room never kept the sign-in alive"
            await asyncio.sleep(0.05)
        await therapist.send(type="leave")
        await therapist.closed()
    # Out of the room now (the session ended, say): the next page still knows the therapist.
    status, _, _ = await asyncio.to_thread(fetch, live_server.base_url, "/staff", cookie)
    assert status == 200


# --- the records behind the roster and the safety card -----------------------------------

async def test_load_facts_expects_the_roster_by_display_name(db, demo, clock):
    session = (await db.execute(select(Session).where(
        Session.kind == SessionKind.GROUP))).scalars().first()
    facts = await records.load_facts(db, session.id, clock.now())
    assert facts is not None
    names = [e.name for e in facts.expected]
    roster = [demo.patients[n].display_name for n in ROSTER]
    assert sorted(names) == sorted(roster)
    assert all(e.role is Role.PATIENT and e.identity.startswith("patient:")
               for e in facts.expected)


async def test_safety_card_for_a_home_check_in_carries_the_street_address_and_phone(
        db, demo, clock):
    session = (await db.execute(select(Session).where(
        Session.kind == SessionKind.GROUP))).scalars().first()
    dana: Patient = demo.patients[ROSTER[0]]
    await records.append_event(db, session.id, clock.now(), RoomEvent(
        AttendanceKind.CHECKED_IN, person=f"patient:{dana.id}", role="patient",
        patient_id=dana.id, detail={"location": "home", "address": ""}))
    card = await records.safety_card(db, session.id, dana.id, "staff:1", clock.now())
    assert card["location"]["location"] == "home"
    assert card["home_address"] == dana.home_address and dana.home_address
    assert card["phone"] == dana.phone and dana.phone
    assert card["emergency_contact"] == {"name": dana.emergency_contact_name,
                                         "phone": dana.emergency_contact_phone}
    assert card["emergency_number"] == "911"


def test_stay_signed_in_is_a_head_request_that_counts_as_activity(client, demo, settings,
                                                                  clock):
    """idle.js's "Stay signed in" sends HEAD for the page it is on, keeping the form's input:
    the server counts it as activity like any other request."""
    token = csrf_from(client.get("/login").text)
    client.post("/login", data={"email": "therapist@demo.vio", "password": "demo-therapist",
                                "csrf_token": token}, follow_redirects=False)
    page = client.get("/staff")
    assert page.status_code == 200 and "/static/js/idle.js" in page.text
    clock.advance(timedelta(minutes=settings.idle_logoff_minutes - 1))
    assert client.head("/staff", follow_redirects=False).status_code == 200
    clock.advance(timedelta(minutes=settings.idle_logoff_minutes - 1))
    assert client.get("/staff", follow_redirects=False).status_code == 200  # still signed in
    clock.advance(timedelta(minutes=settings.idle_logoff_minutes, seconds=5))
    assert client.head("/staff", follow_redirects=False).status_code == 303  # idle: signed out


def test_every_refusal_has_its_own_screen_on_the_room_page():
    """room.js's REFUSAL_SCREENS names every refusal the server can send (``vio.errors``)."""
    script = (Path(__file__).parent.parent / "web/static/js/room.js").read_text()
    table = script.split("const REFUSAL_SCREENS = {", 1)[1].split("\n};", 1)[0]
    screens = set(re.findall(r"^\s+'?([a-z-]+)'?: \{ title: '", table, re.MULTILINE))
    refusals = {*REFUSAL_TEXT, "not-on-roster"}
    assert refusals - screens == set(), sorted(refusals - screens)
    assert screens - refusals == set(), sorted(screens - refusals)
    assert re.search(r"^\s+removed: \{[^\n]*retry: false", table, re.MULTILINE)


def test_a_removed_patient_is_listed_as_removed_not_as_expected():
    room = room_expecting()
    therapist, _ = join(room, THERAPIST)
    patient, _ = join(room, PATIENTS[0])
    room.admit(therapist, patient.id)
    effects = room.remove(therapist, patient.id, "Unsafe to continue in group.")
    (roster,) = messages_to(effects, therapist.outbox, "roster")
    assert statuses(roster["expected"])["Patient 1"] == "removed"
