"""Headless Chromium on a therapist's staff pages, desktop and a 390x844 phone, in a
loopback-only network namespace (``tests/browser/staff_day.py``): one server and one browser
for every check."""

from __future__ import annotations

import re

import pytest

from tests.browser.launch import scenario_result
from tests.browser.staff_day import NOTE

pytestmark = pytest.mark.browser
ROSTER_SIZE = 6  # the demo group's patients
TAP_TARGET_PX = 40


@pytest.fixture(scope="module")
def seen() -> dict:
    return scenario_result("staff_day", "staff-day")


def test_today_says_live_with_who_is_in_and_who_waits(seen):
    desktop = seen["desktop"]
    status = " ".join(desktop["today_status"].split())
    assert status == "Live 1 in the room, 1 waiting", status
    assert "Open room" in desktop["today_links"]


def test_a_live_session_shows_where_people_are_not_absent(seen):
    desktop = seen["desktop"]
    assert desktop["bold_statuses"] == []  # no status column, so no bold "absent"
    assert sorted(desktop["presence"]) == sorted(
        ["in the room now", "waiting"] + ["not here yet"] * (ROSTER_SIZE - 1))
    assert desktop["live_tag"] == ["Live now"]


def test_the_sessions_page_lists_past_sessions_and_their_attendance(seen):
    desktop = seen["desktop"]
    assert [" ".join(o.split()) for o in desktop["past_outcomes"]] == ["held"] * 3
    assert desktop["upcoming_has_live"] == 1
    assert "absent" in desktop["past_bold_statuses"]  # Marcus missed the last one
    assert desktop["locked_without_confirm"] == 0 and desktop["locked_after_confirm"] == 1


def test_form_fields_are_readable_with_their_labels_above(seen):
    field = seen["desktop"]["title_field"]
    assert field["height"] >= TAP_TARGET_PX and field["width"] >= 200, field
    assert field["font"] >= 15, field
    assert field["label_bottom"] is not None and field["label_bottom"] <= field["top"], field


def test_an_alert_is_dismissed_with_a_note_on_a_phone(seen):
    phone = seen["phone"]
    assert phone["dashboard_overflow"] <= 0 and phone["dosage_overflow"] <= 0, phone
    assert phone["alert_before"] == 1 and "missed in a row" in phone["reason"]
    assert phone["note_field"]["visible"] and phone["note_field"]["width"] >= 200
    assert phone["empty_note_invalid"] and phone["alert_after_empty"] == 1
    assert phone["url_after"].endswith("/staff/dashboard")
    assert phone["alert_after"] == 0 and phone["other_alerts_after"] >= 1
    said = (r"Dismissed by Jordan Alvarez, LCSW on \w+ \w+ \d+, \d+:\d\d [AP]M C[SD]T: "
            + re.escape(NOTE))
    assert any(re.fullmatch(said, text) for text in phone["dismissal"]), phone["dismissal"]


def test_a_new_personal_link_is_copied_and_turning_links_off_asks_first(seen):
    admin = seen["admin"]
    assert admin["link_is_personal"] and admin["clipboard_is_link"]
    assert admin["link_still_shown"] == 1  # the unticked confirmation kept the form from going
