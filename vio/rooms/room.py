"""One live session's room as a state machine: participants, waiting room, moderation, clock.

A ``Room`` is the only owner of that state. Every transition is a plain method: it checks,
changes state and returns the effects to carry out (``vio.rooms.effects``), with no ``await``
anywhere, so no lock is needed and no caller can see a half-made change. ``vio.rooms.live``
carries the effects out in order (records, audit, sends, media).

Invariants (``tests/test_room.py`` checks them under random storms):

* one seat per person: a person has at most one connection in the room or its waiting room; a
  newer connection replaces the older at once (which is closed with ``replaced``);
* occupancy counts people; it never exceeds the capacity, except for therapists, who always
  get in;
* every participant seated or waiting has a live connection: a connection that closes, for any
  reason, leaves the room in the same step;
* when the room ends, everyone has left it, and the attendance log says so.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from vio.clock import Clock
from vio.errors import Dropped, NotAllowed, Refusal, VioError, refusal
from vio.models import AttendanceKind, SessionStatus, WaitingRoomPolicy
from vio.protocol import message
from vio.rooms.admission import Person, Role, RoomView, SessionFacts, admission, goes_straight_in
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
from vio.rooms.outbox import Outbox
from vio.settings import Settings

__all__ = ["Participant", "Room", "RoomEvent"]

# How late a warning may still be sent (a room that opens 5 minutes before the end skips "10").
WARNING_TOLERANCE = timedelta(minutes=1)
KINDS = ("audio", "video")
DURABLE_VERSION = 1
# Refusals of people who belong in the session that the therapists hear of and the log keeps.
NOTED_REFUSALS = frozenset({"room-locked", "room-full", "removed", "invite-in-use",
                            "check-in-needed"})


@dataclass(eq=False)
class Participant:
    """One connection of one person, in the room (``admitted``) or its waiting room."""

    id: str
    person: Person
    name: str
    outbox: Outbox
    arrived_at: datetime
    admitted: bool = False
    audio: bool = True  # the person's own buttons, as their client last said
    video: bool = True
    held: set[str] = field(default_factory=set)  # kinds a therapist stopped; not forwarded
    mic_locked: bool = False  # a therapist must allow the microphone back
    space: str | None = None  # a private side room, or None for the main room

    @property
    def is_therapist(self) -> bool:
        return self.person.is_therapist

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.person.role.value,
                "audio": self.audio, "video": self.video, "mic_locked": self.mic_locked,
                "side_room": self.space is not None}


def _event(participant: Participant, kind: AttendanceKind, **detail: Any) -> Record:
    person = participant.person
    return Record(RoomEvent(kind=kind, person=person.identity, role=person.role.value,
                            connection=participant.id, patient_id=person.patient_id,
                            detail=detail))


def _minutes(n: int) -> str:
    return f"{n} minute{'s' if n != 1 else ''}"


class Room:
    def __init__(self, facts: SessionFacts, settings: Settings, clock: Clock) -> None:
        self.facts = facts
        self.settings = settings
        self.clock = clock
        self.participants: dict[str, Participant] = {}
        self.waiting: dict[str, Participant] = {}
        self.removed: set[str] = set()
        self.dropped_at: dict[str, datetime] = {}  # identity -> when their connection dropped
        # identity -> (kinds a therapist holds back, microphone locked): outlives a reconnect
        self.holds: dict[str, tuple[frozenset[str], bool]] = {}
        self.spaces: dict[str, str] = {}  # identity -> side room, also outliving a reconnect
        self.locked = False
        self.ended = False
        self.pending_warnings = sorted(settings.warning_minutes, reverse=True)
        self.last_heartbeat: datetime | None = None
        self.last_recheck: datetime | None = None

    @property
    def id(self) -> int:
        return self.facts.session_id

    @property
    def ends_at(self) -> datetime:
        return self.facts.ends_at

    # --- reading the state ----------------------------------------------------------------

    def everyone(self) -> list[Participant]:
        return [*self.participants.values(), *self.waiting.values()]

    def connection_of(self, identity: str) -> Participant | None:
        return next((p for p in self.everyone() if p.person.identity == identity), None)

    def is_current(self, participant: Participant) -> bool:
        return (self.participants.get(participant.id) is participant
                or self.waiting.get(participant.id) is participant)

    def view(self, now: datetime) -> RoomView:
        grace = timedelta(seconds=self.settings.reconnect_grace_seconds)
        present = frozenset(p.person.identity for p in self.everyone())
        return RoomView(
            removed=frozenset(self.removed), locked=self.locked, ended=self.ended,
            occupancy=len({p.person.identity for p in self.everyone() if not p.is_therapist}),
            capacity=self.settings.room_capacity,
            therapist_present=any(p.is_therapist for p in self.participants.values()),
            reconnecting=frozenset(i for i, t in self.dropped_at.items() if now - t <= grace),
            present=present)

    def remaining_seconds(self) -> int:
        return max(0, int((self.ends_at - self.clock.now()).total_seconds()))

    def _to(self, people: Iterable[Participant], msg: dict[str, Any]) -> Send:
        return Send(tuple(p.outbox for p in people), msg)

    def _broadcast(self, msg: dict[str, Any], exclude: Participant | None = None) -> Send:
        return self._to((p for p in self.participants.values() if p is not exclude), msg)

    def _waiting_list(self) -> Send:
        listing = message("waiting-list", waiting=[
            {"participant_id": w.id, "name": w.name, "role": w.person.role.value,
             "since": w.arrived_at.isoformat()} for w in self.waiting.values()])
        return self._to((p for p in self.participants.values() if p.is_therapist), listing)

    def _expected(self) -> list[dict[str, str]]:
        """Everyone the session expects, and whether they are here yet (therapists only)."""
        seated = {p.person.identity for p in self.participants.values()}
        waiting = {p.person.identity for p in self.waiting.values()}
        return [{"name": e.name, "role": e.role.value,
                 "status": "in-room" if e.identity in seated
                 else "waiting" if e.identity in waiting
                 else "removed" if e.identity in self.removed else "not-here"}
                for e in self.facts.expected]

    def _roster(self) -> Send:
        return self._to((p for p in self.participants.values() if p.is_therapist),
                        message("roster", expected=self._expected()))

    def _tell_waiting(self) -> list[Effect]:
        """The waiting room hears again whether a therapist is here."""
        summary = self._session_summary()
        return [self._to([w], message("waiting", message=self._waiting_text(summary),
                                      session=summary)) for w in self.waiting.values()]

    @staticmethod
    def _waiting_text(summary: dict[str, Any]) -> str:
        if summary["therapist_present"]:
            return "Your therapist is here and will let you in shortly."
        return "Your therapist hasn't joined yet. You will be let in when they arrive."

    # --- what outlives the process ----------------------------------------------------------

    def durable(self) -> dict[str, Any]:
        """What must outlive the process serving the room (saved as it changes, see
        ``vio.rooms.live``): who is in, who was removed, the lock, the end, the warnings still
        to give, the therapists' holds and the side rooms."""
        return {
            "version": DURABLE_VERSION,
            "seated": sorted({p.person.identity for p in self.participants.values()}),
            "dropped": {i: t.isoformat() for i, t in sorted(self.dropped_at.items())},
            "removed": sorted(self.removed),
            "locked": self.locked,
            "ends_at": self.ends_at.isoformat(),
            "pending_warnings": list(self.pending_warnings),
            "holds": {i: {"held": sorted(held), "mic_locked": locked}
                      for i, (held, locked) in sorted(self.holds.items())},
            "spaces": dict(sorted(self.spaces.items())),
            "ended": self.ended,
        }

    def restore(self, state: dict[str, Any], saved_at: datetime) -> None:
        """Continue from a saved ``durable()`` state: everyone who was in the room at
        ``saved_at`` counts as dropped then, so within the reconnect grace they come straight
        back in (a locked room too); removed people stay out; lock, end and warnings hold."""
        if state.get("version") != DURABLE_VERSION:
            return
        self.dropped_at = {i: datetime.fromisoformat(t) for i, t in state["dropped"].items()}
        for identity in state["seated"]:
            self.dropped_at[identity] = saved_at
        self.removed = set(state["removed"])
        self.locked = bool(state["locked"])
        ends_at = datetime.fromisoformat(state["ends_at"])
        if ends_at > self.ends_at:
            self.facts = replace(self.facts, ends_at=ends_at)
        self.pending_warnings = [int(m) for m in state["pending_warnings"]]
        self.holds = {i: (frozenset(h["held"]), bool(h["mic_locked"]))
                      for i, h in state["holds"].items()}
        self.spaces = dict(state["spaces"])

    # --- arriving ---------------------------------------------------------------------------

    def join(self, person: Person, outbox: Outbox, facts: SessionFacts,
             name: str | None = None) -> tuple[Participant, list[Effect]]:
        """Seat ``person`` in the room or its waiting room, or raise ``Refusal``.

        A person already here on another connection keeps their place: the new connection
        takes it over and the old one is closed with ``replaced``.
        """
        if outbox.closing is not None:
            raise outbox.closing
        # The records may have changed (roster, consents, invites); the room's own clock and
        # status stay the room's.
        self.facts = replace(facts, ends_at=self.facts.ends_at, status=self.facts.status)
        now = self.clock.now()
        view = self.view(now)
        early = timedelta(minutes=self.settings.join_early_minutes)
        admission(person, self.facts, view, now, early)
        effects: list[Effect] = []
        old = self.connection_of(person.identity)
        straight_in = goes_straight_in(person, self.facts, view)
        if old is not None:
            if person.role is Role.FAMILY and old.person.device != person.device:
                raise refusal("invite-in-use")
            straight_in = straight_in or old.admitted
            effects += self._depart(old, AttendanceKind.DROPPED,
                                    Dropped("replaced", "You joined from another window."),
                                    reason="replaced")
        self.dropped_at.pop(person.identity, None)
        shown = name if person.role is Role.FAMILY and name else person.name
        participant = Participant(id=f"p-{secrets.token_hex(6)}", person=person, name=shown,
                                  outbox=outbox, arrived_at=now)
        held, participant.mic_locked = self.holds.get(person.identity, (frozenset(), False))
        participant.held = set(held)
        participant.audio = "audio" not in held
        participant.video = "video" not in held
        if straight_in:
            effects += self._seat(participant)
        else:
            self.waiting[participant.id] = participant
            summary = self._session_summary()
            effects += [_event(participant, AttendanceKind.WAITING),
                        self._to([participant], message(
                            "waiting", message=self._waiting_text(summary), session=summary)),
                        self._waiting_list(), self._roster()]
        return participant, effects

    def _session_summary(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.facts.title, "starts_at":
                self.facts.starts_at.isoformat(), "ends_at": self.ends_at.isoformat(),
                "timezone": self.facts.timezone,
                "therapist_present": any(p.is_therapist for p in self.participants.values())}

    def _seat(self, participant: Participant) -> list[Effect]:
        effects: list[Effect] = []
        if self.facts.status is SessionStatus.SCHEDULED:
            self.facts = replace(self.facts, status=SessionStatus.OPEN)
            effects.append(SaveStatus(SessionStatus.OPEN))
        participant.admitted = True
        self.participants[participant.id] = participant
        for_therapists = {"expected": self._expected()} if participant.is_therapist else {}
        effects += [
            _event(participant, AttendanceKind.ADMITTED),
            self._to([participant], message(
                "welcome", you=participant.public(),
                session={**self._session_summary(),
                         "remaining_seconds": self.remaining_seconds(), "locked": self.locked},
                participants=[p.public() for p in self.participants.values()
                              if p is not participant],
                caps={"width": self.settings.publish_width,
                      "height": self.settings.publish_height,
                      "fps": self.settings.publish_fps,
                      "max_bitrate": self.settings.publish_max_kbps * 1000},
                **for_therapists)),
            self._broadcast(message("participant-joined", participant=participant.public()),
                            exclude=participant),
            AddMedia(participant.id, participant.is_therapist),
            *(SetForwarding(participant.id, kind, False) for kind in sorted(participant.held)),
        ]
        space = self.spaces.get(participant.person.identity)
        partners = [p for p in self.participants.values()
                    if p is not participant and self.spaces.get(p.person.identity) == space]
        if space is not None and partners:  # back into the side room they were in
            effects += self._move([participant, *[p for p in partners if p.space != space]],
                                  space)
        if participant.is_therapist:
            if self.facts.waiting_room is WaitingRoomPolicy.AUTO_WITH_THERAPIST:
                for waiting in [w for w in self.waiting.values()
                                if w.person.role is Role.PATIENT]:
                    del self.waiting[waiting.id]
                    effects += self._seat(waiting)
            effects.append(self._waiting_list())
            effects += self._tell_waiting()
        else:
            effects.append(self._roster())
        return effects

    # --- leaving ----------------------------------------------------------------------------

    def _depart(self, participant: Participant, kind: AttendanceKind,
                close: VioError | None, **detail: Any) -> list[Effect]:
        """Take one connection out of the room or the waiting room, and say so to everyone."""
        was_in = self.participants.pop(participant.id, None) is not None
        was_waiting = self.waiting.pop(participant.id, None) is not None
        if not (was_in or was_waiting):
            return []
        if was_in and kind is AttendanceKind.DROPPED and not self.ended:
            self.dropped_at[participant.person.identity] = self.clock.now()
        effects: list[Effect] = [_event(participant, kind, **detail)]
        if close is not None:
            effects.append(Close(participant.outbox, close))
        if was_waiting:
            effects.append(self._waiting_list())
        if not (self.ended or participant.is_therapist):
            effects.append(self._roster())
        if was_in and participant.is_therapist and not any(
                p.is_therapist for p in self.participants.values()):
            effects += self._tell_waiting()
        if was_in:
            effects += [self._broadcast(message("participant-left",
                                                participant_id=participant.id)),
                        RemoveMedia(participant.id)]
            if participant.is_therapist and participant.space is not None:
                self.spaces.pop(participant.person.identity, None)
                effects += self._back_to_main(participant.space)
        return effects

    def disconnected(self, participant: Participant, reason: VioError) -> list[Effect]:
        """The connection closed (``left``: by the person's choice; anything else: dropped)."""
        if not self.is_current(participant):
            return []
        if reason.code == "left":
            return self._depart(participant, AttendanceKind.LEFT, None)
        return self._depart(participant, AttendanceKind.DROPPED, None, reason=reason.code)

    def leave(self, participant: Participant) -> list[Effect]:
        """The person pressed Leave."""
        if not self.is_current(participant):
            return []
        return self._depart(participant, AttendanceKind.LEFT,
                            Dropped("left", "You left the session."))

    def failed(self, participant_id: str, reason: VioError) -> list[Effect]:
        """Something the room could not do for this connection (a record, its media)."""
        participant = self.participants.get(participant_id) or self.waiting.get(participant_id)
        if participant is None:
            return []
        effects: list[Effect] = []
        if isinstance(reason, Refusal):
            effects.append(self._to([participant], message("refused", code=reason.code,
                                                           message=reason.message)))
        return effects + self._depart(participant, AttendanceKind.DROPPED, reason,
                                      reason=reason.code)

    def refused(self, person: Person, reason: Refusal) -> list[Effect]:
        """Someone who belongs here was kept out (a locked or full room, a removal): the
        attempt is recorded, and the therapists in the room see it."""
        if person.is_therapist or reason.code not in NOTED_REFUSALS:
            return []
        now = self.clock.now()
        attempt = Record(RoomEvent(AttendanceKind.REFUSED, person=person.identity,
                                   role=person.role.value, patient_id=person.patient_id,
                                   detail={"code": reason.code}))
        therapists = [p for p in self.participants.values() if p.is_therapist]
        return [attempt, self._to(therapists, message(
            "join-refused", name=person.name, role=person.role.value, code=reason.code,
            message=reason.message, at=now.isoformat()))]

    def remove_matching(self, which: Callable[[Person], bool], reason: Refusal,
                        keep_out: bool = True) -> list[Effect]:
        """Refuse and disconnect everyone (in the room or waiting) matching ``which``;
        ``keep_out``: they may not come back to this session (a revoked consent)."""
        effects: list[Effect] = []
        for p in [p for p in self.everyone() if which(p.person)]:
            if keep_out:
                self.removed.add(p.person.identity)
            effects.append(self._to([p], message("refused", code=reason.code,
                                                 message=reason.message)))
            effects += self._depart(p, AttendanceKind.REMOVED, reason, reason=reason.code)
        return effects

    def remove_connections(self, refused: dict[str, Refusal]) -> list[Effect]:
        """Refuse and disconnect these connections (by participant id), each for its reason:
        the re-check found that they no longer stand where they did when they came in. They
        may come back when the records let them."""
        effects: list[Effect] = []
        for participant_id, reason in refused.items():
            p = self.participants.get(participant_id) or self.waiting.get(participant_id)
            if p is None:
                continue
            effects.append(self._to([p], message("refused", code=reason.code,
                                                 message=reason.message)))
            effects += self._depart(p, AttendanceKind.REMOVED, reason, reason=reason.code)
        return effects

    # --- a participant's own messages -----------------------------------------------------

    def ping(self, participant: Participant) -> list[Effect]:
        return [self._to([participant], message("pong"))]

    def answer(self, participant: Participant, sdp: str) -> list[Effect]:
        return [AcceptAnswer(participant.id, sdp)]

    def media(self, participant: Participant, audio: bool, video: bool) -> list[Effect]:
        """The person's own microphone and camera buttons."""
        if audio and participant.mic_locked:
            raise NotAllowed("mic-locked", "The therapist has turned your microphone off for "
                                           "now; they can let you unmute.")
        effects: list[Effect] = []
        for kind, on in (("audio", audio), ("video", video)):
            if on and kind in participant.held:
                participant.held.discard(kind)
                effects.append(SetForwarding(participant.id, kind, True))
        participant.audio, participant.video = audio, video
        self._remember_holds(participant)
        return [*effects, self._broadcast(message(
            "media-state", participant_id=participant.id, audio=audio, video=video,
            mic_locked=participant.mic_locked))]

    def chat(self, participant: Participant, text: str, to: str) -> list[Effect]:
        out = message("chat", **{"from": participant.public()}, text=text.strip(), to=to,
                      at=self.clock.now().isoformat())
        if to == "room":
            readers = [p for p in self.participants.values() if p.space == participant.space]
        else:
            readers = [p for p in self.participants.values()
                       if p.is_therapist or p is participant]
        return [self._to(readers, out)]

    # --- a therapist's commands (every one audited) ------------------------------------------

    def _remember_holds(self, participant: Participant) -> None:
        if participant.held or participant.mic_locked:
            self.holds[participant.person.identity] = (frozenset(participant.held),
                                                       participant.mic_locked)
        else:
            self.holds.pop(participant.person.identity, None)

    def _seated(self, participant_id: str) -> Participant:
        target = self.participants.get(participant_id)
        if target is None:
            raise NotAllowed("no-such-participant", "That person is not in the room.")
        return target

    def _waiting_one(self, participant_id: str) -> Participant:
        waiting = self.waiting.get(participant_id)
        if waiting is None:
            raise NotAllowed("no-such-participant", "That person is no longer waiting.")
        return waiting

    def _audit(self, therapist: Participant, action: str, target: str, **detail: Any) -> Audit:
        return Audit(therapist.person.identity, action, target, {"session": self.id, **detail})

    def admit(self, therapist: Participant, participant_id: str) -> list[Effect]:
        waiting = self._waiting_one(participant_id)
        del self.waiting[waiting.id]
        return [self._audit(therapist, "admit", waiting.person.identity), *self._seat(waiting),
                self._waiting_list()]

    def admit_all(self, therapist: Participant) -> list[Effect]:
        everyone, effects = list(self.waiting.values()), []
        self.waiting.clear()
        for waiting in everyone:
            effects += [self._audit(therapist, "admit", waiting.person.identity),
                        *self._seat(waiting)]
        return [*effects, self._waiting_list()]

    def deny(self, therapist: Participant, participant_id: str) -> list[Effect]:
        waiting = self._waiting_one(participant_id)
        reason = refusal("denied")
        return [self._audit(therapist, "deny", waiting.person.identity),
                self._to([waiting], message("refused", code=reason.code,
                                            message=reason.message)),
                *self._depart(waiting, AttendanceKind.DENIED, reason)]

    def hold(self, therapist: Participant, participant_id: str, kind: str,
             lock: bool = False) -> list[Effect]:
        """Mute (``audio``) or stop the video of a participant; the server stops forwarding it."""
        target = self._seated(participant_id)
        if kind == "audio":
            target.audio = False
            target.mic_locked = target.mic_locked or lock
        else:
            target.video = False
        target.held.add(kind)
        self._remember_holds(target)
        action = "lock-mic" if lock else "mute" if kind == "audio" else "stop-video"
        return [self._audit(therapist, action, target.person.identity),
                SetForwarding(target.id, kind, False),
                self._to([target], message("moderated", action=action)),
                self._broadcast(message("media-state", participant_id=target.id,
                                        audio=target.audio, video=target.video,
                                        mic_locked=target.mic_locked))]

    def unlock_mic(self, therapist: Participant, participant_id: str) -> list[Effect]:
        """Let a participant unmute again (they turn the microphone on themselves)."""
        target = self._seated(participant_id)
        target.mic_locked = False
        self._remember_holds(target)
        return [self._audit(therapist, "unlock-mic", target.person.identity),
                self._to([target], message("moderated", action="unlock-mic")),
                self._broadcast(message("media-state", participant_id=target.id,
                                        audio=target.audio, video=target.video,
                                        mic_locked=False))]

    def remove(self, therapist: Participant, participant_id: str, reason: str) -> list[Effect]:
        target = self._seated(participant_id)
        if target.is_therapist:
            raise NotAllowed("not-allowed", "A therapist cannot be removed from the session.")
        self.removed.add(target.person.identity)
        why = refusal("removed")
        return [self._audit(therapist, "remove", target.person.identity, reason=reason.strip()),
                self._to([target], message("refused", code=why.code, message=why.message)),
                *self._depart(target, AttendanceKind.REMOVED, why, reason=reason.strip())]

    def set_locked(self, therapist: Participant, locked: bool) -> list[Effect]:
        self.locked = locked
        return [self._audit(therapist, "room-lock" if locked else "room-unlock",
                            f"session:{self.id}"),
                self._broadcast(message("room-state", locked=locked))]

    def extend(self, therapist: Participant, minutes: int) -> list[Effect]:
        most = self.settings.max_extend_minutes
        if minutes > most:
            raise NotAllowed("bad-extend", f"Extend by at most {most} minutes at a time.")
        new_end = self.ends_at + timedelta(minutes=minutes)
        self.facts = replace(self.facts, ends_at=new_end)
        now = self.clock.now()
        self.pending_warnings = sorted(self.settings.warning_minutes, reverse=True)
        # Warnings whose moment is already past for the new end are not given again.
        self.pending_warnings = [m for m in self.pending_warnings
                                 if new_end - timedelta(minutes=m) > now]
        return [SaveExtension(minutes, new_end),
                Record(RoomEvent(AttendanceKind.SESSION_EXTENDED, detail={
                    "minutes": minutes, "ends_at": new_end.isoformat(),
                    "by": therapist.person.identity})),
                self._audit(therapist, "session-extend", f"session:{self.id}", minutes=minutes,
                            ends_at=new_end.isoformat()),
                self._broadcast(message("time", ends_at=new_end.isoformat(),
                                        remaining_seconds=self.remaining_seconds()))]

    def end_by(self, therapist: Participant) -> list[Effect]:
        return [self._audit(therapist, "session-end", f"session:{self.id}"),
                *self.end("A therapist has ended this session.")]

    def safety_card(self, therapist: Participant, participant_id: str) -> list[Effect]:
        target = self._seated(participant_id)
        if target.person.role is not Role.PATIENT or target.person.patient_id is None:
            raise NotAllowed("no-safety-card", "Safety cards are kept for patients only.")
        return [ShowSafetyCard(therapist.outbox, therapist.person.identity, target.id,
                               target.name, target.person.patient_id)]

    def side_room(self, therapist: Participant, participant_id: str) -> list[Effect]:
        """Move a participant and the therapist into a private side room."""
        target = self._seated(participant_id)
        if target is therapist:
            raise NotAllowed("not-allowed", "Choose someone else to talk with privately.")
        if therapist.space is not None:
            raise NotAllowed("not-allowed", "Bring the side room back first.")
        space = f"side-{therapist.person.identity}"
        return [self._audit(therapist, "side-room", target.person.identity),
                *self._move([therapist, target], space)]

    def main_room(self, therapist: Participant, participant_id: str) -> list[Effect]:
        """Bring the therapist's side room back to the main room."""
        target = self._seated(participant_id)
        space = therapist.space or target.space
        if space is None:
            return []
        return [self._audit(therapist, "main-room", target.person.identity),
                *self._back_to_main(space)]

    def _back_to_main(self, space: str) -> list[Effect]:
        return self._move([p for p in self.participants.values() if p.space == space], None)

    def _move(self, moved: list[Participant], space: str | None) -> list[Effect]:
        effects: list[Effect] = []
        for p in moved:
            p.space = space
            if space is None:
                self.spaces.pop(p.person.identity, None)
            else:
                self.spaces[p.person.identity] = space
            effects += [SetSpace(p.id, space),
                        self._to([p], message("side-room", space=space,
                                              with_ids=[q.id for q in moved if q is not p]))]
        host = next((p for p in moved if p.is_therapist), None)
        return [*effects, self._broadcast(message(
            "side-room-state", participant_ids=[p.id for p in moved], active=space is not None,
            therapist_id=host.id if host else None))]

    # --- media and the clock ----------------------------------------------------------------

    def offer(self, participant_id: str, sdp: str, tracks: list[dict[str, str]]) -> list[Effect]:
        participant = self.participants.get(participant_id)
        if participant is None:
            return []
        return [self._to([participant], message("offer", sdp=sdp, tracks=tracks))]

    def speaking(self, participant_ids: list[str]) -> list[Effect]:
        return [self._broadcast(message("speaking", participant_ids=participant_ids))]

    def video_paused(self, participant_id: str, publisher_ids: list[str]) -> list[Effect]:
        """The videos the participant's connection cannot carry now (all of them, or none)."""
        participant = self.participants.get(participant_id)
        if participant is None:
            return []
        return [self._to([participant], message("video-paused", participant_ids=publisher_ids,
                                                reason="bandwidth"))]

    def media_arrived(self, participant_id: str, audio: bool, video: bool) -> list[Effect]:
        """What the server itself sees arriving: attendance evidence (audio-video or audio)."""
        participant = self.participants.get(participant_id)
        if participant is None:
            return []
        return [_event(participant, AttendanceKind.MEDIA, audio=audio, video=video)]

    def tick(self) -> list[Effect]:
        """Warnings at the configured offsets, a heartbeat now and then, and the hard end."""
        if self.ended:
            return []
        now = self.clock.now()
        remaining = self.ends_at - now
        effects: list[Effect] = []
        while self.pending_warnings and remaining <= timedelta(minutes=self.pending_warnings[0]):
            minutes = self.pending_warnings.pop(0)
            # A warning whose moment passed before the room opened is not sent late.
            if remaining > timedelta(minutes=minutes) - WARNING_TOLERANCE:
                effects.append(self._broadcast(message(
                    "warning", minutes_left=minutes,
                    message=f"This session ends in {_minutes(minutes)}.")))
        if remaining <= timedelta(0):
            return [*effects, *self.end("This session has ended.")]
        every = timedelta(seconds=self.settings.attendance_heartbeat_seconds)
        if self.last_heartbeat is None or now - self.last_heartbeat >= every:
            self.last_heartbeat = now
            if self.participants:
                effects.append(Record(RoomEvent(AttendanceKind.HEARTBEAT, detail={
                    "present": sorted(self.participants)})))
            sign_ins = sorted({p.person.sign_in_id for p in self.everyone()
                               if p.person.sign_in_id is not None})
            if sign_ins:
                effects.append(KeepSignedIn(tuple(sign_ins)))
        recheck = timedelta(seconds=self.settings.room_recheck_seconds)
        if self.last_recheck is None:
            self.last_recheck = now
        elif now - self.last_recheck >= recheck:
            self.last_recheck = now
            if self.everyone():
                effects.append(Recheck())
        return effects

    def end(self, why: str) -> list[Effect]:
        """End the session for everyone: record it, tell them, close connections and media."""
        if self.ended:
            return []
        self.ended = True
        everyone = self.everyone()
        self.participants.clear()
        self.waiting.clear()
        self.facts = replace(self.facts, status=SessionStatus.ENDED)
        reason = Dropped("ended", why)
        return [Record(RoomEvent(AttendanceKind.SESSION_ENDED, detail={
                    "present": [p.id for p in everyone if p.admitted]})),
                SaveStatus(SessionStatus.ENDED),
                self._to(everyone, message("ended", message=why)),
                *(Close(p.outbox, reason) for p in everyone),
                CloseMedia(), RoomClosed()]

    def shutdown(self, reason: Dropped | None = None) -> list[Effect]:
        """This server is stopping (or gives the room to another node): everyone drops, to
        reconnect elsewhere; the session goes on."""
        reason = reason or Dropped("server-restart", "The server is restarting; reconnecting.")
        effects: list[Effect] = []
        for p in self.everyone():
            effects += self._depart(p, AttendanceKind.DROPPED, reason, reason=reason.code)
        return [*effects, CloseMedia(), RoomClosed()]
