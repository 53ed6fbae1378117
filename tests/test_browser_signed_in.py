"""A live room keeps its therapist signed in past the idle sign-out, in headless Chromium;
a staff page left alone as long is signed out (issue #16, "Signed out mid-group")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.browser.signed_in import BEYOND_IDLE_SECONDS
from tests.conftest import REQUIRE_SERVICES, seconds

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.browser


def test_a_therapist_in_a_long_group_is_still_signed_in_afterwards() -> None:
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    chromium = os.environ.get("VIO_TEST_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists():
        missing.append(chromium)
    if missing or os.geteuid() != 0:
        why = f"needs root and {', '.join(missing)}" if missing else "needs root for unshare -n"
        if REQUIRE_SERVICES:
            pytest.fail(f"browser tests cannot run: {why}")
        pytest.skip(f"browser tests cannot run: {why}")
    result = subprocess.run(
        ["unshare", "-n", "--", sys.executable, "-m", "tests.browser.signed_in"],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds(240))
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["idle_seconds"] >= BEYOND_IDLE_SECONDS
    # In the room the whole time: the page stayed, and her Today page opens afterwards.
    assert seen["room_still_shown"] and seen["room_url"].endswith("/room"), seen
    assert urlsplit(seen["after_room"]["url"]).path == "/staff", seen
    assert seen["after_room"]["heading"].startswith("Today"), seen
    # The same time on a staff page with nothing done: signed out, back at the start.
    assert urlsplit(seen["left_alone"]["url"]).path == "/login", seen
    assert not seen["left_alone"]["heading"].startswith("Today"), seen
