"""Browser scenarios for the patient's and family member's pages outside the room.

Run as ``python -m tests.browser.patient_family SCENARIO`` inside a loopback-only network
namespace (``tests/test_browser_patient_family.py`` starts it under ``unshare -n``), like
``tests.browser.harness``, whose server, Chromium and helpers it uses. Prints one JSON object
with what the pages showed.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from playwright.async_api import Page, async_playwright

from tests.browser.harness import (
    CAPTURE_PEER_CONNECTIONS,
    CHROMIUM,
    CHROMIUM_ARGS,
    seconds,
    serve_scenario,
    wait_until,
)

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
JOIN_EARLY_MINUTES = 15  # VIO_JOIN_EARLY_MINUTES's default, which the demo server runs with
OPENS_IN_SECONDS = 8  # how soon the early invite's session is moved to open
HOURS_SCHEDULED = re.compile(r"\(([0-9.]+) more hours scheduled\)")
# Whether the element's box lies inside the viewport as first shown (no scrolling).
ABOVE_THE_FOLD = """
(selector) => {
  const box = document.querySelector(selector).getBoundingClientRect();
  return box.top >= 0 && box.bottom <= window.innerHeight && box.width > 0;
}
"""
PREVIEW_PLAYING = """
() => { const v = document.getElementById('device-preview');
        return !!v && !v.hidden && v.videoWidth > 0 && !v.paused; }
"""


def database(links: dict[str, Any]) -> str:
    return str(links["env"]["VIO_DATABASE_URL"].split(":///", 1)[1])


async def hours_scheduled(page: Page) -> float:
    match = HOURS_SCHEDULED.search(await page.inner_text("#hours-this-week"))
    return float(match.group(1)) if match else 0.0


async def end_the_group(links: dict[str, Any], session_id: int) -> None:
    """The therapist ends the live group session from the room, as the room page would."""
    from vio.bot import sign_in
    from vio.client import SignalingClient

    web = await asyncio.to_thread(sign_in, links["therapist"]["login"],
                                  links["therapist"]["email"], links["therapist"]["password"])
    ws_url = links["base_url"].replace("http", "ws") + f"/ws/sessions/{session_id}"
    async with SignalingClient(ws_url, cookie=web.cookie) as therapist:
        await therapist.send(type="join", v=1)
        await therapist.expect("welcome", within=seconds(20))
        await therapist.send(type="end")
        await therapist.expect("ended", within=seconds(20))


async def patient_pages(links: dict[str, Any]) -> dict[str, Any]:
    """On a phone: the home page's cue and Join at the fold, check-in's home address and the
    other-address fields, the session ended early by the therapist, and signing out."""
    seen: dict[str, Any] = {}
    patient = next(p for p in links["patients"] if p["on_roster"])
    group = next(s for s in links["sessions"] if s["kind"] == "group")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
            page = await context.new_page()
            await page.goto(patient["link"])
            seen["home_url"] = page.url
            seen["cue"] = await page.inner_text("#next-cue")
            seen["join_at_fold"] = await page.evaluate(ABOVE_THE_FOLD, "#join-now")
            seen["join_classes"] = await page.get_attribute("#join-now", "class")
            seen["home_text"] = await page.inner_text("main")
            seen["hours_before"] = await hours_scheduled(page)

            await page.click("#join-now")
            await page.wait_for_selector("#check-in")
            seen["home_choice"] = await page.inner_text("label:has(#location-home)")
            seen["other_fields_when_home"] = await page.is_visible("input[name=address]")
            await page.check("#location-other")
            seen["other_fields_when_elsewhere"] = await page.is_visible("input[name=address]")
            await page.check("#location-home")
            seen["other_fields_back_home"] = await page.is_visible("input[name=address]")

            # The same choice with scripts off: the page needs none for it.
            plain = await browser.new_context(viewport=PHONE, java_script_enabled=False)
            no_js = await plain.new_page()
            await no_js.goto(patient["link"])
            await no_js.goto(f"{links['base_url']}/sessions/{group['id']}/check-in")
            seen["no_js_fields_when_home"] = await no_js.is_visible("input[name=address]")
            await no_js.check("#location-other")
            seen["no_js_fields_when_elsewhere"] = await no_js.is_visible("input[name=address]")
            await plain.close()

            await end_the_group(links, group["id"])
            await page.goto(links["base_url"] + "/me")
            line = page.locator(f'li.session-line[data-session-id="{group["id"]}"]')
            seen["ended_line"] = await line.inner_text()
            seen["join_after_end"] = await page.locator("#join-now").count()
            seen["room_links_after_end"] = await page.locator(
                f'a[href="/sessions/{group["id"]}/room"]').count()
            seen["hours_after"] = await hours_scheduled(page)
            seen["session_ends_at"] = group["ends_at"]

            await page.click("#sign-out-here button")
            await page.wait_for_url(links["base_url"] + "/")
            await page.goto(links["base_url"] + "/me")
            seen["after_sign_out_url"] = page.url
            seen["base_url"] = links["base_url"]
        finally:
            await browser.close()
    return seen


async def family_early(links: dict[str, Any]) -> dict[str, Any]:
    """The invite opened before its session: when it opens, the device check, and the page
    going on to the room by itself once the window opens."""
    seen: dict[str, Any] = {}
    invite = links["family_invites"][0]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport=DESKTOP)
            await context.add_init_script(CAPTURE_PEER_CONNECTIONS)
            page = await context.new_page()
            response = await page.goto(invite["link"])
            seen["status"] = response.status if response else None
            seen["text"] = await page.inner_text("main")
            seen["headline"] = await page.inner_text("#opens-title")
            await page.click("#device-check-start")
            await wait_until(lambda: page.evaluate(PREVIEW_PLAYING), seconds(15),
                             "the camera preview")
            seen["preview_playing"] = True
            await wait_until(lambda: page.evaluate(
                "() => Number(document.getElementById('mic-level').dataset.peak || 0) > 0"),
                seconds(15), "the microphone level")
            seen["mic_peak"] = await page.evaluate(
                "() => Number(document.getElementById('mic-level').dataset.peak)")
            seen["peer_connections"] = await page.evaluate(
                "() => window.__vioPeerConnections.length")

            # The session moves so its window opens in a few seconds; the page only retries.
            opens = datetime.now(UTC) + timedelta(seconds=OPENS_IN_SECONDS)
            start = (opens + timedelta(minutes=JOIN_EARLY_MINUTES)).replace(tzinfo=None)
            with sqlite3.connect(database(links)) as conn:
                conn.execute("UPDATE sessions SET starts_at = ? WHERE id = ?",
                             (start.isoformat(sep=" "), invite["session_id"]))
            await page.reload()
            seen["countdown_seconds"] = int(await page.get_attribute(
                "#opens-countdown", "data-opens-in-seconds") or 0)
            await page.fill("#family-name", "Angela L.")
            await page.check("#family-terms")
            await page.click("#family-continue")
            seen["ready_text"] = await page.inner_text("#family-continue")
            seen["still_early_url"] = page.url
            await page.wait_for_url(re.compile(r"/sessions/\d+/room$"),
                                    timeout=seconds(OPENS_IN_SECONDS + 20) * 1000)
            seen["room_url"] = page.url
            await page.wait_for_selector("#join-button", timeout=seconds(20) * 1000)
            seen["prejoin"] = await page.is_visible("#screen-prejoin")
        finally:
            await browser.close()
    return seen


async def patient_and_family(links: dict[str, Any]) -> dict[str, Any]:
    # The family part first: the patient part ends the group session (the family session is
    # another room, so the order only keeps each part's demo data as seeded).
    return {"family": await family_early(links), "patient": await patient_pages(links)}


SCENARIOS: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "patient-and-family": patient_and_family,
}


def main() -> None:
    serve_scenario(SCENARIOS[sys.argv[1]])


if __name__ == "__main__":
    main()
