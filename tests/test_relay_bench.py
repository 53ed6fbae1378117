"""``bench/relay.py`` keeps working: with ``--smoke`` it runs both variants and prints them side
by side with the MAC's share (nothing here is timed; the figures are only positive)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import shared_redis
from tests.conftest import seconds

BENCH = Path(__file__).resolve().parent.parent / "bench"
NUMBER = r"(-?[0-9]+(?:\.[0-9]+)?)"

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_relay_prints_signed_and_unsigned_side_by_side(postgres_url) -> None:
    await shared_redis()  # or a skip: the script needs the machine's Redis and PostgreSQL
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, str(BENCH / "relay.py"), "--quick", "--smoke"],
        capture_output=True, text=True, timeout=seconds(180), cwd=BENCH.parent)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-4000:]}"
    rows = {match[0]: (float(match[1]), float(match[2])) for match in re.findall(
        rf"^\| (signed|unsigned) +\| {NUMBER} +\| {NUMBER} +\|", result.stdout, re.MULTILINE)}
    assert set(rows) == {"signed", "unsigned"}, result.stdout
    assert all(per_second > 0 and cpu > 0 for per_second, cpu in rows.values())
    assert re.search(rf"MAC share of a relayed message's node CPU .*: {NUMBER}%",
                     result.stdout), result.stdout
    mac = re.search(rf"in process, sealing and opening one relayed ping: {NUMBER} µs with the "
                    rf"MAC, {NUMBER} µs without", result.stdout)
    assert mac and float(mac[1]) > 0 and float(mac[2]) > 0, result.stdout
