"""Rooms across node processes: real ``vio serve`` nodes, the real PostgreSQL and Redis
(``tests.cluster``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from sqlalchemy import select

from tests.cluster import (
    LEASE_SECONDS,
    NODE_HEARTBEAT_SECONDS,
    VIO,
    Bots,
    Cluster,
    PrivateRedis,
    attendance,
    free_port,
    healthy,
    media_flows,
    people,
    set_waiting_room,
    shared_redis,
    wait,
    ws,
)
from tests.conftest import TEST_KEYS, seconds
from vio.attendance.records import session_record
from vio.clock import SystemClock
from vio.db import create_engine, migrate, session_factory
from vio.media import announce_host_addresses
from vio.models import AttendanceKind, Program, Session
from vio.nodes.placement import Placement
from vio.rooms.fences import DatabaseFences

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(autouse=True)
def loopback_only():
    announce_host_addresses(["127.0.0.1"])


@pytest_asyncio.fixture
async def redis_url() -> AsyncIterator[str]:
    yield await shared_redis()


@pytest.fixture
def cluster(tmp_path, postgres_url, redis_url) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path, postgres_url, redis_url)
    try:
        yield nodes
    finally:
        nodes.close()


async def test_a_connection_on_one_node_joins_a_room_on_another(cluster):
    b = await cluster.start("b")
    session_id, therapist_cookie, (dana,) = await people(cluster, b.base, 1)
    bots = Bots()
    try:
        therapist = bots.start(ws(b.base, session_id), therapist_cookie, admit_all=True)
        await wait(lambda: therapist.result.admitted, 20, "therapist in", cluster)
        assert await cluster.owner_pid(session_id) == b.process.pid
        a = await cluster.start("a")
        patient = bots.start(ws(a.base, session_id), dana)  # lands on A, room is on B
        await media_flows([therapist, patient], cluster)
        assert await cluster.owner_pid(session_id) == b.process.pid
    finally:
        await bots.close()


async def _room_moves(cluster: Cluster, sig: int) -> None:
    b = await cluster.start("b")
    session_id, therapist_cookie, cookies = await people(cluster, b.base, 2)
    # Newcomers wait; returning seats do not.
    await set_waiting_room(cluster.database_url, session_id)
    bots = Bots()
    shared = ws(cluster.shared, session_id)
    try:
        therapist = bots.start(shared, therapist_cookie, admit_all=True)
        patients = [bots.start(shared, c) for c in cookies]
        everyone = [therapist, *patients]
        await media_flows(everyone, cluster)  # only B is up: the room is on B
        a = await cluster.start("a")
        ids = {b_.participant_id for b_ in everyone}
        stopped_at = time.monotonic()
        cluster.stop("b", sig)
        await wait(lambda: all(bot.participant_id not in ids and bot.result.admitted
                               for bot in everyone), LEASE_SECONDS + 5, "everyone back in",
                   cluster)
        moved_in = time.monotonic() - stopped_at
        assert await cluster.owner_pid(session_id) == a.process.pid
        assert moved_in <= seconds(LEASE_SECONDS + 5)
        await media_flows(everyone, cluster)
        assert all(bot.result.reconnects >= 1 for bot in everyone)
        # Nobody went through the waiting room again: the seats were kept.
        waited = [e for e in await attendance(cluster.database_url, session_id,
                                              AttendanceKind.WAITING) if e.role == "patient"]
        assert len(waited) == len(patients)  # once each, when they first came
        await therapist.send({"type": "end"})
        await wait(lambda: all(bot.result.ended for bot in everyone), 10, "the end", cluster)
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


async def test_two_nodes_racing_for_a_room_one_wins(redis_url, postgres_url):
    """Two nodes claim each room at once: one wins; each take-over has a higher epoch."""
    from vio import demo

    engine = create_engine(postgres_url)
    await migrate(engine, TEST_KEYS)
    async with session_factory(engine, TEST_KEYS)() as db:
        await demo.seed(db, "America/Chicago", SystemClock().now())
        await db.commit()
        session_ids = list((await db.execute(select(Session.id))).scalars())
    fences = DatabaseFences(session_factory(engine, TEST_KEYS), SystemClock())
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    prefix = f"vio-test-{secrets.token_hex(4)}"
    nodes = [Placement(c, f"node-{i}", prefix=prefix, lease_seconds=LEASE_SECONDS,
                       heartbeat_seconds=NODE_HEARTBEAT_SECONDS, load=lambda: (0, 0),
                       fences=fences) for i, c in enumerate(clients)]
    try:
        for node in nodes:
            await node.report()  # both are live nodes
        epochs: dict[int, list[int]] = {}
        for _ in range(3):
            for session_id in session_ids:
                won = await asyncio.gather(*(n.claim(session_id) for n in nodes))
                assert [e is None for e in won].count(True) == 1, won
                winner = next(n for n, e in zip(nodes, won, strict=True) if e is not None)
                assert await winner.lease(session_id) == (winner.node_id, winner.owned[
                    session_id])
                epochs.setdefault(session_id, []).append(winner.owned[session_id])
                await winner.release(session_id)
        for session_id, taken in epochs.items():
            assert taken == sorted(set(taken)), taken  # every take-over a newer epoch
            assert await fences.current(session_id) == taken[-1]
        claimed = await nodes[0].claim(session_ids[0])
        await asyncio.gather(*(n.stop() for n in nodes))
        assert claimed is not None and await nodes[0].owner(session_ids[0]) is None
    finally:
        for client in clients:
            await client.aclose()
        await engine.dispose()


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, which the test may restart."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_redis_restart_keeps_the_room_going(tmp_path, postgres_url, private_redis):
    nodes = Cluster(tmp_path, postgres_url, private_redis.url)
    bots = Bots()
    try:
        a = await nodes.start("a")
        session_id, therapist_cookie, (dana,) = await people(nodes, a.base, 1)
        therapist = bots.start(ws(a.base, session_id), therapist_cookie, admit_all=True)
        patient = bots.start(ws(a.base, session_id), dana)
        await media_flows([therapist, patient], nodes)
        ids = (therapist.participant_id, patient.participant_id)
        private_redis.restart()  # Redis comes back empty
        await media_flows([therapist, patient], nodes)
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
    from vio.bot import WebSession, sign_in

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
    url = ws(b.base, session_id)
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


async def test_serve_workers_share_one_port_and_a_killed_one_comes_back(
        tmp_path, postgres_url, redis_url):
    port = free_port()
    prefix = f"vio-test-{secrets.token_hex(4)}"
    env = {**os.environ, "VIO_DATABASE_URL": postgres_url, "VIO_REDIS_URL": redis_url,
           "VIO_REDIS_PREFIX": prefix, "VIO_SECRET_KEY": "workers-test",
           "VIO_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
           "VIO_NODE_HEARTBEAT_SECONDS": str(NODE_HEARTBEAT_SECONDS),
           "VIO_ROOM_LEASE_SECONDS": str(LEASE_SECONDS),
           "VIO_WORKER_RESTART_SECONDS": "0.5", "VIO_RTC_PORT_RANGE": "51000-51019"}
    log = tmp_path / "workers.log"
    with log.open("wb") as out:
        parent = await asyncio.to_thread(
            subprocess.Popen, [VIO, "serve", "--workers", "2", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    client = aioredis.Redis.from_url(redis_url)

    async def workers() -> set[str]:
        return {k.decode().removeprefix(f"{prefix}:node:")
                async for k in client.scan_iter(match=f"{prefix}:node:*")}

    async def until(what: str, done) -> set[str]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + seconds(20)
        while not done(found := await workers()):
            assert time.monotonic() < deadline, f"{what}\n{log.read_text()}"
            await asyncio.sleep(0.1)
        return found

    try:
        await asyncio.to_thread(healthy, f"http://127.0.0.1:{port}", seconds(30))
        first = await until("two worker nodes did not register", lambda ids: len(ids) == 2)
        victim = sorted(first)[0]
        os.kill(int(victim.rsplit("-", 2)[1]), signal.SIGKILL)
        # A new worker registers (a node id not seen before) while the other one stays.
        await until("no new worker registered",
                    lambda ids: (first - {victim}) <= ids and len(ids - first) == 1)
        await asyncio.to_thread(healthy, f"http://127.0.0.1:{port}", seconds(10))
        assert "worker 0" in log.read_text() or "worker 1" in log.read_text()
        assert "was killed by SIGKILL; starting a new one" in log.read_text()
    finally:
        parent.send_signal(signal.SIGTERM)
        await asyncio.to_thread(parent.wait, seconds(30))
        await client.aclose()
    assert parent.returncode == 0, log.read_text()
