"""Attended time from the room's log: worked examples, then properties over random logs."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from vio.attendance.intervals import (
    AttendanceInterval,
    AttendanceStatus,
    Event,
    Modality,
    SessionWindow,
    attendance_by_person,
    merge_intervals,
    needs_heartbeats,
)
from vio.models import AttendanceKind as K

START = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)  # 6 pm in Chicago
SESSION_MINUTES = 180
WINDOW = SessionWindow(START, START + timedelta(minutes=SESSION_MINUTES))
THRESHOLD = 75


def at(minute: float) -> datetime:
    return START + timedelta(minutes=minute)


class Log:
    """Builds a log the way the room writes it, with increasing ids."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, minute: float, kind: K, person: str | None = None,
            connection: str | None = None, role: str | None = None, **detail: object) -> Log:
        if person is not None and role is None:
            role = person.split(":")[0].replace("staff", "therapist").replace(
                "family-invite", "family")
        patient_id = int(person.split(":")[1]) if person and person.startswith("patient") \
            else None
        self.events.append(Event(id=len(self.events) + 1, session_id=1, at=at(minute),
                                 kind=kind, person=person, role=role, connection=connection,
                                 patient_id=patient_id, detail=detail))
        return self

    def stay(self, person: str, connection: str, start: float, end: float | None,
             audio: bool = True, video: bool = True, leave: K = K.LEFT) -> Log:
        self.add(start, K.ADMITTED, person, connection)
        self.add(start, K.MEDIA, person, connection, audio=audio, video=video)
        if end is not None:
            self.add(end, leave, person, connection)
        return self

    def measure(self, window: SessionWindow = WINDOW) -> dict[str, object]:
        return attendance_by_person(self.events, window, THRESHOLD)  # type: ignore[return-value]


def minutes(seconds: int) -> float:
    return seconds / 60


def test_waiting_room_time_is_not_attended():
    log = Log().add(-10, K.CHECKED_IN, "patient:1", "p-a", location="home") \
        .add(-10, K.WAITING, "patient:1", "p-a").stay("patient:1", "p-a", 20, 180)
    person = log.measure()["patient:1"]
    assert minutes(person.attended_seconds) == 160
    assert person.first_join == at(20) and person.late_minutes == 20
    assert person.status is AttendanceStatus.PRESENT  # 160 of 180 minutes is over 75 %
    assert person.check_in is not None and person.check_in.at_home


def test_present_partial_absent_by_threshold():
    log = Log().stay("patient:1", "p-a", 0, 135).stay("patient:2", "p-b", 0, 134) \
        .add(0, K.WAITING, "patient:3", "p-c").add(5, K.DENIED, "patient:3", "p-c")
    people = log.measure()
    assert people["patient:1"].status is AttendanceStatus.PRESENT  # 135 / 180 = 75 %
    assert people["patient:2"].status is AttendanceStatus.PARTIAL
    assert people["patient:3"].status is AttendanceStatus.ABSENT
    assert people["patient:3"].attended_seconds == 0


def test_drops_and_a_second_device_merge():
    log = (Log().stay("patient:1", "p-a", 0, 60, leave=K.DROPPED)
           .stay("patient:1", "p-b", 65, 180)
           .stay("patient:1", "p-c", 100, 120, audio=True, video=False))  # phone as well
    person = log.measure()["patient:1"]
    assert person.intervals == (AttendanceInterval(at(0), at(60)),
                                AttendanceInterval(at(65), at(180)))
    assert minutes(person.attended_seconds) == 175
    assert minutes(person.audio_video_seconds) == 175
    assert person.status is AttendanceStatus.PRESENT


def test_modality_follows_media_events_and_starts_silent():
    log = Log().add(0, K.ADMITTED, "patient:1", "p-a") \
        .add(10, K.MEDIA, "patient:1", "p-a", audio=True, video=True) \
        .add(70, K.MEDIA, "patient:1", "p-a", audio=True, video=False) \
        .add(100, K.MEDIA, "patient:1", "p-a", audio=False, video=True) \
        .add(120, K.LEFT, "patient:1", "p-a")
    person = log.measure()["patient:1"]
    assert minutes(person.attended_seconds) == 120
    assert minutes(person.audio_video_seconds) == 60
    assert minutes(person.audio_only_seconds) == 30
    assert [s.modality for s in person.spans] == [
        Modality.NO_MEDIA, Modality.AUDIO_VIDEO, Modality.AUDIO_ONLY, Modality.NO_MEDIA]


def test_audio_from_one_device_and_video_from_another_is_audio_video():
    log = Log().stay("patient:1", "p-a", 0, 60, audio=True, video=False) \
        .stay("patient:1", "p-b", 30, 60, audio=False, video=True)
    person = log.measure()["patient:1"]
    assert minutes(person.audio_video_seconds) == 30
    assert minutes(person.audio_only_seconds) == 30


def test_time_is_clipped_to_the_window_and_extensions_count():
    log = Log().stay("patient:1", "p-a", -15, 200)
    assert minutes(log.measure()["patient:1"].attended_seconds) == SESSION_MINUTES
    log.add(170, K.SESSION_EXTENDED, minutes=15, ends_at=at(195).isoformat())
    person = log.measure()["patient:1"]
    assert minutes(person.attended_seconds) == 195
    assert person.window.ends_at == at(195)
    assert person.early_departure_minutes == 0


def test_session_end_closes_everyone_still_in_the_room():
    log = Log().stay("staff:1", "p-t", 0, None).stay("patient:1", "p-a", 5, None) \
        .add(150, K.SESSION_ENDED)
    people = log.measure()
    assert minutes(people["staff:1"].attended_seconds) == 150
    assert minutes(people["patient:1"].attended_seconds) == 145
    assert people["patient:1"].early_departure_minutes == 30
    assert not needs_heartbeats(log.events)


def test_after_a_crash_time_runs_to_the_last_heartbeat_that_saw_the_connection():
    log = Log().stay("patient:1", "p-a", 0, None).stay("patient:2", "p-b", 0, None)
    assert needs_heartbeats(log.events)
    log.add(30, K.HEARTBEAT, present=["p-a", "p-b"]).add(45, K.HEARTBEAT, present=["p-a"])
    log.add(50, K.MEDIA, "patient:1", "p-a", audio=True, video=False)  # after the last beat
    people = log.measure()
    assert minutes(people["patient:1"].attended_seconds) == 45
    assert minutes(people["patient:1"].audio_only_seconds) == 0
    assert minutes(people["patient:2"].attended_seconds) == 30
    lonely = Log().stay("patient:3", "p-c", 10, None).measure()["patient:3"]
    assert lonely.attended_seconds == 0  # no heartbeat: only the admitted moment


def test_a_connection_lost_in_a_crash_is_not_credited_to_the_restarted_rooms_end():
    log = Log().stay("patient:1", "p-a", 0, None).add(20, K.HEARTBEAT, present=["p-a"])
    # The server crashed after minute 20; the restarted room held only p-b when it ended.
    log.stay("patient:2", "p-b", 40, None).add(180, K.SESSION_ENDED, present=["p-b"])
    assert needs_heartbeats(log.events)
    people = log.measure()
    assert minutes(people["patient:1"].attended_seconds) == 20
    assert minutes(people["patient:2"].attended_seconds) == 140


def test_latest_check_in_wins():
    log = Log().add(-5, K.CHECKED_IN, "patient:1", "p-a", location="home", city="Austin") \
        .add(60, K.CHECKED_IN, "patient:1", "p-b", location="other", city="Dallas",
             state="TX", address="1 Main St")
    check_in = log.measure()["patient:1"].check_in
    assert check_in is not None and check_in.location == "other" and check_in.city == "Dallas"
    assert not check_in.at_home


def test_window_refuses_naive_times():
    import pytest

    with pytest.raises(ValueError):
        SessionWindow(datetime(2026, 11, 24), datetime(2026, 11, 24, 3))


# --- properties ------------------------------------------------------------------------------

PEOPLE = ["patient:1", "patient:2", "staff:9", "family-invite:4"]
CONNECTIONS = {person: [f"p-{n}{i}" for i in range(3)] for n, person in enumerate(PEOPLE)}
PERSON_KINDS = [K.WAITING, K.ADMITTED, K.ADMITTED, K.LEFT, K.DROPPED, K.REMOVED, K.DENIED,
                K.MEDIA, K.MEDIA, K.CHECKED_IN]
MINUTE = st.integers(min_value=-60, max_value=SESSION_MINUTES + 60)


@st.composite
def person_event(draw: st.DrawFn) -> tuple[float, K, str | None, str | None, dict[str, object]]:
    person = draw(st.sampled_from(PEOPLE))
    connection = draw(st.sampled_from(CONNECTIONS[person]))
    kind = draw(st.sampled_from(PERSON_KINDS))
    detail: dict[str, object] = {}
    if kind is K.MEDIA:
        detail = {"audio": draw(st.booleans()), "video": draw(st.booleans())}
    elif kind is K.CHECKED_IN:
        detail = {"location": draw(st.sampled_from(["home", "other"]))}
    return draw(MINUTE), kind, person, connection, detail


@st.composite
def session_event(draw: st.DrawFn) -> tuple[float, K, str | None, str | None, dict[str, object]]:
    kind = draw(st.sampled_from([K.HEARTBEAT, K.HEARTBEAT, K.SESSION_ENDED,
                                 K.SESSION_EXTENDED]))
    minute = draw(MINUTE)
    detail: dict[str, object] = {}
    if kind is K.HEARTBEAT:
        every = [c for cs in CONNECTIONS.values() for c in cs]
        detail = {"present": draw(st.lists(st.sampled_from(every), unique=True))}
    elif kind is K.SESSION_EXTENDED:
        extra = draw(st.integers(min_value=5, max_value=30))
        detail = {"minutes": extra, "ends_at": at(SESSION_MINUTES + extra).isoformat()}
    return minute, kind, None, None, detail


@st.composite
def stay(draw: st.DrawFn) -> list[tuple[float, K, str | None, str | None, dict[str, object]]]:
    """A connection's visit: admitted, media changes, and (usually) a way out."""
    person = draw(st.sampled_from(PEOPLE))
    connection = draw(st.sampled_from(CONNECTIONS[person]))
    moments = sorted(draw(st.lists(MINUTE, min_size=2, max_size=5)))
    events = [(moments[0], K.ADMITTED, person, connection, {})]
    for moment in moments[1:-1]:
        events.append((moment, K.MEDIA, person, connection,
                       {"audio": draw(st.booleans()), "video": draw(st.booleans())}))
    leave = draw(st.sampled_from([K.LEFT, K.DROPPED, K.REMOVED, None]))
    if leave is not None:
        events.append((moments[-1], leave, person, connection, {}))
    return events


LOGS = st.lists(st.one_of(stay(), st.lists(person_event(), max_size=3),
                          st.lists(session_event(), max_size=2)),
                max_size=12).map(lambda parts: [e for part in parts for e in part])


def build(raw: list[tuple[float, K, str | None, str | None, dict[str, object]]]) -> list[Event]:
    log = Log()
    for minute, kind, person, connection, detail in raw:
        log.add(minute, kind, person, connection, **detail)
    return log.events


def measure(events: list[Event]) -> dict[str, object]:
    return attendance_by_person(events, WINDOW, THRESHOLD)  # type: ignore[return-value]


@given(LOGS)
def test_attended_time_never_exceeds_the_window(raw):
    for person in measure(build(raw)).values():
        window = person.window
        assert person.attended_seconds <= window.scheduled_seconds
        for interval in person.intervals:
            assert window.starts_at <= interval.start < interval.end <= window.ends_at


@given(LOGS)
def test_av_and_audio_only_never_exceed_attended(raw):
    for person in measure(build(raw)).values():
        assert person.audio_video_seconds + person.audio_only_seconds <= person.attended_seconds
        assert sum((s.duration for s in person.spans), timedelta(0)) == sum(
            (i.duration for i in person.intervals), timedelta(0))


@given(LOGS, st.randoms(use_true_random=False))
def test_result_is_independent_of_event_order(raw, rng: random.Random):
    events = build(raw)
    shuffled = list(events)
    rng.shuffle(shuffled)
    assert measure(shuffled) == measure(events)


@given(LOGS)
def test_repeating_every_event_changes_nothing(raw):
    events = build(raw)
    twice = [Event(id=2 * e.id + copy, session_id=e.session_id, at=e.at, kind=e.kind,
                   person=e.person, role=e.role, connection=e.connection,
                   patient_id=e.patient_id, detail=e.detail)
             for e in events for copy in (0, 1)]
    assert measure(twice) == measure(events)


@given(LOGS, st.lists(st.tuples(st.sampled_from(PEOPLE), MINUTE), max_size=10))
def test_waiting_never_counts(raw, waits):
    events = build(raw)
    before = measure(events)
    extra = Log()
    extra.events = list(events)
    for person, minute in waits:
        for connection in CONNECTIONS[person]:
            extra.add(minute, K.WAITING, person, connection)
    after = measure(extra.events)
    for person, measured in before.items():
        assert after[person] == measured
    for person in set(after) - set(before):
        assert after[person].attended_seconds == 0


@given(LOGS)
def test_only_the_waiting_room_is_absent(raw):
    events = [e for e in build(raw) if e.kind is not K.ADMITTED]
    assert all(p.attended_seconds == 0 for p in measure(events).values())


INTERVALS = st.lists(st.tuples(MINUTE, MINUTE).map(
    lambda pair: AttendanceInterval(at(min(pair)), at(max(pair)))), max_size=20)


@given(INTERVALS)
@settings(max_examples=200)
def test_merging_is_idempotent_and_keeps_every_moment(intervals):
    merged = merge_intervals(intervals)
    assert merge_intervals(merged) == merged
    assert merge_intervals(reversed(intervals)) == merged
    for earlier, later in itertools.pairwise(merged):
        assert earlier.end < later.start
    for interval in intervals:
        if interval.start < interval.end:
            assert any(m.start <= interval.start and interval.end <= m.end for m in merged)


def test_a_refused_attempt_is_on_the_record_and_counts_no_time():
    log = Log()
    log.add(5, K.REFUSED, "patient:4", code="room-locked")
    log.add(9, K.REFUSED, "patient:4", code="room-locked")
    (dana,) = attendance_by_person(log.events, WINDOW, THRESHOLD).values()
    assert dana.refused == ((at(5), "room-locked"), (at(9), "room-locked"))
    assert dana.attended_seconds == 0 and dana.status is AttendanceStatus.ABSENT
