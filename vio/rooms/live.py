"""A live room: the ``Room`` state machine, and one runner that carries out its effects in order.

Connections and the room's clock call ``LiveRoom`` methods, which make a transition (no
``await``) and queue its effects. One task takes the queued effects in order: database writes
through the ``RoomStore`` (committed before the sends that acknowledge them), sends to the
connections' outboxes, and the media router. An effect that fails is logged and reported,
never retried blindly, and never leaves the state half-changed:

* a ``Record`` that fails skips the acknowledgements after it in its batch, and the connection
  it concerns is dropped (``server-error``), so nobody is in the room unrecorded;
* media that cannot be set up for a newcomer refuses them (``media-unavailable``);
* a refused answer gets ``bad-answer`` and changes nothing;
* a write the database refuses because the room's epoch is behind (another node took the room,
  ``vio.rooms.fences``) stops the room here at once: everyone is told to reconnect
  (``server-restart``) and lands on the new owner, and nothing more is written from here.

The room's people are re-checked against the records (``recheck``, ``vio.rooms.standing``) when
its clock says so and whenever the directory asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from vio.errors import BadMessage, Dropped, NotAllowed, Refusal, refusal
from vio.media import MediaError, MediaRouter, MediaState, TrackInfo
from vio.models import AttendanceKind, SessionStatus
from vio.protocol import ClientMessage, message, parse
from vio.rooms import messages
from vio.rooms.admission import Person, SessionFacts
from vio.rooms.effects import (
    AcceptAnswer,
    AddMedia,
    Audit,
    Close,
    CloseMedia,
    Effect,
    KeepSignedIn,
    Recheck,
    Record,
    RemoveMedia,
    RoomClosed,
    RoomEvent,
    SaveExtension,
    SaveStatus,
    Send,
    SetForwarding,
    SetSpace,
    ShowSafetyCard,
)
from vio.rooms.fences import StaleEpoch
from vio.rooms.outbox import Outbox
from vio.rooms.people import People
from vio.rooms.room import Participant, Room

log = logging.getLogger(__name__)

RECORD_FAILED = Dropped("server-error", "We could not save your attendance; please join again.")
MOVED = Dropped("server-restart", "The session moved to another server; reconnecting.")
# Effects that write to the records: none is carried out once the room is fenced off.
WRITES = (Record, Audit, SaveStatus, SaveExtension, KeepSignedIn, ShowSafetyCard, Recheck)


class RoomStore:
    """What a room writes to the records. The base class writes nothing."""

    async def audit(self, actor: str, action: str, target: str, **detail: Any) -> None:
        return None

    async def set_status(self, session_id: int, status: SessionStatus,
                         epoch: int | None = None) -> None:
        return None

    async def extend(self, session_id: int, minutes: int,
                     epoch: int | None = None) -> datetime | None:
        return None

    async def record(self, session_id: int, event: RoomEvent, epoch: int | None = None) -> None:
        """Append an attendance event; returns once it is committed. Raises ``StaleEpoch``
        when the database refuses ``epoch``."""
        return None

    async def safety_card(self, session_id: int, patient_id: int, actor: str) -> dict[str, Any]:
        """The patient's safety card for this session; the look is audited."""
        return {}

    async def save_state(self, session_id: int, state: dict[str, Any],
                         epoch: int | None = None) -> None:
        """Keep the room's durable state (``Room.durable``), replacing what was kept."""
        return None

    async def keep_signed_in(self, sign_in_ids: tuple[int, ...]) -> None:
        """Mark these sign-ins as active now (they hold live room connections)."""
        return None


class LiveRoom:
    """One room of this process: its state machine, media router, store and clock."""

    def __init__(self, room: Room, media: MediaRouter, store: RoomStore,
                 on_closed: Callable[[LiveRoom], Awaitable[None]] | None = None, *,
                 people: People | None = None, epoch: int | None = None,
                 on_fenced: Callable[[LiveRoom], None] | None = None) -> None:
        self.room = room
        self.media = media
        self.store = store
        self.people = people or People()
        self.epoch = epoch  # of this node's lease on the room (None: one process)
        self.fenced = False  # the database refused this epoch: the room lives elsewhere now
        self._on_closed = on_closed
        self._on_fenced = on_fenced
        self._batches: deque[list[Effect]] = deque()
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._clock: asyncio.Task[None] | None = None
        self._saved: dict[str, Any] | None = None
        media.on_speaking_changed = lambda ids: self.apply(room.speaking(ids))
        media.on_media_state_changed = self._media_state
        media.on_video_paused = lambda pid, ids: self.apply(room.video_paused(pid, ids))

    @property
    def id(self) -> int:
        return self.room.id

    @property
    def closed(self) -> bool:
        return self._done.is_set()

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name=f"room-{self.id}")
            self._clock = asyncio.create_task(self._run_clock(), name=f"room-{self.id}-clock")

    # --- transitions from outside -----------------------------------------------------------

    def apply(self, effects: list[Effect]) -> None:
        """Queue the effects of one transition, to be carried out after those before them."""
        if effects:
            self._batches.append(effects)
            self._wake.set()

    def join(self, person: Person, outbox: Outbox, facts: SessionFacts,
             name: str | None = None) -> Participant:
        """Seat a connection (or raise ``Refusal``); when it closes, it leaves at that moment."""
        try:
            participant, effects = self.room.join(person, outbox, facts, name)
        except Refusal as refused:
            self.apply(self.room.refused(person, refused))
            raise
        self.apply(effects)
        outbox.on_close(lambda reason: self.apply(self.room.disconnected(participant, reason)))
        return participant

    def handle(self, participant: Participant, msg: ClientMessage) -> None:
        """Act on one validated message; raises ``BadMessage``/``NotAllowed`` (nothing changed)."""
        self.apply(messages.handle(self.room, participant, msg))

    def receive(self, participant: Participant, raw: str | bytes, max_bytes: int) -> None:
        """One frame from the participant's client: parsed and acted on, or answered with an
        ``error`` that says why it was refused (nothing changed)."""
        msg = None
        try:
            msg = parse(raw, max_bytes)
            self.handle(participant, msg)
        except (BadMessage, NotAllowed) as error:
            participant.outbox.put(message("error", code=error.code, message=error.message,
                                           about=msg.type if msg is not None else None))

    def remove_matching(self, which: Callable[[Person], bool], reason: Refusal,
                        keep_out: bool = True) -> int:
        before = len(self.room.everyone())
        self.apply(self.room.remove_matching(which, reason, keep_out))
        return before - len(self.room.everyone())

    async def recheck(self) -> int:
        """Look up whether everyone here still belongs (``vio.rooms.standing``) and remove who
        does not; returns how many were removed."""
        people = {p.id: p.person for p in self.room.everyone()}
        if not people or self.fenced:
            return 0
        refused = await self.people.standing(self.room.facts.kind, people)
        if refused:
            self.apply(self.room.remove_connections(refused))
        return len(refused)

    def stop(self, reason: Dropped) -> None:
        """Close every connection (they reconnect elsewhere) and the media; the session goes
        on, on another node."""
        self.apply(self.room.shutdown(reason))

    def fence(self) -> None:
        """Another node has the room now: write nothing more, and send everyone there."""
        if self.fenced:
            return
        self.fenced = True
        log.error("room %s: the room moved on from epoch %s; stopping it here", self.id,
                  self.epoch)
        self.stop(MOVED)
        if self._on_fenced is not None:
            self._on_fenced(self)

    async def shutdown(self) -> None:
        """This server is stopping: close every connection and the media; the session goes on."""
        self.apply(self.room.shutdown())
        await self.wait_closed()

    async def wait_closed(self) -> None:
        if self._runner is None:
            return
        await self._done.wait()

    def _media_state(self, participant_id: str, state: MediaState) -> None:
        self.apply(self.room.media_arrived(participant_id, state.audio_arriving,
                                           state.video_arriving))

    # --- the runner -------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                while not self._batches:
                    self._wake.clear()
                    await self._wake.wait()
                batch = self._batches.popleft()
                over = await self._carry_out(batch)
                await self._save(force=any(isinstance(e, Record) and e.event.kind
                                           is AttendanceKind.HEARTBEAT for e in batch))
                if over:
                    return
        finally:
            await self._finish()

    async def _carry_out(self, batch: list[Effect]) -> bool:
        """Carry out one transition's effects in order; True when the room is over."""
        unrecorded: str | None = None  # a connection whose record failed
        over = False
        for effect in batch:
            if unrecorded is not None and isinstance(effect, (Send, AddMedia)):
                continue
            if self.fenced and isinstance(effect, WRITES):
                continue
            try:
                if isinstance(effect, RoomClosed):
                    over = True
                else:
                    await self._one(effect)
            except StaleEpoch:
                log.error("room %s: the database refused a write at epoch %s", self.id,
                          self.epoch)
                self.fence()
                if isinstance(effect, Record) and effect.event.connection:
                    unrecorded = effect.event.connection
            except Exception as error:
                if isinstance(effect, Record):
                    log.error("room %s: an attendance record (%s) failed: %s", self.id,
                              effect.event.kind.value, type(error).__name__)
                    if effect.event.connection:  # a heartbeat's failure acknowledges nothing
                        unrecorded = effect.event.connection
                elif isinstance(effect, AddMedia):
                    log.error("room %s: media for a newcomer failed: %s", self.id,
                              type(error).__name__)
                    self.apply(self.room.failed(effect.participant_id,
                                                refusal("media-unavailable")))
                else:
                    log.exception("room %s: %s failed", self.id, type(effect).__name__)
        if unrecorded:
            self.apply(self.room.failed(unrecorded, RECORD_FAILED))
        return over

    async def _one(self, effect: Effect) -> None:
        room = self.room
        if isinstance(effect, Send):
            for outbox in effect.to:
                outbox.put(effect.message)
        elif isinstance(effect, Close):
            effect.outbox.close(effect.reason)
        elif isinstance(effect, Record):
            await self.store.record(room.id, effect.event, epoch=self.epoch)
        elif isinstance(effect, Audit):
            await self.store.audit(effect.actor, effect.action, effect.target, **effect.detail)
        elif isinstance(effect, SaveStatus):
            await self.store.set_status(room.id, effect.status, epoch=self.epoch)
        elif isinstance(effect, SaveExtension):
            await self.store.extend(room.id, effect.minutes, epoch=self.epoch)
        elif isinstance(effect, AddMedia):
            if effect.participant_id in room.participants:  # not gone meanwhile
                await self.media.add_participant(effect.participant_id,
                                                 is_therapist=effect.is_therapist,
                                                 on_offer=self._offer_to(effect.participant_id))
        elif isinstance(effect, RemoveMedia):
            await self.media.remove_participant(effect.participant_id)
        elif isinstance(effect, AcceptAnswer):
            await self._accept_answer(effect)
        elif isinstance(effect, SetSpace):
            self.media.set_space(effect.participant_id, effect.space)
        elif isinstance(effect, SetForwarding):
            self.media.set_forwarding(effect.participant_id, effect.kind, effect.allowed)
        elif isinstance(effect, ShowSafetyCard):
            card = await self.store.safety_card(room.id, effect.patient_id, effect.actor)
            effect.to.put(message("safety-card", participant_id=effect.participant_id,
                                  name=effect.name, **card))
        elif isinstance(effect, KeepSignedIn):
            await self.store.keep_signed_in(effect.sign_in_ids)
        elif isinstance(effect, Recheck):
            await self.recheck()
        elif isinstance(effect, CloseMedia):
            await self.media.close()

    async def _save(self, force: bool) -> None:
        """Keep the room's durable state whenever it changed (and with every heartbeat, so
        the saved moment is never older than one heartbeat)."""
        state = self.room.durable()
        if self.fenced or (state == self._saved and not force):
            return
        try:
            await self.store.save_state(self.id, state, epoch=self.epoch)
        except StaleEpoch:
            log.error("room %s: the database refused its state at epoch %s", self.id,
                      self.epoch)
            self.fence()
        except Exception as error:
            log.error("room %s: saving its state failed: %s", self.id, type(error).__name__)
        else:
            self._saved = state

    async def _accept_answer(self, effect: AcceptAnswer) -> None:
        participant = self.room.participants.get(effect.participant_id)
        if participant is None:
            return
        try:
            await self.media.accept_answer(effect.participant_id, effect.sdp)
        except MediaError as error:
            refused = BadMessage("bad-answer", f"The answer was not accepted: {error}")
            participant.outbox.put(message("error", code=refused.code, message=refused.message,
                                           about="answer"))

    def _offer_to(self, participant_id: str) -> Callable[[str, list[TrackInfo]], Awaitable[None]]:
        async def send_offer(sdp: str, tracks: list[TrackInfo]) -> None:
            self.apply(self.room.offer(participant_id, sdp, [
                {"mid": t.mid, "participant_id": t.publisher, "kind": t.kind} for t in tracks]))

        return send_offer

    async def _run_clock(self) -> None:
        tick = self.room.settings.room_tick_seconds
        try:
            while not self.room.ended:
                self.apply(self.room.tick())
                remaining = (self.room.ends_at - self.room.clock.now()).total_seconds()
                await asyncio.sleep(max(0.0, min(tick, remaining)))
        except Exception:
            log.exception("room %s: the clock stopped", self.id)

    async def _finish(self) -> None:
        """The runner stopped: stop the clock, close the media, tell the directory."""
        if self._clock is not None and self._clock is not asyncio.current_task():
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
        with contextlib.suppress(Exception):
            await self.media.close()
        for participant in self.room.everyone():  # only if the runner died unexpectedly
            participant.outbox.close(Dropped("server-error", "The room stopped."))
        self._done.set()
        if self._on_closed is not None:
            await self._on_closed(self)

