"""Session rules on the real server: refusals, waiting room, moderation, time, reconnection."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.conftest import LiveServer
from tests.wsclient import Client
from vio import clinic
from vio.bot import check_in_at_home, sign_in
from vio.demo import NOT_ON_ROSTER, ROSTER
from vio.media import announce_host_addresses
from vio.models import (
    AuditEvent,
    Consent,
    ConsentKind,
    Group,
    Patient,
    Session,
    SessionKind,
    SessionStatus,
    WaitingRoomPolicy,
)
from vio.security import Signer


@pytest.fixture(autouse=True)
def loopback_only():
    announce_host_addresses(["127.0.0.1"])


class Clinic:
    """Sign-ins and sessions for one test, against one live server."""

    def __init__(self, server: LiveServer, db, settings, clock):
        self.server = server
        self.db = db
        self.settings = settings
        self.clock = clock

    async def group_session(self) -> Session:
        return (await self.db.execute(select(Session).where(
            Session.kind == SessionKind.GROUP))).scalars().first()

    async def url(self, session_id: int | None = None) -> str:
        session_id = session_id or (await self.group_session()).id
        return f"{self.server.ws_base}/ws/sessions/{session_id}"

    async def patient(self, name: str, session_id: int | None = None) -> str:
        patient = (await self.db.execute(select(Patient).where(Patient.legal_name == name))
                   ).scalar_one()
        token = await clinic.issue_patient_link(self.db, Signer(self.settings.secret_key),
                                                patient, self.clock.now())
        await self.db.commit()
        web = await asyncio.to_thread(sign_in, f"{self.server.base_url}/p/{token}")
        session_id = session_id or (await self.group_session()).id
        await asyncio.to_thread(check_in_at_home, web, session_id)
        return web.cookie

    async def staff(self, email="therapist@demo.vio", password="demo-therapist") -> str:
        web = await asyncio.to_thread(sign_in, f"{self.server.base_url}/login", email, password)
        return web.cookie

    async def waiting_room(self, policy: WaitingRoomPolicy) -> None:
        session = await self.group_session()
        session.waiting_room = policy
        await self.db.commit()

    async def audits(self, action: str) -> list[AuditEvent]:
        self.db.expire_all()
        return list((await self.db.execute(select(AuditEvent).where(
            AuditEvent.action == action))).scalars())


@pytest.fixture
def place(live_server, db, live_settings, clock):
    return Clinic(live_server, db, live_settings, clock)


def room_of(server: LiveServer, session_id: int):
    live = server.app.state.rooms.rooms.get(session_id)
    return None if live is None else live.room


# --- refusals ---------------------------------------------------------------------------------

async def _refused(url, cookie, code, close):
    async with Client(url, cookie) as newcomer:
        answer = await newcomer.join()
        assert answer["type"] == "refused", answer
        assert answer["code"] == code
        assert answer["message"]
        assert await newcomer.closed() == close


async def test_refusals_leave_the_room_untouched(place, live_server, db):
    session = await place.group_session()
    url = await place.url()
    async with Client(url, await place.staff()) as therapist:
        assert (await therapist.join())["type"] == "welcome"
        async with Client(url, await place.patient(ROSTER[0])) as dana:
            assert (await dana.join())["type"] == "welcome"
            await therapist.expect("participant-joined")
            room = room_of(live_server, session.id)
            in_room = set(room.participants)

            await _refused(url, None, "not-signed-in", 4401)
            await _refused(url, await place.patient(NOT_ON_ROSTER), "not-on-roster", 4403)

            priya = (await db.execute(select(Patient).where(Patient.legal_name == ROSTER[2]))
                     ).scalar_one()
            consent = (await db.execute(select(Consent).where(
                Consent.patient_id == priya.id,
                Consent.kind == ConsentKind.GROUP_PARTICIPATION))).scalar_one()
            consent.revoked_at = place.clock.now()
            await db.commit()
            await _refused(url, await place.patient(ROSTER[2]), "consent-missing", 4403)

            await therapist.send(type="remove", participant_id=dana.messages[0]["you"]["id"],
                                 reason="Unsafe behaviour toward the group")
            assert (await dana.expect("refused"))["code"] == "removed"
            await therapist.expect("participant-left")
            await _refused(url, await place.patient(ROSTER[0]), "removed", 4403)

            await therapist.send(type="lock")
            await therapist.expect("room-state", locked=True)
            await _refused(url, await place.patient(ROSTER[3]), "room-locked", 4423)
            async with Client(url, await place.staff("admin@demo.vio", "demo-admin")) as admin:
                assert (await admin.join())["type"] == "welcome"  # therapists still enter
            await therapist.send(type="unlock")
            await therapist.expect("room-state", locked=False)

            assert set(room.participants) == in_room - {dana.messages[0]["you"]["id"]}
            assert not [m for m in therapist.received("participant-joined")
                        if m["participant"]["role"] == "patient"][1:]
    assert len(await place.audits("remove")) == 1
    assert (await place.audits("remove"))[0].detail["reason"].startswith("Unsafe")


async def test_room_full(live_settings, clock, engine, demo, db):
    settings = dataclasses.replace(live_settings, room_capacity=2)
    with LiveServer(settings, clock) as server:
        place = Clinic(server, db, settings, clock)
        url = await place.url()
        async with Client(url, await place.patient(ROSTER[0])) as a, \
                Client(url, await place.patient(ROSTER[1])) as b:
            assert (await a.join())["type"] == "welcome"
            assert (await b.join())["type"] == "welcome"
            await _refused(url, await place.patient(ROSTER[2]), "room-full", 4409)
            assert len(room_of(server, (await place.group_session()).id).participants) == 2
            async with Client(url, await place.staff()) as therapist:
                assert (await therapist.join())["type"] == "welcome"


async def _session(db, demo, starts_in: timedelta, minutes: int, status=SessionStatus.SCHEDULED):
    group = (await db.execute(select(Group))).scalars().first()
    session = await clinic.schedule_session(db, clinic.SessionPlan(
        program_id=demo.program.id, title="Another group", kind=SessionKind.GROUP,
        timezone="America/Chicago", duration_minutes=minutes,
        therapist_ids=(demo.therapist.id,), group_id=group.id),
        demo.program and (await db.get(Session, 1)).starts_at + timedelta(minutes=5) + starts_in)
    session.status = status
    await db.commit()
    return session


async def test_too_early_ended_and_cancelled(place, db, demo):
    early = await _session(db, demo, timedelta(hours=2), 60)
    over = await _session(db, demo, timedelta(hours=-3), 60)
    cancelled = await _session(db, demo, timedelta(minutes=0), 60, SessionStatus.CANCELLED)
    for session, code, close in [(early, "too-early", 4425), (over, "session-ended", 4410),
                                 (cancelled, "session-cancelled", 4410)]:
        cookie = await place.patient(ROSTER[0], session.id)
        async with Client(await place.url(session.id), cookie) as patient:
            answer = await patient.join()
            assert answer["code"] == code, answer
            assert await patient.closed() == close
    too_early = (await place.patient(ROSTER[1], early.id))
    async with Client(await place.url(early.id), too_early) as patient:
        assert "opens at" in (await patient.join())["message"]


# --- waiting room -----------------------------------------------------------------------------

async def test_waiting_admit_deny_and_admit_all(place):
    await place.waiting_room(WaitingRoomPolicy.THERAPIST_ADMITS)
    url = await place.url()
    async with Client(url, await place.staff()) as therapist:
        await therapist.join()
        async with Client(url, await place.patient(ROSTER[0])) as dana, \
                Client(url, await place.patient(ROSTER[1])) as marcus:
            assert (await dana.join())["type"] == "waiting"
            listing = await therapist.expect("waiting-list", within=5)
            while len(listing["waiting"]) < 1:
                listing = await therapist.expect("waiting-list")
            dana_id = listing["waiting"][0]["participant_id"]
            assert listing["waiting"][0]["name"] == "Dana R."
            assert (await marcus.join())["type"] == "waiting"
            await dana.send(type="chat", text="hello?", to="room")
            assert (await dana.expect("error"))["code"] == "waiting"

            await therapist.send(type="admit", participant_id=dana_id)
            welcome = await dana.expect("welcome")
            assert welcome["you"]["id"] == dana_id
            assert (await dana.expect("offer"))["sdp"].startswith("v=0")

            listing = await therapist.expect("waiting-list", within=5)
            while not any(w["name"] == "Marcus L." for w in listing["waiting"]):
                listing = await therapist.expect("waiting-list", within=5)
            marcus_id = next(w["participant_id"] for w in listing["waiting"]
                             if w["name"] == "Marcus L.")
            await therapist.send(type="deny", participant_id=marcus_id)
            assert (await marcus.expect("refused"))["code"] == "denied"
            assert await marcus.closed() == 4403
        async with Client(url, await place.patient(ROSTER[2])) as priya, \
                Client(url, await place.patient(ROSTER[3])) as tom:
            assert (await priya.join())["type"] == "waiting"
            assert (await tom.join())["type"] == "waiting"
            await asyncio.sleep(0.2)
            await therapist.send(type="admit-all")
            await priya.expect("welcome")
            await tom.expect("welcome")
    assert len(await place.audits("admit")) == 3
    assert len(await place.audits("deny")) == 1


async def test_auto_admit_once_a_therapist_is_in(place):
    await place.waiting_room(WaitingRoomPolicy.AUTO_WITH_THERAPIST)
    url = await place.url()
    async with Client(url, await place.patient(ROSTER[0])) as dana:
        assert (await dana.join())["type"] == "waiting"
        async with Client(url, await place.staff()) as therapist:
            await therapist.join()
            await dana.expect("welcome")
            async with Client(url, await place.patient(ROSTER[1])) as marcus:
                assert (await marcus.join())["type"] == "welcome"


# --- moderation, time -------------------------------------------------------------------------

async def test_mute_stop_video_and_chat(place):
    url = await place.url()
    async with Client(url, await place.staff()) as therapist, \
            Client(url, await place.patient(ROSTER[0])) as dana, \
            Client(url, await place.patient(ROSTER[1])) as marcus:
        await therapist.join()
        dana_id = (await dana.join())["you"]["id"]
        await marcus.join()
        await therapist.send(type="mute", participant_id=dana_id)
        assert (await dana.expect("moderated"))["action"] == "mute"
        state = await marcus.expect("media-state", participant_id=dana_id)
        assert state["audio"] is False
        await therapist.send(type="stop-video", participant_id=dana_id)
        assert (await dana.expect("moderated"))["action"] == "stop-video"
        await dana.send(type="chat", text="I need to talk to you", to="therapists")
        private = await therapist.expect("chat")
        assert private["to"] == "therapists" and private["text"] == "I need to talk to you"
        await dana.expect("chat")  # the sender sees their own message
        await dana.send(type="chat", text="Hi all", to="room")
        assert (await marcus.expect("chat"))["text"] == "Hi all"
        assert [m["text"] for m in marcus.received("chat")] == ["Hi all"]
    assert len(await place.audits("mute")) == 1
    assert len(await place.audits("stop-video")) == 1


async def test_warnings_then_the_end_for_everyone(place, clock, db):
    session = await place.group_session()
    url = await place.url()
    async with Client(url, await place.staff()) as therapist, \
            Client(url, await place.patient(ROSTER[0])) as dana:
        await therapist.join()
        await dana.join()
        clock.advance(session.ends_at - clock.now() - timedelta(minutes=10, seconds=-1))
        assert (await dana.expect("warning"))["minutes_left"] == 10
        clock.advance(timedelta(minutes=8))
        assert (await dana.expect("warning"))["minutes_left"] == 2
        assert (await therapist.expect("warning"))["minutes_left"] == 10
        assert (await therapist.expect("warning"))["minutes_left"] == 2
        assert [w["minutes_left"] for w in therapist.received("warning")] == [10, 2]
        clock.advance(timedelta(minutes=2))
        await dana.expect("ended")
        await therapist.expect("ended")
        assert await dana.closed() == 4410
    async with Client(url, await place.patient(ROSTER[1])) as late:
        assert (await late.join())["code"] == "session-ended"
    await db.refresh(session)
    assert session.status is SessionStatus.ENDED


async def test_extend_moves_the_end_and_end_for_all(place, db):
    session = await place.group_session()
    url = await place.url()
    async with Client(url, await place.staff()) as therapist, \
            Client(url, await place.patient(ROSTER[0])) as dana:
        welcome = await therapist.join()
        await dana.join()
        await therapist.send(type="extend", minutes=45)
        assert (await therapist.expect("error"))["code"] == "bad-extend"
        await therapist.send(type="extend", minutes=10)
        moved = await dana.expect("time")
        assert moved["ends_at"] == (session.ends_at + timedelta(minutes=10)).isoformat()
        assert welcome["session"]["ends_at"] == session.ends_at.isoformat()
        await dana.send(type="end")
        assert (await dana.expect("error"))["code"] == "not-allowed"
        await therapist.send(type="end")
        await dana.expect("ended")
        assert await dana.closed() == 4410
        assert await therapist.closed() == 4410
    ends_before = session.ends_at
    await db.refresh(session)
    assert session.extended_minutes == 10 and session.status is SessionStatus.ENDED
    assert session.ends_at == ends_before + timedelta(minutes=10)
    assert (await place.audits("session-extend"))[0].detail["minutes"] == 10
    assert len(await place.audits("session-end")) == 1
    async with Client(url, await place.patient(ROSTER[1])) as late:
        assert (await late.join())["code"] == "session-ended"


async def test_reconnect_within_grace_skips_waiting_room_and_after_does_not(place, clock,
                                                                            live_settings):
    await place.waiting_room(WaitingRoomPolicy.THERAPIST_ADMITS)
    url = await place.url()
    cookie = await place.patient(ROSTER[0])
    async with Client(url, await place.staff()) as therapist:
        await therapist.join()
        async with Client(url, cookie) as dana:
            assert (await dana.join())["type"] == "waiting"
            waiting = await therapist.expect("waiting-list")
            while not waiting["waiting"]:
                waiting = await therapist.expect("waiting-list")
            await therapist.send(type="admit", participant_id=waiting["waiting"][0]
                                 ["participant_id"])
            await dana.expect("welcome")
            await dana._ws.close(code=4000)  # the network drops
        await therapist.expect("participant-left")
        async with Client(url, cookie) as dana:
            assert (await dana.join())["type"] == "welcome"
            await dana._ws.close(code=4000)
        await therapist.expect("participant-left")
        clock.advance(timedelta(seconds=live_settings.reconnect_grace_seconds + 1))
        async with Client(url, cookie) as dana:
            assert (await dana.join())["type"] == "waiting"


async def test_joining_from_a_second_window_replaces_the_first(place):
    url = await place.url()
    cookie = await place.patient(ROSTER[0])
    async with Client(url, cookie) as first, Client(url, cookie) as second:
        await first.join()
        assert (await second.join())["type"] == "welcome"
        assert await first.closed() == 4001


# --- safety card --------------------------------------------------------------------------------

async def test_safety_card_is_for_therapists_and_audited(place):
    url = await place.url()
    async with Client(url, await place.staff()) as therapist, \
            Client(url, await place.patient(ROSTER[0])) as dana, \
            Client(url, await place.patient(ROSTER[1])) as marcus:
        await therapist.join()
        dana_id = (await dana.join())["you"]["id"]
        await marcus.join()
        await marcus.send(type="safety-card", participant_id=dana_id)
        assert (await marcus.expect("error"))["code"] == "not-allowed"
        assert await place.audits("safety-card-view") == []
        await therapist.send(type="safety-card", participant_id=dana_id)
        card = await therapist.expect("safety-card")
        assert card["location"]["location"] == "home"
        assert card["emergency_number"] == "911"
        assert card["emergency_contact"]["phone"].startswith("555-")
        assert not marcus.received("safety-card") and not dana.received("safety-card")
    views = await place.audits("safety-card-view")
    assert len(views) == 1 and views[0].actor.startswith("staff:")
