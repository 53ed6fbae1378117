"""This process as one node of several: rooms owned through Redis, connections relayed to them.

A signaling connection may land on any node. The node it lands on (the *edge*) finds who the
person is from the cookie or ticket, then asks ``Placement`` which node owns the session's room.
If that is itself, the room is local. Otherwise the edge relays: it publishes the join and every
later frame to the owner's channel (``{prefix}:to:{node}``) and writes back to the WebSocket
what the owner publishes to the edge's channel. Media never takes this path: the owner's offer
carries its own candidates, so the browser connects to the owner directly.

On the owner a relayed connection is an ``Outbox`` like any other, so the room cannot tell
them apart. Each side watches the other: an owner drops the connections of an edge whose node
record lapsed, and an edge closes its clients with ``server-restart`` (they reconnect) when the
owner's record lapsed or it gave the room up.

Events that must reach a room wherever it lives (a revoked consent, a sign-out, a session ended
by staff) go on ``{prefix}:events``; every node applies them to its own rooms.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from vio.errors import Dropped, Refusal, VioError, refusal
from vio.nodes.placement import Placement, new_node_id
from vio.rooms.admission import Person, Role, SessionFacts
from vio.rooms.directory import RoomDirectory
from vio.rooms.outbox import CONNECTION_LOST, Outbox
from vio.settings import Settings

log = logging.getLogger(__name__)

SERVER_RESTART = Dropped("server-restart", "The server is moving this session; reconnecting.")
PLACEMENT_TRIES = 3  # a room claimed elsewhere meanwhile: look again this many times

# (facts, saved state) of a session, from the shared database
FactsLoader = Callable[[int], Awaitable[tuple[SessionFacts | None, Any]]]


def person_to_wire(person: Person) -> dict[str, Any]:
    return dataclasses.asdict(person)


def person_from_wire(data: dict[str, Any]) -> Person:
    return Person(**{**data, "role": Role(data["role"])})


def _error_from_wire(kind: str, code: str, text: str) -> VioError:
    return Refusal(code, text) if kind == "refusal" else Dropped(code, text)


class Node:
    """The cluster side of one ``vio serve`` process (only with ``VIO_REDIS_URL``)."""

    def __init__(self, settings: Settings, directory: RoomDirectory,
                 load_facts: FactsLoader, node_id: str | None = None) -> None:
        assert settings.redis_url
        self.settings = settings
        self.directory = directory
        self.load_facts = load_facts
        self.id = node_id or new_node_id()
        self.prefix = settings.redis_prefix
        self.redis = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds)
        self.placement = Placement(
            self.redis, self.id, prefix=self.prefix,
            room_lease_seconds=settings.room_lease_seconds,
            node_heartbeat_seconds=settings.node_heartbeat_seconds,
            node_ttl_seconds=settings.node_heartbeat_seconds * 3,
            load=self._load)
        self.draining = False
        # edge side: connection id -> (the client's outbox, the owner node)
        self.remote: dict[str, tuple[Outbox, str]] = {}
        # owner side: connection id -> (its outbox, the edge node, its inbox of frames)
        self.relayed: dict[str, tuple[Outbox, str, asyncio.Queue[dict[str, Any]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.event_handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "remove": self._remove}
        directory.broadcast = lambda event: self._spawn(self.publish_event(
            {**event, "from": self.id}))

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
        for task in (self._listener, self._watcher):
            if task is not None:
                task.cancel()
        for outbox, _, _ in list(self.relayed.values()):
            outbox.close(SERVER_RESTART)
        for outbox, _ in list(self.remote.values()):
            outbox.close(SERVER_RESTART)
        await self.placement.stop()
        await asyncio.gather(*(t for t in (self._listener, self._watcher) if t is not None),
                             *self._tasks, return_exceptions=True)
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

    async def _publish(self, node_id: str, payload: dict[str, Any]) -> None:
        await self.redis.publish(self._channel(node_id), json.dumps(payload))

    # --- where a connection goes ----------------------------------------------------------------

    async def owner_for(self, session_id: int) -> str:
        """The node that owns the session's room now, claiming it here if it should be here."""
        for _ in range(PLACEMENT_TRIES):
            if session_id in self.placement.owned and session_id in self.directory.rooms:
                return self.id
            target = await self.placement.place(session_id)
            if target != self.id:
                return target
            if not self.draining and await self.placement.claim(session_id):
                return self.id
        owner = await self.placement.owner(session_id)
        return owner or self.id

    # --- edge side ------------------------------------------------------------------------------

    async def relay(self, owner: str, session_id: int, person: Person, name: str | None,
                    outbox: Outbox, receive: Callable[[], Awaitable[str | bytes]]) -> None:
        """Carry one client's connection to the room on ``owner`` until it ends."""
        conn = f"{self.id}/{secrets.token_hex(8)}"
        self.remote[conn] = (outbox, owner)
        try:
            await self._publish(owner, {"op": "open", "conn": conn, "edge": self.id,
                                        "session": session_id, "name": name,
                                        "person": person_to_wire(person)})
            while outbox.alive:
                raw = await receive()
                text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
                await self._publish(owner, {"op": "frame", "conn": conn, "raw": text,
                                            "binary": isinstance(raw, bytes)})
        finally:
            self.remote.pop(conn, None)
            with contextlib.suppress(RedisError, OSError):
                await self._publish(owner, {"op": "close", "conn": conn})

    def _to_edge_client(self, payload: dict[str, Any]) -> None:
        entry = self.remote.get(payload["conn"])
        if entry is None:
            return
        outbox, _ = entry
        if payload["op"] == "send":
            outbox.put(payload["message"])
        else:  # closed by the owner
            outbox.close(_error_from_wire(payload["kind"], payload["code"], payload["text"]))

    # --- owner side -----------------------------------------------------------------------------

    def _from_edge(self, payload: dict[str, Any]) -> None:
        conn = payload["conn"]
        if payload["op"] == "open":
            outbox = Outbox(self.settings.ws_send_queue)
            inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            self.relayed[conn] = (outbox, payload["edge"], inbox)
            self._spawn(self._serve_relayed(conn, payload, outbox, inbox))
            return
        entry = self.relayed.get(conn)
        if entry is not None:
            entry[2].put_nowait(payload)

    async def _serve_relayed(self, conn: str, opened: dict[str, Any], outbox: Outbox,
                             inbox: asyncio.Queue[dict[str, Any]]) -> None:
        """A relayed connection on the owner: join, then each frame, as the WebSocket does."""
        edge = opened["edge"]
        writer = asyncio.create_task(self._write_to_edge(conn, edge, outbox))
        try:
            session_id = int(opened["session"])
            if self.draining or not await self.placement.claim(session_id):
                raise SERVER_RESTART
            facts, saved = await self.load_facts(session_id)
            person = person_from_wire(opened["person"])
            if facts is None:
                raise refusal("no-such-session")
            live = self.directory.room_for(facts, saved if session_id not in
                                           self.directory.rooms else None)
            participant = live.join(person, outbox, facts, opened.get("name"))
            while outbox.alive:
                payload = await inbox.get()
                if payload["op"] == "close":
                    outbox.close(CONNECTION_LOST)
                    break
                live.receive(participant, payload["raw"].encode() if payload.get("binary")
                             else payload["raw"], self.settings.ws_max_message_bytes)
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
        """Send an event to every node (this one included)."""
        await self.redis.publish(self._events, json.dumps(event))

    def _remove(self, event: dict[str, Any]) -> None:
        if event.get("from") == self.id:
            return  # already done here when it was sent
        field, value = event["field"], event["value"]
        self.directory.remove_matching(lambda person: getattr(person, field) == value,
                                       Refusal(event["code"], event["text"]),
                                       bool(event["keep_out"]))

    def _event(self, event: dict[str, Any]) -> None:
        handler = self.event_handlers.get(event.get("op", ""))
        if handler is not None:
            handler(event)

    # --- listening and watching -----------------------------------------------------------------

    async def _listen(self) -> None:
        """Take what other nodes publish to this one; resubscribe after Redis comes back."""
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel(self.id), self._events)
                    async for item in pubsub.listen():
                        if item.get("type") != "message":
                            continue
                        payload = json.loads(item["data"])
                        channel = item["channel"].decode()
                        if channel == self._events:
                            self._event(payload)
                        elif payload["op"] in ("send", "closed"):
                            self._to_edge_client(payload)
                        else:
                            self._from_edge(payload)
            except (RedisError, OSError) as error:
                log.warning("node %s: lost its redis subscription (%s)", self.id,
                            type(error).__name__)
                # Relayed connections cannot work without it: their clients reconnect.
                for outbox, _ in list(self.remote.values()):
                    outbox.close(SERVER_RESTART)
                for outbox, _, _ in list(self.relayed.values()):
                    outbox.close(CONNECTION_LOST)
                await asyncio.sleep(self.settings.node_heartbeat_seconds)

    async def _watch(self) -> None:
        """Close relayed connections whose other end is gone."""
        while True:
            await asyncio.sleep(self.settings.node_heartbeat_seconds)
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
