"""A therapist in a long group is not signed out behind her back (issue #16, "Signed out
mid-group"), while a staff page left alone still is.

Run by ``tests/test_browser_signed_in.py`` as ``python -m tests.browser.signed_in`` under
``unshare -n`` (loopback only). The server signs staff out after one idle minute
(``VIO_IDLE_LOGOFF_MINUTES=1``). Two browsers sign in as the therapist: one joins the room and
makes no HTTP request for longer than that, the other is left on the Today page. Then both
open the Today page, and the scenario prints what each saw.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from playwright.async_api import Page, async_playwright

from tests.browser.harness import (
    CAPTURE_PEER_CONNECTIONS,
    CHROMIUM,
    CHROMIUM_ARGS,
    seconds,
    serve_scenario,
)

IDLE_LOGOFF_MINUTES = 1
BEYOND_IDLE_SECONDS = IDLE_LOGOFF_MINUTES * 60 + 15
"""How long both browsers make no HTTP request: past the idle sign-out, by a margin."""
HEARTBEAT_SECONDS = 5.0
"""The room's attendance heartbeat, which also marks its people's sign-ins as seen."""


def ms(n: float) -> float:
    return seconds(n) * 1000


async def signs_in(page: Page, links: dict[str, Any]) -> None:
    await page.goto(links["therapist"]["login"])
    await page.fill("input[name=email]", links["therapist"]["email"])
    await page.fill("input[name=password]", links["therapist"]["password"])
    await page.click("button[type=submit]")
    await page.wait_for_url("**/staff**", timeout=ms(30))


async def scenario(links: dict[str, Any]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            in_room = await (await browser.new_context()).new_page()
            await in_room.add_init_script(CAPTURE_PEER_CONNECTIONS)
            left_alone = await (await browser.new_context()).new_page()
            await signs_in(in_room, links)
            await signs_in(left_alone, links)
            group = next(s for s in links["sessions"] if s["kind"] == "group")
            await in_room.goto(group["room"])
            await in_room.click("#join-button", timeout=ms(30))
            await in_room.wait_for_selector("#screen-room:not([hidden])", timeout=ms(30))
            started = time.monotonic()
            await asyncio.sleep(seconds(BEYOND_IDLE_SECONDS))
            seen["idle_seconds"] = round(time.monotonic() - started, 1)
            seen["room_still_shown"] = await in_room.is_visible("#screen-room")
            seen["room_url"] = in_room.url
            # The therapist leaves the group and goes to her Today page, in the same browser.
            await in_room.click("#leave-button", timeout=ms(10))
            await in_room.goto(links["base_url"] + "/staff")
            seen["after_room"] = {"url": in_room.url,
                                  "heading": await in_room.inner_text("h1")}
            await left_alone.goto(links["base_url"] + "/staff")
            seen["left_alone"] = {"url": left_alone.url,
                                  "heading": await left_alone.inner_text("h1")}
        finally:
            await browser.close()
    return seen


def main() -> None:
    serve_scenario(scenario, {"VIO_IDLE_LOGOFF_MINUTES": str(IDLE_LOGOFF_MINUTES),
                              "VIO_ATTENDANCE_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS)})


if __name__ == "__main__":
    sys.exit(main())
