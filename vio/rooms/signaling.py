"""The signaling WebSocket: one reader, one writer with a bounded outbox, per connection.

The reader parses each frame (``vio.protocol``) and hands it to the ``Room``; the writer drains
the ``Outbox`` with a send deadline. Errors become messages or close codes in one place
(``vio.errors.close_code``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from datetime import timedelta

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from vio.clock import Clock
from vio.errors import BadMessage, Dropped, NotAllowed, Refusal, VioError, close_code
from vio.media import MediaRouter
from vio.pages.common import current_viewer, state, viewer_from_ticket
from vio.protocol import message, parse
from vio.rooms import dispatch, records
from vio.rooms.admission import Person, RoomView, SessionFacts, admission
from vio.rooms.outbox import Outbox
from vio.rooms.room import Participant, Room, RoomStore
from vio.settings import Settings

log = logging.getLogger(__name__)

NO_ROOM = RoomView(removed=frozenset(), locked=False, ended=False, occupancy=0, capacity=1,
                   therapist_present=False, reconnecting=frozenset())


class RoomDirectory:
    """The live rooms of this process, one per session, opened on first join."""

    def __init__(self, settings: Settings, clock: Clock, store: RoomStore,
                 media_factory: Callable[[], MediaRouter]) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store
        self.media_factory = media_factory
        self.rooms: dict[int, Room] = {}

    def room_for(self, facts: SessionFacts) -> Room:
        room = self.rooms.get(facts.session_id)
        if room is None or room.ended:
            room = Room(facts, self.settings, self.clock, self.media_factory(), self.store,
                        on_closed=self._closed)
            self.rooms[facts.session_id] = room
            room.start()
        return room

    async def _closed(self, room: Room) -> None:
        if self.rooms.get(room.id) is room:
            del self.rooms[room.id]

    async def remove_family_member(self, family_member_id: int, why: str) -> int:
        """Take a family member out of every live room at once (their consent was revoked)."""
        removed = 0
        for room in list(self.rooms.values()):
            removed += await room.remove_person(
                lambda person: person.family_member_id == family_member_id, "consent-revoked",
                why)
        return removed

    async def close(self) -> None:
        for room in list(self.rooms.values()):
            await room.shutdown()
        self.rooms.clear()


async def _writer(ws: WebSocket, outbox: Outbox, send_timeout: float) -> None:
    while True:
        item = await outbox.get()
        if isinstance(item, VioError):
            if ws.application_state is WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await ws.close(close_code(item), reason=item.code)
            return
        try:
            await asyncio.wait_for(ws.send_text(json.dumps(item)), send_timeout)
        except (TimeoutError, WebSocketDisconnect, RuntimeError):
            outbox.close(Dropped("too-slow", "Your connection could not keep up."))


async def _receive(ws: WebSocket, seconds: float) -> str | bytes:
    frame = await asyncio.wait_for(ws.receive(), seconds)
    if frame["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(frame.get("code", 1000))
    text: str | None = frame.get("text")
    if text is not None:
        return text
    data: bytes = frame.get("bytes") or b""
    return data


async def _await_join(ws: WebSocket, outbox: Outbox, settings: Settings) -> str | None:
    """Read until a valid ``join``; returns the family member's chosen name, if any."""
    while True:
        raw = await _receive(ws, settings.join_timeout_seconds)
        try:
            msg = parse(raw, settings.ws_max_message_bytes)
        except BadMessage as error:
            outbox.put(message("error", code=error.code, message=error.message))
            continue
        if msg.type == "ping":
            outbox.put(message("pong"))
            continue
        if msg.type != "join":
            outbox.put(message("error", code="join-first", message="Send 'join' first."))
            continue
        name: str | None = msg.get("name")
        return name


async def serve(ws: WebSocket) -> None:
    """One participant's signaling connection, from accept to close."""
    app = state(ws)
    settings = app.settings
    directory: RoomDirectory = ws.app.state.rooms
    session_id = ws.path_params["session_id"]
    await ws.accept()
    outbox = Outbox(settings.ws_send_queue)
    writer = asyncio.create_task(_writer(ws, outbox, settings.ws_send_timeout_seconds))
    participant: Participant | None = None
    room: Room | None = None
    dropped = True
    try:
        name = await _await_join(ws, outbox, settings)
        async with app.db() as db:
            ticket = ws.query_params.get("ticket")
            viewer = (await viewer_from_ticket(ws, db, ticket, session_id) if ticket
                      else await current_viewer(ws, db))
            person: Person | None = await records.person_for(
                db, viewer, session_id, app.clock.now(), settings.join_early_minutes)
            facts = await records.load_facts(db, session_id, app.clock.now())
        if facts is not None and person is not None:
            room = directory.room_for(facts)
            participant = await room.join(person, outbox, facts, name)
        else:
            admission(person, facts, NO_ROOM, app.clock.now(), timedelta())  # raises
        while True:
            raw = await _receive(ws, settings.ws_idle_timeout_seconds)
            msg = None
            try:
                msg = parse(raw, settings.ws_max_message_bytes)
                if msg.type == "leave":
                    dropped = False
                    outbox.close(Dropped("left", "You left the session."))
                    break
                if msg.type == "join":
                    raise BadMessage("already-joined", "You have already joined.")
                assert room is not None and participant is not None
                await dispatch.handle(room, participant, msg)
            except (BadMessage, NotAllowed) as error:
                about = msg.type if msg is not None else None
                outbox.put(message("error", code=error.code, message=error.message, about=about))
    except Refusal as refusal:
        dropped = False
        outbox.put(message("refused", code=refusal.code, message=refusal.message))
        outbox.close(refusal)
    except TimeoutError:
        outbox.close(Dropped("idle-timeout", "No word from your browser for too long."))
    except WebSocketDisconnect:
        outbox.close(Dropped("left", "Connection closed."))
    except Exception:
        log.exception("signaling connection failed")
        outbox.close(Dropped("server-error", "Something went wrong on the server."))
    finally:
        if room is not None and participant is not None:
            await room.leave(participant, dropped=dropped)
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(writer, settings.ws_send_timeout_seconds)
        writer.cancel()
