"""The signaling WebSocket: per connection one reader, one writer with a bounded outbox.

A handshake whose ``Origin`` is not ``VIO_PUBLIC_BASE_URL`` is refused before anything else
(``origin_allowed``). The reader waits for ``join``, finds which sign-in is asking (cookie or
room ticket), then enters the session's room by that sign-in (``RoomDirectory.enter``, which
looks the person up), on this node or, relayed, on the node that owns the room; every
later frame is parsed (``vio.protocol``) and handed to the room's message table. The writer
drains the ``Outbox`` with a send deadline: a client that does not take its messages in time is
dropped (``too-slow``) and leaves the room at that moment. Whichever of the two ends first ends
the other. Errors become messages or close codes in one place (``vio.errors.close_code``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.parse

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from vio.errors import BadMessage, Dropped, Refusal, VioError, close_code, refusal
from vio.models import Session
from vio.nodes.node import Node
from vio.pages.common import sign_in_of, state
from vio.protocol import message, parse
from vio.rooms.directory import RoomDirectory
from vio.rooms.outbox import CONNECTION_LOST, TOO_SLOW, Outbox

log = logging.getLogger(__name__)



async def _writer(ws: WebSocket, outbox: Outbox, send_timeout: float) -> None:
    while True:
        item = await outbox.get()
        if isinstance(item, VioError):
            if ws.application_state is WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(close_code(item), reason=item.code),
                                           send_timeout)
            return
        try:
            await asyncio.wait_for(ws.send_text(json.dumps(item)), send_timeout)
        except TimeoutError:
            outbox.discard_queued()
            outbox.close(TOO_SLOW)
        except (WebSocketDisconnect, RuntimeError, OSError):
            outbox.discard_queued()
            outbox.close(CONNECTION_LOST)
            return


async def _receive(ws: WebSocket, seconds: float) -> str | bytes:
    frame = await asyncio.wait_for(ws.receive(), seconds)
    if frame["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(frame.get("code", 1000))
    text: str | None = frame.get("text")
    if text is not None:
        return text
    data: bytes = frame.get("bytes") or b""
    return data


def _error(outbox: Outbox, error: VioError, about: str | None) -> None:
    outbox.put(message("error", code=error.code, message=error.message, about=about))


async def _await_join(ws: WebSocket, outbox: Outbox, seconds: float,
                      max_bytes: int) -> str | None:
    """Read until a valid ``join``; returns the family member's chosen name, if any."""
    while True:
        raw = await _receive(ws, seconds)
        try:
            msg = parse(raw, max_bytes)
        except BadMessage as error:
            _error(outbox, error, None)
            continue
        if msg.type == "ping":
            outbox.put(message("pong"))
        elif msg.type != "join":
            _error(outbox, BadMessage("join-first", "Send 'join' first."), msg.type)
        else:
            name: str | None = msg.get("name")
            return name


async def _read(ws: WebSocket, outbox: Outbox, session_id: int) -> None:
    """The connection's reader: join, then every message until the connection ends."""
    app = state(ws)
    settings = app.settings
    directory: RoomDirectory = ws.app.state.rooms
    try:
        name = await _await_join(ws, outbox, settings.join_timeout_seconds,
                                 settings.ws_max_message_bytes)
        async with app.db() as db:
            sign_in_id = await sign_in_of(ws, db, ws.query_params.get("ticket"), session_id)
            if sign_in_id is None:
                raise refusal("not-signed-in")
            if await db.get(Session, session_id) is None:
                raise refusal("no-such-session")
        node: Node | None = ws.app.state.node
        epoch = None
        if node is not None:
            owner, epoch = await node.owner_for(session_id)
            if owner != node.id:  # the room lives on another node: relay to it
                await node.relay(owner, session_id, sign_in_id, name, outbox, lambda: _receive(
                    ws, settings.ws_idle_timeout_seconds))
                return
        live, participant = await directory.enter(session_id, sign_in_id, outbox, name, epoch)
        while outbox.alive:
            live.receive(participant, await _receive(ws, settings.ws_idle_timeout_seconds),
                         settings.ws_max_message_bytes)
    except Refusal as refused:
        outbox.refuse(refused)
    except Dropped as dropped:
        outbox.close(dropped)
    except TimeoutError:
        outbox.close(Dropped("idle-timeout", "No word from your browser for too long."))
    except WebSocketDisconnect:
        outbox.close(CONNECTION_LOST)
    except Exception:
        log.exception("signaling connection failed")
        outbox.close(Dropped("server-error", "Something went wrong on the server."))


DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin or base URL, or None when it is not one."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.rstrip("."), port or DEFAULT_PORTS[scheme]


def origin_allowed(origin: str | None, public_base_url: str) -> bool:
    """A browser page's WebSocket must come from ``VIO_PUBLIC_BASE_URL`` (browsers always send
    ``Origin``); a client that sends none is no browser, and no other site's page can ride it."""
    if origin is None:
        return True
    mine = _origin(public_base_url)
    return mine is not None and _origin(origin) == mine


async def serve(ws: WebSocket) -> None:
    """One participant's signaling connection, from accept to close."""
    settings = state(ws).settings
    if not origin_allowed(ws.headers.get("origin"), settings.public_base_url):
        await ws.close(code=1008, reason="origin")  # before accept: the handshake is refused
        return
    await ws.accept()
    outbox = Outbox(settings.ws_send_queue)
    writer = asyncio.create_task(_writer(ws, outbox, settings.ws_send_timeout_seconds))
    reader = asyncio.create_task(_read(ws, outbox, ws.path_params["session_id"]))
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done():  # let the writer send what is queued (refused, ended) and close
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer), settings.ws_send_timeout_seconds)
    finally:
        outbox.close(CONNECTION_LOST)  # whatever happened, the room hears of it now
        for task in (reader, writer):
            task.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
