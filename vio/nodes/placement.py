"""Which node owns which room: leases and node records in Redis.

Every ``vio serve`` process with ``VIO_REDIS_URL`` set is a node. It keeps a record of itself
(``{prefix}:node:{id}``: its load, refreshed every ``node_heartbeat_seconds``, gone after
``node_ttl_seconds`` without a refresh) and owns each of its rooms through a lease
(``{prefix}:room:{session}``, the owner's id, set only if absent and renewed while the room
lives). Whoever sets the lease owns the room: two nodes racing for one room cannot both win.

Placement: a room nobody owns goes to the least-loaded live node (fewest participants, then
lowest CPU), which takes the lease when the first connection reaches it.

A node that dies stops renewing; its leases lapse after ``room_lease_seconds`` and the next join
opens the room on a live node, from the room's durable state. A node that stops (SIGTERM)
gives its leases back at once. When Redis is unreachable, rooms go on; renewals resume, and
lost leases are taken back, when it returns (a restarted Redis keeps nothing).
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

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# KEYS[1] = lease; ARGV[1] = owner, ARGV[2] = milliseconds. Renew only one's own lease.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] = lease; ARGV[1] = owner. Give back only one's own lease.
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
                 room_lease_seconds: float, node_heartbeat_seconds: float,
                 node_ttl_seconds: float, load: Callable[[], tuple[int, int]]) -> None:
        self.redis = client
        self.node_id = node_id
        self.prefix = prefix
        self.lease_ms = int(room_lease_seconds * 1000)
        self.heartbeat = node_heartbeat_seconds
        self.node_ttl_ms = int(node_ttl_seconds * 1000)
        self._load = load  # (rooms, participants) of this node
        self.owned: set[int] = set()
        self.reachable = True
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._task: asyncio.Task[None] | None = None
        self._cpu_mark = (time.monotonic(), time.process_time())

    def _room(self, session_id: int) -> str:
        return f"{self.prefix}:room:{session_id}"

    def _node(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}"

    # --- rooms ----------------------------------------------------------------------------

    async def owner(self, session_id: int) -> str | None:
        value = await self.redis.get(self._room(session_id))
        return value.decode() if isinstance(value, bytes) else value

    async def claim(self, session_id: int) -> bool:
        """Take the room's lease if nobody holds it; True if this node owns it now."""
        if session_id in self.owned:
            return True
        taken = await self.redis.set(self._room(session_id), self.node_id, nx=True,
                                     px=self.lease_ms)
        if taken:
            self.owned.add(session_id)
            return True
        return await self.owner(session_id) == self.node_id

    async def release(self, session_id: int) -> None:
        self.owned.discard(session_id)
        with contextlib.suppress(RedisError, OSError):
            await self._release(keys=[self._room(session_id)], args=[self.node_id])

    async def place(self, session_id: int) -> str:
        """The node that owns the room, or the one that should open it."""
        owner = await self.owner(session_id)
        if owner is not None and await self.alive(owner):
            return owner
        if owner is not None:  # its node is gone: the lease is only waiting to lapse
            await self.redis.delete(self._room(session_id))
        loads = await self.loads()
        return min(loads, key=NodeLoad.key).node if loads else self.node_id

    # --- nodes ------------------------------------------------------------------------------

    async def alive(self, node_id: str) -> bool:
        return bool(await self.redis.exists(self._node(node_id)))

    async def loads(self) -> list[NodeLoad]:
        loads = []
        async for key in self.redis.scan_iter(match=self._node("*")):
            fields = await self.redis.hgetall(key)
            if not fields:
                continue
            values = {_text(k): _text(v) for k, v in fields.items()}
            loads.append(NodeLoad(values["node"], int(values["rooms"]),
                                  int(values["participants"]), float(values["cpu"])))
        return loads

    def _cpu(self) -> float:
        wall, cpu = time.monotonic(), time.process_time()
        then_wall, then_cpu = self._cpu_mark
        self._cpu_mark = (wall, cpu)
        return (cpu - then_cpu) / max(wall - then_wall, 1e-6)

    async def report(self) -> None:
        """Refresh this node's record and its leases (taking back any that were lost)."""
        rooms, participants = self._load()
        key = self._node(self.node_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"node": self.node_id, "rooms": rooms,
                                    "participants": participants, "cpu": f"{self._cpu():.3f}"})
            pipe.pexpire(key, self.node_ttl_ms)
            await pipe.execute()
        for session_id in list(self.owned):
            renewed = await self._renew(keys=[self._room(session_id)],
                                        args=[self.node_id, self.lease_ms])
            if not renewed and not await self.redis.set(
                    self._room(session_id), self.node_id, nx=True, px=self.lease_ms):
                # Someone else holds it now (this node was cut off longer than a lease).
                log.error("room %s: lease lost to another node", session_id)
                self.owned.discard(session_id)

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
