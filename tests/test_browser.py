"""Headless Chromium on the real pages, in a loopback-only network namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES, seconds

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.browser


def run_scenario(name: str) -> dict:
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
        ["unshare", "-n", "--", sys.executable, "-m", "tests.browser.harness", name],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds(240))
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_two_browsers_and_a_bot_see_each_other():
    result = run_scenario("room")
    for page in result["pages"]:
        assert page["playing"] >= 2, page
        assert page["rising"] >= 2, page
        assert page["hearing"] >= 2, page


def test_two_tabs_of_one_browser_with_two_patient_links_see_and_hear_each_other():
    result = run_scenario("tabs")
    first, second = result["pages"]
    for page in (first, second):
        assert page["playing"] >= 1 and page["rising"] >= 1 and page["hearing"] >= 1, page
    assert any("Marcus L." in name for name in result["names"][0]), result["names"]
    assert any("Dana R." in name for name in result["names"][1]), result["names"]


def test_patient_checks_in_waits_is_admitted_and_sees_the_end():
    result = run_scenario("rules")
    assert result["check_in_form"] is True
    assert result["waiting_screen"] is True and result["room_before_admit"] is False
    assert result["room_screen"] is True
    assert result["ended_screen"] is True
    assert "ended" in result["ended_text"].lower()


def test_family_member_joins_by_invite_and_media_flows_both_ways():
    result = run_scenario("family")
    assert result["neutral"] and result["admitted"]
    assert result["page"]["playing"] >= 1 and result["page"]["rising"] >= 1
    assert result["page"]["hearing"] >= 1
    family = [r for r in result["bot"]["remote"] if r["role"] == "family"]
    assert family and family[0]["name"] == "Angela L.", result["bot"]
    assert family[0]["video_frames"] > 0 and family[0]["audio_frames"] > 0
