"""What a room transition asks the world to do, carried out in order by the room's runner.

A ``Room`` transition changes state and returns a list of these; ``vio.rooms.live`` carries
them out one after another. Writes come before the sends that acknowledge them: a ``Record``
that fails skips the acknowledgements after it in its list (``Send``, ``AddMedia``) and the
person it concerns is taken out of the room, so nothing is acknowledged that was not recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vio.errors import VioError
from vio.models import AttendanceKind, SessionStatus
from vio.rooms.outbox import Outbox


@dataclass(frozen=True)
class RoomEvent:
    """One attendance event as the room sees it (see ``vio.models.AttendanceEvent``)."""

    kind: AttendanceKind
    person: str | None = None
    role: str | None = None
    connection: str | None = None
    patient_id: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Send:
    """Queue ``message`` for each of ``to`` (a closed outbox takes nothing)."""

    to: tuple[Outbox, ...]
    message: dict[str, Any]


@dataclass(frozen=True, eq=False)
class Close:
    """Close one connection for ``reason``, after what is already queued for it."""

    outbox: Outbox
    reason: VioError


@dataclass(frozen=True)
class Record:
    """Append an attendance event and commit it."""

    event: RoomEvent


@dataclass(frozen=True)
class Audit:
    """Append an audit event: who did what to whom."""

    actor: str
    action: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SaveStatus:
    status: SessionStatus


@dataclass(frozen=True)
class SaveExtension:
    """The session's end moved later by ``minutes`` (to ``ends_at``)."""

    minutes: int
    ends_at: datetime


@dataclass(frozen=True)
class AddMedia:
    participant_id: str
    is_therapist: bool


@dataclass(frozen=True)
class RemoveMedia:
    participant_id: str


@dataclass(frozen=True)
class AcceptAnswer:
    participant_id: str
    sdp: str


@dataclass(frozen=True)
class SetSpace:
    """Media flows only between participants of one space (``None``: the main room)."""

    participant_id: str
    space: str | None


@dataclass(frozen=True)
class SetForwarding:
    """Forward (or hold back) one participant's audio or video, whatever their client sends."""

    participant_id: str
    kind: str
    allowed: bool


@dataclass(frozen=True, eq=False)
class ShowSafetyCard:
    """Read a patient's safety card (the look is audited) and send it to one therapist."""

    to: Outbox
    actor: str
    participant_id: str
    name: str
    patient_id: int


@dataclass(frozen=True)
class KeepSignedIn:
    """These sign-ins hold live room connections: they count as active now (a therapist in a
    three-hour group is not signed out for idling, and is still signed in when it ends)."""

    sign_in_ids: tuple[int, ...]


@dataclass(frozen=True)
class Recheck:
    """Look up again whether everyone here still stands where they did when they came in (a
    sign-in ended, a consent or link revoked, an account turned off) and remove who does not."""


@dataclass(frozen=True)
class CloseMedia:
    """Close every media connection of the room."""


@dataclass(frozen=True)
class RoomClosed:
    """The room is over; the directory forgets it and the runner stops."""


Effect = (Send | Close | Record | Audit | SaveStatus | SaveExtension | AddMedia | RemoveMedia
          | AcceptAnswer | SetSpace | SetForwarding | ShowSafetyCard | KeepSignedIn | Recheck
          | CloseMedia | RoomClosed)
