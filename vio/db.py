"""Database engine and sessions, and running the migrations."""

from __future__ import annotations

import contextlib
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

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0


def create_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets foreign keys and a write-ahead log."""
    sqlite = url.startswith("sqlite")
    engine = create_async_engine(
        url, pool_pre_ping=not sqlite,
        # A writer waits for another's commit instead of failing with "database is locked".
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS} if sqlite else {})
    if sqlite:
        path = url.split(":///", 1)[1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@contextlib.asynccontextmanager
async def opened(url: str, *, migrated: bool = True) -> AsyncIterator[AsyncSession]:
    """One database session for a command: the schema brought up to date first, all closed after."""
    engine = create_engine(url)
    try:
        if migrated:
            await migrate(engine)
        async with session_factory(engine)() as session:
            yield session
    finally:
        await engine.dispose()


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema up to the newest migration."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: command.upgrade(alembic_config(sync_conn), "head"))
