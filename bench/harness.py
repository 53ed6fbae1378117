"""What the media benchmarks share: child processes, a loopback media server, loopback peers.

Every benchmark runs the server and its load in separate processes on 127.0.0.1 (DESIGN.md,
"Media facts"). The driver starts each child as ``python bench/harness.py --child <role>
<json config>`` and talks to it in JSON lines: one command in on stdin, one reply out on
stdout. A child exits on ``exit``, when its stdin closes, or when its own deadline passes,
whichever comes first, so nothing outlives a crashed driver.

Children:

* ``server``: a media server with one of three backends. ``vio`` is a :class:`MediaRouter`
  (passthrough, selective video); ``relay`` is a minimal aiortc server that forwards one
  publisher with aiortc's ``MediaRelay``, which decodes once and encodes again for every
  receiver (the baseline); ``passthrough`` is a minimal aiortc server that hands the
  publisher's reassembled frames to every receiver undecoded (:class:`PassthroughBackend`).
  It reports its own CPU time (``CLOCK_PROCESS_CPUTIME_ID``: all
  threads, user and system) and the RTP packets its senders sent. A :class:`Variant` picks its
  event loop (asyncio or uvloop) and, to compare with an older vio side by side, the directory
  of another ``vio`` package to import instead of this checkout's.
* ``peers``: aiortc participants that join the server and publish pre-encoded clips in real
  time (:func:`vp8_clip`: :class:`CameraTrack`, 15 fps VP8 at ~300 kbit/s with a frame counter
  drawn in; :func:`opus_clip`: a tone in 20 ms Opus packets), so publishing costs no encoding.
  They count what arrives per publisher and kind: either through aiortc's whole receive path,
  video decoded and its counter read (``receive="decode"``), or at the RTP level, a frame per
  marker bit (``receive="count"``), which keeps a dozen load generators within two cores.

Peers and server speak a tiny signaling protocol over TCP (JSON lines): ``join``, ``offer``
(the server always offers), ``answer``. Every ICE candidate is 127.0.0.1 and no STUN server is
used, in every process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import fractions
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    rtcrtpreceiver,
    rtcrtpsender,
)
from aiortc.codecs.opus import OpusEncoder
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

import vio
from vio.media import (
    CounterVideoTrack,
    MediaConfig,
    MediaRouter,
    ToneAudioTrack,
    TrackInfo,
    announce_host_addresses,
    read_counter,
    rtc_configuration,
)
from vio.media.passthrough import PassthroughDecoder, PassthroughPacker, is_vp8_keyframe

HOST = "127.0.0.1"
LINE_LIMIT = 1 << 24
CHILD_DEADLINE_S = 900.0
"""No child lives longer than this, whatever the driver does."""
CALL_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 10.0
POLL_S = 0.05

log = logging.getLogger("bench")


# --- JSON lines --------------------------------------------------------------------------------


def write_line(writer: asyncio.StreamWriter, obj: Any) -> None:
    writer.write(json.dumps(obj).encode() + b"\n")


async def read_line(reader: asyncio.StreamReader) -> Any | None:
    """The next JSON object, or ``None`` at end of stream. Lines that are not JSON are skipped."""
    while True:
        line = await reader.readline()
        if not line:
            return None
        if line.lstrip().startswith(b"{"):
            return json.loads(line)


# --- child processes ---------------------------------------------------------------------------


class ChildFailed(RuntimeError):
    pass


class Child:
    """A child process driven over stdin/stdout, one command at a time."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, script: Path, role: str, config: dict[str, Any], *,
                    name: str | None = None, pythonpath: str | None = None) -> Child:
        """Start ``script --child role config``; ``pythonpath`` goes before the installed vio."""
        env = None if pythonpath is None else {**os.environ, "PYTHONPATH": pythonpath}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), "--child", role, json.dumps(config),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT,
            env=env)
        return cls(name or role, proc)

    async def call(self, cmd: str, within: float = CALL_TIMEOUT_S, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self._lock:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            await self.proc.stdin.drain()
            try:
                reply = await asyncio.wait_for(read_line(self.proc.stdout), within)
            except TimeoutError:
                raise ChildFailed(f"{self.name}: no reply to {cmd!r} in {within:.0f} s") from None
        if reply is None:
            raise ChildFailed(f"{self.name} exited (code {self.proc.returncode}) during {cmd!r}")
        if not reply.get("ok"):
            raise ChildFailed(f"{self.name}: {cmd!r} failed: {reply.get('error')}")
        return reply.get("result")

    async def close(self) -> None:
        """Ask the child to exit; kill it if it does not. Idempotent."""
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call("exit"), EXIT_TIMEOUT_S)
        if self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), EXIT_TIMEOUT_S)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


async def serve_commands(handle: Handler) -> None:
    """Answer commands from stdin until ``exit`` or end of input."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    while True:
        request = await read_line(reader)
        if request is None:
            return
        cmd = request.pop("cmd")
        if cmd == "exit":
            out.write(b'{"ok": true}\n')
            out.flush()
            return
        try:
            reply = {"ok": True, "result": await handle(cmd, request)}
        except Exception as exc:
            log.exception("%s failed", cmd)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()


def run_child(main: Callable[[dict[str, Any]], Awaitable[None]], config: dict[str, Any]) -> None:
    """Run one child's ``main`` on asyncio (or uvloop with ``"uvloop": true``), bounded in time."""
    deadline = float(config.get("deadline_s", CHILD_DEADLINE_S))
    faulthandler.dump_traceback_later(deadline + 15, exit=True)  # a wedged loop still ends
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"[{config.get('name', 'child')}] %(levelname)s %(name)s: "
                               "%(message)s")
    for name in os.environ.get("VIO_BENCH_DEBUG", "").split(","):
        if name:
            logging.getLogger(name).setLevel(logging.DEBUG)

    async def bounded() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(main(config), deadline)

    if config.get("uvloop"):
        import uvloop

        uvloop.run(bounded())
    else:
        asyncio.run(bounded())


# --- measurements ------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process, all threads, user + system (``CLOCK_PROCESS_CPUTIME_ID``)."""
    return time.process_time()


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100), linear between closest ranks; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table, columns padded for reading in a terminal."""
    text = [[str(h) for h in headers], *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in text]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def machine() -> str:
    """One line about where this ran."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs ({model}); Python {sys.version.split()[0]}; "
            f"load average before the run {load}")


def git_head() -> str:
    """``git rev-parse --short HEAD`` of the checkout, or ``unknown``."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=SCRIPT.parent).stdout.strip()
    return "unknown"


def loopback_only() -> None:
    """Every ICE candidate of this process is 127.0.0.1 (and no STUN: ``rtc_configuration``)."""
    announce_host_addresses([HOST])


def check_loopback(sdp: str) -> str:
    """``sdp``, after checking that every ICE candidate in it is on 127.0.0.1."""
    for line in sdp.splitlines():
        if line.startswith("a=candidate:") and line.split()[4] != HOST:
            raise RuntimeError(f"an ICE candidate off loopback: {line}")
    return sdp


def peer_connection() -> RTCPeerConnection:
    return RTCPeerConnection(rtc_configuration(()))


async def wait_until(predicate: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Poll ``predicate`` every 0.2 s; raise :class:`ChildFailed` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await predicate():
        if time.monotonic() > deadline:
            raise ChildFailed(f"timed out after {seconds:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


async def poll(predicate: Callable[[], bool], seconds: float, interval: float = POLL_S) -> bool:
    """Whether ``predicate`` came true within ``seconds``, checking every ``interval``."""
    for _ in range(max(1, round(seconds / interval))):
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()


# --- the server child --------------------------------------------------------------------------

Send = Callable[[dict[str, Any]], None]


def _pinned(kind: str) -> list[RTCRtpCodecCapability]:
    wanted = {"audio": ("audio/opus",), "video": ("video/vp8", "video/rtx")}[kind]
    return [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType.lower() in wanted]


def _offer(sdp: str, tracks: Iterable[tuple[str | None, str, str]]) -> dict[str, Any]:
    return {"type": "offer", "sdp": check_loopback(sdp),
            "tracks": [{"mid": mid or "", "publisher": pub, "kind": kind}
                       for mid, pub, kind in tracks]}


def _sent(senders: Iterable[RTCRtpSender]) -> tuple[int, int]:
    packets = octets = 0
    for sender in senders:
        packets += sender._RTCRtpSender__packet_count  # type: ignore[attr-defined]
        octets += sender._RTCRtpSender__octet_count  # type: ignore[attr-defined]
    return packets, octets


def never_pause() -> Any:
    """Receiver-aware video's rules with thresholds no link reaches: every video keeps flowing
    (the RTCP is still read and judged, so its cost stays in the measurement)."""
    from vio.media.bandwidth import BandwidthRules

    return BandwidthRules(pause_ratio=1e-9, loss_pause=1.0, loss_resume=0.99)


class VioBackend:
    """vio's forwarding: one :class:`MediaRouter`, as a room uses it."""

    def __init__(self, config: dict[str, Any]) -> None:
        settings: dict[str, Any] = {}
        if config.get("keep_video") and "bandwidth" in MediaConfig.__dataclass_fields__:
            settings["bandwidth"] = never_pause()
        self.router = MediaRouter(MediaConfig(
            max_video_forwarded=int(config.get("max_video_forwarded", 6)), **settings))

    async def join(self, pid: str, msg: dict[str, Any], send: Send) -> None:
        async def on_offer(sdp: str, tracks: list[TrackInfo]) -> None:
            send(_offer(sdp, ((t.mid, t.publisher, t.kind) for t in tracks)))

        await self.router.add_participant(pid, is_therapist=bool(msg.get("therapist")),
                                          on_offer=on_offer)

    async def answer(self, pid: str, sdp: str) -> None:
        await self.router.accept_answer(pid, sdp)

    async def leave(self, pid: str) -> None:
        await self.router.remove_participant(pid)

    def sent(self) -> tuple[int, int]:
        if hasattr(self.router, "packets_sent"):  # RTP-level forwarding: the legs count
            packets_sent: tuple[int, int] = self.router.packets_sent()
            return packets_sent
        return _sent(s for p in self.router._participants.values() for s in p.pc.getSenders())

    def forwarded(self) -> dict[str, list[str]]:
        return {pid: sorted(self.router.forwarded_video(pid)) for pid in self.router.participants()}

    async def close(self) -> None:
        await self.router.close()


class RelayBackend:
    """The baseline: aiortc's ``MediaRelay`` (decode once, encode again per receiver).

    One publisher per kind; every other participant subscribes to what has been published.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.relay = MediaRelay()
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.sources: dict[str, tuple[str, MediaStreamTrack]] = {}

    async def join(self, pid: str, msg: dict[str, Any], send: Send) -> None:
        pc = self.pcs[pid] = peer_connection()
        legs: list[tuple[Any, str, str]] = []
        publish = list(msg.get("publish", ()))
        if publish:
            for kind in publish:
                transceiver = pc.addTransceiver(kind, direction="recvonly")
                transceiver.setCodecPreferences(_pinned(kind))
                legs.append((transceiver, pid, kind))

            @pc.on("track")
            def on_track(track: MediaStreamTrack) -> None:
                self.sources[track.kind] = (pid, track)
        else:
            await poll(lambda: bool(self.sources), 10)
            for kind, (publisher, track) in self.sources.items():
                transceiver = pc.addTransceiver(self.relay.subscribe(track), direction="sendonly")
                transceiver.setCodecPreferences(_pinned(kind))
                legs.append((transceiver, publisher, kind))
        await pc.setLocalDescription(await pc.createOffer())
        send(_offer(pc.localDescription.sdp, ((t.mid, p, k) for t, p, k in legs)))

    async def answer(self, pid: str, sdp: str) -> None:
        await self.pcs[pid].setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def leave(self, pid: str) -> None:
        pc = self.pcs.pop(pid, None)
        if pc is not None:
            self.sources = {k: v for k, v in self.sources.items() if v[0] != pid}
            await pc.close()

    def sent(self) -> tuple[int, int]:
        return _sent(s for pc in self.pcs.values() for s in pc.getSenders())

    def forwarded(self) -> dict[str, list[str]]:
        return {}

    async def close(self) -> None:
        await asyncio.gather(*(pc.close() for pc in self.pcs.values()), return_exceptions=True)


PASSTHROUGH_QUEUE = 64
"""Frames a minimal passthrough leg holds before it drops until the next keyframe."""


class FanOutLeg(MediaStreamTrack):
    """One subscriber's copy of a publisher's encoded frames: a bounded queue that starts at a
    keyframe (and starts again at one after an overflow); its first read asks for one."""

    def __init__(self, kind: str, request_keyframe: Callable[[], None]) -> None:
        super().__init__()
        self.kind = kind
        self.request_keyframe = request_keyframe
        self._queue: asyncio.Queue[Any] = asyncio.Queue(PASSTHROUGH_QUEUE)
        self._waiting = kind == "video"
        self._started = False

    def push(self, packet: Any) -> None:
        if self._waiting and not packet.is_keyframe:
            return
        self._waiting = False
        try:
            self._queue.put_nowait(packet)
        except asyncio.QueueFull:
            self._waiting = self.kind == "video"
            if self._waiting:
                self.request_keyframe()

    async def recv(self) -> Any:
        if not self._started:
            self._started = True
            self.request_keyframe()
        return await self._queue.get()


class PassthroughBackend(RelayBackend):
    """A minimal frame-passthrough SFU on plain aiortc, next to vio's for comparison.

    The publisher's receivers hand their reassembled frames over undecoded
    (``PassthroughDecoder`` in place of aiortc's decoder, still on aiortc's decoder thread);
    one task per track copies each frame to every subscriber's :class:`FanOutLeg`, whose
    sender packs it without encoding (``PassthroughPacker``). A subscriber gets only the
    publisher's tracks, as with Janus and ``relay``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        count_without_decoding({"audio", "video"})
        send_pre_encoded()
        self.legs: dict[str, set[FanOutLeg]] = {"audio": set(), "video": set()}
        self.receivers: dict[str, Any] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.relay = self  # type: ignore[assignment]  # RelayBackend.join calls subscribe()

    def subscribe(self, track: MediaStreamTrack) -> FanOutLeg:
        leg = FanOutLeg(track.kind, lambda kind=track.kind: self._pli(kind))
        self.legs[track.kind].add(leg)
        return leg

    async def join(self, pid: str, msg: dict[str, Any], send: Send) -> None:
        await super().join(pid, msg, send)
        if msg.get("publish"):
            pc = self.pcs[pid]

            @pc.on("track")
            def on_track(track: MediaStreamTrack) -> None:
                receiver = next(t.receiver for t in pc.getTransceivers()
                                if t.receiver.track is track)
                self.receivers[track.kind] = receiver
                task = asyncio.ensure_future(self._fan_out(track))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        else:
            for transceiver in self.pcs[pid].getTransceivers():
                leg = transceiver.sender.track
                if isinstance(leg, FanOutLeg):
                    transceiver.sender._send_keyframe = leg.request_keyframe  # type: ignore[method-assign]

    async def _fan_out(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                packet = await track.recv()
                for leg in list(self.legs[track.kind]):
                    leg.push(packet)

    def _pli(self, kind: str) -> None:
        receiver = self.receivers.get(kind)
        if kind != "video" or receiver is None:
            return
        for source in receiver.getSynchronizationSources():
            task = asyncio.ensure_future(receiver._send_rtcp_pli(source.source))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def leave(self, pid: str) -> None:
        pc = self.pcs.get(pid)
        if pc is not None:
            for transceiver in pc.getTransceivers():
                for legs in self.legs.values():
                    legs.discard(transceiver.sender.track)  # type: ignore[arg-type]
        await super().leave(pid)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await super().close()


async def server_main(config: dict[str, Any]) -> None:
    loopback_only()
    backends: dict[str, type[VioBackend | RelayBackend]] = {
        "vio": VioBackend, "relay": RelayBackend, "passthrough": PassthroughBackend}
    backend = backends[config["backend"]](config)
    connections: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections[writer] = task
        pid: str | None = None

        def send(obj: dict[str, Any]) -> None:
            if not writer.is_closing():
                write_line(writer, obj)

        try:
            while (msg := await read_line(reader)) is not None:
                if msg["type"] == "join":
                    pid = str(msg["pid"])
                    await backend.join(pid, msg, send)
                elif msg["type"] == "answer" and pid is not None:
                    await backend.answer(pid, msg["sdp"])
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if pid is not None:
                await backend.leave(pid)
            writer.close()
            connections.pop(writer, None)

    server = await asyncio.start_server(on_connect, HOST, 0)
    port = server.sockets[0].getsockname()[1]

    async def handle(cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "port":
            return port
        if cmd == "vio":
            return str(Path(vio.__file__).parent)
        if cmd == "mark":
            packets, octets = backend.sent()
            return {"t": time.monotonic(), "cpu": cpu_seconds(), "packets": packets,
                    "bytes": octets, "forwarded": backend.forwarded()}
        raise ValueError(f"unknown command {cmd!r}")

    try:
        await serve_commands(handle)
    finally:
        server.close()
        for writer in list(connections):  # end of input: each connection leaves by itself
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*connections.values(), return_exceptions=True),
                                   EXIT_TIMEOUT_S)
        await backend.close()


# --- the peers child ---------------------------------------------------------------------------

VIDEO_FPS = 15
VIDEO_TARGET_KBPS = 500
"""The VP8 encoder's target bitrate for the clips (what they spend depends on the frame rate)."""
CLIP_FRAMES = 150
"""Ten seconds of video: the clip loops, restarting at its keyframe (also on a PLI)."""
AUDIO_FRAMES = 50
"""One second of tone: the table repeats every second, so the clip loops seamlessly."""


class CameraTrack(CounterVideoTrack):
    """``CounterVideoTrack`` with faint chroma noise, so VP8 spends what a camera would.

    The plain counter compresses to ~200 bytes a frame, one RTP packet. With a little noise in
    U and V (the luma, where the counter is drawn, is untouched) the encoder makes frames of
    2-3 kB: about 300 kbit/s at 15 fps, two or three RTP packets a frame, like a camera at the
    publish cap (``VIO_PUBLISH_MAX_KBPS``). Sizes other than the two calibrated ones get a
    rough guess.
    """

    NOISE_FRAMES = 8
    WIDE = {(320, 240): 64, (640, 360): 12}
    """Of 256 byte values, how many map to +-2 (the rest to -1, 0, +1): tuned per size."""

    def __init__(self, width: int = 320, height: int = 240, fps: int = VIDEO_FPS) -> None:
        super().__init__(width, height, fps)
        wide = self.WIDE.get((width, height), 64 * 320 * 240 // (width * height))
        table = bytes((126 if b % 2 else 130) if b < wide else 127 + b % 3 for b in range(256))
        rnd = random.Random(f"{width}x{height}")
        blank = av.VideoFrame(width, height, "yuv420p")
        self._noise = [[rnd.randbytes(p.buffer_size).translate(table) for p in blank.planes[1:]]
                       for _ in range(self.NOISE_FRAMES)]

    def frame(self, index: int) -> av.VideoFrame:
        frame = super().frame(index)
        for plane, data in zip(frame.planes[1:], self._noise[index % self.NOISE_FRAMES],
                               strict=True):
            plane.update(data)
        return frame


def vp8_clip(width: int, height: int, frames: int = CLIP_FRAMES, *, fps: int = VIDEO_FPS,
             kbps: int = VIDEO_TARGET_KBPS) -> list[bytes]:
    """``frames`` of :class:`CameraTrack`, encoded with aiortc's VP8 settings; one keyframe.

    Only the first frame is a keyframe, so the clip can restart there at any time. ``kbps`` is
    the encoder's target: at 640x360 the clip spends ~300 kbit/s of 500 at 15 fps and ~475 of
    500 at 30 fps.
    """
    camera = CameraTrack(width, height, fps)
    rate = str(kbps * 1000)
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.framerate = fractions.Fraction(fps)
    codec.time_base = fractions.Fraction(1, fps)
    codec.bit_rate = kbps * 1000
    codec.gop_size = frames + 1
    codec.qmin, codec.qmax = 2, 56
    codec.options = {"bufsize": rate, "cpu-used": "-6", "deadline": "realtime",
                     "lag-in-frames": "0", "minrate": rate, "maxrate": rate,
                     "noise-sensitivity": "4", "overshoot-pct": "15", "partitions": "0",
                     "static-thresh": "1", "undershoot-pct": "100"}
    clip: list[bytes] = []
    for i in range(frames):
        frame = camera.frame(i)
        frame.pts, frame.time_base = i, codec.time_base
        clip += [bytes(p) for p in codec.encode(frame)]
    clip += [bytes(p) for p in codec.encode(None)]
    assert len(clip) == frames and all(not is_vp8_keyframe(f) for f in clip[1:])
    return clip


def opus_clip(frames: int = AUDIO_FRAMES) -> list[bytes]:
    """One second of :class:`ToneAudioTrack` through aiortc's Opus encoder (20 ms packets)."""
    tone, encoder = ToneAudioTrack(), OpusEncoder()
    clip: list[bytes] = []
    index = 0
    while len(clip) < frames:
        payloads, _ = encoder.encode(tone.frame(index))
        clip += payloads
        index += 1
    return clip[:frames]


class Clips:
    """This process's clips, encoded once, when first published."""

    def __init__(self, video_size: str, fps: int = VIDEO_FPS,
                 kbps: int = VIDEO_TARGET_KBPS) -> None:
        self.width, self.height = (int(x) for x in video_size.split("x"))
        self.fps = fps
        self.kbps = kbps
        self._clips: dict[str, list[bytes]] = {}

    def track(self, kind: str) -> ClipTrack:
        if kind not in self._clips:
            self._clips[kind] = (vp8_clip(self.width, self.height, fps=self.fps,
                                          kbps=self.kbps) if kind == "video"
                                 else opus_clip())
        if kind == "video":
            return ClipTrack(kind, self._clips[kind], ticks=90000 // self.fps,
                             period=1 / self.fps)
        return ClipTrack(kind, self._clips[kind], ticks=960, period=0.02)


class ClipTrack(MediaStreamTrack):
    """Plays a pre-encoded clip in a loop, in real time; a keyframe request restarts the clip.

    A publisher that encodes nothing: its sender packs these packets as they are (see
    :func:`send_pre_encoded`), so a dozen participants fit on two cores next to the server.
    """

    def __init__(self, kind: str, clip: list[bytes], *, ticks: int, period: float) -> None:
        super().__init__()
        self.kind = kind
        self._clip = clip
        self._ticks = ticks
        self._period = period
        self._position = 0
        self._sent = 0
        self._start: float | None = None

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            delay = self._start + self._sent * self._period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        packet: av.Packet[Any] = av.Packet(self._clip[self._position])
        packet.pts = self._sent * self._ticks
        self._position = (self._position + 1) % len(self._clip)
        self._sent += 1
        return packet

    def request_keyframe(self) -> None:
        if self.kind == "video":
            self._position = 0


def send_pre_encoded() -> None:
    """Senders of this process pack what their track gives them instead of encoding it."""
    rtcrtpsender.get_encoder = PassthroughPacker  # type: ignore[attr-defined]


@dataclass
class LegStats:
    """What one peer received from one publisher's track of one kind."""

    frames: int = 0
    errors: int = 0
    first_at: float | None = None

    def dump(self) -> dict[str, Any]:
        return {"frames": self.frames, "errors": self.errors, "first_at": self.first_at}

    def arrived(self) -> None:
        self.frames += 1
        if self.first_at is None:
            self.first_at = time.monotonic()


class DecodeFailures(logging.Handler):
    """Counts aiortc's "failed to decode" warnings in this process."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "failed to decode" in record.getMessage():
            self.count += 1


def count_without_decoding(kinds: Iterable[str]) -> None:
    """Receivers of this process hand over encoded frames of ``kinds`` instead of decoding them."""
    original = rtcrtpreceiver.get_decoder
    names = {{"video": "vp8", "audio": "opus"}[k] for k in kinds}

    def get_decoder(codec: RTCRtpCodecParameters) -> Any:
        return PassthroughDecoder(codec) if codec.name.lower() in names else original(codec)

    rtcrtpreceiver.get_decoder = get_decoder  # type: ignore[attr-defined]


connections_lost = 0
"""Peer connections of this process that ended without being closed by the benchmark."""


class Peer:
    """One participant's device: publishes clips, answers offers, counts what arrives.

    ``receive`` is ``"decode"`` (aiortc's whole receive path: jitter buffer, NACK, decoder;
    video frames are decoded and their counter read) or ``"count"`` (RTP packets are counted
    as they arrive, a frame per marker bit, with nothing reassembled or decoded).
    """

    def __init__(self, pid: str, port: int, clips: Clips, *,
                 publish: Iterable[str] = (), therapist: bool = False,
                 receive: str = "decode") -> None:
        self.pid = pid
        self.port = port
        self.therapist = therapist
        self.receive = receive
        self.pc = peer_connection()
        self.local = {kind: clips.track(kind) for kind in publish}
        self.legs: dict[str, LegStats] = {}
        self.joined_at = 0.0
        self._publisher_of_mid: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writer: asyncio.StreamWriter | None = None
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)
        self._closing = False

    async def join(self) -> None:
        reader, self._writer = await asyncio.open_connection(HOST, self.port)
        self.joined_at = time.monotonic()
        write_line(self._writer, {"type": "join", "pid": self.pid, "therapist": self.therapist,
                                  "publish": sorted(self.local)})
        self._spawn(self._signaling(reader))

    def first_frames(self, kind: str = "video") -> list[float]:
        """When the first frame of ``kind`` from each publisher arrived, in order."""
        return sorted(s.first_at for key, s in self.legs.items()
                      if key.endswith("/" + kind) and s.first_at is not None)

    async def close(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()
        for track in self.local.values():
            track.stop()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _signaling(self, reader: asyncio.StreamReader) -> None:
        assert self._writer is not None
        while (msg := await read_line(reader)) is not None:
            if msg["type"] != "offer":
                continue
            tracks = msg["tracks"]
            self._publisher_of_mid.update({t["mid"]: t["publisher"] for t in tracks})
            own = {t["mid"]: t["kind"] for t in tracks if t["publisher"] == self.pid}
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=msg["sdp"], type="offer"))
            for transceiver in self.pc.getTransceivers():
                kind = own.get(transceiver.mid or "")
                if kind in self.local:
                    transceiver.direction = "sendonly"
                    if transceiver.sender.track is None:
                        track = self.local[kind]
                        transceiver.sender.replaceTrack(track)
                        transceiver.sender._send_keyframe = track.request_keyframe
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            write_line(self._writer, {"type": "answer",
                                      "sdp": check_loopback(self.pc.localDescription.sdp)})

    def _on_state(self) -> None:
        global connections_lost
        if self.pc.connectionState in ("failed", "closed") and not self._closing:
            # Not closed by us: ICE consent expired (RFC 7675) or the server closed it.
            self._closing = True
            connections_lost += 1

    def _on_track(self, track: MediaStreamTrack) -> None:
        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
        publisher = self._publisher_of_mid.get(transceiver.mid or "", "?")
        stats = self.legs.setdefault(f"{publisher}/{track.kind}", LegStats())
        if self.receive == "count":
            self._count_packets(transceiver.receiver, track.kind, stats)
        else:
            self._spawn(self._consume(track, stats))

    @staticmethod
    def _count_packets(receiver: Any, kind: str, stats: LegStats) -> None:
        codecs: dict[int, RTCRtpCodecParameters] = receiver._RTCRtpReceiver__codecs

        async def count(packet: RtpPacket, arrival_time_ms: int) -> None:
            codec = codecs.get(packet.payload_type)
            if codec is not None and codec.name != "rtx" and (kind == "audio" or packet.marker):
                stats.arrived()

        receiver._handle_rtp_packet = count

    async def _consume(self, track: MediaStreamTrack, stats: LegStats) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame) and read_counter(frame) is None:
                    stats.errors += 1
                    continue
                stats.arrived()


async def peers_main(config: dict[str, Any]) -> None:
    loopback_only()
    send_pre_encoded()
    count_without_decoding({"audio", "video"} - set(config.get("decode", ("video",))))
    receive = str(config.get("receive", "decode"))
    failures = DecodeFailures()
    logging.getLogger("aiortc.rtcrtpreceiver").addHandler(failures)
    clips = Clips(str(config.get("video_size", "320x240")), fps=int(config.get("fps", VIDEO_FPS)),
                  kbps=int(config.get("kbps", VIDEO_TARGET_KBPS)))
    port = int(config["port"])
    peers: dict[str, Peer] = {}

    async def timed_joins(pid: str, repeats: int, tiles: int, wait_s: float, pause: float,
                          publish: list[str]) -> list[dict[str, float | None]]:
        """Join ``repeats`` times: seconds to the first remote video frame and to ``tiles``."""
        results: list[dict[str, float | None]] = []
        for i in range(repeats):
            peer = Peer(f"{pid}-{i}", port, clips, publish=publish, receive=receive)
            await peer.join()
            await poll(lambda p=peer: len(p.first_frames()) >= tiles, wait_s, 0.01)  # type: ignore[misc]
            firsts = peer.first_frames()
            results.append({
                "first": firsts[0] - peer.joined_at if firsts else None,
                "all": firsts[tiles - 1] - peer.joined_at if len(firsts) >= tiles else None})
            await peer.close()
            await asyncio.sleep(pause * (0.5 + random.random()))
        return results

    async def handle(cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "add":
            for spec in args["peers"]:
                peer = Peer(spec["pid"], port, clips, publish=spec.get("publish", ()),
                            therapist=bool(spec.get("therapist")), receive=receive)
                peers[peer.pid] = peer
                await peer.join()
            return None
        if cmd == "remove":
            pids = args.get("pids") or list(peers)
            await asyncio.gather(*(peers.pop(pid).close() for pid in pids if pid in peers))
            return None
        if cmd == "stats":
            return {"t": time.monotonic(), "cpu": cpu_seconds(), "lost": connections_lost,
                    "decode_failures": failures.count,
                    "peers": {pid: {key: s.dump() for key, s in p.legs.items()}
                              for pid, p in peers.items()}}
        if cmd == "timed_joins":
            return await timed_joins(args["pid"], int(args["repeats"]), int(args["tiles"]),
                                     float(args["wait_s"]), float(args["pause"]),
                                     list(args.get("publish", ("audio", "video"))))
        raise ValueError(f"unknown command {cmd!r}")

    try:
        await serve_commands(handle)
    finally:
        await asyncio.gather(*(p.close() for p in peers.values()), return_exceptions=True)


# --- driver side -------------------------------------------------------------------------------

SCRIPT = Path(__file__).resolve()


@dataclass(frozen=True)
class Variant:
    """How a server child runs: its event loop and which vio it imports."""

    label: str
    uvloop: bool = False
    pythonpath: str | None = None
    """A directory holding another ``vio`` package (e.g. an older commit's) to run instead."""


def variants(loops: str, baseline: str | None) -> list[Variant]:
    """``asyncio,uvloop`` and an optional baseline directory, as server variants."""
    found: list[Variant] = []
    for loop in (x.strip() for x in loops.split(",") if x.strip()):
        if loop not in ("asyncio", "uvloop"):
            raise SystemExit(f"unknown event loop {loop!r}: asyncio or uvloop")
        found.append(Variant(loop, loop == "uvloop"))
        if baseline is not None:
            if not (Path(baseline) / "vio" / "media").is_dir():
                raise SystemExit(f"{baseline} holds no vio package")
            found.append(Variant(f"{loop} baseline", loop == "uvloop", str(Path(baseline))))
    return found


async def start_server(backend: str, *, name: str, variant: Variant = Variant("asyncio"),
                       **config: Any) -> tuple[Child, int]:
    child = await Child.start(SCRIPT, "server", {"backend": backend, "name": name,
                                                 "uvloop": variant.uvloop, **config},
                              name=name, pythonpath=variant.pythonpath)
    port = int(await child.call("port"))
    if variant.pythonpath is not None:
        imported = await child.call("vio")
        if not imported.startswith(variant.pythonpath):
            raise ChildFailed(f"{name} imported {imported}, not the baseline's vio")
    return child, port


async def start_peers(port: int, *, name: str, receive: str = "decode",
                      video_size: str = "320x240", **config: Any) -> Child:
    """A peers child: ``receive`` is ``"decode"`` (video decoded) or ``"count"`` (RTP level)."""
    return await Child.start(SCRIPT, "peers", {"port": port, "receive": receive,
                                               "video_size": video_size, "name": name,
                                               **config}, name=name)


@dataclass
class Window:
    """Server CPU and per-leg frame counts between two marks."""

    seconds: float
    cpu: float
    packets: int
    bytes: int
    fps: dict[tuple[str, str], float] = field(default_factory=dict)
    errors: int = 0
    decode_failures: int = 0
    forwarded: dict[str, list[str]] = field(default_factory=dict)
    peers_cpu: float = 0.0
    """CPU seconds of all the peers children together (the load generators)."""

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu / self.seconds

    @property
    def peers_cpu_percent(self) -> float:
        return 100 * self.peers_cpu / self.seconds


async def measure(server: Child, workers: Sequence[Child], seconds: float) -> Window:
    """Mark the server and every peers child, wait ``seconds``, mark again."""
    before = await asyncio.gather(server.call("mark"), *(w.call("stats") for w in workers))
    await asyncio.sleep(seconds)
    after = await asyncio.gather(server.call("mark"), *(w.call("stats") for w in workers))
    s0, s1 = before[0], after[0]
    window = Window(seconds=s1["t"] - s0["t"], cpu=s1["cpu"] - s0["cpu"],
                    packets=s1["packets"] - s0["packets"], bytes=s1["bytes"] - s0["bytes"],
                    forwarded=s1["forwarded"])
    for w0, w1 in zip(before[1:], after[1:], strict=True):
        elapsed = w1["t"] - w0["t"]
        window.peers_cpu += w1["cpu"] - w0["cpu"]
        window.decode_failures += w1["decode_failures"] - w0["decode_failures"]
        for pid, legs in w1["peers"].items():
            for key, leg in legs.items():
                old = w0["peers"].get(pid, {}).get(key, {"frames": 0, "errors": 0})
                window.fps[(pid, key)] = (leg["frames"] - old["frames"]) / elapsed
                window.errors += leg["errors"] - old["errors"]
    return window


async def stats(workers: Sequence[Child]) -> dict[str, dict[str, dict[str, Any]]]:
    """Every peer's legs, across ``workers``."""
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for reply in await asyncio.gather(*(w.call("stats") for w in workers)):
        merged.update(reply["peers"])
    return merged


async def close_all(children: Iterable[Child | None]) -> None:
    await asyncio.gather(*(c.close() for c in children if c is not None),
                         return_exceptions=True)


def child_entry(roles: dict[str, Callable[[dict[str, Any]], Awaitable[None]]]) -> bool:
    """If this process was started as a child, run its role and return True."""
    if len(sys.argv) < 2 or sys.argv[1] != "--child":
        return False
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=sorted(roles))
    parser.add_argument("config")
    args = parser.parse_args()
    run_child(roles[args.child], json.loads(args.config))
    return True


if __name__ == "__main__" and not child_entry({"server": server_main, "peers": peers_main}):
    raise SystemExit("bench/harness.py is started by the benchmark scripts, not by hand")
