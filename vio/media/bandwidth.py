"""Which videos one receiver's link can carry: a pure policy over its RTCP feedback.

A receiver tells the server about its downlink in two ways, both arriving as RTCP at the
server's senders on its connection:

* **REMB** (``goog-remb``, which aiortc offers for video): the receiver's estimate of the
  bitrate it can take, listing the SSRCs it covers. Chromium sends one estimate for all its
  video streams, aiortc one per stream; each SSRC is credited with an equal share of the
  estimate that lists it, and the receiver's estimate is the sum of the shares reported in the
  last ``report_max_age_s``. A receiver that gets no video at all may send no REMB (aiortc);
  then there is no estimate. The estimate is *falling* while the latest REMB for some set of
  SSRCs, reaching the server at least ``settle_s`` after the last change, is lower than the
  one before it for the same set (one REMB counts once, however many senders it reaches): a
  receive-side estimator lowers its estimate only when it sees the link overused (its rate
  control holds or raises it otherwise), and then to 0.85 times the bitrate that arrived over
  the last second, which right after a change is not yet the bitrate of what is forwarded now
  (a resumed video starts with a burst, a keyframe). The same estimate again is steady, not
  falling: Chromium repeats its last one every few seconds while every video is paused.
* **Receiver reports**: the fraction of packets lost since the last report, per SSRC, on every
  stream it receives, audio included (so loss is still seen when REMB is slow to fall or
  absent). The receiver's loss is the highest fraction reported by a report that reached the
  server at least ``settle_s`` after the last change (so it shows that change's effect) and in
  the last ``report_max_age_s``.

:class:`ReceiverLink` keeps that feedback and, given the videos selected for the receiver in
order of importance (the router puts the therapists first, then speakers by recency) with
what each needs (its measured bitrate), decides how many of them, from the front, it
forwards; the rest are paused. It pauses at once, from the back:

* while the estimate is falling, as many as it takes for what the others need, times
  ``pause_ratio``, to be within the estimate;
* one more (that needs any bitrate) when the loss is ``loss_pause`` or more.

It resumes one video at a time, from the front of those paused, once the link has looked
healthy for the current hold: loss at most ``loss_resume`` and the estimate not falling.
Every resume is a probe, judged by the loss and the estimate that follow it. The estimate
cannot say beforehand that a paused video fits: a receive-side estimator's rate control
keeps its estimate within 1.5 times the bitrate arriving (plus 10 kbit/s), it raises it by
about 8 % a second, and it learns nothing of a stream that is paused. Right after a resume it
still reports what it had settled at when the link was bad, which is why only a falling
estimate pauses. A resume followed by a pause within ``probe_s`` failed: the hold doubles,
up to ``resume_hold_max_s``; one that lasts resets the hold to ``resume_hold_s``. No I/O, no
clock of its own: every call is given ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BandwidthRules", "ReceiverLink", "VideoNeed"]


@dataclass(frozen=True)
class BandwidthRules:
    """The thresholds of :class:`ReceiverLink`; durations in seconds, fractions from 0 to 1.

    ``vio.media.router.MediaConfig.bandwidth`` holds the router's.
    """

    pause_ratio: float = 0.7
    """Pause while a falling estimate is below this share of what the forwarded videos need
    (an estimator that sees the link overused settles at 0.85 times what arrives)."""
    loss_pause: float = 0.1
    """A reported loss of this fraction or more pauses one more video..."""
    loss_reports: int = 2
    """...once this many receiver reports of one stream in a row say so: a single lossy second
    (a burst, or a receiver that stalled for a moment) is not a weak link."""
    loss_resume: float = 0.02
    """Resume only while the reported loss is at most this fraction."""
    settle_s: float = 2.0
    """Reports (loss, falling REMB) that reach the server sooner than this after a change do
    not judge it: they describe the link before it, or a second that it only began."""
    resume_hold_s: float = 4.0
    """How long the link must look healthy before one paused video resumes."""
    resume_hold_max_s: float = 30.0
    """The hold doubles after each failed resume, up to this."""
    probe_s: float = 5.0
    """A pause this soon after a resume means the resume failed."""
    report_max_age_s: float = 3.0
    """REMB and receiver reports older than this are forgotten."""

    def __post_init__(self) -> None:
        if self.pause_ratio <= 0:
            raise ValueError("BandwidthRules.pause_ratio must be positive")
        if self.loss_reports < 1:
            raise ValueError("BandwidthRules.loss_reports must be at least 1")
        if not 0 <= self.loss_resume < self.loss_pause <= 1:
            raise ValueError("BandwidthRules needs 0 <= loss_resume < loss_pause <= 1")
        for name in ("settle_s", "probe_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"BandwidthRules.{name} must not be negative")
        for name in ("resume_hold_s", "report_max_age_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"BandwidthRules.{name} must be positive")
        if self.resume_hold_max_s < self.resume_hold_s:
            raise ValueError("BandwidthRules.resume_hold_max_s must be at least resume_hold_s")


@dataclass(frozen=True)
class VideoNeed:
    """One video selected for the receiver, and the bitrate (bits per second) it needs."""

    publisher: str
    bps: float


@dataclass
class _Report:
    at: float
    value: float
    falling: bool = False


class ReceiverLink:
    """The feedback of one receiver and the videos it is forwarded (see the module)."""

    def __init__(self, rules: BandwidthRules | None = None) -> None:
        self.rules = rules or BandwidthRules()
        self._remb: dict[int, _Report] = {}
        """Each SSRC's share of the latest REMB that covers it."""
        self._remb_sets: dict[frozenset[int], _Report] = {}
        """The latest REMB for each set of SSRCs, and whether it was lower than the one before."""
        self._loss: dict[int, _Report] = {}
        self._lossy: dict[int, int] = {}
        """For each SSRC, how many of its reports in a row (since the last change settled)
        said ``loss_pause`` or more."""
        self._limit: int | None = None
        """How many videos, from the front, are forwarded; ``None``: all of them."""
        self._changed_at = -float("inf")
        self._resumed_at: float | None = None
        self._healthy_since: float | None = None
        self._hold = self.rules.resume_hold_s

    # --- feedback -----------------------------------------------------------------------------

    def note_remb(self, now: float, bitrate: float, ssrcs: Iterable[int]) -> None:
        """A REMB of ``bitrate`` bits per second covering ``ssrcs`` reached the server."""
        covered = list(dict.fromkeys(ssrcs))
        if not covered or bitrate < 0:
            return
        share = bitrate / len(covered)
        for ssrc in covered:
            self._remb[ssrc] = _Report(now, share)
        key = frozenset(covered)
        self._forget(self._remb_sets, now)
        before = self._remb_sets.get(key)
        self._remb_sets[key] = _Report(now, bitrate, before is not None
                                       and bitrate < before.value)

    def note_loss(self, now: float, ssrc: int, fraction: float) -> None:
        """A receiver report said ``fraction`` (0 to 1) of ``ssrc``'s packets were lost."""
        if 0 <= fraction <= 1:
            self._loss[ssrc] = _Report(now, fraction)
            if fraction < self.rules.loss_pause:
                self._lossy[ssrc] = 0
            elif now >= self._changed_at + self.rules.settle_s:
                self._lossy[ssrc] = self._lossy.get(ssrc, 0) + 1

    def estimate(self, now: float) -> float | None:
        """The receiver's estimate in bits per second, or ``None`` when there is none."""
        self._forget(self._remb, now)
        if not self._remb:
            return None
        return sum(report.value for report in self._remb.values())

    def falling(self, now: float) -> bool:
        """Whether the latest REMB for some set of SSRCs is lower than the one before (of
        those that reached the server ``settle_s`` or more after the last change)."""
        self._forget(self._remb_sets, now)
        since = self._changed_at + self.rules.settle_s
        return any(r.falling for r in self._remb_sets.values() if r.at >= since)

    def loss(self, now: float) -> float | None:
        """The highest loss reported since the last change settled, or ``None``."""
        self._forget(self._loss, now)
        since = self._changed_at + self.rules.settle_s
        fractions = [r.value for r in self._loss.values() if r.at >= since]
        return max(fractions) if fractions else None

    def lossy(self, now: float) -> bool:
        """Whether some stream's reports, ``loss_reports`` in a row and the latest still
        current, say ``loss_pause`` or more since the last change settled."""
        since = self._changed_at + self.rules.settle_s
        self._forget(self._loss, now)
        return any(self._lossy.get(ssrc, 0) >= self.rules.loss_reports and r.at >= since
                   for ssrc, r in self._loss.items())

    def _forget(self, reports: dict[Any, _Report], now: float) -> None:
        oldest = now - self.rules.report_max_age_s
        for ssrc in [s for s, r in reports.items() if r.at < oldest]:
            del reports[ssrc]

    # --- the decision -------------------------------------------------------------------------

    @property
    def hold_s(self) -> float:
        """How long the link must now look healthy before a paused video resumes."""
        return self._hold

    def decide(self, now: float, videos: Sequence[VideoNeed]) -> frozenset[str]:
        """The publishers among ``videos`` (most important first) to pause now."""
        rules = self.rules
        count = len(videos)
        forwarded = count if self._limit is None else min(self._limit, count)
        if self._resumed_at is not None and now - self._resumed_at >= rules.probe_s:
            self._resumed_at = None
            self._hold = rules.resume_hold_s
        estimate = self.estimate(now)
        falling = estimate is not None and self.falling(now)
        loss = self.loss(now)
        keep = forwarded
        if estimate is not None and falling:
            while keep > 0 and _need(videos, keep) * rules.pause_ratio > estimate:
                keep -= 1
        if keep == forwarded and self.lossy(now):
            # One more video that needs something: pausing one that sends nothing (a camera
            # that is off) would not change the loss.
            while keep > 0:
                keep -= 1
                if videos[keep].bps > 0:
                    break
        if keep < forwarded:
            self._pause(now, keep)
        elif forwarded < count:
            self._maybe_resume(now, videos, forwarded, falling, loss)
        else:
            self._limit = None
        forwarded = count if self._limit is None else min(self._limit, count)
        return frozenset(video.publisher for video in videos[forwarded:])

    def _pause(self, now: float, keep: int) -> None:
        rules = self.rules
        if self._resumed_at is not None and now - self._resumed_at < rules.probe_s:
            self._hold = min(2 * self._hold, rules.resume_hold_max_s)
        self._resumed_at = None
        self._limit = keep
        self._changed_at = now
        self._healthy_since = None
        self._lossy.clear()

    def _maybe_resume(self, now: float, videos: Sequence[VideoNeed], forwarded: int,
                      falling: bool, loss: float | None) -> None:
        rules = self.rules
        if falling or (loss is not None and loss > rules.loss_resume):
            self._healthy_since = None
            return
        if self._healthy_since is None:
            self._healthy_since = now
        if now - self._healthy_since < self._hold:
            return
        self._limit = None if forwarded + 1 >= len(videos) else forwarded + 1
        self._changed_at = now
        self._resumed_at = now
        self._healthy_since = now


def _need(videos: Sequence[VideoNeed], count: int) -> float:
    return sum(video.bps for video in videos[:count])
