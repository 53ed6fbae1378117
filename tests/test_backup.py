"""``deploy/vio-backup``, run as vio-backup.service runs it, against the embedded SQLite file and
a PostgreSQL database that the real app filled (the demo program, and a staff member's second
factor): the backup is age ciphertext this machine cannot read; the private key gives every row
of every table back in an empty database; second-factor seeds are sealed in the database and so
in the dump; without a recipient nothing is written.

Needs ``age`` and ``age-keygen`` (Debian package age), ``sqlite3`` (sqlite3), ``pg_dump`` and
``pg_restore`` (postgresql-client); a missing one fails the test and names the package.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyotp
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import POSTGRES_URL, TEST_KEYS, seconds
from vio import audit_chain, demo
from vio.db import create_engine, migrate, session_factory
from vio.identity import staff_identity
from vio.keys import InstallKeys
from vio.models import StaffUser
from vio.security import SeedUnreadable, open_totp_seed, seal_totp_seed

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "deploy" / "vio-backup"
UNIT = (ROOT / "deploy" / "vio-backup.service").read_text()
AGE_HEADER = b"age-encryption.org/v1\n"
PATIENT = demo.ROSTER[0]
STAFF_EMAIL = demo.ADMIN["email"]
OLD_DAYS = 40  # older than the unit's KEEP_DAYS


def tool(program: str, package: str) -> str:
    found = shutil.which(program)
    if found is None:
        pytest.fail(f"{program} is not installed: apt-get install {package} (make system-packages)")
    return found


def run(*command: str, stdin: bytes | None = None,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, input=stdin, env=env, capture_output=True,
                          timeout=seconds(120))


def unit_environment() -> dict[str, str]:
    """The ``Environment=`` of vio-backup.service."""
    line = re.search(r"^Environment=(.*)$", UNIT, re.M)
    assert line is not None
    return dict(word.split("=", 1) for word in shlex.split(line.group(1)))


@dataclass
class BackupKey:
    """A throwaway age key pair: the recipients file the server keeps, the identity it never
    sees."""

    identity: Path
    recipients: Path

    @classmethod
    def make(cls, folder: Path) -> BackupKey:
        tool("age", "age")
        folder.mkdir(mode=0o700)
        identity = folder / "key.txt"
        assert run(tool("age-keygen", "age"), "-o", str(identity)).returncode == 0
        public = run("age-keygen", "-y", str(identity)).stdout
        recipients = folder / "recipients.txt"
        recipients.write_bytes(b"# vio backups\n" + public)
        return cls(identity, recipients)

    def decrypt(self, backup: Path) -> bytes:
        opened = run("age", "--decrypt", "-i", str(self.identity), str(backup))
        assert opened.returncode == 0, opened.stderr
        return opened.stdout


def backup(folder: Path, key: BackupKey | None,
           **env: str) -> tuple[subprocess.CompletedProcess[bytes], list[Path]]:
    """Run the script with the unit's settings, moved to ``folder``; what it left there."""
    settings = {**unit_environment(), "BACKUP_DIR": str(folder)}
    if key is None:
        del settings["BACKUP_RECIPIENTS_FILE"]
    else:
        settings["BACKUP_RECIPIENTS_FILE"] = str(key.recipients)
    settings.update(env)
    made = run(str(SCRIPT), env={"PATH": os.environ["PATH"], **settings})
    return made, sorted(folder.iterdir())


def assert_unreadable(backup_file: Path, other: BackupKey, *clear: str) -> None:
    """Age ciphertext, with none of the rows' words in it, that another key cannot open."""
    assert backup_file.stat().st_mode & 0o777 == 0o600
    data = backup_file.read_bytes()
    assert data.startswith(AGE_HEADER)
    for word in clear:
        assert word.encode() not in data, word
    refused = run("age", "--decrypt", "-i", str(other.identity), str(backup_file))
    assert refused.returncode != 0 and refused.stdout == b""


@dataclass
class Filled:
    seed: str  # the clear second-factor seed of the admin
    staff_id: int


async def fill(engine: AsyncEngine) -> Filled:
    """The demo program, and a second factor for its admin, as the app stores and audits it."""
    await migrate(engine, TEST_KEYS)
    now = datetime.now(UTC)
    async with session_factory(engine, TEST_KEYS)() as db:
        people = await demo.seed(db, "America/Chicago", now)
        seed = pyotp.random_base32()
        admin = await db.get(StaffUser, people.admin.id)
        assert admin is not None
        admin.totp_secret = seal_totp_seed(TEST_KEYS, admin.id, seed)
        actor = staff_identity(admin.id)
        await audit_chain.audit(db, now, actor, "second-factor-enabled", actor)
        await db.commit()
        return Filled(seed, admin.id)


async def stored_seed(engine: AsyncEngine, filled: Filled) -> str:
    """The raw column: sealed, not the seed, and it opens to the seed with the install's key."""
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT totp_secret FROM staff_users WHERE id = :id"),
                                     {"id": filled.staff_id})).scalar_one()
    assert isinstance(stored, str) and filled.seed not in stored
    assert open_totp_seed(TEST_KEYS, filled.staff_id, stored) == filled.seed
    with pytest.raises(SeedUnreadable):  # the secret key is not in the backup, and is needed
        open_totp_seed(InstallKeys.derive("not this install's secret"), filled.staff_id, stored)
    return stored


async def tables(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, in an order that does not depend on how they were stored."""
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            names = (await conn.execute(text(
                "SELECT name FROM sqlite_master WHERE type = 'table'"))).scalars().all()
        else:
            names = (await conn.execute(text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public'"))).scalars().all()
        contents = {}
        for name in names:
            rows = (await conn.execute(text(f'SELECT * FROM "{name}"'))).all()
            contents[name] = sorted((tuple(row) for row in rows), key=repr)
    return contents


def assert_same_rows(before: dict[str, list[tuple[Any, ...]]],
                     after: dict[str, list[tuple[Any, ...]]]) -> None:
    assert sorted(after) == sorted(before)
    for name, rows in before.items():
        assert len(after[name]) == len(rows), name
        assert after[name] == rows, name
    for filled_table in ("staff_users", "patients", "sessions", "audit_events",
                         "attendance_events", "alembic_version"):
        assert before[filled_table], f"the demo left {filled_table} empty: nothing compared"


# --- the embedded SQLite database ---------------------------------------------------------------

async def test_sqlite_backup_is_encrypted_and_restores_every_row(tmp_path: Path) -> None:
    tool("sqlite3", "sqlite3")
    key, other = BackupKey.make(tmp_path / "key"), BackupKey.make(tmp_path / "other")
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o700)
    old = [backups / "vio-20200101T031500Z.sql.age", backups / "vio-20200101T031500Z.dump"]
    for path in old:
        path.write_bytes(b"old")
        os.utime(path, (time.time() - OLD_DAYS * 86400,) * 2)
    database = tmp_path / "vio.sqlite3"
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    try:  # the app keeps its connection open: recent rows are still in the write-ahead log
        filled = await fill(engine)
        sealed = await stored_seed(engine, filled)
        before = await tables(engine)
        made, left = backup(backups, key, BACKUP_SQLITE_FILE=str(database))
    finally:
        await engine.dispose()
    assert made.returncode == 0, made.stderr
    [backup_file] = left  # the old ones pruned, no partial or clear file left behind
    assert re.fullmatch(r"vio-\d{8}T\d{6}Z\.sql\.age", backup_file.name)
    assert_unreadable(backup_file, other, PATIENT, STAFF_EMAIL, "CREATE TABLE", filled.seed)

    dump = key.decrypt(backup_file).decode()
    assert STAFF_EMAIL in dump and PATIENT in dump and sealed in dump
    assert filled.seed not in dump
    restored = tmp_path / "restored.sqlite3"
    loaded = run("bash", "-c", 'set -o pipefail; age -d -i "$1" "$2" | sqlite3 -bail "$3"',
                 "restore", str(key.identity), str(backup_file), str(restored))
    assert loaded.returncode == 0, loaded.stderr
    engine = create_engine(f"sqlite+aiosqlite:///{restored}")
    try:
        assert_same_rows(before, await tables(engine))
        assert await stored_seed(engine, filled) == sealed
        assert await migrate(engine, TEST_KEYS) == []
    finally:
        await engine.dispose()


def test_a_failed_sqlite_dump_leaves_nothing(tmp_path: Path) -> None:
    tool("sqlite3", "sqlite3")
    key = BackupKey.make(tmp_path / "key")
    backups = tmp_path / "backups"
    backups.mkdir()
    broken = tmp_path / "vio.sqlite3"
    broken.write_bytes(b"not a database " * 100)
    made, left = backup(backups, key, BACKUP_SQLITE_FILE=str(broken))
    assert made.returncode != 0 and b"dump failed" in made.stderr
    assert left == []
    made, left = backup(backups, key, BACKUP_SQLITE_FILE=str(tmp_path / "missing.sqlite3"))
    assert made.returncode != 0 and b"cannot read the SQLite database" in made.stderr
    assert left == [] and not (tmp_path / "missing.sqlite3").exists()


# --- refusals ---------------------------------------------------------------------------------

def test_without_a_recipient_the_backup_refuses_and_writes_nothing(tmp_path: Path) -> None:
    tool("sqlite3", "sqlite3")
    database = tmp_path / "vio.sqlite3"
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.execute("CREATE TABLE patients (legal_name TEXT)")
        conn.execute("INSERT INTO patients VALUES (?)", (PATIENT,))
        conn.commit()
    backups = tmp_path / "backups"
    backups.mkdir()
    key = BackupKey.make(tmp_path / "key")
    made, left = backup(backups, None, BACKUP_SQLITE_FILE=str(database))
    assert made.returncode != 0 and b"BACKUP_RECIPIENTS_FILE is not set" in made.stderr
    assert left == []
    made, left = backup(backups, key, BACKUP_SQLITE_FILE=str(database),
                        BACKUP_RECIPIENTS_FILE="")
    assert made.returncode != 0 and b"BACKUP_RECIPIENTS_FILE is not set" in made.stderr
    assert left == []
    key.recipients.write_text("# nobody yet\n")
    made, left = backup(backups, key, BACKUP_SQLITE_FILE=str(database))
    assert made.returncode != 0 and b"lists no public key" in made.stderr
    assert left == []
    key.recipients.write_bytes(key.identity.read_bytes())  # the private key, by mistake
    made, left = backup(backups, key, BACKUP_SQLITE_FILE=str(database))
    assert made.returncode != 0 and b"holds a private key" in made.stderr
    assert left == []
    key.recipients.unlink()
    made, left = backup(backups, key, BACKUP_SQLITE_FILE=str(database))
    assert made.returncode != 0 and b"cannot read the recipients file" in made.stderr
    assert left == []


# --- PostgreSQL -------------------------------------------------------------------------------

def libpq_environment(url: str) -> dict[str, str]:
    """libpq's variables for the database at ``url``, as the unit's PGDATABASE names one."""
    parsed = make_url(url)
    env = {"PGHOST": parsed.host or "127.0.0.1", "PGPORT": str(parsed.port or 5432),
           "PGUSER": parsed.username or "postgres", "PGDATABASE": parsed.database or ""}
    if parsed.password:
        env["PGPASSWORD"] = parsed.password
    return env


@contextlib.asynccontextmanager
async def empty_database() -> AsyncIterator[str]:
    """Another fresh PostgreSQL database, for the restore; dropped afterwards."""
    name = f"vio_restore_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    try:
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"{POSTGRES_URL.rpartition('/')[0]}/{name}"
    finally:
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def sequences(engine: AsyncEngine) -> dict[str, int | None]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(
            "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'"))
        return {row.sequencename: row.last_value for row in rows}


@pytest.mark.postgres
async def test_postgres_backup_is_encrypted_and_restores_every_row(
        tmp_path: Path, postgres_url: str) -> None:
    tool("pg_dump", "postgresql-client")
    tool("pg_restore", "postgresql-client")
    key, other = BackupKey.make(tmp_path / "key"), BackupKey.make(tmp_path / "other")
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o700)
    engine = create_engine(postgres_url)
    try:
        filled = await fill(engine)
        sealed = await stored_seed(engine, filled)
        before, counters = await tables(engine), await sequences(engine)
    finally:
        await engine.dispose()
    made, left = backup(backups, key, **libpq_environment(postgres_url))
    assert made.returncode == 0, made.stderr
    [backup_file] = left
    assert re.fullmatch(r"vio-\d{8}T\d{6}Z\.dump\.age", backup_file.name)
    assert_unreadable(backup_file, other, "PGDMP", PATIENT, STAFF_EMAIL, filled.seed)

    clear_dump = tmp_path / "key" / "clear.dump"  # the test's own look inside, as SQL
    clear_dump.write_bytes(key.decrypt(backup_file))
    as_sql = run("pg_restore", "--file=-", str(clear_dump))
    assert as_sql.returncode == 0, as_sql.stderr
    sql = as_sql.stdout.decode()
    assert STAFF_EMAIL in sql and PATIENT in sql and sealed in sql
    assert filled.seed not in sql

    async with empty_database() as restore_url:
        loaded = run("bash", "-c", 'set -o pipefail; age -d -i "$1" "$2" | '
                     'pg_restore --no-owner --exit-on-error --dbname="$3"', "restore",
                     str(key.identity), str(backup_file), make_url(restore_url).database or "",
                     env={**os.environ, **libpq_environment(restore_url)})
        assert loaded.returncode == 0, loaded.stderr
        engine = create_engine(restore_url)
        try:
            assert_same_rows(before, await tables(engine))
            assert await sequences(engine) == counters and counters
            assert await stored_seed(engine, filled) == sealed
            assert await migrate(engine, TEST_KEYS) == []
        finally:
            await engine.dispose()


@pytest.mark.postgres
async def test_a_failed_pg_dump_leaves_nothing(tmp_path: Path, postgres_url: str) -> None:
    tool("pg_dump", "postgresql-client")
    key = BackupKey.make(tmp_path / "key")
    backups = tmp_path / "backups"
    backups.mkdir()
    missing = f"{postgres_url}_missing"  # the server is up; this database is not there
    made, left = backup(backups, key, **libpq_environment(missing))
    assert made.returncode != 0 and b"does not exist" in made.stderr
    assert left == []
