"""What sealing the messages between nodes costs: relayed signaling with the MAC on and off.

Two pairs of node processes of the real server run side by side on PostgreSQL and Redis, one
pair as shipped (``signed``), the other with the MAC computation replaced by a constant
(``unsigned``: this script's child entry patches ``vio.nodes.wire.Mac`` before starting the
server, in that child only; same envelope, numbering, freshness, replay and schema checks, no
HMAC). In each pair the owner holds a group room (its therapist joined on the owner's own
port) and the edge holds a patient's WebSocket, relayed to the owner over Redis. The patient
sends the protocol's ``ping`` and reads each ``pong``, keeping ``--window`` in flight: every
round trip is two relayed messages (a frame edge -> owner, a send owner -> edge), each sealed
by its sender and checked by its receiver (``vio.nodes.wire``).

The pairs take turns, ``--chunks`` times each, ``--messages`` round trips a turn, the first
turn alternating; so both meet the same machine (this matters on a shared one). For each
variant the report gives round trips per second over its turns and the CPU its two nodes spent
per relayed message (``/proc/<pid>/stat``, all threads, summed over the turns), side by side,
then the MAC's share of a relayed message's CPU, ``1 - unsigned / signed``, and beside it the
in-process cost of sealing and opening one such message with the real functions, with and
without the MAC.

    .venv/bin/python bench/relay.py            # 20 turns of 500 round trips per variant
    .venv/bin/python bench/relay.py --quick    # 10 turns of 300
    .venv/bin/python bench/relay.py --smoke    # 2 turns of 100 (tests)

Needs PostgreSQL (``--postgres``; a fresh database per run, dropped at the end) and Redis
(``--redis``; keys under prefixes of the run's own), both on 127.0.0.1. Every ICE candidate is
127.0.0.1 and no STUN server is used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import harness as h
import scale

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
NODE_START_TIMEOUT_S = 60.0
"""From starting a node process to its healthy port."""
NODE_STOP_TIMEOUT_S = 30.0
JOIN_TIMEOUT_S = 20.0
"""One connection: from opening the WebSocket to its ``welcome``."""
REPLY_TIMEOUT_S = 10.0
"""The longest wait for the next ``pong`` before the round fails."""
SERVICE_TIMEOUT_S = 10.0
WARMUP_ROUND_TRIPS = 200


@dataclass(frozen=True)
class Plan:
    chunks: int
    messages: int
    window: int


FULL = Plan(chunks=20, messages=500, window=16)
QUICK = Plan(chunks=10, messages=300, window=16)
SMOKE = Plan(chunks=2, messages=100, window=8)
VARIANTS = ("signed", "unsigned")


# --- a node child: the real server, the MAC on or off -------------------------------------------

def unsigned() -> None:
    """From now on in this process, every MAC is the same constant (and so always checks)."""
    from vio.nodes import wire

    constant = b"0" * wire.MAC_HEX
    wire.Mac.__call__ = lambda self, channel, payload: constant  # type: ignore[method-assign]


def node_child(variant: str, argv: list[str]) -> int:
    """Run ``vio <argv>`` in this process; ``unsigned``: with the MAC replaced by a constant."""
    if variant == "unsigned":
        unsigned()
    from vio.cli import main

    return main(argv)


# --- the driver ---------------------------------------------------------------------------------

class Node:
    def __init__(self, name: str, variant: str, env: dict[str, str], shared_port: int,
                 directory: Path) -> None:
        self.port = scale.free_port()
        self.log = directory / f"node-{name}-{variant}.log"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(SCRIPT), "--node", variant, "serve", "--host", h.HOST,
                 "--port", str(shared_port), "--node-port", str(self.port)],
                cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    @property
    def base(self) -> str:
        return f"http://{h.HOST}:{self.port}"

    async def ready(self) -> None:
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while not await asyncio.to_thread(scale.healthy, self.base):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"a node did not start:\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.2)

    def cpu(self) -> float:
        return scale.process_cpu(self.process.pid)

    async def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        await h.poll(lambda: self.process.poll() is not None, NODE_STOP_TIMEOUT_S, 0.1)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


async def join(url: str) -> object:
    from websockets.asyncio.client import connect

    ws = await connect(url, open_timeout=JOIN_TIMEOUT_S, ping_interval=None)
    await ws.send(json.dumps({"type": "join", "v": 1}))
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        if message["type"] == "welcome":
            return ws
        if message["type"] in ("refused", "waiting"):
            raise RuntimeError(f"the bench participant was not seated: {message}")


async def round_trips(ws: object, count: int, window: int) -> float:
    """Send ``count`` pings, ``window`` in flight, until every pong is back; the seconds."""
    send, recv = ws.send, ws.recv  # type: ignore[attr-defined]
    started = time.perf_counter()
    sent = received = 0
    while received < count:
        while sent < count and sent - received < window:
            await send('{"type":"ping"}')
            sent += 1
        message = await asyncio.wait_for(recv(), REPLY_TIMEOUT_S)
        if '"pong"' in message:
            received += 1
    return time.perf_counter() - started


class Pair:
    """One variant's owner and edge, with the patient relayed from one to the other."""

    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.nodes: list[Node] = []
        self.sockets: list[object] = []
        self.prefix = f"vio-bench-relay-{secrets.token_hex(4)}"
        self.cpu_s = self.wall_s = 0.0
        self.round_trips = 0
        self.turns: list[float] = []  # CPU µs per relayed message, each turn

    async def start(self, room: dict[str, object], env: dict[str, str],
                    directory: Path) -> None:
        shared = scale.free_port()
        env = {**env, "VIO_REDIS_PREFIX": self.prefix,
               "VIO_PUBLIC_BASE_URL": f"http://{h.HOST}:{shared}"}
        path = f"/ws/sessions/{room['session_id']}?ticket="
        owner = Node("owner", self.variant, env, shared, directory)
        self.nodes.append(owner)
        await owner.ready()
        self.sockets.append(await join(f"{owner.base.replace('http', 'ws')}{path}"
                                       f"{room['therapist']}"))
        edge = Node("edge", self.variant, env, shared, directory)
        self.nodes.append(edge)
        await edge.ready()
        patients: list[str] = room["patients"]  # type: ignore[assignment]
        self.sockets.append(await join(f"{edge.base.replace('http', 'ws')}{path}"
                                       f"{patients[0]}"))
        await round_trips(self.sockets[-1], WARMUP_ROUND_TRIPS, 8)

    async def turn(self, count: int, window: int) -> None:
        before = sum(node.cpu() for node in self.nodes)
        self.wall_s += await round_trips(self.sockets[-1], count, window)
        spent = sum(node.cpu() for node in self.nodes) - before
        self.cpu_s += spent
        self.round_trips += count
        self.turns.append(spent / (2 * count) * 1e6)

    @property
    def per_second(self) -> float:
        return self.round_trips / self.wall_s

    @property
    def cpu_us_per_message(self) -> float:
        return self.cpu_s / (2 * self.round_trips) * 1e6

    async def stop(self, redis: object) -> None:
        for ws in self.sockets:
            with contextlib.suppress(Exception):
                await ws.close()  # type: ignore[attr-defined]
        for node in reversed(self.nodes):
            await node.stop()
        await scale.delete_keys(redis, self.prefix)


def seal_and_open_us(repeat: int = 20000) -> tuple[float, float]:
    """The in-process cost of sealing and opening one relayed ping with the real functions:
    (with the MAC, without it), in µs."""
    from vio.keys import InstallKeys
    from vio.nodes import wire

    key = InstallKeys.derive("relay-bench").cluster
    sender = wire.Outbound(key, "host-1-abcdef")
    receiver = wire.Inbound(key, max_age_ms=30_000, max_frame_chars=1 << 18)
    body = {"op": "frame", "conn": "host-1-abcdef/0123456789abcdef", "raw": '{"type":"ping"}',
            "binary": False}
    channel = "vio:to:host-2-fedcba"
    now = int(time.time() * 1000)
    started = time.perf_counter()
    for _ in range(repeat):
        receiver.open(channel, wire.Channel.NODE, sender.seal(channel, body, now), now)
    with_mac = time.perf_counter() - started
    original = wire.Mac.__call__
    unsigned()
    try:
        started = time.perf_counter()
        for _ in range(repeat):
            receiver.open(channel, wire.Channel.NODE, sender.seal(channel, body, now), now)
        without = time.perf_counter() - started
    finally:
        wire.Mac.__call__ = original  # type: ignore[method-assign]
    return with_mac / repeat * 1e6, without / repeat * 1e6


def report(pairs: list[Pair], plan: Plan, in_process: tuple[float, float], machine: str,
           started: float) -> None:
    rows = [[p.variant, f"{p.per_second:.0f}", f"{p.cpu_us_per_message:.1f}",
             f"{statistics.median(p.turns):.1f}"] for p in pairs]
    print(f"relay: {plan.chunks} turns x {plan.messages} round trips per variant, "
          f"{plan.window} in flight; {machine}; {time.monotonic() - started:.0f} s")
    print(h.table(["variant", "round trips/s", "node CPU µs per relayed message",
                   "median of turns"], rows))
    signed, unsigned = (next(p for p in pairs if p.variant == v) for v in VARIANTS)
    share = 1 - unsigned.cpu_us_per_message / signed.cpu_us_per_message
    print(f"MAC share of a relayed message's node CPU (1 - unsigned/signed): {share:.1%} "
          f"(target: under 10 %); throughput signed/unsigned: "
          f"{signed.per_second / unsigned.per_second:.2f}")
    with_mac, without = in_process
    mac = with_mac - without
    print(f"in process, sealing and opening one relayed ping: {with_mac:.1f} µs with the MAC, "
          f"{without:.1f} µs without; the MAC's {mac:.1f} µs is "
          f"{mac / signed.cpu_us_per_message:.1%} of a signed relayed message's node CPU")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 turns of 300 round trips")
    parser.add_argument("--smoke", action="store_true", help="2 turns of 100 (tests)")
    parser.add_argument("--chunks", type=int, help="turns per variant")
    parser.add_argument("--messages", type=int, help="round trips per turn")
    parser.add_argument("--window", type=int, help="pings in flight (at most 32)")
    parser.add_argument("--postgres", default=scale.DEFAULT_POSTGRES,
                        help="an existing database's URL on 127.0.0.1 (env "
                             "VIO_BENCH_POSTGRES_URL); the run creates and drops its own")
    parser.add_argument("--redis", default=scale.DEFAULT_REDIS,
                        help="Redis on 127.0.0.1 (env VIO_BENCH_REDIS_URL)")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    plan = Plan(chunks=args.chunks or plan.chunks, messages=args.messages or plan.messages,
                window=args.window or plan.window)
    if plan.chunks < 1 or plan.messages < 1 or not 1 <= plan.window <= 32:
        parser.error("turns and round trips must be positive, the window 1 to 32")
    admin_url = scale.loopback_url(args.postgres, "--postgres")
    redis_url = scale.loopback_url(args.redis, "--redis")

    import signaling

    started = time.monotonic()
    machine = h.machine()
    redis = await scale.check_redis(redis_url)
    database_url = ""
    pairs = [Pair(variant) for variant in VARIANTS]
    try:
        with tempfile.TemporaryDirectory(prefix="vio-bench-relay-") as tmp:
            try:
                database_url = await asyncio.wait_for(scale.create_database(admin_url),
                                                      SERVICE_TIMEOUT_S)
            except (OSError, TimeoutError) as error:
                raise SystemExit(f"PostgreSQL at {admin_url} is not reachable: "
                                 f"{error or type(error).__name__}") from None
            rooms = await signaling.seed(database_url, len(pairs), 2)
            env = {k: v for k, v in os.environ.items() if not k.startswith("VIO_")}
            env.update({"PYTHONPATH": str(REPO), "VIO_DATABASE_URL": database_url,
                        "VIO_REDIS_URL": redis_url, "VIO_SECRET_KEY": signaling.SECRET,
                        "VIO_ICE_ANNOUNCE_ADDRESSES": h.HOST})
            try:
                for pair, room in zip(pairs, rooms, strict=True):
                    await pair.start(room, env, Path(tmp))
                for index in range(plan.chunks):  # who goes first alternates
                    for pair in pairs[::1 if index % 2 == 0 else -1]:
                        await pair.turn(plan.messages, plan.window)
            finally:
                for pair in pairs:
                    await pair.stop(redis)
    finally:
        if database_url:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(scale.drop_database(admin_url, database_url),
                                       SERVICE_TIMEOUT_S)
        await redis.aclose()
    report(pairs, plan, seal_and_open_us(), machine, started)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--node":
        raise SystemExit(node_child(sys.argv[2], sys.argv[3:]))
    try:
        raise SystemExit(asyncio.run(main()))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench/relay.py: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
