"""Passthrough forwarding: encoded media in, the same encoded media out.

aiortc normally decodes what a receiver gets and encodes what a sender sends. For the media
server that is wasted work (DESIGN.md, "Media facts"), so its peer connections are wired as
follows, with every other peer connection in the process left untouched:

* **Receive.** :func:`attach_source` wires a server receiver, before negotiation, to a
  :class:`PacketSource`: its track becomes a :class:`SourceTrack`, and the queue into which
  the receiver puts each reassembled frame for its decoder thread becomes an
  :class:`InlineDecoderQueue`, which turns the frame into an ``av.Packet`` (``pts``,
  ``time_base``, keyframe flag) with a :class:`PassthroughDecoder` right there on the event
  loop and hands it to the source. aiortc still starts a decoder thread
  (``aiortc.rtcrtpreceiver.decoder_worker``, which is replaced), but for such a receiver the
  thread ends at once: the two thread hops per frame (``queue.Queue`` to the thread,
  ``run_coroutine_threadsafe`` back) took about a quarter of a busy server's CPU
  (``docs/benchmarks.md``). NACK/RTX, reassembly, REMB and receiver reports stay aiortc's.
* **Fan-out.** The ``PacketSource`` hands every packet to the :class:`ForwardedTrack` of each
  receiving leg: a bounded queue that starts at a keyframe and, on overflow, drops until the
  next keyframe and asks the publisher for one.
* **Send.** ``RTCRtpSender`` packetizes an ``av.Packet`` it reads from its track with its
  encoder's ``pack()`` instead of encoding it. ``aiortc.rtcrtpsender.get_encoder`` is replaced
  so that a sender whose RTP task reads from a ``ForwardedTrack`` gets a
  :class:`PassthroughPacker` (no codec context at all) rather than a real encoder; the track
  marks that task the first time it is read.

Keyframes: a leg asks for one when it actually starts (first ``recv()``), when it resumes
after a pause, and after an overflow; receivers' PLI/FIR are passed upstream. All requests for
one publisher go through one :class:`KeyframeRequester`, which throttles them.

Every aiortc internal used here is reached through :mod:`vio.media.seams`.
"""

from __future__ import annotations

import asyncio
import contextvars
import fractions
import queue
import random
import threading
import time
from collections.abc import Callable
from struct import pack
from typing import Any, TypeAlias

import av
import av.frame
from aiortc import RTCRtpReceiver
from aiortc.codecs import get_decoder as _aiortc_get_decoder
from aiortc.codecs import get_encoder as _aiortc_get_encoder
from aiortc.codecs.base import Decoder, Encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RemoteStreamTrack

from . import seams

__all__ = [
    "ForwardedTrack",
    "InlineDecoderQueue",
    "KeyframeRequester",
    "LazyBitrateEstimator",
    "PacketSource",
    "PassthroughDecoder",
    "PassthroughPacker",
    "SourceTrack",
    "attach_source",
    "install_passthrough_hooks",
    "is_vp8_keyframe",
]

PASSTHROUGH_CODECS = ("vp8", "opus")
"""Codecs the server forwards; the router pins these on every transceiver."""

VP8_PAYLOAD_MAX = 1300
"""Largest RTP payload for a VP8 packet, as aiortc's own packetizer uses."""

_VP8_KEYFRAME_START_CODE = b"\x9d\x01\x2a"

EncodedPacket: TypeAlias = "av.Packet[Any]"
"""An encoded frame as it travels from a server receiver to the server senders."""


def is_vp8_keyframe(frame: bytes) -> bool:
    """Whether an encoded VP8 frame is a key frame (RFC 6386 section 9.1).

    The frame tag's P bit is 0 for key frames, which also carry the start code at byte 3.
    """
    return len(frame) >= 10 and not frame[0] & 1 and frame[3:6] == _VP8_KEYFRAME_START_CODE


def _check_codec(codec: RTCRtpCodecParameters) -> bool:
    """Whether ``codec`` is VP8 (``True``) or Opus (``False``); anything else is refused."""
    name = codec.name.lower()
    if name not in PASSTHROUGH_CODECS:
        raise ValueError(f"passthrough forwarding does not handle {codec.mimeType}")
    return name == "vp8"


class PassthroughDecoder:
    """Stands in for a decoder on server receivers: returns the encoded frame as an ``av.Packet``.

    ``pts`` is the frame's RTP timestamp (unwrapped by the receiver), ``time_base`` the codec
    clock, and ``is_keyframe`` is read from the VP8 frame header (every Opus packet is one).
    """

    def __init__(self, codec: RTCRtpCodecParameters) -> None:
        self._is_vp8 = _check_codec(codec)
        self._time_base = fractions.Fraction(1, codec.clockRate)

    def decode(self, encoded_frame: JitterFrame) -> list[EncodedPacket]:
        data = encoded_frame.data
        if not data:
            return []
        packet = av.Packet(data)
        packet.pts = encoded_frame.timestamp
        packet.time_base = self._time_base
        packet.is_keyframe = not self._is_vp8 or is_vp8_keyframe(data)
        return [packet]


class PassthroughPacker:
    """Stands in for an encoder on server senders: splits ``av.Packet`` data into RTP payloads.

    VP8 payloads get the same payload descriptor aiortc's encoder writes (start bit, 15-bit
    picture ID); an Opus packet is one payload. The RTP timestamp is the packet's ``pts``, which
    :class:`PassthroughDecoder` already expressed in the codec clock.
    """

    def __init__(self, codec: RTCRtpCodecParameters) -> None:
        self._is_vp8 = _check_codec(codec)
        self._picture_id = random.randrange(1 << 15)

    def encode(
        self, frame: av.frame.Frame, force_keyframe: bool = False
    ) -> tuple[list[bytes], int]:
        raise RuntimeError("a passthrough sender was handed a raw frame to encode")

    def pack(self, packet: EncodedPacket) -> tuple[list[bytes], int]:
        data = bytes(packet)
        timestamp = packet.pts or 0
        if not self._is_vp8:
            return [data], timestamp
        picture_id = pack("!H", 0x8000 | self._picture_id)
        self._picture_id = (self._picture_id + 1) & 0x7FFF
        first = b"\x90\x80" + picture_id  # X, S, PID 0 | I | M, picture ID
        rest = b"\x80\x80" + picture_id
        size = VP8_PAYLOAD_MAX - len(first)
        return [
            (rest if pos else first) + data[pos : pos + size] for pos in range(0, len(data), size)
        ], timestamp


class KeyframeRequester:
    """Asks one publisher for keyframes without flooding it.

    A request is *unanswered* from when it is sent until a keyframe goes by. Requests are sent
    at most once per ``min_interval``; one inside the interval is deferred to its end, and a
    deferred request is dropped when a keyframe goes by first, because every leg waiting at that
    moment takes that keyframe. A leg that has just started (``new_leg``) is asked for at once
    unless a request is unanswered, whose keyframe will serve the new leg too.
    """

    def __init__(self, send: Callable[[], None], *, min_interval: float) -> None:
        self._send = send
        self._min_interval = min_interval
        self._last = -float("inf")
        self._unanswered = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def request(self, *, new_leg: bool = False) -> None:
        if new_leg and not self._unanswered:
            self._cancel_timer()
            self._fire()
            return
        if self._timer is not None:
            return
        wait = self._last + self._min_interval - time.monotonic()
        if wait <= 0:
            self._fire()
        else:
            self._timer = self._loop.call_later(wait, self._fire)

    def keyframe_seen(self) -> None:
        self._unanswered = False
        self._cancel_timer()

    def close(self) -> None:
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self._last = time.monotonic()
        self._unanswered = True
        self._send()


class PacketSource:
    """One published track on the server: the output queue of its receiver's decoder thread.

    aiortc's decoder worker calls ``put(packet)`` on the event loop for every frame and
    ``put(None)`` when the receiver stops. Nothing is stored: each packet goes straight to the
    attached :class:`ForwardedTrack` legs. ``last_packet_at`` (``time.monotonic()``) is the
    evidence that media is arriving.
    """

    def __init__(
        self,
        kind: str,
        *,
        send_keyframe_request: Callable[[], None] | None = None,
        keyframe_throttle_s: float = 0.5,
    ) -> None:
        self.kind = kind
        self.last_packet_at = -float("inf")
        self.closed = False
        self._legs: tuple[ForwardedTrack, ...] = ()
        self._requester = (
            KeyframeRequester(send_keyframe_request, min_interval=keyframe_throttle_s)
            if send_keyframe_request is not None
            else None
        )

    async def put(self, item: EncodedPacket | None) -> None:
        self.put_nowait(item)

    def put_nowait(self, item: EncodedPacket | None) -> None:
        if item is None:
            self.close()
            return
        self.last_packet_at = time.monotonic()
        if item.is_keyframe and self._requester is not None:
            self._requester.keyframe_seen()
        for leg in self._legs:
            leg.push(item)

    def request_keyframe(self, *, new_leg: bool = False) -> None:
        """Ask the publisher for a keyframe (see :class:`KeyframeRequester`); no-op for audio."""
        if self._requester is not None:
            self._requester.request(new_leg=new_leg)

    def attach(self, leg: ForwardedTrack) -> None:
        if self.closed:
            leg.stop()
        elif leg not in self._legs:
            self._legs = (*self._legs, leg)

    def detach(self, leg: ForwardedTrack) -> None:
        self._legs = tuple(x for x in self._legs if x is not leg)

    def close(self) -> None:
        """End the source: every attached leg ends, so its sender stops. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._requester is not None:
            self._requester.close()
        legs, self._legs = self._legs, ()
        for leg in legs:
            leg.stop()


class InlineDecoderQueue:
    """Stands in for a server receiver's decoder queue (a ``queue.Queue`` in aiortc).

    The receiver calls ``put((codec, frame))`` on the event loop for every reassembled frame
    and ``put(None)`` when it stops; each frame goes to the :class:`PacketSource` at once, as
    the ``av.Packet`` a :class:`PassthroughDecoder` makes of it.
    """

    def __init__(self, source: PacketSource) -> None:
        self._source = source
        self._decoders: dict[str, PassthroughDecoder] = {}

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:
            self._source.close()
            return
        codec, frame = item
        decoder = self._decoders.get(codec.name)
        if decoder is None:
            decoder = self._decoders[codec.name] = _passthrough_decoder(codec)
        for packet in decoder.decode(frame):
            self._source.put_nowait(packet)


def attach_source(receiver: RTCRtpReceiver, source: PacketSource) -> None:
    """Make ``receiver`` (not yet negotiated) feed ``source`` instead of decoding.

    The receiver's track becomes a :class:`SourceTrack` and its decoder queue an
    :class:`InlineDecoderQueue` (:func:`vio.media.seams.set_receiver_track`,
    :func:`vio.media.seams.replace_decoder_queue`).
    """
    install_passthrough_hooks()  # the replaced decoder thread leaves this queue alone
    seams.set_receiver_track(receiver, SourceTrack(source))
    seams.replace_decoder_queue(receiver, InlineDecoderQueue(source))


class SourceTrack(RemoteStreamTrack):
    """The track of a server receiver, installed before negotiation so aiortc keeps it.

    Its output queue is a :class:`PacketSource`, which marks the receiver for passthrough; the
    media is consumed by the source's legs, so the track itself cannot be read.
    """

    def __init__(self, source: PacketSource) -> None:
        super().__init__(kind=source.kind)
        self.source = source
        # aiortc's decoder worker only ever calls ``put`` on this queue.
        seams.replace_track_queue(self, source)

    async def recv(self) -> av.frame.Frame:
        raise MediaStreamError("a server receiver's media is forwarded, not read")


_sender_is_passthrough: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "vio_sender_is_passthrough", default=False
)


class ForwardedTrack(MediaStreamTrack):
    """One receiving leg of a published track: what one server sender sends to one participant.

    Packets are queued (at most ``queue_size``) only once the leg has started, i.e. its sender
    has called ``recv()``, and only from a keyframe on. On overflow the queue is emptied and the
    leg waits for the next keyframe, asking the publisher for one. A paused leg (video not
    selected for this receiver) queues nothing and waits for a keyframe when resumed.
    """

    def __init__(self, source: PacketSource, *, queue_size: int) -> None:
        super().__init__()
        self.kind = source.kind
        self.overflows = 0
        self._source = source
        self._queue: asyncio.Queue[EncodedPacket | None] = asyncio.Queue(maxsize=queue_size)
        self._started = False
        self._awaiting_keyframe = True
        self._paused = False
        source.attach(self)

    @property
    def paused(self) -> bool:
        return self._paused

    async def recv(self) -> EncodedPacket:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._started:
            self._started = True
            # Marks this sender's RTP task so get_encoder() gives it a PassthroughPacker.
            _sender_is_passthrough.set(True)
            if not self._paused:
                self._source.request_keyframe(new_leg=True)
        packet = await self._queue.get()
        if packet is None:
            raise MediaStreamError
        return packet

    def push(self, packet: EncodedPacket) -> None:
        """Offer one packet from the publisher (called on the event loop for every frame)."""
        if self._paused or not self._started:
            return
        if self._awaiting_keyframe:
            if not packet.is_keyframe:
                self._source.request_keyframe()
                return
            self._awaiting_keyframe = False
        try:
            self._queue.put_nowait(packet)
        except asyncio.QueueFull:
            self._overflow(packet)

    def request_keyframe(self) -> None:
        """A receiver of this leg reported picture loss (PLI/FIR): ask the publisher."""
        if self._started and not self._paused:
            self._source.request_keyframe()

    def set_paused(self, paused: bool) -> None:
        if paused == self._paused:
            return
        self._paused = paused
        if not paused:
            self._awaiting_keyframe = True
            if self._started:
                self._source.request_keyframe(new_leg=True)

    def stop(self) -> None:
        if self.readyState == "live":
            self._source.detach(self)
            self._drain()
            self._queue.put_nowait(None)
        super().stop()

    def _overflow(self, packet: EncodedPacket) -> None:
        self.overflows += 1
        self._drain()
        if packet.is_keyframe:
            self._queue.put_nowait(packet)
        else:
            self._awaiting_keyframe = True
            self._source.request_keyframe()

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()


# --- hooks into aiortc -------------------------------------------------------------------------

_decoder_thread = threading.local()
_installed = False


def _decoder_worker(
    loop: asyncio.AbstractEventLoop,
    input_q: queue.Queue[Any] | InlineDecoderQueue,
    output_q: Any,
    decode_error: threading.Event,
) -> None:
    """aiortc's decoder thread; it has nothing to do for a receiver of :func:`attach_source`."""
    if isinstance(input_q, InlineDecoderQueue):
        return
    seams.aiortc_decoder_worker(loop, input_q, output_q, decode_error)


def _get_decoder(codec: RTCRtpCodecParameters) -> Decoder | PassthroughDecoder:
    if getattr(_decoder_thread, "passthrough", False):
        return PassthroughDecoder(codec)
    return _aiortc_get_decoder(codec)


def _passthrough_decoder(codec: RTCRtpCodecParameters) -> PassthroughDecoder:
    """A decoder for a server receiver, made by aiortc's (replaced) ``get_decoder`` as always."""
    _decoder_thread.passthrough = True
    try:
        decoder = seams.receiver_decoder(codec)
    finally:
        _decoder_thread.passthrough = False
    if not isinstance(decoder, PassthroughDecoder):
        raise RuntimeError(f"server receivers need a PassthroughDecoder, got {decoder!r}")
    return decoder


def _get_encoder(codec: RTCRtpCodecParameters) -> Encoder | PassthroughPacker:
    if _sender_is_passthrough.get():
        return PassthroughPacker(codec)
    return _aiortc_get_encoder(codec)


class LazyBitrateEstimator:
    """aiortc's ``RemoteBitrateEstimator`` (REMB), built when the first video packet arrives.

    aiortc gives every video transceiver's receiver one, and building it fills a 1,000-bucket
    rate counter: about a millisecond. The server's send-only legs never receive a packet, and
    each participant who joins adds a video leg at everyone else, so the eager estimators were
    a large part of the CPU a join costs (``bench/signaling.py``).
    """

    __slots__ = ("_estimator",)

    def __init__(self) -> None:
        self._estimator: RemoteBitrateEstimator | None = None

    def add(self, **packet: int) -> tuple[int, list[int]] | None:
        if self._estimator is None:
            self._estimator = RemoteBitrateEstimator()
        result: tuple[int, list[int]] | None = self._estimator.add(**packet)
        return result


def install_passthrough_hooks() -> None:
    """Install the decoder/encoder hooks described in the module docstring. Idempotent.

    They change nothing for peer connections whose receivers and senders are not wired to
    :class:`PacketSource` / :class:`ForwardedTrack`, except that every video receiver of the
    process builds its bandwidth estimator lazily (:class:`LazyBitrateEstimator`).
    """
    global _installed
    if _installed:
        return
    seams.install_codec_hooks(
        decoder_worker=_decoder_worker,
        get_decoder=_get_decoder,
        get_encoder=_get_encoder,
        bitrate_estimator=LazyBitrateEstimator,
    )
    _installed = True
