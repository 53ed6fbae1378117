"""Shared fixtures: settings on a fresh SQLite file, the app, a clock, and real PostgreSQL.

Waits scale with ``VIO_TEST_TIMEOUT_SCALE`` (default 1). PostgreSQL tests skip with a reason when
the server is not reachable, unless ``VIO_TEST_REQUIRE_SERVICES=1`` (CI sets it), which turns that
skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from starlette.testclient import TestClient

from vio.app import create_app
from vio.clock import OffsetClock
from vio.db import create_engine, migrate, session_factory
from vio.keys import InstallKeys
from vio.settings import Settings

TIMEOUT_SCALE = float(os.environ.get("VIO_TEST_TIMEOUT_SCALE", "1"))
POSTGRES_URL = os.environ.get("VIO_TEST_POSTGRES_URL",
                              "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REQUIRE_SERVICES = os.environ.get("VIO_TEST_REQUIRE_SERVICES") == "1"
TEST_SECRET = "test-secret"
# The keys of the ``settings`` fixture's install (its secret is TEST_SECRET).
TEST_KEYS = InstallKeys.derive(TEST_SECRET)


def seconds(n: float) -> float:
    """A wait of ``n`` seconds on this machine, scaled for slow ones."""
    return n * TIMEOUT_SCALE


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """End a process the test started: politely, then for sure."""
    process.terminate()
    try:
        process.wait(seconds(10))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def unavailable(what: str, why: str) -> None:
    message = f"{what} is not reachable ({why})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}; VIO_TEST_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(message)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'vio.sqlite3'}"


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return Settings.from_env({}, database_url=sqlite_url, secret_key=TEST_SECRET,
                             login_failure_delay_ms=0)


@pytest.fixture
def clock() -> OffsetClock:
    return OffsetClock(datetime(2026, 11, 23, 18, 0, tzinfo=UTC))


@pytest_asyncio.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.database_url)
    await migrate(engine, TEST_KEYS)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture
async def db(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with session_factory(engine, TEST_KEYS)() as session:
        yield session


@pytest.fixture
def client(settings: Settings, clock: OffsetClock, engine: AsyncEngine) -> Iterator[TestClient]:
    with TestClient(create_app(settings, clock=clock), base_url="http://127.0.0.1") as test_client:
        yield test_client


@pytest_asyncio.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"vio_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    try:
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await asyncio.wait_for(conn.execute(text(f'CREATE DATABASE "{name}"')), seconds(10))
    except (TimeoutError, OSError) as exc:
        await admin.dispose()
        unavailable("PostgreSQL", str(exc))
    base, _, _ = POSTGRES_URL.rpartition("/")
    yield f"{base}/{name}"
    async with admin.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@pytest_asyncio.fixture
async def demo(db: AsyncSession, clock: OffsetClock):  # type: ignore[no-untyped-def]
    """The demo program, seeded at the test clock's time."""
    from vio import demo as demo_data

    people = await demo_data.seed(db, "America/Chicago", clock.now())
    await db.commit()
    return people


def csrf_from(html: str) -> str:
    import re

    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF field"
    return match.group(1)


class LiveServer:
    """The real app under uvicorn on a loopback port, in a thread with its own event loop.

    ``port`` 0 takes any free port; a given port serves again where a stopped server was."""

    def __init__(self, settings: Settings, clock: OffsetClock, port: int = 0) -> None:
        import threading

        import uvicorn

        from vio.listen import listening_socket

        self.app = create_app(settings, clock=clock)
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, log_level="warning", ws_max_size=settings.ws_frame_cap_bytes,
            lifespan="on"))
        self.socket = listening_socket("127.0.0.1", port, settings.ws_send_buffer_bytes)
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> LiveServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + seconds(10)
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        port = self.socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_base = f"ws://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(seconds(10))
        self.socket.close()


@pytest.fixture
def live_settings(settings: Settings) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, ice_announce_addresses=("127.0.0.1",),
                               room_tick_seconds=0.05, reconnect_grace_seconds=60)


@pytest.fixture
def live_server(live_settings: Settings, clock: OffsetClock, engine: AsyncEngine,
                demo) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    with LiveServer(live_settings, clock) as server:
        yield server
