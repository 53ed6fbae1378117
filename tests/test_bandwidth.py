"""The receiver-aware video policy (vio.media.bandwidth), pure and driven by a table of cases;
and the RTCP it reads, observed at a sender of a real connection."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from dataclasses import dataclass

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtcpRrPacket, unpack_remb_fci

from tests.conftest import seconds
from vio.media import CounterVideoTrack, announce_host_addresses, seams
from vio.media.bandwidth import BandwidthRules, ReceiverLink, VideoNeed
from vio.models import WaitingRoomPolicy
from vio.rooms.effects import Send

# The table below judges each lossy report on its own; the default waits for two in a row
# (tested after the table).
RULES = BandwidthRules(loss_reports=1)

# The therapist first, then two patients by how recently they spoke; 300 kbit/s each.
GROUP = (VideoNeed("therapist", 300_000), VideoNeed("ana", 300_000), VideoNeed("ben", 300_000))
SSRCS = (11, 12, 13)
AUDIO_SSRC = 21


@dataclass(frozen=True)
class Remb:
    at: float
    bps: float
    ssrcs: tuple[int, ...] = SSRCS


@dataclass(frozen=True)
class Loss:
    at: float
    fraction: float
    ssrc: int = AUDIO_SSRC


@dataclass(frozen=True)
class Decide:
    at: float
    paused: frozenset[str]
    videos: tuple[VideoNeed, ...] = GROUP


def paused(*names: str) -> frozenset[str]:
    return frozenset(names)


NONE = paused()
LAST = paused("ben")
PATIENTS = paused("ana", "ben")
ALL = paused("therapist", "ana", "ben")

# Each case: what reaches the server, in order, and what the policy pauses at each decision.
CASES: dict[str, list[Remb | Loss | Decide]] = {
    "an estimate that covers every video pauses none": [
        Remb(0, 2_000_000), Loss(0, 0.0), Decide(0.5, NONE)],
    "no feedback at all pauses none": [Decide(0, NONE), Decide(10, NONE)],
    "an estimate falling below what three need pauses the least important": [
        Remb(0, 1_000_000), Remb(0.5, 500_000), Decide(0.6, LAST)],
    "a low falling estimate keeps only the therapist": [
        Remb(0, 1_000_000), Remb(0.5, 250_000), Decide(0.6, PATIENTS)],
    "an estimate falling below one video pauses the therapist's too, last": [
        Remb(0, 1_000_000), Remb(0.5, 100_000), Decide(0.6, ALL)],
    "an estimate falling within the pause ratio of the need pauses none": [
        Remb(0, 1_000_000), Remb(0.5, 800_000), Decide(0.6, NONE)],
    "a low estimate that is not falling pauses none (it rises after a resume)": [
        Remb(0, 100_000), Decide(0.1, NONE), Remb(0.5, 150_000), Decide(0.6, NONE),
        Remb(1, 150_000), Decide(1.1, NONE)],
    "aiortc's one REMB per stream adds up": [
        *[Remb(0, 300_000, (ssrc,)) for ssrc in SSRCS], Decide(0.1, NONE),
        *[Remb(0.5, 200_000, (ssrc,)) for ssrc in SSRCS], Decide(0.6, LAST)],
    "the same estimate repeated after a fall is steady (Chromium, every video paused)": [
        Remb(0, 1_000_000), Remb(0, 100_000), Decide(0, ALL),
        *[step for t in range(1, 5) for step in (Remb(t, 100_000), Decide(t, ALL))],
        Remb(5, 100_000), Decide(1 + RULES.resume_hold_s, PATIENTS)],
    "Chromium's one REMB for all streams is shared, not counted thrice": [
        Remb(0, 900_000), Decide(0.1, NONE), Remb(1, 600_000), Decide(1.1, LAST)],
    "a REMB fall that reaches the server right after a change does not judge it": [
        Loss(0, 0.3), Decide(0, LAST),
        Remb(0.5, 1_000_000), Remb(RULES.settle_s - 0.1, 100_000),
        Decide(RULES.settle_s - 0.1, LAST),
        Remb(RULES.settle_s, 90_000), Decide(RULES.settle_s, ALL)],
    "a REMB for another set of streams is not a fall": [
        Remb(0, 900_000), Remb(0.5, 500_000, (11, 12)), Decide(0.6, NONE)],
    "an old estimate is forgotten": [
        Remb(0, 1_000_000), Remb(0.1, 100_000), Decide(RULES.report_max_age_s + 1, NONE)],
    "loss pauses one video at a time, each judged after it settles": [
        Loss(0, 0.2), Decide(0.1, LAST),
        Loss(0.5, 0.2), Decide(0.6, LAST),
        Loss(0.1 + RULES.settle_s, 0.2), Decide(0.2 + RULES.settle_s, PATIENTS),
        Loss(0.3 + 2 * RULES.settle_s, 0.2), Decide(0.4 + 2 * RULES.settle_s, ALL),
        Loss(0.5 + 3 * RULES.settle_s, 0.2), Decide(0.6 + 3 * RULES.settle_s, ALL)],
    "loss on a video stream counts like loss on audio": [Loss(0, 0.5, ssrc=12), Decide(0, LAST)],
    "loss below the pause threshold pauses none": [Loss(0, 0.05), Decide(0.1, NONE)],
    "loss skips a camera that sends nothing": [
        Loss(0, 0.3),
        Decide(0.1, paused("ana", "ben"),
               (VideoNeed("therapist", 300_000), VideoNeed("ana", 300_000),
                VideoNeed("ben", 0)))],
    "a healthy link resumes one video after the hold": [
        Loss(0, 0.3), Decide(0, LAST),
        Loss(2, 0.0), Decide(2, LAST),
        Loss(3, 0.0), Decide(2 + RULES.resume_hold_s - 0.1, LAST),
        Loss(5, 0.0), Decide(2 + RULES.resume_hold_s, NONE)],
    "loss between the two thresholds neither pauses nor resumes": [
        Loss(0, 0.3), Decide(0, LAST),
        *[step for t in range(2, 30, 1) for step in (Loss(t, 0.05), Decide(t + 0.1, LAST))]],
    "resumes happen one at a time, from the most important": [
        Remb(0, 1_000_000), Remb(0, 100_000), Decide(0, ALL),
        Decide(RULES.report_max_age_s + 0.5, ALL),
        Decide(RULES.report_max_age_s + 0.5 + RULES.resume_hold_s, PATIENTS),
        Decide(RULES.report_max_age_s + 0.5 + 2 * RULES.resume_hold_s + 0.1, LAST),
        Decide(RULES.report_max_age_s + 0.5 + 3 * RULES.resume_hold_s + 0.2, NONE)],
    "a falling estimate holds back resumes": [
        Remb(0, 1_000_000, (11, 12)), Remb(0, 250_000, (11, 12)), Decide(0, PATIENTS),
        *[step for t in range(1, 40) for step in (
            Remb(t, 250_000 - 100 * t, (11,)), Loss(t, 0.0), Decide(t + 0.1, PATIENTS))]],
    "a steady or rising estimate lets one more be tried after the hold": [
        Remb(0, 1_000_000, (11, 12)), Remb(0, 250_000, (11, 12)), Decide(0, PATIENTS),
        *[step for t in range(1, 5) for step in (
            Remb(t, 250_000 + 10_000 * t, (11,)), Decide(t, PATIENTS))],
        Remb(5, 300_000, (11,)), Decide(5, LAST)],
    "a failed resume doubles the hold": [
        Loss(0, 0.3), Decide(0, LAST),
        Decide(1, LAST), Decide(1 + RULES.resume_hold_s, NONE),
        Loss(2 + RULES.resume_hold_s + RULES.settle_s, 0.3),
        Decide(2 + RULES.resume_hold_s + RULES.settle_s, LAST),
        Decide(3 + RULES.resume_hold_s + RULES.settle_s, LAST),
        Decide(3 + 3 * RULES.resume_hold_s + RULES.settle_s - 0.1, LAST),
        Decide(3 + 3 * RULES.resume_hold_s + RULES.settle_s, NONE)],
}


@pytest.mark.parametrize("steps", CASES.values(), ids=list(CASES))
def test_policy(steps: list[Remb | Loss | Decide]) -> None:
    link = ReceiverLink(RULES)
    for number, step in enumerate(steps):
        if isinstance(step, Remb):
            link.note_remb(step.at, step.bps, step.ssrcs)
        elif isinstance(step, Loss):
            link.note_loss(step.at, step.ssrc, step.fraction)
        else:
            got = link.decide(step.at, step.videos)
            assert got == step.paused, f"step {number} at {step.at} s"


def test_by_default_one_lossy_report_is_a_burst_and_two_in_a_row_a_weak_link() -> None:
    link = ReceiverLink()
    link.note_loss(0, AUDIO_SSRC, 0.4)
    assert link.decide(0.1, GROUP) == NONE  # one lossy second
    link.note_loss(1, AUDIO_SSRC, 0.0)
    link.note_loss(2, AUDIO_SSRC, 0.4)
    assert link.decide(2.1, GROUP) == NONE  # a healthy report in between: still bursts
    link.note_loss(3, AUDIO_SSRC, 0.3)
    assert link.decide(3.1, GROUP) == LAST  # two in a row
    settled = 3.1 + BandwidthRules().settle_s
    link.note_loss(3.5, AUDIO_SSRC, 0.3)  # within the settle time: describes the old link
    link.note_loss(settled + 0.1, AUDIO_SSRC, 0.3)
    assert link.decide(settled + 0.2, GROUP) == LAST  # one since the pause settled
    link.note_loss(settled + 1.1, AUDIO_SSRC, 0.3)
    assert link.decide(settled + 1.2, GROUP) == PATIENTS


def test_hold_doubles_up_to_its_cap_and_resets_after_a_resume_that_lasts() -> None:
    rules = BandwidthRules(resume_hold_s=2, resume_hold_max_s=5, probe_s=3, settle_s=0.05,
                           loss_reports=1)
    link = ReceiverLink(rules)
    now = 0.0
    holds = []
    for _ in range(4):
        link.note_loss(now, AUDIO_SSRC, 0.5)
        assert link.decide(now, GROUP) == LAST
        holds.append(link.hold_s)
        now += 0.1
        link.decide(now, GROUP)  # healthy from here (the loss report is consumed)
        now += link.hold_s
        link.note_loss(now, AUDIO_SSRC, 0.0)
        assert link.decide(now, GROUP) == NONE
        now += 1  # fails within the probe window
    assert holds == [2, 4, 5, 5]
    link.note_loss(now, AUDIO_SSRC, 0.0)
    now += rules.probe_s
    assert link.decide(now, GROUP) == NONE
    assert link.hold_s == rules.resume_hold_s


def test_a_newcomer_beyond_the_limit_stays_paused_and_a_new_speaker_displaces_the_last() -> None:
    link = ReceiverLink(RULES)
    link.note_remb(0, 1_000_000, SSRCS)
    link.note_remb(0, 500_000, SSRCS)
    assert link.falling(0)
    assert link.decide(0, GROUP) == LAST
    dan = VideoNeed("dan", 300_000)
    assert link.decide(0.2, (*GROUP, dan)) == paused("ben", "dan")
    assert link.decide(0.4, (GROUP[0], dan, GROUP[1], GROUP[2])) == paused("ana", "ben")


def test_feedback_out_of_range_is_ignored() -> None:
    link = ReceiverLink(RULES)
    link.note_loss(0, AUDIO_SSRC, 1.5)
    link.note_loss(0, AUDIO_SSRC, -0.1)
    link.note_remb(0, -5, SSRCS)
    link.note_remb(0, 1000, ())
    assert link.loss(0) is None
    assert link.estimate(0) is None
    assert link.decide(0, GROUP) == NONE


@pytest.mark.parametrize("bad", [
    {"pause_ratio": 0}, {"loss_pause": 0.01, "loss_resume": 0.02}, {"loss_reports": 0},
    {"loss_pause": 1.5}, {"settle_s": -1}, {"resume_hold_s": 0},
    {"resume_hold_s": 10, "resume_hold_max_s": 5}, {"report_max_age_s": 0},
])
def test_bad_rules_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="BandwidthRules"):
        BandwidthRules(**bad)


# --- the RTCP the policy reads, from a real receiver ------------------------------------------

RTCP_SECONDS = 10.0
"""How long an aiortc receiver may take to send receiver reports and REMB (about 1 s each)."""


async def test_rtcp_observers_see_a_receivers_reports_and_remb_and_aiortc_still_handles_them(
) -> None:
    """Two observers on one sender of a real connection over loopback: each sees the receiver
    reports and REMB, aiortc's own handler still gets them (its remote-inbound stats), and
    the observers go with the sender."""
    announce_host_addresses(["127.0.0.1"])
    config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    sending, receiving = RTCPeerConnection(config), RTCPeerConnection(config)
    first: list[object] = []
    second: list[object] = []
    try:
        sender = sending.addTrack(CounterVideoTrack())
        seams.observe_sender_rtcp(sender, first.append)
        seams.observe_sender_rtcp(sender, second.append)
        await sending.setLocalDescription(await sending.createOffer())
        await receiving.setRemoteDescription(sending.localDescription)
        await receiving.setLocalDescription(await receiving.createAnswer())
        await sending.setRemoteDescription(receiving.localDescription)

        def seen(kind: type, packets: list[object]) -> bool:
            return any(isinstance(p, kind) for p in packets)

        deadline = time.monotonic() + seconds(RTCP_SECONDS)
        while not (seen(RtcpRrPacket, first) and any(
                isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_APP for p in first)):
            assert time.monotonic() < deadline, first
            await asyncio.sleep(0.1)
        assert second[: len(first)] == first[: len(second)]
        stats = await sender.getStats()
        assert any(s.type == "remote-inbound-rtp" for s in stats.values())
        remb = next(p for p in first if isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_APP)
        bitrate, ssrcs = unpack_remb_fci(remb.fci)
        assert bitrate > 0 and ssrcs
    finally:
        await sending.close()
        await receiving.close()
        announce_host_addresses([])
    gone = weakref.ref(sender)
    del sender, sending
    gc.collect()
    assert gone() is None


# --- the message, from the room -------------------------------------------------------------


def test_the_room_tells_only_the_receiver_which_videos_its_link_cannot_carry() -> None:
    from tests.test_room import PATIENTS, THERAPIST, join, new_room

    room = new_room(waiting_room=WaitingRoomPolicy.OPEN)
    jordan, _ = join(room, THERAPIST)
    dana, _ = join(room, PATIENTS[0])
    eli, _ = join(room, PATIENTS[1])
    effects = room.video_paused(dana.id, [jordan.id, eli.id])
    assert [(e.to, e.message) for e in effects if isinstance(e, Send)] == [
        ((dana.outbox,), {"type": "video-paused", "participant_ids": [jordan.id, eli.id],
                          "reason": "bandwidth"})]
    (back,) = room.video_paused(dana.id, [])
    assert isinstance(back, Send) and back.message["participant_ids"] == []
    assert room.video_paused("p-gone", [jordan.id]) == []
