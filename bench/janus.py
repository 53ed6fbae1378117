"""Janus VideoRoom as a third backend of ``bench/forwarding.py``, inside a network namespace.

Janus 1.1 (Debian's ``janus`` package, native C) needs a non-loopback interface for its ICE
candidates, so this module builds a throwaway network namespace: ``lo`` and a veth pair whose
two ends are both inside it, one with a made-up address (:data:`ADDRESS`, 10.77.0.1/24),
connected to nothing, so no packet can leave it. Janus, its signaling adapter, the publisher
and the subscribers all run in there (``ip netns exec``); the driver stays outside and talks to
them over their stdin/stdout, as with the other backends. Leaving :class:`Namespace` (also on
an error or Ctrl-C) stops every process in the namespace and deletes it, which removes its
interfaces.

Children (``python bench/janus.py --child <role> <json>``, see ``bench/harness.py``):

* ``server``: writes a temporary Janus configuration (only the VideoRoom plugin and the
  WebSocket transport, ICE on the namespace's interface only, no STUN), starts Janus with
  ``-F`` on it, and drives it over the WebSocket API with :class:`JanusClient`. It speaks the
  harness's JSON-lines signaling to the peers: a subscriber's ``join`` becomes a VideoRoom
  subscription to the current publisher (Janus offers, the peer answers, ``start``); a
  publisher's ``publish`` carries its offer and gets Janus's answer. ``mark`` reports Janus's
  CPU time (every thread, from ``/proc/<pid>/task/*/schedstat``) and the RTP packets and bytes
  Janus sent to the subscribers (Admin API ``handle_info``, ``out_stats``). The adapter's own
  CPU is not counted: it only signals.
* ``peers``: the harness's subscribers, with the namespace's address where the others use
  127.0.0.1 (candidates, SDP checks, signaling).
* ``publisher``: an aiortc publisher that makes the offer (VideoRoom publishers must), sending
  the same pre-encoded clips as the harness's peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import harness as h

ADDRESS = "10.77.0.1"
PREFIX = 24
INTERFACE = "vioj0"
PEER_END = "vioj1"
"""The other end of :data:`INTERFACE`'s veth pair, also inside the namespace (this kernel may
have no dummy interfaces); it has no address, so traffic to :data:`ADDRESS` stays local."""
WS_PORT = 8188
ADMIN_PORT = 7188
ADMIN_SECRET = "vio-bench"
ROOM = 1234
JANUS_FOLDERS = Path("/usr/lib/x86_64-linux-gnu/janus")
START_TIMEOUT_S = 15.0
"""How long Janus may take to open its WebSocket port."""
REQUEST_TIMEOUT_S = 20.0
"""How long one Janus API request may take to be answered."""
PUBLISHER_TIMEOUT_S = 20.0
"""How long a subscriber waits for a publisher to be in the room, and a publisher for its
connection to Janus to be up."""
STOP_TIMEOUT_S = 5.0
"""How long a process gets after SIGTERM before SIGKILL."""
POLL_S = 0.05

SCRIPT = Path(__file__).resolve()
log = logging.getLogger("bench.janus")


# --- availability and the namespace -----------------------------------------------------------


def unavailable() -> str | None:
    """Why the Janus backend cannot run here, or ``None`` when it can."""
    if shutil.which("janus") is None:
        return "janus is not installed (Debian package `janus`; `make bench` installs it)"
    if not (JANUS_FOLDERS / "plugins" / "libjanus_videoroom.so").exists():
        return f"Janus's VideoRoom plugin is not in {JANUS_FOLDERS / 'plugins'}"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip is not installed (iproute2)"
    try:
        import websockets  # noqa: F401
    except ImportError:
        return "the Python package `websockets` is not installed"
    probe = f"viobenchprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*args: str) -> None:
    result = subprocess.run(list(args), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")


class Namespace:
    """A network namespace: ``lo`` and a veth pair, both ends inside, one at :data:`ADDRESS`."""

    def __init__(self) -> None:
        self.name = f"viobench{os.getpid()}"
        self._made = False

    def __enter__(self) -> Namespace:
        _run("ip", "netns", "add", self.name)
        self._made = True
        try:
            _run("ip", "-n", self.name, "link", "set", "lo", "up")
            # Both ends of the pair are created in the namespace and stay there.
            _run("ip", "-n", self.name, "link", "add", INTERFACE, "type", "veth",
                 "peer", "name", PEER_END)
            _run("ip", "-n", self.name, "addr", "add", f"{ADDRESS}/{PREFIX}", "dev", INTERFACE)
            _run("ip", "-n", self.name, "link", "set", INTERFACE, "up")
            _run("ip", "-n", self.name, "link", "set", PEER_END, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def exec_args(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def pids(self) -> list[int]:
        result = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                                text=True)
        return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []

    def close(self) -> None:
        """Stop every process in the namespace (by pid), then delete it. Idempotent."""
        if not self._made:
            return
        pids = self.pids()
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while pids and time.monotonic() < deadline:
            time.sleep(POLL_S)
            pids = self.pids()
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        self._made = False

    async def start_child(self, role: str, config: dict[str, Any], *, name: str) -> h.Child:
        """``bench/janus.py --child role config`` inside the namespace, driven like any child."""
        proc = await asyncio.create_subprocess_exec(
            *self.exec_args([sys.executable, str(SCRIPT), "--child", role,
                             json.dumps({"name": name, **config})]),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=h.LINE_LIMIT)
        return h.Child(name, proc)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# --- Janus's configuration ---------------------------------------------------------------------

UNUSED_PLUGINS = ("audiobridge", "duktape", "echotest", "lua", "nosip", "recordplay", "sip",
                  "streaming", "textroom", "videocall", "voicemail")
UNUSED_TRANSPORTS = ("http", "mqtt", "nanomsg", "pfunix", "rabbitmq")


def write_config(folder: Path) -> None:
    """Janus's configuration in ``folder``: VideoRoom, WebSockets, ICE on :data:`INTERFACE`."""

    def libs(kind: str, names: Sequence[str]) -> str:
        return ",".join(f"libjanus_{n}.so" for n in names)

    (folder / "janus.jcfg").write_text(f"""\
general: {{
    configs_folder = "{folder}"
    plugins_folder = "{JANUS_FOLDERS / 'plugins'}"
    transports_folder = "{JANUS_FOLDERS / 'transports'}"
    events_folder = "{JANUS_FOLDERS / 'events'}"
    loggers_folder = "{JANUS_FOLDERS / 'loggers'}"
    debug_level = 3
    admin_secret = "{ADMIN_SECRET}"
    session_timeout = 0
    server_name = "vio-bench"
    interface = "{ADDRESS}"
}}
media: {{
    rtp_port_range = "20000-40000"
}}
nat: {{
    nice_debug = false
    ice_enforce_list = "{INTERFACE}"
    ice_ignore_list = ""
    ignore_mdns = true
    ipv6 = false
}}
plugins: {{
    disable = "{libs('plugins', UNUSED_PLUGINS)}"
}}
transports: {{
    disable = "{libs('transports', UNUSED_TRANSPORTS)}"
}}
events: {{
    broadcast = false
}}
loggers: {{
    disable = "libjanus_jsonlog.so"
}}
""")
    (folder / "janus.transport.websockets.jcfg").write_text(f"""\
general: {{
    json = "plain"
    ws = true
    ws_port = {WS_PORT}
    ws_ip = "{ADDRESS}"
    wss = false
}}
admin: {{
    admin_ws = true
    admin_ws_port = {ADMIN_PORT}
    admin_ws_ip = "{ADDRESS}"
    admin_wss = false
}}
""")
    (folder / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")


# --- a small client of the Janus API over WebSockets ------------------------------------------


class JanusError(RuntimeError):
    pass


class JanusClient:
    """One WebSocket connection to Janus (``janus-protocol``) or its Admin API.

    Requests carry a transaction; the reply is the first message with that transaction that is
    not an ``ack`` (a plugin's asynchronous answer comes as an ``event`` after the ``ack``).
    Messages of no request (``webrtcup``, ``media``, ``hangup``, ...) are kept by kind and
    handle for :meth:`wait_for`.
    """

    def __init__(self, ws: Any, *, admin_secret: str | None = None) -> None:
        self._ws = ws
        self._admin_secret = admin_secret
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._seen: dict[tuple[str, int], asyncio.Event] = {}
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, port: int, *, admin: bool = False) -> JanusClient:
        from websockets.asyncio.client import connect

        protocol = "janus-admin-protocol" if admin else "janus-protocol"
        ws = await connect(f"ws://{ADDRESS}:{port}", subprotocols=[protocol],  # type: ignore[list-item]
                           max_size=None, ping_interval=None)
        return cls(ws, admin_secret=ADMIN_SECRET if admin else None)

    async def request(self, janus: str, **fields: Any) -> dict[str, Any]:
        transaction = f"t{next(self._ids)}"
        message = {"janus": janus, "transaction": transaction, **fields}
        if self._admin_secret is not None:
            message["admin_secret"] = self._admin_secret
        future = self._pending[transaction] = asyncio.get_running_loop().create_future()
        await self._ws.send(json.dumps(message))
        try:
            reply = await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        finally:
            self._pending.pop(transaction, None)
        if reply["janus"] == "error":
            raise JanusError(f"{janus}: {reply['error']}")
        data = reply.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{janus} {fields.get('body')}: {data['error']}")
        return reply

    async def wait_for(self, kind: str, handle: int, within: float) -> None:
        """Until Janus has said ``kind`` (e.g. ``webrtcup``) about ``handle``."""
        seen = self._seen.setdefault((kind, handle), asyncio.Event())
        await asyncio.wait_for(seen.wait(), within)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self._ws.close()

    async def _read(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            future = self._pending.get(message.get("transaction", ""))
            if message.get("janus") == "ack":
                continue
            if future is None or future.done():
                if isinstance(message.get("sender"), int):
                    key = (str(message.get("janus")), message["sender"])
                    self._seen.setdefault(key, asyncio.Event()).set()
                continue
            future.set_result(message)


class VideoRoom:
    """One Janus session holding one VideoRoom, and the handles of its participants."""

    def __init__(self, api: JanusClient, session: int) -> None:
        self.api = api
        self.session = session

    @classmethod
    async def create(cls, api: JanusClient) -> VideoRoom:
        session = (await api.request("create"))["data"]["id"]
        room = cls(api, session)
        manager = await room.attach()
        await room.message(manager, {
            "request": "create", "room": ROOM, "permanent": False, "publishers": 4,
            "audiocodec": "opus", "videocodec": "vp8", "bitrate": 0, "fir_freq": 0})
        return room

    async def attach(self) -> int:
        reply = await self.api.request("attach", session_id=self.session,
                                       plugin="janus.plugin.videoroom")
        return int(reply["data"]["id"])

    async def message(self, handle: int, body: dict[str, Any],
                      jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        fields: dict[str, Any] = {"session_id": self.session, "handle_id": handle, "body": body}
        if jsep is not None:
            fields["jsep"] = {**jsep, "trickle": False}
        return await self.api.request("message", **fields)

    async def detach(self, handle: int) -> None:
        with contextlib.suppress(JanusError, TimeoutError):
            await self.api.request("detach", session_id=self.session, handle_id=handle)


# --- the server child: Janus and its signaling adapter -----------------------------------------


def _cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid``, every live thread, user + system (``schedstat``, in ns)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _out_stats(info: dict[str, Any]) -> tuple[int, int]:
    """RTP packets and bytes Janus sent on one handle, from Admin API ``handle_info``."""
    packets = octets = 0
    for medium in info["info"].get("webrtc", {}).get("media", {}).values():
        out = medium.get("stats", {}).get("out", {})
        packets += int(out.get("packets", 0))
        octets += int(out.get("bytes", 0))
    return packets, octets


async def _wait_for_port(port: int, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection(ADDRESS, port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(POLL_S)
        else:
            writer.close()
            return


async def server_main(config: dict[str, Any]) -> None:
    """Janus in a temporary configuration folder, and the adapter the peers signal to."""
    in_namespace()
    folder = Path(tempfile.mkdtemp(prefix="vio-janus-"))
    write_config(folder)
    janus_log = folder / "janus.log"
    janus = await asyncio.create_subprocess_exec(
        "janus", "-F", str(folder), "-o", "-N", "-L", str(janus_log),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    api = admin = None
    connections: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}
    try:
        await _wait_for_port(WS_PORT, START_TIMEOUT_S)
        await _wait_for_port(ADMIN_PORT, START_TIMEOUT_S)
        api = await JanusClient.connect(WS_PORT)
        admin = await JanusClient.connect(ADMIN_PORT, admin=True)
        room = await VideoRoom.create(api)
        subscribers: set[int] = set()
        publisher: dict[str, Any] = {}
        published = asyncio.Event()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections[writer] = task
            handle: int | None = None
            is_publisher = False
            try:
                while (msg := await h.read_line(reader)) is not None:
                    if msg["type"] == "join" and handle is None:
                        handle = await room.attach()
                        await asyncio.wait_for(published.wait(), PUBLISHER_TIMEOUT_S)
                        reply = await room.message(handle, {
                            "request": "join", "ptype": "subscriber", "room": ROOM,
                            "streams": [{"feed": publisher["feed"]}]})
                        subscribers.add(handle)
                        streams = reply["plugindata"]["data"]["streams"]
                        h.write_line(writer, {
                            "type": "offer", "sdp": h.check_loopback(reply["jsep"]["sdp"]),
                            "tracks": [{"mid": s["mid"], "publisher": publisher["pid"],
                                        "kind": s["type"]} for s in streams]})
                    elif msg["type"] == "answer" and handle is not None:
                        await room.message(handle, {"request": "start"},
                                           {"type": "answer", "sdp": msg["sdp"]})
                    elif msg["type"] == "publish" and handle is None:
                        handle = await room.attach()
                        joined = await room.message(handle, {
                            "request": "join", "ptype": "publisher", "room": ROOM,
                            "display": msg["pid"]})
                        reply = await room.message(handle, {"request": "publish"},
                                                   {"type": "offer", "sdp": msg["sdp"]})
                        is_publisher = True
                        h.write_line(writer, {"type": "answer",
                                              "sdp": h.check_loopback(reply["jsep"]["sdp"])})
                        # A feed can be subscribed to once its connection is up.
                        await api.wait_for("webrtcup", handle, PUBLISHER_TIMEOUT_S)
                        publisher.update(pid=msg["pid"],
                                         feed=joined["plugindata"]["data"]["id"])
                        published.set()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            except Exception:
                log.exception("signaling failed")
            finally:
                if is_publisher:
                    published.clear()
                    publisher.clear()
                if handle is not None:
                    subscribers.discard(handle)
                    await room.detach(handle)
                writer.close()
                connections.pop(writer, None)

        server = await asyncio.start_server(on_connect, ADDRESS, 0)
        port = server.sockets[0].getsockname()[1]

        async def handle(cmd: str, args: dict[str, Any]) -> Any:
            if cmd == "port":
                return port
            if cmd == "mark":
                assert admin is not None
                cpu = _cpu_seconds(janus.pid)
                packets = octets = 0
                for info in await asyncio.gather(*(
                        admin.request("handle_info", session_id=room.session, handle_id=sub)
                        for sub in sorted(subscribers))):
                    p, o = _out_stats(info)
                    packets += p
                    octets += o
                return {"t": time.monotonic(), "cpu": cpu, "packets": packets,
                        "bytes": octets, "forwarded": {}}
            if cmd == "handle_info":
                assert admin is not None
                return [await admin.request("handle_info", session_id=room.session,
                                            handle_id=sub) for sub in sorted(subscribers)]
            raise ValueError(f"unknown command {cmd!r}")

        try:
            await h.serve_commands(handle)
        finally:
            server.close()
            for writer in list(connections):  # end of input: each connection leaves by itself
                writer.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*connections.values(),
                                                      return_exceptions=True), STOP_TIMEOUT_S)
    except BaseException:
        with contextlib.suppress(OSError):
            sys.stderr.write(janus_log.read_text()[-4000:])
        raise
    finally:
        for client in (api, admin):
            if client is not None:
                await client.close()
        if janus.returncode is None:
            janus.terminate()
            try:
                await asyncio.wait_for(janus.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                janus.kill()
                await janus.wait()
        shutil.rmtree(folder, ignore_errors=True)


# --- the peers children ------------------------------------------------------------------------


def in_namespace() -> None:
    """Inside the namespace its address plays the part 127.0.0.1 plays for the other backends:
    the only ICE candidate of every peer, the only one accepted in an SDP, and where to signal."""
    h.HOST = ADDRESS


async def peers_main(config: dict[str, Any]) -> None:
    in_namespace()
    await h.peers_main(config)


async def publisher_main(config: dict[str, Any]) -> None:
    """A publisher that offers (as VideoRoom publishers must), sending the harness's clips."""
    in_namespace()
    h.loopback_only()
    h.send_pre_encoded()
    clips = h.Clips(str(config.get("video_size", "320x240")),
                    fps=int(config.get("fps", h.VIDEO_FPS)),
                    kbps=int(config.get("kbps", h.VIDEO_TARGET_KBPS)))
    port = int(config["port"])
    live: list[tuple[Any, asyncio.StreamWriter, list[Any]]] = []

    async def publish(pid: str, kinds: list[str]) -> None:
        pc = h.peer_connection()
        tracks = []
        for kind in kinds:
            track = clips.track(kind)
            transceiver = pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(h._pinned(kind))
            transceiver.sender._send_keyframe = track.request_keyframe  # type: ignore[method-assign]
            tracks.append(track)
        reader, writer = await asyncio.open_connection(ADDRESS, port)
        live.append((pc, writer, tracks))
        await pc.setLocalDescription(await pc.createOffer())
        h.write_line(writer, {"type": "publish", "pid": pid,
                              "sdp": h.check_loopback(pc.localDescription.sdp)})
        answer = await asyncio.wait_for(h.read_line(reader), REQUEST_TIMEOUT_S)
        if answer is None or answer.get("type") != "answer":
            raise h.ChildFailed(f"Janus did not answer {pid}'s offer: {answer}")
        from aiortc import RTCSessionDescription

        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

    async def close_all() -> None:
        for pc, writer, tracks in live:
            writer.close()
            await pc.close()
            for track in tracks:
                track.stop()
        live.clear()

    async def handle(cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "add":
            for spec in args["peers"]:
                await publish(str(spec["pid"]), list(spec.get("publish", ())))
            return None
        if cmd == "remove":
            await close_all()
            return None
        if cmd == "stats":
            return {"t": time.monotonic(), "cpu": h.cpu_seconds(), "lost": 0,
                    "decode_failures": 0, "peers": {}}
        raise ValueError(f"unknown command {cmd!r}")

    try:
        await h.serve_commands(handle)
    finally:
        await close_all()


if __name__ == "__main__" and not h.child_entry({"server": server_main, "peers": peers_main,
                                                 "publisher": publisher_main}):
    raise SystemExit("bench/janus.py is started by bench/forwarding.py, not by hand")
