"""RTP-level forwarding (vio.media.rtp_forwarding) between real aiortc peers over loopback.

The loss test runs the whole MediaRouter; the change-of-publisher test wires the forwarding
pieces (an RtpSource per published track, an RtpLeg per receiving leg) into plain server-side
peer connections, because the router itself never changes a leg's publisher yet. Receivers
decode with aiortc's ordinary VP8 decoder and read back each frame's drawn counter.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable
from typing import Any

import av
import pytest
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtp import RtpPacket, is_rtcp

from vio.media import CounterVideoTrack, MediaConfig, read_counter, seams
from vio.media.bandwidth import BandwidthRules
from vio.media.router import MediaRouter
from vio.media.rtp_forwarding import (
    LegTrack,
    RtpLeg,
    RtpSource,
    attach_rtp_source,
    vp8_starts_keyframe,
)

from .test_media_forwarding import SCALE, Client, eventually, loopback_only, room

__all__ = ["loopback_only"]

LOSS = 0.05
"""Share of the server's RTP packets to a receiver that the lossy link drops."""
MEASURE_S = 8.0
"""How long decoded frames are counted (scaled)."""
FPS = 30
IN_FLIGHT_FRAMES = FPS // 2
"""Frames made in the last half second of the window need not have been decoded yet."""


def _vp8_payloads(encoder: Vp8Encoder, track: CounterVideoTrack, index: int,
                  force_keyframe: bool = False) -> list[bytes]:
    payloads, _ = encoder.encode(track.frame(index), force_keyframe=force_keyframe)
    return payloads


def test_vp8_keyframes_are_recognised_in_rtp_payloads() -> None:
    encoder = Vp8Encoder()
    track = CounterVideoTrack(640, 480)
    first = _vp8_payloads(encoder, track, 0)
    second = _vp8_payloads(encoder, track, 1)
    forced = _vp8_payloads(encoder, track, 2, force_keyframe=True)
    assert vp8_starts_keyframe(first[0]) and vp8_starts_keyframe(forced[0])
    assert not vp8_starts_keyframe(second[0])
    assert not any(vp8_starts_keyframe(p) for p in first[1:] + second[1:] + forced[1:])
    assert not vp8_starts_keyframe(b"") and not vp8_starts_keyframe(b"\x90")


# --- loss between the server and one receiver -------------------------------------------------


class LossyClient(Client):
    """A device behind a link that drops ``LOSS`` of the RTP packets coming to it.

    The drop happens where the device's ICE connection takes in a datagram, before SRTP:
    RTCP in both directions and everything the device sends are left alone.
    """

    def __init__(self, pid: str, router: MediaRouter, *, amplitude: float) -> None:
        super().__init__(pid, router, amplitude=amplitude)
        self.dropped = 0
        self.passed = 0
        rng = random.Random(15)
        connection: Any = self.pc.getTransceivers()[0].receiver.transport.transport._connection
        deliver = connection.data_received

        def lossy(data: bytes, component: int) -> None:
            if 127 < data[0] < 192 and not is_rtcp(data):
                if rng.random() < LOSS:
                    self.dropped += 1
                    return
                self.passed += 1
            deliver(data, component)

        connection.data_received = lossy


class CountingVideoTrack(CounterVideoTrack):
    """Counter video that remembers the last frame it made."""

    last_index = -1

    def frame(self, index: int) -> av.VideoFrame:
        self.last_index = index
        return super().frame(index)


class FastVideoClient(Client):
    """Publishes its counter video at ``FPS``."""

    def __init__(self, pid: str, router: MediaRouter, *, amplitude: float) -> None:
        super().__init__(pid, router, amplitude=amplitude)
        self.camera = CountingVideoTrack(fps=FPS)
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.sender.replaceTrack(self.camera)


@pytest.mark.asyncio
async def test_nack_recovers_five_percent_loss_to_a_receiver(loopback_only: None) -> None:
    # Receiver-aware video would pause a lossy receiver's video; here it must keep flowing,
    # so that what is measured is NACK's recovery.
    keep_video = BandwidthRules(pause_ratio=1e-9, loss_pause=1.0, loss_resume=0.99)
    async with room(MediaConfig(bandwidth=keep_video)) as r:
        therapist = await r.join("therapist", therapist=True, client_class=FastVideoClient)
        assert isinstance(therapist, FastVideoClient)
        viewer = await r.join("viewer", client_class=LossyClient)
        assert isinstance(viewer, LossyClient)
        await eventually(lambda: len(viewer.video["therapist"]) >= 10, 10, "the first frames")

        start = len(viewer.video["therapist"])
        await asyncio.sleep(MEASURE_S * SCALE)
        counters = [c for _, c in viewer.video["therapist"][start:]]
        assert None not in counters, "a frame did not decode to its counter"
        decoded = [c for c in counters if c is not None]
        # Every frame made from the window's first decoded one until IN_FLIGHT_FRAMES before
        # the window ended should have been decoded by then.
        last_due = therapist.camera.last_index - IN_FLIGHT_FRAMES
        expected = last_due - decoded[0] + 1
        due = len({c for c in decoded if c <= last_due})
        share = due / expected
        legs = [
            leg.track
            for p in r.router._participants.values()
            for leg in p.outgoing.values()
            if p.pid == "viewer" and leg.kind == "video"
        ]
        print(f"{viewer.dropped} of {viewer.dropped + viewer.passed} RTP packets dropped; "
              f"{legs[0].retransmitted} retransmitted; decoded {due} of "
              f"{expected} frames ({share:.2%})")
        assert viewer.dropped >= 0.03 * (viewer.dropped + viewer.passed)
        assert legs[0].retransmitted > 0
        assert decoded == sorted(decoded)
        assert share >= 0.99, f"decoded {share:.2%} of the frames"


# --- a leg changes publisher ------------------------------------------------------------------


class OffsetCounterTrack(CounterVideoTrack):
    """Counter video whose counter starts at ``offset``: tells two publishers apart."""

    def __init__(self, offset: int) -> None:
        super().__init__()
        self.offset = offset

    def frame(self, index: int) -> av.VideoFrame:
        return super().frame(index + self.offset)


def _peer() -> RTCPeerConnection:
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


def _pin_vp8(transceiver: Any) -> None:
    transceiver.setCodecPreferences([
        c for c in RTCRtpSender.getCapabilities("video").codecs
        if c.mimeType.lower() in ("video/vp8", "video/rtx")
    ])


async def _negotiate(server: RTCPeerConnection, client: RTCPeerConnection) -> None:
    await server.setLocalDescription(await server.createOffer())
    await client.setRemoteDescription(server.localDescription)
    await client.setLocalDescription(await client.createAnswer())
    await server.setRemoteDescription(
        RTCSessionDescription(sdp=client.localDescription.sdp, type="answer")
    )


@pytest.mark.asyncio
async def test_a_change_of_publisher_is_decodable_from_the_next_keyframe(
    loopback_only: None, caplog: pytest.LogCaptureFixture
) -> None:
    peers: list[RTCPeerConnection] = []
    readers: list[asyncio.Task[None]] = []
    requests: collections.Counter[str] = collections.Counter()
    pending: set[asyncio.Future[None]] = set()
    try:
        sources = {}
        for name, offset in (("ann", 0), ("bob", 30000)):
            server, client = _peer(), _peer()
            peers += [server, client]
            client.addTrack(OffsetCounterTrack(offset))
            transceiver = server.addTransceiver("video", direction="recvonly")
            _pin_vp8(transceiver)
            receiver = transceiver.receiver

            def ask(name: str = name, receiver: Any = receiver) -> None:
                requests[name] += 1
                for s in receiver.getSynchronizationSources():
                    pli = asyncio.ensure_future(seams.send_pli(receiver, s.source))
                    pending.add(pli)
                    pli.add_done_callback(pending.discard)

            sources[name] = RtpSource("video", send_keyframe_request=ask, keyframe_throttle_s=0.5)
            attach_rtp_source(receiver, sources[name])
            await _negotiate(server, client)

        server, viewer = _peer(), _peer()
        peers += [server, viewer]
        transceiver = server.addTransceiver(LegTrack("video"), direction="sendonly")
        _pin_vp8(transceiver)
        leg = RtpLeg(sources["ann"], transceiver.sender)
        frames: list[tuple[float, int | None, int]] = []

        def on_track(track: MediaStreamTrack) -> None:
            async def read() -> None:
                try:
                    while True:
                        frame: Any = await track.recv()
                        frames.append((time.monotonic(), read_counter(frame), frame.pts))
                except MediaStreamError:
                    pass

            readers.append(asyncio.create_task(read()))

        viewer.on("track", on_track)
        await _negotiate(server, viewer)

        def from_(low: int, high: int) -> Callable[[], int]:
            return lambda: sum(1 for _, c, _ in frames if c is not None and low <= c < high)

        await eventually(lambda: from_(0, 30000)() >= 15, 10, "ann's video at the viewer")
        switched_at = time.monotonic()
        before = len(frames)
        leg.set_source(sources["bob"])
        await eventually(lambda: from_(30000, 65536)() >= 30, 10, "bob's video at the viewer")

        after = frames[before:]
        counters = [c for _, c, _ in after]
        assert None not in counters, "a frame after the change did not decode"
        first_bob = next(i for i, c in enumerate(counters) if c is not None and c >= 30000)
        bob = [c for c in counters[first_bob:] if c is not None]
        assert all(c >= 30000 for c in bob), "ann's frames after bob's"
        assert bob == list(range(bob[0], bob[0] + len(bob))), "a frame of bob's was lost"
        # Timestamps run on across the change (the decoder sees one stream).
        pts = [p for _, _, p in frames]
        assert pts == sorted(pts)
        stats = await viewer.getStats()
        inbound = [s for s in stats.values() if s.type == "inbound-rtp"]
        assert [s.packetsLost for s in inbound] == [0], "sequence numbers jumped"
        # The leg's own sender reports reached the viewer, counting what it forwarded.
        reported = [s.packetsSent for s in stats.values() if s.type == "remote-outbound-rtp"]
        assert len(reported) == 1 and 0 < reported[0] <= leg.packets_sent, reported
        print(f"bob's first frame {after[first_bob][0] - switched_at:.2f} s after the change; "
              f"keyframe requests {dict(requests)}")
        assert requests["bob"] >= 1
        assert not [rec for rec in caplog.records if "failed to decode" in rec.getMessage()]

        # A long run: far more than 2**15 packets after forwarding started, every one still
        # goes out (the start is kept within reach, so the comparison never wraps around).
        latest: list[RtpPacket] = []
        add = sources["bob"].add
        sources["bob"].add = lambda packet: (latest.append(packet), add(packet))[1]  # type: ignore[method-assign]
        await eventually(lambda: bool(latest), 2, "a packet from bob")
        template = latest[-1]
        sent = leg.packets_sent
        filler = b"\x80\x80\x80\x01" + bytes(8)  # a VP8 continuation: never starts a frame
        for i in range(1, 40001):
            packet = RtpPacket(payload_type=template.payload_type,
                               sequence_number=(template.sequence_number + i) & 0xFFFF,
                               timestamp=template.timestamp, ssrc=template.ssrc)
            packet.payload = filler
            leg.forward(packet, False, time.time(), 0)
        assert leg.packets_sent - sent == 40000
    finally:
        for peer in peers:
            await peer.close()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

