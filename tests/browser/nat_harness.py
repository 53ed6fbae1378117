"""Browser scenarios for ``tests/test_nat.py``, run inside the patient's "home" namespace.

``tests/test_nat.py`` builds the network (a server behind a cloud's 1:1 NAT, a home behind its
own NAT, a TURN server) and starts vio, coturn and a therapist bot in their namespaces; it
then runs ``python -m tests.browser.nat_harness SCENARIO JSON`` with ``ip netns exec`` in the
home namespace, where this module drives Debian's headless Chromium (flags from
``tests/browser/harness.py``) on the patient's link and prints one JSON object:

* ``media``: the patient joins; reports the remote videos playing and heard (frames and
  samples rising), every ICE candidate in the server's offers, and the candidate pair
  Chromium's transport selected.
* ``blocked``: the patient joins and waits for the room page's message that the network
  blocks video calls; reports its text and whether any remote video played.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from playwright.async_api import Page, async_playwright

from tests.browser.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PLAYING_VIDEOS,
    new_page,
    patient_joins,
    remote_videos_playing,
    seconds,
)

MEDIA_SECONDS = 45.0
"""How long the patient may take to see and hear the others (ICE through NATs or a relay)."""
BLOCKED_MESSAGE_SECONDS = 45.0
"""How long the page may take to say the network blocks calls (ICE must fail first)."""
BLOCKED_TEXT = "Your network blocks video calls"

# Every offer the page is given, before the page sees it.
CAPTURE_OFFERS = """
(() => {
  window.__vioOffers = [];
  const original = RTCPeerConnection.prototype.setRemoteDescription;
  RTCPeerConnection.prototype.setRemoteDescription = function (description, ...rest) {
    if (description && description.type === 'offer') window.__vioOffers.push(description.sdp);
    return original.call(this, description, ...rest);
  };
})();
"""
OFFER_CANDIDATES = """
() => window.__vioOffers.flatMap((sdp) => sdp.split(/\\r?\\n/)
  .filter((line) => line.startsWith('a=candidate:')))
"""
SELECTED_PAIR = """
async () => {
  for (const pc of window.__vioPeerConnections) {
    if (pc.connectionState === 'closed') continue;
    const stats = await pc.getStats();
    const byId = new Map();
    stats.forEach((s) => byId.set(s.id, s));
    for (const s of byId.values()) {
      if (s.type !== 'transport' || !s.selectedCandidatePairId) continue;
      const pair = byId.get(s.selectedCandidatePairId);
      const local = byId.get(pair.localCandidateId);
      const remote = byId.get(pair.remoteCandidateId);
      return {
        local: { type: local.candidateType, protocol: local.protocol,
                 relayProtocol: local.relayProtocol || null },
        remote: { type: remote.candidateType, address: remote.address || remote.ip,
                  port: remote.port },
      };
    }
  }
  return null;
}
"""


def browser_args(base_url: str) -> list[str]:
    """Chromium's flags; the page's plain-HTTP origin counts as secure (camera allowed)."""
    return [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={base_url}"]


async def _open(page: Page, link: str) -> None:
    await page.add_init_script(CAPTURE_OFFERS)
    await patient_joins(page, link)


async def scenario_media(args: dict[str, Any]) -> dict[str, Any]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM,
                                           args=browser_args(args["base_url"]))
        try:
            page = await new_page(browser)
            await _open(page, args["link"])
            seen = await remote_videos_playing(page, 1, seconds(MEDIA_SECONDS))
            seen["candidates"] = await page.evaluate(OFFER_CANDIDATES)
            seen["selected"] = await page.evaluate(SELECTED_PAIR)
        finally:
            await browser.close()
    return seen


async def scenario_blocked(args: dict[str, Any]) -> dict[str, Any]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM,
                                           args=browser_args(args["base_url"]))
        try:
            page = await new_page(browser)
            await _open(page, args["link"])
            notice = page.locator("#notices", has_text=BLOCKED_TEXT)
            await notice.wait_for(timeout=seconds(BLOCKED_MESSAGE_SECONDS) * 1000)
            seen = {"message": await notice.inner_text(),
                    "playing": await page.evaluate(PLAYING_VIDEOS),
                    "candidates": await page.evaluate(OFFER_CANDIDATES)}
        finally:
            await browser.close()
    return seen


SCENARIOS = {"media": scenario_media, "blocked": scenario_blocked}


def main() -> None:
    name, raw = sys.argv[1], sys.argv[2]
    result = asyncio.run(SCENARIOS[name](json.loads(raw)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
