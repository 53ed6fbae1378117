"""A day in the live room, as the therapist and the patients see it (issue #16, the room).

Run by ``tests/test_browser_room_day.py`` as ``python -m tests.browser.room_day`` under
``unshare -n`` (loopback only), like ``tests.browser.harness``, whose helpers it uses: ``vio
serve --demo`` on a fresh SQLite file, headless Chromium with a fake camera and microphone, and
``vio bot`` for the co-therapist. One scenario, several checks; it prints one JSON object with
what the people saw (text on the page, markers, button labels), for the test to assert.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

from tests.browser.harness import (
    CAPTURE_PEER_CONNECTIONS,
    CHROMIUM,
    CHROMIUM_ARGS,
    patient_joins,
    seconds,
    serve_scenario,
    start_bot,
    wait_until,
)

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


def ms(n: float) -> float:
    return seconds(n) * 1000


async def page_in(browser: Browser, viewport: dict[str, int]) -> Page:
    context = await browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    page = await context.new_page()
    await page.add_init_script(CAPTURE_PEER_CONNECTIONS)
    return page


async def therapist_signs_in(page: Page, links: dict[str, Any], room: str) -> None:
    await page.goto(links["therapist"]["login"])
    await page.fill("input[name=email]", links["therapist"]["email"])
    await page.fill("input[name=password]", links["therapist"]["password"])
    await page.click("button[type=submit]")
    await page.wait_for_url("**/staff**", timeout=ms(30))
    await page.goto(room)
    await page.click("#join-button", timeout=ms(30))
    await page.wait_for_selector("#screen-room:not([hidden])", timeout=ms(30))


async def in_room(page: Page, who: str) -> None:
    """Wait for the room screen; if it never comes, say which screen is showing and why."""
    try:
        await page.wait_for_selector("#screen-room:not([hidden])", timeout=ms(30))
    except Exception as error:
        shown = await page.evaluate("""() => [...document.querySelectorAll('.screen')]
          .filter((s) => !s.hidden).map((s) => s.id + ': ' + s.innerText.slice(0, 300))""")
        status = await page.inner_text("#status")
        raise RuntimeError(f"{who} never reached the room: {shown} status={status!r}") from error


def tile(page: Page, name: str) -> Any:
    return page.locator(".tile", has=page.locator(".tile-name", has_text=name))


async def tile_action(page: Page, name: str, action: str) -> None:
    target = tile(page, name)
    await target.locator(".tile-menu-button").click()
    await target.locator(f"button[data-action='{action}']").click()


async def text_of(page: Page, selector: str) -> str:
    return (await page.inner_text(selector)).strip()


async def visible_text(page: Page, selector: str, within: float = 30) -> str:
    await page.wait_for_selector(f"{selector}:visible", timeout=ms(within))
    return await text_of(page, selector)


async def bottom_layout(page: Page) -> dict[str, float]:
    """Where the controls are, and where the chat's Send button is with the page scrolled to
    its end."""
    return dict(await page.evaluate("""() => {
      const send = document.querySelector('#chat-form button[type=submit]');
      window.scrollTo(0, document.documentElement.scrollHeight);  // as far down as it goes
      const controls = document.querySelector('#screen-room .controls').getBoundingClientRect();
      const s = send.getBoundingClientRect();
      const grid = document.querySelector('#tiles').getBoundingClientRect();
      const tiles = [...document.querySelectorAll('#tiles .tile')]
        .map((t) => t.getBoundingClientRect())
        .reduce((sum, r) => sum + r.width * r.height, 0);
      return { controlsTop: controls.top, controlsBottom: controls.bottom,
               viewport: window.innerHeight, viewportWidth: window.innerWidth,
               sendBottom: s.bottom, sendTop: s.top, gridHeight: grid.height,
               gridWidth: grid.width, tilesArea: tiles };
    }"""))


async def scenario(links: dict[str, Any]) -> dict[str, Any]:
    database = links["env"]["VIO_DATABASE_URL"].split(":///", 1)[1]
    session = next(s for s in links["sessions"] if s["kind"] == "group")
    with sqlite3.connect(database) as conn:  # patients wait until a therapist is in
        conn.execute("UPDATE sessions SET waiting_room = 'auto-with-therapist' WHERE id = ?",
                     (session["id"],))
    patients = {p["name"]: p for p in links["patients"] if p["on_roster"]}
    dana, marcus, priya = patients["Dana R."], patients["Marcus L."], patients["Priya S."]
    seen: dict[str, Any] = {"session_id": session["id"], "session_title": session["title"]}
    co_therapist = None
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            phone = await page_in(browser, PHONE)  # Dana, on her phone
            await patient_joins(phone, dana["link"])
            seen["waiting_title"] = await visible_text(phone, "#waiting-session")
            seen["waiting_therapist"] = await visible_text(phone, "#waiting-therapist")
            seen["sign_out_in_room_page"] = await phone.is_visible("#sign-out")
            await shot(phone, "phone-waiting")

            therapist = await page_in(browser, DESKTOP)
            await therapist_signs_in(therapist, links, session["room"])
            await in_room(phone, "Dana")
            laptop = await page_in(browser, DESKTOP)  # Marcus, on a laptop
            await patient_joins(laptop, marcus["link"])
            await in_room(laptop, "Marcus")
            co_therapist = start_bot(links, "--link", links["admin"]["login"], "--email",
                                     links["admin"]["email"], "--password",
                                     links["admin"]["password"], "--seconds",
                                     str(seconds(60)), "--no-camera", "--no-mic")
            # A new process that signs in first: on a busy machine it takes longer than a page.
            await therapist.wait_for_selector(".tile-name:has-text('Sam Okafor')",
                                              timeout=ms(90))
            await therapist.wait_for_selector(".tile-name:has-text('Marcus L.')",
                                              timeout=ms(30))

            # Who is expected and not here yet.
            await wait_until(lambda: _roster_settled(therapist), seconds(20),
                             "the roster without Dana and Marcus")
            seen["roster"] = await therapist.locator("#roster-list .roster-name").all_inner_texts()
            seen["therapist_sign_out"] = await therapist.is_visible("#sign-out")

            # The safety card for a patient who checked in at home.
            await tile_action(therapist, "Dana R.", "safety-card")
            await therapist.wait_for_selector("#safety-dialog[open]", timeout=ms(30))
            seen["safety"] = {key: await text_of(therapist, f"#safety-{key}")
                              for key in ("location", "phone", "contact", "emergency")}
            await therapist.click("#safety-dialog button[value=close]")

            # Locked: a badge in the top bar; a patient who tries is kept out, and listed.
            await therapist.click(".session-tools summary")
            await therapist.click("#lock-button")
            seen["lock_badge"] = await visible_text(therapist, "#lock-badge")
            late = await page_in(browser, DESKTOP)  # Priya, late
            await patient_joins(late, priya["link"])
            seen["late_title"] = await visible_text(late, "#refused-title")
            seen["late_retry_shown"] = await late.is_visible("#retry-button")
            seen["kept_out"] = await visible_text(therapist, "#refused-list")
            seen["kept_out_notice"] = await text_of(therapist, "#notices")
            await therapist.click("#lock-button")
            await late.close()

            # Dana mutes herself: the button says how to undo it.
            await phone.click("#mic-button")
            seen["mic_label_after_mute"] = await text_of(phone, "#mic-button .control-label")
            seen["mic_pressed_after_mute"] = await phone.get_attribute("#mic-button",
                                                                       "aria-pressed")
            await phone.click("#camera-button")
            seen["camera_label_after_stop"] = await text_of(phone,
                                                            "#camera-button .control-label")
            await wait_until(lambda: _measured(therapist), seconds(20), "a measured link")
            seen["quality"] = await text_of(therapist, "#quality")

            # A private talk with Dana: marked for the therapist, said to Dana and to the group.
            await tile_action(therapist, "Dana R.", "side-room")
            marker = tile(therapist, "Dana R.").locator(".tile-side-room")
            await marker.wait_for(state="visible", timeout=ms(30))
            seen["therapist_marker"] = (await marker.inner_text()).strip()
            seen["patient_side_room"] = await visible_text(phone, "#side-room-banner")
            seen["group_side_room"] = await visible_text(laptop, "#side-room-banner")
            seen["group_marker"] = (await tile(laptop, "Dana R.").locator(
                ".tile-side-room").inner_text()).strip()
            seen["therapist_layout"] = await bottom_layout(therapist)
            await phone.click("#panel-button")  # the chat, on the phone
            seen["phone_layout"] = await bottom_layout(phone)
            await shot(therapist, "therapist-side-room")
            await shot(phone, "phone-side-room")
            await shot(laptop, "group-side-room")
            await therapist.click("#side-room-banner button")
            await laptop.wait_for_selector("#side-room-banner", state="hidden", timeout=ms(30))
            seen["group_banner_after"] = await laptop.is_visible("#side-room-banner")

            # With no co-therapist left, the group hears that the therapist will be back.
            co_therapist.terminate()
            co_therapist.communicate(timeout=seconds(20))
            co_therapist = None
            await laptop.wait_for_selector(".tile-name:has-text('Sam Okafor')",
                                           state="detached", timeout=ms(30))
            await tile_action(therapist, "Dana R.", "side-room")
            seen["group_side_room_alone"] = await visible_text(laptop, "#side-room-banner")
            await tile_action(therapist, "Dana R.", "main-room")
            await laptop.wait_for_selector("#side-room-banner", state="hidden", timeout=ms(30))

            # Marcus is asked to leave.
            await tile_action(therapist, "Marcus L.", "remove")
            await therapist.fill("#remove-reason", "Disruptive in group.")
            await therapist.click("#remove-dialog button[value=confirm]")
            seen["removed_title"] = await visible_text(laptop, "#refused-title")
            seen["removed_text"] = await text_of(laptop, "#screen-refused")
            seen["removed_retry_shown"] = await laptop.is_visible("#retry-button")
            await shot(laptop, "removed")
            await shot(therapist, "therapist-after-removal")

            # The therapist ends the session: the closing screen links the attendance record.
            await therapist.click("#end-button")
            await therapist.click("#end-dialog button[value=confirm]")
            link = therapist.locator("#attendance-link")
            await link.wait_for(state="visible", timeout=ms(30))
            seen["attendance_link"] = {"text": (await link.inner_text()).strip(),
                                       "href": await link.get_attribute("href")}
        finally:
            await browser.close()
            if co_therapist is not None:
                co_therapist.terminate()
                co_therapist.communicate(timeout=seconds(20))
    return seen


async def shot(page: Page, name: str) -> None:
    """A screenshot for a person to look at, when ``VIO_TEST_SCREENSHOTS`` names a folder."""
    folder = os.environ.get("VIO_TEST_SCREENSHOTS")
    if folder:
        await page.screenshot(path=f"{folder}/{name}.png")


async def _measured(page: Page) -> bool:
    shown = await page.is_visible("#quality")
    return shown and "connecting" not in await text_of(page, "#quality")


async def _roster_settled(page: Page) -> bool:
    names = await page.locator("#roster-list .roster-name").all_inner_texts()
    return bool(names) and "Dana R." not in names and "Marcus L." not in names


def main() -> None:
    serve_scenario(scenario)


if __name__ == "__main__":
    sys.exit(main())
