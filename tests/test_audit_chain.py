"""The audit log is one sealed chain: `vio audit verify` names the first row altered or deleted.

Rows are written the way the app writes them (sign-ins through the pages, `audit_chain.audit`), then
changed behind the app's back with plain SQL, as someone with the database but not the install's
secret could: rewriting rows and recomputing hashes (plain SHA-256, or an HMAC under another
secret's key), deleting the newest rows and setting the head row back to match.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from tests.conftest import TEST_KEYS, TEST_SECRET, csrf_from, seconds
from vio import audit_chain
from vio.audit_chain import AuditHead, ChainProblem
from vio.cli import main
from vio.db import alembic_config, create_engine, migrate, session_factory
from vio.keys import InstallKeys
from vio.models import AuditChain, AuditEvent

AT = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
ROOT = Path(__file__).parent.parent
OTHER_SECRET = "another-install's-secret"
OTHER_KEYS = InstallKeys.derive(OTHER_SECRET)

Seal = Callable[[AuditEvent, str], str]


def plain_sha256(row: AuditEvent, prev_hash: str) -> str:
    """The chain as it was before it was sealed: SHA-256, which anyone can recompute."""
    body = json.dumps([row.seq, row.at.astimezone(UTC).isoformat(timespec="microseconds"),
                       row.program_id, row.actor, row.action, row.target, row.detail,
                       prev_hash], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def sealed_with(keys: InstallKeys) -> Seal:
    return lambda row, prev_hash: audit_chain.audit_digest(
        keys.audit, row.seq, row.at, row.program_id, row.actor, row.action, row.target,
        row.detail, prev_hash)


async def _write(url: str, count: int, start: int = 0) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine, TEST_KEYS)
        async with session_factory(engine, TEST_KEYS)() as db:
            for n in range(start, start + count):
                await audit_chain.audit(db, AT + timedelta(seconds=n), "staff:1", "test-event",
                                        f"patient:{n}", n=n, note="ünïcode ✓")
            await db.commit()
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _session(url: str, keys: InstallKeys = TEST_KEYS) -> AsyncIterator[AsyncSession]:
    engine = create_engine(url)
    try:
        async with session_factory(engine, keys)() as db:
            yield db
    finally:
        await engine.dispose()


async def _sql(url: str, statement: str, **params: object) -> None:
    async with _session(url) as db:
        await db.execute(text(statement), params)
        await db.commit()


async def _rows(url: str) -> list[AuditEvent]:
    async with _session(url) as db:
        return list((await db.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars())


async def _row(url: str, seq: int) -> AuditEvent:
    return next(row for row in await _rows(url) if row.seq == seq)


async def _rechain_from(url: str, first_seq: int, seal: Seal) -> None:
    """Recompute every hash from row ``first_seq`` on with ``seal``, and the head to match."""
    async with _session(url) as db:
        prev_hash = audit_chain.AUDIT_GENESIS
        for row in (await db.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars():
            if row.seq >= first_seq:
                row.prev_hash, row.hash = prev_hash, seal(row, prev_hash)
            prev_hash = row.hash
        await db.execute(update(AuditChain).values(last_hash=prev_hash))
        await db.commit()


async def _verified(url: str, expect: AuditHead | None = None,
                    keys: InstallKeys = TEST_KEYS) -> audit_chain.ChainReport:
    async with _session(url, keys) as db:
        return await audit_chain.verify_audit_chain(db, expect)


def verify(monkeypatch, capsys, url: str, *options: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("VIO_DATABASE_URL", url)
    monkeypatch.setenv("VIO_SECRET_KEY", TEST_SECRET)
    code = main(["audit", "verify", *options])
    printed = capsys.readouterr()
    return code, printed.out + printed.err


def vio(url: str, data_dir: Path, *args: str, secret: str = TEST_SECRET,
        stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The real ``vio`` command in its own process, configured only by its environment."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("VIO_")}
    env.update(VIO_DATABASE_URL=url, VIO_SECRET_KEY=secret, VIO_DATA_DIR=str(data_dir))
    return subprocess.run([sys.executable, "-m", "vio.cli", *args], cwd=ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=seconds(60),
                          check=False)


def test_an_untouched_chain_verifies(sqlite_url, monkeypatch, capsys):
    asyncio.run(_write(sqlite_url, 12))
    code, said = verify(monkeypatch, capsys, sqlite_url)
    assert code == 0, said
    assert "intact: 12 rows" in said


@pytest.mark.parametrize(("tampering", "named"), [
    ("UPDATE audit_events SET actor = 'staff:99' WHERE seq = 4",
     "audit row 4 (id 4) was altered"),
    ("UPDATE audit_events SET at = :at WHERE seq = 2", "audit row 2 (id 2) was altered"),
    ("UPDATE audit_events SET prev_hash = :h WHERE seq = 1", "audit row 1 (id 1) was altered"),
    ("DELETE FROM audit_events WHERE seq = 7", "audit row 7 is missing: it was deleted"),
    ("DELETE FROM audit_events WHERE seq >= 9", "audit row 9 is missing: it was deleted"),
    ("UPDATE audit_chain SET last_hash = :h",
     "the audit chain's head (table audit_chain) does not match its last row, 10"),
    ("DELETE FROM audit_chain", "the audit chain's head (table audit_chain) is missing"),
])
def test_a_change_behind_the_apps_back_is_named(sqlite_url, monkeypatch, capsys, tampering,
                                                named):
    asyncio.run(_write(sqlite_url, 10))  # a new file: each row's id is its seq
    asyncio.run(_sql(sqlite_url, tampering, h="f" * 64,
                     at=(AT + timedelta(days=1)).replace(tzinfo=None)))
    code, said = verify(monkeypatch, capsys, sqlite_url)
    assert code == 1
    assert said.startswith(f"vio audit verify: {named}"), said


@pytest.mark.parametrize("first_rehashed", [1, 6])
def test_a_row_rewritten_and_the_chain_recomputed_with_sha256_is_caught(
        sqlite_url, monkeypatch, capsys, first_rehashed):
    asyncio.run(_write(sqlite_url, 10))
    asyncio.run(_sql(sqlite_url, "UPDATE audit_events SET action = 'nothing-happened' "
                                 "WHERE seq = 6"))
    asyncio.run(_rechain_from(sqlite_url, first_rehashed, plain_sha256))
    blamed = asyncio.run(_row(sqlite_url, first_rehashed))
    code, said = verify(monkeypatch, capsys, sqlite_url)
    assert code == 1
    assert f"audit row {first_rehashed} (id {blamed.id}) was altered" in said


def test_another_secrets_key_cannot_forge_a_chain_that_verifies(sqlite_url, tmp_path):
    asyncio.run(_write(sqlite_url, 8))
    asyncio.run(_sql(sqlite_url, "UPDATE audit_events SET target = 'patient:77' WHERE seq = 4"))
    asyncio.run(_rechain_from(sqlite_url, 4, sealed_with(OTHER_KEYS)))
    report = asyncio.run(_verified(sqlite_url))
    assert report.broken is not None and report.broken.seq == 4
    assert report.broken.problem is ChainProblem.ALTERED and report.rows == 3
    asyncio.run(_rechain_from(sqlite_url, 1, sealed_with(OTHER_KEYS)))
    report = asyncio.run(_verified(sqlite_url))
    assert report.broken is not None and report.broken.seq == 1
    assert report.head == AuditHead(0, audit_chain.AUDIT_GENESIS)
    assert asyncio.run(_verified(sqlite_url, keys=OTHER_KEYS)).broken is None
    ran = vio(sqlite_url, tmp_path, "audit", "verify")
    assert ran.returncode == 1 and "audit row 1 (id " in ran.stderr, ran.stderr


def test_deleting_the_tail_and_setting_the_head_back_is_caught_by_a_head_kept_elsewhere(
        sqlite_url, tmp_path):
    asyncio.run(_write(sqlite_url, 10))
    kept = vio(sqlite_url, tmp_path, "audit", "head")
    assert kept.returncode == 0, kept.stderr
    row_7 = asyncio.run(_row(sqlite_url, 7))
    asyncio.run(_sql(sqlite_url, "DELETE FROM audit_events WHERE seq > 7"))
    asyncio.run(_sql(sqlite_url, "UPDATE audit_chain SET length = 7, last_hash = :h",
                     h=row_7.hash))

    unaided = vio(sqlite_url, tmp_path, "audit", "verify")
    assert unaided.returncode == 0  # without a head kept elsewhere the cut cannot be seen
    expected = kept.stdout.split()[-1]
    caught = vio(sqlite_url, tmp_path, "audit", "verify", "--expect", expected)
    assert caught.returncode == 1
    assert caught.stderr.startswith(
        f"vio audit verify: audit rows from 8 on are missing: the chain ends at row 7, before "
        f"the head kept elsewhere ({expected})"), caught.stderr
    assert caught.stdout == ""

    report = asyncio.run(_verified(sqlite_url, AuditHead.parse(kept.stdout)))
    assert report.broken is not None and report.broken.problem is ChainProblem.CUT_SHORT
    assert report.broken.seq == 8 and report.head == AuditHead(7, row_7.hash)


def test_the_head_printed_round_trips_into_expect(sqlite_url, tmp_path, monkeypatch, capsys):
    asyncio.run(_write(sqlite_url, 5))
    printed = vio(sqlite_url, tmp_path, "audit", "head")
    assert printed.returncode == 0 and printed.stderr == ""
    row_5 = asyncio.run(_row(sqlite_url, 5))
    assert printed.stdout == f"audit head 5:{row_5.hash}\n"

    asyncio.run(_write(sqlite_url, 3, start=5))  # the chain goes on past the head kept
    for pasted in (printed.stdout.split()[-1], printed.stdout.strip()):
        code, said = verify(monkeypatch, capsys, sqlite_url, "--expect", pasted)
        assert code == 0, said
        assert said.startswith("audit chain intact: 8 rows, head 8:")
        assert f"the expected head 5:{row_5.hash} is on it" in said

    as_json = json.loads(vio(sqlite_url, tmp_path, "audit", "head", "--json").stdout)
    row_8 = asyncio.run(_row(sqlite_url, 8))
    assert as_json["intact"] is True and as_json["head"] == f"8:{row_8.hash}"
    code, said = verify(monkeypatch, capsys, sqlite_url, "--expect", f"0:{'0' * 64}")
    assert code == 0, said


def test_a_head_kept_elsewhere_catches_a_rewrite_by_whoever_holds_the_key(
        sqlite_url, monkeypatch, capsys):
    asyncio.run(_write(sqlite_url, 6))
    kept = AuditHead(5, asyncio.run(_row(sqlite_url, 5)).hash)
    asyncio.run(_sql(sqlite_url, "UPDATE audit_events SET target = 'patient:77' WHERE seq = 2"))
    asyncio.run(_rechain_from(sqlite_url, 2, sealed_with(TEST_KEYS)))
    assert asyncio.run(_verified(sqlite_url)).broken is None  # the key's holder can reseal
    code, said = verify(monkeypatch, capsys, sqlite_url, "--expect", str(kept), "--json")
    assert code == 1
    result = json.loads(said.splitlines()[0])
    assert result["intact"] is False and result["holds_through"].startswith("4:"), said
    sentence = (f"audit row 5 (id 5) does not have the hash of the head kept elsewhere "
                f"({kept}): the chain was rewritten up to there, or that head is another "
                f"install's")
    assert result["problem"] == {"kind": "not-expected", "seq": 5, "audit_id": 5,
                                 "message": sentence}
    assert f"vio audit verify: {sentence} (rows 1 to 4 hold)" in said


@pytest.mark.parametrize("bad", ["12", f"x:{'a' * 64}", f"-1:{'a' * 64}", "12:abc",
                                 f"12:{'g' * 64}", "", f"12:{'a' * 64} 13:{'b' * 64}"])
def test_a_malformed_expected_head_is_refused_with_exit_2(sqlite_url, monkeypatch, capsys,
                                                          bad):
    asyncio.run(_write(sqlite_url, 1))
    with pytest.raises(SystemExit) as refused:
        verify(monkeypatch, capsys, sqlite_url, f"--expect={bad}")
    assert refused.value.code == 2
    said = capsys.readouterr().err
    assert "is not an audit head: give it as `vio audit head` prints it, SEQ:HASH" in said


def test_head_refuses_a_chain_that_does_not_hold(sqlite_url, tmp_path):
    asyncio.run(_write(sqlite_url, 4))
    asyncio.run(_sql(sqlite_url, "DELETE FROM audit_events WHERE seq = 2"))
    printed = vio(sqlite_url, tmp_path, "audit", "head")
    assert printed.returncode == 1 and printed.stdout == ""
    assert ("the audit chain does not hold, so it has no head to keep: audit row 2 is "
            "missing: it was deleted (row 1 holds)") in printed.stderr


async def _staff_with_seed(url: str, seed: str) -> int:
    from vio.models import Program, StaffRole, StaffUser
    from vio.security import seal_totp_seed

    async with _session(url) as db:
        program = Program(name="Reseal program", timezone="America/Chicago")
        db.add(program)
        await db.flush()
        staff = StaffUser(program_id=program.id, name="Ada Admin", email="ada@example.org",
                          role=StaffRole.ADMIN, password_hash="not used")
        db.add(staff)
        await db.flush()
        staff.totp_secret = seal_totp_seed(TEST_KEYS, staff.id, seed)
        await db.commit()
        return staff.id


async def _seed_of(url: str, staff_id: int, keys: InstallKeys) -> str | None:
    from vio.models import StaffUser
    from vio.security import open_totp_seed

    async with _session(url, keys) as db:
        staff = await db.get(StaffUser, staff_id)
        assert staff is not None
        return open_totp_seed(keys, staff_id, staff.totp_secret)


def test_reseal_moves_a_chain_that_holds_to_a_new_secret(sqlite_url, tmp_path):
    asyncio.run(_write(sqlite_url, 5))
    seed = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    staff_id = asyncio.run(_staff_with_seed(sqlite_url, seed))
    head_before = AuditHead(5, asyncio.run(_row(sqlite_url, 5)).hash)
    new_secret = "the-new-secret"
    wrong = vio(sqlite_url, tmp_path, "audit", "reseal", secret=new_secret,
                stdin="not-the-old-secret\n")
    assert wrong.returncode == 1 and "nothing changed" in wrong.stderr
    assert asyncio.run(_row(sqlite_url, 5)).hash == head_before.hash
    done = vio(sqlite_url, tmp_path, "audit", "reseal", secret=new_secret,
               stdin=f"{TEST_SECRET}\n")
    assert done.returncode == 0, done.stderr
    assert f"up to head {head_before}" in done.stdout
    assert asyncio.run(_verified(sqlite_url)).broken is not None  # the old key no longer seals
    report = asyncio.run(_verified(sqlite_url, keys=InstallKeys.derive(new_secret)))
    assert report.broken is None and report.rows == 6
    record = asyncio.run(_row(sqlite_url, 6))
    assert record.action == "audit-chain-resealed"
    assert record.detail == {"old_head": str(head_before)}
    # The second-factor seeds moved with it, in the same transaction.
    assert "second-factor seeds resealed under the new secret: 1" in done.stdout
    assert asyncio.run(_seed_of(sqlite_url, staff_id, InstallKeys.derive(new_secret))) == seed


async def test_the_apps_own_rows_chain_and_are_scoped_to_their_program(client, demo, db):
    token = csrf_from(client.get("/login").text)
    assert client.post("/login", data={"email": "admin@demo.vio", "password": "wrong",
                                       "csrf_token": token}).status_code == 401
    client.post("/login", data={"email": "admin@demo.vio", "password": "demo-admin",
                                "csrf_token": token})
    assert client.get(f"/staff/patients/{demo.patients['Dana Reyes'].id}").status_code == 200
    report = await audit_chain.verify_audit_chain(db)
    assert report.broken is None and report.rows >= 3
    rows = (await db.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars().all()
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    views = [r for r in rows if r.action == "patient-record-view"]
    assert views and views[0].program_id == demo.program.id
    failed = next(r for r in rows if r.action == "sign-in-failed")
    assert failed.program_id is None  # a failed sign-in names no program
    head = await db.get(AuditChain, 1)
    assert head is not None and head.length == len(rows) and head.last_hash == rows[-1].hash
    assert rows[-1].hash == sealed_with(TEST_KEYS)(rows[-1], rows[-1].prev_hash)


async def test_concurrent_writers_keep_one_chain(engine):
    factory = session_factory(engine, TEST_KEYS)

    async def writer(n: int) -> None:
        async with factory() as db:
            await audit_chain.audit(db, AT, f"staff:{n}", "concurrent", "program:1", n=n)
            await db.commit()

    await asyncio.gather(*(writer(n) for n in range(20)))
    async with factory() as db:
        report = await audit_chain.verify_audit_chain(db)
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
    report = await _verified(postgres_url)
    assert report.broken is None and report.rows == 46


def test_rows_written_before_the_chain_existed_are_chained_by_the_migrations(
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
                await audit_chain.audit(db, AT, "cli:root", "new-event", "program:1")
                await db.commit()
                rows = (await db.execute(select(AuditEvent).order_by(AuditEvent.seq))
                        ).scalars().all()
                assert [(r.action, r.program_id) for r in rows] == [
                    ("old-event", 1), ("old-event", 1), ("old-event", 1),
                    ("audit-chain-sealed", None), ("new-event", 1)]
                assert rows[3].detail["old_rows"] == 3 and rows[3].detail["old_chain_held"]
        finally:
            await engine.dispose()

    asyncio.run(before_and_after())
    code, said = verify(monkeypatch, capsys, sqlite_url)
    assert code == 0 and "intact: 5 rows" in said, said


# --- migration 0008: an existing plain chain is checked, then sealed ---------------------------

@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    if request.param == "sqlite":
        return sqlite_url
    url: str = request.getfixturevalue("postgres_url")
    return url


async def _old_install(url: str, count: int) -> None:
    """A database at revision 0007 holding ``count`` rows chained the old way (SHA-256)."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c, TEST_KEYS), "0007"))
            prev_hash = audit_chain.AUDIT_GENESIS
            for n in range(1, count + 1):
                row = AuditEvent(seq=n, at=AT + timedelta(minutes=n), program_id=None,
                                 actor="staff:1", action="old-event", target=f"patient:{n}",
                                 detail={"n": n, "note": "ünïcode ✓"})
                digest = plain_sha256(row, prev_hash)
                await conn.execute(insert(AuditEvent).values(
                    seq=row.seq, at=row.at, program_id=None, actor=row.actor,
                    action=row.action, target=row.target, detail=row.detail,
                    prev_hash=prev_hash, hash=digest))
                prev_hash = digest
            await conn.execute(update(AuditChain).values(length=count, last_hash=prev_hash))
    finally:
        await engine.dispose()


async def _migrate_to_head(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine, TEST_KEYS)
    finally:
        await engine.dispose()


async def test_the_migration_seals_an_honest_old_chain(database_url):
    url = database_url
    await _old_install(url, 6)
    old = await _rows(url)
    await _migrate_to_head(url)
    report = await _verified(url)
    assert report.broken is None and report.rows == 7
    rows = await _rows(url)
    assert [(r.id, r.target) for r in rows[:6]] == [(r.id, r.target) for r in old]
    assert all(r.hash != o.hash for r, o in zip(rows, old, strict=False))
    record = rows[6]
    assert (record.actor, record.action, record.target, record.program_id) == (
        "migration:0008", "audit-chain-sealed", "audit-chain", None)
    assert record.detail == {
        "scheme": "hmac-sha256", "old_scheme": "sha256", "old_rows": 6, "old_head_seq": 6,
        "old_head_hash": old[-1].hash, "old_chain_held": True, "old_chain_problems": [],
        "old_chain_problem_count": 0, "renumbered": False}


async def test_the_migration_seals_a_broken_old_chain_and_says_where(database_url,
                                                                      caplog):
    url = database_url
    await _old_install(url, 6)
    old = await _rows(url)
    await _sql(url, "DELETE FROM audit_events WHERE seq = 3")
    await _sql(url, "UPDATE audit_events SET actor = 'staff:9' WHERE seq = 5")
    await _migrate_to_head(url)
    report = await _verified(url)
    assert report.broken is None and report.rows == 6  # five old rows and the record
    rows = await _rows(url)
    assert [r.target for r in rows[:5]] == [f"patient:{n}" for n in (1, 2, 4, 5, 6)]
    assert rows[5].action == "audit-chain-sealed"
    assert rows[5].detail["old_chain_held"] is False
    assert rows[5].detail["old_chain_problems"] == [
        "audit row 3 is missing: it was deleted", f"audit row 5 (id {old[4].id}) was altered"]
    assert rows[5].detail["old_chain_problem_count"] == 2
    assert rows[5].detail["renumbered"] is True
    assert (rows[5].detail["old_rows"], rows[5].detail["old_head_seq"],
            rows[5].detail["old_head_hash"]) == (5, 6, old[-1].hash)
    assert "the audit chain did not hold before it was converted to hmac-sha256: audit row 3 " \
           "is missing" in caplog.text


@pytest.mark.parametrize(("tampering", "problems", "renumbered"), [
    ("UPDATE audit_events SET prev_hash = :h WHERE seq = 1",
     ["audit row 1 (id 1) was altered"], False),
    ("DELETE FROM audit_events WHERE seq >= 4",
     ["audit rows 4 to 5 are missing: they were deleted (the newest)"], False),
    ("UPDATE audit_chain SET last_hash = :h",
     [f"the audit chain's head (table audit_chain) says row 5, {'f' * 64}, which is not its "
      f"last row: one of them was altered"], False),
    ("DELETE FROM audit_chain",
     ["the audit chain's head (table audit_chain) is missing: it was deleted"], False),
    ("UPDATE audit_events SET seq = seq + 10 WHERE seq >= 4",
     ["audit rows 4 to 13 are missing: they were deleted",
      "audit row 14 (id 4) was altered", "audit row 15 (id 5) was altered",
      "the audit chain's head (table audit_chain) says row 5, {head}, which is not its "
      "last row: one of them was altered"], True),
])
def test_the_migration_names_each_kind_of_old_tampering(sqlite_url, tampering, problems,
                                                        renumbered):
    asyncio.run(_old_install(sqlite_url, 5))
    old_head = asyncio.run(_row(sqlite_url, 5)).hash
    asyncio.run(_sql(sqlite_url, tampering, h="f" * 64))
    asyncio.run(_migrate_to_head(sqlite_url))
    assert asyncio.run(_verified(sqlite_url)).broken is None
    record = asyncio.run(_rows(sqlite_url))[-1]
    assert record.action == "audit-chain-sealed" and record.detail["old_chain_held"] is False
    assert record.detail["old_chain_problems"] == [p.format(head=old_head) for p in problems]
    assert record.detail["renumbered"] is renumbered


def test_the_migration_refuses_to_run_without_the_installs_keys(sqlite_url):
    async def by_hand() -> None:
        await _old_install(sqlite_url, 2)
        engine = create_engine(sqlite_url)
        try:
            with pytest.raises(RuntimeError, match="run `vio migrate` with the settings"):
                async with engine.begin() as conn:
                    await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0008"))
            async with engine.connect() as conn:
                version = (await conn.execute(text("SELECT version_num FROM alembic_version"))
                           ).scalar_one()
            assert version == "0007"
        finally:
            await engine.dispose()

    asyncio.run(by_hand())
    rows = asyncio.run(_rows(sqlite_url))
    assert rows[1].hash == plain_sha256(rows[1], rows[0].hash)  # left as it was


def test_downgrading_unseals_the_chain_with_a_record(sqlite_url):
    async def up_and_down() -> None:
        await _old_install(sqlite_url, 3)
        engine = create_engine(sqlite_url)
        try:
            for target in ("0008", "0007"):
                async with engine.begin() as conn:
                    move = command.upgrade if target == "0008" else command.downgrade
                    await conn.run_sync(
                        lambda c, move=move, target=target: move(alembic_config(c, TEST_KEYS),
                                                                 target))
        finally:
            await engine.dispose()

    asyncio.run(up_and_down())
    rows = asyncio.run(_rows(sqlite_url))
    assert [r.action for r in rows[3:]] == ["audit-chain-sealed", "audit-chain-unsealed"]
    prev_hash = audit_chain.AUDIT_GENESIS
    for row in rows:
        assert row.prev_hash == prev_hash and row.hash == plain_sha256(row, prev_hash)
        prev_hash = row.hash
    assert rows[4].detail["old_scheme"] == "hmac-sha256"
    assert rows[4].detail["old_chain_held"] is True and rows[4].detail["old_rows"] == 4
