"""RTP-level forwarding: each received RTP packet goes to every leg with a rewritten header.

This is how the media server forwards (DESIGN.md, "Media facts"; issue #15). Per published
track there is one :class:`RtpSource`; per receiving leg one :class:`RtpLeg`. Nothing is
reassembled, queued or repacketised, and no task runs per leg or per packet:

* **Receive.** :func:`attach_rtp_source` puts the source in place of the server receiver's
  jitter buffer (:func:`vio.media.seams.replace_jitter_buffer`). aiortc still does everything
  the receiving end of a connection owes the publisher — receiver reports, NACKs, REMB, RTX
  unwrapping — and then hands each packet to :meth:`RtpSource.add`, which returns "no frame":
  the decoder is never fed and its thread ends at once (:mod:`vio.media.passthrough`).
* **Fan-out.** ``RtpSource.add`` notes the arrival (media presence, loud audio), reads the
  VP8 payload descriptor to see whether the packet starts a key frame, and calls
  :meth:`RtpLeg.forward` of each leg, on the event loop, in the DTLS transport's receive path.
* **Send.** A leg rewrites the header — its own SSRC and payload type; sequence numbers and
  timestamps shifted so that they run on without a gap across pauses, keyframe waits and a
  change of source (:meth:`RtpLeg.set_source`) — adds its own ``mid`` and ``abs-send-time``
  header extensions, and sends the packet through the receiver's SRTP session straight to the
  socket (:class:`vio.media.seams.RtpOutput`). The payload is forwarded untouched.
* **Per leg.** Video starts at a key frame (and after a pause, a change of source or of the
  publisher's SSRC), asking the publisher for one through the source's throttled
  :class:`~vio.media.passthrough.KeyframeRequester`. The last :data:`HISTORY_SIZE` video
  packets answer the receiver's NACKs, as RTX where negotiated. PLI/FIR go upstream through
  the same requester. RTCP sender reports map the leg's timestamps to wall-clock time, so a
  browser keeps each publisher's audio and video in sync.

The aiortc ``RTCRtpSender`` of a leg stays in place for negotiation and RTCP: its track is a
:class:`LegTrack`, which never yields a frame, and its RTCP task reports this leg's counters,
only while the leg sends (:func:`vio.media.seams.replace_sender_reports`): a leg that carries
nothing costs no timer.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket, RtcpSenderInfo, RtpPacket

from . import seams
from .passthrough import KeyframeRequester, install_passthrough_hooks

__all__ = [
    "HISTORY_SIZE",
    "LegTrack",
    "RtpLeg",
    "RtpSource",
    "attach_rtp_source",
    "vp8_starts_keyframe",
]

HISTORY_SIZE = 256
"""Video packets a leg keeps to answer NACKs: 5-8 s at the publish caps (30-50 packets/s),
far longer than a receiver waits for a retransmission; a paused leg keeps none."""

_HISTORY_MASK = HISTORY_SIZE - 1
_MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
_ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
_NTP_EPOCH_OFFSET = 2208988800
"""Seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)."""
_NO_FRAME = (False, None)
_NO_LAG = float("inf")
_START_WINDOW = 0x4000
_LATE_WINDOW = 0x1000
"""Forwarding starts at a sequence number, and packets from before it are dropped; once the
publisher is ``_START_WINDOW`` past it, it moves up to ``_LATE_WINDOW`` behind the newest (far
more than the NACK history), so that the comparison never wraps around."""
_RTX_HEAD = struct.Struct("!BBH")
_SSRC = struct.Struct("!I")


def vp8_starts_keyframe(payload: bytes) -> bool:
    """Whether a VP8 RTP payload is the first packet of a key frame (RFC 7741 section 4).

    The payload descriptor must have S=1 and partition index 0; the VP8 payload header
    after it has P=0 on key frames (RFC 6386 section 9.1).
    """
    size = len(payload)
    if size < 2:
        return False
    first = payload[0]
    if first & 0x17 != 0x10:
        return False
    pos = 1
    if first & 0x80:
        extension = payload[1]
        pos = 2
        if extension & 0x80:  # I: picture ID, 7 or 15 bits
            if pos >= size:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if extension & 0x40:  # L: TL0PICIDX
            pos += 1
        if extension & 0x30:  # T or K: TID/Y/KEYIDX
            pos += 1
    return pos < size and not payload[pos] & 1


class RtpSource:
    """One published track on the server: stands in for its receiver's jitter buffer.

    ``last_packet_at`` (``time.monotonic()``) is the evidence that media is arriving;
    ``last_loud`` when the last loud audio packet arrived: an RFC 6464 level at most
    ``loud_level``, or without that extension an Opus payload of at least ``loud_bytes``;
    ``payload_bytes`` how many payload bytes arrived in all (what forwarding it needs).
    """

    def __init__(
        self,
        kind: str,
        *,
        send_keyframe_request: Callable[[], None] | None = None,
        keyframe_throttle_s: float = 0.5,
        loud_level: int = 50,
        loud_bytes: int = 40,
    ) -> None:
        self.kind = kind
        self.last_packet_at = -float("inf")
        self.last_loud = -float("inf")
        self.payload_bytes = 0
        self.closed = False
        self._is_video = kind == "video"
        self._loud_level = loud_level
        self._loud_bytes = loud_bytes
        self._legs: tuple[RtpLeg, ...] = ()
        self._requester = (
            KeyframeRequester(send_keyframe_request, min_interval=keyframe_throttle_s)
            if send_keyframe_request is not None
            else None
        )

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        """One packet from the publisher, after aiortc's receive-side bookkeeping."""
        now = time.monotonic()
        self.last_packet_at = now
        payload = packet.payload
        self.payload_bytes += len(payload)
        if self._is_video:
            keyframe = vp8_starts_keyframe(payload)
            if keyframe and self._requester is not None:
                self._requester.keyframe_seen()
        else:
            keyframe = True
            level = packet.extensions.audio_level
            if (
                level[1] <= self._loud_level
                if level is not None
                else len(payload) >= self._loud_bytes
            ):
                self.last_loud = now
        legs = self._legs
        if legs:
            wall = time.time()
            # abs-send-time: seconds in 6.18 fixed point (1900 and 1970 are 64 s apart times n)
            abs_send_time = int(wall * 262144) & 0xFFFFFF
            for leg in legs:
                leg.forward(packet, keyframe, wall, abs_send_time)
        return _NO_FRAME

    def request_keyframe(self, *, new_leg: bool = False) -> None:
        """Ask the publisher for a keyframe (see ``KeyframeRequester``); no-op for audio."""
        if self._requester is not None:
            self._requester.request(new_leg=new_leg)

    def attach(self, leg: RtpLeg) -> None:
        if self.closed:
            leg.stop()
        elif leg not in self._legs:
            self._legs = (*self._legs, leg)

    def detach(self, leg: RtpLeg) -> None:
        self._legs = tuple(x for x in self._legs if x is not leg)

    def close(self) -> None:
        """End the source: every attached leg ends. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._requester is not None:
            self._requester.close()
        legs, self._legs = self._legs, ()
        for leg in legs:
            leg.stop()


class _ReceiverEnd:
    """Stands in for a server receiver's decoder queue: its ``put(None)`` ends the source."""

    def __init__(self, source: RtpSource) -> None:
        self._source = source

    def put(self, item: Any) -> None:
        if item is None:
            self._source.close()


class _SourceTrack(RemoteStreamTrack):
    """The track of a server receiver, installed before negotiation so aiortc keeps it."""

    def __init__(self, source: RtpSource) -> None:
        super().__init__(kind=source.kind)
        self.source = source

    async def recv(self) -> Any:
        raise MediaStreamError("a server receiver's media is forwarded, not read")


def attach_rtp_source(receiver: RTCRtpReceiver, source: RtpSource) -> None:
    """Make ``receiver`` (not yet negotiated) hand each packet to ``source``, decoding nothing."""
    install_passthrough_hooks()  # the replaced decoder thread leaves this receiver alone
    seams.set_receiver_track(receiver, _SourceTrack(source))
    seams.replace_decoder_queue(receiver, _ReceiverEnd(source))
    seams.replace_jitter_buffer(receiver, source)


class LegTrack(MediaStreamTrack):
    """The track of a leg's ``RTCRtpSender``: never yields, so the sender's RTP task waits.

    It ends (and the sender's RTP task with it) when the leg stops.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def recv(self) -> Any:
        if self.readyState == "live":
            await asyncio.shield(self._ended)
        raise MediaStreamError

    def stop(self) -> None:
        if not self._ended.done():
            self._ended.set_result(None)
        super().stop()


class RtpLeg:
    """One receiving leg: forwards one source's packets through one ``RTCRtpSender``.

    Nothing is sent until aiortc starts the sender (the connection is up) and while the
    router pauses the leg (:meth:`set_paused`). Sequence numbers and timestamps continue
    from the last packet sent whenever forwarding (re)starts: the first packet after a gap
    gets the next sequence number and a timestamp advanced by the wall-clock time elapsed.
    """

    def __init__(self, source: RtpSource, sender: RTCRtpSender) -> None:
        self.kind = source.kind
        self.track = sender.track
        self.retransmitted = 0
        self._source = source
        self._sender = sender
        self._is_video = source.kind == "video"
        self._paused = False
        self._stopped = False
        self._output: seams.RtpOutput | None = None
        self._ssrc = sender._ssrc
        self._rtx_ssrc = sender._rtx_ssrc
        self._payload_type = 0
        self._rtx_payload_type: int | None = None
        self._clock_rate = 90000
        self._pack: Callable[..., bytes] = struct.Struct("!BBHII").pack
        self._fixed: tuple[Any, ...] = ()
        self._header_size = 12
        self._first_byte = 0x80
        self._has_abs_send_time = False
        # Rewrite state: out = (in + offset) mod 2**16 / 2**32, from _start_seq (input) on.
        self._restart_needed = True
        self._in_ssrc = -1
        self._start_seq = 0
        self._seq_offset = 0
        self._ts_offset = 0
        self._last_seq = (random.getrandbits(16) % 32768) - 1
        self._last_ts = random.getrandbits(32)
        self._last_wall: float | None = None
        # Sender reports: the least lag (arrival time minus media time, in seconds against
        # the timestamp _ts_origin) over the current and the previous report interval.
        self._ts_origin = self._last_ts
        self._seconds_per_tick = 1 / 90000
        self._lag = self._lag_before = _NO_LAG
        self._rtx_seq = random.getrandbits(16) % 32768
        self._packets = 0
        self._octets = 0
        self._history: list[bytes | None] = [None] * HISTORY_SIZE if self._is_video else []
        self._reporting = asyncio.Event()
        """Set while sender reports are due: from the first packet sent until a pause."""
        seams.on_sender_start(sender, self._started)
        seams.on_keyframe_request(sender, self.request_keyframe)
        seams.observe_sender_rtcp(sender, self._on_rtcp)
        seams.replace_sender_reports(sender, self.sender_info, self._reporting)
        source.attach(self)

    @property
    def source(self) -> RtpSource:
        return self._source

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def packets_sent(self) -> int:
        """RTP packets forwarded (retransmissions not counted)."""
        return self._packets

    @property
    def octets_sent(self) -> int:
        """Payload bytes of :attr:`packets_sent`."""
        return self._octets

    @property
    def sending(self) -> bool:
        """Whether the leg is negotiated, connected, not paused and not stopped."""
        return self._output is not None and not self._paused and not self._stopped

    # --- control (the router) ---------------------------------------------------------------

    def set_paused(self, paused: bool) -> None:
        if paused == self._paused:
            return
        self._paused = paused
        if paused:
            self._reporting.clear()
            if self._is_video:
                self._history = [None] * HISTORY_SIZE
        else:
            self._restart_needed = True
            if self._output is not None:
                self._source.request_keyframe(new_leg=True)

    def set_source(self, source: RtpSource) -> None:
        """Forward ``source`` from now on (a change of speaker): the next key frame on."""
        if source is self._source or self._stopped:
            return
        self._source.detach(self)
        self._source = source
        self._restart_needed = True
        source.attach(self)
        if self._output is not None and not self._paused:
            source.request_keyframe(new_leg=True)

    def request_keyframe(self) -> None:
        """The receiver reported picture loss (PLI/FIR): ask the publisher."""
        if self.sending:
            self._source.request_keyframe()

    def stop(self) -> None:
        """Stop forwarding for good; the sender's track ends. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._reporting.clear()
        self._source.detach(self)
        self.track.stop()

    def _started(self, parameters: RTCRtpSendParameters) -> None:
        """aiortc starts the sender: the negotiated codec, extensions and mid are known."""
        codec = parameters.codecs[0]
        if codec.payloadType is None:
            raise ValueError("a negotiated codec has a payload type")
        self._payload_type = codec.payloadType
        self._clock_rate = codec.clockRate
        self._seconds_per_tick = 1 / codec.clockRate
        for other in parameters.codecs:
            if is_rtx(other) and other.parameters.get("apt") == codec.payloadType:
                self._rtx_payload_type = other.payloadType
                break
        ids = {ext.uri: ext.id for ext in parameters.headerExtensions}
        elements = b""
        if parameters.muxId and _MID_URI in ids:
            mid = parameters.muxId.encode()
            elements += bytes([ids[_MID_URI] << 4 | (len(mid) - 1)]) + mid
        fmt = "!BBHII"
        fixed: tuple[Any, ...] = ()
        ast_id = ids.get(_ABS_SEND_TIME_URI)
        size = len(elements) + (4 if ast_id is not None else 0)
        words = (size + 3) // 4
        if size:
            prefix = struct.pack("!HH", 0xBEDE, words) + elements
            fmt += f"{len(prefix)}s"
            fixed = (prefix,)
            if ast_id is not None:
                fmt += "BBH"
                fixed += (ast_id << 4 | 2,)
            fmt += f"{words * 4 - size}x"
            self._first_byte = 0x90
        self._pack = struct.Struct(fmt).pack
        self._fixed = fixed
        self._header_size = 12 + (4 + words * 4 if size else 0)
        self._has_abs_send_time = ast_id is not None
        self._output = seams.RtpOutput(self._sender.transport)
        if not self._paused and not self._stopped:
            self._source.request_keyframe(new_leg=True)

    # --- the packet path ----------------------------------------------------------------------

    def forward(self, packet: RtpPacket, keyframe: bool, wall: float, abs_send_time: int) -> None:
        """Send one of the source's packets to this leg's receiver, if it is due."""
        output = self._output
        if output is None or self._paused:
            return
        seq = packet.sequence_number
        if self._restart_needed or packet.ssrc != self._in_ssrc:
            if not keyframe:
                self._source.request_keyframe()
                return
            self._restart(packet, wall)
        else:
            behind_start = (seq - self._start_seq) & 0xFFFF
            if behind_start >= 0x8000:
                return  # from before forwarding (re)started, or too late to matter
            if behind_start >= _START_WINDOW:  # keep the start within reach of new packets
                self._start_seq = (seq - _LATE_WINDOW) & 0xFFFF
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (packet.timestamp + self._ts_offset) & 0xFFFFFFFF
        payload = packet.payload
        second = packet.marker << 7 | self._payload_type
        if self._has_abs_send_time:
            header = self._pack(self._first_byte, second, out_seq, out_ts, self._ssrc,
                                *self._fixed, abs_send_time >> 16, abs_send_time & 0xFFFF)
        else:
            header = self._pack(self._first_byte, second, out_seq, out_ts, self._ssrc,
                                *self._fixed)
        data = header + payload
        if not output.send(data):
            return
        if self._is_video:
            self._history[out_seq & _HISTORY_MASK] = data
        if (out_seq - self._last_seq) & 0xFFFF < 0x8000:
            self._last_seq = out_seq
            self._last_ts = out_ts
            self._last_wall = wall
            lag = wall - ((out_ts - self._ts_origin) & 0xFFFFFFFF) * self._seconds_per_tick
            if lag < self._lag:
                self._lag = lag
        self._packets += 1
        self._octets += len(payload)

    def _restart(self, packet: RtpPacket, wall: float) -> None:
        self._restart_needed = False
        self._in_ssrc = packet.ssrc
        self._start_seq = packet.sequence_number
        self._seq_offset = (self._last_seq + 1 - packet.sequence_number) & 0xFFFF
        advance = 1
        if self._last_wall is not None:
            advance = max(1, int((wall - self._last_wall) * self._clock_rate))
        self._ts_offset = (self._last_ts + advance - packet.timestamp) & 0xFFFFFFFF
        self._lag = self._lag_before = _NO_LAG  # a new timeline: report from its packets
        self._reporting.set()

    # --- RTCP ----------------------------------------------------------------------------------

    def _on_rtcp(self, packet: Any) -> None:
        """Observe the receiver's RTCP: answer NACKs from the history (PLI/FIR: aiortc's
        handler calls :meth:`request_keyframe`)."""
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            self.retransmit(packet.lost)

    def retransmit(self, lost: list[int]) -> None:
        """Send again the packets of ``lost`` still in the history, as RTX if negotiated."""
        output = self._output
        if output is None or not self._is_video or self._stopped:
            return
        for seq in lost:
            data = self._history[seq & _HISTORY_MASK]
            if data is None or (data[2] << 8 | data[3]) != seq:
                continue
            if self._rtx_payload_type is not None:
                size = self._header_size
                data = b"".join((
                    _RTX_HEAD.pack(data[0], (data[1] & 0x80) | self._rtx_payload_type,
                                   self._rtx_seq),
                    data[4:8],
                    _SSRC.pack(self._rtx_ssrc),
                    data[12:size],
                    data[2:4],  # the original sequence number (RFC 4588)
                    data[size:],
                ))
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            if output.send(data):
                self.retransmitted += 1

    def sender_info(self) -> RtcpSenderInfo | None:
        """What this leg's RTCP sender report says now; ``None``: no report.

        The report maps this leg's timestamps to wall-clock time as the least delayed of the
        packets forwarded in the last two report intervals arrived: media time plus the
        smallest lag seen. That mapping is the same for audio and video and, unlike the
        arrival of the latest packet, does not move with how late a video frame's encoder or
        the network made it (which would shift the receiver's lip sync back and forth). There
        is none before anything was sent nor while the leg is paused or stopped: with nothing
        to play out nothing needs syncing, and a leg that carries nothing costs no RTCP.
        """
        if self._last_wall is None or self._paused or self._stopped:
            return None
        now = time.time()
        lag = min(self._lag, self._lag_before)
        self._lag_before, self._lag = self._lag, _NO_LAG
        if lag == _NO_LAG:  # nothing sent since the timeline (re)started
            rtp_timestamp = self._last_ts + int((now - self._last_wall) * self._clock_rate)
        else:
            rtp_timestamp = self._ts_origin + int((now - lag) * self._clock_rate)
        seconds = now + _NTP_EPOCH_OFFSET
        ntp = int(seconds) << 32 | int((seconds % 1) * (1 << 32))
        return RtcpSenderInfo(
            ntp_timestamp=ntp,
            rtp_timestamp=rtp_timestamp & 0xFFFFFFFF,
            packet_count=self._packets & 0xFFFFFFFF,
            octet_count=self._octets & 0xFFFFFFFF,
        )
