"""The room page as the throttled receiver of ``tests/test_bandwidth_live.py``.

``python -m tests.browser.bandwidth ARGS_JSON``, run in the patient's namespace: the patient
``link`` joins at ``base_url`` in headless Chromium, and every ``REPORT_SECONDS`` the JSON
file ``status`` is replaced with what the page shows: each remote tile's ``paused-bandwidth``
class and whether its caption is displayed (and its text), decoded video frames and received
audio samples (``getStats``), and the screen reader announcement. It runs for ``seconds``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

from tests.browser.harness import (
    AUDIO_RECEIVED,
    CHROMIUM,
    FRAMES_DECODED,
    new_page,
    patient_joins,
)
from tests.browser.nat_harness import browser_args

REPORT_SECONDS = 0.25
TILES = """
() => [...document.querySelectorAll('.tile[data-participant-id]:not(.local)')].map((tile) => {
  const caption = tile.querySelector('.tile-paused-bandwidth');
  return {
    id: tile.dataset.participantId,
    paused: tile.classList.contains('paused-bandwidth'),
    caption: caption && getComputedStyle(caption).display !== 'none' ? caption.textContent : null,
  };
})
"""
ANNOUNCEMENT = "() => document.getElementById('announcer')?.textContent || ''"


async def main(args: dict[str, Any]) -> None:
    path = Path(args["status"])
    partial = path.with_suffix(".partial")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM,
                                           args=browser_args(args["base_url"]))
        try:
            page = await new_page(browser)
            await patient_joins(page, args["link"])
            end = time.monotonic() + args["seconds"]
            while time.monotonic() < end:
                status = {"at": time.monotonic(), "tiles": await page.evaluate(TILES),
                          "frames": sum((await page.evaluate(FRAMES_DECODED)).values()),
                          "audio": sum((await page.evaluate(AUDIO_RECEIVED)).values()),
                          "announcement": await page.evaluate(ANNOUNCEMENT)}
                partial.write_text(json.dumps(status))
                partial.replace(path)
                await asyncio.sleep(REPORT_SECONDS)
        finally:
            await browser.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
