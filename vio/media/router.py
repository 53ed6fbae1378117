"""The media router of one room: a selective forwarding unit built on aiortc.

The server terminates each participant's WebRTC connection and always makes the offer: two
receive-only transceivers for what the participant publishes (audio, video), then one
send-only transceiver per track of every other participant. Media is forwarded packet by
packet without decoding (see :mod:`vio.media.rtp_forwarding`); video goes to each receiver
only from the therapists and the most recent speakers (``max_video_forwarded``), audio from
everyone.

Negotiation is serialised per participant: at most one offer is outstanding per connection;
changes made meanwhile (someone joins or leaves) are folded into the next offer, made once the
answer is in. Leaving ends the forwarded tracks at once (the senders stop, which sends RTCP BYE)
and the next offer marks their m-lines inactive; aiortc cannot remove m-lines.

A newcomer's ICE candidates are gathered before they count as connected: when the server
has no free media port (``VIO_RTC_PORT_RANGE`` exhausted), :meth:`MediaRouter.add_participant`
raises :class:`MediaError` and nothing changes. Behind 1:1 NAT every offer shows the public
address (:func:`vio.media.ice.offer_with_public_address`).

An answer is checked against the offer it answers (:func:`vio.media.sdp.check_answer`)
before aiortc applies it; a refused answer leaves the offer outstanding. Failures of aiortc's
background connection tasks are logged (participant and error type only), never left as
unretrieved task exceptions.

A forwarded leg is paused, i.e. carries none of its publisher's packets, while any reason
says so: video not selected for its receiver, publisher and receiver in different spaces, or
forwarding of that kind switched off for the publisher (:meth:`MediaRouter.set_forwarding`,
the server-side mute), or, for video, the receiver's link unable to carry it.

Receiver-aware video: the RTCP each receiver sends to the server's senders on its connection
(REMB and the loss in its receiver reports) feeds a :class:`vio.media.bandwidth.ReceiverLink`
per receiver, which decides, from what each selected video needs (the bitrate arriving from
its publisher), which of them the link cannot carry; the least important are paused first
(the therapists' last) and resumed when the link recovers. Changes are reported through
``on_video_paused``.

Speaking and media presence come from packets, never from decoding: the RTP
``ssrc-audio-level`` header extension (RFC 6464) when the client sends it, else the Opus
payload size; and when an audio or video frame last arrived from each participant.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)

from . import seams
from .bandwidth import BandwidthRules, ReceiverLink, VideoNeed
from .errors import MediaError
from .ice import offer_with_public_address, rtc_configuration
from .passthrough import install_passthrough_hooks
from .rtp_forwarding import LegTrack, RtpLeg, RtpSource, attach_rtp_source
from .sdp import check_answer

__all__ = ["MediaConfig", "MediaError", "MediaRouter", "MediaState", "TrackInfo"]

logger = logging.getLogger(__name__)

KINDS = ("audio", "video")
_PINNED_CODECS = {"audio": ("audio/opus",), "video": ("video/vp8", "video/rtx")}


@dataclass(frozen=True)
class MediaConfig:
    """Tuning of a :class:`MediaRouter`; every duration is in seconds."""

    ice_servers: tuple[str, ...] = ()
    """STUN/TURN URLs for the server's peer connections; none by default (no public STUN)."""
    public_address: str = ""
    """Behind 1:1 NAT, the public address offers show instead of the private one."""
    keep_private_address: bool = False
    """With ``public_address``, offer the private host candidates as well."""
    keyframe_throttle_s: float = 0.5
    """Least time between two keyframe requests to one publisher."""
    max_video_forwarded: int = 6
    """Videos forwarded to each receiver besides the therapists': the latest speakers."""
    speaker_hold_s: float = 1.5
    """A participant counts as speaking until this long after their last loud audio packet."""
    speaking_max_level: int = 50
    """Loud means an RFC 6464 audio level at most this (i.e. at least -50 dBov)."""
    speaking_min_opus_bytes: int = 40
    """Without the audio-level extension, an Opus payload this big counts as loud."""
    media_timeout_s: float = 2.0
    """Audio/video counts as arriving while its last frame is at most this old."""
    monitor_interval_s: float = 0.25
    """How often speaking, media presence and each receiver's videos are re-evaluated."""
    bandwidth: BandwidthRules = field(default_factory=BandwidthRules)
    """When a receiver's REMB and receiver reports pause and resume its videos."""
    video_rate_window_s: float = 2.0
    """A publisher's video bitrate (what forwarding it needs) is measured over this long."""

    def __post_init__(self) -> None:
        for name in ("max_video_forwarded",):
            if getattr(self, name) < 1:
                raise ValueError(f"MediaConfig.{name} must be at least 1")
        for name in ("keyframe_throttle_s", "speaker_hold_s", "media_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"MediaConfig.{name} must not be negative")
        for name in ("monitor_interval_s", "video_rate_window_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"MediaConfig.{name} must be positive")


@dataclass(frozen=True)
class TrackInfo:
    """One m-line of an offer: ``publisher`` is the participant whose media it carries.

    The participant's own ``publisher`` entries are where it sends its microphone and camera.
    """

    mid: str
    publisher: str
    kind: str


@dataclass(frozen=True)
class MediaState:
    """Whether a participant's audio and video are actually reaching the server."""

    audio_arriving: bool = False
    video_arriving: bool = False


OfferCallback = Callable[[str, list[TrackInfo]], Awaitable[None]]
SpeakingCallback = Callable[[list[str]], None]
MediaStateCallback = Callable[[str, MediaState], None]
VideoPausedCallback = Callable[[str, list[str]], None]
"""``(receiver, publishers)``: the videos paused now for the receiver's link, in order."""


@dataclass(eq=False)
class _Leg:
    """A send-only transceiver on a receiver's connection carrying one publisher's track."""

    publisher: str
    kind: str
    transceiver: RTCRtpTransceiver
    track: RtpLeg
    """What forwards the publisher's packets through ``transceiver.sender``."""


@dataclass(eq=False)
class _Participant:
    pid: str
    is_therapist: bool
    pc: RTCPeerConnection
    on_offer: OfferCallback
    stream_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    inbound: dict[str, RTCRtpTransceiver] = field(default_factory=dict)
    sources: dict[str, RtpSource] = field(default_factory=dict)
    outgoing: dict[tuple[str, str], _Leg] = field(default_factory=dict)
    retired: list[RTCRtpTransceiver] = field(default_factory=list)
    state: MediaState = MediaState()
    removed: bool = False
    needs_offer: bool = False
    offer: str | None = None
    """The offer sent and not yet answered."""
    applying_answer: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    negotiator: asyncio.Task[None] | None = None
    link: ReceiverLink = field(default_factory=ReceiverLink)
    """What this participant's RTCP says about its downlink."""
    paused_for_bandwidth: tuple[str, ...] = ()
    video_samples: deque[tuple[float, int]] = field(default_factory=deque)
    video_bps: float = 0.0
    last_rtcp: Any = None
    """The last RTCP packet noted: aiortc hands one packet to each sender it concerns."""

    @property
    def last_loud(self) -> float:
        """When the last loud audio packet arrived (``time.monotonic()``)."""
        return self.sources["audio"].last_loud


def _pinned_codecs(kind: str) -> list[RTCRtpCodecCapability]:
    wanted = _PINNED_CODECS[kind]
    return [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType.lower() in wanted]


class MediaRouter:
    """Owns the server-side peer connection of every participant of one room."""

    def __init__(
        self,
        config: MediaConfig | None = None,
        *,
        on_speaking_changed: SpeakingCallback | None = None,
        on_media_state_changed: MediaStateCallback | None = None,
        on_video_paused: VideoPausedCallback | None = None,
    ) -> None:
        install_passthrough_hooks()
        self.config = config or MediaConfig()
        self.on_speaking_changed = on_speaking_changed
        self.on_media_state_changed = on_media_state_changed
        self.on_video_paused = on_video_paused
        self._participants: dict[str, _Participant] = {}
        self._speaker_order: list[str] = []
        self._speaking: list[str] = []
        self._spaces: dict[str, str] = {}
        self._forwarding_off: dict[str, set[str]] = {}
        self._codecs = {kind: _pinned_codecs(kind) for kind in KINDS}
        self._monitor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- public API ---------------------------------------------------------------------------

    async def add_participant(
        self, pid: str, *, is_therapist: bool, on_offer: OfferCallback
    ) -> None:
        """Create ``pid``'s connection; its first offer follows through ``on_offer``.

        Everyone already in the room is renegotiated to receive the newcomer's tracks.
        Raises :class:`MediaError` when the router is closed, ``pid`` is already connected, or
        no ICE candidate could be gathered (every port of the media port range in use).
        """
        self._check_new(pid)
        pc = RTCPeerConnection(rtc_configuration(self.config.ice_servers))
        seams.guard_connect(pc, functools.partial(self._connection_failed, pid))
        p = _Participant(pid=pid, is_therapist=is_therapist, pc=pc, on_offer=on_offer,
                         link=ReceiverLink(self.config.bandwidth))
        for kind in KINDS:
            transceiver = pc.addTransceiver(kind, direction="recvonly")
            transceiver.setCodecPreferences(self._codecs[kind])
            source = RtpSource(
                kind,
                send_keyframe_request=self._pli_sender(transceiver.receiver)
                if kind == "video"
                else None,
                keyframe_throttle_s=self.config.keyframe_throttle_s,
                loud_level=self.config.speaking_max_level,
                loud_bytes=self.config.speaking_min_opus_bytes,
            )
            attach_rtp_source(transceiver.receiver, source)
            p.inbound[kind] = transceiver
            p.sources[kind] = source
        # One transport for all of p's media (max-bundle): gather it now, so that a server
        # without a free media port refuses p here rather than offering no candidate.
        gatherer = p.inbound[KINDS[0]].receiver.transport.transport.iceGatherer
        try:
            await gatherer.gather()
            if not gatherer.getLocalCandidates():
                logger.warning("no media port is free for %s", pid)
                raise MediaError("the server has no free media port for this connection")
            self._check_new(pid)
        except BaseException:
            await pc.close()
            raise
        self._participants[pid] = p
        self._speaker_order.append(pid)
        if self._monitor is None:
            self._monitor = asyncio.create_task(self._run_monitor())
        p.negotiator = asyncio.create_task(self._negotiate(p))
        for participant in self._participants.values():
            self._request_offer(participant)
        self._replan()

    def _check_new(self, pid: str) -> None:
        if self._closed:
            raise MediaError("the media router is closed")
        if pid in self._participants:
            raise MediaError(f"participant {pid!r} is already connected")

    async def accept_answer(self, pid: str, sdp: str) -> None:
        """Apply ``pid``'s answer to the offer last sent to it.

        The answer is checked against that offer first (:func:`vio.media.sdp.check_answer`).
        Raises :class:`MediaError` for an unknown participant, when no offer is outstanding or
        an answer to it is being applied, or when the answer is refused; a refused answer
        changes nothing and the offer stays outstanding.
        """
        p = self._participants.get(pid)
        if p is None:
            raise MediaError(f"participant {pid!r} is not connected")
        if p.offer is None:
            raise MediaError("no offer is waiting for an answer")
        if p.applying_answer:
            raise MediaError("an answer to this offer is already being applied")
        check_answer(p.offer, sdp)
        p.applying_answer = True
        try:
            await p.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as exc:
            detail = str(exc)
            raise MediaError(
                f"the answer could not be applied: {detail}" if detail
                else "the answer could not be applied"
            ) from exc
        finally:
            p.applying_answer = False
        p.offer = None
        p.wake.set()

    async def remove_participant(self, pid: str) -> None:
        """Close ``pid``'s connection and stop forwarding its media. Idempotent.

        The forwarded tracks end at the others at once (RTCP BYE) and their m-lines become
        inactive with the others' next offer.
        """
        p = self._participants.pop(pid, None)
        self._spaces.pop(pid, None)
        self._forwarding_off.pop(pid, None)
        if p is None:
            return
        p.removed = True
        self._speaker_order.remove(pid)
        await self._stop_negotiator(p)
        for source in p.sources.values():
            source.close()
        # A copy: others may leave (or join) while a transceiver stops.
        for other in list(self._participants.values()):
            if other.removed:
                continue
            for kind in KINDS:
                leg = other.outgoing.pop((pid, kind), None)
                if leg is not None:
                    leg.transceiver.direction = "inactive"
                    other.retired.append(leg.transceiver)
                    await leg.transceiver.stop()
            self._request_offer(other)
        for leg in p.outgoing.values():
            leg.track.stop()
        await p.pc.close()
        self._set_state(p, MediaState())
        if pid in self._speaking:
            self._speaking = [x for x in self._speaking if x != pid]
            self._notify_speaking()
        self._replan()

    async def close(self) -> None:
        """Close every connection and stop all work. Idempotent; no callbacks fire."""
        if self._closed:
            return
        self._closed = True
        participants = list(self._participants.values())
        self._participants.clear()
        self._speaker_order.clear()
        self._speaking.clear()
        tasks = [t for t in (self._monitor, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        for p in participants:
            p.removed = True
            await self._stop_negotiator(p)
            for source in p.sources.values():
                source.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(p.pc.close() for p in participants), return_exceptions=True)

    def speaking(self) -> list[str]:
        """Participants speaking now, the most recent to start first."""
        return list(self._speaking)

    def media_state(self, pid: str) -> MediaState:
        """Whether ``pid``'s audio and video reached the server in the last ``media_timeout_s``.

        All false for someone not (or no longer) connected.
        """
        p = self._participants.get(pid)
        if p is None:
            return MediaState()
        return self._measure(p, time.monotonic())

    def forwarded_video(self, pid: str) -> frozenset[str]:
        """The publishers whose video is currently forwarded to ``pid``."""
        p = self._participants.get(pid)
        if p is None:
            return frozenset()
        return self._allowed_video(p) - set(p.paused_for_bandwidth)

    def paused_for_bandwidth(self, pid: str) -> list[str]:
        """The publishers whose video ``pid``'s link cannot carry now, most important first."""
        p = self._participants.get(pid)
        return [] if p is None else list(p.paused_for_bandwidth)

    def set_space(self, pid: str, space: str | None) -> None:
        """Put ``pid`` in a private side room (``None``: the main room).

        Audio and video flow only between participants in the same space.
        """
        if space is None:
            self._spaces.pop(pid, None)
        else:
            self._spaces[pid] = space
        self._replan()

    def set_forwarding(self, pid: str, kind: str, allowed: bool) -> None:
        """Forward ``pid``'s ``kind`` (``"audio"`` or ``"video"``) to the others, or not at all.

        While ``allowed`` is false none of ``pid``'s packets of that kind reach anyone, whatever
        the client keeps sending (a server-side mute), and with audio off ``pid`` does not
        count as speaking; :meth:`media_state` still reports what arrives. Switched back on,
        forwarding resumes where selective video and spaces allow it; video legs wait for a
        keyframe and ask for one. Like :meth:`set_space` it may be set before ``pid``
        connects, and it is forgotten when ``pid`` is removed.

        Raises :class:`MediaError` for a kind other than audio and video.
        """
        if kind not in KINDS:
            raise MediaError(f"{kind!r} is not a kind of media; it is audio or video")
        off = self._forwarding_off.setdefault(pid, set())
        if allowed:
            off.discard(kind)
        else:
            off.add(kind)
        if not off:
            del self._forwarding_off[pid]
        self._replan()

    def forwarding(self, pid: str, kind: str) -> bool:
        """Whether forwarding of ``pid``'s ``kind`` is on (see :meth:`set_forwarding`)."""
        return kind not in self._forwarding_off.get(pid, ())

    def participants(self) -> list[str]:
        """The connected participants, in order of arrival."""
        return list(self._participants)

    def packets_sent(self) -> tuple[int, int]:
        """RTP packets and their payload bytes forwarded so far, over the current legs."""
        legs = [leg.track for p in self._participants.values() for leg in p.outgoing.values()]
        return sum(leg.packets_sent for leg in legs), sum(leg.octets_sent for leg in legs)

    # --- negotiation --------------------------------------------------------------------------

    def _request_offer(self, p: _Participant) -> None:
        p.needs_offer = True
        p.wake.set()

    async def _negotiate(self, p: _Participant) -> None:
        """Send ``p`` an offer whenever one is needed and none is outstanding."""
        while not p.removed:
            await p.wake.wait()
            p.wake.clear()
            if p.removed or p.offer is not None or not p.needs_offer:
                continue
            p.needs_offer = False
            try:
                sdp, tracks = await self._make_offer(p)
            except Exception:
                logger.exception("making an offer for %s failed", p.pid)
                continue
            p.offer = sdp
            try:
                await p.on_offer(sdp, tracks)
            except Exception:
                logger.exception("sending an offer to %s failed", p.pid)

    async def _make_offer(self, p: _Participant) -> tuple[str, list[TrackInfo]]:
        for transceiver in p.retired:
            # A sender started by an answer that crossed the participant's departure.
            await transceiver.sender.stop()
        p.retired.clear()
        self._add_legs(p)
        await p.pc.setLocalDescription(await p.pc.createOffer())
        tracks = [TrackInfo(t.mid or "", p.pid, kind) for kind, t in p.inbound.items()]
        tracks += [
            TrackInfo(leg.transceiver.mid or "", leg.publisher, leg.kind)
            for leg in p.outgoing.values()
        ]
        sdp = p.pc.localDescription.sdp
        if self.config.public_address:
            sdp = offer_with_public_address(sdp, self.config.public_address,
                                            keep_private=self.config.keep_private_address)
        return sdp, tracks

    def _add_legs(self, p: _Participant) -> None:
        """Add a send-only transceiver to ``p`` for each track of the others it lacks."""
        allowed = self._allowed_video(p)
        for publisher in self._participants.values():
            if publisher is p:
                continue
            for kind in KINDS:
                if (publisher.pid, kind) in p.outgoing:
                    continue
                transceiver = p.pc.addTransceiver(LegTrack(kind), direction="sendonly")
                transceiver.setCodecPreferences(self._codecs[kind])
                # One MediaStream (msid) per publisher, so a browser can lip-sync its tracks.
                seams.set_sender_stream_id(transceiver.sender, publisher.stream_id)
                seams.observe_sender_rtcp(transceiver.sender,
                                          functools.partial(self._on_receiver_rtcp, p))
                leg = RtpLeg(publisher.sources[kind], transceiver.sender)
                leg.set_paused(self._leg_paused(p, publisher.pid, kind, allowed))
                p.outgoing[(publisher.pid, kind)] = _Leg(publisher.pid, kind, transceiver, leg)

    async def _stop_negotiator(self, p: _Participant) -> None:
        task, p.negotiator = p.negotiator, None
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # --- keyframes and activity ---------------------------------------------------------------

    def _pli_sender(self, receiver: RTCRtpReceiver) -> Callable[[], None]:
        """Send RTCP PLI for every SSRC ``receiver`` currently receives."""

        def send() -> None:
            for source in receiver.getSynchronizationSources():
                self._spawn(seams.send_pli(receiver, source.source))

        return send

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.warning("a keyframe request failed: %s", type(error).__name__)

    def _connection_failed(self, pid: str, error: BaseException) -> None:
        """A background task of ``pid``'s connection failed (addresses stay out of the log)."""
        logger.warning("the media connection of %s failed: %s", pid, type(error).__name__)

    def _on_receiver_rtcp(self, p: _Participant, packet: Any) -> None:
        """Note what ``p``'s RTCP says about its downlink: REMB, and loss in its reports."""
        if packet is p.last_rtcp:
            return
        p.last_rtcp = packet
        now = time.monotonic()
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                p.link.note_loss(now, report.ssrc, report.fraction_lost / 256)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            p.link.note_remb(now, bitrate, ssrcs)

    def _measure(self, p: _Participant, now: float) -> MediaState:
        cutoff = now - self.config.media_timeout_s
        return MediaState(
            audio_arriving=p.sources["audio"].last_packet_at >= cutoff,
            video_arriving=p.sources["video"].last_packet_at >= cutoff,
        )

    async def _run_monitor(self) -> None:
        while True:
            await asyncio.sleep(self.config.monitor_interval_s)
            self._evaluate(time.monotonic())

    def _evaluate(self, now: float) -> None:
        for p in self._participants.values():
            self._set_state(p, self._measure(p, now))
        hold = self.config.speaker_hold_s
        loud = {
            pid
            for pid, p in self._participants.items()
            if now - p.last_loud <= hold and "audio" not in self._forwarding_off.get(pid, ())
        }
        onsets = sorted(
            (pid for pid in loud if pid not in self._speaking),
            key=lambda pid: self._participants[pid].last_loud,
        )
        for pid in onsets:
            self._speaker_order.remove(pid)
            self._speaker_order.insert(0, pid)
        speaking = [pid for pid in self._speaker_order if pid in loud]
        changed = self._fit_video_to_links(now)
        if onsets or changed:
            self._replan()
        if speaking != self._speaking:
            self._speaking = speaking
            self._notify_speaking()
        for p in changed:
            self._notify_video_paused(p)

    def _set_state(self, p: _Participant, state: MediaState) -> None:
        if state == p.state:
            return
        p.state = state
        if self.on_media_state_changed is not None:
            try:
                self.on_media_state_changed(p.pid, state)
            except Exception:
                logger.exception("on_media_state_changed failed")

    def _notify_video_paused(self, p: _Participant) -> None:
        if self.on_video_paused is not None:
            try:
                self.on_video_paused(p.pid, list(p.paused_for_bandwidth))
            except Exception:
                logger.exception("on_video_paused failed")

    def _notify_speaking(self) -> None:
        if self.on_speaking_changed is not None:
            try:
                self.on_speaking_changed(list(self._speaking))
            except Exception:
                logger.exception("on_speaking_changed failed")

    # --- selective video ----------------------------------------------------------------------

    def _fit_video_to_links(self, now: float) -> list[_Participant]:
        """Let each receiver's link decide which of its videos to pause; those it changed."""
        window = self.config.video_rate_window_s
        for p in self._participants.values():
            samples = p.video_samples
            received = p.sources["video"].payload_bytes
            samples.append((now, received))
            while len(samples) > 2 and now - samples[1][0] >= window:
                samples.popleft()
            start, sent = samples[0]
            p.video_bps = 8 * (received - sent) / (now - start) if now > start else 0.0
        changed = []
        for p in self._participants.values():
            videos = [
                VideoNeed(pid, self._participants[pid].video_bps)
                for pid in self._video_order(p)
                if "video" not in self._forwarding_off.get(pid, ())
            ]
            seen = (p.link.estimate(now), p.link.falling(now), p.link.loss(now))
            paused = p.link.decide(now, videos)
            ordered = tuple(v.publisher for v in videos if v.publisher in paused)
            if ordered != p.paused_for_bandwidth:
                p.paused_for_bandwidth = ordered
                changed.append(p)
                self._log_bandwidth(p, videos, *seen)
        return changed

    def _log_bandwidth(self, p: _Participant, videos: list[VideoNeed], estimate: float | None,
                       falling: bool, loss: float | None) -> None:
        logger.info(
            "%s: %d of %d videos paused for bandwidth (estimate %s kbit/s%s, loss %s, "
            "need %s kbit/s)", p.pid, len(p.paused_for_bandwidth), len(videos),
            "none" if estimate is None else round(estimate / 1000),
            ", falling" if falling else "", "none" if loss is None else f"{loss:.0%}",
            [round(v.bps / 1000) for v in videos])

    def _allowed_video(self, receiver: _Participant) -> frozenset[str]:
        """Therapists plus the ``max_video_forwarded`` most recent speakers, never oneself."""
        return frozenset(self._video_order(receiver))

    def _video_order(self, receiver: _Participant) -> list[str]:
        """:meth:`_allowed_video` by importance: therapists, then speakers by recency."""
        space = self._spaces.get(receiver.pid)
        others = [
            pid
            for pid in self._speaker_order
            if pid != receiver.pid and not self._participants[pid].is_therapist
            and self._spaces.get(pid) == space
        ]
        therapists = [
            pid for pid, p in self._participants.items()
            if p.is_therapist and pid != receiver.pid and self._spaces.get(pid) == space
        ]
        return therapists + others[: self.config.max_video_forwarded]

    def _leg_paused(
        self, receiver: _Participant, publisher: str, kind: str, allowed_video: frozenset[str]
    ) -> bool:
        """Whether the leg of ``publisher``'s ``kind`` to ``receiver`` carries nothing.

        ``allowed_video`` is ``self._allowed_video(receiver)``, which already keeps to the
        receiver's space.
        """
        if kind in self._forwarding_off.get(publisher, ()):
            return True
        if kind == "video":
            return publisher not in allowed_video or publisher in receiver.paused_for_bandwidth
        return self._spaces.get(publisher) != self._spaces.get(receiver.pid)

    def _replan(self) -> None:
        for p in self._participants.values():
            allowed = self._allowed_video(p)
            for (publisher, kind), leg in p.outgoing.items():
                leg.track.set_paused(self._leg_paused(p, publisher, kind, allowed))
