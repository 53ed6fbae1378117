"""A bounded queue of messages for one client: a slow client is dropped, not buffered."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from vio.errors import Dropped, VioError

Message = dict[str, Any]


class Outbox:
    """Messages waiting to be written to one client, then the reason its connection closes.

    ``put`` never blocks: past ``limit`` queued messages the client is too slow and the outbox
    closes with ``too-slow`` (dropping what was queued). After ``close`` the writer sends what is
    queued (for example a ``refused`` or ``ended`` message), then the close reason.
    """

    def __init__(self, limit: int) -> None:
        self._items: deque[Message] = deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self.closing: VioError | None = None

    def put(self, message: Message) -> None:
        if self.closing is not None:
            return
        if len(self._items) >= self._limit:
            self._items.clear()
            self.close(Dropped("too-slow", "Your connection could not keep up."))
            return
        self._items.append(message)
        self._ready.set()

    def close(self, reason: VioError) -> None:
        if self.closing is None:
            self.closing = reason
            self._ready.set()

    async def get(self) -> Message | VioError:
        while True:
            if self._items:
                return self._items.popleft()
            if self.closing is not None:
                return self.closing
            self._ready.clear()
            await self._ready.wait()
