"""A live room keeps its therapist signed in past the idle sign-out, in headless Chromium;
a staff page left alone as long is signed out (issue #16, "Signed out mid-group")."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.browser.launch import scenario_result
from tests.browser.signed_in import BEYOND_IDLE_SECONDS

pytestmark = pytest.mark.browser


def test_a_therapist_in_a_long_group_is_still_signed_in_afterwards() -> None:
    seen = scenario_result("signed_in")
    assert seen["idle_seconds"] >= BEYOND_IDLE_SECONDS
    # In the room the whole time: the page stayed, and her Today page opens afterwards.
    assert seen["room_still_shown"] and seen["room_url"].endswith("/room"), seen
    assert urlsplit(seen["after_room"]["url"]).path == "/staff", seen
    assert seen["after_room"]["heading"].startswith("Today"), seen
    # The same time on a staff page with nothing done: signed out, back at the start.
    assert urlsplit(seen["left_alone"]["url"]).path == "/login", seen
    assert not seen["left_alone"]["heading"].startswith("Today"), seen
