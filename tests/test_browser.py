"""Headless Chromium on the real pages, in a loopback-only network namespace."""

from __future__ import annotations

import pytest

from tests.browser.launch import scenario_result

pytestmark = pytest.mark.browser


def run_scenario(name: str) -> dict:
    return scenario_result("harness", name)


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
