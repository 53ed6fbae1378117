"""Who is asking to enter a room, and whether the people in it still belong: what a room asks
of the records about people (``vio.rooms.lookup`` answers from the database).

A connection brings only the id of its sign-in (found from the cookie or the room ticket by the
node it reached). ``arrival`` turns that id into the person, exactly as the records say now, with
the session's facts and the room's saved state: one code path for a WebSocket on the owner and
for one relayed from another node, so they cannot drift apart. ``standing`` is the re-check of
the people already in a room (``vio.rooms.standing``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vio.errors import Refusal
from vio.models import SessionKind
from vio.rooms.admission import Person, SessionFacts


@dataclass(frozen=True)
class Arrival:
    person: Person | None  # None: the sign-in names nobody (ended, lapsed, pending, unknown)
    facts: SessionFacts | None  # None: no such session
    saved: tuple[dict[str, Any], datetime] | None  # the room's durable state, if it was open


class People:
    """The lookups a room needs. This base knows nobody (rooms without a database)."""

    async def arrival(self, session_id: int, sign_in_id: int,
                      in_live_room: Callable[[int], bool]) -> Arrival:
        return Arrival(None, None, None)

    async def standing(self, kind: SessionKind,
                       people: Mapping[str, Person]) -> dict[str, Refusal]:
        """The connections (by participant id) whose person lost their place, and why."""
        return {}
