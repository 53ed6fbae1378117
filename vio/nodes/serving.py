"""Serving as a node: uvicorn that drains first on SIGTERM, and ``vio serve --workers N``.

On SIGTERM (or Ctrl-C) a node first gives back its room leases, so the rooms it held open
elsewhere at the next join, then uvicorn closes every connection with 1012 (the clients
reconnect, and land on a live node) and the rooms shut down.

``--workers N`` runs N node processes on one machine sharing the HTTP port (``SO_REUSEPORT``:
the kernel spreads new connections over them), each with its own slice of the media port range.
They need ``VIO_REDIS_URL`` (and a database all of them reach). A worker that dies is started
again, in its own slice, after ``VIO_WORKER_RESTART_SECONDS``; the wait doubles after each death
that follows a run shorter than ``VIO_WORKER_RESTART_MAX_SECONDS`` (its cap), so a worker that
cannot start does not spin. Each death and restart is logged. A crash then costs the rooms of
one worker a move, not half the machine for good.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

import uvicorn

from vio.settings import Settings

WORKER_POLL_SECONDS = 0.2  # how often the parent looks at its workers


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


def _ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _say(line: str) -> None:
    print(f"vio serve: {line}", file=sys.stderr, flush=True)


def run_workers(argv: Sequence[str], workers: int, settings: Settings) -> int:
    """Start ``workers`` node processes with ``argv`` (a ``vio serve --worker`` command line),
    start again any that dies, and return when all have stopped after SIGTERM or Ctrl-C, which
    are passed on to each."""
    slices = port_slices(settings.rtc_port_range, workers)
    first, longest = settings.worker_restart_seconds, settings.worker_restart_max_seconds

    def start(index: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, "VIO_WORKER_INDEX": str(index)}
        if slices[index] is not None:
            env["VIO_RTC_PORT_RANGE"] = str(slices[index])
        return subprocess.Popen([sys.executable, "-m", "vio.cli", *argv], env=env)

    children = [start(index) for index in range(workers)]
    started = [time.monotonic()] * workers
    waits = [first] * workers
    due: dict[int, float] = {}  # worker -> when it starts again
    stopping: list[int] = []

    def pass_on(sig: int, frame: FrameType | None) -> None:
        stopping.append(sig)
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    while not (stopping and all(child.poll() is not None for child in children)):
        now = time.monotonic()
        for index, child in enumerate(children):
            code = child.poll()
            if stopping or code is None or index in due:
                continue
            wait = first if now - started[index] >= longest else waits[index]
            waits[index] = min(wait * 2, longest)
            due[index] = now + wait
            _say(f"worker {index} (pid {child.pid}) {_ended(code)}; starting a new one in "
                 f"{wait:g} s")
        for index, when in list(due.items()):
            if stopping:
                due.clear()
            elif now >= when:
                del due[index]
                children[index] = start(index)
                started[index] = now
                _say(f"worker {index} started again (pid {children[index].pid})")
        time.sleep(WORKER_POLL_SECONDS)
    # uvicorn ends by raising the signal it stopped for, once it has shut down cleanly.
    codes = [0 if child.returncode in (-signal.SIGTERM, -signal.SIGINT) else child.returncode
             for child in children]
    return max(codes, default=0)
