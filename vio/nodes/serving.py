"""Serving as a node: uvicorn that drains first on SIGTERM, and ``vio serve --workers N``.

On SIGTERM (or Ctrl-C) a node first gives back its room leases, so the rooms it held open
elsewhere at the next join, then uvicorn closes every connection with 1012 (the clients
reconnect, and land on a live node) and the rooms shut down.

``--workers N`` runs N node processes on one machine sharing the HTTP port (``SO_REUSEPORT``:
the kernel spreads new connections over them), each with its own slice of the media port range.
They need ``VIO_REDIS_URL`` (and a database all of them reach).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from types import FrameType

import uvicorn


class NodeServer(uvicorn.Server):
    """uvicorn's server; on the first exit signal it drains this node before closing."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is not None and self._loop is not None and not self.should_exit:
            self._loop.call_soon_threadsafe(self._drain)
        super().handle_exit(sig, frame)


def port_slices(port_range: tuple[int, ...], workers: int) -> list[str | None]:
    """The media port range split into one slice per worker (None: no range set)."""
    if not port_range:
        return [None] * workers
    low, high = port_range[0], port_range[-1]
    size = (high - low + 1) // workers
    if size < 1:
        raise ValueError(f"a media port range of {high - low + 1} ports cannot be split "
                         f"over {workers} workers")
    return [f"{low + i * size}-{low + (i + 1) * size - 1}" for i in range(workers)]


def run_workers(argv: Sequence[str], workers: int, port_range: tuple[int, ...]) -> int:
    """Start ``workers`` node processes with ``argv`` (a ``vio serve --worker`` command line)
    and wait for them; SIGTERM and Ctrl-C are passed on to each."""
    children = []
    for index, ports in enumerate(port_slices(port_range, workers)):
        env = {**os.environ, "VIO_WORKER_INDEX": str(index)}
        if ports is not None:
            env["VIO_RTC_PORT_RANGE"] = ports
        children.append(subprocess.Popen([sys.executable, "-m", "vio.cli", *argv], env=env))

    def pass_on(sig: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    codes = []
    for child in children:
        code = child.wait()
        # uvicorn ends by raising the signal it stopped for, once it has shut down cleanly.
        codes.append(0 if code in (-signal.SIGTERM, -signal.SIGINT) else code)
    return max(codes, default=0)
