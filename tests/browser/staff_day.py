"""Browser scenario for a therapist's day on the staff pages.

Run as ``python -m tests.browser.staff_day staff-day`` inside a loopback-only network namespace
(``tests/test_browser_staff_day.py`` starts it under ``unshare -n``), like
``tests.browser.harness``, whose server, Chromium and helpers it uses. A therapist is in the
live group's room and a patient waits (both through ``vio.client``, no media); the therapist's
browser, on a desktop and on a 390x844 phone, reads Today, the live session's attendance, the
Sessions page, dismisses a dosage alert with a note and signs off a past session; an admin
issues a personal link and copies it. Prints one JSON object with what the pages showed.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

from tests.browser.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    seconds,
    serve_scenario,
)

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
NOTE = "Spoke with him by phone; he is back on Wednesday."
SCREENSHOTS = os.environ.get("VIO_TEST_SCREENSHOTS")  # a directory: keep what the pages looked like
# The page's width beyond the viewport (0: nothing to scroll sideways).
SIDEWAYS_OVERFLOW = "() => document.documentElement.scrollWidth - window.innerWidth"
# A field's box and its label's: is the label above, and the field a readable size?
FIELD_BOX = """
(selector) => {
  const field = document.querySelector(selector);
  const label = field.closest('label');
  const f = field.getBoundingClientRect();
  const text = label ? label.firstChild : null;
  const range = document.createRange();
  if (text) range.selectNodeContents(text);
  const l = text ? range.getBoundingClientRect() : null;
  return {height: f.height, width: f.width, label_bottom: l ? l.bottom : null, top: f.top,
          font: parseFloat(getComputedStyle(field).fontSize)};
}
"""


async def keep(page: Page, name: str) -> None:
    if SCREENSHOTS:
        await page.screenshot(path=os.path.join(SCREENSHOTS, f"staff-{name}.png"), full_page=True)


def database(links: dict[str, Any]) -> str:
    return str(links["env"]["VIO_DATABASE_URL"].split(":///", 1)[1])


async def staff_page(browser: Browser, links: dict[str, Any], viewport: dict[str, int],
                     who: str = "therapist") -> Page:
    context = await browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    page = await context.new_page()
    await page.goto(links[who]["login"])
    await page.fill("input[name=email]", links[who]["email"])
    await page.fill("input[name=password]", links[who]["password"])
    await page.click("button[type=submit]")
    await page.wait_for_url("**/staff", timeout=seconds(20) * 1000)
    return page


async def desktop_checks(page: Page, base: str, live_id: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    row = page.locator(f'tr[data-session="{live_id}"]')
    seen["today_status"] = await row.locator(".session-status").inner_text()
    seen["today_links"] = await row.locator("a").all_inner_texts()
    await keep(page, "today")
    await page.goto(f"{base}/staff/sessions/{live_id}/attendance")
    presence = page.locator("td.presence")
    seen["presence"] = [" ".join(t.split()) for t in await presence.all_inner_texts()]
    seen["bold_statuses"] = await page.locator("td.status strong").all_inner_texts()
    seen["live_tag"] = await page.locator(".live-tag").all_inner_texts()
    await keep(page, "live-attendance")
    await page.goto(f"{base}/staff/sessions")
    seen["past_outcomes"] = await page.locator("table.past td.outcome").all_inner_texts()
    seen["upcoming_has_live"] = await page.locator(
        f'table.upcoming tr[data-session="{live_id}"]').count()
    await keep(page, "sessions")
    title = await page.evaluate(FIELD_BOX, "input[name=title]")
    seen["title_field"] = title
    # A past session's attendance, from the Sessions page, and its sign-off.
    await page.locator("table.past a", has_text="Attendance").first.click()
    await page.wait_for_selector("#sign-off", timeout=seconds(10) * 1000)
    seen["past_bold_statuses"] = await page.locator("td.status strong").all_inner_texts()
    await page.click("#sign-off button[value=sign-off]")  # not ticked: the browser stops it
    seen["locked_without_confirm"] = await page.get_by_text("This record is locked").count()
    await page.check("#sign-off input[name=confirm]")
    async with page.expect_navigation(timeout=seconds(10) * 1000):
        await page.click("#sign-off button[value=sign-off]")
    seen["locked_after_confirm"] = await page.get_by_text("This record is locked").count()
    await keep(page, "signed-off")
    return seen


async def phone_checks(page: Page, base: str, patient_id: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    await page.goto(f"{base}/staff/dashboard")
    seen["dashboard_overflow"] = await page.evaluate(SIDEWAYS_OVERFLOW)
    item = page.locator(
        f'.alert-item[data-patient="{patient_id}"][data-alert="consecutive-absences"]')
    seen["alert_before"] = await item.count()
    seen["reason"] = " ".join((await item.locator(".muted").first.inner_text()).split())
    await item.locator("summary").click()
    note = item.locator("textarea[name=note]")
    await keep(page, "phone-dashboard")
    seen["note_field"] = await note.evaluate(
        "(n) => ({width: n.getBoundingClientRect().width, visible: n.offsetParent !== null})")
    await item.locator("button[type=submit]").click()  # no note: the browser stops it
    seen["empty_note_invalid"] = await note.evaluate("(n) => !n.validity.valid")
    seen["alert_after_empty"] = await item.count()
    await note.fill(NOTE)
    async with page.expect_navigation(timeout=seconds(10) * 1000):
        await item.locator("button[type=submit]").click()
    seen["url_after"] = page.url
    seen["alert_after"] = await item.count()
    seen["other_alerts_after"] = await page.locator(
        f'.alert-item[data-patient="{patient_id}"]').count()
    await page.goto(f"{base}/staff/patients/{patient_id}/dosage")
    seen["dismissal"] = [" ".join(t.split()) for t in
                         await page.locator(".dismissal").all_inner_texts()]
    seen["dosage_overflow"] = await page.evaluate(SIDEWAYS_OVERFLOW)
    await keep(page, "phone-dosage")
    return seen


async def admin_checks(page: Page, base: str, patient_id: int) -> dict[str, Any]:
    """A new personal link and its Copy button; turning links off asks first."""
    seen: dict[str, Any] = {}
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    await page.goto(f"{base}/staff/patients/{patient_id}")
    async with page.expect_navigation(timeout=seconds(10) * 1000):
        await page.click("button[value=issue-link]")
    link = await page.input_value("#patient-link")
    await page.click("button[data-copy-from=patient-link]")
    await page.wait_for_selector('[data-copy-status="patient-link"]:has-text("Copied")',
                                 timeout=seconds(5) * 1000)
    seen["link_is_personal"] = "/p/" in link
    seen["clipboard_is_link"] = await page.evaluate("navigator.clipboard.readText()") == link
    await page.click("#revoke-links button[value=revoke-links]")  # not ticked: nothing sent
    seen["link_still_shown"] = await page.locator("#patient-link").count()
    await keep(page, "patient-link")
    return seen


async def scenario_staff_day(links: dict[str, Any]) -> dict[str, Any]:
    from vio.bot import check_in_at_home, sign_in
    from vio.client import SignalingClient

    live_id = next(s["id"] for s in links["sessions"] if s["kind"] == "group")
    with sqlite3.connect(database(links)) as conn:
        conn.execute("UPDATE sessions SET waiting_room = 'therapist-admits' WHERE id = ?",
                     (live_id,))
        marcus = conn.execute("SELECT id FROM patients WHERE legal_name = 'Marcus Lee'"
                              ).fetchone()[0]
    therapist_web = await asyncio.to_thread(
        sign_in, links["therapist"]["login"], links["therapist"]["email"],
        links["therapist"]["password"])
    dana = next(p for p in links["patients"] if p["name"].startswith("Dana"))
    patient_web = await asyncio.to_thread(sign_in, dana["link"])
    await asyncio.to_thread(check_in_at_home, patient_web, live_id)
    ws_url = links["base_url"].replace("http", "ws") + f"/ws/sessions/{live_id}"
    seen: dict[str, Any] = {}
    async with SignalingClient(ws_url, cookie=therapist_web.cookie) as therapist, \
            SignalingClient(ws_url, cookie=patient_web.cookie) as patient:
        await therapist.send(type="join", v=1)
        await therapist.expect("welcome", within=seconds(20))
        await patient.send(type="join", v=1)
        await patient.expect("waiting", within=seconds(20))
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                desktop = await staff_page(browser, links, DESKTOP)
                seen["desktop"] = await desktop_checks(desktop, links["base_url"], live_id)
                phone = await staff_page(browser, links, PHONE)
                seen["phone"] = await phone_checks(phone, links["base_url"], marcus)
                admin = await staff_page(browser, links, DESKTOP, "admin")
                seen["admin"] = await admin_checks(admin, links["base_url"], marcus)
            finally:
                await browser.close()
    return seen


SCENARIOS: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "staff-day": scenario_staff_day,
}


def main() -> None:
    serve_scenario(SCENARIOS[sys.argv[1]])


if __name__ == "__main__":
    main()
