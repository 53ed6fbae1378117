"""The live rooms of this process, one per session, opened on the first join.

``enter`` is the one way into a room, for a WebSocket on this node and for one relayed from
another: the connection brings only its sign-in id, and the person and the session's facts are
looked up in the database (``vio.rooms.people``). With several nodes a room also carries the
epoch of this node's lease on it (``vio.nodes.placement``); a room of an older epoch is never
joined, and a room whose lease is lost or whose write the database refused is given up at once.

Removals are re-checks: after a change that takes someone's place away (a sign-out, a revoked
link, invite or consent, an account turned off) the pages call ``recheck_everywhere``, which
re-checks the rooms here and asks every other node to do the same (``broadcast``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from vio.clock import Clock
from vio.errors import Dropped
from vio.media import MediaRouter
from vio.rooms.admission import EMPTY_ROOM, SessionFacts, admission
from vio.rooms.live import MOVED, LiveRoom, RoomStore
from vio.rooms.outbox import Outbox
from vio.rooms.people import People
from vio.rooms.room import Participant, Room
from vio.settings import Settings


class RoomDirectory:
    def __init__(self, settings: Settings, clock: Clock, store: RoomStore,
                 media_factory: Callable[[], MediaRouter], people: People | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store
        self.media_factory = media_factory
        self.people = people or People()
        self.rooms: dict[int, LiveRoom] = {}
        # With several nodes: tells every node's rooms to re-check (see vio.nodes).
        self.broadcast: Callable[[dict[str, Any]], None] | None = None
        # With several nodes: a room here was refused by the database (its lease is stale).
        self.on_fenced: Callable[[int], None] | None = None

    def holds_sign_in(self, sign_in_id: int) -> bool:
        """Whether a sign-in holds a connection to a live room of this process right now."""
        return any(p.person.sign_in_id == sign_in_id
                   for live in list(self.rooms.values()) for p in live.room.everyone())

    async def enter(self, session_id: int, sign_in_id: int, outbox: Outbox,
                    name: str | None = None,
                    epoch: int | None = None) -> tuple[LiveRoom, Participant]:
        """Look the person up by their sign-in and seat them in the session's room (opened
        here at ``epoch`` if it is not open), or raise ``Refusal``."""
        arrival = await self.people.arrival(session_id, sign_in_id, self.holds_sign_in)
        person, facts = arrival.person, arrival.facts
        if person is None or facts is None:
            admission(person, facts, EMPTY_ROOM, self.clock.now(), timedelta())  # raises
            raise AssertionError("admission let nobody in")
        live = self.room_for(facts, arrival.saved, epoch)
        return live, live.join(person, outbox, facts, name)

    def room_for(self, facts: SessionFacts,
                 saved: tuple[dict[str, Any], datetime] | None = None,
                 epoch: int | None = None) -> LiveRoom:
        """The session's live room at ``epoch``, opened now if it is not open (no ``await``:
        one per session), continuing from its ``saved`` durable state when there is one."""
        live = self.rooms.get(facts.session_id)
        if live is not None and not live.closed and live.epoch != epoch:
            self.give_up(facts.session_id, MOVED)  # a copy of an older lease
            live = None
        if live is None or live.closed or live.room.ended or live.fenced:
            room = Room(facts, self.settings, self.clock)
            if saved is not None:
                room.restore(*saved)
            live = LiveRoom(room, self.media_factory(), self.store, on_closed=self._closed,
                            people=self.people, epoch=epoch, on_fenced=self._fenced)
            self.rooms[facts.session_id] = live
            live.start()
        return live

    async def _closed(self, live: LiveRoom) -> None:
        if self.rooms.get(live.id) is live:
            del self.rooms[live.id]

    def _fenced(self, live: LiveRoom) -> None:
        if self.rooms.get(live.id) is live:
            del self.rooms[live.id]
        if self.on_fenced is not None:
            self.on_fenced(live.id)

    def give_up(self, session_id: int, reason: Dropped) -> None:
        """Stop this node's copy of the room now (its lease went to another node): everyone
        reconnects, and lands where the room lives now."""
        live = self.rooms.pop(session_id, None)
        if live is not None:
            live.stop(reason)

    async def recheck_all(self) -> int:
        """Re-check the people of every room here against the records; how many were removed."""
        removed = 0
        for live in list(self.rooms.values()):
            removed += await live.recheck()
        return removed

    async def recheck_everywhere(self) -> int:
        """Someone's place changed in the records: every room on every node re-checks its
        people now. Returns how many left this node's rooms."""
        if self.broadcast is not None:
            self.broadcast({"op": "recheck"})
        return await self.recheck_all()

    async def close(self) -> None:
        for live in list(self.rooms.values()):
            await live.shutdown()
        self.rooms.clear()
