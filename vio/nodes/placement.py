"""Which node owns which room: leases with epochs, and node records, in Redis.

Every ``vio serve`` process with ``VIO_REDIS_URL`` set is a node. It keeps a record of itself
(``{prefix}:node:{id}``: its load) and owns each of its rooms through a lease
(``{prefix}:room:{session}``, whose value is the owner's id and the lease's *epoch*). Both are
refreshed every heartbeat and lapse after one and the same timeout (``lease_seconds``): a node
whose record is gone holds no live lease.

Taking a room is one Lua script (``_TAKE``): the lease is set when nobody holds it or when its
holder's record has lapsed, never otherwise, so two nodes racing cannot both win. The winner
then has the database mint the room's next epoch (``Fences.mint``: a counter that only grows,
kept in the database, which outlives Redis) and stamps it on the lease. The epoch is a fencing
token: the room's durable writes carry it, and the database refuses those of an older epoch.

Renewing compares the whole value (id and epoch). A node that finds its lease overtaken stops
the room at once (``on_lost``). A lease that vanished (Redis restarted empty, or this node was
cut off longer than a lease and nobody took the room meanwhile) is taken back only if the
database's epoch is still this node's; otherwise the room is lost too.

Placement: a room nobody owns goes to the least-loaded live node (fewest participants, then
lowest CPU), which takes the lease when the first connection reaches it. A node that stops
(SIGTERM) gives its leases back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PENDING = 0  # the epoch of a lease taken but not yet stamped

# KEYS[1] = lease; ARGV[1] = node, ARGV[2] = milliseconds, ARGV[3] = prefix of node records.
# Take the lease if it is free or its holder's record has lapsed; the lease's value after.
_TAKE = """
local current = redis.call('get', KEYS[1])
if current then
  local holder = string.match(current, '^(%S+) ')
  if holder == ARGV[1] then return current end
  if holder and redis.call('exists', ARGV[3] .. holder) == 1 then return false end
end
local taken = ARGV[1] .. ' 0'
redis.call('set', KEYS[1], taken, 'PX', ARGV[2])
return taken
"""
# KEYS[1] = lease; ARGV[1] = expected value, ARGV[2] = new value. Compare and set.
_STAMP = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""
# KEYS[1] = lease; ARGV[1] = value, ARGV[2] = milliseconds. 1 renewed, 2 gone, 0 someone else's.
_RENEW = """
local current = redis.call('get', KEYS[1])
if current == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if not current then return 2 end
return 0
"""
# KEYS[1] = lease; ARGV[1] = value. Give back only one's own lease.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def new_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def lease_value(node_id: str, epoch: int) -> str:
    return f"{node_id} {epoch}"


def parse_lease(value: bytes | str | None) -> tuple[str, int] | None:
    """(node, epoch) of a lease's value, or None for no lease (or one vio did not write)."""
    if value is None:
        return None
    node, _, epoch = _text(value).rpartition(" ")
    return (node, int(epoch)) if node and epoch.isdigit() else None


class Fences(Protocol):
    """The rooms' epochs, kept in the database (``vio.rooms.fences``)."""

    async def mint(self, session_id: int, node_id: str) -> int: ...

    async def current(self, session_id: int) -> int | None: ...


@dataclass(frozen=True)
class NodeLoad:
    node: str
    rooms: int
    participants: int
    cpu: float  # share of one core used since the last report

    def key(self) -> tuple[int, float, str]:
        return (self.participants, self.cpu, self.node)


class Placement:
    """This node's view of the cluster: its leases, its record, and the other nodes'."""

    def __init__(self, client: aioredis.Redis, node_id: str, *, prefix: str,
                 lease_seconds: float, heartbeat_seconds: float,
                 load: Callable[[], tuple[int, int]], fences: Fences,
                 on_lost: Callable[[int], None] = lambda session_id: None) -> None:
        self.redis = client
        self.node_id = node_id
        self.prefix = prefix
        self.lease_ms = int(lease_seconds * 1000)
        self.heartbeat = heartbeat_seconds
        self._load = load  # (rooms, participants) of this node
        self.fences = fences
        self.on_lost = on_lost
        self.owned: dict[int, int] = {}  # session -> epoch
        self.reachable = True
        self._take = client.register_script(_TAKE)
        self._stamp = client.register_script(_STAMP)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._claiming: dict[int, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        self._cpu_mark = (time.monotonic(), time.process_time())

    def _room(self, session_id: int) -> str:
        return f"{self.prefix}:room:{session_id}"

    def _node(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}"

    # --- rooms ----------------------------------------------------------------------------

    async def lease(self, session_id: int) -> tuple[str, int] | None:
        return parse_lease(await self.redis.get(self._room(session_id)))

    async def owner(self, session_id: int) -> str | None:
        lease = await self.lease(session_id)
        return None if lease is None else lease[0]

    async def claim(self, session_id: int) -> int | None:
        """This node's epoch for the room, taking the lease (and minting an epoch) if nobody
        live holds it; None when another node does."""
        if session_id in self.owned:
            return self.owned[session_id]
        lock = self._claiming.setdefault(session_id, asyncio.Lock())
        try:
            async with lock:
                if session_id in self.owned:
                    return self.owned[session_id]
                held = parse_lease(await self._take(
                    keys=[self._room(session_id)],
                    args=[self.node_id, self.lease_ms, self._node("")]))
                if held is None:
                    return None
                epoch = await self.fences.mint(session_id, self.node_id)
                stamped = await self._stamp(keys=[self._room(session_id)],
                                            args=[lease_value(*held),
                                                  lease_value(self.node_id, epoch)])
                if not stamped:
                    return None
                self.owned[session_id] = epoch
                return epoch
        finally:
            if not lock.locked():
                self._claiming.pop(session_id, None)

    async def release(self, session_id: int) -> None:
        epoch = self.owned.pop(session_id, None)
        if epoch is None:
            return
        with contextlib.suppress(RedisError, OSError):
            await self._release(keys=[self._room(session_id)],
                                args=[lease_value(self.node_id, epoch)])

    async def place(self, session_id: int) -> str:
        """The node that owns the room, or the one that should open it."""
        owner = await self.owner(session_id)
        if owner is not None and await self.alive(owner):
            return owner
        loads = await self.loads()
        return min(loads, key=NodeLoad.key).node if loads else self.node_id

    # --- nodes ------------------------------------------------------------------------------

    async def alive(self, node_id: str) -> bool:
        return bool(await self.redis.exists(self._node(node_id)))

    async def loads(self) -> list[NodeLoad]:
        loads = []
        async for key in self.redis.scan_iter(match=self._node("*")):
            fields = await self.redis.hgetall(key)
            try:
                values = {_text(k): _text(v) for k, v in fields.items()}
                loads.append(NodeLoad(values["node"], int(values["rooms"]),
                                      int(values["participants"]), float(values["cpu"])))
            except (KeyError, ValueError):
                continue  # not a record vio wrote
        return loads

    def _cpu(self) -> float:
        wall, cpu = time.monotonic(), time.process_time()
        then_wall, then_cpu = self._cpu_mark
        self._cpu_mark = (wall, cpu)
        return (cpu - then_cpu) / max(wall - then_wall, 1e-6)

    async def report(self) -> None:
        """Refresh this node's record and its leases; take back a lease that vanished while
        the database says the room is still this node's; give up any other."""
        rooms, participants = self._load()
        key = self._node(self.node_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"node": self.node_id, "rooms": rooms,
                                    "participants": participants, "cpu": f"{self._cpu():.3f}"})
            pipe.pexpire(key, self.lease_ms)
            await pipe.execute()
        for session_id, epoch in list(self.owned.items()):
            value = lease_value(self.node_id, epoch)
            renewed = await self._renew(keys=[self._room(session_id)],
                                        args=[value, self.lease_ms])
            if renewed == 1:
                continue
            if renewed == 2 and await self.redis.set(self._room(session_id), value, nx=True,
                                                     px=self.lease_ms):
                if await self.fences.current(session_id) == epoch:
                    continue
                await self._release(keys=[self._room(session_id)], args=[value])
            if self.owned.get(session_id) == epoch:
                self._lost(session_id)

    def _lost(self, session_id: int) -> None:
        epoch = self.owned.pop(session_id, None)
        log.error("room %s: lease at epoch %s lost to another node; stopping it here",
                  session_id, epoch)
        self.on_lost(session_id)

    async def _run(self) -> None:
        while True:
            try:
                await self.report()
                if not self.reachable:
                    log.warning("redis reachable again; leases and node record restored")
                self.reachable = True
            except (RedisError, OSError) as error:
                if self.reachable:
                    log.warning("redis unreachable (%s); rooms go on", type(error).__name__)
                self.reachable = False
            except Exception:
                log.exception("node %s: a heartbeat failed", self.node_id)
            await asyncio.sleep(self.heartbeat)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="node-placement")

    async def stop(self) -> None:
        """Give back every lease and the node record (a drain before the process ends)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for session_id in list(self.owned):
            await self.release(session_id)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self._node(self.node_id))
