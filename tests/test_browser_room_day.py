"""The live room as therapists and patients see it, in headless Chromium (issue #16, the room):
the safety card, the side room, who was kept out and who is not here yet, the own buttons'
state, the removed patient's screen, the phone layout, sign-out and the attendance link."""

from __future__ import annotations

import pytest

from tests.browser.launch import scenario_result

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def day() -> dict:
    """``python -m tests.browser.room_day`` in a loopback-only namespace, once for the module."""
    seen: dict = scenario_result("room_day")
    return seen


def test_waiting_room_names_the_session_and_whether_the_therapist_is_there(day):
    assert day["waiting_title"].startswith(day["session_title"]), day["waiting_title"]
    assert " \u2013 " in day["waiting_title"]  # its time, from start to end
    assert day["waiting_therapist"] == "Your therapist hasn\u2019t joined yet."


def test_safety_card_shows_street_address_phone_contact_and_emergency_number(day):
    card = day["safety"]
    assert card["location"] == "At home: 120 Maple Street, Springfield", card
    assert card["phone"] == "555-0200"
    assert card["contact"] == "Contact of Dana · 555-0100"
    assert card["emergency"] == "911"


def test_roster_lists_who_is_not_here_yet(day):
    assert "Priya S." in day["roster"] and "Ken W." in day["roster"], day["roster"]
    assert "Dana R." not in day["roster"] and "Marcus L." not in day["roster"]


def test_locked_room_shows_a_badge_and_the_kept_out_attempt(day):
    assert day["lock_badge"] == "Room locked"
    assert day["late_title"] == "This session is closed to newcomers"
    assert "Priya S." in day["kept_out"] and "the room is locked" in day["kept_out"]
    assert "Priya S. tried to join" in day["kept_out_notice"]


def test_mute_button_says_unmute_once_muted(day):
    assert day["mic_label_after_mute"] == "Unmute"
    assert day["mic_pressed_after_mute"] == "true"
    assert day["camera_label_after_stop"] == "Start video"


def test_own_connection_quality_is_shown_from_the_pages_own_stats(day):
    # Measured on a connected link (not "connecting"); loopback is good unless the box starves.
    assert day["quality"] in {"Connection: good", "Connection: fair", "Connection: poor"}, \
        day["quality"]


def test_side_room_is_marked_and_said_to_the_patient_and_the_group(day):
    assert day["therapist_marker"] == "In a private room"
    assert day["group_marker"] == "In a private room"
    assert "You are in a private room with Jordan Alvarez, LCSW" in day["patient_side_room"]
    group = day["group_side_room"]
    assert "Jordan Alvarez, LCSW has stepped out for a private talk" in group, group
    assert "Sam Okafor is holding the group" in group, group
    assert day["group_banner_after"] is False
    alone = day["group_side_room_alone"]  # no co-therapist in the room
    assert alone == ("Jordan Alvarez, LCSW has stepped out for a private talk. "
                     "Jordan Alvarez, LCSW will be back shortly."), alone


def test_removed_patient_is_told_plainly_with_no_false_hope(day):
    assert day["removed_title"] == "The therapist has asked you to leave this session"
    assert day["removed_retry_shown"] is False
    assert "Try again" not in day["removed_text"]
    assert "your therapist will follow up" in day["removed_text"].lower()
    assert "call 911" in day["removed_text"]


def test_controls_never_cover_the_chat_and_stay_at_the_bottom_of_a_phone(day):
    phone = day["phone_layout"]
    assert phone["controlsBottom"] == pytest.approx(phone["viewport"], abs=1), phone
    assert phone["sendBottom"] <= phone["controlsTop"] + 0.5, phone
    desk = day["therapist_layout"]  # with the side-room banner showing
    assert desk["sendBottom"] <= desk["controlsTop"] + 0.5, desk
    assert desk["controlsBottom"] <= desk["viewport"] + 0.5, desk


def test_room_page_has_a_sign_out_and_the_ended_screen_links_attendance(day):
    assert day["sign_out_in_room_page"] is True and day["therapist_sign_out"] is True
    link = day["attendance_link"]
    assert link["text"] == "Attendance record"
    assert link["href"] == f"/staff/sessions/{day['session_id']}/attendance"


def test_the_tiles_fill_the_room_on_a_desktop(day):
    desk = day["therapist_layout"]  # four people, the side panel open, a banner showing
    assert desk["gridHeight"] >= 0.6 * desk["viewport"], desk
    assert desk["tilesArea"] >= 0.85 * desk["gridHeight"] * desk["gridWidth"], desk
