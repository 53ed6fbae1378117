"""One live session's room: its participants, waiting room, moderation, clock and media.

A ``Room`` is the only owner of that state. Checks and changes happen without an ``await`` in
between, so no lock is needed; media and database work come after the state has changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from vio.clock import Clock
from vio.errors import BadMessage, Dropped, NotAllowed, Refusal
from vio.media import MediaError, MediaRouter, TrackInfo
from vio.models import SessionStatus
from vio.protocol import MODERATOR_MESSAGES, ClientMessage, message
from vio.rooms.admission import Person, Role, RoomView, SessionFacts, admission, goes_straight_in
from vio.rooms.outbox import Outbox
from vio.settings import Settings

log = logging.getLogger(__name__)

# How late a warning may still be sent (a room that opens 5 minutes before the end skips "10").
WARNING_TOLERANCE = timedelta(minutes=1)


class RoomStore:
    """What a room writes to the records. The base class writes nothing (used by pure tests)."""

    async def audit(self, actor: str, action: str, target: str, **detail: Any) -> None:
        return None

    async def set_status(self, session_id: int, status: SessionStatus) -> None:
        return None

    async def extend(self, session_id: int, minutes: int) -> datetime | None:
        return None


@dataclass(eq=False)
class Participant:
    id: str
    person: Person
    name: str
    outbox: Outbox
    arrived_at: datetime
    admitted: bool = False
    audio: bool = True
    video: bool = True

    @property
    def is_therapist(self) -> bool:
        return self.person.is_therapist

    def send(self, msg: dict[str, Any]) -> None:
        self.outbox.put(msg)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.person.role.value,
                "audio": self.audio, "video": self.video}


@dataclass
class RoomTimers:
    """Warning offsets still to announce, in minutes before the end."""

    pending_warnings: list[int] = field(default_factory=list)


class Room:
    def __init__(self, facts: SessionFacts, settings: Settings, clock: Clock,
                 media: MediaRouter, store: RoomStore,
                 on_closed: Callable[[Room], Awaitable[None]] | None = None) -> None:
        self.facts = facts
        self.settings = settings
        self.clock = clock
        self.media = media
        media.on_speaking_changed = self.speaking_changed
        self.store = store
        self._on_closed = on_closed
        self.participants: dict[str, Participant] = {}
        self.waiting: dict[str, Participant] = {}
        self.removed: set[str] = set()
        self.dropped_at: dict[str, datetime] = {}  # identity -> when their connection dropped
        self.locked = False
        self.ended = False
        self._closed = asyncio.Event()
        self._closing = False
        self._timers = RoomTimers(sorted(settings.warning_minutes, reverse=True))
        self._clock_task: asyncio.Task[None] | None = None

    # --- the rules' view of the room ------------------------------------------------------

    def view(self, now: datetime) -> RoomView:
        grace = timedelta(seconds=self.settings.reconnect_grace_seconds)
        return RoomView(
            removed=frozenset(self.removed), locked=self.locked, ended=self.ended,
            occupancy=len(self.participants) + len(self.waiting),
            capacity=self.settings.room_capacity,
            therapist_present=any(p.is_therapist for p in self.participants.values()),
            reconnecting=frozenset(i for i, t in self.dropped_at.items() if now - t <= grace))

    @property
    def ends_at(self) -> datetime:
        return self.facts.ends_at

    def start(self) -> None:
        if self._clock_task is None:
            self._clock_task = asyncio.create_task(self._run_clock(), name=f"room-{self.id}")

    @property
    def id(self) -> int:
        return self.facts.session_id

    # --- arriving and leaving --------------------------------------------------------------

    async def join(self, person: Person, outbox: Outbox, facts: SessionFacts,
                   name: str | None = None) -> Participant:
        """Admit ``person`` to the room or its waiting room, or raise ``Refusal``."""
        self.facts = replace(facts, ends_at=self.facts.ends_at, status=self.facts.status) \
            if self.facts.session_id == facts.session_id else facts
        now = self.clock.now()
        join_early = timedelta(minutes=self.settings.join_early_minutes)
        view = self.view(now)
        admission(person, self.facts, view, now, join_early)
        for old in [*self.participants.values(), *self.waiting.values()]:
            if old.person.identity == person.identity:
                old.outbox.close(Dropped("replaced", "You joined from another window."))
                self._forget(old)
                view = replace(view, reconnecting=view.reconnecting | {person.identity})
                if old.admitted:
                    self._broadcast(message("participant-left", participant_id=old.id))
                    await self.media.remove_participant(old.id)
        shown = name if person.role is Role.FAMILY and name else person.name
        participant = Participant(id=f"p-{secrets.token_hex(6)}", person=person, name=shown,
                                  outbox=outbox, arrived_at=now)
        self.dropped_at.pop(person.identity, None)
        if goes_straight_in(person, self.facts, view):
            await self._enter(participant)
        else:
            self.waiting[participant.id] = participant
            participant.send(message("waiting", message="A therapist will let you in shortly."))
            self._send_waiting_list()
        return participant

    async def _enter(self, participant: Participant) -> None:
        participant.admitted = True
        self.participants[participant.id] = participant
        participant.send(message(
            "welcome", you=participant.public(),
            session={"id": self.id, "title": self.facts.title,
                     "ends_at": self.ends_at.isoformat(),
                     "remaining_seconds": self._remaining_seconds(), "locked": self.locked},
            participants=[p.public() for p in self.participants.values()
                          if p is not participant],
            caps={"width": self.settings.publish_width, "height": self.settings.publish_height,
                  "fps": self.settings.publish_fps,
                  "max_bitrate": self.settings.publish_max_kbps * 1000}))
        self._broadcast(message("participant-joined", participant=participant.public()),
                        exclude=participant)
        if participant.is_therapist:
            self._send_waiting_list()
            if self.facts.waiting_room.value == "auto-with-therapist":
                for waiting in [w for w in self.waiting.values() if w.person.role is Role.PATIENT]:
                    del self.waiting[waiting.id]
                    await self._enter(waiting)

        async def send_offer(sdp: str, tracks: list[TrackInfo]) -> None:
            participant.send(message("offer", sdp=sdp, tracks=[
                {"mid": t.mid, "participant_id": t.publisher, "kind": t.kind}
                for t in tracks]))

        await self.media.add_participant(participant.id, is_therapist=participant.is_therapist,
                                         on_offer=send_offer)

    def _forget(self, participant: Participant) -> bool:
        """Take the participant out of the room's state; True if they were in the room."""
        if self.waiting.pop(participant.id, None) is not None:
            self._send_waiting_list()
        return self.participants.pop(participant.id, None) is not None

    async def leave(self, participant: Participant, dropped: bool) -> None:
        """The connection ended; ``dropped`` means not by the person's own choice."""
        if self.participants.get(participant.id) is not participant \
                and self.waiting.get(participant.id) is not participant:
            return
        was_in = self._forget(participant)
        if dropped and was_in and not self.ended:
            self.dropped_at[participant.person.identity] = self.clock.now()
        if was_in:
            self._broadcast(message("participant-left", participant_id=participant.id))
            await self.media.remove_participant(participant.id)

    # --- messages -----------------------------------------------------------------------------

    async def handle(self, participant: Participant, msg: ClientMessage) -> None:
        """Act on one validated message from ``participant``."""
        if msg.type in MODERATOR_MESSAGES:
            if not (participant.is_therapist and participant.admitted):
                raise NotAllowed("not-allowed", "Only the session's therapists can do that.")
            await self._moderate(participant, msg)
            return
        if msg.type == "ping":
            participant.send(message("pong"))
        elif not participant.admitted:
            raise NotAllowed("waiting", "Please wait until a therapist lets you in.")
        elif msg.type == "answer":
            try:
                await self.media.accept_answer(participant.id, msg["sdp"])
            except MediaError as error:
                raise BadMessage("bad-answer", f"The answer was not accepted: {error}") from None
        elif msg.type == "media":
            participant.audio, participant.video = msg["audio"], msg["video"]
            self._broadcast(message("media-state", participant_id=participant.id,
                                    audio=participant.audio, video=participant.video))
        elif msg.type == "chat":
            out = message("chat", **{"from": participant.public()}, text=msg["text"].strip(),
                          to=msg["to"])
            if msg["to"] == "room":
                self._broadcast(out)
            else:
                for p in self.participants.values():
                    if p.is_therapist or p is participant:
                        p.send(out)

    async def _moderate(self, therapist: Participant, msg: ClientMessage) -> None:
        actor = therapist.person.identity
        kind = msg.type
        if kind in ("lock", "unlock"):
            self.locked = kind == "lock"
            self._broadcast(message("room-state", locked=self.locked))
            await self.store.audit(actor, f"room-{kind}", f"session:{self.id}")
            return
        if kind == "end":
            await self.store.audit(actor, "session-end", f"session:{self.id}")
            await self.end("A therapist has ended this session.")
            return
        if kind == "extend":
            minutes = msg["minutes"]
            if minutes > self.settings.max_extend_minutes:
                raise NotAllowed("bad-extend", f"Extend by at most "
                                 f"{self.settings.max_extend_minutes} minutes at a time.")
            new_end = self.ends_at + timedelta(minutes=minutes)
            self.facts = replace(self.facts, ends_at=new_end)
            self._timers.pending_warnings = sorted(self.settings.warning_minutes, reverse=True)
            await self.store.extend(self.id, minutes)
            await self.store.audit(actor, "session-extend", f"session:{self.id}",
                                   minutes=minutes, ends_at=new_end.isoformat())
            self._broadcast(message("time", ends_at=new_end.isoformat(),
                                    remaining_seconds=self._remaining_seconds()))
            return
        if kind == "admit-all":
            admitted = list(self.waiting.values())
            self.waiting.clear()
            for person in admitted:
                await self.store.audit(actor, "admit", person.person.identity, session=self.id)
                await self._enter(person)
            self._send_waiting_list()
            return
        target_id = msg["participant_id"]
        if kind in ("admit", "deny"):
            waiting = self.waiting.pop(target_id, None)
            if waiting is None:
                raise NotAllowed("no-such-participant", "That person is no longer waiting.")
            await self.store.audit(actor, kind, waiting.person.identity, session=self.id)
            if kind == "admit":
                await self._enter(waiting)
            else:
                waiting.send(message("refused", code="denied",
                                     message="The therapist could not let you in this time."))
                waiting.outbox.close(Refusal("denied", "Not admitted."))
            self._send_waiting_list()
            return
        target = self.participants.get(target_id)
        if target is None:
            raise NotAllowed("no-such-participant", "That person is not in the room.")
        if kind in ("mute", "stop-video"):
            if kind == "mute":
                target.audio = False
            else:
                target.video = False
            target.send(message("moderated", action=kind))
            self._broadcast(message("media-state", participant_id=target.id,
                                    audio=target.audio, video=target.video))
            await self.store.audit(actor, kind, target.person.identity, session=self.id)
        elif kind == "remove":
            self.removed.add(target.person.identity)
            await self.store.audit(actor, "remove", target.person.identity, session=self.id,
                                   reason=msg["reason"])
            target.send(message("refused", code="removed",
                                message="A therapist has removed you from this session."))
            target.outbox.close(Refusal("removed", "Removed by a therapist."))
            await self.leave(target, dropped=False)

    # --- broadcast and time -----------------------------------------------------------------

    def _broadcast(self, msg: dict[str, Any], exclude: Participant | None = None) -> None:
        for p in self.participants.values():
            if p is not exclude:
                p.send(msg)

    def _send_waiting_list(self) -> None:
        listing = message("waiting-list", waiting=[
            {"participant_id": w.id, "name": w.name, "role": w.person.role.value,
             "since": w.arrived_at.isoformat()} for w in self.waiting.values()])
        for p in self.participants.values():
            if p.is_therapist:
                p.send(listing)

    def _remaining_seconds(self) -> int:
        return max(0, int((self.ends_at - self.clock.now()).total_seconds()))

    def speaking_changed(self, participant_ids: list[str]) -> None:
        self._broadcast(message("speaking", participant_ids=participant_ids))

    async def _run_clock(self) -> None:
        """Warnings at the configured offsets, then the hard end."""
        tick = self.settings.room_tick_seconds
        with contextlib.suppress(asyncio.CancelledError):
            while not self.ended:
                remaining = self.ends_at - self.clock.now()
                while self._timers.pending_warnings and remaining <= timedelta(
                        minutes=self._timers.pending_warnings[0]):
                    minutes = self._timers.pending_warnings.pop(0)
                    # A warning whose moment passed before the room opened is not sent late.
                    if remaining > timedelta(minutes=minutes) - WARNING_TOLERANCE:
                        self._broadcast(message(
                            "warning", minutes_left=minutes,
                            message=f"This session ends in {minutes} minute"
                                    f"{'s' if minutes != 1 else ''}."))
                if remaining <= timedelta(0):
                    await self.end("This session has ended.")
                    return
                await asyncio.sleep(min(tick, remaining.total_seconds()))

    async def end(self, why: str) -> None:
        """End the session for everyone: tell them, close their connections and media."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.ended = True
        everyone = [*self.participants.values(), *self.waiting.values()]
        self.participants.clear()
        self.waiting.clear()
        for p in everyone:
            p.send(message("ended", message=why))
            p.outbox.close(Dropped("ended", why))
        try:
            await self.media.close()
            await self.store.set_status(self.id, SessionStatus.ENDED)
        finally:
            if self._clock_task is not None and self._clock_task is not asyncio.current_task():
                self._clock_task.cancel()
            self._closed.set()
            if self._on_closed is not None:
                await self._on_closed(self)

    async def shutdown(self) -> None:
        """Server stopping: close connections and media without ending the session."""
        if self._clock_task is not None:
            self._clock_task.cancel()
        for p in [*self.participants.values(), *self.waiting.values()]:
            p.outbox.close(Dropped("server-restart", "The server is restarting; reconnecting."))
        await self.media.close()
