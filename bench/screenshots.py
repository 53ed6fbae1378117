"""Screenshots of every role's pages, desktop (1280 px) and phone (390 x 844), for a person to
look at.

    python bench/screenshots.py [OUT_DIR]      (default /tmp/vio-screenshots; never committed)

Starts ``vio serve --demo`` on a fresh SQLite file inside a loopback-only network namespace
(the script re-runs itself under ``unshare -n``, so it needs root, as the browser tests do) and
walks the demo in headless Chromium with a fake camera and microphone:

- patient: home, check-in, the room's device check, the waiting room, the room, and home
  again after the therapist ended the session early;
- family member: the invite opened early (and its device check), the invite once open, the
  room, an unusable invite;
- therapist: today's sessions, the room with a patient in a side room, the safety card;
- program staff: sessions, a session's attendance, the dosage dashboard, a patient's dosage,
  the audit log, a patient's record, the exports.

Each page is saved as ``NN-role-page-desktop.png`` and ``NN-role-page-phone.png`` (the phone
shot is the whole page; ``…-phone-fold.png`` is what shows before scrolling, for the pages
where the main action must be there). Prints one JSON line: every file and the HTTP status of
each page. Uses ``tests/browser/harness.py`` for the server, Chromium and the bot.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.async_api import Browser, BrowserContext, Page, async_playwright  # noqa: E402

from tests.browser.harness import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    bring_up_loopback,
    seconds,
    therapist_bot,
    vio_server,
)

DEFAULT_OUT = "/tmp/vio-screenshots"
IN_NAMESPACE = "--in-namespace"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
SETTLE_SECONDS = 1.0  # after a page changes, before its picture (video tiles, fonts)
WAIT_SECONDS = 30.0  # for a screen of the room to appear
BOT_SECONDS = 90.0  # how long the therapist bot stays in the family session


class Walk:
    """Takes each page's pictures, numbered in the order of the walk."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.count = 0
        self.files: list[str] = []
        self.statuses: dict[str, int | None] = {}

    async def shot(self, page: Page, name: str, fold: bool = False,
                   focus: str | None = None) -> None:
        """Pictures of ``page`` as it is now: at desktop width, then at phone size (the fold
        scrolled to ``focus``, if given)."""
        self.count += 1
        stem = f"{self.count:02d}-{name}"
        await asyncio.sleep(SETTLE_SECONDS)
        await self._save(page, f"{stem}-desktop.png", full=True)
        await page.set_viewport_size(PHONE)
        await asyncio.sleep(SETTLE_SECONDS)
        await self._save(page, f"{stem}-phone.png", full=True)
        if fold:
            if focus is not None:
                await page.locator(focus).first.scroll_into_view_if_needed()
            await self._save(page, f"{stem}-phone-fold.png", full=False)
        await page.set_viewport_size(DESKTOP)

    async def _save(self, page: Page, filename: str, full: bool) -> None:
        await page.screenshot(path=str(self.out / filename), full_page=full)
        self.files.append(filename)

    async def visit(self, page: Page, url: str, name: str, fold: bool = False) -> None:
        response = await page.goto(url)
        self.statuses[name] = response.status if response else None
        await self.shot(page, name, fold)


def database(links: dict[str, Any]) -> str:
    return str(links["env"]["VIO_DATABASE_URL"].split(":///", 1)[1])


def sql(links: dict[str, Any], statement: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database(links)) as conn:
        return list(conn.execute(statement, args))


async def context(browser: Browser) -> BrowserContext:
    return await browser.new_context(viewport=DESKTOP)


async def sign_in_staff(page: Page, links: dict[str, Any], who: str) -> None:
    await page.goto(links[who]["login"])
    await page.fill("input[name=email]", links[who]["email"])
    await page.fill("input[name=password]", links[who]["password"])
    await page.click("button[type=submit]")
    await page.wait_for_url(re.compile(r"/staff"))


async def visible(page: Page, selector: str) -> None:
    await page.wait_for_selector(selector, state="visible", timeout=seconds(WAIT_SECONDS) * 1000)


async def walk(links: dict[str, Any], out: Path) -> dict[str, Any]:
    shots = Walk(out)
    group = next(s for s in links["sessions"] if s["kind"] == "group")
    family_session = next(s for s in links["sessions"] if s["kind"] == "family")
    invite = links["family_invites"][0]
    patient = next(p for p in links["patients"] if p["on_roster"])
    # The group waits for the therapist to admit people, so the waiting room shows.
    sql(links, "UPDATE sessions SET waiting_room = 'therapist-admits' WHERE id = ?", group["id"])
    past = sql(links, "SELECT id FROM sessions WHERE status = 'ended' ORDER BY starts_at DESC")
    patient_id = sql(links, "SELECT id FROM patients WHERE legal_name = 'Marcus Lee'")[0][0]
    notes: dict[str, Any] = {}
    bot = None
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # --- program staff ---------------------------------------------------------
            admin = await (await context(browser)).new_page()
            await sign_in_staff(admin, links, "admin")
            base = links["base_url"]
            for path, name in [("/staff/sessions", "staff-sessions"),
                               (f"/staff/sessions/{past[0][0]}/attendance",
                                "staff-attendance"),
                               ("/staff/dashboard", "staff-dosage-dashboard"),
                               (f"/staff/patients/{patient_id}/dosage", "staff-patient-dosage"),
                               ("/staff/audit", "staff-audit-log"),
                               (f"/staff/patients/{patient_id}", "staff-patient-record")]:
                await shots.visit(admin, base + path, name)
            # The exports: their own page if there is one, else the dashboard's export form.
            exports = await admin.goto(base + "/staff/exports")
            focus = None
            if exports is None or exports.status != 200:
                await admin.goto(base + "/staff/dashboard")
                focus = "text=Export attendance"
            shots.statuses["staff-exports"] = exports.status if exports else None
            await shots.shot(admin, "staff-exports", fold=True, focus=focus)

            # --- family member, before the session opens -------------------------------
            family = await (await context(browser)).new_page()
            await shots.visit(family, invite["link"], "family-invite-early", fold=True)
            if await family.locator("#device-check-start").count():
                await family.click("#device-check-start")
                await asyncio.sleep(seconds(2))
                await shots.shot(family, "family-invite-early-device-check")

            # --- therapist: today, and the group's room ---------------------------------
            therapist = await (await context(browser)).new_page()
            await sign_in_staff(therapist, links, "therapist")
            await shots.visit(therapist, base + "/staff", "therapist-today")
            await therapist.goto(f"{base}/sessions/{group['id']}/room")
            await therapist.click("#join-button", timeout=seconds(WAIT_SECONDS) * 1000)
            await visible(therapist, "#screen-room")

            # --- patient: home, check-in, device check, waiting, room ------------------
            phone = await (await context(browser)).new_page()
            await shots.visit(phone, patient["link"], "patient-home", fold=True)
            await phone.click("text=Join now")
            await visible(phone, "#check-in")
            await shots.shot(phone, "patient-check-in", fold=True)
            await phone.check("#location-other")
            await shots.shot(phone, "patient-check-in-elsewhere")
            await phone.check("#location-home")
            await phone.click("#check-in-button")
            await visible(phone, "#join-button")
            await shots.shot(phone, "patient-room-device-check", fold=True)
            await phone.click("#join-button")
            await visible(phone, "#screen-waiting")
            await shots.shot(phone, "patient-waiting", fold=True)
            await shots.shot(therapist, "therapist-room-someone-waiting")
            await therapist.click("#waiting-list button[data-action=admit]",
                                  timeout=seconds(WAIT_SECONDS) * 1000)
            await visible(phone, "#screen-room")
            await asyncio.sleep(seconds(3))  # video tiles start
            await shots.shot(phone, "patient-room", fold=True)
            await shots.shot(therapist, "therapist-room", fold=True)

            # --- therapist: a side room, then the safety card ---------------------------
            tile = therapist.locator(".tile:has(.tile-menu-button)").first
            await tile.locator(".tile-menu-button").click()
            await tile.locator("[data-action=side-room]").click()
            await asyncio.sleep(seconds(2))
            await shots.shot(therapist, "therapist-room-side-room", fold=True)
            await shots.shot(phone, "patient-room-in-side-room", fold=True)
            await tile.locator(".tile-menu-button").click()
            await tile.locator("[data-action=main-room]").click()
            await tile.locator(".tile-menu-button").click()
            await tile.locator("[data-action=safety-card]").click()
            await visible(therapist, "#safety-dialog")
            await shots.shot(therapist, "therapist-safety-card", fold=True)

            # --- family member, once the session is open: the invite and the room -------
            start = (datetime.now(UTC) - timedelta(minutes=1)).replace(tzinfo=None)
            sql(links, "UPDATE sessions SET starts_at = ? WHERE id = ?",
                start.isoformat(sep=" "), family_session["id"])
            bot = therapist_bot(links, seconds(BOT_SECONDS), "--session",
                                str(family_session["id"]))
            await shots.visit(family, invite["link"], "family-invite-open", fold=True)
            await family.fill("#family-name", "Angela L.")
            await family.check("#family-terms")
            await family.click("#family-continue")
            await visible(family, "#join-button")
            await shots.shot(family, "family-room-device-check", fold=True)
            await family.click("#join-button")
            await visible(family, "#screen-room")
            await asyncio.sleep(seconds(3))
            await shots.shot(family, "family-room", fold=True)
            await shots.visit(family, base + "/i/not-a-whole-link", "family-invite-unusable")

            # --- the therapist ends the group early: what the patient sees after -------
            await therapist.keyboard.press("Escape")  # the safety card
            await therapist.click("summary:has-text('Session tools')")
            await therapist.click("#end-button")
            await therapist.click("#end-dialog button[value=confirm]")
            await visible(phone, "#screen-ended")
            await shots.shot(phone, "patient-room-ended")
            await shots.visit(phone, base + "/me", "patient-home-ended-early", fold=True)
        except Exception as error:  # keep what was taken, say where it stopped
            notes["stopped"] = f"{type(error).__name__}: {error}"[:500]
        finally:
            await browser.close()
            if bot is not None:
                bot.terminate()
                try:
                    bot.communicate(timeout=seconds(10))
                except subprocess.TimeoutExpired:
                    bot.kill()
                    bot.communicate()
    return {"out": str(out), "files": shots.files, "statuses": shots.statuses, **notes}


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] != IN_NAMESPACE:
        # Re-run inside a network namespace of our own: only its loopback exists there.
        command = ["unshare", "-n", "--", sys.executable, __file__, IN_NAMESPACE, *args]
        raise SystemExit(subprocess.run(command, cwd=ROOT, env=os.environ).returncode)
    out = Path(args[1] if len(args) > 1 else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    bring_up_loopback()
    with vio_server() as links:
        result = asyncio.run(walk(links, out))
    print(json.dumps(result))
    if "stopped" in result:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
