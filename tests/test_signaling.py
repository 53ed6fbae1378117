"""The signaling WebSocket and the room, end to end: real server, real aiortc bots on loopback."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from sqlalchemy import select

from tests.conftest import seconds
from tests.wsclient import Client
from vio import clinic
from vio.bot import Bot, check_in_at_home, sign_in
from vio.demo import ROSTER
from vio.media import announce_host_addresses
from vio.models import Patient, Session, SessionKind
from vio.security import Signer


@pytest.fixture(autouse=True)
def loopback_only():
    announce_host_addresses(["127.0.0.1"])


async def patient_cookie(db, settings, clock, server, name):
    patient = (await db.execute(select(Patient).where(Patient.legal_name == name))).scalar_one()
    token = await clinic.issue_patient_link(db, Signer(settings.secret_key), patient, clock.now())
    await db.commit()
    web = await asyncio.to_thread(sign_in, f"{server.base_url}/p/{token}")
    session_id = await live_session_id(db)
    await asyncio.to_thread(check_in_at_home, web, session_id)
    return web.cookie


async def therapist_cookie(server):
    web = await asyncio.to_thread(sign_in, f"{server.base_url}/login",
                                  "therapist@demo.vio", "demo-therapist")
    return web.cookie


async def live_session_id(db):
    return (await db.execute(select(Session.id).where(Session.kind == SessionKind.GROUP))
            ).scalars().first()


async def wait_for(predicate, within, what):
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


class Room:
    """Bots running in the background in one session."""

    def __init__(self, server, session_id):
        self.url = f"{server.ws_base}/ws/sessions/{session_id}"
        self.tasks: dict[Bot, asyncio.Task] = {}

    def start(self, cookie, **options):
        bot = Bot(self.url, cookie, **options)
        self.tasks[bot] = asyncio.create_task(bot.run(seconds(60)))
        return bot

    async def stop(self, bot):
        await bot.send({"type": "leave"})
        return await asyncio.wait_for(self.tasks.pop(bot), seconds(10))

    async def close(self):
        for bot in list(self.tasks):
            await self.stop(bot)


async def test_four_participants_see_and_hear_each_other(live_server, db, live_settings, clock):
    session_id = await live_session_id(db)
    room = Room(live_server, session_id)
    therapist = room.start(await therapist_cookie(live_server), admit_all=True)
    patients = [room.start(await patient_cookie(db, live_settings, clock, live_server, name))
                for name in ROSTER[:3]]
    everyone = [therapist, *patients]
    try:
        def all_see_all():
            return all(len([r for r in b.result.remote.values() if r.video_frames >= 15
                            and r.audio_frames >= 25]) == 3 for b in everyone)

        await wait_for(all_see_all, seconds(20), "everyone's video and audio")
        before = {(id(b), pid): r.last_counter for b in everyone
                  for pid, r in b.result.remote.items()}
        await asyncio.sleep(1)
        for bot in everyone:
            assert bot.result.admitted
            for pid, remote in bot.result.remote.items():
                assert remote.decode_errors == 0
                assert remote.last_counter != before[(id(bot), pid)], "frame counter stalled"
        names = {r.name for r in therapist.result.remote.values()}
        assert names == {"Dana R.", "Marcus L.", "Priya S."}
    finally:
        await room.close()


async def test_late_joiner_gets_video_fast_and_leaver_disappears(live_server, db, live_settings,
                                                                  clock):
    session_id = await live_session_id(db)
    room = Room(live_server, session_id)
    therapist = room.start(await therapist_cookie(live_server), admit_all=True)
    first = room.start(await patient_cookie(db, live_settings, clock, live_server, ROSTER[0]))
    try:
        await wait_for(lambda: first.first_video.is_set(), seconds(20), "first video")
        late = room.start(await patient_cookie(db, live_settings, clock, live_server, ROSTER[1]))
        await wait_for(lambda: late.result.admitted, seconds(10), "admission")
        admitted_at = time.monotonic()
        await wait_for(lambda: late.first_video.is_set(), seconds(10), "late joiner's video")
        assert time.monotonic() - admitted_at < seconds(2)

        late_id = late.participant_id
        await wait_for(lambda: late_id in first.result.remote
                       and first.result.remote[late_id].video_frames > 0, seconds(10),
                       "others see the late joiner")
        await room.stop(late)
        # The leaver's tracks end at the others: their frame counts stop moving.
        await asyncio.sleep(1.0)
        frozen = first.result.remote[late_id].video_frames
        await asyncio.sleep(1.0)
        assert first.result.remote[late_id].video_frames == frozen
        assert therapist.result.remote[late_id].video_frames > 0
    finally:
        await room.close()


async def test_bad_messages_get_errors_and_the_room_carries_on(live_server, db, live_settings,
                                                               clock):
    session_id = await live_session_id(db)
    room = Room(live_server, session_id)
    therapist = room.start(await therapist_cookie(live_server), admit_all=True)
    watcher = room.start(await patient_cookie(db, live_settings, clock, live_server, ROSTER[0]))
    cookie = await patient_cookie(db, live_settings, clock, live_server, ROSTER[1])
    try:
        await wait_for(lambda: watcher.first_video.is_set(), seconds(20), "watcher's video")
        async with Client(room.url, cookie) as ws:
            async def reply(raw):
                await ws.send_raw(raw)
                return await ws.expect("error", "pong", "welcome")

            assert (await reply("{not json"))["code"] == "bad-message"
            assert (await reply('{"type": "join", "v": 1}'))["type"] == "welcome"
            assert (await reply("[1, 2]"))["code"] == "bad-message"
            assert (await reply('{"type": "teleport"}'))["code"] == "unknown-type"
            assert (await reply('{"type": "media", "audio": "yes", "video": true}'))["code"] \
                == "bad-message"
            assert (await reply('{"type": "chat", "text": 5, "to": "room"}'))["code"] \
                == "bad-message"
            big = json.dumps({"type": "chat", "to": "room",
                              "text": "x" * live_settings.ws_max_message_bytes})
            assert (await reply(big))["code"] == "message-too-large"
            assert (await reply('{"type": "mute", "participant_id": "p-1"}'))["code"] \
                == "not-allowed"
            assert (await reply('{"type": "ping"}'))["type"] == "pong"
        # The room and the others carried on.
        frames = sum(r.video_frames for r in watcher.result.remote.values())
        await asyncio.sleep(1)
        assert sum(r.video_frames for r in watcher.result.remote.values()) > frames
        assert therapist.result.refusal is None and watcher.result.refusal is None
    finally:
        await room.close()


async def test_not_signed_in_is_refused_with_a_close_code(live_server, db):
    session_id = await live_session_id(db)
    async with Client(f"{live_server.ws_base}/ws/sessions/{session_id}") as ws:
        msg = await ws.join()
        assert msg["type"] == "refused" and msg["code"] == "not-signed-in"
        assert await ws.closed() == 4401


async def test_side_room_keeps_media_between_the_two(live_server, db, live_settings, clock):
    session_id = await live_session_id(db)
    room = Room(live_server, session_id)
    therapist = room.start(await therapist_cookie(live_server))
    dana = room.start(await patient_cookie(db, live_settings, clock, live_server, ROSTER[0]))
    marcus = room.start(await patient_cookie(db, live_settings, clock, live_server, ROSTER[1]))
    try:
        def flowing():
            return all(len([r for r in b.result.remote.values() if r.audio_frames > 10]) == 2
                       for b in (therapist, dana, marcus))

        await wait_for(flowing, seconds(20), "everyone's audio")
        await therapist.send({"type": "side-room", "participant_id": dana.participant_id})
        await asyncio.sleep(1.0)  # let forwarding settle

        def counts():
            return (marcus.result.remote[dana.participant_id].audio_frames,
                    marcus.result.remote[therapist.participant_id].audio_frames,
                    therapist.result.remote[dana.participant_id].audio_frames,
                    dana.result.remote[marcus.participant_id].audio_frames)

        before = counts()
        await asyncio.sleep(1.5)
        after = counts()
        assert after[0] == before[0], "the group still hears the side room"
        assert after[1] == before[1], "the group still hears the therapist in the side room"
        assert after[2] > before[2], "the therapist no longer hears the patient in the side room"
        assert after[3] == before[3], "the side room still hears the group"

        await therapist.send({"type": "main-room", "participant_id": dana.participant_id})
        await asyncio.sleep(1.0)
        back = counts()
        await asyncio.sleep(1.0)
        assert counts()[0] > back[0], "the group does not hear the patient again"
    finally:
        await room.close()
