"""A signaling-only participant for tests: ``vio.client.SignalingClient`` with waits scaled by
``tests.conftest.seconds``."""

from __future__ import annotations

from typing import Any

from websockets.asyncio.client import ClientConnection

from tests.conftest import seconds
from vio.client import CLOSE_TIMEOUT_SECONDS, EXPECT_SECONDS, OPEN_TIMEOUT_SECONDS, SignalingClient


class Client(SignalingClient):
    def __init__(self, url: str, cookie: str | None = None, **options: Any) -> None:
        options.setdefault("open_timeout", seconds(OPEN_TIMEOUT_SECONDS))
        options.setdefault("close_timeout", seconds(CLOSE_TIMEOUT_SECONDS))
        super().__init__(url, cookie=cookie, **options)

    async def expect(self, *types: str, within: float = EXPECT_SECONDS,
                     **fields: Any) -> dict[str, Any]:
        """The next message (after the last one expected) of one of ``types``."""
        return await super().expect(*types, within=seconds(within), **fields)

    async def closed(self, within: float = EXPECT_SECONDS) -> int | None:
        return await super().closed(seconds(within))

    @property
    def _ws(self) -> ClientConnection:
        """The connection underneath, for a test that drops it (``close(code=4000)``)."""
        return self.connection
