"""A participant's end of the signaling WebSocket (``/ws/sessions/{id}``, docs/protocol.md).

``SignalingClient`` connects (with the browser's session cookie, or a room ticket in the URL),
reads in one background task and keeps every message it receives, parsed, in arrival order, and
the close code and reason once the connection has closed. On top of that record:

- ``send(**fields)`` sends one JSON message; ``send_raw`` sends a frame as given (text or
  binary), for malformed input;
- ``expect(*types, **fields)`` waits for the next matching message after the last one expected,
  ``received(type)`` lists what has come, ``closed()`` waits for the close code;
- ``incoming()`` iterates over every message as it arrives, for a participant that reacts
  (``vio bot`` answers offers with it);
- ``pause_reading()`` stops reading the socket, so the server's writes back up as they would
  for a stalled client.

How paused reading works: the ``websockets`` library reads the socket through an asyncio
transport into its own frame buffer (``max_queue`` frames) whether or not anyone calls
``recv()``, so merely not iterating the connection lets the library keep draining the socket.
Pausing therefore also pauses the transport itself (``transport.pause_reading()``), which takes
the socket out of the event loop's read set: nothing more is read, the kernel's receive buffer
fills, TCP's window closes, and the server's ``send`` blocks once its own buffers are full.
Frames the library had already read before the pause stay in its buffer (at most ``max_queue``
frames plus one read of the socket) and are delivered after ``resume_reading()``. While paused
the client does not see pongs or the server's close frame either; a pause longer than
``ping_interval`` plus the library's ping timeout ends with the client closing (1011).

Frames carry clinical content (names, chat), so this module never logs them, and the library's
frame-level debug log is kept off (its logger is held at INFO). ``NotReceived`` messages do
quote the last messages received, for test output; don't log them in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

__all__ = [
    "CLOSE_TIMEOUT_SECONDS",
    "EXPECT_SECONDS",
    "MAX_MESSAGE_BYTES",
    "MAX_QUEUE_FRAMES",
    "OPEN_TIMEOUT_SECONDS",
    "PING_INTERVAL_SECONDS",
    "NotReceived",
    "SignalingClient",
]

log = logging.getLogger(__name__)

_wire_log = logging.getLogger(f"{__name__}.wire")
_wire_log.setLevel(logging.INFO)  # the library logs frame contents at DEBUG

OPEN_TIMEOUT_SECONDS = 10.0
"""Connecting, the HTTP upgrade included."""
CLOSE_TIMEOUT_SECONDS = 5.0
"""The closing handshake, and waiting for the reader to finish after it."""
EXPECT_SECONDS = 5.0
"""How long ``expect``, ``join`` and ``closed`` wait by default."""
PING_INTERVAL_SECONDS: float | None = 20.0
"""WebSocket keepalive pings (the library's default); ``None`` turns them off."""
MAX_MESSAGE_BYTES = 1 << 20
"""The largest message accepted from the server (the library's default)."""
MAX_QUEUE_FRAMES = 16
"""Frames the library buffers before it stops reading the socket (the library's default)."""
SHOWN_ON_FAILURE = 5
"""Messages quoted in a ``NotReceived`` error."""


class NotReceived(AssertionError):
    """The expected message did not arrive in time, or the connection closed first."""


class SignalingClient:
    """One signaling connection: what it received, in order, and how it ended."""

    def __init__(self, url: str, *, cookie: str | None = None,
                 sock: socket.socket | None = None, read: bool = True,
                 open_timeout: float = OPEN_TIMEOUT_SECONDS,
                 close_timeout: float = CLOSE_TIMEOUT_SECONDS,
                 ping_interval: float | None = PING_INTERVAL_SECONDS,
                 max_size: int | None = MAX_MESSAGE_BYTES,
                 max_queue: int = MAX_QUEUE_FRAMES) -> None:
        """``read=False`` connects with reading paused (see ``pause_reading``); ``sock`` is a
        connected TCP socket to use instead of opening one (a test can shrink its buffers)."""
        self.url = url
        self.cookie = cookie
        self.messages: list[dict[str, Any]] = []
        """Every message received, parsed; a frame that is not a JSON object is kept as
        ``{"type": None, "raw": frame}``."""
        self.close_code: int | None = None
        """``None`` while open; the server's close code (1006 if none came) once closed."""
        self.close_reason: str | None = None
        self._sock = sock
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._ping_interval = ping_interval
        self._max_size = max_size
        self._max_queue = max_queue
        self._connection: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._finished = False
        self._cursor = 0
        self._changed = asyncio.Event()
        self._reading = asyncio.Event()
        if read:
            self._reading.set()

    # --- connecting and closing ----------------------------------------------------------------

    async def connect(self) -> Self:
        """Open the connection and start reading (unless paused)."""
        if self._connection is not None:
            raise RuntimeError("already connected")
        headers = {"Cookie": self.cookie} if self.cookie else None
        self._connection = await connect(
            self.url, additional_headers=headers, sock=self._sock,
            open_timeout=self._open_timeout, close_timeout=self._close_timeout,
            ping_interval=self._ping_interval, max_size=self._max_size,
            max_queue=self._max_queue, logger=_wire_log)
        if not self._reading.is_set():
            self._connection.transport.pause_reading()
        self._reader = asyncio.create_task(self._read(self._connection))
        return self

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close (idempotent): reading resumes so the server's close frame can be read."""
        if self._connection is None:
            return
        self.resume_reading()
        await self._connection.close(code, reason)
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=self._close_timeout)
            self._reader.cancel()

    @property
    def connection(self) -> ClientConnection:
        """The ``websockets`` connection underneath."""
        if self._connection is None:
            raise RuntimeError("not connected")
        return self._connection

    # --- reading -------------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        try:
            while True:
                if not self._reading.is_set():
                    # A recv() that was already waiting may have let the library resume the
                    # transport (its own flow control); pause it again before waiting.
                    ws.transport.pause_reading()
                    await self._reading.wait()
                self._keep(await ws.recv())
        except ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_code
            self.close_reason = ws.close_reason
            self._finished = True
            self._notify()

    def _keep(self, frame: str | bytes) -> None:
        try:
            message = json.loads(frame)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            log.warning("a signaling frame was not a JSON object (%d bytes)", len(frame))
            message = {"type": None, "raw": frame}
        self.messages.append(message)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _changes(self, within: float | None) -> None:
        """Wait until a message arrives or the connection closes, at most ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), within)

    def pause_reading(self) -> None:
        """Stop reading the socket (see the module's docstring); sending still works."""
        self._reading.clear()
        if self._connection is not None:
            self._connection.transport.pause_reading()

    def resume_reading(self) -> None:
        self._reading.set()
        if self._connection is not None:
            self._connection.transport.resume_reading()

    @property
    def reading(self) -> bool:
        return self._reading.is_set()

    @property
    def open(self) -> bool:
        """Connected, and the reader has not seen the connection close."""
        return self._connection is not None and not self._finished

    # --- the protocol --------------------------------------------------------------------------

    async def send(self, **fields: Any) -> None:
        """Send one message: ``send(type="chat", to="room", text="Hi")``."""
        await self.connection.send(json.dumps(fields))

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame as it is: ``str`` as a text frame, ``bytes`` as a binary frame."""
        await self.connection.send(frame)

    async def join(self, *, within: float = EXPECT_SECONDS, **extra: Any) -> dict[str, Any]:
        """Send ``join`` (protocol version 1) and return the ``welcome``, ``waiting`` or
        ``refused`` that answers it."""
        await self.send(type="join", v=1, **extra)
        return await self.expect("welcome", "waiting", "refused", within=within)

    async def expect(self, *types: str, within: float = EXPECT_SECONDS,
                     **fields: Any) -> dict[str, Any]:
        """The next message after the last one expected whose type is one of ``types`` (any,
        if none given) and whose ``fields`` have the values given. Raises ``NotReceived`` if
        none arrives within ``within`` seconds or the connection closes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            for index in range(self._cursor, len(self.messages)):
                message = self.messages[index]
                if (not types or message.get("type") in types) and all(
                        message.get(key) == value for key, value in fields.items()):
                    self._cursor = index + 1
                    return message
            if self._finished or self._connection is None:
                raise NotReceived(f"closed ({self.close_code}) before {types or 'a message'}: "
                                  f"{self.messages[self._cursor:][-SHOWN_ON_FAILURE:]}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NotReceived(f"no {types or 'message'} within {within}s: "
                                  f"{self.messages[-SHOWN_ON_FAILURE:]}")
            await self._changes(remaining)

    def received(self, kind: str) -> list[dict[str, Any]]:
        """Every message of type ``kind`` received so far."""
        return [m for m in self.messages if m.get("type") == kind]

    async def closed(self, within: float = EXPECT_SECONDS) -> int | None:
        """Wait for the connection to close and return its close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not self._finished and self._connection is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NotReceived(f"still open after {within}s: "
                                  f"{self.messages[-SHOWN_ON_FAILURE:]}")
            await self._changes(remaining)
        return self.close_code

    async def incoming(self) -> AsyncIterator[dict[str, Any]]:
        """Every message from the first, as each arrives; ends when the connection closes.
        Independent of ``expect``'s cursor; several can run at once."""
        index = 0
        while True:
            while index < len(self.messages):
                index += 1
                yield self.messages[index - 1]
            if self._finished or self._connection is None:
                return
            await self._changes(None)
