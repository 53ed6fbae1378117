"""The rooms' questions about people (``vio.rooms.people``), answered from the database."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vio import identity
from vio.clock import Clock
from vio.errors import Refusal
from vio.models import SessionKind, SignInSession
from vio.rooms import records, standing
from vio.rooms.admission import Person
from vio.rooms.people import Arrival, People


class DatabasePeople(People):
    def __init__(self, db: async_sessionmaker[AsyncSession], clock: Clock,
                 rules: identity.SignInRules) -> None:
        self.db = db
        self.clock = clock
        self.rules = rules

    async def arrival(self, session_id: int, sign_in_id: int,
                      in_live_room: Callable[[int], bool]) -> Arrival:
        now = self.clock.now()
        async with self.db() as db:
            row = await identity.live_sign_in(db, await db.get(SignInSession, sign_in_id), now,
                                              self.rules, in_live_room)
            person = await records.person_for(db, await identity.viewer_for(db, row, now))
            facts = await records.load_facts(db, session_id, now)
            saved = await records.load_room_state(db, session_id)
        return Arrival(person, facts, saved)

    async def standing(self, kind: SessionKind,
                       people: Mapping[str, Person]) -> dict[str, Refusal]:
        async with self.db() as db:
            found = await standing.load(db, people.values(),
                                        frozenset(records.NEEDED_CONSENTS[kind]),
                                        self.clock.now())
        refused = {pid: standing.refusal_for(person, found) for pid, person in people.items()}
        return {pid: reason for pid, reason in refused.items() if reason is not None}
