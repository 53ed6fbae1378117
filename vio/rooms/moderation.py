"""What a therapist can do in a room. The room checks the role; these act and audit.

Every command here is audited (who, what, whom, when) through the room's store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta

from vio.errors import NotAllowed, Refusal
from vio.models import AttendanceKind
from vio.protocol import ClientMessage, message
from vio.rooms.admission import Role
from vio.rooms.room import Participant, Room, RoomEvent


def _in_room(room: Room, participant_id: str) -> Participant:
    target = room.participants.get(participant_id)
    if target is None:
        raise NotAllowed("no-such-participant", "That person is not in the room.")
    return target


def _waiting(room: Room, participant_id: str) -> Participant:
    waiting = room.waiting.get(participant_id)
    if waiting is None:
        raise NotAllowed("no-such-participant", "That person is no longer waiting.")
    return waiting


async def admit(room: Room, therapist: Participant, msg: ClientMessage) -> None:
    waiting = _waiting(room, msg["participant_id"])
    del room.waiting[waiting.id]
    await room.store.audit(therapist.person.identity, "admit", waiting.person.identity,
                           session=room.id)
    await room.enter(waiting)
    room.send_waiting_list()


async def admit_all(room: Room, therapist: Participant, msg: ClientMessage) -> None:
    everyone = list(room.waiting.values())
    room.waiting.clear()
    for waiting in everyone:
        await room.store.audit(therapist.person.identity, "admit", waiting.person.identity,
                               session=room.id)
        await room.enter(waiting)
    room.send_waiting_list()


async def deny(room: Room, therapist: Participant, msg: ClientMessage) -> None:
    waiting = _waiting(room, msg["participant_id"])
    del room.waiting[waiting.id]
    await room.store.audit(therapist.person.identity, "deny", waiting.person.identity,
                           session=room.id)
    await room.store.record(room.id, RoomEvent.about(waiting, AttendanceKind.DENIED))
    waiting.send(message("refused", code="denied",
                         message="The therapist could not let you in this time."))
    waiting.outbox.close(Refusal("denied", "Not admitted."))
    room.send_waiting_list()


async def _media_off(room: Room, therapist: Participant, msg: ClientMessage) -> None:
    target = _in_room(room, msg["participant_id"])
    if msg.type == "mute":
        target.audio = False
    else:
        target.video = False
    target.send(message("moderated", action=msg.type))
    room.broadcast(message("media-state", participant_id=target.id, audio=target.audio,
                           video=target.video))
    await room.store.audit(therapist.person.identity, msg.type, target.person.identity,
                           session=room.id)


async def remove(room: Room, therapist: Participant, msg: ClientMessage) -> None:
    target = _in_room(room, msg["participant_id"])
    if target.is_therapist:
        raise NotAllowed("not-allowed", "A therapist cannot be removed from the session.")
    reason = msg["reason"].strip()
    room.removed.add(target.person.identity)
    await room.store.audit(therapist.person.identity, "remove", target.person.identity,
                           session=room.id, reason=reason)
    target.send(message("refused", code="removed",
                        message="A therapist has removed you from this session."))
    target.outbox.close(Refusal("removed", "Removed by a therapist."))
    await room.leave(target, dropped=False, kind=AttendanceKind.REMOVED, reason=reason)


async def lock(room: Room, therapist: Participant, msg: ClientMessage) -> None:
    room.locked = msg.type == "lock"
    room.broadcast(message("room-state", locked=room.locked))
    await room.store.audit(therapist.person.identity, f"room-{msg.type}", f"session:{room.id}")


async def extend(room: Room, therapist: Participant, msg: ClientMessage) -> None:
    minutes = msg["minutes"]
    if minutes > room.settings.max_extend_minutes:
        raise NotAllowed("bad-extend", "Extend by at most "
                         f"{room.settings.max_extend_minutes} minutes at a time.")
    new_end = room.ends_at + timedelta(minutes=minutes)
    room.facts = replace(room.facts, ends_at=new_end)
    room.rearm_warnings()
    await room.store.extend(room.id, minutes)
    await room.store.record(room.id, RoomEvent(AttendanceKind.SESSION_EXTENDED, detail={
        "minutes": minutes, "ends_at": new_end.isoformat(), "by": therapist.person.identity}))
    await room.store.audit(therapist.person.identity, "session-extend", f"session:{room.id}",
                           minutes=minutes, ends_at=new_end.isoformat())
    room.broadcast(message("time", ends_at=new_end.isoformat(),
                           remaining_seconds=room.remaining_seconds()))


async def end(room: Room, therapist: Participant, msg: ClientMessage) -> None:
    await room.store.audit(therapist.person.identity, "session-end", f"session:{room.id}")
    await room.end("A therapist has ended this session.")


async def safety_card(room: Room, therapist: Participant, msg: ClientMessage) -> None:
    target = _in_room(room, msg["participant_id"])
    if target.person.role is not Role.PATIENT or target.person.patient_id is None:
        raise NotAllowed("no-safety-card", "Safety cards are kept for patients only.")
    card = await room.store.safety_card(room.id, target.person.patient_id,
                                        therapist.person.identity)
    therapist.send(message("safety-card", participant_id=target.id, name=target.name, **card))


async def side_room(room: Room, therapist: Participant, msg: ClientMessage) -> None:
    """Move a participant and the therapist into a private side room, or both back."""
    target = _in_room(room, msg["participant_id"])
    if msg.type == "side-room":
        space = f"side-{therapist.id}"
        moved = [therapist, target]
    else:
        space = None
        moved = [p for p in room.participants.values()
                 if p.space is not None and p.space == therapist.space]
        moved = moved or [therapist, target]
    for p in moved:
        p.space = space
        room.media.set_space(p.id, space)
        p.send(message("side-room", space=space,
                       with_ids=[q.id for q in moved if q is not p]))
    await room.store.audit(therapist.person.identity, msg.type, target.person.identity,
                           session=room.id)


COMMANDS: dict[str, Callable[[Room, Participant, ClientMessage], Awaitable[None]]] = {
    "admit": admit,
    "admit-all": admit_all,
    "deny": deny,
    "mute": _media_off,
    "stop-video": _media_off,
    "remove": remove,
    "lock": lock,
    "unlock": lock,
    "extend": extend,
    "end": end,
    "safety-card": safety_card,
    "side-room": side_room,
    "main-room": side_room,
}
