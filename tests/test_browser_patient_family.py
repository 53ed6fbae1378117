"""Headless Chromium on the patient's and family member's pages, in a loopback-only network
namespace (``tests/browser/patient_family.py``): one server and one browser for every check."""

from __future__ import annotations

import pytest

from tests.browser.launch import scenario_result

pytestmark = pytest.mark.browser
TIME_WITH_ZONE = r"\d{1,2}:\d\d [AP]M C[SD]T"


@pytest.fixture(scope="module")
def seen() -> dict:
    return scenario_result("patient_family", "patient-and-family")


def test_patient_home_on_a_phone_leads_with_live_now_and_join_at_the_fold(seen):
    import re

    patient = seen["patient"]
    assert patient["home_url"].endswith("/me")
    assert patient["cue"] == "Live now"
    assert patient["join_at_fold"] is True  # 390 x 844: visible without scrolling
    assert "primary" in patient["join_classes"].split()
    text = patient["home_text"]
    times = re.findall(r"\d{1,2}:\d\d [AP]M(?: [A-Z]{3})?", text)
    assert times and all(re.fullmatch(TIME_WITH_ZONE, t) for t in times), times
    assert patient["hours_before"] > 2.5  # the live session's remaining time


def test_check_in_offers_the_home_address_and_other_fields_only_for_somewhere_else(seen):
    patient = seen["patient"]
    assert patient["home_choice"] == "At home (120 Maple Street, Springfield)"
    assert patient["other_fields_when_home"] is False
    assert patient["other_fields_when_elsewhere"] is True
    assert patient["other_fields_back_home"] is False
    assert patient["no_js_fields_when_home"] is False  # no script needed
    assert patient["no_js_fields_when_elsewhere"] is True


def test_a_session_the_therapist_ended_early_says_so_and_offers_no_join(seen):
    import re

    patient = seen["patient"]
    assert re.search(r"Ended early at " + TIME_WITH_ZONE, patient["ended_line"]), patient
    assert patient["join_after_end"] == 0 and patient["room_links_after_end"] == 0
    # Its unheld remainder no longer counts as scheduled: nothing else is left this week.
    assert patient["hours_after"] == 0.0


def test_patient_signs_out_from_the_home_page(seen):
    patient = seen["patient"]
    assert patient["after_sign_out_url"] == patient["base_url"] + "/"  # /me sends them out


def test_invite_opened_early_says_when_checks_devices_and_opens_by_itself(seen):
    import re

    family = seen["family"]
    assert family["status"] == 425
    assert re.fullmatch(r"This session opens at " + TIME_WITH_ZONE, family["headline"])
    assert re.search(r"on \w+day \w+ \d{1,2} at " + TIME_WITH_ZONE, family["text"])
    assert re.search(r"You can join from \w+day \w+ \d{1,2} at " + TIME_WITH_ZONE,
                     family["text"])
    assert "Opens in" in family["text"] and "substance" not in family["text"].lower()
    assert family["preview_playing"] is True and family["mic_peak"] > 0
    assert family["peer_connections"] == 0  # the check connects to no room
    assert 1 <= family["countdown_seconds"] <= 10
    assert family["ready_text"].startswith("Ready")
    assert "/i/" in family["still_early_url"]
    assert re.search(r"/sessions/\d+/room$", family["room_url"])
    assert family["prejoin"] is True
