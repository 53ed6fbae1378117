"""A bounded queue of messages for one client: a slow client is dropped, not buffered."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from vio.errors import Dropped, Refusal, VioError

Message = dict[str, Any]

log = logging.getLogger(__name__)

TOO_SLOW = Dropped("too-slow", "Your connection could not keep up.")
CONNECTION_LOST = Dropped("connection-lost", "The connection closed.")


class Outbox:
    """Messages waiting to be written to one client, then the reason its connection closes.

    ``put`` never blocks: past ``limit`` queued messages the client is too slow and the outbox
    closes with ``too-slow`` (dropping what was queued). After ``close`` the writer sends what is
    queued (for example a ``refused`` or ``ended`` message), then the close reason. Whoever
    closes it, the callbacks of ``on_close`` run at once, exactly once: that is how a room hears
    that a connection is gone at the moment it goes.
    """

    def __init__(self, limit: int) -> None:
        self._items: deque[Message] = deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self._on_close: list[Callable[[VioError], None]] = []
        self.closing: VioError | None = None

    @property
    def alive(self) -> bool:
        return self.closing is None

    def on_close(self, callback: Callable[[VioError], None]) -> None:
        """Call ``callback(reason)`` when the outbox closes (at once if it already has)."""
        if self.closing is not None:
            callback(self.closing)
        else:
            self._on_close.append(callback)

    def put(self, message: Message) -> None:
        if self.closing is not None:
            return
        if len(self._items) >= self._limit:
            self._items.clear()
            self.close(TOO_SLOW)
            return
        self._items.append(message)
        self._ready.set()

    def close(self, reason: VioError) -> None:
        if self.closing is not None:
            return
        self.closing = reason
        self._ready.set()
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            try:
                callback(reason)
            except Exception:
                log.exception("a close callback failed")

    def refuse(self, refusal: Refusal) -> None:
        """Tell the client why it cannot be here (``refused``), then close."""
        self.put({"type": "refused", "code": refusal.code, "message": refusal.message})
        self.close(refusal)

    def discard_queued(self) -> None:
        """Forget what is queued (the client cannot take it); the close reason stays."""
        self._items.clear()

    async def get(self) -> Message | VioError:
        while True:
            if self._items:
                return self._items.popleft()
            if self.closing is not None:
                return self.closing
            self._ready.clear()
            await self._ready.wait()
