"""One participant of ``tests/test_bandwidth_live.py``, run in a network namespace.

``python -m tests.bandwidth_peer ARGS_JSON``: signs in with ``link`` (and ``email`` and
``password`` for a therapist), joins the session open now as a :class:`vio.bot.Bot` and, every
``REPORT_SECONDS``, replaces the JSON file ``status`` with what it has received: audio and
video frames per remote participant (by role), the videos the server says are paused for this
connection's bandwidth, and every ``video-paused`` message with the moment
(``time.monotonic()``) it arrived. It sends ``ping`` now and then, as the room page does. A
publisher (``publish``) sends a noisy camera, which needs far more than the throttled link's
bitrate, and (with ``mic``) the bot's tone. It runs until SIGTERM or ``seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from websockets.exceptions import ConnectionClosed

from vio.bot import Bot, check_in_at_home, joinable_sessions, sign_in

REPORT_SECONDS = 0.25
"""How often the status file is rewritten."""
KEEPALIVE_SECONDS = 15.0
"""How often a ``ping`` is sent: a participant that says nothing for ``VIO_WS_IDLE_TIMEOUT_SECONDS``
(45 s) is dropped, and the bot itself only answers offers."""
NOISE_WIDTH, NOISE_HEIGHT, NOISE_FPS = 96, 64, 15
"""The noisy camera: random pixels, several hundred kbit/s in VP8 whatever the encoder's target."""


class NoiseVideoTrack(MediaStreamTrack):
    """Video of random pixels at ``NOISE_FPS``, which no encoder compresses much."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._index = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._index / NOISE_FPS - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = av.VideoFrame(NOISE_WIDTH, NOISE_HEIGHT, "yuv420p")
        for plane in frame.planes:
            plane.update(os.urandom(plane.buffer_size))
        frame.pts = self._index * (90000 // NOISE_FPS)
        frame.time_base = fractions.Fraction(1, 90000)
        self._index += 1
        return frame


class Peer(Bot):
    """A bot that publishes the noisy camera and remembers each ``video-paused`` message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paused_messages: list[tuple[float, list[str]]] = []

    def _open_media(self) -> None:
        super()._open_media()
        if "video" in self.local:
            self.local["video"].stop()
            self.local["video"] = NoiseVideoTrack()

    async def _on_message(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "video-paused":
            self.paused_messages.append((time.monotonic(), list(msg["participant_ids"])))
        await super()._on_message(msg)

    def status(self) -> dict[str, Any]:
        remote = self.result.remote.values()
        return {
            "at": time.monotonic(),
            "admitted": self.result.admitted,
            "roles": {r.participant_id: r.role for r in remote},
            "audio": {r.participant_id: r.audio_frames for r in remote},
            "video": {r.participant_id: r.video_frames for r in remote},
            "paused": self.result.video_paused,
            "messages": self.paused_messages,
        }


async def report(peer: Peer, path: Path) -> None:
    partial = path.with_suffix(".partial")
    while True:
        partial.write_text(json.dumps(peer.status()))
        partial.replace(path)
        await asyncio.sleep(REPORT_SECONDS)


async def keep_alive(peer: Peer) -> None:
    while True:
        await asyncio.sleep(KEEPALIVE_SECONDS)
        if peer.admitted.is_set():
            with contextlib.suppress(ConnectionClosed, AssertionError):
                await peer.send({"type": "ping"})


async def main(args: dict[str, Any]) -> None:
    web = await asyncio.to_thread(sign_in, args["link"], args.get("email"), args.get("password"))
    sessions = await asyncio.to_thread(joinable_sessions, web)
    session_id = int(sessions[0]["id"])
    await asyncio.to_thread(check_in_at_home, web, session_id)
    ws_base = "ws" + web.base[4:]
    peer = Peer(f"{ws_base}/ws/sessions/{session_id}", web.cookie, camera=args["publish"],
                mic=args["mic"], admit_all=args.get("admit_all", False), reconnect=False)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, peer.stop)
    tasks = [asyncio.create_task(report(peer, Path(args["status"]))),
             asyncio.create_task(keep_alive(peer))]
    try:
        await peer.run(args["seconds"])
    finally:
        for task in tasks:
            task.cancel()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
