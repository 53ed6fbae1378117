"""``vio bot`` reconnecting: the backoff, a scripted server's drops and refusals, and a real
server restarted on the same port under two bots with media flowing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.conftest import LiveServer, seconds
from tests.test_signaling import live_session_id, patient_cookie, therapist_cookie, wait_for
from vio.bot import (
    FIRST_RETRY_SECONDS,
    MAX_RETRY_SECONDS,
    Bot,
    BotResult,
    reconnects_after,
    retry_delay,
)
from vio.demo import ROSTER
from vio.media import announce_host_addresses

COOKIE = "vio_session=signed-in"


@pytest.fixture(autouse=True)
def loopback_only() -> None:
    announce_host_addresses(["127.0.0.1"])


# --- the rules ---------------------------------------------------------------------------------


def test_retry_delay_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    for attempt in range(40):
        ceiling = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** attempt)
        assert retry_delay(attempt, 0.0) == ceiling / 2
        assert retry_delay(attempt, 1.0) == ceiling
        assert ceiling / 2 < retry_delay(attempt, 0.5) < ceiling
    assert retry_delay(0, 1.0) == FIRST_RETRY_SECONDS
    assert retry_delay(10_000, 1.0) == MAX_RETRY_SECONDS


def test_reconnects_only_after_server_trouble_and_lost_connections() -> None:
    for code in (1006, 1011, 1012):
        assert reconnects_after(code)
    for code in (None, 1000, 1009, 4000, 4001, 4400, 4401, 4403, 4408, 4410, 4429, 4503):
        assert not reconnects_after(code)


def test_the_summary_counts_reconnects() -> None:
    result = BotResult(admitted=True, reconnects=2)
    assert result.summary() == {"admitted": True, "refusal": None, "reconnects": 2,
                                "video_paused": [], "remote": []}


# --- a scripted server -------------------------------------------------------------------------


class Script:
    """A signaling server that plays one step per connection (the last step repeats):

    ``abort`` (welcome, then the TCP connection is cut: 1006), ``close-<code>`` (welcome, then
    a close with that code), ``refuse`` (``refused``, 4409), ``end`` (``ended``, 4410),
    ``unavailable`` (HTTP 503 instead of the upgrade), ``stay`` (welcome, until ``leave``).
    """

    def __init__(self, *steps: str) -> None:
        self.steps = steps
        self.port = 0
        self.connections = 0
        self.joins: list[tuple[str | None, dict[str, Any]]] = []
        """(cookie, join message) for every join received."""

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/sessions/7"

    def _step(self, index: int) -> str:
        return self.steps[min(index, len(self.steps) - 1)]

    def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        index = self.connections
        self.connections += 1
        if self._step(index) == "unavailable":
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "restarting\n")
        return None

    async def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        step = self._step(self.connections - 1)
        with contextlib.suppress(ConnectionClosed):
            join = json.loads(await ws.recv())
            self.joins.append((ws.request.headers.get("Cookie"), join))
            if step == "refuse":
                await ws.send(json.dumps({"type": "refused", "code": "room-full",
                                          "message": "The room is full."}))
                await ws.close(4409, "room-full")
                return
            if step == "end":
                await ws.send(json.dumps({"type": "ended", "message": "Session over."}))
                await ws.close(4410, "ended")
                return
            await ws.send(json.dumps({"type": "welcome", "participants": [],
                                      "you": {"id": f"p-{len(self.joins)}"}}))
            if step == "abort":
                ws.transport.abort()
            elif step.startswith("close-"):
                await ws.close(int(step.removeprefix("close-")), "scripted")
            else:
                async for frame in ws:
                    if json.loads(frame).get("type") == "leave":
                        await ws.close(1000, "left")


@contextlib.asynccontextmanager
async def scripted(*steps: str) -> AsyncIterator[Script]:
    script = Script(*steps)
    async with serve(script.handle, "127.0.0.1", 0,
                     process_request=script.process_request) as server:
        script.port = next(iter(server.sockets)).getsockname()[1]
        yield script


def start(bot: Bot, within: float = 60) -> asyncio.Task[BotResult]:
    return asyncio.create_task(bot.run(seconds(within)))


@pytest.mark.parametrize("drop", ["abort", "close-1011", "close-1012"])
async def test_a_drop_is_followed_by_a_new_connection_and_join(drop: str) -> None:
    async with scripted(drop, "unavailable", "stay") as script:
        bot = Bot(script.url, COOKIE, name="Dana", camera=False, mic=False)
        task = start(bot)
        try:
            await wait_for(lambda: bot.participant_id == "p-2" and bot.admitted.is_set(),
                           seconds(10), "the second welcome")
            assert bot.result.reconnects == 1
            assert script.connections == 3  # the drop, the failed attempt, the way back in
            assert script.joins == [(COOKIE, {"type": "join", "v": 1, "name": "Dana"})] * 2
        finally:
            await bot.send({"type": "leave"})
            result = await asyncio.wait_for(task, seconds(10))
        assert result.admitted and result.refusal is None
        assert result.summary()["reconnects"] == 1


@pytest.mark.parametrize("step", ["close-4001", "close-1000", "close-4400", "refuse", "end"])
async def test_no_reconnect_after_replaced_a_refusal_or_the_end(step: str) -> None:
    async with scripted(step, "stay") as script:
        bot = Bot(script.url, COOKIE, camera=False, mic=False)
        result = await asyncio.wait_for(start(bot), seconds(10))
        assert script.connections == 1
        assert result.reconnects == 0
        assert result.refusal == ("room-full" if step == "refuse" else None)
        assert result.ended == (step == "end")
        assert not bot.admitted.is_set()


async def test_no_reconnect_when_told_not_to() -> None:
    async with scripted("close-1012", "stay") as script:
        bot = Bot(script.url, COOKIE, camera=False, mic=False, reconnect=False)
        result = await asyncio.wait_for(start(bot), seconds(10))
        assert script.connections == 1 and result.reconnects == 0


async def test_gives_up_when_the_server_stays_away() -> None:
    async with scripted("close-1012", "unavailable") as script:
        bot = Bot(script.url, COOKIE, camera=False, mic=False, give_up_seconds=seconds(1))
        result = await asyncio.wait_for(start(bot), seconds(10))
        assert script.connections >= 3  # the drop and at least two attempts
        assert result.admitted and result.reconnects == 0


@pytest.mark.parametrize("how", ["stop", "leave"])
async def test_stopping_while_reconnecting_ends_the_bot(how: str) -> None:
    async with scripted("close-1012", "unavailable") as script:
        bot = Bot(script.url, COOKIE, camera=False, mic=False)
        task = start(bot)
        await wait_for(lambda: script.connections >= 2, seconds(10), "an attempt to reconnect")
        if how == "stop":
            bot.stop()
        else:
            await bot.send({"type": "leave"})
        result = await asyncio.wait_for(task, seconds(10))
        assert result.reconnects == 0


# --- a real server -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(settings: Any, clock: Any, port: int = 0) -> AsyncIterator[LiveServer]:
    """A ``LiveServer`` started and stopped off the event loop, so the bots on this loop keep
    running (and answer the server's closing handshake) meanwhile."""
    server = LiveServer(settings, clock, port=port)
    await asyncio.to_thread(server.__enter__)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.__exit__, None, None, None)


class Bots:
    """Bots running in the background; ``finish`` stops them all and waits for them."""

    def __init__(self) -> None:
        self.tasks: dict[Bot, asyncio.Task[BotResult]] = {}

    def start(self, url: str, cookie: str, **options: Any) -> Bot:
        bot = Bot(url, cookie, **options)
        self.tasks[bot] = start(bot, within=120)
        return bot

    async def finish(self) -> None:
        for bot in self.tasks:
            bot.stop()
        await asyncio.wait_for(asyncio.gather(*self.tasks.values()), seconds(20))


def receiving(bot: Bot, other: Bot, video: int = 10, audio: int = 25) -> bool:
    """``bot`` has had at least so many frames from ``other``'s current connection."""
    stats = bot.result.remote.get(other.participant_id or "")
    return stats is not None and stats.video_frames >= video and stats.audio_frames >= audio


async def test_bots_come_back_after_the_server_restarts(live_settings, clock, engine, demo, db):
    bots = Bots()
    try:
        async with serving(live_settings, clock) as first:
            port = first.socket.getsockname()[1]
            url = f"{first.ws_base}/ws/sessions/{await live_session_id(db)}"
            therapist = bots.start(url, await therapist_cookie(first), admit_all=True)
            patient = bots.start(url, await patient_cookie(db, live_settings, clock, first,
                                                            ROSTER[0]))
            await wait_for(lambda: receiving(therapist, patient) and receiving(patient, therapist),
                           seconds(20), "media both ways")
            before = {bot: (bot.participant_id, sum(r.video_frames for r in
                                                    bot.result.remote.values()))
                      for bot in (therapist, patient)}
        # Shut down: every connection was closed with 1012 (server-restart).
        async with serving(live_settings, clock, port=port):
            await wait_for(lambda: all(bot.admitted.is_set() and bot.participant_id
                                       not in (None, before[bot][0]) for bot in before),
                           seconds(30), "both bots admitted again, with new participant ids")
            await wait_for(lambda: receiving(therapist, patient) and receiving(patient, therapist),
                           seconds(20), "media both ways again")
            for bot, (_, frames) in before.items():
                assert bot.result.reconnects >= 1
                assert bot.result.refusal is None and not bot.result.ended
                assert sum(r.video_frames for r in bot.result.remote.values()) > frames
                assert bot.result.summary()["reconnects"] == bot.result.reconnects
                assert all(r.decode_errors == 0 for r in bot.result.remote.values())
            # The old connections' counts are kept under the old ids.
            assert therapist.result.remote[before[patient][0]].video_frames > 0
            assert patient.result.remote[before[therapist][0]].video_frames > 0
            await bots.finish()
    finally:
        await bots.finish()


async def test_replaced_and_refused_bots_do_not_reconnect(live_server, db, live_settings,
                                                         clock):
    url = f"{live_server.ws_base}/ws/sessions/{await live_session_id(db)}"
    bots = Bots()
    try:
        stranger = bots.start(url, "")
        refused = await asyncio.wait_for(bots.tasks[stranger], seconds(10))
        assert refused.refusal == "not-signed-in" and refused.reconnects == 0

        cookie = await patient_cookie(db, live_settings, clock, live_server, ROSTER[0])
        first = bots.start(url, cookie, camera=False, mic=False)
        await asyncio.wait_for(first.admitted.wait(), seconds(10))
        second = bots.start(url, cookie, camera=False, mic=False)
        await asyncio.wait_for(second.admitted.wait(), seconds(10))
        replaced = await asyncio.wait_for(bots.tasks[first], seconds(10))  # closed with 4001
        assert replaced.reconnects == 0 and replaced.refusal is None
        seat = second.participant_id
        assert second.admitted.is_set() and second.result.reconnects == 0
        await second.send({"type": "leave"})
        assert (await asyncio.wait_for(bots.tasks[second], seconds(10))).reconnects == 0
        assert second.participant_id == seat
    finally:
        await bots.finish()


async def test_a_bot_that_only_watches_is_not_dropped_as_idle(db, live_settings, clock, engine,
                                                             demo):
    """The server drops a client it has not heard from; a joined bot pings, like a browser."""
    quiet = dataclasses.replace(live_settings, ws_idle_timeout_seconds=seconds(1.5))
    async with serving(quiet, clock) as server:
        url = f"{server.ws_base}/ws/sessions/{await live_session_id(db)}"
        cookie = await patient_cookie(db, quiet, clock, server, ROSTER[0])
        bot = Bot(url, cookie, camera=False, mic=False, reconnect=False,
                  keep_alive_seconds=seconds(0.5))
        task = start(bot, within=5 * 1.5)
        await asyncio.wait_for(bot.admitted.wait(), seconds(10))
        result = await asyncio.wait_for(task, seconds(30))
        assert result.refusal is None and result.reconnects == 0
        # It stayed until its time was up, then left on its own: closed by leave, not idle.
        assert bot._ws is not None and bot._ws.close_code == 1000
    # Without the pings the same server drops it as idle.
    async with serving(quiet, clock) as server:
        url = f"{server.ws_base}/ws/sessions/{await live_session_id(db)}"
        cookie = await patient_cookie(db, quiet, clock, server, ROSTER[0])
        silent = Bot(url, cookie, camera=False, mic=False, reconnect=False,
                     keep_alive_seconds=seconds(60))
        task = start(silent, within=30)
        await asyncio.wait_for(silent.admitted.wait(), seconds(10))
        await asyncio.wait_for(task, seconds(30))
        assert silent._ws is not None and silent._ws.close_code == 4408
