"""``vio bot``: a headless participant for smoke tests, demos and load.

It signs in like a person (a patient's personal link, or a therapist's email and password),
joins a session over the signaling WebSocket, publishes a synthetic camera (a frame counter drawn
in) and a tone, decodes what the others send, and prints one JSON summary.

``video_frames`` counts every decoded frame; ``decode_errors`` counts frames from another bot
whose counter no longer reads back (a browser's camera has no counter to check).

Like the room page, the bot reconnects on its own (docs/protocol.md, "Reconnecting"): after a
close with 1011 (server error), 1012 (server restart) or 1006 (the connection was lost), and
after each failed attempt to connect again, it waits (``retry_delay``: exponential from
``FIRST_RETRY_SECONDS`` to ``MAX_RETRY_SECONDS``, half of each wait drawn at random), opens a
new WebSocket with the same cookie, sends ``join`` again and answers the server's new offer
with a new peer connection. It gives up ``give_up_seconds`` after the drop if it is not back in
by then. It does not reconnect after a refusal, ``ended``, ``replaced`` (4001), its own
``leave``, or when stopped. One ``BotResult`` spans every connection: remote participants are
counted by participant id (someone who reconnects appears again under their new id), and
``reconnects`` counts the connections opened after a drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import signal
import urllib.parse
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from typing import Any, TypeVar

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from vio.client import SignalingClient
from vio.media import CounterVideoTrack, ToneAudioTrack, read_counter, rtc_configuration

log = logging.getLogger(__name__)

T = TypeVar("T")

HTTP_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 10.0
FIRST_RETRY_SECONDS = 0.5
"""The longest wait before the first attempt to reconnect."""
MAX_RETRY_SECONDS = 10.0
"""The longest wait between two attempts to reconnect."""
GIVE_UP_SECONDS = 120.0
"""How long after a drop the bot keeps trying to get back in (``give_up_seconds``)."""
KEEP_ALIVE_SECONDS = 20.0
"""How often a joined bot sends ``ping`` (docs/protocol.md: the server drops a client it has
not heard from for ``VIO_WS_IDLE_TIMEOUT_SECONDS``, 45 s by default)."""
RECONNECT_CLOSE_CODES = frozenset({1006, 1011, 1012})
"""Abnormal closure (no close frame), ``server-error`` and ``server-restart``."""
CONNECT_ERRORS = (OSError, TimeoutError, InvalidHandshake)
"""A connect attempt that failed: refused or unreachable, too slow, or a bad HTTP upgrade."""


def reconnects_after(close_code: int | None) -> bool:
    """Whether a client reconnects after its connection closed with ``close_code``."""
    return close_code in RECONNECT_CLOSE_CODES


def retry_delay(attempt: int, jitter: float) -> float:
    """The wait before reconnect attempt ``attempt`` (0 is the first): doubling from
    ``FIRST_RETRY_SECONDS`` up to ``MAX_RETRY_SECONDS``; ``jitter`` (0 to 1) places the wait
    in the upper half of that, so a room full of clients does not come back in one instant."""
    ceiling = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2.0 ** min(attempt, 32))
    return ceiling * (1 + jitter) / 2


@dataclass
class RemoteStats:
    participant_id: str
    name: str = ""
    role: str = ""
    video_frames: int = 0
    audio_frames: int = 0
    decode_errors: int = 0
    last_counter: int | None = None

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "video_frames": self.video_frames,
                "audio_frames": self.audio_frames, "decode_errors": self.decode_errors}


@dataclass
class BotResult:
    admitted: bool = False
    refusal: str | None = None
    ended: bool = False
    reconnects: int = 0
    remote: dict[str, RemoteStats] = field(default_factory=dict)
    video_paused: list[str] = field(default_factory=list)
    """Whose video the server holds back now because this connection cannot carry it."""

    def summary(self) -> dict[str, Any]:
        return {"admitted": self.admitted, "refusal": self.refusal,
                "reconnects": self.reconnects, "video_paused": self.video_paused,
                "remote": [r.summary() for r in self.remote.values()]}


class SignInFailed(Exception):
    pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebSession:
    """A browser-like HTTP session (cookies, no automatic redirects) for signing in."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = CookieJar()
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect)

    @property
    def cookie(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)

    def fetch(self, url: str, data: dict[str, str] | None = None) -> tuple[int, str]:
        if url.startswith("/"):
            url = self.base + url
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        try:
            with self._opener.open(url, body, timeout=HTTP_TIMEOUT_SECONDS) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def post_form(self, url: str, fields: dict[str, str]) -> int:
        """Fill in the page's form at ``url`` (with its CSRF token) and post it."""
        status, page = self.fetch(url)
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        if match is None:
            raise SignInFailed(f"{url} has no form (HTTP {status})")
        status, _ = self.fetch(url, {**fields, "csrf_token": match.group(1)})
        return status


def sign_in(link: str, email: str | None = None, password: str | None = None) -> WebSession:
    """Sign in through the web pages, as a person would."""
    parts = urllib.parse.urlsplit(link)
    web = WebSession(f"{parts.scheme}://{parts.netloc}")
    if parts.path.rstrip("/").endswith("/login"):
        if not email or not password:
            raise SignInFailed("a /login link needs --email and --password")
        status = web.post_form(link, {"email": email, "password": password, "next": "/staff"})
    else:
        status, _ = web.fetch(link)
    if status != 303:
        raise SignInFailed(f"sign-in was refused (HTTP {status})")
    return web


def check_in_at_home(web: WebSession, session_id: int) -> None:
    """A patient confirms they are at home for this session (staff need no check-in)."""
    status, _ = web.fetch(f"/sessions/{session_id}/check-in")
    if status == 200:
        web.post_form(f"/sessions/{session_id}/check-in", {"location": "home"})


def joinable_sessions(web: WebSession) -> list[dict[str, Any]]:
    status, body = web.fetch("/api/sessions/joinable")
    if status != 200:
        raise SignInFailed(f"could not list sessions (HTTP {status})")
    sessions: list[dict[str, Any]] = json.loads(body)["sessions"]
    return sessions


class Bot:
    """One participant: signaling, a peer connection, synthetic media, and receive counters.

    Each connection gets its own peer connection and fresh synthetic tracks; ``result`` and its
    counters span all of them. ``admitted`` is set by each ``welcome`` and cleared when the
    connection is lost; ``participant_id`` is the id from the latest ``welcome``.
    """

    def __init__(self, ws_url: str, cookie: str, *, camera: bool = True, mic: bool = True,
                 admit_all: bool = False, name: str | None = None, reconnect: bool = True,
                 give_up_seconds: float = GIVE_UP_SECONDS,
                 keep_alive_seconds: float = KEEP_ALIVE_SECONDS) -> None:
        self.ws_url = ws_url
        self.keep_alive_seconds = keep_alive_seconds
        self.cookie = cookie
        self.camera = camera
        self.mic = mic
        self.admit_all = admit_all
        self.name = name
        self.reconnect = reconnect
        self.give_up_seconds = give_up_seconds
        self.result = BotResult()
        self.participant_id: str | None = None
        self.admitted = asyncio.Event()
        self.first_video = asyncio.Event()
        self.pc: RTCPeerConnection | None = None
        self.local: dict[str, MediaStreamTrack] = {}
        self._camera_on = True
        self._mids: dict[str, tuple[str, str]] = {}
        self._consumers: set[asyncio.Task[None]] = set()
        self._ws: SignalingClient | None = None
        self._stop = asyncio.Event()
        self._left = False
        self._dropped_at: float | None = None  # loop time the connection was lost, until back in
        self._retries = 0  # reconnect attempts since then

    def set_camera(self, on: bool) -> None:
        """Stop or restart sending the synthetic camera (as a person turning it off); the
        choice holds across reconnects."""
        self._camera_on = on
        camera = self.local.get("video")
        if self.pc is None or camera is None:
            return
        for transceiver in self.pc.getTransceivers():
            owner, kind = self._mids.get(transceiver.mid or "", ("", ""))
            if owner == self.participant_id and kind == "video":
                transceiver.sender.replaceTrack(camera if on else None)

    def stop(self) -> None:
        """Leave now (for example on Ctrl-C or SIGTERM) and report what was received."""
        self._stop.set()

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message on the current connection. After ``leave`` the bot does not
        reconnect; a ``leave`` while no connection is open just stops it."""
        if message.get("type") == "leave":
            self._left = True
            if self._ws is None or not self._ws.open:
                self.stop()
                return
        assert self._ws is not None
        await self._ws.send(**message)

    async def run(self, seconds: float) -> BotResult:
        """Take part for ``seconds`` (or until stopped, refused, ended or given up), then
        leave; reconnect after drops that call for it (docs/protocol.md, "Reconnecting")."""
        timer = asyncio.get_running_loop().call_later(seconds, self.stop)
        try:
            ws = await self._unless_stopped(self._connect())
            while ws is not None:
                await self._attend(ws)
                ws = await self._come_back(ws.close_code)
        finally:
            timer.cancel()
            await self.close()
        return self.result

    async def _connect(self) -> SignalingClient:
        client = SignalingClient(self.ws_url, cookie=self.cookie,
                                 open_timeout=CONNECT_TIMEOUT_SECONDS)
        return await client.connect()

    async def _unless_stopped(self, work: Coroutine[Any, Any, T]) -> T | None:
        """``work``'s result, or ``None`` if the bot is stopped first (``work`` is cancelled)."""
        task = asyncio.create_task(work)
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return None if task.cancelled() else task.result()

    async def _attend(self, ws: SignalingClient) -> None:
        """Join over ``ws`` and take part until the connection closes or the bot stops."""
        self._ws = ws
        self._open_media()
        try:
            join: dict[str, Any] = {"type": "join", "v": 1}
            if self.name:
                join["name"] = self.name
            await ws.send(**join)
            keep_alive = asyncio.create_task(self._keep_alive(ws))
            try:
                await self._unless_stopped(self._read(ws))
            finally:
                keep_alive.cancel()
            if self._stop.is_set() and not self.result.ended and self.result.refusal is None:
                self._left = True
                await ws.send(type="leave")
        except ConnectionClosed:
            pass
        finally:
            self.admitted.clear()
            await ws.close()
            await self.close()

    async def _come_back(self, close_code: int | None) -> SignalingClient | None:
        """A new connection after one closed with ``close_code``, or ``None``: this close
        does not call for reconnecting, the bot was stopped, or it gave up."""
        if (not self.reconnect or self._left or self._stop.is_set() or self.result.ended
                or self.result.refusal is not None or not reconnects_after(close_code)):
            return None
        loop = asyncio.get_running_loop()
        if self._dropped_at is None:
            self._dropped_at = loop.time()
            self._retries = 0
        while True:
            left = self._dropped_at + self.give_up_seconds - loop.time()
            if left <= 0:
                log.warning("could not reconnect within %.0f s; giving up", self.give_up_seconds)
                return None
            delay = min(left, retry_delay(self._retries, random.random()))
            self._retries += 1
            log.info("signaling closed (%s); reconnecting in %.1f s", close_code, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return None
            try:
                ws = await self._unless_stopped(self._connect())
            except CONNECT_ERRORS as exc:
                log.info("reconnecting failed: %s", type(exc).__name__)
                continue
            if ws is not None:
                self.result.reconnects += 1
            return ws

    async def _keep_alive(self, ws: SignalingClient) -> None:
        """A bot that only watches still says it is there, as a browser does."""
        with contextlib.suppress(ConnectionClosed):
            while ws.open:
                await asyncio.sleep(self.keep_alive_seconds)
                await ws.send(type="ping")

    async def _read(self, ws: SignalingClient) -> None:
        async for msg in ws.incoming():
            await self._on_message(msg)
            if self.result.refusal is not None or self.result.ended:
                return

    async def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "welcome":
            self.result.admitted = True
            self.participant_id = msg["you"]["id"]
            self._dropped_at = None
            for p in msg["participants"]:
                self._remote(p["id"], p["name"], p["role"])
            self.admitted.set()
        elif kind == "waiting":
            self._dropped_at = None
        elif kind == "participant-joined":
            p = msg["participant"]
            self._remote(p["id"], p["name"], p["role"])
        elif kind == "offer":
            await self._answer(msg["sdp"], msg["tracks"])
        elif kind == "waiting-list" and self.admit_all and msg["waiting"]:
            await self.send({"type": "admit-all"})
        elif kind == "video-paused":
            self.result.video_paused = list(msg["participant_ids"])
            log.info("%d videos paused (%s)", len(self.result.video_paused), msg["reason"])
        elif kind == "refused":
            self.result.refusal = msg["code"]
        elif kind == "ended":
            self.result.ended = True

    def _remote(self, pid: str, name: str = "", role: str = "") -> RemoteStats:
        stats = self.result.remote.get(pid)
        if stats is None:
            stats = self.result.remote[pid] = RemoteStats(pid)
        stats.name = name or stats.name
        stats.role = role or stats.role
        return stats

    # --- one connection's media ------------------------------------------------------------

    def _open_media(self) -> None:
        """A new peer connection and fresh synthetic tracks, for a new connection."""
        self.pc = RTCPeerConnection(rtc_configuration(()))
        self.pc.on("track", self._on_track)
        self.local = {}
        if self.camera:
            self.local["video"] = CounterVideoTrack()
        if self.mic:
            self.local["audio"] = ToneAudioTrack()
        self._mids = {}

    async def _answer(self, sdp: str, tracks: list[dict[str, str]]) -> None:
        assert self.pc is not None
        self._mids = {t["mid"]: (t["participant_id"], t["kind"]) for t in tracks}
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for transceiver in self.pc.getTransceivers():
            owner, kind = self._mids.get(transceiver.mid or "", ("", ""))
            if owner == self.participant_id and kind in self.local:
                transceiver.direction = "sendonly"
                if transceiver.sender.track is None and (kind != "video" or self._camera_on):
                    transceiver.sender.replaceTrack(self.local[kind])
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        await self.send({"type": "answer", "sdp": self.pc.localDescription.sdp})

    def _on_track(self, track: MediaStreamTrack) -> None:
        assert self.pc is not None
        transceiver = next((t for t in self.pc.getTransceivers()
                            if t.receiver.track is track), None)
        mid = transceiver.mid if transceiver is not None and transceiver.mid else ""
        owner = self._mids.get(mid, ("", ""))[0]
        task = asyncio.create_task(self._consume(track, self._remote(owner)))
        self._consumers.add(task)
        task.add_done_callback(self._consumers.discard)

    async def _consume(self, track: MediaStreamTrack, stats: RemoteStats) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "audio":
                    stats.audio_frames += 1
                    continue
                assert isinstance(frame, av.VideoFrame)
                stats.video_frames += 1
                counter = read_counter(frame)
                if counter is not None:
                    stats.last_counter = counter
                elif stats.last_counter is not None:
                    # A synthetic camera's frame whose counter no longer reads: corrupted.
                    stats.decode_errors += 1
                self.first_video.set()

    async def close(self) -> None:
        """Close the current peer connection and its tracks (idempotent)."""
        for task in list(self._consumers):
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
        for track in self.local.values():
            track.stop()


async def run_bot(link: str, *, seconds: float, email: str | None = None,
                  password: str | None = None, session_id: int | None = None,
                  camera: bool = True, mic: bool = True, admit_all: bool = False,
                  name: str | None = None, reconnect: bool = True,
                  give_up_seconds: float = GIVE_UP_SECONDS) -> BotResult:
    web = await asyncio.to_thread(sign_in, link, email, password)
    if session_id is None:
        sessions = await asyncio.to_thread(joinable_sessions, web)
        if not sessions:
            return BotResult(refusal="no-joinable-session")
        session_id = int(sessions[0]["id"])
    await asyncio.to_thread(check_in_at_home, web, session_id)
    ws_base = "wss" + web.base[5:] if web.base.startswith("https") else "ws" + web.base[4:]
    bot = Bot(f"{ws_base}/ws/sessions/{session_id}", web.cookie, camera=camera, mic=mic,
              admit_all=admit_all, name=name, reconnect=reconnect,
              give_up_seconds=give_up_seconds)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, bot.stop)
    try:
        return await bot.run(seconds)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
