"""Database engine and sessions, running the migrations, and files only their owner may read.

The embedded SQLite database, its write-ahead log and shared-memory file are created mode 0600
(the folder 0700), and an existing one is tightened to that; ``write_private`` does the same for
exported records. They hold protected health information.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from vio.keys import InstallKeys

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_file(path: Path) -> None:
    """Make ``path`` exist (empty if new) with mode 0600, its folder created 0700.

    An existing file is only chmod-ed, never opened: closing any descriptor of a SQLite file
    drops every lock this process holds on it, under the feet of its open connections."""
    if not path.parent.exists():
        path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if path.exists():
        path.chmod(PRIVATE_FILE)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that only its owner can read it (an export, say)."""
    private_file(path)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _tighten_sqlite_files(path: Path) -> None:
    for suffix in SQLITE_COMPANIONS:
        companion = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            companion.chmod(PRIVATE_FILE)


def create_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets foreign keys and a write-ahead log."""
    sqlite = url.startswith("sqlite")
    engine = create_async_engine(
        url, pool_pre_ping=not sqlite, hide_parameters=True,  # no PHI in an error's text
        # A writer waits for another's commit instead of failing with "database is locked".
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS} if sqlite else {})
    if sqlite:
        raw_path = url.split(":///", 1)[1]
        path = Path(raw_path) if raw_path and raw_path != ":memory:" else None
        if path is not None:
            private_file(path)  # SQLite gives its WAL and SHM files the database's mode

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()
            if path is not None:
                _tighten_sqlite_files(path)

    return engine


def session_factory(engine: AsyncEngine,
                    keys: InstallKeys) -> async_sessionmaker[AsyncSession]:
    """Sessions that carry the install's keys (``keys_of``), which seal the audit chain."""
    return async_sessionmaker(engine, expire_on_commit=False, info={"keys": keys})


def keys_of(db: AsyncSession) -> InstallKeys:
    """The install keys of the session's factory (``session_factory``)."""
    keys = db.info.get("keys")
    if not isinstance(keys, InstallKeys):
        raise RuntimeError("this database session was not opened with the install's keys")
    return keys


def alembic_config(connection: Connection | None = None,
                   keys: InstallKeys | None = None) -> Config:
    """Alembic's settings; a migration that seals or encrypts reads ``attributes["keys"]``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    if keys is not None:
        config.attributes["keys"] = keys
    return config


@contextlib.asynccontextmanager
async def opened(url: str, keys: InstallKeys, *,
                 migrated: bool = True) -> AsyncIterator[AsyncSession]:
    """One database session for a command: the schema brought up to date first, all closed after."""
    engine = create_engine(url)
    try:
        if migrated:
            await migrate(engine, keys)
        async with session_factory(engine, keys)() as session:
            yield session
    finally:
        await engine.dispose()


async def migrate(engine: AsyncEngine, keys: InstallKeys, target: str = "head") -> list[str]:
    """Bring the schema up to ``target`` (the newest migration); return the revisions applied,
    oldest first (none when it was up to date)."""
    def upgrade(sync_conn: Connection) -> list[str]:
        config = alembic_config(sync_conn, keys)
        before = _current_revision(sync_conn)
        command.upgrade(config, target)
        return _revisions_between(config, before, _current_revision(sync_conn))

    async with engine.begin() as conn:
        return await conn.run_sync(upgrade)


def _current_revision(sync_conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(sync_conn).get_current_revision()


def _revisions_between(config: Config, before: str | None, after: str | None) -> list[str]:
    from alembic.script import ScriptDirectory

    if after is None or after == before:
        return []
    scripts = ScriptDirectory.from_config(config)
    applied = [script.revision for script in scripts.iterate_revisions(after, before or "base")]
    return list(reversed(applied))
