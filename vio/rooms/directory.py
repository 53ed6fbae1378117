"""The live rooms of this process, one per session, opened on the first join."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from vio.clock import Clock
from vio.errors import Refusal
from vio.media import MediaRouter
from vio.rooms.admission import Person, SessionFacts
from vio.rooms.live import LiveRoom, RoomStore
from vio.rooms.room import Room
from vio.settings import Settings

PERSON_KEYS = ("patient_id", "staff_id", "family_invite_id", "family_member_id", "sign_in_id")


class RoomDirectory:
    def __init__(self, settings: Settings, clock: Clock, store: RoomStore,
                 media_factory: Callable[[], MediaRouter]) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store
        self.media_factory = media_factory
        self.rooms: dict[int, LiveRoom] = {}
        # With several nodes, removals go to every node's rooms through this (see vio.nodes).
        self.broadcast: Callable[[dict[str, Any]], None] | None = None

    def room_for(self, facts: SessionFacts,
                 saved: tuple[dict[str, Any], datetime] | None = None) -> LiveRoom:
        """The session's live room, opened now if it is not open (no ``await``: one per
        session), continuing from its ``saved`` durable state when there is one."""
        live = self.rooms.get(facts.session_id)
        if live is None or live.closed or live.room.ended:
            room = Room(facts, self.settings, self.clock)
            if saved is not None:
                room.restore(*saved)
            live = LiveRoom(room, self.media_factory(), self.store, on_closed=self._closed)
            self.rooms[facts.session_id] = live
            live.start()
        return live

    async def _closed(self, live: LiveRoom) -> None:
        if self.rooms.get(live.id) is live:
            del self.rooms[live.id]

    def remove_matching(self, which: Callable[[Person], bool], reason: Refusal,
                        keep_out: bool = True) -> int:
        """Take everyone matching ``which`` out of every live room at once (a revoked consent
        or link, a sign-out, a deactivated account); ``keep_out``: for the rest of the session."""
        return sum(live.remove_matching(which, reason, keep_out)
                   for live in list(self.rooms.values()))

    def remove_people(self, field: str, value: int, reason: Refusal,
                      keep_out: bool = True) -> int:
        """Take everyone whose ``Person.<field>`` is ``value`` out of the live rooms, on every
        node: a family member whose consent was revoked, a patient whose links were turned off,
        a staff member signed out. Returns how many were in this node's rooms."""
        assert field in PERSON_KEYS, field
        if self.broadcast is not None:
            self.broadcast({"op": "remove", "field": field, "value": value,
                            "code": reason.code, "text": reason.message, "keep_out": keep_out})
        return self.remove_matching(lambda person: getattr(person, field) == value, reason,
                                    keep_out)

    def remove_family_member(self, family_member_id: int, reason: Refusal) -> int:
        """Take a family member out of every live room at once (their consent was revoked)."""
        return self.remove_people("family_member_id", family_member_id, reason)

    async def close(self) -> None:
        for live in list(self.rooms.values()):
            await live.shutdown()
        self.rooms.clear()
