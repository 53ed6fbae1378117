"""This process as one node of several: rooms owned through Redis, connections relayed to them.

A signaling connection may land on any node. The node it lands on (the *edge*) finds which
sign-in the cookie or ticket belongs to, then asks ``Placement`` which node owns the session's
room. If that is itself, the room is local. Otherwise the edge relays: it publishes the join
(the session, the sign-in id and the chosen name, nothing else) and every later frame to the
owner's channel (``{prefix}:to:{node}``) and writes back to the WebSocket what the owner
publishes to the edge's channel. The owner looks the person up in the database from the sign-in
id, exactly as for a WebSocket of its own (``RoomDirectory.enter``): nothing that decides
admission comes from Redis. Media never takes this path: the owner's offer carries its own
candidates, so the browser connects to the owner directly.

Every message is sealed and checked (``vio.nodes.wire``): one that is unsigned, forged, stale,
replayed or malformed is dropped, counted and logged (its reason and channel, never its
content), and the listener goes on. A message also has to come from the right node: a frame
from the edge that opened the connection, a reply from the node it was relayed to.

On the owner a relayed connection is an ``Outbox`` like any other, so the room cannot tell
them apart. Each side watches the other: an owner drops the connections of an edge whose node
record lapsed, and an edge closes its clients with ``server-restart`` (they reconnect) when the
owner's record lapsed or it gave the room up. A node that loses a room's lease (or whose write
the database refused for an old epoch) stops its copy at once; its clients reconnect to the
new owner and keep their seats.

Removals reach every node as a ``recheck`` on ``{prefix}:events``: each node then re-checks its
rooms' people against the database. Each node also re-checks them when its subscription comes
back after Redis was away, so nothing missed meanwhile leaves a revoked person in a room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from vio.errors import Dropped, Refusal, VioError
from vio.nodes import wire
from vio.nodes.connection import redis_client
from vio.nodes.placement import Fences, Placement, new_node_id
from vio.rooms.directory import RoomDirectory
from vio.rooms.live import MOVED
from vio.rooms.outbox import CONNECTION_LOST, Outbox
from vio.settings import Settings

log = logging.getLogger(__name__)

SERVER_RESTART = Dropped("server-restart", "The server is moving this session; reconnecting.")
PLACEMENT_TRIES = 3  # a room claimed elsewhere meanwhile: look again this many times
LOGGED_REJECTIONS = 20  # of each reason, every one is logged; after that every thousandth


def _error_from_wire(kind: str, code: str, text: str) -> VioError:
    return Refusal(code, text) if kind == "refusal" else Dropped(code, text)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Node:
    """The cluster side of one ``vio serve`` process (only with ``VIO_REDIS_URL``)."""

    def __init__(self, settings: Settings, directory: RoomDirectory, fences: Fences,
                 node_id: str | None = None) -> None:
        assert settings.redis_url
        self.settings = settings
        self.directory = directory
        self.id = node_id or new_node_id()
        self.prefix = settings.redis_prefix
        self.redis = redis_client(settings)
        self.placement = Placement(
            self.redis, self.id, prefix=self.prefix,
            lease_seconds=settings.room_lease_seconds,
            heartbeat_seconds=settings.node_heartbeat_seconds,
            load=self._load, fences=fences, on_lost=self._lost)
        key = settings.keys.cluster
        self.outbound = wire.Outbound(key, self.id)
        self.inbound = wire.Inbound(
            key, max_age_ms=int(settings.cluster_message_max_age_seconds * 1000),
            max_frame_chars=settings.ws_frame_cap_bytes)
        self.rejected: Counter[tuple[str, str]] = Counter()  # (channel kind, reason) -> n
        self.draining = False
        # edge side: connection id -> (the client's outbox, the owner node)
        self.remote: dict[str, tuple[Outbox, str]] = {}
        # owner side: connection id -> (its outbox, the edge node, its inbox of frames)
        self.relayed: dict[str, tuple[Outbox, str, asyncio.Queue[dict[str, Any]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._rechecking: asyncio.Task[None] | None = None
        self._recheck_again = False
        directory.broadcast = lambda event: self._spawn(self.publish_event(event))
        directory.on_fenced = lambda session_id: self._spawn(
            self.placement.release(session_id))

    def _load(self) -> tuple[int, int]:
        rooms = self.directory.rooms.values()
        return len(rooms), sum(len(r.room.everyone()) for r in rooms)

    def _channel(self, node_id: str) -> str:
        return f"{self.prefix}:to:{node_id}"

    @property
    def _events(self) -> str:
        return f"{self.prefix}:events"

    # --- start and stop -----------------------------------------------------------------------

    def start(self) -> None:
        self.placement.start()
        self._listener = asyncio.create_task(self._listen(), name="node-listener")
        self._watcher = asyncio.create_task(self._watch(), name="node-watcher")

    def drain(self) -> None:
        """Stop taking rooms and give every lease back now (SIGTERM): others take over."""
        self.draining = True
        self._spawn(self.placement.stop())

    async def stop(self) -> None:
        self.draining = True
        for task in (self._listener, self._watcher, self._rechecking):
            if task is not None:
                task.cancel()
        for outbox, _, _ in list(self.relayed.values()):
            outbox.close(SERVER_RESTART)
        for outbox, _ in list(self.remote.values()):
            outbox.close(SERVER_RESTART)
        await self.placement.stop()
        await asyncio.gather(*(t for t in (self._listener, self._watcher, self._rechecking)
                               if t is not None), return_exceptions=True)
        if self._tasks:  # what is left of relayed connections and sends: a moment, then over
            _, late = await asyncio.wait(set(self._tasks),
                                         timeout=self.settings.ws_send_timeout_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.redis.aclose()

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except (RedisError, OSError) as error:
                log.warning("node %s: redis call failed: %s", self.id, type(error).__name__)
            except Exception:
                log.exception("node %s: background work failed", self.id)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, channel: str, body: dict[str, Any]) -> None:
        await self.redis.publish(channel, self.outbound.seal(channel, body, _now_ms()))

    async def _publish(self, node_id: str, body: dict[str, Any]) -> None:
        await self._send(self._channel(node_id), body)

    # --- where a connection goes ----------------------------------------------------------------

    async def owner_for(self, session_id: int) -> tuple[str, int | None]:
        """The node that owns the session's room now, claiming it here if it should be here;
        with this node, its epoch. Raises ``SERVER_RESTART`` when no node will take it now."""
        for _ in range(PLACEMENT_TRIES):
            if session_id in self.placement.owned:
                return self.id, self.placement.owned[session_id]
            target = await self.placement.place(session_id)
            if target != self.id:
                return target, None
            if not self.draining:
                epoch = await self.placement.claim(session_id)
                if epoch is not None:
                    return self.id, epoch
        owner = await self.placement.owner(session_id)
        if owner is None or owner == self.id:
            raise SERVER_RESTART
        return owner, None

    def _lost(self, session_id: int) -> None:
        """This node's lease on the room went to another: stop the copy here now."""
        self.directory.give_up(session_id, MOVED)

    # --- edge side ------------------------------------------------------------------------------

    async def relay(self, owner: str, session_id: int, sign_in_id: int, name: str | None,
                    outbox: Outbox, receive: Callable[[], Awaitable[str | bytes]]) -> None:
        """Carry one client's connection to the room on ``owner`` until it ends."""
        conn = f"{self.id}/{secrets.token_hex(8)}"
        self.remote[conn] = (outbox, owner)
        try:
            await self._publish(owner, {"op": "open", "conn": conn, "edge": self.id,
                                        "session": session_id, "sign_in": sign_in_id,
                                        "name": name})
            while outbox.alive:
                raw = await receive()
                text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
                await self._publish(owner, {"op": "frame", "conn": conn, "raw": text,
                                            "binary": isinstance(raw, bytes)})
        finally:
            self.remote.pop(conn, None)
            with contextlib.suppress(RedisError, OSError):
                await self._publish(owner, {"op": "close", "conn": conn})

    def _to_edge_client(self, sender: str, body: dict[str, Any]) -> bool:
        entry = self.remote.get(body["conn"])
        if entry is None or entry[1] != sender:
            return entry is None  # gone already; from another node than its owner: refused
        outbox, _ = entry
        if body["op"] == "send":
            outbox.put(body["message"])
        else:  # closed by the owner
            outbox.close(_error_from_wire(body["kind"], body["code"], body["text"]))
        return True

    # --- owner side -----------------------------------------------------------------------------

    def _from_edge(self, sender: str, body: dict[str, Any]) -> bool:
        conn = body["conn"]
        if body["op"] == "open":
            if body["edge"] != sender or not conn.startswith(f"{sender}/") \
                    or conn in self.relayed:
                return False
            outbox = Outbox(self.settings.ws_send_queue)
            inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            # However the connection ends here, its reader below stops waiting for frames.
            outbox.on_close(lambda reason: inbox.put_nowait({"op": "close", "conn": conn}))
            self.relayed[conn] = (outbox, sender, inbox)
            self._spawn(self._serve_relayed(conn, body, outbox, inbox))
            return True
        entry = self.relayed.get(conn)
        if entry is None:
            return True  # over already
        if entry[1] != sender:
            return False
        entry[2].put_nowait(body)
        return True

    async def _serve_relayed(self, conn: str, opened: dict[str, Any], outbox: Outbox,
                             inbox: asyncio.Queue[dict[str, Any]]) -> None:
        """A relayed connection on the owner: enter (the person looked up here from the
        sign-in), then each frame, as the WebSocket does."""
        edge = opened["edge"]
        writer = asyncio.create_task(self._write_to_edge(conn, edge, outbox))
        try:
            session_id = opened["session"]
            epoch = None if self.draining else await self.placement.claim(session_id)
            if epoch is None:
                raise SERVER_RESTART
            live, participant = await self.directory.enter(
                session_id, opened["sign_in"], outbox, opened["name"], epoch)
            while outbox.alive:
                frame = await inbox.get()
                if frame["op"] == "close":
                    outbox.close(CONNECTION_LOST)
                    break
                live.receive(participant, frame["raw"].encode() if frame["binary"]
                             else frame["raw"], self.settings.ws_max_message_bytes)
        except Refusal as refused:
            outbox.refuse(refused)
        except Dropped as dropped:
            outbox.close(dropped)
        finally:
            outbox.close(CONNECTION_LOST)
            self.relayed.pop(conn, None)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(writer, self.settings.ws_send_timeout_seconds)

    async def _write_to_edge(self, conn: str, edge: str, outbox: Outbox) -> None:
        """What the room sends a relayed connection, published to its edge; if that fails
        (Redis gone), the connection leaves the room now rather than linger unheard."""
        try:
            while True:
                item = await outbox.get()
                if isinstance(item, VioError):
                    kind = "refusal" if isinstance(item, Refusal) else "dropped"
                    await self._publish(edge, {"op": "closed", "conn": conn, "kind": kind,
                                               "code": item.code, "text": item.message})
                    return
                await self._publish(edge, {"op": "send", "conn": conn, "message": item})
        except (RedisError, OSError):
            outbox.close(CONNECTION_LOST)

    # --- cross-node events ----------------------------------------------------------------------

    async def publish_event(self, event: dict[str, Any]) -> None:
        """Send an event to every node."""
        await self._send(self._events, event)

    def request_recheck(self) -> None:
        """Re-check every room's people here; requests while one runs make one more run."""
        if self._rechecking is not None and not self._rechecking.done():
            self._recheck_again = True
            return
        self._rechecking = asyncio.create_task(self._recheck(), name="node-recheck")

    async def _recheck(self) -> None:
        while True:
            self._recheck_again = False
            try:
                await self.directory.recheck_all()
            except Exception:
                log.exception("node %s: re-checking the rooms' people failed", self.id)
            if not self._recheck_again:
                return

    # --- listening and watching -----------------------------------------------------------------

    def _reject(self, channel: wire.Channel, reason: str) -> None:
        self.rejected[channel.value, reason] += 1
        count = self.rejected[channel.value, reason]
        if count <= LOGGED_REJECTIONS or count % 1000 == 0:
            log.warning("node %s: dropped a message on the %s channel: %s (%d so far)",
                        self.id, channel.value, reason, count)

    def _take(self, item: dict[str, Any]) -> None:
        """One published message: checked, then acted on; anything wrong with it is dropped."""
        raw_channel = item.get("channel")
        channel = raw_channel.decode() if isinstance(raw_channel, bytes) else str(raw_channel)
        kind = wire.Channel.EVENTS if channel == self._events else wire.Channel.NODE
        data = item.get("data")
        try:
            if not isinstance(data, bytes):
                raise wire.Rejected(wire.Reason.MALFORMED)
            message = self.inbound.open(channel, kind, data, _now_ms())
        except wire.Rejected as rejected:
            self._reject(kind, rejected.reason.value)
            return
        body, sender = message.body, message.sender
        if kind is wire.Channel.EVENTS:
            if sender != self.id:  # the sender re-checked its own rooms already
                self.request_recheck()
            return
        taken = (self._to_edge_client(sender, body) if body["op"] in ("send", "closed")
                 else self._from_edge(sender, body))
        if not taken:
            self._reject(kind, "wrong-node")

    async def _listen(self) -> None:
        """Take what other nodes publish to this one; resubscribe after Redis comes back, and
        then re-check the rooms' people (removals may have been missed meanwhile)."""
        missed = False
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel(self.id), self._events)
                    if missed:
                        log.warning("node %s: subscribed again; re-checking the rooms' people",
                                    self.id)
                        self.request_recheck()
                        missed = False
                    async for item in pubsub.listen():
                        if item.get("type") == "message":
                            try:
                                self._take(item)
                            except Exception:
                                log.exception("node %s: a cluster message failed", self.id)
            except Exception as error:  # RedisError, OSError, or anything else: go on
                log.warning("node %s: lost its redis subscription (%s)", self.id,
                            type(error).__name__)
                missed = True
                # Relayed connections cannot work without it: their clients reconnect.
                for outbox, _ in list(self.remote.values()):
                    outbox.close(SERVER_RESTART)
                for outbox, _, _ in list(self.relayed.values()):
                    outbox.close(CONNECTION_LOST)
                await asyncio.sleep(self.settings.node_heartbeat_seconds)

    async def _watch(self) -> None:
        """Close relayed connections whose other end is gone; give back the leases of rooms
        not open here (a join that was refused, a room that ended) at two looks in a row."""
        unused: set[int] = set()
        while True:
            await asyncio.sleep(self.settings.node_heartbeat_seconds)
            idle = set(self.placement.owned) - set(self.directory.rooms)
            for session_id in idle & unused:
                self._spawn(self.placement.release(session_id))
            unused = idle - unused
            try:
                edges = {edge for _, edge, _ in self.relayed.values()}
                owners = {owner for _, owner in self.remote.values()}
                gone = {n for n in edges | owners if not await self.placement.alive(n)}
                for outbox, edge, _ in list(self.relayed.values()):
                    if edge in gone:
                        outbox.close(CONNECTION_LOST)
                for outbox, owner in list(self.remote.values()):
                    if owner in gone:
                        outbox.close(SERVER_RESTART)
            except (RedisError, OSError):
                continue
