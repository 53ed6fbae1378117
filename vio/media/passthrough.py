"""Passthrough pieces: encoded media is never decoded or encoded on the server.

The server forwards RTP packets (:mod:`vio.media.rtp_forwarding`); this module holds what
that shares with a frame-level passthrough:

* :func:`install_passthrough_hooks`: aiortc starts a decoder thread for every receiver
  (``aiortc.rtcrtpreceiver.decoder_worker``, which is replaced); for a server receiver, whose
  decoder queue is replaced, the thread ends at once. Every video receiver of the process
  builds its bandwidth estimator lazily (:class:`LazyBitrateEstimator`).
* :class:`KeyframeRequester`: all keyframe requests for one publisher go through one, which
  throttles them.
* :class:`PassthroughDecoder` / :class:`PassthroughPacker`: stand-ins for aiortc's codecs
  that hand over or packetize encoded frames (``av.Packet``) without a codec context, for a
  frame-level passthrough such as the bare-aiortc reference server of ``bench/``.

Every aiortc internal used here is reached through :mod:`vio.media.seams`.
"""

from __future__ import annotations

import asyncio
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
from aiortc.jitterbuffer import JitterFrame
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from . import seams

__all__ = [
    "KeyframeRequester",
    "LazyBitrateEstimator",
    "PassthroughDecoder",
    "PassthroughPacker",
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


# --- hooks into aiortc -------------------------------------------------------------------------

_installed = False


def _decoder_worker(
    loop: asyncio.AbstractEventLoop,
    input_q: queue.Queue[Any] | Any,
    output_q: Any,
    decode_error: threading.Event,
) -> None:
    """aiortc's decoder thread; it has nothing to do for a receiver whose queue was replaced.

    A server receiver (:func:`vio.media.rtp_forwarding.attach_rtp_source`) never feeds its
    decoder queue, which is not a ``queue.Queue`` any more: the thread ends at once.
    """
    if not isinstance(input_q, queue.Queue):
        return
    seams.aiortc_decoder_worker(loop, input_q, output_q, decode_error)


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
    """Install the receiver hooks described in the module docstring. Idempotent.

    They change nothing for receivers whose decoder queue is aiortc's own, except that every
    video receiver of the process builds its bandwidth estimator lazily
    (:class:`LazyBitrateEstimator`).
    """
    global _installed
    if _installed:
        return
    seams.install_codec_hooks(
        decoder_worker=_decoder_worker, bitrate_estimator=LazyBitrateEstimator
    )
    _installed = True
