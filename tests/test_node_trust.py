"""Nodes that trust nothing, on real node processes, the machine's PostgreSQL and Redis
(``tests.cluster``): forged, unsigned and replayed messages change nothing; a node cut off longer
than its lease stops its copy of the room and the database refuses its old epoch; removals made
on one node, or while Redis was down, reach the room on another.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from tests.cluster import (
    LEASE_SECONDS,
    NODE_HEARTBEAT_SECONDS,
    Cluster,
    PrivateRedis,
    attendance,
    shared_redis,
    wait,
    ws,
)
from tests.conftest import TEST_KEYS, seconds
from tests.wsclient import Client
from vio.bot import WebSession, check_in_at_home, sign_in
from vio.db import create_engine, session_factory
from vio.keys import InstallKeys
from vio.media import announce_host_addresses
from vio.models import (
    AttendanceEvent,
    AttendanceKind,
    Consent,
    ConsentKind,
    Patient,
    SignInSession,
)
from vio.nodes.wire import Outbound

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


async def _roster(cluster: Cluster, base: str,
                  count: int) -> tuple[int, str, list[tuple[int, str]]]:
    """(group session, therapist cookie, [(patient id, cookie)]) signed in at ``base``."""
    links = await cluster.links()
    session_id = next(s["id"] for s in links["sessions"] if s["kind"] == "group")
    therapist = await asyncio.to_thread(sign_in, f"{base}/login", links["therapist"]["email"],
                                        links["therapist"]["password"])
    engine = create_engine(cluster.database_url)
    try:
        async with session_factory(engine, TEST_KEYS)() as db:
            ids = {p.display_name: p.id for p in (await db.execute(select(Patient))).scalars()}
    finally:
        await engine.dispose()
    patients = []
    for patient in [p for p in links["patients"] if p["on_roster"]][:count]:
        web = await asyncio.to_thread(sign_in, patient["link"].replace(cluster.shared, base))
        await asyncio.to_thread(check_in_at_home, web, session_id)
        patients.append((ids[patient["name"]], web.cookie))
    return session_id, therapist.cookie, patients


async def _one(database_url: str, statement):  # type: ignore[no-untyped-def]
    engine = create_engine(database_url)
    try:
        async with session_factory(engine, TEST_KEYS)() as db:
            return (await db.execute(statement)).scalars().first()
    finally:
        await engine.dispose()


def _chats(client: Client) -> list[str]:
    return [m["text"] for m in client.received("chat")]


# --- 1. what a stranger with Redis access publishes -------------------------------------------

async def test_forged_unsigned_replayed_and_junk_messages_change_nothing(cluster):
    b = await cluster.start("b")
    session_id, jordan_cookie, [(dana_id, dana_cookie), (marcus_id, _)] = await _roster(
        cluster, b.base, 2)
    marcus_sign_in = await _one(cluster.database_url, select(SignInSession.id).where(
        SignInSession.patient_id == marcus_id))
    stranger = cluster.redis()
    try:
        async with Client(ws(b.base, session_id), jordan_cookie) as jordan:
            assert (await jordan.join())["type"] == "welcome"
            lease = await cluster.lease(session_id)
            assert lease is not None
            owner = lease[0]  # B
            a = await cluster.start("a")
            to_owner = f"{cluster.prefix}:to:{owner}"
            async with stranger.pubsub() as listening:
                await listening.subscribe(to_owner, f"{cluster.prefix}:to:stranger")
                async with Client(ws(a.base, session_id), dana_cookie) as dana:  # relayed to B
                    assert (await dana.join())["type"] == "welcome"
                    await jordan.expect("participant-joined")
                    await dana.send(type="chat", text="hello", to="room")
                    assert (await jordan.expect("chat"))["text"] == "hello"
                    captured = None
                    deadline = time.monotonic() + seconds(5)
                    while captured is None:
                        assert time.monotonic() < deadline, "the relayed chat was not seen"
                        item = await listening.get_message(timeout=0.5)
                        if item and item["type"] == "message" and b"hello" in item["data"]:
                            captured = item["data"]
                    payload = json.loads(captured.split(b".", 2)[2])
                    dana_conn = payload["body"]["conn"]

                    admin = {"identity": "staff:999", "role": "therapist", "name": "Dr. No",
                             "is_admin": True, "staff_id": 999, "patient_id": None,
                             "family_invite_id": None, "family_member_id": None,
                             "device": None, "program_id": 1, "sign_in_id": None}
                    marcus = {"op": "open", "conn": "stranger/2", "edge": "stranger",
                              "session": session_id, "sign_in": marcus_sign_in, "name": None}
                    forged = [
                        json.dumps({"op": "open", "conn": "stranger/1", "edge": "stranger",
                                    "session": session_id, "name": None, "person": admin}),
                        json.dumps({**marcus, "person": {**admin, "identity":
                                                         f"patient:{marcus_id}"}}),
                        json.dumps({"op": "frame", "conn": dana_conn, "binary": False,
                                    "raw": json.dumps({"type": "chat", "text": "forged",
                                                       "to": "room"})}),
                        b"\x00\xff not json at all",
                    ]
                    for message in forged:
                        await stranger.publish(to_owner, message)
                    wrong_key = Outbound(InstallKeys.derive("not this install's").cluster,
                                         "stranger")
                    await stranger.publish(to_owner, wrong_key.seal(to_owner, marcus,
                                                                    int(time.time() * 1000)))
                    await stranger.publish(to_owner, captured.replace(b"hello", b"HELLO"))
                    await stranger.publish(to_owner, captured)  # a replay
                    await stranger.publish(f"{cluster.prefix}:events", json.dumps({
                        "op": "remove", "field": "patient_id", "value": dana_id,
                        "code": "removed", "text": "Removed.", "keep_out": True}))

                    def dropped(name: str, line: str) -> bool:
                        return line in cluster.log(name)

                    await wait(lambda: all((
                        dropped("b", "on the node channel: unsigned (4 so far)"),
                        dropped("b", "on the node channel: bad-mac (2 so far)"),
                        dropped("b", "on the node channel: replayed (1 so far)"),
                        dropped("b", "on the events channel: unsigned (1 so far)"),
                        dropped("a", "on the events channel: unsigned (1 so far)"))),
                        10, "every forgery counted and logged", cluster)
                    # The node goes on relaying the real participant, both ways.
                    await dana.send(type="chat", text="after", to="room")
                    assert (await jordan.expect("chat"))["text"] == "after"
                    await jordan.send(type="chat", text="back", to="room")
                    assert (await dana.expect("chat", text="back"))["text"] == "back"
                    assert _chats(jordan) == ["hello", "after", "back"]
                    assert len(jordan.received("participant-joined")) == 1
                    assert all(m["waiting"] == [] for m in jordan.received("waiting-list"))
                    assert not dana.received("refused") and dana.close_code is None
                    answered = await listening.get_message(timeout=0.5)
                    while answered is not None:  # nothing went back to the forged edge
                        assert answered["channel"] != f"{cluster.prefix}:to:stranger".encode()
                        answered = await listening.get_message(timeout=0.5)
    finally:
        await stranger.aclose()
    assert "Dr. No" not in cluster.logs() and "hello" not in cluster.logs()  # no content logged


# --- 3. a partition: the owner is cut off longer than its lease ------------------------------

def _spans(events: list[AttendanceEvent]) -> dict[str, list[tuple[datetime, datetime]]]:
    """Each person's connections in the room: from ``admitted`` to the event that ends them,
    else to the last heartbeat that lists them (or the session's end that does)."""
    opened: dict[str, tuple[str, datetime]] = {}
    last: dict[str, datetime] = {}
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    for event in events:
        if event.kind is AttendanceKind.ADMITTED and event.connection and event.person:
            opened[event.connection] = (event.person, event.at)
            last[event.connection] = event.at
        elif event.kind in (AttendanceKind.HEARTBEAT, AttendanceKind.SESSION_ENDED):
            for connection in event.detail.get("present", []):
                if connection in opened:
                    last[connection] = event.at
        elif event.kind in (AttendanceKind.LEFT, AttendanceKind.DROPPED,
                            AttendanceKind.REMOVED) and event.connection in opened:
            last[event.connection] = event.at
            person, start = opened.pop(event.connection)
            spans.setdefault(person, []).append((start, event.at))
    for connection, (person, start) in opened.items():
        spans.setdefault(person, []).append((start, last[connection]))
    return spans


async def test_a_cut_off_owner_stops_its_copy_and_its_old_epoch_is_refused(cluster):
    b = await cluster.start("b")
    session_id, jordan_cookie, [(dana_id, dana_cookie)] = await _roster(cluster, b.base, 1)
    async with Client(ws(b.base, session_id), jordan_cookie) as jordan, \
            Client(ws(b.base, session_id), dana_cookie) as dana:
        assert (await jordan.join())["type"] == "welcome"
        assert (await dana.join())["type"] == "welcome"
        old = await cluster.lease(session_id)
        assert old is not None
        a = await cluster.start("a")

        async def b_heartbeats() -> int:
            return len([e for e in await attendance(cluster.database_url, session_id,
                                                    AttendanceKind.HEARTBEAT)
                        if e.epoch == old[1]])

        deadline = time.monotonic() + seconds(10)
        while await b_heartbeats() < 2:  # B's room has saved its state and seats
            assert time.monotonic() < deadline, cluster.logs()
            await asyncio.sleep(0.2)

        await asyncio.sleep(0.3)  # past the heartbeat's writes: B holds no row lock
        b.process.send_signal(signal.SIGSTOP)  # B is cut off: no renewals, no writes
        deadline = time.monotonic() + seconds(LEASE_SECONDS + 5)
        while (await cluster.lease(session_id) or ("",))[0] == old[0]:
            assert time.monotonic() < deadline, "B's lease did not lapse"
            await asyncio.sleep(0.1)
        dana_on_a = Client(ws(a.base, session_id), dana_cookie)
        await dana_on_a.connect()
        try:
            assert (await dana_on_a.join())["type"] == "welcome"  # her seat, kept, on A
            new = await cluster.lease(session_id)
            assert new is not None and new[0] != old[0] and new[1] > old[1]

            stale = AttendanceEvent(session_id=session_id, at=datetime.now(UTC),
                                    kind=AttendanceKind.HEARTBEAT, detail={"present": []},
                                    epoch=old[1])
            engine = create_engine(cluster.database_url)
            try:
                async with session_factory(engine, TEST_KEYS)() as db:
                    db.add(stale)
                    with pytest.raises(DBAPIError, match="stale room epoch"):
                        await db.commit()
                async with engine.begin() as conn:
                    with pytest.raises(DBAPIError, match="stale room epoch"):
                        await conn.execute(text(
                            "UPDATE room_states SET epoch = :epoch WHERE session_id = :s"),
                            {"epoch": old[1], "s": session_id})
            finally:
                await engine.dispose()

            b.process.send_signal(signal.SIGCONT)
            # Within about a heartbeat B stops its copy: its clients are sent to reconnect.
            assert await jordan.closed(within=NODE_HEARTBEAT_SECONDS + 3) == 1012
            assert await dana.closed(within=2) == 1012
            async with Client(ws(b.base, session_id), jordan_cookie) as jordan_again, \
                    Client(ws(b.base, session_id), dana_cookie) as dana_again:
                welcome = await jordan_again.join()  # through B, to the room on A
                assert welcome["type"] == "welcome"
                assert (await dana_again.join())["type"] == "welcome"
                assert await dana_on_a.closed() == 4001  # her newest window took the seat
                seated = (await jordan_again.expect("participant-joined"))["participant"]
                assert seated["role"] == "patient"
                assert [p["role"] for p in welcome["participants"]] == ["patient"]
                await jordan_again.send(type="end")
                await jordan_again.expect("ended")
        finally:
            await dana_on_a.close()

    events = await attendance(cluster.database_url, session_id)
    epochs = sorted({e.epoch for e in events if e.epoch is not None})
    assert epochs == [old[1], new[1]]
    by_b = [e for e in events if e.epoch == old[1]]
    by_a = [e for e in events if e.epoch == new[1]]
    # One owner at a time: everything B wrote comes before anything A wrote.
    assert max(e.id for e in by_b) < min(e.id for e in by_a)
    assert max(e.at for e in by_b) <= min(e.at for e in by_a)
    assert any(e.kind is AttendanceKind.ADMITTED for e in by_a)
    for person, spans in _spans(events).items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, (person, spans)  # never in the room twice at once
    assert f"patient:{dana_id}" in _spans(events)
    b_log = cluster.log("b")
    assert f"epoch {old[1]}" in b_log and "stopping it here" in b_log
    assert "stopping it here" not in cluster.log("a")


# --- 4. removals reach every node, also after Redis was away ----------------------------------

@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _revoke_group_consent(admin: WebSession, database_url: str, patient_id: int) -> None:
    consent_id = await _one(database_url, select(Consent.id).where(
        Consent.patient_id == patient_id, Consent.kind == ConsentKind.GROUP_PARTICIPATION))
    status = await asyncio.to_thread(admin.post_form, f"/staff/patients/{patient_id}/family",
                                     {"action": "revoke-consent", "consent_id": str(consent_id)})
    assert status == 303


async def test_a_consent_revoked_on_one_node_removes_the_patient_on_another_even_after_redis_was_down(  # noqa: E501
        tmp_path, postgres_url, private_redis):
    # The rooms' own re-check is slow here, so only the removal path can be what works.
    cluster = Cluster(tmp_path, postgres_url, private_redis.url,
                      VIO_ROOM_RECHECK_SECONDS="600")
    try:
        b = await cluster.start("b")
        session_id, jordan_cookie, [(dana_id, dana_cookie), (marcus_id, marcus_cookie)] = \
            await _roster(cluster, b.base, 2)
        url = ws(b.base, session_id)
        async with Client(url, jordan_cookie) as jordan, Client(url, dana_cookie) as dana, \
                Client(url, marcus_cookie) as marcus:
            for client in (jordan, dana, marcus):
                assert (await client.join())["type"] == "welcome"
            a = await cluster.start("a")
            admin = await asyncio.to_thread(WebSession, a.base)
            await asyncio.to_thread(admin.post_form, "/login", {"email": "admin@demo.vio",
                                                                "password": "demo-admin"})
            await _revoke_group_consent(admin, cluster.database_url, dana_id)
            refused = await dana.expect("refused", within=2)
            assert refused["code"] == "consent-missing"

            private_redis.stop()
            await _revoke_group_consent(admin, cluster.database_url, marcus_id)
            await asyncio.sleep(seconds(2))
            assert not marcus.received("refused")  # nothing reached B: Redis is away
            private_redis.start()
            refused = await marcus.expect("refused", within=5)
            assert refused["code"] == "consent-missing"
            assert await marcus.closed() == 4403
            assert not jordan.received("refused") and jordan.close_code is None
        assert "re-checking the rooms' people" in cluster.log("b")
    finally:
        cluster.close()
