"""The room under pressure through the real server: join storms, stalled clients, bad input.

A real uvicorn server on loopback, real WebSocket clients (``vio.client``), real SQLite.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from tests.conftest import LiveServer, seconds
from tests.test_session_rules import Clinic, room_of
from tests.wsclient import Client
from vio.demo import ROSTER
from vio.media import announce_host_addresses
from vio.models import AttendanceEvent, AttendanceKind, WaitingRoomPolicy

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()


@pytest.fixture(autouse=True)
def loopback_only():
    announce_host_addresses(["127.0.0.1"])


@pytest.fixture
def place(live_server, db, live_settings, clock):
    return Clinic(live_server, db, live_settings, clock)


async def _wait(predicate, within: float, what: str) -> None:
    deadline = time.monotonic() + seconds(within)
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_three_sockets_of_one_person_at_once_give_one_seat(place, live_server):
    await place.waiting_room(WaitingRoomPolicy.OPEN)
    url = await place.url()
    cookie = await place.patient(ROSTER[0])
    async with Client(url, await place.staff()) as therapist:
        assert (await therapist.join())["type"] == "welcome"
        clients = [Client(url, cookie) for _ in range(3)]
        await asyncio.gather(*(c.connect() for c in clients))
        await asyncio.gather(*(c.send(type="join", v=1) for c in clients))
        room = room_of(live_server, (await place.group_session()).id)
        await _wait(lambda: sum(c.close_code == 4001 for c in clients) == 2, 10,
                    "two of three replaced")
        kept = [c for c in clients if c.close_code is None]
        assert len(kept) == 1
        welcome = await kept[0].expect("welcome")
        seated = [p for p in room.everyone() if not p.is_therapist]
        assert [p.id for p in seated] == [welcome["you"]["id"]]
        # The therapist's view: everyone who joined also left, but one remains. Her
        # messages travel on another socket, so wait for the newest of them to arrive.
        def still_here() -> set[str]:
            joined = {m["participant"]["id"] for m in therapist.received("participant-joined")}
            left = {m["participant_id"] for m in therapist.received("participant-left")}
            return joined - left

        await _wait(lambda: welcome["you"]["id"] in still_here(), 5, "the therapist to see her")
        assert still_here() == {welcome["you"]["id"]}
        for c in clients:
            await c.close()


async def test_a_reconnect_storm_leaves_at_most_one_seat_each_and_no_ghosts(place, live_server):
    """200 simultaneous joins over the six people on the roster."""
    await place.waiting_room(WaitingRoomPolicy.OPEN)
    url = await place.url()
    cookies = [await place.patient(name) for name in ROSTER]
    clients = [Client(url, cookies[i % len(cookies)]) for i in range(200)]
    await asyncio.gather(*(c.connect() for c in clients))
    await asyncio.gather(*(c.send(type="join", v=1) for c in clients))
    room = room_of  # for the closure below

    def settled() -> bool:
        # Every connection got an answer: a welcome, or its close.
        return all(c.close_code is not None or c.received("welcome") for c in clients)

    await _wait(settled, 60, "every join answered")
    live = room(live_server, (await place.group_session()).id)
    codes = [c.close_code for c in clients if c.close_code is not None]
    assert 1011 not in codes and set(codes) <= {4001}, sorted(set(codes))
    open_now = [c for c in clients if c.close_code is None]
    assert len(open_now) <= len(ROSTER)
    seated = live.everyone()
    assert len(seated) <= len(ROSTER)
    assert len({p.person.identity for p in seated}) == len(seated)
    await asyncio.gather(*(c.close() for c in clients))
    await _wait(lambda: live.everyone() == [], 10, "an empty room")


async def test_a_client_that_stops_reading_is_dropped_at_the_send_deadline(
        live_settings, clock, engine, demo, db):
    settings = dataclasses.replace(live_settings, ws_send_timeout_seconds=1.0,
                                   ws_send_queue=10_000)
    with LiveServer(settings, clock) as server:
        place = Clinic(server, db, settings, clock)
        await place.waiting_room(WaitingRoomPolicy.OPEN)
        url = await place.url()
        host, port = urlsplit(server.base_url).hostname, urlsplit(server.base_url).port
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, port))
        async with Client(url, await place.staff()) as therapist, \
                Client(url, await place.patient(ROSTER[0]), sock=sock) as stalled:
            assert (await therapist.join())["type"] == "welcome"
            stalled_id = (await stalled.join())["you"]["id"]
            stalled.pause_reading()
            paused_at, paused_clock = time.monotonic(), clock.now()
            while not therapist.received("participant-left") \
                    and time.monotonic() - paused_at < seconds(10):
                # Chat that does not compress, as real conversation mostly doesn't.
                await therapist.send(type="chat", text=secrets.token_urlsafe(740), to="room")
                await asyncio.sleep(0.001)
            left = await therapist.expect("participant-left", within=1)
            took = time.monotonic() - paused_at
            assert left["participant_id"] == stalled_id
            assert took <= settings.ws_send_timeout_seconds + 1 + seconds(0.5), took
            db.expire_all()
            dropped = (await db.execute(select(AttendanceEvent).where(
                AttendanceEvent.connection == stalled_id,
                AttendanceEvent.kind == AttendanceKind.DROPPED))).scalar_one()
            assert dropped.detail["reason"] == "too-slow"
            gap = (dropped.at.replace(tzinfo=paused_clock.tzinfo) - paused_clock)
            assert gap.total_seconds() <= settings.ws_send_timeout_seconds + 1 + seconds(0.5)
            assert room_of(server, (await place.group_session()).id).participants.keys() == {
                therapist.messages[0]["you"]["id"]}


def _documented_error_codes() -> set[str]:
    section = DOC.split("## Errors", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z-]+)` \|", section, flags=re.M))


async def test_every_documented_error_code_is_reachable(place, live_server, live_settings,
                                                        caplog):
    caplog.set_level(logging.WARNING)
    await place.waiting_room(WaitingRoomPolicy.THERAPIST_ADMITS)
    url = await place.url()
    limit = live_settings.ws_max_message_bytes
    seen: set[str] = set()

    async def expect_error(client: Client, code: str) -> None:
        error = await client.expect("error")
        assert error["code"] == code, error
        assert error["message"]
        seen.add(code)

    async with Client(url, await place.patient(ROSTER[0])) as dana:
        await dana.send(type="chat", text="hi", to="room")
        await expect_error(dana, "join-first")
        await dana.send_raw("not json")
        await expect_error(dana, "bad-message")
        await dana.send(type="join", v=2)
        await expect_error(dana, "unsupported-version")
        assert (await dana.join())["type"] == "waiting"
        await dana.send(type="join", v=1)
        await expect_error(dana, "already-joined")
        await dana.send(type="dance")
        await expect_error(dana, "unknown-type")
        await dana.send(type="chat", text="hi", to="room")
        await expect_error(dana, "waiting")
        await dana.send(type="lock")
        await expect_error(dana, "not-allowed")
        # One size rule: above the limit an error, above four times the limit a 1009 close.
        await dana.send_raw('{"type": "ping", "pad": "' + "x" * limit + '"}')
        await expect_error(dana, "message-too-large")
        await dana.send_raw('{"type": "ping", "pad": "' + "x" * (3 * limit) + '"}')
        await expect_error(dana, "message-too-large")
        await dana.send(type="ping")
        await dana.expect("pong")

        async with Client(url, await place.staff()) as therapist:
            assert (await therapist.join())["type"] == "welcome"
            waiting = await therapist.expect("waiting-list")
            dana_id = waiting["waiting"][0]["participant_id"]
            await therapist.send(type="admit", participant_id="p-nobody")
            await expect_error(therapist, "no-such-participant")
            await therapist.send(type="extend", minutes=live_settings.max_extend_minutes + 1)
            await expect_error(therapist, "bad-extend")
            await therapist.send(type="safety-card",
                                 participant_id=therapist.messages[0]["you"]["id"])
            await expect_error(therapist, "no-safety-card")
            await therapist.send(type="admit", participant_id=dana_id)
            offer = await dana.expect("offer")
            await therapist.send(type="lock-mic", participant_id=dana_id)
            await dana.expect("moderated", action="lock-mic")
            await dana.send(type="media", audio=True, video=True)
            await expect_error(dana, "mic-locked")
            # An answer without a fingerprint is refused before it is applied.
            no_fingerprint = "\r\n".join(line for line in offer["sdp"].split("\r\n")
                                         if not line.startswith("a=fingerprint"))
            await dana.send(type="answer", sdp=no_fingerprint)
            await expect_error(dana, "bad-answer")
            await dana.send(type="ping")
            await dana.expect("pong")  # the connection stays

        async with Client(url, await place.patient(ROSTER[1])) as marcus:
            await marcus.join()
            await marcus.send_raw('{"type": "ping", "pad": "' + "x" * (4 * limit) + '"}')
            assert await marcus.closed() == 1009

    assert seen == _documented_error_codes()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_failed_attendance_record_refuses_the_join_and_leaves_no_ghost(
        place, live_server, engine):
    """With the attendance table gone, nobody is let in unrecorded."""
    from sqlalchemy import text

    await place.waiting_room(WaitingRoomPolicy.OPEN)
    url = await place.url()
    cookie = await place.patient(ROSTER[0])
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE attendance_events RENAME TO attendance_hidden"))
    try:
        async with Client(url, cookie) as dana:
            await dana.send(type="join", v=1)
            assert await dana.closed() == 1011
            assert dana.received("welcome") == []
        room = room_of(live_server, (await place.group_session()).id)
        assert room is None or room.everyone() == []
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE attendance_hidden RENAME TO attendance_events"))


async def test_a_muted_track_is_not_forwarded_even_if_the_client_keeps_sending(
        place, live_server, db, live_settings, clock):
    """Bots ignore ``moderated``: they keep sending. The third participant must hear nothing."""
    from tests.test_signaling import Room as Bots
    from tests.test_signaling import patient_cookie, therapist_cookie

    await place.waiting_room(WaitingRoomPolicy.OPEN)
    session_id = (await place.group_session()).id
    bots = Bots(live_server, session_id)
    therapist = bots.start(await therapist_cookie(live_server))
    ann = bots.start(await patient_cookie(db, live_settings, clock, live_server, ROSTER[0]))
    ben = bots.start(await patient_cookie(db, live_settings, clock, live_server, ROSTER[1]))
    try:
        def from_ann():
            return ben.result.remote.get(ann.participant_id or "")

        await _wait(lambda: from_ann() is not None and from_ann().audio_frames > 20
                    and from_ann().video_frames > 5, 20, "ben receiving ann")
        await therapist.send({"type": "mute", "participant_id": ann.participant_id})
        await asyncio.sleep(seconds(0.5))  # packets already on their way
        audio, video = from_ann().audio_frames, from_ann().video_frames
        await asyncio.sleep(seconds(1.5))
        assert from_ann().audio_frames == audio  # ~75 frames would have come in 1.5 s
        assert from_ann().video_frames > video + 5
        await ann.send({"type": "media", "audio": True, "video": True})  # she unmutes herself
        await _wait(lambda: from_ann().audio_frames > audio + 25, 10, "ann heard again")
    finally:
        await bots.close()


async def test_a_locked_out_attempt_reaches_the_therapist_and_the_log(place, live_server, db):
    await place.waiting_room(WaitingRoomPolicy.OPEN)
    url = await place.url()
    async with Client(url, await place.staff()) as therapist:
        assert (await therapist.join())["type"] == "welcome"
        await therapist.send(type="lock")
        await therapist.expect("room-state", locked=True)
        async with Client(url, await place.patient(ROSTER[2])) as late:
            assert (await late.join())["code"] == "room-locked"
        notice = await therapist.expect("join-refused")
        assert notice["code"] == "room-locked" and notice["name"]
    db.expire_all()
    attempts = (await db.execute(select(AttendanceEvent).where(
        AttendanceEvent.kind == AttendanceKind.REFUSED))).scalars().all()
    assert [a.detail["code"] for a in attempts] == ["room-locked"]
