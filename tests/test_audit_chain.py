"""The audit log is one hash chain: `vio audit verify` names the first row altered or deleted.

Rows are written the way the app writes them (sign-ins through the pages, `clinic.audit`), then
changed behind the app's back with plain SQL, as someone with the database file could.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from alembic import command
from sqlalchemy import select, text

from tests.conftest import TEST_KEYS, csrf_from
from vio import clinic
from vio.cli import main
from vio.db import alembic_config, create_engine, migrate, session_factory
from vio.models import AuditChain, AuditEvent

AT = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
ROOT = Path(__file__).parent.parent


async def _write(url: str, count: int, start: int = 0) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine, TEST_KEYS)
        async with session_factory(engine, TEST_KEYS)() as db:
            for n in range(start, start + count):
                await clinic.audit(db, AT + timedelta(seconds=n), "staff:1", "test-event",
                                   f"patient:{n}", n=n, note="ünïcode ✓")
            await db.commit()
    finally:
        await engine.dispose()


async def _sql(url: str, statement: str, **params: object) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(statement), params)
    finally:
        await engine.dispose()


async def _row(url: str, seq: int) -> AuditEvent:
    engine = create_engine(url)
    try:
        async with session_factory(engine, TEST_KEYS)() as db:
            return (await db.execute(select(AuditEvent).where(AuditEvent.seq == seq))
                    ).scalar_one()
    finally:
        await engine.dispose()


def verify(monkeypatch, capsys, url: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("VIO_DATABASE_URL", url)
    monkeypatch.setenv("VIO_SECRET_KEY", "test-secret")
    code = main(["audit", "verify"])
    printed = capsys.readouterr()
    return code, printed.out + printed.err


def test_an_untouched_chain_verifies(sqlite_url, monkeypatch, capsys):
    asyncio.run(_write(sqlite_url, 12))
    code, said = verify(monkeypatch, capsys, sqlite_url)
    assert code == 0, said
    assert "intact: 12 rows" in said


def test_altering_a_row_names_it(sqlite_url, monkeypatch, capsys):
    asyncio.run(_write(sqlite_url, 10))
    row = asyncio.run(_row(sqlite_url, 4))
    asyncio.run(_sql(sqlite_url, "UPDATE audit_events SET actor = 'staff:99' WHERE seq = 4"))
    code, said = verify(monkeypatch, capsys, sqlite_url)
    assert code == 1
    assert f"audit row 4 (id {row.id}) was altered" in said


def test_altering_a_row_and_its_hash_still_names_it(sqlite_url, monkeypatch, capsys):
    asyncio.run(_write(sqlite_url, 10))
    row = asyncio.run(_row(sqlite_url, 6))
    forged = clinic.audit_digest(row.seq, row.at, row.program_id, row.actor, "nothing-happened",
                                 row.target, row.detail, row.prev_hash)
    asyncio.run(_sql(sqlite_url, "UPDATE audit_events SET action = 'nothing-happened', "
                                 "hash = :h WHERE seq = 6", h=forged))
    code, said = verify(monkeypatch, capsys, sqlite_url)
    assert code == 1
    assert f"audit row 6 (id {row.id}) was altered" in said


def test_altering_the_detail_or_time_names_the_row(sqlite_url, monkeypatch, capsys):
    asyncio.run(_write(sqlite_url, 5))
    asyncio.run(_sql(sqlite_url, "UPDATE audit_events SET at = :at WHERE seq = 2",
                     at=(AT + timedelta(days=1)).replace(tzinfo=None)))
    code, said = verify(monkeypatch, capsys, sqlite_url)
    assert code == 1 and "audit row 2 " in said and "altered" in said


def test_deleting_a_row_names_it(sqlite_url, monkeypatch, capsys):
    asyncio.run(_write(sqlite_url, 10))
    asyncio.run(_sql(sqlite_url, "DELETE FROM audit_events WHERE seq = 7"))
    code, said = verify(monkeypatch, capsys, sqlite_url)
    assert code == 1
    assert "audit row 7 is missing" in said


def test_deleting_the_newest_rows_is_noticed(sqlite_url, monkeypatch, capsys):
    asyncio.run(_write(sqlite_url, 10))
    asyncio.run(_sql(sqlite_url, "DELETE FROM audit_events WHERE seq >= 9"))
    code, said = verify(monkeypatch, capsys, sqlite_url)
    assert code == 1
    assert "audit row 9 is missing" in said


async def test_the_apps_own_rows_chain_and_are_scoped_to_their_program(client, demo, db):
    token = csrf_from(client.get("/login").text)
    assert client.post("/login", data={"email": "admin@demo.vio", "password": "wrong",
                                       "csrf_token": token}).status_code == 401
    client.post("/login", data={"email": "admin@demo.vio", "password": "demo-admin",
                                "csrf_token": token})
    assert client.get(f"/staff/patients/{demo.patients['Dana Reyes'].id}").status_code == 200
    report = await clinic.verify_audit_chain(db)
    assert report.broken is None and report.rows >= 3
    rows = (await db.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars().all()
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    views = [r for r in rows if r.action == "patient-record-view"]
    assert views and views[0].program_id == demo.program.id
    failed = next(r for r in rows if r.action == "sign-in-failed")
    assert failed.program_id is None  # a failed sign-in names no program
    head = await db.get(AuditChain, 1)
    assert head is not None and head.length == len(rows) and head.last_hash == rows[-1].hash


async def test_concurrent_writers_keep_one_chain(engine):
    factory = session_factory(engine, TEST_KEYS)

    async def writer(n: int) -> None:
        async with factory() as db:
            await clinic.audit(db, AT, f"staff:{n}", "concurrent", "program:1", n=n)
            await db.commit()

    await asyncio.gather(*(writer(n) for n in range(20)))
    async with factory() as db:
        report = await clinic.verify_audit_chain(db)
    assert report.broken is None and report.rows == 20


@pytest.mark.postgres
async def test_writers_in_separate_processes_keep_one_chain_on_postgres(postgres_url):
    await _write(postgres_url, 1)
    script = ("import asyncio, sys; from tests.test_audit_chain import _write; "
              "asyncio.run(_write(sys.argv[1], 15, int(sys.argv[2])))")
    processes = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, postgres_url, str(100 * n), cwd=ROOT)
        for n in range(1, 4)]
    assert [await p.wait() for p in processes] == [0, 0, 0]
    engine = create_engine(postgres_url)
    try:
        async with session_factory(engine, TEST_KEYS)() as db:
            report = await clinic.verify_audit_chain(db)
    finally:
        await engine.dispose()
    assert report.broken is None and report.rows == 46


def test_rows_written_before_the_chain_existed_are_chained_by_the_migration(
        sqlite_url, monkeypatch, capsys):
    async def before_and_after() -> None:
        engine = create_engine(sqlite_url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "room_states"))
                await conn.execute(text(
                    "INSERT INTO programs (name, timezone, emergency_number, "
                    "target_hours_iop_adult, target_hours_iop_adolescent, target_hours_php, "
                    "target_hours_outpatient, present_threshold_percent, "
                    "absences_before_outreach) VALUES ('P', 'UTC', '911', 9, 6, 20, 3, 75, 2)"))
                for n in range(3):
                    await conn.execute(text(
                        "INSERT INTO audit_events (at, actor, action, target, detail) "
                        "VALUES (:at, 'cli:root', 'old-event', 'program:1', :detail)"),
                        {"at": (AT + timedelta(minutes=n)).replace(tzinfo=None),
                         "detail": f'{{"n": {n}}}'})
            await migrate(engine, TEST_KEYS)
            async with session_factory(engine, TEST_KEYS)() as db:
                await clinic.audit(db, AT, "cli:root", "new-event", "program:1")
                await db.commit()
                rows = (await db.execute(select(AuditEvent).order_by(AuditEvent.seq))
                        ).scalars().all()
                assert [r.program_id for r in rows] == [1, 1, 1, 1]
        finally:
            await engine.dispose()

    asyncio.run(before_and_after())
    code, said = verify(monkeypatch, capsys, sqlite_url)
    assert code == 0 and "intact: 4 rows" in said, said


async def test_the_audit_page_shows_the_programs_rows_with_names_local_time_and_filters(
        client, demo, db, clock):
    from vio.models import Program, StaffRole, StaffUser
    from vio.security import hash_password

    other = Program(name="Hillside Program", timezone="America/Denver")
    db.add(other)
    await db.flush()
    db.add(StaffUser(program_id=other.id, name="Robin Vale", email="admin@hillside.test",
                     role=StaffRole.ADMIN, password_hash=hash_password("hillside-admin")))
    await db.commit()
    dana = demo.patients["Dana Reyes"]
    for email, password in (("therapist@demo.vio", "demo-therapist"),
                            ("admin@hillside.test", "hillside-admin")):
        client.cookies.clear()
        csrf = csrf_from(client.get("/login").text)
        client.post("/login", data={"email": email, "password": password, "csrf_token": csrf})
        client.get(f"/staff/patients/{dana.id}")  # the therapist sees her record; Robin can't
    client.cookies.clear()
    csrf = csrf_from(client.get("/login").text)
    client.post("/login", data={"email": "admin@demo.vio", "password": "demo-admin",
                                "csrf_token": csrf})
    page = client.get("/staff/audit").text
    assert "Jordan Alvarez, LCSW" in page and "Dana Reyes" in page  # names, not identities
    assert "Robin Vale" not in page  # the other program's rows are its own
    local = clock.now().astimezone(ZoneInfo("America/Chicago"))
    assert local.strftime("%Y-%m-%d %-I:%M") in page  # program-local time (CST: 12:00 PM)
    assert "America/Chicago" in page
    therapist = f"staff:{demo.therapist.id}"
    mine = client.get(f"/staff/audit?person={therapist}&action=patient-record-view").text
    assert mine.count("<tr>") - 1 == 1 and "patient-record-view" in mine
    assert client.get("/staff/audit?from=2030-01-01").text.count("Nothing matches") == 1
    client.cookies.clear()
    csrf = csrf_from(client.get("/login").text)
    client.post("/login", data={"email": "admin@hillside.test", "password": "hillside-admin",
                                "csrf_token": csrf})
    theirs = client.get("/staff/audit").text
    assert "Robin Vale" in theirs and "Dana Reyes" not in theirs and "Jordan" not in theirs
