"""One live session's room: its participants, waiting room, moderation, clock and media.

A ``Room`` is the only owner of that state. Checks and changes happen without an ``await`` in
between, so no lock is needed; media and database work come after the state has changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from vio.clock import Clock
from vio.errors import BadMessage, Dropped, NotAllowed, Refusal
from vio.media import MediaError, MediaRouter, MediaState, TrackInfo
from vio.models import AttendanceKind, SessionStatus, WaitingRoomPolicy
from vio.protocol import ClientMessage, message
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

    async def record(self, session_id: int, event: RoomEvent) -> None:
        """Append an attendance event; returns once it is committed."""
        return None

    async def safety_card(self, session_id: int, patient_id: int, actor: str) -> dict[str, Any]:
        """The patient's safety card for this session; the look is audited."""
        return {}


@dataclass(frozen=True)
class RoomEvent:
    """One attendance event as the room sees it (see ``vio.models.AttendanceEvent``)."""

    kind: AttendanceKind
    person: str | None = None
    role: str | None = None
    connection: str | None = None
    patient_id: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def about(cls, participant: Participant, kind: AttendanceKind, **detail: Any) -> RoomEvent:
        person = participant.person
        return cls(kind=kind, person=person.identity, role=person.role.value,
                   connection=participant.id, patient_id=person.patient_id, detail=detail)


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
    space: str | None = None  # a private side room, or None for the main room

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
        media.on_media_state_changed = self.media_state_changed
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
        self._background: set[asyncio.Task[None]] = set()
        self._last_heartbeat: datetime | None = None

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
        # The records may have changed (roster, consents, invites); the room's own clock and
        # status stay the room's.
        self.facts = replace(facts, ends_at=self.facts.ends_at, status=self.facts.status)
        now = self.clock.now()
        join_early = timedelta(minutes=self.settings.join_early_minutes)
        view = self.view(now)
        admission(person, self.facts, view, now, join_early)
        old = next((p for p in [*self.participants.values(), *self.waiting.values()]
                    if p.person.identity == person.identity), None)
        if old is not None:
            if person.role is Role.FAMILY and old.person.device != person.device:
                raise Refusal("invite-in-use",
                              "This invitation is already in use on another device.")
            old.outbox.close(Dropped("replaced", "You joined from another window."))
            await self.leave(old, dropped=True)
            view = replace(view, reconnecting=view.reconnecting | {person.identity})
        shown = name if person.role is Role.FAMILY and name else person.name
        participant = Participant(id=f"p-{secrets.token_hex(6)}", person=person, name=shown,
                                  outbox=outbox, arrived_at=now)
        self.dropped_at.pop(person.identity, None)
        if goes_straight_in(person, self.facts, view):
            await self.enter(participant)
        else:
            self.waiting[participant.id] = participant
            await self.store.record(self.id, RoomEvent.about(participant, AttendanceKind.WAITING))
            participant.send(message("waiting", message="A therapist will let you in shortly."))
            self.send_waiting_list()
        return participant

    async def enter(self, participant: Participant) -> None:
        if self.facts.status is SessionStatus.SCHEDULED:
            self.facts = replace(self.facts, status=SessionStatus.OPEN)
            await self.store.set_status(self.id, SessionStatus.OPEN)
        participant.admitted = True
        self.participants[participant.id] = participant
        await self.store.record(self.id, RoomEvent.about(participant, AttendanceKind.ADMITTED))
        participant.send(message(
            "welcome", you=participant.public(),
            session={"id": self.id, "title": self.facts.title,
                     "ends_at": self.ends_at.isoformat(),
                     "remaining_seconds": self.remaining_seconds(), "locked": self.locked},
            participants=[p.public() for p in self.participants.values()
                          if p is not participant],
            caps={"width": self.settings.publish_width, "height": self.settings.publish_height,
                  "fps": self.settings.publish_fps,
                  "max_bitrate": self.settings.publish_max_kbps * 1000}))
        self.broadcast(message("participant-joined", participant=participant.public()),
                        exclude=participant)
        if participant.is_therapist:
            self.send_waiting_list()
            if self.facts.waiting_room is WaitingRoomPolicy.AUTO_WITH_THERAPIST:
                for waiting in [w for w in self.waiting.values() if w.person.role is Role.PATIENT]:
                    del self.waiting[waiting.id]
                    await self.enter(waiting)

        async def send_offer(sdp: str, tracks: list[TrackInfo]) -> None:
            participant.send(message("offer", sdp=sdp, tracks=[
                {"mid": t.mid, "participant_id": t.publisher, "kind": t.kind}
                for t in tracks]))

        await self.media.add_participant(participant.id, is_therapist=participant.is_therapist,
                                         on_offer=send_offer)

    def _forget(self, participant: Participant) -> bool:
        """Take the participant out of the room's state; True if they were in the room."""
        if self.waiting.pop(participant.id, None) is not None:
            self.send_waiting_list()
        return self.participants.pop(participant.id, None) is not None

    async def leave(self, participant: Participant, dropped: bool,
                    kind: AttendanceKind | None = None, **detail: Any) -> None:
        """The connection ended; ``dropped`` means not by the person's own choice."""
        if self.participants.get(participant.id) is not participant \
                and self.waiting.get(participant.id) is not participant:
            return
        was_in = self._forget(participant)
        if dropped and was_in and not self.ended:
            self.dropped_at[participant.person.identity] = self.clock.now()
        kind = kind or (AttendanceKind.DROPPED if dropped else AttendanceKind.LEFT)
        await self.store.record(self.id, RoomEvent.about(participant, kind, **detail))
        if was_in:
            self.broadcast(message("participant-left", participant_id=participant.id))
            await self.media.remove_participant(participant.id)

    async def remove_person(self, which: Callable[[Person], bool], code: str, why: str) -> int:
        """Refuse and disconnect everyone (in the room or waiting) matching ``which``."""
        matching = [p for p in [*self.participants.values(), *self.waiting.values()]
                    if which(p.person)]
        for p in matching:
            self.removed.add(p.person.identity)
            p.send(message("refused", code=code, message=why))
            p.outbox.close(Refusal(code, why))
            await self.leave(p, dropped=False, kind=AttendanceKind.REMOVED, reason=code)
        return len(matching)

    # --- messages -----------------------------------------------------------------------------

    async def handle(self, participant: Participant, msg: ClientMessage) -> None:
        """Act on one validated message from ``participant``."""
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
            self.broadcast(message("media-state", participant_id=participant.id,
                                    audio=participant.audio, video=participant.video))
        elif msg.type == "chat":
            out = message("chat", **{"from": participant.public()}, text=msg["text"].strip(),
                          to=msg["to"])
            if msg["to"] == "room":
                self.broadcast(out)
            else:
                for p in self.participants.values():
                    if p.is_therapist or p is participant:
                        p.send(out)

    # --- broadcast and time -----------------------------------------------------------------

    def broadcast(self, msg: dict[str, Any], exclude: Participant | None = None) -> None:
        for p in self.participants.values():
            if p is not exclude:
                p.send(msg)

    def send_waiting_list(self) -> None:
        listing = message("waiting-list", waiting=[
            {"participant_id": w.id, "name": w.name, "role": w.person.role.value,
             "since": w.arrived_at.isoformat()} for w in self.waiting.values()])
        for p in self.participants.values():
            if p.is_therapist:
                p.send(listing)

    def remaining_seconds(self) -> int:
        return max(0, int((self.ends_at - self.clock.now()).total_seconds()))

    def speaking_changed(self, participant_ids: list[str]) -> None:
        self.broadcast(message("speaking", participant_ids=participant_ids))

    def media_state_changed(self, participant_id: str, state: MediaState) -> None:
        """What the server itself sees arriving: attendance evidence (audio-video or audio)."""
        participant = self.participants.get(participant_id)
        if participant is None:
            return
        event = RoomEvent.about(participant, AttendanceKind.MEDIA, audio=state.audio_arriving,
                                video=state.video_arriving)
        self._spawn(self.store.record(self.id, event))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def rearm_warnings(self) -> None:
        self._timers.pending_warnings = sorted(self.settings.warning_minutes, reverse=True)

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
                        self.broadcast(message(
                            "warning", minutes_left=minutes,
                            message=f"This session ends in {minutes} minute"
                                    f"{'s' if minutes != 1 else ''}."))
                if remaining <= timedelta(0):
                    await self.end("This session has ended.")
                    return
                await self._heartbeat()
                await asyncio.sleep(min(tick, remaining.total_seconds()))

    async def _heartbeat(self) -> None:
        """Now and then, record who is in the room: a crash loses at most one interval."""
        now = self.clock.now()
        every = timedelta(seconds=self.settings.attendance_heartbeat_seconds)
        if self._last_heartbeat is not None and now - self._last_heartbeat < every:
            return
        self._last_heartbeat = now
        if self.participants:
            await self.store.record(self.id, RoomEvent(AttendanceKind.HEARTBEAT, detail={
                "present": sorted(self.participants)}))

    async def end(self, why: str) -> None:
        """End the session for everyone: record it, tell them, close connections and media."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.ended = True
        everyone = [*self.participants.values(), *self.waiting.values()]
        self.participants.clear()
        self.waiting.clear()
        try:
            await self.store.record(self.id, RoomEvent(AttendanceKind.SESSION_ENDED, detail={
                "present": [p.id for p in everyone if p.admitted]}))
            await self.store.set_status(self.id, SessionStatus.ENDED)
        finally:
            for p in everyone:
                p.send(message("ended", message=why))
                p.outbox.close(Dropped("ended", why))
        try:
            await self.media.close()
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
