"""Every client message after ``join``, in one table: who may send it, and the transition it makes.

``handle`` checks the sender's standing (anyone connected, admitted to the room, or a therapist
of the session in the room), then calls the ``Room`` transition, which returns its effects.
The table's keys are exactly the protocol's client messages (``vio.protocol.CLIENT_MESSAGES``);
a test keeps the two in step.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from vio.errors import BadMessage, NotAllowed
from vio.protocol import ClientMessage
from vio.rooms.effects import Effect
from vio.rooms.room import Participant, Room


class Standing(enum.Enum):
    CONNECTED = "connected"  # waiting or in the room
    ADMITTED = "admitted"  # in the room
    THERAPIST = "therapist"  # a therapist of the session, in the room


Transition = Callable[[Room, Participant, ClientMessage], list[Effect]]


@dataclass(frozen=True)
class Handler:
    standing: Standing
    act: Transition


def _already_joined(room: Room, p: Participant, msg: ClientMessage) -> list[Effect]:
    raise BadMessage("already-joined", "You have already joined.")


C, A, T = Standing.CONNECTED, Standing.ADMITTED, Standing.THERAPIST

HANDLERS: dict[str, Handler] = {
    "join": Handler(C, _already_joined),
    "ping": Handler(C, lambda room, p, msg: room.ping(p)),
    "leave": Handler(C, lambda room, p, msg: room.leave(p)),
    "answer": Handler(A, lambda room, p, msg: room.answer(p, msg["sdp"])),
    "media": Handler(A, lambda room, p, msg: room.media(p, msg["audio"], msg["video"])),
    "chat": Handler(A, lambda room, p, msg: room.chat(p, msg["text"], msg["to"])),
    "admit": Handler(T, lambda room, p, msg: room.admit(p, msg["participant_id"])),
    "admit-all": Handler(T, lambda room, p, msg: room.admit_all(p)),
    "deny": Handler(T, lambda room, p, msg: room.deny(p, msg["participant_id"])),
    "mute": Handler(T, lambda room, p, msg: room.hold(p, msg["participant_id"], "audio")),
    "lock-mic": Handler(T, lambda room, p, msg: room.hold(p, msg["participant_id"], "audio",
                                                          lock=True)),
    "unlock-mic": Handler(T, lambda room, p, msg: room.unlock_mic(p, msg["participant_id"])),
    "stop-video": Handler(T, lambda room, p, msg: room.hold(p, msg["participant_id"], "video")),
    "remove": Handler(T, lambda room, p, msg: room.remove(p, msg["participant_id"],
                                                          msg["reason"])),
    "lock": Handler(T, lambda room, p, msg: room.set_locked(p, True)),
    "unlock": Handler(T, lambda room, p, msg: room.set_locked(p, False)),
    "extend": Handler(T, lambda room, p, msg: room.extend(p, msg["minutes"])),
    "end": Handler(T, lambda room, p, msg: room.end_by(p)),
    "safety-card": Handler(T, lambda room, p, msg: room.safety_card(p, msg["participant_id"])),
    "side-room": Handler(T, lambda room, p, msg: room.side_room(p, msg["participant_id"])),
    "main-room": Handler(T, lambda room, p, msg: room.main_room(p, msg["participant_id"])),
}


def handle(room: Room, participant: Participant, msg: ClientMessage) -> list[Effect]:
    """The effects of one validated message, or ``BadMessage``/``NotAllowed`` (nothing changed)."""
    handler = HANDLERS.get(msg.type)
    if handler is None:
        raise BadMessage("unknown-type", f"Unknown message type {msg.type[:40]!r}.")
    if not room.is_current(participant):
        return []
    if handler.standing is Standing.THERAPIST and not participant.is_therapist:
        raise NotAllowed("not-allowed", "Only the session's therapists can do that.")
    if handler.standing is not Standing.CONNECTED and not participant.admitted:
        raise NotAllowed("waiting", "Please wait until a therapist lets you in.")
    return handler.act(room, participant, msg)
