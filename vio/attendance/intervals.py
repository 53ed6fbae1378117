"""Attended time from one session's attendance log: pure arithmetic, no I/O.

The room appends the log (``vio.models.AttendanceEvent``); this module reads it back under these
rules:

- A connection is in the room from its ``admitted`` event until its ``left``, ``dropped`` or
  ``removed`` event, or the ``session-ended`` event that lists it as present. When none of
  those follows (the server stopped), it stays until the last ``heartbeat`` that lists it as
  present, or, with no such heartbeat, only at the moment it was admitted.
- Time in the waiting room is never attended time (DESIGN.md, "Telehealth records").
- A connection brings neither audio nor video until its first ``media`` event; each ``media``
  event says what reaches the server from then on.
- A person's attended time is the union over their connections (drops and rejoins, a second
  device), clipped to the session window, whose end includes extensions.
- At each moment a person is audio-video when their connections bring both audio and video,
  audio-only when audio arrives and video does not, and otherwise present without media: that
  counts as attended but as neither (modifier 95 vs 93).
- A therapist's hold is not the patient's modality. While a therapist holds back a person's
  video (``stop-video``) or microphone (``mute``, ``lock-mic``), that kind counts as still
  coming (if it was coming when the hold began), as long as the other one arrives: such time
  is audio-video held by a therapist (``Modality.HELD_BY_THERAPIST``), billed like
  audio-video (95), never turned into 93. A hold
  lasts until the person's own media of that kind reaches the server again (holds outlive a
  reconnect), or the session's end.

Events are taken in ``(at, id)`` order whatever order they arrive in, so the result depends only
on the set of events, and repeating an event changes nothing.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from vio.models import AttendanceKind

SECOND = timedelta(seconds=1)
SECONDS_PER_MINUTE = 60
PERCENT = 100
HOME = "home"

# Events that end one connection's time in the room.
LEAVING_KINDS = frozenset({AttendanceKind.LEFT, AttendanceKind.DROPPED, AttendanceKind.REMOVED})


class AttendanceStatus(enum.StrEnum):
    """A person's attendance at one session. Only a therapist's override makes it excused."""

    PRESENT = "present"  # attended at least the program's threshold of the scheduled time
    PARTIAL = "partial"  # attended some of it
    ABSENT = "absent"  # attended none of it
    EXCUSED = "excused"


class Modality(enum.StrEnum):
    """What reached the server from a person during a stretch of attended time."""

    AUDIO_VIDEO = "audio-video"
    AUDIO_ONLY = "audio-only"
    NO_MEDIA = "no-media"
    # Audio-video, except that a therapist held back the person's video or microphone.
    HELD_BY_THERAPIST = "held-by-therapist"


# Modalities with both audio and video on the record (modifier 95).
VIDEO_MODALITIES = frozenset({Modality.AUDIO_VIDEO, Modality.HELD_BY_THERAPIST})
# What the room audits when a therapist holds back one kind of a person's media.
HOLD_ACTIONS = {"stop-video": "video", "mute": "audio", "lock-mic": "audio"}


@dataclass(frozen=True)
class Event:
    """One row of the attendance log, as plain data (mirrors ``AttendanceEvent``)."""

    id: int
    session_id: int
    at: datetime
    kind: AttendanceKind
    person: str | None = None
    role: str | None = None
    connection: str | None = None
    patient_id: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Hold:
    """A therapist held back ``kind`` (``audio`` or ``video``) of ``person`` from ``at`` on."""

    at: datetime
    person: str
    kind: str
    by: str = ""


def _aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")


@dataclass(frozen=True, order=True)
class AttendanceInterval:
    """A stretch of time, start inclusive and end exclusive."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        _aware(self.start, "an interval's start")
        _aware(self.end, "an interval's end")

    @property
    def duration(self) -> timedelta:
        return max(self.end - self.start, timedelta(0))


@dataclass(frozen=True)
class SessionWindow:
    """When a session runs: its scheduled start to its end including any extensions."""

    starts_at: datetime
    ends_at: datetime

    def __post_init__(self) -> None:
        _aware(self.starts_at, "a session's start")
        _aware(self.ends_at, "a session's end")
        if self.ends_at < self.starts_at:
            raise ValueError("a session cannot end before it starts")

    @property
    def scheduled_seconds(self) -> int:
        return (self.ends_at - self.starts_at) // SECOND

    def extended_by(self, events: Iterable[Event]) -> SessionWindow:
        """The window, reaching to the latest end a ``session-extended`` event announced."""
        ends_at = self.ends_at
        for event in events:
            if event.kind is AttendanceKind.SESSION_EXTENDED:
                announced = _moment(event.detail.get("ends_at"))
                if announced is not None and announced > ends_at:
                    ends_at = announced
        return replace(self, ends_at=ends_at)


def _moment(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


@dataclass(frozen=True)
class MediaSpan:
    """A stretch of one person's attended time with one modality."""

    start: datetime
    end: datetime
    modality: Modality

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


@dataclass(frozen=True)
class CheckIn:
    """Where the patient said they were when they checked in (DESIGN.md, place of service)."""

    at: datetime
    location: str
    address: str = ""
    city: str = ""
    state: str = ""

    @property
    def at_home(self) -> bool:
        return self.location == HOME


def merge_intervals(intervals: Iterable[AttendanceInterval]) -> tuple[AttendanceInterval, ...]:
    """Overlapping and touching intervals joined, empty ones dropped, in time order."""
    merged: list[AttendanceInterval] = []
    for interval in sorted(i for i in intervals if i.start < i.end):
        if merged and interval.start <= merged[-1].end:
            if interval.end > merged[-1].end:
                merged[-1] = AttendanceInterval(merged[-1].start, interval.end)
        else:
            merged.append(interval)
    return tuple(merged)


def total_seconds(intervals: Iterable[AttendanceInterval]) -> int:
    """Whole seconds covered by already merged intervals."""
    return sum((i.duration for i in intervals), timedelta(0)) // SECOND


@dataclass(frozen=True)
class _Segment:
    """Part of one connection's time in the room with one media state."""

    start: datetime
    end: datetime
    audio: bool
    video: bool
    held_audio: bool = False
    held_video: bool = False


@dataclass
class _OpenConnection:
    """A connection in the room, while its log is being read."""

    admitted_at: datetime
    since: datetime
    audio: bool
    video: bool
    last_seen: datetime
    segments: list[_Segment] = field(default_factory=list)

    def cut(self, at: datetime) -> None:
        if at > self.since:
            self.segments.append(_Segment(self.since, at, self.audio, self.video))
            self.since = at

    def close(self, at: datetime) -> list[_Segment]:
        self.cut(at)
        return [_Segment(s.start, min(s.end, at), s.audio, s.video)
                for s in self.segments if s.start < at]


@dataclass
class _Person:
    role: str = ""
    patient_id: int | None = None
    segments: list[_Segment] = field(default_factory=list)
    check_in: CheckIn | None = None
    refused: list[tuple[datetime, str]] = field(default_factory=list)


def ordered(events: Iterable[Event]) -> list[Event]:
    return sorted(events, key=lambda e: (e.at, e.id))


def _read_log(events: Iterable[Event], as_of: datetime | None = None) -> dict[str, _Person]:
    people: dict[str, _Person] = defaultdict(_Person)
    owner: dict[str, str] = {}  # connection -> person
    media: dict[str, tuple[bool, bool]] = {}
    open_: dict[str, _OpenConnection] = {}

    def close(connection: str, at: datetime) -> None:
        people[owner[connection]].segments.extend(open_.pop(connection).close(at))

    for event in ordered(events):
        if event.person is not None:
            person = people[event.person]
            person.role = person.role or (event.role or "")
            if person.patient_id is None:
                person.patient_id = event.patient_id
            if event.connection is not None:
                owner.setdefault(event.connection, event.person)
        connection = event.connection
        if event.kind is AttendanceKind.CHECKED_IN and event.person is not None:
            people[event.person].check_in = CheckIn(
                at=event.at, location=str(event.detail.get("location", "")),
                address=str(event.detail.get("address", "")),
                city=str(event.detail.get("city", "")), state=str(event.detail.get("state", "")))
        elif event.kind is AttendanceKind.REFUSED and event.person is not None:
            people[event.person].refused.append((event.at, str(event.detail.get("code", ""))))
        elif event.kind is AttendanceKind.SESSION_ENDED:
            present = event.detail.get("present")
            for open_connection in list(open_):
                # A connection the ending room no longer held was lost in a crash: it ends at
                # its last sign of life, not at the end of the session.
                if not isinstance(present, list) or open_connection in present:
                    close(open_connection, event.at)
                else:
                    stale = open_[open_connection]
                    close(open_connection, max(stale.last_seen, stale.admitted_at))
        elif event.kind is AttendanceKind.HEARTBEAT:
            present = event.detail.get("present", [])
            for seen in present if isinstance(present, list) else []:
                if isinstance(seen, str) and seen in open_:
                    open_[seen].last_seen = event.at
        elif connection is None or connection not in owner:
            continue
        elif event.kind is AttendanceKind.ADMITTED and connection not in open_:
            audio, video = media.get(connection, (False, False))
            open_[connection] = _OpenConnection(event.at, event.at, audio, video, event.at)
        elif event.kind in LEAVING_KINDS and connection in open_:
            close(connection, event.at)
        elif event.kind is AttendanceKind.MEDIA:
            state = (event.detail.get("audio") is True, event.detail.get("video") is True)
            media[connection] = state
            if connection in open_:
                still_open = open_[connection]
                still_open.cut(event.at)
                still_open.audio, still_open.video = state
    for connection, still_open in list(open_.items()):
        close(connection, max(as_of or still_open.last_seen, still_open.admitted_at))
    return people


def needs_heartbeats(events: Iterable[Event]) -> bool:
    """Whether some connection is left in the room by these events (heartbeats settle it)."""
    in_room: set[str] = set()
    for event in ordered(events):
        if event.kind is AttendanceKind.SESSION_ENDED:
            present = event.detail.get("present")
            if not isinstance(present, list):
                in_room.clear()
            elif in_room - set(present):
                return True  # a connection lost in a crash: its heartbeats say when it ended
            else:
                in_room.clear()
        elif event.connection is None:
            continue
        elif event.kind is AttendanceKind.ADMITTED:
            in_room.add(event.connection)
        elif event.kind in LEAVING_KINDS:
            in_room.discard(event.connection)
    return bool(in_room)


def hold_intervals(events: Iterable[Event], holds: Iterable[Hold],
                   ) -> dict[str, list[tuple[str, AttendanceInterval | datetime]]]:
    """For each person, each hold as (kind, interval), or (kind, start) when it never ended.

    A hold counts only when that kind was reaching the server just before it (holding a camera
    that was already off changes nothing), and ends when the person's own media of that kind
    next reaches the server."""
    returned: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    media: dict[str, list[Event]] = defaultdict(list)
    for event in ordered(events):
        if event.kind is AttendanceKind.MEDIA and event.person is not None:
            media[event.person].append(event)
            for kind in ("audio", "video"):
                if event.detail.get(kind) is True:
                    returned[event.person].append((event.at, kind))
    result: dict[str, list[tuple[str, AttendanceInterval | datetime]]] = defaultdict(list)
    for hold in sorted(holds, key=lambda h: h.at):
        before = [e for e in media.get(hold.person, ()) if e.at < hold.at]
        if not before or before[-1].detail.get(hold.kind) is not True:
            continue
        back = min((at for at, kind in returned.get(hold.person, ())
                    if kind == hold.kind and at > hold.at), default=None)
        result[hold.person].append(
            (hold.kind, AttendanceInterval(hold.at, back) if back is not None else hold.at))
    return result


def _modality(audio: int, video: int, held_audio: int, held_video: int) -> Modality:
    if audio and video:
        return Modality.AUDIO_VIDEO
    if (audio or video) and (audio or held_audio) and (video or held_video):
        return Modality.HELD_BY_THERAPIST
    return Modality.AUDIO_ONLY if audio else Modality.NO_MEDIA


def _media_spans(segments: Iterable[_Segment], window: SessionWindow,
                 held: Iterable[tuple[str, AttendanceInterval | datetime]] = (),
                 ) -> tuple[MediaSpan, ...]:
    """Sweep one person's segments: at each moment, which modality their connections give,
    and which kinds a therapist holds back."""
    changes: dict[datetime, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for segment in segments:
        start, end = max(segment.start, window.starts_at), min(segment.end, window.ends_at)
        if start >= end:
            continue
        for at, sign in ((start, 1), (end, -1)):
            change = changes[at]
            change[0] += sign
            change[1] += sign * segment.audio
            change[2] += sign * segment.video
    for kind, span in held:
        slot = 3 if kind == "audio" else 4
        begins, ends = (span.start, span.end) if isinstance(span, AttendanceInterval) \
            else (span, window.ends_at)
        begins, ends = max(begins, window.starts_at), min(ends, window.ends_at)
        if begins < ends:
            changes[begins][slot] += 1
            changes[ends][slot] -= 1
    spans: list[MediaSpan] = []
    count = [0, 0, 0, 0, 0]
    previous: datetime | None = None
    for at in sorted(changes):
        if previous is not None and count[0] > 0:
            modality = _modality(*count[1:])
            if spans and spans[-1].end == previous and spans[-1].modality is modality:
                spans[-1] = MediaSpan(spans[-1].start, at, modality)
            else:
                spans.append(MediaSpan(previous, at, modality))
        count = [c + d for c, d in zip(count, changes[at], strict=True)]
        previous = at
    return tuple(spans)


@dataclass(frozen=True)
class PersonAttendance:
    """One person's attendance at one session, measured from the log."""

    person: str
    role: str
    patient_id: int | None
    window: SessionWindow
    intervals: tuple[AttendanceInterval, ...]
    spans: tuple[MediaSpan, ...]
    attended_seconds: int
    audio_video_seconds: int  # both kinds on the record, including time held by a therapist
    audio_only_seconds: int
    status: AttendanceStatus
    check_in: CheckIn | None = None
    # Attempts to join that were kept out (a locked room, say): when, and the refusal's code.
    refused: tuple[tuple[datetime, str], ...] = ()
    # Of ``audio_video_seconds``, the time a therapist held the person's video or microphone.
    held_seconds: int = 0

    @classmethod
    def absent(cls, person: str, role: str, patient_id: int | None,
               window: SessionWindow) -> PersonAttendance:
        """Someone expected at the session who never reached the room."""
        return cls(person=person, role=role, patient_id=patient_id, window=window, intervals=(),
                   spans=(), attended_seconds=0, audio_video_seconds=0, audio_only_seconds=0,
                   status=AttendanceStatus.ABSENT)

    @property
    def attended_minutes(self) -> int:
        return self.attended_seconds // SECONDS_PER_MINUTE

    @property
    def audio_video_minutes(self) -> int:
        return self.audio_video_seconds // SECONDS_PER_MINUTE

    @property
    def audio_only_minutes(self) -> int:
        return self.audio_only_seconds // SECONDS_PER_MINUTE

    @property
    def held_minutes(self) -> int:
        return self.held_seconds // SECONDS_PER_MINUTE

    @property
    def first_join(self) -> datetime | None:
        return self.intervals[0].start if self.intervals else None

    @property
    def last_leave(self) -> datetime | None:
        return self.intervals[-1].end if self.intervals else None

    @property
    def late_minutes(self) -> int | None:
        """Minutes after the scheduled start that the person first joined."""
        if self.first_join is None:
            return None
        return (self.first_join - self.window.starts_at) // SECOND // SECONDS_PER_MINUTE

    @property
    def early_departure_minutes(self) -> int | None:
        """Minutes before the (extended) end that the person last left."""
        if self.last_leave is None:
            return None
        return (self.window.ends_at - self.last_leave) // SECOND // SECONDS_PER_MINUTE


def status_for(attended_seconds: int, scheduled_seconds: int,
               present_threshold_percent: int) -> AttendanceStatus:
    """Present at or above the program's share of the scheduled time, partial below it."""
    if attended_seconds <= 0:
        return AttendanceStatus.ABSENT
    if attended_seconds * PERCENT >= present_threshold_percent * scheduled_seconds:
        return AttendanceStatus.PRESENT
    return AttendanceStatus.PARTIAL


def attendance_by_person(events: Iterable[Event], window: SessionWindow,
                         present_threshold_percent: int,
                         holds: Iterable[Hold] = (),
                         as_of: datetime | None = None) -> dict[str, PersonAttendance]:
    """Each person's attendance at one session, keyed by their identity (``patient:3``);
    ``holds`` are the therapists' holds of their media during it. ``as_of`` is for a session
    still running: connections still in the room count until then (the log so far)."""
    events = list(events)
    window = window.extended_by(events)
    held = hold_intervals(events, holds)
    result: dict[str, PersonAttendance] = {}
    for person, seen in sorted(_read_log(events, as_of).items()):
        spans = _media_spans(seen.segments, window, held.get(person, ()))
        intervals = merge_intervals(AttendanceInterval(s.start, s.end) for s in spans)
        attended = total_seconds(intervals)
        by_modality: dict[Modality, timedelta] = defaultdict(timedelta)
        for span in spans:
            by_modality[span.modality] += span.duration
        result[person] = PersonAttendance(
            person=person, role=seen.role, patient_id=seen.patient_id, window=window,
            intervals=intervals, spans=spans, attended_seconds=attended,
            audio_video_seconds=sum((by_modality[m] for m in VIDEO_MODALITIES),
                                    timedelta(0)) // SECOND,
            audio_only_seconds=by_modality[Modality.AUDIO_ONLY] // SECOND,
            status=status_for(attended, window.scheduled_seconds, present_threshold_percent),
            check_in=seen.check_in, refused=tuple(seen.refused),
            held_seconds=by_modality[Modality.HELD_BY_THERAPIST] // SECOND)
    return result


# --- who is where, while the session runs ----------------------------------------------------

class Presence(enum.StrEnum):
    """Where a person is at a live session, from the log so far (any node's room writes it)."""

    IN_ROOM = "in the room now"
    WAITING = "waiting"
    NOT_HERE = "not here yet"
    LEFT = "left"


def presence_now(events: Iterable[Event]) -> dict[str, Presence]:
    """Each person seen in the log: in the room (some connection admitted and not gone),
    waiting (some connection in the waiting room), or left. Persons never seen are not here
    yet; callers add them."""
    where: dict[str, dict[str, Presence]] = defaultdict(dict)  # person -> connection -> place
    for event in ordered(events):
        if event.kind is AttendanceKind.SESSION_ENDED:
            for connections in where.values():
                for connection in connections:
                    connections[connection] = Presence.LEFT
            continue
        if event.person is None or event.connection is None:
            continue
        if event.kind is AttendanceKind.WAITING:
            where[event.person][event.connection] = Presence.WAITING
        elif event.kind is AttendanceKind.ADMITTED:
            where[event.person][event.connection] = Presence.IN_ROOM
        elif (event.kind in LEAVING_KINDS or event.kind is AttendanceKind.DENIED) and \
                event.connection in where.get(event.person, {}):
            where[event.person][event.connection] = Presence.LEFT
    result: dict[str, Presence] = {}
    for person, places in where.items():
        seen = set(places.values())
        result[person] = (Presence.IN_ROOM if Presence.IN_ROOM in seen
                          else Presence.WAITING if Presence.WAITING in seen else Presence.LEFT)
    return result
