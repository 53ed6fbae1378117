"""Synthetic media for the headless bot and tests: a counting video and a sine tone.

:class:`CounterVideoTrack` draws its frame counter as a grid of large black and white blocks
(16 bits of counter, then their complements as a check), which survives VP8 compression at
any sensible bitrate; :func:`read_counter` reads it back from a decoded frame. Pure PyAV, no
numpy.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from array import array

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

__all__ = ["COUNTER_BITS", "CounterVideoTrack", "ToneAudioTrack", "read_counter"]

COUNTER_BITS = 16
"""The counter wraps at ``2 ** COUNTER_BITS``."""

_GRID_COLUMNS = 8
_GRID_ROWS = 4  # 2 * COUNTER_BITS cells: the counter bits, then their complements
_BLACK = 16
_WHITE = 235
_VIDEO_CLOCK_RATE = 90000
_VIDEO_TIME_BASE = fractions.Fraction(1, _VIDEO_CLOCK_RATE)


def _cells(counter: int) -> list[bool]:
    bits = [bool(counter >> i & 1) for i in range(COUNTER_BITS)]
    return bits + [not b for b in bits]


class _Pacer:
    """Sleeps so that frame ``n`` is returned ``n * period`` after the first."""

    def __init__(self, period: float) -> None:
        self._period = period
        self._start: float | None = None
        self.index = -1

    async def next(self) -> int:
        self.index += 1
        if self._start is None:
            self._start = time.monotonic()
        else:
            delay = self._start + self.index * self._period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return self.index


class CounterVideoTrack(MediaStreamTrack):
    """Video whose ``n``-th frame shows ``n`` (mod ``2 ** COUNTER_BITS``) as blocks."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 15) -> None:
        super().__init__()
        if width % (2 * _GRID_COLUMNS) or height % (2 * _GRID_ROWS):
            raise ValueError("width and height must split evenly into the block grid")
        self.width = width
        self.height = height
        self._pacer = _Pacer(1 / fps)
        self._ticks_per_frame = _VIDEO_CLOCK_RATE // fps
        blank = av.VideoFrame(width, height, "yuv420p")
        self._chroma = [bytes([128]) * p.buffer_size for p in blank.planes[1:]]

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        return self.frame(await self._pacer.next())

    def frame(self, index: int) -> av.VideoFrame:
        """The ``index``-th frame, drawn now (``recv`` paces these at the frame rate)."""
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        luma = frame.planes[0]
        cell_w = self.width // _GRID_COLUMNS
        cell_h = self.height // _GRID_ROWS
        padding = bytes(luma.line_size - self.width)
        cells = _cells(index % (1 << COUNTER_BITS))
        rows = []
        for r in range(_GRID_ROWS):
            line = b"".join(
                bytes([_WHITE if cells[r * _GRID_COLUMNS + c] else _BLACK]) * cell_w
                for c in range(_GRID_COLUMNS)
            )
            rows.append((line + padding) * cell_h)
        luma.update(b"".join(rows))
        for plane, data in zip(frame.planes[1:], self._chroma, strict=True):
            plane.update(data)
        frame.pts = index * self._ticks_per_frame
        frame.time_base = _VIDEO_TIME_BASE
        return frame


def read_counter(frame: av.VideoFrame) -> int | None:
    """The counter drawn by :class:`CounterVideoTrack`, or ``None`` if the blocks don't check."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    luma = frame.planes[0]
    data = bytes(luma)
    stride = luma.line_size
    cell_w = frame.width / _GRID_COLUMNS
    cell_h = frame.height / _GRID_ROWS
    cells = []
    for r in range(_GRID_ROWS):
        for c in range(_GRID_COLUMNS):
            x = int((c + 0.5) * cell_w)
            y = int((r + 0.5) * cell_h)
            dx = max(1, int(cell_w / 4))
            dy = max(1, int(cell_h / 4))
            samples = [data[(y + j) * stride + x + i] for i in (-dx, 0, dx) for j in (-dy, 0, dy)]
            cells.append(sum(samples) / len(samples) > (_BLACK + _WHITE) / 2)
    bits, check = cells[:COUNTER_BITS], cells[COUNTER_BITS:]
    if any(b == k for b, k in zip(bits, check, strict=True)):
        return None
    return sum(1 << i for i, b in enumerate(bits) if b)


class ToneAudioTrack(MediaStreamTrack):
    """A sine tone: 48 kHz mono s16 in 20 ms frames. ``amplitude`` 0 gives silence."""

    kind = "audio"

    SAMPLE_RATE = 48000
    FRAME_SAMPLES = 960

    def __init__(self, frequency: int = 440, amplitude: float = 0.3) -> None:
        super().__init__()
        if not 0 <= amplitude <= 1:
            raise ValueError("amplitude must be between 0 and 1")
        # One second holds a whole number of periods of an integer frequency, so the table
        # loops without a click and each 20 ms frame is a slice of it.
        peak = amplitude * 32767
        table = array(
            "h",
            (
                round(peak * math.sin(2 * math.pi * frequency * n / self.SAMPLE_RATE))
                for n in range(self.SAMPLE_RATE)
            ),
        )
        self._table = table.tobytes()
        self._pacer = _Pacer(self.FRAME_SAMPLES / self.SAMPLE_RATE)
        self._time_base = fractions.Fraction(1, self.SAMPLE_RATE)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        return self.frame(await self._pacer.next())

    def frame(self, index: int) -> av.AudioFrame:
        """The ``index``-th 20 ms frame (``recv`` paces these in real time)."""
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.FRAME_SAMPLES)
        size = 2 * self.FRAME_SAMPLES
        offset = index * size % len(self._table)
        plane = frame.planes[0]
        plane.update(self._table[offset : offset + size] + bytes(plane.buffer_size - size))
        frame.pts = index * self.FRAME_SAMPLES
        frame.sample_rate = self.SAMPLE_RATE
        frame.time_base = self._time_base
        return frame
