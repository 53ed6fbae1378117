"""Chromium keeps a forwarded publisher's audio and video in sync: the server's RTCP sender
reports work (``tests/browser/av_sync.py``, in a loopback-only network namespace)."""

from __future__ import annotations

import pytest

from tests.browser.launch import scenario_result

pytestmark = pytest.mark.browser

MAX_OFFSET_MS = 200.0
"""Audio and video must come this close together again in the last third of the watch.

Chromium moves its audio and video delays by tens of ms a second to match them; when the
video's delay jumps (its frames grow as the bandwidth estimate rises, a frame comes late from
a busy publisher) the two are apart for a few seconds until it has caught up."""
MAX_GROWTH_MS = 80.0
"""How much further apart they may come closest in the last third than in the first."""


def run_av_sync() -> dict:
    return scenario_result("av_sync", "av-sync")


def test_audio_and_video_play_in_sync_without_a_growing_offset():
    result = run_av_sync()
    assert result["playing"] >= 1
    samples = result["samples"]
    assert len(samples) >= 10, samples
    # Media kept flowing for the whole watch.
    assert samples[-1]["frames"] > samples[0]["frames"], samples
    assert samples[-1]["samples"] > samples[0]["samples"], samples
    offsets = [s["offset_ms"] for s in samples if "offset_ms" in s]
    print("A/V offsets, ms:", [round(o) for o in offsets])
    # Chromium estimates a playout time only from RTCP sender reports: without them there
    # is none (and no lip sync). There is one for both tracks in nearly every sample (the
    # first may precede the second report).
    assert len(offsets) >= len(samples) - 2, samples
    third = max(1, len(offsets) // 3)
    early = min(abs(o) for o in offsets[:third])
    late = min(abs(o) for o in offsets[-third:])
    assert late <= MAX_OFFSET_MS, offsets
    assert late - early <= MAX_GROWTH_MS, offsets
