"""Removals that always arrive: a change made where no live room hears of it (``vio staff`` in
its own process, against the database) still takes the person out of a running server's room,
within the rooms' re-check interval (``VIO_ROOM_RECHECK_SECONDS``)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import TEST_SECRET, seconds
from tests.wsclient import Client
from vio.bot import sign_in
from vio.media import announce_host_addresses
from vio.models import Session, SessionKind
from vio.settings import Settings

ROOT = Path(__file__).parent.parent
RECHECK_SECONDS = 1.0


@pytest.fixture(autouse=True)
def loopback_only():
    announce_host_addresses(["127.0.0.1"])


@pytest.fixture
def live_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, ice_announce_addresses=("127.0.0.1",),
                               room_tick_seconds=0.05, room_recheck_seconds=RECHECK_SECONDS)


def _vio_staff(settings: Settings, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("VIO_")}
    env.update(VIO_DATABASE_URL=settings.database_url, VIO_SECRET_KEY=TEST_SECRET,
               VIO_DATA_DIR=str(data_dir))
    return subprocess.run([sys.executable, "-m", "vio.cli", "staff", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=seconds(60), check=False)


async def test_vio_staff_deactivate_closes_the_therapists_room_socket(
        live_server, live_settings, db, tmp_path):
    session = (await db.execute(select(Session).where(
        Session.kind == SessionKind.GROUP))).scalars().first()
    url = f"{live_server.ws_base}/ws/sessions/{session.id}"
    web = await asyncio.to_thread(sign_in, f"{live_server.base_url}/login",
                                  "therapist@demo.vio", "demo-therapist")
    async with Client(url, web.cookie) as therapist:
        assert (await therapist.join())["type"] == "welcome"
        await asyncio.sleep(seconds(2 * RECHECK_SECONDS))  # re-checked, and still here
        assert not therapist.received("refused") and therapist.close_code is None
        done = await asyncio.to_thread(_vio_staff, live_settings, tmp_path, "deactivate",
                                       "--email", "therapist@demo.vio")
        assert done.returncode == 0, done.stderr
        refused = await therapist.expect("refused", within=RECHECK_SECONDS + 2)
        assert refused["code"] == "signed-out" and refused["message"]
        assert await therapist.closed() == 4401
    async with Client(url, web.cookie) as again:
        assert (await again.join())["code"] == "not-signed-in"
