"""Media forwarding through a MediaRouter between real aiortc peers over loopback.

Client peers stand in for browsers: each publishes a CounterVideoTrack and a ToneAudioTrack and
decodes what it receives with aiortc's ordinary decoders. Signalling is direct calls. Every ICE
candidate is 127.0.0.1 and no STUN server is used (DESIGN.md, "Media facts").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aioice.ice
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtp import RtpPacket

from vio.media import (
    CounterVideoTrack,
    MediaConfig,
    MediaError,
    MediaRouter,
    MediaState,
    ToneAudioTrack,
    TrackInfo,
    announce_host_addresses,
    install_passthrough_hooks,
    read_counter,
    rtc_configuration,
)
from vio.media.rtp_forwarding import RtpSource, vp8_starts_keyframe

SCALE = float(os.environ.get("VIO_TEST_TIMEOUT_SCALE", "1"))
"""Multiplies every wait in this module, for slow machines."""

POLL_S = 0.05


async def eventually(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds * SCALE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds * SCALE:.1f} s waiting for {what}")
        await asyncio.sleep(POLL_S)


class Client:
    """A participant's device: an aiortc peer that answers the router's offers."""

    def __init__(self, pid: str, router: MediaRouter, *, amplitude: float) -> None:
        self.pid = pid
        self.router = router
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self.pc.addTrack(ToneAudioTrack(amplitude=amplitude))
        self.pc.addTrack(CounterVideoTrack())
        self.pc.on("track", self._on_track)
        self.publisher_of_mid: dict[str, str] = {}
        self.video: dict[str, list[tuple[float, int | None]]] = collections.defaultdict(list)
        self.audio: dict[str, list[float]] = collections.defaultdict(list)
        self.ended: set[tuple[str, str]] = set()
        self.sdps: list[str] = []
        self._readers: list[asyncio.Task[None]] = []

    async def on_offer(self, sdp: str, tracks: list[TrackInfo]) -> None:
        self.publisher_of_mid.update({t.mid: t.publisher for t in tracks})
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self.sdps += [sdp, self.pc.localDescription.sdp]
        await self.router.accept_answer(self.pid, self.pc.localDescription.sdp)

    def _on_track(self, track: MediaStreamTrack) -> None:
        mid = next(t.mid for t in self.pc.getTransceivers() if t.receiver.track is track)
        assert mid is not None
        self._readers.append(asyncio.create_task(self._read(self.publisher_of_mid[mid], track)))

    async def _read(self, publisher: str, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame: Any = await track.recv()
                if track.kind == "video":
                    self.video[publisher].append((time.monotonic(), read_counter(frame)))
                else:
                    self.audio[publisher].append(time.monotonic())
        except MediaStreamError:
            self.ended.add((publisher, track.kind))

    def directions_from(self, publisher: str) -> list[str | None]:
        return [
            t.currentDirection
            for t in self.pc.getTransceivers()
            if t.mid is not None and self.publisher_of_mid.get(t.mid) == publisher
        ]

    def has_media_from(self, publishers: list[str], frames: int = 1) -> bool:
        return all(
            len(self.video[p]) >= frames and len(self.audio[p]) >= frames for p in publishers
        )

    async def close(self) -> None:
        await self.pc.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


class ClientWithAStrippedFirstAnswer(Client):
    """Answers the first offer without ``a=fingerprint`` first, then with the genuine answer."""

    refusals: list[str]

    async def on_offer(self, sdp: str, tracks: list[TrackInfo]) -> None:
        if hasattr(self, "refusals"):
            await super().on_offer(sdp, tracks)
            return
        self.refusals = []
        self.publisher_of_mid.update({t.mid: t.publisher for t in tracks})
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        genuine = self.pc.localDescription.sdp
        stripped = "".join(
            line
            for line in genuine.splitlines(keepends=True)
            if not line.startswith("a=fingerprint:")
        )
        try:
            await self.router.accept_answer(self.pid, stripped)
        except MediaError as error:
            self.refusals.append(str(error))
        await self.router.accept_answer(self.pid, genuine)


class Room:
    """A MediaRouter with client peers joined to it by direct calls."""

    def __init__(self, config: MediaConfig) -> None:
        self.states: dict[str, list[MediaState]] = collections.defaultdict(list)
        self.router = MediaRouter(
            config, on_media_state_changed=lambda pid, state: self.states[pid].append(state)
        )
        self.clients: dict[str, Client] = {}

    async def join(
        self,
        pid: str,
        *,
        therapist: bool = False,
        amplitude: float = 0.3,
        client_class: type[Client] = Client,
    ) -> Client:
        client = client_class(pid, self.router, amplitude=amplitude)
        self.clients[pid] = client
        await self.router.add_participant(pid, is_therapist=therapist, on_offer=client.on_offer)
        return client

    async def leave(self, pid: str) -> None:
        await self.router.remove_participant(pid)
        await self.clients.pop(pid).close()

    async def close(self) -> None:
        await self.router.close()
        await asyncio.gather(*(c.close() for c in self.clients.values()))


@pytest.fixture
def loopback_only() -> Iterator[None]:
    announce_host_addresses(["127.0.0.1"])
    yield
    announce_host_addresses([])


@contextlib.asynccontextmanager
async def room(config: MediaConfig | None = None) -> AsyncIterator[Room]:
    the_room = Room(config or MediaConfig())
    try:
        yield the_room
    finally:
        await the_room.close()


@pytest.fixture
def codecs_made(monkeypatch: pytest.MonkeyPatch) -> dict[str, collections.Counter[str]]:
    """Counts, by class, every decoder and encoder aiortc's receivers and senders create."""
    install_passthrough_hooks()
    made: dict[str, collections.Counter[str]] = {
        "decoders": collections.Counter(),
        "encoders": collections.Counter(),
    }

    def counting(factory: Callable[[Any], Any], kind: str) -> Callable[[Any], Any]:
        def make(codec: Any) -> Any:
            codec_object = factory(codec)
            made[kind][type(codec_object).__name__] += 1
            return codec_object

        return make

    receiver_module: Any = aiortc.rtcrtpreceiver
    sender_module: Any = aiortc.rtcrtpsender
    monkeypatch.setattr(
        receiver_module, "get_decoder", counting(receiver_module.get_decoder, "decoders")
    )
    monkeypatch.setattr(
        sender_module, "get_encoder", counting(sender_module.get_encoder, "encoders")
    )
    return made


@pytest.mark.asyncio
async def test_four_participants_receive_each_other_without_server_transcoding(
    loopback_only: None,
    codecs_made: dict[str, collections.Counter[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    pids = ["therapist", "ann", "bob", "cat"]
    async with room() as r:
        for pid in pids:
            await r.join(pid, therapist=pid == "therapist")

        def everyone_receives(frames: int) -> bool:
            return all(
                c.has_media_from([p for p in pids if p != pid], frames)
                for pid, c in r.clients.items()
            )

        await eventually(lambda: everyone_receives(20), 10, "20 frames of each kind per leg")

        for pid, client in r.clients.items():
            for publisher in pids:
                if publisher == pid:
                    continue
                frames = client.video[publisher]
                counters = [counter for _, counter in frames if counter is not None]
                assert len(counters) == len(frames), f"{pid}: unreadable frames from {publisher}"
                assert counters == sorted(set(counters)), f"{pid}: {publisher} out of order"
        assert not [rec for rec in caplog.records if "failed to decode" in rec.getMessage()]

        # Clients: 4 publishers x (VP8 + Opus) encoders, 4 x 3 x 2 decoders. Server: none at
        # all, not even a passthrough stand-in: packets are forwarded as they are.
        assert codecs_made["encoders"] == {"Vp8Encoder": 4, "OpusEncoder": 4}
        assert codecs_made["decoders"] == {"Vp8Decoder": 4 * 3, "OpusDecoder": 4 * 3}

        for client in r.clients.values():
            candidates = [
                line for sdp in client.sdps for line in sdp.splitlines() if "candidate:" in line
            ]
            assert candidates
            assert all(" 127.0.0.1 " in line and " typ host" in line for line in candidates)

        for pid in pids:
            assert r.router.media_state(pid) == MediaState(True, True)
        await eventually(lambda: set(r.router.speaking()) == set(pids), 3, "all four speaking")


@pytest.mark.asyncio
async def test_join_gets_video_quickly_and_leaving_removes_tracks(loopback_only: None) -> None:
    async with room() as r:
        for pid in ("therapist", "ann", "bob"):
            await r.join(pid, therapist=pid == "therapist")
        await eventually(
            lambda: all(
                c.has_media_from([p for p in r.clients if p != pid]) for pid, c in r.clients.items()
            ),
            10,
            "the first three to see each other",
        )

        joined_at = time.monotonic()
        dan = await r.join("dan")
        await eventually(
            lambda: all(dan.video[p] for p in ("therapist", "ann", "bob")),
            2,
            "dan's first frame from each publisher",
        )
        first_frame_s = {p: dan.video[p][0][0] - joined_at for p in ("therapist", "ann", "bob")}
        print(f"first remote video frame after joining, seconds: {first_frame_s}")
        assert max(first_frame_s.values()) < 2 * SCALE, first_frame_s

        await r.leave("bob")
        await r.router.remove_participant("bob")  # idempotent

        def bob_gone(client: Client) -> bool:
            return {("bob", "audio"), ("bob", "video")} <= client.ended and client.directions_from(
                "bob"
            ) == ["inactive", "inactive"]

        for pid in ("therapist", "ann", "dan"):
            await eventually(
                functools.partial(bob_gone, r.clients[pid]),
                3,
                f"bob's tracks to end and his m-lines to turn inactive at {pid}",
            )
        assert r.states["bob"][-1] == MediaState(False, False)
        assert "bob" not in r.router.participants()

        seen = {p: len(dan.video[p]) for p in ("therapist", "ann")}
        await eventually(
            lambda: all(len(dan.video[p]) > seen[p] + 5 for p in seen),
            3,
            "the others' video to keep flowing to dan",
        )


@pytest.mark.asyncio
async def test_participants_leaving_at_the_same_time(loopback_only: None) -> None:
    pids = ["therapist", "ann", "bob", "cat"]
    async with room() as r:
        for pid in pids:
            await r.join(pid, therapist=pid == "therapist")
        therapist = r.clients["therapist"]
        await eventually(lambda: therapist.has_media_from(pids[1:]), 10, "the three patients")

        # Each leaver starts while the one before is still stopping its forwarded tracks.
        leavers = pids[1:]
        removals = []
        for pid in leavers:
            removals.append(asyncio.create_task(r.router.remove_participant(pid)))
            for _ in range(3):
                await asyncio.sleep(0)
        await asyncio.gather(*removals)

        assert r.router.participants() == ["therapist"]
        ended = {(pid, kind) for pid in leavers for kind in ("audio", "video")}
        await eventually(lambda: ended <= therapist.ended, 3, "the leavers' tracks to end")


@pytest.mark.asyncio
async def test_selective_video_forwarding(loopback_only: None) -> None:
    async with room(MediaConfig(max_video_forwarded=1)) as r:
        await r.join("therapist", therapist=True)
        for pid in ("ann", "bob", "cat"):
            await r.join(pid)
        viewer = await r.join("viewer", amplitude=0.0)

        speakers = {"therapist", "ann", "bob", "cat"}
        await eventually(lambda: set(r.router.speaking()) == speakers, 5, "the four speakers")
        await eventually(lambda: bool(viewer.video["therapist"]), 5, "the therapist's video")
        await eventually(
            lambda: all(viewer.audio[p] for p in speakers), 5, "everyone's audio at the viewer"
        )

        # Count what arrives over a window once the speaker order has settled.
        await asyncio.sleep(0.5 * SCALE)
        before = {p: len(viewer.video[p]) for p in speakers}
        await asyncio.sleep(1.5 * SCALE)
        arriving = {p for p in speakers if len(viewer.video[p]) > before[p]}

        assert "therapist" in arriving
        assert len(arriving - {"therapist"}) <= 1
        assert arriving == r.router.forwarded_video("viewer")
        assert len(arriving) == 2
        assert all(len(viewer.audio[p]) > 25 for p in speakers)
        assert "viewer" not in r.router.speaking()


@pytest.mark.asyncio
async def test_an_answer_without_fingerprint_is_refused_and_the_genuine_one_then_works(
    loopback_only: None, caplog: pytest.LogCaptureFixture
) -> None:
    async with room() as r:
        await r.join("therapist", therapist=True)
        ann = await r.join("ann", client_class=ClientWithAStrippedFirstAnswer)
        assert isinstance(ann, ClientWithAStrippedFirstAnswer)
        await eventually(
            lambda: all(
                c.has_media_from([p for p in r.clients if p != pid], 10)
                for pid, c in r.clients.items()
            ),
            10,
            "media both ways after the genuine answer",
        )
        assert ann.refusals == ["the answer has no DTLS fingerprint (a=fingerprint)"]
        with pytest.raises(MediaError, match="no offer is waiting for an answer"):
            await r.router.accept_answer("ann", ann.pc.localDescription.sdp)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]


async def _counts_over(
    window_s: float, counts: Callable[[], dict[str, int]]
) -> dict[str, int]:
    """How much each count grew over ``window_s`` (scaled)."""
    before = counts()
    await asyncio.sleep(window_s * SCALE)
    after = counts()
    return {key: after[key] - before[key] for key in after}


@pytest.mark.asyncio
async def test_forwarding_switched_off_and_on_for_one_kind(loopback_only: None) -> None:
    async with room() as r:
        for pid in ("therapist", "ann", "bob"):
            await r.join(pid, therapist=pid == "therapist")
        bob, therapist = r.clients["bob"], r.clients["therapist"]
        await eventually(
            lambda: all(
                c.has_media_from([p for p in r.clients if p != pid], 10)
                for pid, c in r.clients.items()
            ),
            10,
            "everyone to receive everyone",
        )

        def from_ann() -> dict[str, int]:
            return {
                "bob audio": len(bob.audio["ann"]),
                "bob video": len(bob.video["ann"]),
                "therapist audio": len(therapist.audio["ann"]),
                "therapist video": len(therapist.video["ann"]),
            }

        r.router.set_forwarding("ann", "audio", False)
        assert not r.router.forwarding("ann", "audio")
        await asyncio.sleep(0.3 * SCALE)
        grown = await _counts_over(1.0, from_ann)
        assert grown["bob audio"] == grown["therapist audio"] == 0, grown
        assert grown["bob video"] > 5 and grown["therapist video"] > 5, grown
        assert r.router.media_state("ann").audio_arriving  # ann's client still sends
        await eventually(lambda: "ann" not in r.router.speaking(), 3, "ann to stop speaking")

        r.router.set_forwarding("ann", "audio", True)
        seen = len(bob.audio["ann"])
        await eventually(lambda: len(bob.audio["ann"]) > seen + 10, 3, "ann's audio back")
        grown = await _counts_over(1.0, from_ann)
        assert grown["bob audio"] > 25 and grown["therapist audio"] > 25, grown

        r.router.set_forwarding("ann", "video", False)
        await asyncio.sleep(0.3 * SCALE)
        grown = await _counts_over(1.0, from_ann)
        assert grown["bob video"] == grown["therapist video"] == 0, grown
        assert grown["bob audio"] > 25, grown
        r.router.set_forwarding("ann", "video", True)
        seen = len(bob.video["ann"])
        await eventually(lambda: len(bob.video["ann"]) > seen + 5, 3, "ann's video back")
        counters = [counter for _, counter in bob.video["ann"]]
        assert None not in counters

        with pytest.raises(MediaError, match="is not a kind of media"):
            r.router.set_forwarding("ann", "screen", False)


def _vp8_packets(count: int, *, keyframe_at: int) -> list[RtpPacket]:
    """``count`` real VP8 frames of a counter video, one RTP packet each; one key frame."""
    encoder = Vp8Encoder()
    track = CounterVideoTrack(64, 48)
    packets = []
    for index in range(count):
        payloads, timestamp = encoder.encode(
            track.frame(index), force_keyframe=index == keyframe_at
        )
        packet = RtpPacket(payload_type=96, sequence_number=index, timestamp=timestamp)
        packet.payload = payloads[0]
        packets.append(packet)
    return packets


@pytest.mark.asyncio
async def test_keyframe_requests_are_throttled_and_a_keyframe_answers_them() -> None:
    requests: list[float] = []
    source = RtpSource("video", send_keyframe_request=lambda: requests.append(time.monotonic()))
    first, *inter = _vp8_packets(4, keyframe_at=3)[1:]
    keyframe = inter.pop()
    assert not vp8_starts_keyframe(first.payload) and vp8_starts_keyframe(keyframe.payload)

    source.request_keyframe(new_leg=True)  # a leg starts: asked at once
    assert len(requests) == 1
    source.request_keyframe()  # inside the throttle interval: deferred
    source.add(first)
    assert len(requests) == 1
    assert source.add(keyframe) == (False, None)  # nothing for the decoder
    # The deferred request was made moot by the keyframe.
    await asyncio.sleep(0.6)
    assert len(requests) == 1
    assert source.last_packet_at > time.monotonic() - 1

    # A leg starting once the last request was answered asks at once; one starting while a
    # request is unanswered waits for that keyframe.
    source.request_keyframe(new_leg=True)
    assert len(requests) == 2
    source.request_keyframe(new_leg=True)
    assert len(requests) == 2
    source.request_keyframe()  # unanswered and inside the interval: deferred, then sent
    await asyncio.sleep(0.6)
    assert len(requests) == 3
    source.close()
    source.request_keyframe(new_leg=True)
    assert len(requests) == 3, "a closed source asks for nothing"


def test_ice_configuration(loopback_only: None) -> None:
    assert rtc_configuration([]).iceServers == []
    stun, turn = (
        rtc_configuration(
            ["stun:stun.example.org", "turn:alice:s%40cret@turn.example.org:3478?transport=tcp"]
        ).iceServers
        or []
    )
    assert (stun.urls, stun.username) == ("stun:stun.example.org", None)
    assert (turn.urls, turn.username, turn.credential) == (
        "turn:turn.example.org:3478?transport=tcp",
        "alice",
        "s@cret",
    )
    for bad in ("http://example.org", "stun:alice:pw@example.org", "turn:"):
        with pytest.raises(ValueError):
            rtc_configuration([bad])

    assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1"]
    announce_host_addresses([])
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(True, True)
