"""``vio.client.SignalingClient`` against a small scripted WebSocket server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.conftest import seconds
from vio.client import NotReceived, SignalingClient

SIGNED_IN = "vio_session=signed-in"
FLOOD_BYTES = 16 << 20
"""Sent at a client that has stopped reading: more than loopback's buffers take."""
CHUNK = base64.b64encode(os.urandom(48 << 10)).decode()
"""64 KiB of text that does not compress (the server turns compression off as well)."""
STALL_SECONDS = 2.0
TINY_RCVBUF = 4096


class Script:
    """The server's side of the conversation, and a record of it."""

    def __init__(self) -> None:
        self.port = 0
        self.requests: list[tuple[str, str | None]] = []
        self.frames: list[str | bytes] = []
        self.flood_sent = 0
        """Bytes of the flood whose ``send`` has completed."""
        self.send_started: float | None = None
        """When the flood's ``send`` now in flight began (``None`` between sends)."""
        self.longest_send = 0.0

    def url(self, session_id: int = 7) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/sessions/{session_id}"

    async def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        cookie = ws.request.headers.get("Cookie")
        self.requests.append((ws.request.path, cookie))
        try:
            async for frame in ws:
                self.frames.append(frame)
                await self.answer(ws, frame, cookie)
        except ConnectionClosed:
            pass

    async def answer(self, ws: ServerConnection, frame: str | bytes, cookie: str | None) -> None:
        async def send(**message: Any) -> None:
            await ws.send(json.dumps(message))

        if isinstance(frame, bytes):
            return await send(type="error", code="binary-frame", bytes=len(frame))
        try:
            message = json.loads(frame)
        except ValueError:
            return await send(type="error", code="bad-message")
        kind = message.get("type")
        if kind == "join" and cookie != SIGNED_IN:
            await send(type="refused", code="not-signed-in", message="Please sign in.")
            await ws.close(4401, "not signed in")
        elif kind == "join":
            await send(type="welcome", you={"id": "p-1"}, participants=[])
            await send(type="participant-joined", participant={"id": "p-2", "role": "patient"})
        elif kind == "chat":
            await send(type="chat", text=message["text"], participant_id="p-1")
        elif kind == "leave":
            await send(type="refused", code="removed", message="You left.")
            await ws.close(4403, "removed")
        elif kind == "flood":
            await self.flood(ws, message["bytes"])
            await send(type="flood-done")

    async def flood(self, ws: ServerConnection, size: int) -> None:
        loop = asyncio.get_running_loop()
        seq = 0
        while self.flood_sent < size:
            chunk = json.dumps({"type": "chunk", "seq": seq, "data": CHUNK})
            self.send_started = started = loop.time()
            await ws.send(chunk)
            self.send_started = None
            self.longest_send = max(self.longest_send, loop.time() - started)
            self.flood_sent += len(chunk)
            seq += 1


@pytest_asyncio.fixture
async def script() -> AsyncIterator[Script]:
    script = Script()
    async with serve(script.handle, "127.0.0.1", 0, compression=None) as server:
        script.port = server.sockets[0].getsockname()[1]
        yield script


def tiny_socket(port: int) -> socket.socket:
    """A connected socket with a small receive buffer (set before connecting, since TCP fixes
    the window scale in the handshake)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TINY_RCVBUF)
    sock.connect(("127.0.0.1", port))
    return sock


async def test_join_sends_the_cookie_and_returns_the_welcome(script: Script) -> None:
    async with SignalingClient(script.url(), cookie=SIGNED_IN) as client:
        welcome = await client.join(name="Dana")
        assert welcome["type"] == "welcome" and welcome["you"] == {"id": "p-1"}
        assert (await client.expect("participant-joined"))["participant"]["id"] == "p-2"
        assert json.loads(script.frames[0]) == {"type": "join", "v": 1, "name": "Dana"}
    assert script.requests == [("/ws/sessions/7", SIGNED_IN)]
    assert client.close_code == 1000


async def test_expect_moves_a_cursor_and_matches_fields(script: Script) -> None:
    async with SignalingClient(script.url(), cookie=SIGNED_IN) as client:
        await client.join()
        for text in ("one", "two", "three"):
            await client.send(type="chat", to="room", text=text)
        assert (await client.expect("chat", text="two"))["text"] == "two"
        assert (await client.expect("chat"))["text"] == "three"  # after "two", not "one"
        assert [m["text"] for m in client.received("chat")] == ["one", "two", "three"]
        with pytest.raises(NotReceived, match=r"no \('chat',\) within [\d.]+s: .*'three'"):
            await client.expect("chat", within=seconds(0.2))
        with pytest.raises(NotReceived):  # any type, but the cursor is past everything
            await client.expect(within=seconds(0.2))


async def test_closed_returns_the_servers_close_code(script: Script) -> None:
    async with SignalingClient(script.url()) as client:
        refused = await client.join()
        assert refused["type"] == "refused" and refused["code"] == "not-signed-in"
        assert await client.closed(within=seconds(5)) == 4401
        assert client.close_reason == "not signed in"
        with pytest.raises(NotReceived, match=r"closed \(4401\) before \('welcome',\)"):
            await client.expect("welcome")
        assert not client.open


async def test_send_raw_sends_frames_as_given(script: Script) -> None:
    async with SignalingClient(script.url(), cookie=SIGNED_IN) as client:
        await client.send_raw(b"\x00\xff{")
        assert (await client.expect("error"))["code"] == "binary-frame"
        await client.send_raw("{not json")
        assert (await client.expect("error"))["code"] == "bad-message"
        assert script.frames == [b"\x00\xff{", "{not json"]


async def test_incoming_yields_every_message_until_the_close(script: Script) -> None:
    async with SignalingClient(script.url(), cookie=SIGNED_IN) as client:
        await client.join()
        await client.send(type="chat", to="room", text="bye")
        await client.send(type="leave")
        kinds = [m["type"] async for m in client.incoming()]
        assert kinds == ["welcome", "participant-joined", "chat", "refused"]
        assert client.close_code == 4403 and client.close_reason == "removed"


@pytest.mark.parametrize("mode", ["pause_reading", "read=False"])
async def test_a_client_that_stops_reading_blocks_the_servers_send(script: Script,
                                                                   mode: str) -> None:
    loop = asyncio.get_running_loop()
    client = SignalingClient(script.url(), cookie=SIGNED_IN, sock=tiny_socket(script.port),
                             read=mode != "read=False")
    async with client:
        if mode == "pause_reading":
            await client.join()
            client.pause_reading()
        received = len(client.messages)
        await client.send(type="flood", bytes=FLOOD_BYTES)
        deadline = loop.time() + seconds(30)
        while script.send_started is None or loop.time() - script.send_started < seconds(
                STALL_SECONDS):
            assert loop.time() < deadline, f"the server kept sending ({script.flood_sent} B)"
            await asyncio.sleep(0.05)
        # One of the server's sends has now waited STALL_SECONDS, after a few MB got through.
        assert 1 << 20 < script.flood_sent < FLOOD_BYTES
        assert len(client.messages) == received
        client.resume_reading()
        await client.expect("flood-done", within=seconds(30))
        assert [m["seq"] for m in client.received("chunk")] == list(range(
            len(client.received("chunk"))))
        assert len(client.received("chunk")) * len(CHUNK) >= FLOOD_BYTES - len(CHUNK)


async def test_a_reading_client_takes_the_flood_without_stalling_the_server(
        script: Script) -> None:
    client = SignalingClient(script.url(), cookie=SIGNED_IN, sock=tiny_socket(script.port))
    async with client:
        await client.send(type="flood", bytes=FLOOD_BYTES)
        await client.expect("flood-done", within=seconds(30))
    assert script.longest_send < seconds(STALL_SECONDS)
