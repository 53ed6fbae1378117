"""The outbox under several nodes, on SQLite and PostgreSQL: each message is taken by exactly
one sender (PostgreSQL ``FOR UPDATE SKIP LOCKED``, SQLite's single writer), a dead sender's
claim lapses and the message is taken again under the same Message-ID, and the same reminder
is queued once however many nodes find it due at once."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.conftest import TEST_KEYS
from tests.test_mail import STARTS_AT, build_clinic
from vio import clinic
from vio.db import create_engine, migrate, session_factory
from vio.mail import outbox
from vio.mail.models import MessageKind, MessageStatus, OutboxMessage
from vio.models import SessionKind
from vio.settings import Settings

NODES = 2
SENDERS_PER_NODE = 3
MESSAGES = 40
LEASE = timedelta(seconds=30)
NOW = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    if request.param == "sqlite":
        return sqlite_url
    url: str = request.getfixturevalue("postgres_url")
    return url


def mail_on(url: str) -> Settings:
    return dataclasses.replace(
        Settings.from_env({}, database_url=url, secret_key="test-secret"),
        smtp_url="smtp://127.0.0.1:25", mail_from="appointments@clinic.example.org")


async def test_several_nodes_take_each_message_exactly_once(database_url):
    settings = mail_on(database_url)
    engines = [create_engine(database_url) for _ in range(NODES)]
    try:
        await migrate(engines[0], TEST_KEYS)
        factories = [session_factory(e, TEST_KEYS) for e in engines]
        async with factories[0]() as db:
            world = await build_clinic(db, NOW)
            for n in range(MESSAGES):
                assert await outbox.queue(
                    db, settings, program_id=world.program_id, kind=MessageKind.REMINDER,
                    dedupe_key=f"test:{n}", to=f"p{n}@example.org", now=NOW,
                    patient_id=world.patients["ada"]) is not None
            await db.commit()
            ids = {r.id: r.message_id for r in (await db.execute(
                select(OutboxMessage))).scalars()}

        async def sender(node: int, at: datetime) -> list[tuple[int, str]]:
            taken = []
            while True:
                async with factories[node]() as db:
                    claim = await outbox.claim(db, f"node-{node}", at, LEASE)
                if claim is None:
                    return taken
                taken.append(claim)
                await asyncio.sleep(0)

        async def every_sender(at: datetime) -> list[tuple[int, str]]:
            runs = await asyncio.gather(*(sender(node, at) for node in range(NODES)
                                          for _ in range(SENDERS_PER_NODE)))
            return [claim for run in runs for claim in run]

        first = await every_sender(NOW)
        assert sorted(row for row, _ in first) == sorted(ids)  # each once, none left out
        assert await every_sender(NOW + LEASE / 2) == []  # the claims hold

        # Every sender died: after the lease, each message is taken again, once, same id.
        again = await every_sender(NOW + LEASE + timedelta(seconds=1))
        assert Counter(row for row, _ in again) == Counter(ids.keys())
        async with factories[1]() as db:
            stale = dict(first)
            fresh = dict(again)
            row = next(iter(ids))
            assert not await outbox.finish(db, row, stale[row], status=MessageStatus.SENT)
            assert await outbox.finish(db, row, fresh[row], status=MessageStatus.SENT)
            await db.commit()
            now_ids = {r.id: r.message_id for r in (await db.execute(
                select(OutboxMessage))).scalars()}
        assert now_ids == ids
    finally:
        for engine in engines:
            await engine.dispose()


async def test_the_same_reminder_is_queued_once_however_many_nodes_look(database_url):
    settings = mail_on(database_url)
    engines = [create_engine(database_url) for _ in range(NODES)]
    try:
        await migrate(engines[0], TEST_KEYS)
        factories = [session_factory(e, TEST_KEYS) for e in engines]
        async with factories[0]() as db:
            world = await build_clinic(db, NOW)
            await clinic.schedule_session(db, clinic.SessionPlan(
                program_id=world.program_id, title="Group", kind=SessionKind.GROUP,
                timezone="America/Chicago", duration_minutes=180,
                therapist_ids=(world.admin_id,), group_id=world.group_id), STARTS_AT)
            await db.commit()
        due = STARTS_AT - timedelta(hours=20)

        async def look(node: int) -> int:
            async with factories[node]() as db:
                queued = await outbox.queue_due_reminders(db, settings, due)
                await db.commit()
                return queued

        counts = await asyncio.gather(*(look(node) for node in range(NODES) for _ in range(4)))
        async with factories[0]() as db:
            rows = (await db.execute(select(OutboxMessage))).scalars().all()
        consenting = {world.patients[k] for k in ("ada", "ben", "eve")}  # Dee has no address
        assert sorted(r.patient_id for r in rows) == sorted(consenting)
        assert sum(counts) == len(rows)
        assert {r.kind for r in rows} == {MessageKind.REMINDER}
        assert {r.expires_at for r in rows} == {STARTS_AT - timedelta(minutes=60)}
    finally:
        for engine in engines:
            await engine.dispose()
