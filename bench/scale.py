"""Scale-out: how many rooms of N this machine carries on one node process and on two.

For each W (``--nodes``, default 1 and 2, in the same invocation) the script starts W node
processes of the real server on PostgreSQL and Redis: W ``vio serve`` processes sharing one
port, each also on a ``--node-port`` of its own (or, with ``--launch workers``, one
``vio serve --workers W``). Then it adds rooms one at a time, R = 1, 2, ... up to
``--max-rooms``. Each room is a live group session of N participants (one therapist, N - 1
patients, ``--participants``), seeded in a database of the run's own. After each room is
added, every leg of every room is measured over a window (``--seconds``): the frames its
receiver got over the frames its publisher sent. R rooms are carried when every leg got at
least 97 % of its publisher's frames; the first R that is not carried ends that W.

Participants are aiortc peers, one child process per room, speaking the real protocol: a room
ticket on the WebSocket ``/ws/sessions/{id}`` of the shared port (the kernel spreads the
connections over the nodes; one that lands on a node without the room is relayed to the owner
over Redis), and WebRTC straight to the node that owns the room. Each publishes at the default
caps without encoding anything: a pre-encoded 640x360 15 fps VP8 clip at ~300 kbit/s
(``harness.CameraTrack``) and a tone in 20 ms Opus packets. Receivers count frames at the RTP
level (a frame per marker bit; nothing reassembled or decoded) to keep N x R peers light. Video
is forwarded selectively (``VIO_MAX_VIDEO_FORWARDED``, the server's default 6): a receiver's
expected video legs are the therapist's plus that many others', and only those are measured
(in a room of 8 the therapist gets 6 of the 7 videos: its 6 best legs count).

The participants run on the same machine as the nodes and compete with them for its cores, so
the table also gives the participants' CPU, everything else's, and where UDP datagrams were
dropped for full receive buffers. CPU of a process is read from ``/proc/<pid>/stat`` (all
threads, user + system). Every ICE candidate is 127.0.0.1 and no STUN server is used, in every
process.

    .venv/bin/python bench/scale.py            # N = 8, W = 1 and 2, up to 6 rooms, 10 s windows
    .venv/bin/python bench/scale.py --quick    # N = 4, up to 2 rooms, 5 s; under 2 minutes
    .venv/bin/python bench/scale.py --smoke    # 1 room of 2, 3 s (tests)

Needs PostgreSQL (``--postgres``, trust auth; a fresh database per run, dropped at the end)
and Redis (``--redis``; keys under a prefix of the run's own, deleted at the end), both on
127.0.0.1. Node processes are stopped on exit, on Ctrl-C, SIGTERM and failure, and get
SIGTERM from the kernel if this process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import harness as h

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent

CARRIED_SHARE = 0.97
"""A room count is carried when every leg got at least this share of its publisher's frames."""
NODE_START_TIMEOUT_S = 60.0
"""From starting the node processes to every node's record in Redis and a healthy port."""
NODE_STOP_TIMEOUT_S = 30.0
"""SIGTERM to exit; after that the node processes' group is killed."""
JOIN_TIMEOUT_S = 20.0
"""One participant: from opening the WebSocket to its ``welcome``."""
ARRIVAL_TIMEOUT_S = 60.0
"""After a room is added: until every expected leg of every room has carried a frame."""
ARRIVAL_POLL_S = 0.5
CLOSE_TIMEOUT_S = 5.0
"""A participant's ``leave``, WebSocket close and peer connection close, each."""
KEEPALIVE_S = 15.0
"""Participants send the protocol's ``ping`` this often (the server drops 45 s of silence)."""
SERVICE_TIMEOUT_S = 10.0
"""Reaching PostgreSQL or Redis, and creating or dropping the database."""
SEED_TIMEOUT_S = 120.0
"""Migrating the new database and seeding its groups, rosters and sessions."""
HTTP_TIMEOUT_S = 2.0
CHILD_SLACK_S = 300.0
"""A room child lives at most the run's budget plus this (see ``harness.run_child``)."""
OPEN_TIMEOUT_S = 10.0
"""Opening one WebSocket, the HTTP upgrade included."""
PARTICIPANT_RCVBUF_BYTES = 4 << 20
"""Receive buffer of each participant's UDP socket (aioice's is 256 KiB; the kernel caps it at
``net.core.rmem_max``): a participant process waiting for the CPU on this shared machine then
does not drop what the nodes delivered, as a browser on its own machine would not."""

DEFAULT_POSTGRES = os.environ.get("VIO_BENCH_POSTGRES_URL",
                                  "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
DEFAULT_REDIS = os.environ.get("VIO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass(frozen=True)
class Plan:
    participants: int
    max_rooms: int
    window_s: float
    warmup_s: float


FULL = Plan(participants=8, max_rooms=6, window_s=10.0, warmup_s=2.0)
QUICK = Plan(participants=4, max_rooms=2, window_s=5.0, warmup_s=1.0)
SMOKE = Plan(participants=2, max_rooms=1, window_s=3.0, warmup_s=0.5)


def default_caps() -> tuple[str, int]:
    """The server's default publish caps and selective-video setting: (``WxH``, videos)."""
    from vio.settings import Settings

    return (f"{Settings.publish_width}x{Settings.publish_height}",
            int(Settings.max_video_forwarded))


# --- the room child: N participants over the real protocol ------------------------------------


@dataclass
class Leg:
    """What one receiver got from one publisher's track, counted at the RTP level."""

    frames: int = 0
    packets: int = 0


class Participant:
    """One participant: a WebSocket with a room ticket, a peer connection, two clip tracks."""

    def __init__(self, url: str, clips: dict[str, list[bytes]], *, therapist: bool) -> None:
        from vio.client import SignalingClient

        self.therapist = therapist
        self.pid: str | None = None
        self.refusal: str | None = None
        self.lost = False
        self.errors: list[str] = []
        """Offers that could not be answered (an ICE candidate off loopback among them)."""
        self.legs: dict[str, Leg] = {}
        self.local: dict[str, h.ClipTrack] = {
            "video": h.ClipTrack("video", clips["video"], ticks=90000 // h.VIDEO_FPS,
                                 period=1 / h.VIDEO_FPS),
            "audio": h.ClipTrack("audio", clips["audio"], ticks=960, period=0.02)}
        self.ws = SignalingClient(url, open_timeout=OPEN_TIMEOUT_S, close_timeout=CLOSE_TIMEOUT_S,
                                  ping_interval=None, max_size=1 << 22)
        self.pc = h.peer_connection()
        self._mids: dict[str, tuple[str, str]] = {}
        self._welcomed = asyncio.Event()
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    async def join(self) -> str:
        await self.ws.connect()
        self._spawn(self._read())
        self._spawn(self._keepalive())
        await self.ws.send(type="join", v=1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._welcomed.wait(), JOIN_TIMEOUT_S)
        if self.pid is None:
            raise RuntimeError(f"no welcome within {JOIN_TIMEOUT_S:.0f} s (refusal: "
                               f"{self.refusal}, close code {self.ws.close_code})")
        return self.pid

    def dump(self) -> dict[str, Any]:
        return {"pid": self.pid, "therapist": self.therapist,
                "sent": {kind: track._sent for kind, track in self.local.items()},
                "legs": {key: [leg.frames, leg.packets] for key, leg in self.legs.items()}}

    async def close(self) -> None:
        self._closing = True
        if self.ws.open:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.send(type="leave"), CLOSE_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), CLOSE_TIMEOUT_S)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), CLOSE_TIMEOUT_S)
        for track in self.local.values():
            track.stop()

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            with contextlib.suppress(Exception):
                await self.ws.send(type="ping")

    async def _read(self) -> None:
        async for msg in self.ws.incoming():
            kind = msg.get("type")
            if kind == "welcome":
                self.pid = msg["you"]["id"]
                self._welcomed.set()
            elif kind in ("refused", "waiting"):
                self.refusal = str(msg.get("code", kind))
                self._welcomed.set()
            elif kind == "offer":
                try:
                    await self._answer(msg["sdp"], msg["tracks"])
                except Exception as error:
                    self.errors.append(f"{type(error).__name__}: {error}")

    async def _answer(self, sdp: str, tracks: list[dict[str, str]]) -> None:
        from aiortc import RTCSessionDescription

        self._mids.update({t["mid"]: (t["participant_id"], t["kind"]) for t in tracks})
        await self.pc.setRemoteDescription(
            RTCSessionDescription(sdp=h.check_loopback(sdp), type="offer"))
        for transceiver in self.pc.getTransceivers():
            owner, kind = self._mids.get(transceiver.mid or "", ("", ""))
            if owner == self.pid and kind in self.local:
                transceiver.direction = "sendonly"
                if transceiver.sender.track is None:
                    track = self.local[kind]
                    transceiver.sender.replaceTrack(track)
                    transceiver.sender._send_keyframe = track.request_keyframe  # type: ignore[method-assign]
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.ws.send(type="answer", sdp=h.check_loopback(self.pc.localDescription.sdp))

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed") and not self._closing:
            self.lost = True  # ICE consent expired (RFC 7675), or the node closed it

    def _on_track(self, track: Any) -> None:
        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
        owner, _ = self._mids.get(transceiver.mid or "", ("?", track.kind))
        leg = self.legs.setdefault(f"{owner}/{track.kind}", Leg())
        receiver = transceiver.receiver
        codecs = receiver._RTCRtpReceiver__codecs
        audio = track.kind == "audio"

        async def count(packet: Any, arrival_time_ms: int) -> None:
            codec = codecs.get(packet.payload_type)
            if codec is not None and codec.name != "rtx":
                leg.packets += 1
                if audio or packet.marker:
                    leg.frames += 1

        receiver._handle_rtp_packet = count  # nothing reassembled, decoded, or NACKed


def load_clips(path: str) -> dict[str, list[bytes]]:
    data = json.loads(Path(path).read_text())
    return {kind: [base64.b64decode(f) for f in frames] for kind, frames in data.items()}


async def room_main(config: dict[str, Any]) -> None:
    """A room's participants: the therapist joins first, then each patient, one at a time."""
    import aioice.turn

    h.loopback_only()
    h.send_pre_encoded()
    aioice.turn.UDP_SOCKET_BUFFER_SIZE = PARTICIPANT_RCVBUF_BYTES  # read when sockets open
    clips = load_clips(config["clips"])
    url = config["url"]
    participants: list[Participant] = []

    async def handle(cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "join":
            for index, ticket in enumerate(config["tickets"]):
                participant = Participant(f"{url}?ticket={ticket}", clips, therapist=index == 0)
                participants.append(participant)
                await participant.join()
            return [p.pid for p in participants]
        if cmd == "stats":
            return {"t": time.monotonic(), "lost": sum(p.lost for p in participants),
                    "errors": [e for p in participants for e in p.errors],
                    "peers": [p.dump() for p in participants]}
        raise ValueError(f"unknown command {cmd!r}")

    try:
        await h.serve_commands(handle)
    finally:
        await asyncio.gather(*(p.close() for p in participants), return_exceptions=True)


# --- measuring (driver) ------------------------------------------------------------------------


TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` (all threads, user + system); 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])
    idle = values[3] + values[4]
    return (total - idle) / TICK, total / TICK


def udp_drops(pids: Iterable[int]) -> dict[int, int]:
    """Datagrams dropped by the kernel for a full receive buffer, per UDP socket (by inode)
    of the processes ``pids`` (``/proc/net/udp``, last column)."""
    inodes: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(int(target[8:-1]))
    drops: dict[int, int] = {}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 12 and int(fields[9]) in inodes:
                    drops[int(fields[9])] = int(fields[12])
    return drops


def dropped(before: dict[int, int], after: dict[int, int]) -> int:
    return sum(n - before.get(inode, 0) for inode, n in after.items())


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    return sorted(set(found))


def expected_video(n: int, therapist: bool, max_video_forwarded: int) -> int:
    """Videos one receiver is sent in a room of ``n`` with one therapist: the therapist's (if
    the receiver is someone else) and up to ``max_video_forwarded`` others'."""
    patients = n - 1 if therapist else n - 2
    return (0 if therapist else 1) + min(patients, max_video_forwarded)


def _share(got: int, sent: int) -> float:
    return got / sent if sent > 0 else 0.0


@dataclass(frozen=True)
class RoomWindow:
    shares: list[float]
    audio: list[float]
    video: list[float]
    publisher_fps: list[float]
    packets: int
    lost: int


def room_window(before: dict[str, Any], after: dict[str, Any],
                max_video_forwarded: int) -> RoomWindow:
    """Every expected leg's share of its publisher's frames between two snapshots of a room."""
    seconds = after["t"] - before["t"]
    old = {p["pid"]: p for p in before["peers"]}
    peers = after["peers"]
    sent = {(p["pid"], kind): n - old.get(p["pid"], {}).get("sent", {}).get(kind, 0)
            for p in peers for kind, n in p["sent"].items()}
    audio: list[float] = []
    video: list[float] = []
    packets = 0
    for p in peers:
        prev = old.get(p["pid"], {}).get("legs", {})

        def got(key: str, index: int, p: dict[str, Any] = p,
                prev: dict[str, Any] = prev) -> int:
            return int(p["legs"].get(key, [0, 0])[index] - prev.get(key, [0, 0])[index])

        packets += sum(got(key, 1) for key in p["legs"])
        others = [q["pid"] for q in peers if q["pid"] != p["pid"]]
        audio += [_share(got(f"{q}/audio", 0), sent[(q, "audio")]) for q in others]
        received = sorted((_share(got(f"{q}/video", 0), sent[(q, "video")]) for q in others),
                          reverse=True)
        video += received[:expected_video(len(peers), p["therapist"], max_video_forwarded)]
    return RoomWindow(shares=audio + video, audio=audio, video=video,
                      publisher_fps=[sent[(p["pid"], "video")] / seconds for p in peers],
                      packets=packets, lost=int(after["lost"]))


def all_arrived(snapshot: dict[str, Any], max_video_forwarded: int) -> bool:
    """Whether every expected leg of the room has carried at least one frame."""
    peers = snapshot["peers"]
    for p in peers:
        audio = sum(1 for k, (frames, _) in p["legs"].items() if k.endswith("/audio") and frames)
        video = sum(1 for k, (frames, _) in p["legs"].items() if k.endswith("/video") and frames)
        if audio < len(peers) - 1 or video < expected_video(len(peers), p["therapist"],
                                                            max_video_forwarded):
            return False
    return True


@dataclass(frozen=True)
class Row:
    w: int
    r: int
    rooms_per_node: list[int]
    legs: int
    shares: list[float]
    worst_audio: float
    worst_video: float
    """% of the publisher's frames on the worst audio leg, and the worst video leg."""
    publisher_fps_min: float
    node_cpu: list[float]
    """Per node process, % of one core."""
    clients_cpu: float
    """All room children together, % of one core."""
    machine_busy: float
    """The whole machine, % of all its cores."""
    others_cpu: float
    """Everything else on the machine (this driver, other people's processes), % of a core."""
    packets_per_s: float
    node_drops: int
    client_drops: int
    """Datagrams the kernel dropped for full receive buffers at the nodes' and at the
    participants' sockets."""
    lost: int
    arrived: bool
    note: str = ""

    @property
    def worst(self) -> float:
        return 100 * min(self.shares) if self.shares else 0.0

    @property
    def median(self) -> float:
        return 100 * h.median(self.shares) if self.shares else 0.0

    @property
    def carried(self) -> bool:
        return bool(self.shares) and min(self.shares) >= CARRIED_SHARE and not self.note

    @property
    def server_cpu(self) -> float:
        return sum(self.node_cpu)

    @property
    def per_leg(self) -> float:
        return self.server_cpu / self.legs if self.legs else float("nan")

    @property
    def us_per_packet(self) -> float:
        return (1e4 * self.server_cpu / self.packets_per_s if self.packets_per_s
                else float("nan"))


# --- node processes (driver) -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((h.HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the driver dies (Linux ``PR_SET_PDEATHSIG``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class Nodes:
    """W node processes of the real server, sharing one port, on one Redis prefix."""

    def __init__(self, count: int, launch: str, env: dict[str, str], directory: Path) -> None:
        self.count = count
        self.launch = launch
        self.env = env
        self.directory = directory
        self.port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []
        """The node processes themselves (with ``--workers`` > 1: the parent's children)."""

    @property
    def base(self) -> str:
        return f"http://{h.HOST}:{self.port}"

    def start(self) -> None:
        """Start the processes (from the event loop's thread: see ``_die_with_parent``)."""
        serve = [sys.executable, "-m", "vio.cli", "serve", "--host", h.HOST,
                 "--port", str(self.port)]
        commands = ([[*serve, "--workers", str(self.count)]] if self.launch == "workers" else
                    [[*serve, "--node-port", str(free_port())] for _ in range(self.count)])
        for index, command in enumerate(commands):
            log = (self.directory / f"node-w{self.count}-{index}.log").open("ab")
            with log:
                self.processes.append(subprocess.Popen(
                    command, cwd=self.directory, env=self.env, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent))

    async def ready(self, redis: Any, prefix: str) -> None:
        """Wait until every node has its record in Redis and the shared port answers."""
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a node process exited with {process.returncode}:\n"
                                       f"{self.logs()}")
            if self.launch == "workers" and self.count > 1:
                pids = children_of(self.processes[0].pid)
            else:
                pids = [p.pid for p in self.processes]
            records = [key async for key in redis.scan_iter(match=f"{prefix}:node:*")]
            registered = {node_pid(k.decode().split(":node:", 1)[1]) for k in records}
            if (len(pids) == self.count and registered == set(pids)
                    and await asyncio.to_thread(healthy, self.base)):
                self.pids = pids
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.count} node(s) not ready within "
                                   f"{NODE_START_TIMEOUT_S:.0f} s:\n{self.logs()}")
            await asyncio.sleep(0.2)

    def cpu(self) -> list[float]:
        return [process_cpu(pid) for pid in self.pids]

    async def stop(self) -> None:
        """SIGTERM (a node drains, then closes), then SIGKILL to the group if it hangs."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        await h.poll(lambda: all(p.poll() is not None for p in self.processes),
                     NODE_STOP_TIMEOUT_S, 0.1)
        self.kill()

    def kill(self) -> None:
        """Kill whatever is left of this run's node processes and their groups."""
        for process in self.processes:
            if process.poll() is None or any(alive(pid) for pid in self.pids):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)  # the group holds --workers' nodes
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(CLOSE_TIMEOUT_S)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
                         for p in sorted(self.directory.glob(f"node-w{self.count}-*.log")))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def node_pid(node_id: str) -> int:
    """The process id in a node id (``{host}-{pid}-{random}``)."""
    return int(node_id.rsplit("-", 2)[1])


def healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=HTTP_TIMEOUT_S) as response:
            return bool(response.status == 200)
    except OSError:
        return False


_running: list[Nodes] = []


@atexit.register
def _kill_leftovers() -> None:
    for nodes in _running:
        nodes.kill()


# --- services (driver) -------------------------------------------------------------------------


def loopback_url(url: str, what: str) -> str:
    host = urllib.parse.urlsplit(url).hostname
    if host not in (h.HOST, "localhost"):
        raise SystemExit(f"{what} must be on {h.HOST}, not {host}")
    return url


async def create_database(admin_url: str) -> str:
    """A fresh database next to ``admin_url``'s; its URL."""
    from sqlalchemy import text

    from vio.db import create_engine

    name = f"vio_bench_scale_{secrets.token_hex(6)}"
    admin = create_engine(admin_url)
    try:
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    return f"{admin_url.rpartition('/')[0]}/{name}"


async def drop_database(admin_url: str, url: str) -> None:
    from sqlalchemy import text

    from vio.db import create_engine

    name = url.rpartition("/")[2]
    admin = create_engine(admin_url)
    try:
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def delete_keys(redis: Any, prefix: str) -> None:
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await redis.delete(*keys)


def write_clips(directory: Path, video_size: str) -> Path:
    """The publishers' clips, encoded once for every room child."""
    width, height = (int(x) for x in video_size.split("x"))
    clips = {"video": h.vp8_clip(width, height), "audio": h.opus_clip()}
    path = directory / "clips.json"
    path.write_text(json.dumps({kind: [base64.b64encode(f).decode() for f in frames]
                                for kind, frames in clips.items()}))
    return path


# --- one W: add rooms until one is not carried ------------------------------------------------


@dataclass(frozen=True)
class Run:
    plan: Plan
    launch: str
    max_video_forwarded: int
    database_url: str
    redis_url: str
    clips: Path
    directory: Path
    child_deadline_s: float


def node_env(run: Run, prefix: str, port: int) -> dict[str, str]:
    """The nodes' environment: this checkout's vio, loopback only, no STUN, no other VIO_*."""
    from signaling import SECRET

    env = {k: v for k, v in os.environ.items() if not k.startswith("VIO_")}
    env.update({
        "PYTHONPATH": str(REPO), "VIO_DATABASE_URL": run.database_url,
        "VIO_REDIS_URL": run.redis_url, "VIO_REDIS_PREFIX": prefix, "VIO_SECRET_KEY": SECRET,
        "VIO_ICE_ANNOUNCE_ADDRESSES": h.HOST, "VIO_PUBLIC_BASE_URL": f"http://{h.HOST}:{port}",
        "VIO_MAX_VIDEO_FORWARDED": str(run.max_video_forwarded),
        "VIO_ROOM_CAPACITY": str(max(16, run.plan.participants))})
    return env


@dataclass(frozen=True)
class Mark:
    """Every room's counters, each node's and the room children's CPU seconds, the machine's."""

    rooms: list[Any]
    nodes: list[float]
    clients: float
    machine: tuple[float, float]
    node_drops: dict[int, int]
    client_drops: dict[int, int]
    t: float


async def mark(rooms: Sequence[h.Child], nodes: Nodes) -> Mark:
    replies = list(await asyncio.gather(*(room.call("stats") for room in rooms)))
    return Mark(rooms=replies, nodes=nodes.cpu(),
                clients=sum(process_cpu(room.proc.pid) for room in rooms),
                machine=machine_cpu(), node_drops=udp_drops(nodes.pids),
                client_drops=udp_drops(room.proc.pid for room in rooms), t=time.monotonic())


async def measure(w: int, rooms: Sequence[h.Child], nodes: Nodes, owners: list[int],
                  run: Run, arrived: bool, note: str) -> Row:
    await asyncio.sleep(run.plan.warmup_s)
    before = await mark(rooms, nodes)
    await asyncio.sleep(run.plan.window_s)
    after = await mark(rooms, nodes)
    seconds = after.t - before.t

    def percent(cpu_seconds: float) -> float:
        return 100 * cpu_seconds / seconds

    windows = [room_window(b, a, run.max_video_forwarded)
               for b, a in zip(before.rooms, after.rooms, strict=True)]
    shares = [s for win in windows for s in win.shares]
    node_cpu = [percent(b - a) for a, b in zip(before.nodes, after.nodes, strict=True)]
    clients_cpu = percent(after.clients - before.clients)
    busy, total = (a - b for a, b in zip(after.machine, before.machine, strict=True))
    errors = [e for room in after.rooms for e in room["errors"]]
    if any("off loopback" in e for e in errors):
        raise RuntimeError(f"a participant refused an offer: {errors[0]}")
    return Row(
        w=w, r=len(rooms), rooms_per_node=[owners.count(pid) for pid in nodes.pids],
        legs=len(shares), shares=shares,
        worst_audio=100 * min((x for win in windows for x in win.audio), default=0.0),
        worst_video=100 * min((x for win in windows for x in win.video), default=0.0),
        publisher_fps_min=min((f for win in windows for f in win.publisher_fps), default=0.0),
        node_cpu=node_cpu, clients_cpu=clients_cpu,
        machine_busy=100 * busy / max(total, 1e-9),
        others_cpu=max(0.0, percent(busy) - sum(node_cpu) - clients_cpu),
        packets_per_s=sum(win.packets for win in windows) / seconds,
        node_drops=dropped(before.node_drops, after.node_drops),
        client_drops=dropped(before.client_drops, after.client_drops),
        lost=sum(win.lost for win in windows), arrived=arrived,
        note=note or (f"answer failed: {errors[0]}" if errors else ""))


async def owners_of(redis: Any, prefix: str, session_ids: Iterable[int]) -> list[int]:
    """The process id of each room's owner, from its lease (0: none)."""
    owners = []
    for session_id in session_ids:
        owner = await redis.get(f"{prefix}:room:{session_id}")
        owners.append(node_pid(owner.decode()) if owner else 0)
    return owners


async def run_nodes(w: int, run: Run, rooms: list[dict[str, Any]], redis: Any) -> list[Row]:
    """Start W nodes, add rooms one at a time until one is not carried, stop everything."""
    prefix = f"vio-bench-scale-{secrets.token_hex(4)}-w{w}"
    nodes = Nodes(w, run.launch, {}, run.directory)
    nodes.env = node_env(run, prefix, nodes.port)
    children: list[h.Child] = []
    rows: list[Row] = []
    _running.append(nodes)
    try:
        nodes.start()
        await nodes.ready(redis, prefix)
        for spec in rooms[:run.plan.max_rooms]:
            note = ""
            child = await h.Child.start(SCRIPT, "room", {
                "name": f"room-w{w}-{len(children) + 1}", "clips": str(run.clips),
                "url": f"ws://{h.HOST}:{nodes.port}/ws/sessions/{spec['session_id']}",
                "tickets": [spec["therapist"], *spec["patients"]],
                "deadline_s": run.child_deadline_s},
                name=f"room-w{w}-{len(children) + 1}", pythonpath=str(REPO))
            children.append(child)
            try:
                await child.call("join", within=JOIN_TIMEOUT_S * (run.plan.participants + 1))
            except h.ChildFailed as failed:
                note = f"join failed: {failed}"
            arrived = False
            deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
            while not note and time.monotonic() < deadline:
                replies = await asyncio.gather(*(c.call("stats") for c in children))
                if all(all_arrived(reply, run.max_video_forwarded) for reply in replies):
                    arrived = True
                    break
                await asyncio.sleep(ARRIVAL_POLL_S)
            owners = await owners_of(redis, prefix, (r["session_id"] for r in
                                                     rooms[:len(children)]))
            row = await measure(w, children, nodes, owners, run, arrived, note)
            rows.append(row)
            print(f"  W={w} R={row.r}: worst leg {row.worst:.1f} %, nodes "
                  f"{' + '.join(f'{c:.0f}' for c in row.node_cpu)} % CPU, participants "
                  f"{row.clients_cpu:.0f} %, machine {row.machine_busy:.0f} % busy"
                  f"{'' if row.arrived else ', media did not reach every leg in time'}"
                  f"{', ' + row.note if row.note else ''}", file=sys.stderr, flush=True)
            if not row.carried:
                break
    finally:
        await h.close_all(children)
        await nodes.stop()
        _running.remove(nodes)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(delete_keys(redis, prefix), SERVICE_TIMEOUT_S)
    return rows


def carried(rows: Sequence[Row], w: int) -> int:
    """The largest R at which every leg got its share, at this W (0: not even one room)."""
    best = 0
    for row in rows:
        if row.w == w:
            if not row.carried:
                break
            best = row.r
    return best


# --- report ------------------------------------------------------------------------------------


def report(rows: list[Row], ws: Sequence[int], plan: Plan, run: Run, video_size: str,
           machine: str, started: float) -> None:
    print("# Scale-out: rooms of N participants on W node processes")
    print(f"machine: {machine}")
    launched = ("vio serve --workers W" if run.launch == "workers"
                else "W x vio serve --node-port P")
    print(f"commit: {h.git_head()}; date: {time.strftime('%Y-%m-%d %H:%M %Z')}; N = "
          f"{plan.participants} (1 therapist); up to {plan.max_rooms} rooms; window "
          f"{plan.window_s:g} s after {plan.warmup_s:g} s warm-up; nodes started as "
          f"{launched} on PostgreSQL + Redis")
    print(f"media: every participant publishes {video_size} {h.VIDEO_FPS} fps VP8 (~300 "
          "kbit/s, pre-encoded) and Opus 20 ms frames; video forwarded to each receiver from "
          f"the therapist + {run.max_video_forwarded} others; a leg's share = frames received "
          "/ frames its publisher sent in the window")
    print(f"note: the {plan.participants} x R participants run on this same machine "
          f"({os.cpu_count()} CPUs) and compete with the nodes for CPU (\"participants' CPU "
          "%\"; \"other CPU %\" is everything else that ran, in % of one core; \"machine busy "
          "%\" is of all cores): the rooms carried are a lower bound for the nodes alone\n")
    print(h.table(
        ["W", "R", "rooms per node", "legs", "worst leg %", "median leg %",
         "worst audio / video %", "publishers' fps min", "node CPU %", "server CPU %",
         "CPU % per leg", "CPU us per packet", "participants' CPU %", "machine busy %",
         "other CPU %", "UDP drops at nodes / participants", "connections lost",
         "carried"],
        [[r.w, r.r, " / ".join(str(n) for n in r.rooms_per_node), r.legs, r.worst, r.median,
          f"{r.worst_audio:.1f} / {r.worst_video:.1f}", r.publisher_fps_min,
          " / ".join(f"{c:.1f}" for c in r.node_cpu), r.server_cpu,
          r.per_leg, r.us_per_packet, r.clients_cpu, r.machine_busy, r.others_cpu,
          f"{r.node_drops} / {r.client_drops}", r.lost,
          "yes" if r.carried else ("no: " + r.note[:60] if r.note else "no")]
         for r in rows]))
    print()
    measured = {r.w for r in rows}
    for w in ws:
        if w not in measured:
            print(f"W={w}: not measured (the nodes failed; see above)")
            continue
        best = carried(rows, w)
        tried = max(r.r for r in rows if r.w == w)
        limit = " (the most tried, --max-rooms: at least)" if best == tried else ""
        print(f"W={w}: carried {best} room(s) of {plan.participants}{limit}")
    if len(ws) > 1:
        base = carried(rows, ws[0])
        for w in ws[1:]:
            ratio = f"{carried(rows, w) / base:.2f}" if base and w in measured else "-"
            print(f"ratio rooms carried W={w} / W={ws[0]}: {ratio}")
    for r in rows:
        print(f"scale W={r.w} R={r.r}: worst leg {r.worst:.1f} %, server cpu "
              f"{r.server_cpu:.1f} %, per leg {r.per_leg:.3f} %, participants cpu "
              f"{r.clients_cpu:.1f} %")
    print(f"\nfinished in {time.monotonic() - started:.0f} s")


# --- main --------------------------------------------------------------------------------------


async def check_redis(url: str) -> Any:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=SERVICE_TIMEOUT_S,
                                     socket_timeout=SERVICE_TIMEOUT_S)
    try:
        await client.ping()
    except Exception as error:
        await client.aclose()
        raise SystemExit(f"Redis at {url} is not reachable: {error}") from None
    return client


async def main() -> int:
    video_size, max_video_forwarded = default_caps()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="N = 4, up to 2 rooms, 5 s windows (under 2 minutes)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 room of 2, 3 s windows (tests); wins over --quick")
    parser.add_argument("--participants", type=int, help="N, people per room (default 8)")
    parser.add_argument("--max-rooms", type=int, help="most rooms tried per W (default 6)")
    parser.add_argument("--seconds", type=float, help="measuring window (default 10)")
    parser.add_argument("--nodes", default="1,2",
                        help="node process counts W to compare, in order (default 1,2)")
    parser.add_argument("--launch", choices=["separate", "workers"], default="separate",
                        help="separate: W `vio serve` processes sharing the port, each also "
                             "on a --node-port of its own (default); workers: one "
                             "`vio serve --workers W`")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES,
                        help="an existing database's URL on 127.0.0.1; the run creates and "
                             "drops its own next to it (env VIO_BENCH_POSTGRES_URL)")
    parser.add_argument("--redis", default=DEFAULT_REDIS,
                        help="Redis on 127.0.0.1 (env VIO_BENCH_REDIS_URL)")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    plan = replace(plan, participants=args.participants or plan.participants,
                   max_rooms=args.max_rooms or plan.max_rooms,
                   window_s=args.seconds or plan.window_s)
    if not 2 <= plan.participants <= 100 or plan.max_rooms < 1 or plan.window_s <= 0:
        parser.error("a room needs 2 to 100 participants, at least 1 room and a window > 0")
    try:
        ws = [int(x) for x in args.nodes.split(",") if x.strip()]
    except ValueError:
        parser.error("--nodes takes counts such as 1,2")
    if not ws or min(ws) < 1:
        parser.error("--nodes takes counts such as 1,2")
    admin_url = loopback_url(args.postgres, "--postgres")
    redis_url = loopback_url(args.redis, "--redis")

    import signaling

    started = time.monotonic()
    machine = h.machine()
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    redis = await check_redis(redis_url)
    rows: list[Row] = []
    database_url = ""
    failed = ""
    try:
        with tempfile.TemporaryDirectory(prefix="vio-bench-scale-") as tmp:
            try:
                database_url = await asyncio.wait_for(create_database(admin_url),
                                                      SERVICE_TIMEOUT_S)
            except (OSError, TimeoutError) as error:
                raise SystemExit(f"PostgreSQL at {admin_url} is not reachable: "
                                 f"{error or type(error).__name__}") from None
            rooms = await asyncio.wait_for(
                signaling.seed(database_url, len(ws) * plan.max_rooms, plan.participants),
                SEED_TIMEOUT_S)
            per_room_s = (JOIN_TIMEOUT_S * (plan.participants + 1) + ARRIVAL_TIMEOUT_S
                          + plan.warmup_s + plan.window_s)
            run = Run(plan=plan, launch=args.launch, max_video_forwarded=max_video_forwarded,
                      database_url=database_url, redis_url=redis_url,
                      clips=write_clips(Path(tmp), video_size), directory=Path(tmp),
                      child_deadline_s=plan.max_rooms * per_room_s + CHILD_SLACK_S)
            for i, w in enumerate(ws):
                share = rooms[i * plan.max_rooms:(i + 1) * plan.max_rooms]
                try:
                    rows += await run_nodes(w, run, share, redis)
                except (RuntimeError, h.ChildFailed) as error:
                    failed = f"W={w} failed: {error}"
                    print(failed, file=sys.stderr)
                    break
    finally:
        for nodes in list(_running):
            nodes.kill()
        if database_url:
            try:
                await asyncio.wait_for(drop_database(admin_url, database_url),
                                       SERVICE_TIMEOUT_S)
            except Exception as error:
                print(f"could not drop the database {database_url}: {error!r}", file=sys.stderr)
        await redis.aclose()
    report(rows, ws, plan, run, video_size, machine, started)
    return 1 if failed or not rows else 0


if __name__ == "__main__" and not h.child_entry({"room": room_main}):
    try:
        raise SystemExit(asyncio.run(main()))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM: cleaned up already
        print("bench/scale.py: interrupted; node processes stopped, database dropped",
              file=sys.stderr)
        raise SystemExit(130) from None
