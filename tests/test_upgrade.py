"""Upgrading from 0.1.0 loses nothing: a database made by 0.1.0's migrations (0001 to 0007) and
filled in every table (``tests.release_0_1_0``) goes through the real `vio migrate`, on SQLite
and on PostgreSQL, and every row comes out.

Every column 0.1.0 had keeps its value, but for the few a migration transforms on purpose,
which are checked by what they mean instead:

- 0008 re-seals the audit chain under the install's key: each row keeps its sequence number,
  moment, program, actor, action, target and detail; its hashes are new, the chain verifies
  (`vio audit verify`) under the install's secret and not under another; the log may gain the
  row that records the sealing, and nothing else.
- 0010 encrypts second-factor seeds at rest: the column no longer holds the seed, the
  install's key opens it to the very seed (another install's does not), and the therapist's
  authenticator app, set up under 0.1.0, still signs her in.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, select
from sqlalchemy.engine import Connection
from starlette.testclient import TestClient

from tests import release_0_1_0 as release
from tests.conftest import TEST_KEYS, TEST_SECRET, csrf_from, seconds
from vio.app import create_app
from vio.clock import OffsetClock
from vio.db import alembic_config, create_engine
from vio.keys import InstallKeys
from vio.security import SeedUnreadable, open_totp_seed
from vio.settings import Settings

VIO = str(Path(sys.executable).with_name("vio"))
SEALING_ACTION = "audit-chain-sealed"
OTHER_SECRET = "not-this-install-s-secret"
# Columns a migration rewrites on purpose; each is checked by meaning, never left unchecked.
TRANSFORMED = {
    "audit_events": {"hash", "prev_hash"},  # 0008: re-sealed under the install's key
    "audit_chain": {"length", "last_hash"},  # 0008: the head follows the re-sealed chain
    "staff_users": {"totp_secret"},  # 0010: encrypted at rest
}
SIGN_IN_AT = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)

Rows = dict[str, dict[tuple[Any, ...], dict[str, Any]]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    if request.param == "sqlite":
        return sqlite_url
    url: str = request.getfixturevalue("postgres_url")
    return url


def _columns(table: str) -> set[str]:
    return set(release.ROWS[table][0])


def _covered(tables: dict[str, set[str]]) -> None:
    unfilled = sorted(set(tables) - set(release.ROWS))
    assert not unfilled, f"0.1.0 has tables the fixture leaves empty: {unfilled}"
    assert set(release.ROWS) == set(tables), "the fixture fills tables 0.1.0 did not have"
    for table, columns in tables.items():
        rows = release.ROWS[table]
        assert len(rows) >= 2 or table == "audit_chain", f"{table}: fewer than 2 rows"
        for row in rows:
            assert set(row) == columns, (
                f"{table} row {row}: columns not given {sorted(columns - set(row))}, "
                f"unknown {sorted(set(row) - columns)}")


async def build_release_0_1_0(url: str) -> None:
    """0.1.0's schema by 0.1.0's migrations, then its data in every table."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync, TEST_KEYS),
                                                             release.REVISION))
            _covered(await conn.run_sync(release.schema))
            await conn.run_sync(release.fill)
    finally:
        await engine.dispose()


def _vio(url: str, data_dir: Path, *args: str,
         secret: str = TEST_SECRET) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIO_")}
    env.update(VIO_DATABASE_URL=url, VIO_SECRET_KEY=secret, VIO_DATA_DIR=str(data_dir))
    return subprocess.run([VIO, *args], env=env, cwd=data_dir, capture_output=True, text=True,
                          timeout=seconds(120))


async def vio(url: str, data_dir: Path, *args: str,
              secret: str = TEST_SECRET) -> subprocess.CompletedProcess[str]:
    """The installed `vio` command, in a process of its own, on the database at ``url``."""
    return await asyncio.to_thread(_vio, url, data_dir, *args, secret=secret)


async def upgraded(url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    await build_release_0_1_0(url)
    migrated = await vio(url, data_dir, "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    return migrated


def _read(conn: Connection) -> tuple[Rows, dict[str, list[str]]]:
    """For each of 0.1.0's tables, its rows by primary key (0.1.0's columns only), and the
    columns of each primary key."""
    metadata = MetaData()
    metadata.reflect(conn)
    found: Rows = {}
    keys: dict[str, list[str]] = {}
    for name in release.ROWS:
        assert name in metadata.tables, f"table {name} is gone"
        table = metadata.tables[name]
        dropped = sorted(_columns(name) - set(table.c.keys()))
        assert not dropped, f"{name} lost columns {dropped}"
        keys[name] = release.primary_key(conn, name)
        rows = conn.execute(select(*(table.c[c] for c in sorted(_columns(name))))
                            .order_by(*(table.c[c] for c in keys[name]))).mappings()
        found[name] = {tuple(row[c] for c in keys[name]): dict(row) for row in rows}
    return found, keys


async def read(url: str) -> tuple[Rows, dict[str, list[str]]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_read)
    finally:
        await engine.dispose()


def _written(keys: dict[str, list[str]]) -> Rows:
    """The fixture's rows, by the same primary keys."""
    return {name: {tuple(row[c] for c in keys[name]): row for row in rows}
            for name, rows in release.ROWS.items()}


def _changed(before: Rows, after: Rows) -> list[str]:
    """Every value of an untransformed 0.1.0 column that differs, and every row lost."""
    changes = []
    for table, rows in before.items():
        for key, row in rows.items():
            if key not in after[table]:
                changes.append(f"{table} {key}: row lost")
                continue
            for column, value in row.items():
                now = after[table][key][column]
                if column not in TRANSFORMED.get(table, set()) and now != value:
                    changes.append(f"{table} {key} {column}: {value!r} became {now!r}")
    return changes


# --- every row survives ---------------------------------------------------------------------

async def test_every_row_of_0_1_0_survives_vio_migrate(database_url: str, tmp_path: Path) -> None:
    await upgraded(database_url, tmp_path)
    after, keys = await read(database_url)
    before = _written(keys)
    assert _changed(before, after) == []

    for table, rows in before.items():
        gained = sorted(set(after[table]) - set(rows))
        if table != "audit_events":
            assert not gained, f"{table} gained rows {gained}"
    audit = sorted(after["audit_events"].values(), key=lambda row: row["seq"])
    originals = len(before["audit_events"])
    assert [row["seq"] for row in audit] == list(range(1, len(audit) + 1))
    sealing = audit[originals:]
    assert [row["action"] for row in sealing] == [SEALING_ACTION] * len(sealing), \
        "the upgrade may add the sealing row to the audit log, no other"
    for row in sealing:  # what the sealing found: 0.1.0's chain, whole
        assert row["detail"].get("old_chain_held") is True, row["detail"]
        assert row["detail"].get("old_head_hash") == release.AUDIT_EVENTS[-1]["hash"]
    [head] = after["audit_chain"].values()
    assert (head["length"], head["last_hash"]) == (len(audit), audit[-1]["hash"])

    staff = after["staff_users"]
    assert [key for key, row in staff.items() if row["totp_secret"] is None] == [(2,)], \
        "a seed was lost, or one appeared"

    verified = await vio(database_url, tmp_path, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"intact: {len(audit)} rows" in verified.stdout


def _named(output: str, revisions: list[str]) -> list[str]:
    return [r for r in revisions if re.search(rf"(?<![\w.]){re.escape(r)}(?![\w.])", output)]


async def test_vio_migrate_names_the_migrations_it_applied_then_says_up_to_date(
        database_url: str, tmp_path: Path) -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    every = [s.revision for s in scripts.walk_revisions()]
    since = [s.revision for s in scripts.iterate_revisions("heads", release.REVISION)]
    assert {"0008", "0009", "0010"} <= set(since)

    first = await upgraded(database_url, tmp_path)
    assert sorted(_named(first.stdout, every)) == sorted(since), first.stdout

    second = await vio(database_url, tmp_path, "migrate")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "up to date" in second.stdout
    assert _named(second.stdout, every) == [], second.stdout


# --- the columns 0008 and 0010 transform --------------------------------------------------------

async def test_the_upgraded_audit_chain_is_sealed_with_the_install_key(
        database_url: str, tmp_path: Path) -> None:
    await upgraded(database_url, tmp_path)
    after = (await read(database_url))[0]["audit_events"]
    kept = [row["seq"] for row in release.AUDIT_EVENTS
            if after[(row["id"],)]["hash"] == row["hash"]]
    assert kept == [], "rows still carry 0.1.0's unkeyed SHA-256"

    ours = await vio(database_url, tmp_path, "audit", "verify")
    assert ours.returncode == 0, ours.stdout + ours.stderr
    theirs = await vio(database_url, tmp_path, "audit", "verify", secret=OTHER_SECRET)
    assert theirs.returncode == 1, theirs.stdout
    assert "audit row 1 (id 1) was altered" in theirs.stderr


async def test_second_factor_seeds_are_no_longer_kept_in_the_clear(
        database_url: str, tmp_path: Path) -> None:
    await upgraded(database_url, tmp_path)
    stored = {key[0]: row["totp_secret"]
              for key, row in (await read(database_url))[0]["staff_users"].items()}
    assert stored[2] is None
    for staff_id, seed in ((release.THERAPIST_ID, release.THERAPIST_SEED),
                           (3, release.FORMER_STAFF_SEED)):
        sealed = stored[staff_id]
        assert sealed is not None
        assert seed.lower() not in sealed.lower(), f"staff {staff_id}'s seed is in the clear"
        assert open_totp_seed(TEST_KEYS, staff_id, sealed) == seed
        with pytest.raises(SeedUnreadable):
            open_totp_seed(InstallKeys.derive(OTHER_SECRET), staff_id, sealed)


def _sign_in_code(client: TestClient, code: str) -> int:
    page = client.get("/login/second-factor")
    assert page.status_code == 200
    assert 'id="totp-secret"' not in page.text, "asked to set up a new authenticator"
    return client.post("/login/second-factor", data={
        "code": code, "csrf_token": csrf_from(page.text), "next": "/staff"},
        follow_redirects=False).status_code


async def test_an_authenticator_set_up_under_0_1_0_still_signs_in(
        database_url: str, tmp_path: Path) -> None:
    await upgraded(database_url, tmp_path)
    settings = Settings.from_env({}, database_url=database_url, secret_key=TEST_SECRET,
                                 data_dir=str(tmp_path), login_failure_delay_ms=0)
    clock = OffsetClock(SIGN_IN_AT)
    totp = pyotp.TOTP(release.THERAPIST_SEED)
    with TestClient(create_app(settings, clock=clock), base_url="http://127.0.0.1") as client:
        csrf = csrf_from(client.get("/login").text)
        password = client.post("/login", data={
            "email": release.THERAPIST_EMAIL, "password": release.THERAPIST_PASSWORD,
            "csrf_token": csrf}, follow_redirects=False)
        assert password.status_code == 303
        assert password.headers["location"].startswith("/login/second-factor")
        good = {totp.at(clock.now() + timedelta(seconds=30 * k)) for k in range(-2, 3)}
        wrong = next(code for code in (f"{n:06d}" for n in range(10**6)) if code not in good)
        assert _sign_in_code(client, wrong) == 401
        assert _sign_in_code(client, totp.at(clock.now())) == 303

    audit = (await read(database_url))[0]["audit_events"].values()
    signed_in = [row["detail"].get("via") for row in audit if row["action"] == "sign-in"
                 and row["actor"] == f"staff:{release.THERAPIST_ID}"
                 and row["seq"] > len(release.AUDIT_EVENTS)]
    assert signed_in == ["password+totp"]
