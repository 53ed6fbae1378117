"""Rooms across node processes: real ``vio serve`` nodes, the real PostgreSQL and Redis.

Each node listens on a port all nodes share (``SO_REUSEPORT``, as ``--workers`` does) and on a
port of its own (``--node-port``), so a test can choose where a connection lands. Redis keys
carry a prefix of the test's own; a test that restarts Redis starts a private ``redis-server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from sqlalchemy import select

from tests.conftest import TEST_KEYS, seconds, unavailable
from tests.test_attendance_live import _healthy
from vio.attendance.records import session_record
from vio.bot import Bot, check_in_at_home, sign_in
from vio.db import create_engine, session_factory
from vio.media import announce_host_addresses
from vio.models import AttendanceEvent, AttendanceKind, Program, Session, WaitingRoomPolicy
from vio.nodes.placement import Placement

VIO = str(Path(sys.executable).with_name("vio"))
REDIS_URL = os.environ.get("VIO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LEASE_SECONDS = 3.0
NODE_HEARTBEAT_SECONDS = 0.5

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(autouse=True)
def loopback_only():
    announce_host_addresses(["127.0.0.1"])


def _free_port() -> int:
    from tests.browser.harness import free_port

    return free_port()


@pytest_asyncio.fixture
async def redis_url() -> AsyncIterator[str]:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=seconds(2))
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as error:
        unavailable("Redis", str(error))
    finally:
        await client.aclose()
    yield REDIS_URL


@dataclass
class NodeProcess:
    name: str
    port: int  # this node's own port
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Cluster:
    """Node processes of one test: one database, one Redis prefix, one shared port."""

    def __init__(self, directory: Path, database_url: str, redis_url: str) -> None:
        self.directory = directory
        self.shared_port = _free_port()
        self.prefix = f"vio-test-{secrets.token_hex(4)}"
        self.redis_url = redis_url
        self.env = {**os.environ, "VIO_DATABASE_URL": database_url, "VIO_REDIS_URL": redis_url,
                    "VIO_REDIS_PREFIX": self.prefix, "VIO_SECRET_KEY": "node-test",
                    "VIO_ICE_ANNOUNCE_ADDRESSES": "127.0.0.1",
                    "VIO_PUBLIC_BASE_URL": f"http://127.0.0.1:{self.shared_port}",
                    "VIO_ROOM_LEASE_SECONDS": str(LEASE_SECONDS),
                    "VIO_NODE_HEARTBEAT_SECONDS": str(NODE_HEARTBEAT_SECONDS),
                    "VIO_ROOM_TICK_SECONDS": "0.2", "VIO_ATTENDANCE_HEARTBEAT_SECONDS": "1"}
        self.nodes: dict[str, NodeProcess] = {}

    @property
    def shared(self) -> str:
        return f"http://127.0.0.1:{self.shared_port}"

    def _spawn(self, name: str) -> NodeProcess:
        port = _free_port()
        log = self.directory / f"node-{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [VIO, "serve", "--demo", "--port", str(self.shared_port), "--node-port",
                 str(port)], cwd=self.directory, env=self.env, stdout=out,
                stderr=subprocess.STDOUT)
        return NodeProcess(name, port, process, log)

    async def start(self, name: str) -> NodeProcess:
        node = self.nodes[name] = self._spawn(name)
        await asyncio.to_thread(_healthy, node.base, seconds(30))
        return node

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        node = self.nodes.pop(name)
        node.process.send_signal(sig)
        node.process.wait(seconds(20))

    def close(self) -> None:
        for name in list(self.nodes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop(name)

    async def owner_pid(self, session_id: int) -> int | None:
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            owner = await client.get(f"{self.prefix}:room:{session_id}")
        finally:
            await client.aclose()
        return None if owner is None else int(owner.decode().rsplit("-", 2)[1])

    async def links(self) -> dict:
        done = await asyncio.to_thread(subprocess.run, [VIO, "demo-links", "--json"],
                                       cwd=self.directory, env=self.env, check=True,
                                       capture_output=True, text=True)
        return json.loads(done.stdout)

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in self.directory.glob("node-*.log"))


@pytest.fixture
def cluster(tmp_path, postgres_url, redis_url) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path, postgres_url, redis_url)
    try:
        yield nodes
    finally:
        nodes.close()


async def _wait(predicate, within: float, what: str, cluster: Cluster | None = None) -> None:
    deadline = time.monotonic() + seconds(within)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}"
                                 + (f"\n{cluster.logs()}" if cluster else ""))
        await asyncio.sleep(0.05)


async def _people(cluster: Cluster, base: str, patients: int):
    """(session id, therapist cookie, patient cookies) signed in at ``base``."""
    links = await cluster.links()
    session_id = next(s["id"] for s in links["sessions"] if s["kind"] == "group")
    therapist = await asyncio.to_thread(sign_in, f"{base}/login", links["therapist"]["email"],
                                        links["therapist"]["password"])
    cookies = []
    for patient in [p for p in links["patients"] if p["on_roster"]][:patients]:
        web = await asyncio.to_thread(sign_in, patient["link"].replace(cluster.shared, base))
        await asyncio.to_thread(check_in_at_home, web, session_id)
        cookies.append(web.cookie)
    return session_id, therapist.cookie, cookies


class Bots:
    def __init__(self) -> None:
        self.tasks: dict[Bot, asyncio.Task] = {}

    def start(self, url: str, cookie: str, **options) -> Bot:
        bot = Bot(url, cookie, **options)
        self.tasks[bot] = asyncio.create_task(bot.run(seconds(120)))
        return bot

    async def close(self) -> None:
        for bot in self.tasks:
            bot.stop()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


def _frames(bot: Bot) -> int:
    return sum(r.video_frames + r.audio_frames for r in bot.result.remote.values())


async def _media_flows(bots: list[Bot], cluster: Cluster, within: float = 20) -> None:
    """Every bot receives frames, and keeps receiving them."""
    await _wait(lambda: all(len([r for r in b.result.remote.values() if r.video_frames > 0])
                            >= len(bots) - 1 for b in bots), within, "media between all",
                cluster)
    before = [_frames(b) for b in bots]
    await _wait(lambda: all(_frames(b) > n + 10 for b, n in zip(bots, before, strict=True)),
                within, "media still flowing", cluster)


def _ws(base: str, session_id: int) -> str:
    return base.replace("http", "ws") + f"/ws/sessions/{session_id}"


async def test_a_connection_on_one_node_joins_a_room_on_another(cluster):
    b = await cluster.start("b")
    session_id, therapist_cookie, (dana,) = await _people(cluster, b.base, 1)
    bots = Bots()
    try:
        therapist = bots.start(_ws(b.base, session_id), therapist_cookie, admit_all=True)
        await _wait(lambda: therapist.result.admitted, 20, "therapist in", cluster)
        assert await cluster.owner_pid(session_id) == b.process.pid
        a = await cluster.start("a")
        patient = bots.start(_ws(a.base, session_id), dana)  # lands on A, room is on B
        await _media_flows([therapist, patient], cluster)
        assert await cluster.owner_pid(session_id) == b.process.pid
    finally:
        await bots.close()


async def _events(cluster: Cluster, session_id: int, kind: AttendanceKind):
    engine = create_engine(cluster.env["VIO_DATABASE_URL"])
    try:
        async with session_factory(engine, TEST_KEYS)() as db:
            return list((await db.execute(select(AttendanceEvent).where(
                AttendanceEvent.session_id == session_id, AttendanceEvent.kind == kind,
                AttendanceEvent.role == "patient"))).scalars())
    finally:
        await engine.dispose()


async def _set_waiting_room(cluster: Cluster, session_id: int) -> None:
    engine = create_engine(cluster.env["VIO_DATABASE_URL"])
    try:
        async with session_factory(engine, TEST_KEYS)() as db:
            session = await db.get(Session, session_id)
            session.waiting_room = WaitingRoomPolicy.THERAPIST_ADMITS
            await db.commit()
    finally:
        await engine.dispose()


async def _room_moves(cluster: Cluster, sig: int) -> None:
    b = await cluster.start("b")
    session_id, therapist_cookie, cookies = await _people(cluster, b.base, 2)
    await _set_waiting_room(cluster, session_id)  # newcomers wait; returning seats do not
    bots = Bots()
    shared = _ws(cluster.shared, session_id)
    try:
        therapist = bots.start(shared, therapist_cookie, admit_all=True)
        patients = [bots.start(shared, c) for c in cookies]
        everyone = [therapist, *patients]
        await _media_flows(everyone, cluster)  # only B is up: the room is on B
        a = await cluster.start("a")
        ids = {b_.participant_id for b_ in everyone}
        stopped_at = time.monotonic()
        cluster.stop("b", sig)
        await _wait(lambda: all(bot.participant_id not in ids and bot.result.admitted
                                for bot in everyone), LEASE_SECONDS + 5, "everyone back in",
                    cluster)
        moved_in = time.monotonic() - stopped_at
        assert await cluster.owner_pid(session_id) == a.process.pid
        assert moved_in <= seconds(LEASE_SECONDS + 5)
        await _media_flows(everyone, cluster)
        assert all(bot.result.reconnects >= 1 for bot in everyone)
        # Nobody went through the waiting room again: the seats were kept.
        waited = await _events(cluster, session_id, AttendanceKind.WAITING)
        assert len(waited) == len(patients)  # once each, when they first came
        await therapist.send({"type": "end"})
        await _wait(lambda: all(bot.result.ended for bot in everyone), 10, "the end", cluster)
    finally:
        await bots.close()
    # Attendance is continuous: one stretch on B, one on A, apart by no more than the move.
    engine = create_engine(cluster.env["VIO_DATABASE_URL"])
    try:
        async with session_factory(engine, TEST_KEYS)() as db:
            session = await db.get(Session, session_id)
            program = await db.get(Program, session.program_id)
            record = await session_record(db, session, program)
    finally:
        await engine.dispose()
    attended = [p for p in record.patients if p.attendance.intervals]
    assert len(attended) == len(patients)
    for patient in attended:
        intervals = patient.attendance.intervals
        assert len(intervals) <= 2
        if len(intervals) == 2:
            gap = (intervals[1].start - intervals[0].end).total_seconds()
            assert gap <= moved_in + 1 + 1, gap  # the move, plus one heartbeat


async def test_a_killed_node_s_room_opens_on_another_with_every_seat(cluster):
    await _room_moves(cluster, signal.SIGKILL)


async def test_a_stopped_node_hands_its_room_over_at_once(cluster):
    await _room_moves(cluster, signal.SIGTERM)


async def test_two_nodes_racing_for_a_room_one_wins(redis_url):
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    prefix = f"vio-test-{secrets.token_hex(4)}"
    nodes = [Placement(c, f"node-{i}", prefix=prefix, room_lease_seconds=LEASE_SECONDS,
                       node_heartbeat_seconds=NODE_HEARTBEAT_SECONDS,
                       node_ttl_seconds=NODE_HEARTBEAT_SECONDS * 3, load=lambda: (0, 0))
             for i, c in enumerate(clients)]
    try:
        for session_id in range(50):
            won = await asyncio.gather(*(n.claim(session_id) for n in nodes))
            assert sorted(won) == [False, True]
            owner = await nodes[0].owner(session_id)
            assert owner == nodes[won.index(True)].node_id
        await asyncio.gather(*(n.stop() for n in nodes))
        assert await nodes[0].owner(0) is None  # stopping gives the leases back
    finally:
        for client in clients:
            await client.aclose()


@pytest.fixture
def private_redis(tmp_path) -> Iterator[tuple[str, Callable[[], None]]]:
    """A redis-server of this test's own, which the test may restart."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server", "not installed")
    port = _free_port()
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
               "--appendonly", "no", "--dir", str(tmp_path)]
    process = {"p": subprocess.Popen(command, stdout=subprocess.DEVNULL)}

    def restart() -> None:
        process["p"].terminate()
        process["p"].wait(seconds(10))
        process["p"] = subprocess.Popen(command, stdout=subprocess.DEVNULL)

    time.sleep(0.3)
    try:
        yield f"redis://127.0.0.1:{port}/0", restart
    finally:
        process["p"].terminate()
        process["p"].wait(seconds(10))


async def test_a_redis_restart_keeps_the_room_going(tmp_path, postgres_url, private_redis):
    url, restart = private_redis
    nodes = Cluster(tmp_path, postgres_url, url)
    bots = Bots()
    try:
        a = await nodes.start("a")
        session_id, therapist_cookie, (dana,) = await _people(nodes, a.base, 1)
        therapist = bots.start(_ws(a.base, session_id), therapist_cookie, admit_all=True)
        patient = bots.start(_ws(a.base, session_id), dana)
        await _media_flows([therapist, patient], nodes)
        ids = (therapist.participant_id, patient.participant_id)
        restart()  # Redis comes back empty
        await _media_flows([therapist, patient], nodes)
        await patient.send({"type": "chat", "text": "still here", "to": "room"})
        assert (therapist.participant_id, patient.participant_id) == ids  # never dropped
        deadline = time.monotonic() + seconds(10)
        while await nodes.owner_pid(session_id) != a.process.pid:  # the directory is whole
            assert time.monotonic() < deadline, nodes.logs()
            await asyncio.sleep(0.1)
    finally:
        await bots.close()
        nodes.close()


async def test_consent_revoked_on_one_node_removes_the_family_member_on_another(cluster):
    from tests.test_family import _accept, disclosure, issue, member, open_family_session
    from tests.wsclient import Client
    from vio.bot import WebSession
    from vio.clock import SystemClock

    b = await cluster.start("b")
    a = await cluster.start("a")
    engine = create_engine(cluster.env["VIO_DATABASE_URL"])
    try:
        async with session_factory(engine, TEST_KEYS)() as db:
            session = await open_family_session(db, SystemClock())
            token = await issue(db, SystemClock())
            who = await member(db)
            consent = await disclosure(db, who)
            session_id, patient_id, consent_id = session.id, who.patient_id, consent.id
    finally:
        await engine.dispose()
    angela = await asyncio.to_thread(_accept, b.base, token, "Angela L.")
    therapist = await asyncio.to_thread(sign_in, f"{b.base}/login", "therapist@demo.vio",
                                        "demo-therapist")
    url = _ws(b.base, session_id)
    async with Client(url, therapist.cookie) as jordan, Client(url, angela.cookie) as fam:
        await jordan.join()
        assert (await fam.join())["type"] == "waiting"
        owner = await cluster.owner_pid(session_id)
        other = a if owner == b.process.pid else b  # revoke through the node without the room
        assert owner in (a.process.pid, b.process.pid) and other.process.pid != owner
        admin = await asyncio.to_thread(WebSession, other.base)
        await asyncio.to_thread(admin.post_form, "/login", {"email": "admin@demo.vio",
                                                            "password": "demo-admin"})
        started = time.monotonic()
        status = await asyncio.to_thread(
            admin.post_form, f"/staff/patients/{patient_id}/family",
            {"action": "revoke-consent", "consent_id": str(consent_id)})
        assert status == 303
        refused = await fam.expect("refused", within=2)
        assert refused["code"] == "consent-revoked"
        assert time.monotonic() - started < seconds(2)


async def test_serve_workers_share_one_port(tmp_path, postgres_url, redis_url):
    port = _free_port()
    prefix = f"vio-test-{secrets.token_hex(4)}"
    env = {**os.environ, "VIO_DATABASE_URL": postgres_url, "VIO_REDIS_URL": redis_url,
           "VIO_REDIS_PREFIX": prefix, "VIO_SECRET_KEY": "workers-test",
           "VIO_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
           "VIO_NODE_HEARTBEAT_SECONDS": str(NODE_HEARTBEAT_SECONDS),
           "VIO_RTC_PORT_RANGE": "51000-51019"}
    parent = await asyncio.to_thread(
        subprocess.Popen, [VIO, "serve", "--workers", "2", "--port", str(port)], cwd=tmp_path,
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await asyncio.to_thread(_healthy, f"http://127.0.0.1:{port}", seconds(30))
        deadline = time.monotonic() + seconds(20)
        while len([k async for k in client.scan_iter(match=f"{prefix}:node:*")]) < 2:
            assert time.monotonic() < deadline, "two worker nodes did not register"
            await asyncio.sleep(0.1)
    finally:
        parent.send_signal(signal.SIGTERM)
        await asyncio.to_thread(parent.wait, seconds(30))
        await client.aclose()
    assert parent.returncode == 0
