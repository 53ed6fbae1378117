"""Route one validated message to the room, or to a therapist's command."""

from __future__ import annotations

from vio.errors import NotAllowed
from vio.protocol import MODERATOR_MESSAGES, ClientMessage
from vio.rooms import moderation
from vio.rooms.room import Participant, Room


async def handle(room: Room, participant: Participant, msg: ClientMessage) -> None:
    if msg.type in MODERATOR_MESSAGES:
        if not (participant.is_therapist and participant.admitted):
            raise NotAllowed("not-allowed", "Only the session's therapists can do that.")
        await moderation.COMMANDS[msg.type](room, participant, msg)
    else:
        await room.handle(participant, msg)
