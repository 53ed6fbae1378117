"""A signaling-only participant for tests: sends JSON, records everything it receives."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import websockets

from tests.conftest import seconds


class Client:
    def __init__(self, url: str, cookie: str | None = None) -> None:
        self.url = url
        self.cookie = cookie
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self._cursor = 0
        self._arrived = asyncio.Event()
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Client:
        headers = {"Cookie": self.cookie} if self.cookie else {}
        self._ws = await websockets.connect(self.url, additional_headers=headers)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._reader, seconds(5))

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                self.messages.append(json.loads(raw))
                self._arrived.set()
        except websockets.ConnectionClosed:
            pass
        self.close_code = self._ws.close_code
        self._arrived.set()

    async def send(self, **message: Any) -> None:
        await self._ws.send(json.dumps(message))

    async def join(self, **extra: Any) -> dict[str, Any]:
        await self.send(type="join", v=1, **extra)
        return await self.expect("welcome", "waiting", "refused")

    async def expect(self, *types: str, within: float = 5, **fields: Any) -> dict[str, Any]:
        """The next message (after the last one expected) of one of ``types``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds(within)
        while True:
            for index in range(self._cursor, len(self.messages)):
                msg = self.messages[index]
                if msg["type"] in types and all(msg.get(k) == v for k, v in fields.items()):
                    self._cursor = index + 1
                    return msg
            if self.close_code is not None and self._reader is not None \
                    and self._reader.done():
                raise AssertionError(f"closed ({self.close_code}) before {types}: "
                                     f"{self.messages[self._cursor:]}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {types} within {within}s: {self.messages[-5:]}")
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def received(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    async def closed(self, within: float = 5) -> int | None:
        assert self._reader is not None
        await asyncio.wait_for(self._reader, seconds(within))
        return self.close_code
