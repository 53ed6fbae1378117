"""Room epochs in the database: the fencing tokens of the room leases (``vio.nodes.placement``).

``room_fences`` keeps, for each session whose room a node ever took, the epoch of the latest
lease on it. ``mint`` raises it by one in a single statement and returns it; it only grows, and
it outlives Redis. A live room's durable writes (its attendance events and its saved state)
carry its epoch, and the database refuses a write whose epoch is below the session's current
one (the triggers of migration 0012, which also lock the fence row so a take-over waits for a
write in flight): a node that lost its room cannot change the record, even before it notices.
Writes without an epoch (one process, no Redis) are not fenced. ``check`` does the same inside a
transaction for the room's other writes (status, extension). A take-over waits for a write in
flight at most ``lock_timeout`` (on PostgreSQL): a node paused in the middle of one cannot hold
its room's successor back; the join that asked fails and its client reconnects.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from vio.clock import Clock
from vio.models import Base

STALE = "vio: stale room epoch"  # what the database says when it refuses a write


class StaleEpoch(Exception):
    """The database refused a room's write: the room has a newer epoch on another node."""


class RoomFence(Base):
    __tablename__ = "room_fences"

    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger)
    node: Mapped[str] = mapped_column(String(120))
    taken_at: Mapped[datetime]


def is_stale(error: BaseException) -> bool:
    return isinstance(error, DBAPIError) and STALE in str(error.orig)


async def mint(db: AsyncSession, session_id: int, node_id: str, now: datetime,
               lock_timeout_seconds: float | None = None) -> int:
    """The session's next epoch, taken by ``node_id`` (committed)."""
    postgres = db.get_bind().dialect.name == "postgresql"
    if postgres and lock_timeout_seconds is not None:
        await db.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_seconds * 1000)}"))
    dialect = postgresql if postgres else sqlite
    values = {"session_id": session_id, "epoch": 1, "node": node_id, "taken_at": now}
    insert = dialect.insert(RoomFence).values(**values)
    statement = insert.on_conflict_do_update(
        index_elements=[RoomFence.session_id],
        set_={"epoch": RoomFence.epoch + 1, "node": node_id, "taken_at": insert.excluded.taken_at},
    ).returning(RoomFence.epoch)
    epoch = (await db.execute(statement)).scalar_one()
    await db.commit()
    return int(epoch)


async def current(db: AsyncSession, session_id: int) -> int | None:
    return (await db.execute(select(RoomFence.epoch).where(
        RoomFence.session_id == session_id))).scalar_one_or_none()


async def check(db: AsyncSession, session_id: int, epoch: int | None) -> None:
    """Within the caller's transaction: raise ``StaleEpoch`` if ``epoch`` is behind (the fence
    row stays locked until the transaction ends, so no take-over slips in between)."""
    if epoch is None:
        return
    found = (await db.execute(select(RoomFence.epoch).where(
        RoomFence.session_id == session_id).with_for_update(read=True))).scalar_one_or_none()
    if found is not None and epoch < found:
        raise StaleEpoch(f"room {session_id}: epoch {epoch} is behind {found}")


class DatabaseFences:
    """``vio.nodes.placement.Fences`` on the shared database."""

    def __init__(self, db: async_sessionmaker[AsyncSession], clock: Clock,
                 lock_timeout_seconds: float | None = None) -> None:
        self.db = db
        self.clock = clock
        self.lock_timeout_seconds = lock_timeout_seconds

    async def mint(self, session_id: int, node_id: str) -> int:
        async with self.db() as db:
            return await mint(db, session_id, node_id, self.clock.now(),
                              self.lock_timeout_seconds)

    async def current(self, session_id: int) -> int | None:
        async with self.db() as db:
            return await current(db, session_id)
