"""A/V sync in Chromium over forwarded media, inside a loopback-only network namespace.

``tests/test_browser_av_sync.py`` runs ``python -m tests.browser.av_sync`` under
``unshare -n``. A therapist bot (``vio bot``: counter video and a tone, one MediaStream)
publishes through ``vio serve --demo``; one Chromium patient receives both tracks. Every
``SAMPLE_EVERY_S`` for ``WATCH_S`` the page reads ``getStats()``: for the bot's audio and
video, ``estimatedPlayoutTimestamp`` (when the receiver plays the current sample, in the
sender's NTP time; Chromium computes it only from RTCP sender reports) and the frames
decoded. The offset between the two playout timestamps is how far apart audio and video are
played; the test checks that it exists, stays small and does not grow. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from playwright.async_api import async_playwright

from .harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    bring_up_loopback,
    new_page,
    patient_joins,
    remote_videos_playing,
    seconds,
    therapist_bot,
    vio_server,
)

WATCH_S = 30.0
"""How long A/V sync is watched once media plays."""
SAMPLE_EVERY_S = 2.0
"""Time between two samples of ``getStats()``."""
PLAYOUT = """
async () => {
  const out = [];
  for (const pc of window.__vioPeerConnections) {
    if (pc.connectionState === 'closed') continue;
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp') {
        out.push({kind: s.kind, ssrc: s.ssrc, playout: s.estimatedPlayoutTimestamp ?? null,
                  frames: s.framesDecoded ?? null, samples: s.totalSamplesReceived ?? null,
                  packetsReceived: s.packetsReceived ?? null, packetsLost: s.packetsLost ?? null,
                  nackCount: s.nackCount ?? null, pliCount: s.pliCount ?? null,
                  keyFramesDecoded: s.keyFramesDecoded ?? null});
      }
    });
  }
  return out;
}
"""


def _pair(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The audio and video inbound stream that are carrying media, as one sample."""
    audio = [r for r in rows if r["kind"] == "audio" and (r["samples"] or 0) > 0]
    video = [r for r in rows if r["kind"] == "video" and (r["frames"] or 0) > 0]
    sample: dict[str, Any] = {"t": time.monotonic(), "streams": len(audio) + len(video)}
    if len(audio) == 1 and len(video) == 1:
        a, v = audio[0], video[0]
        sample.update(audio_playout=a["playout"], video_playout=v["playout"],
                      frames=v["frames"], samples=a["samples"],
                      video_packets=v["packetsReceived"], video_lost=v["packetsLost"],
                      audio_lost=a["packetsLost"], nacks=v["nackCount"], plis=v["pliCount"],
                      keyframes=v["keyFramesDecoded"])
        if a["playout"] is not None and v["playout"] is not None:
            sample["offset_ms"] = v["playout"] - a["playout"]
    return sample


async def scenario() -> dict[str, Any]:
    with vio_server() as links:
        bot = therapist_bot(links, seconds(WATCH_S + 40))
        patient = next(p for p in links["patients"] if p["on_roster"])
        samples = []
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await new_page(browser)
                await patient_joins(page, patient["link"])
                playing = await remote_videos_playing(page, 1, seconds(30))
                deadline = time.monotonic() + WATCH_S
                while time.monotonic() < deadline:
                    samples.append(_pair(await page.evaluate(PLAYOUT)))
                    await asyncio.sleep(SAMPLE_EVERY_S)
            finally:
                await browser.close()
        bot.terminate()
        with contextlib.suppress(Exception):
            bot.communicate(timeout=seconds(10))
    return {"playing": playing["playing"], "samples": samples}


def main() -> None:
    if sys.argv[1:] not in ([], ["av-sync"]):
        raise SystemExit("usage: python -m tests.browser.av_sync [av-sync]")
    bring_up_loopback()
    print(json.dumps(asyncio.run(scenario())))


if __name__ == "__main__":
    main()
