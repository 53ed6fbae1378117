"""Attendance bench: seed a large program, then time the weekly dosage report and the exports.

By default 1,000 patients in groups of 10, each group meeting four evenings a week for 12 weeks
(48,000 patient-sessions), with the log a room writes: check-in, waiting, admission, media,
leaving, some drops and rejoins, audio-only patients, heartbeats, and a few sessions whose
server stopped (no leave, no end: heartbeats decide). Rows go straight in with bulk inserts, into
a temporary SQLite file or, with ``--postgres URL``, a fresh database made on that server and
dropped afterwards.

Each figure is also given as a ratio to a baseline timed in the same process: fetching the raw
log rows (without heartbeats) of the week's sessions, the least any report must do.

    .venv/bin/python bench/attendance.py            # the full size
    .venv/bin/python bench/attendance.py --quick    # a small size, well under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from vio.attendance.dosage import IsoWeek
from vio.attendance.export import ExportFormat, export_attendance
from vio.attendance.records import patient_dosage, program_week_dosage
from vio.db import create_engine, migrate, session_factory
from vio.keys import InstallKeys
from vio.models import (
    AgeGroup,
    AttendanceEvent,
    AttendanceKind,
    Group,
    GroupTherapist,
    LevelOfCare,
    Patient,
    Program,
    RosterMembership,
    Session,
    SessionKind,
    SessionStatus,
    SessionTherapist,
    StaffRole,
    StaffUser,
)

TIMEZONE = "America/Chicago"
FIRST_MONDAY = date(2026, 9, 7)  # the twelve weeks cross the end of daylight saving time
SESSION_START = clock_time(18, 0)
SESSION_MINUTES = 180
WEEKDAYS = (0, 1, 2, 3)  # Monday to Thursday
ROWS_PER_INSERT = 20_000
FULL = {"patients": 1000, "weeks": 12, "group_size": 10}
QUICK = {"patients": 60, "weeks": 3, "group_size": 10}
HEARTBEAT_SECONDS = 15.0  # the room's default (VIO_ATTENDANCE_HEARTBEAT_SECONDS)
# How patients turn up, as shares of patient-sessions.
ABSENT, LATE, DROP_AND_REJOIN, AUDIO_ONLY, LEAVES_EARLY = 0.10, 0.08, 0.05, 0.04, 0.05
WAITS_FIRST = 0.30
SERVER_STOPPED = 0.01  # sessions with no leave and no end event

T = TypeVar("T")

# The benchmark's own install keys (its databases are thrown away).
BENCH_KEYS = InstallKeys.derive("benchmark")


@dataclass(frozen=True)
class Size:
    patients: int
    weeks: int
    group_size: int

    @property
    def groups(self) -> int:
        return -(-self.patients // self.group_size)


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), ROWS_PER_INSERT):
        yield rows[start:start + ROWS_PER_INSERT]


class Seeder:
    """Writes the program and its log with explicit ids, table by table."""

    def __init__(self, engine: AsyncEngine, size: Size, heartbeat_seconds: float,
                 rng: random.Random) -> None:
        self.engine = engine
        self.size = size
        self.heartbeat = timedelta(seconds=heartbeat_seconds)
        self.rng = rng
        self.event_id = 0
        self.events: list[dict[str, Any]] = []
        self.counts = {"sessions": 0, "events": 0, "heartbeats": 0}

    async def put(self, table: Any, rows: list[dict[str, Any]]) -> None:
        async with self.engine.begin() as conn:
            for chunk in _chunks(rows):
                await conn.execute(insert(table), chunk)

    def event(self, session_id: int, at: datetime, kind: AttendanceKind,
              who: tuple[str, str, int | None] | None = None, connection: str | None = None,
              **detail: Any) -> None:
        person, role, patient_id = who or (None, None, None)
        self.event_id += 1
        self.events.append({"id": self.event_id, "session_id": session_id, "at": at,
                            "kind": kind, "person": person, "role": role,
                            "connection": connection, "patient_id": patient_id,
                            "detail": detail})
        self.counts["events"] += 1

    async def flush_events(self, force: bool = False) -> None:
        if self.events and (force or len(self.events) >= ROWS_PER_INSERT * 5):
            await self.put(AttendanceEvent.__table__, self.events)
            self.events = []

    async def seed(self) -> int:
        size, zone = self.size, ZoneInfo(TIMEZONE)
        await self.put(Program.__table__, [{"id": 1, "name": "Bench IOP", "timezone": TIMEZONE,
                                            "emergency_number": "911"}])
        await self.put(StaffUser.__table__, [
            {"id": g + 1, "program_id": 1, "name": f"Therapist {g + 1}",
             "email": f"t{g + 1}@bench.test", "role": StaffRole.THERAPIST,
             "password_hash": "-", "active": True} for g in range(size.groups)])
        ends = FIRST_MONDAY + timedelta(weeks=size.weeks) - timedelta(days=1)
        await self.put(Patient.__table__, [
            {"id": p + 1, "program_id": 1, "legal_name": f"Patient {p + 1:04d}",
             "level_of_care": LevelOfCare.IOP,
             "age_group": AgeGroup.ADOLESCENT if p % 5 == 0 else AgeGroup.ADULT,
             "enrolled_on": FIRST_MONDAY, "enrollment_ends_on": ends, "status": "active",
             "emergency_contact_name": "", "emergency_contact_phone": "", "usual_location": ""}
            for p in range(size.patients)])
        await self.put(Group.__table__, [{"id": g + 1, "program_id": 1, "name": f"Group {g + 1}"}
                                         for g in range(size.groups)])
        await self.put(GroupTherapist.__table__, [{"group_id": g + 1, "staff_id": g + 1}
                                                  for g in range(size.groups)])
        await self.put(RosterMembership.__table__, [
            {"id": p + 1, "group_id": p // size.group_size + 1, "patient_id": p + 1,
             "joined_on": FIRST_MONDAY} for p in range(size.patients)])
        sessions: list[dict[str, Any]] = []
        therapists: list[dict[str, Any]] = []
        for g in range(size.groups):
            for week in range(size.weeks):
                for weekday in WEEKDAYS:
                    day = FIRST_MONDAY + timedelta(weeks=week, days=weekday)
                    start = datetime.combine(day, SESSION_START, zone).astimezone(UTC)
                    sessions.append({
                        "id": len(sessions) + 1, "program_id": 1, "title": f"Group {g + 1}",
                        "kind": SessionKind.GROUP, "group_id": g + 1, "starts_at": start,
                        "duration_minutes": SESSION_MINUTES, "extended_minutes": 0,
                        "timezone": TIMEZONE, "status": SessionStatus.ENDED,
                        "billing_code": "90853", "waiting_room": "therapist-admits"})
                    therapists.append({"session_id": len(sessions), "staff_id": g + 1})
        await self.put(Session.__table__, sessions)
        await self.put(SessionTherapist.__table__, therapists)
        for session in sessions:
            group = session["group_id"] - 1
            members = range(group * size.group_size + 1,
                            min((group + 1) * size.group_size, size.patients) + 1)
            self.session_log(session["id"], session["starts_at"], group + 1, members)
            await self.flush_events()
        await self.flush_events(force=True)
        self.counts["sessions"] = len(sessions)
        return len(sessions)

    def session_log(self, session_id: int, start: datetime, therapist: int,
                    members: range) -> None:
        """One session's log; returns nothing, appends to the pending events."""
        rng, end = self.rng, start + timedelta(minutes=SESSION_MINUTES)
        stopped = rng.random() < SERVER_STOPPED
        crash = start + timedelta(minutes=rng.randint(30, SESSION_MINUTES - 1))
        last = crash if stopped else end
        stays: list[tuple[str, datetime, datetime]] = []

        def visit(who: tuple[str, str, int | None], came: datetime, went: datetime,
                  audio: bool = True, video: bool = True, waits: bool = False,
                  how: AttendanceKind = AttendanceKind.LEFT) -> None:
            connection = f"p-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
            if who[1] == "patient":
                self.event(session_id, came - timedelta(minutes=2), AttendanceKind.CHECKED_IN,
                           who, connection, location="home" if rng.random() < 0.9 else "other")
            if waits:
                self.event(session_id, came - timedelta(minutes=1), AttendanceKind.WAITING,
                           who, connection)
            self.event(session_id, came, AttendanceKind.ADMITTED, who, connection)
            self.event(session_id, came, AttendanceKind.MEDIA, who, connection, audio=audio,
                       video=video)
            went = min(went, last)
            if not stopped or went < crash:
                self.event(session_id, went, how, who, connection)
            stays.append((connection, came, went))

        visit((f"staff:{therapist}", "therapist", None), start, end)
        for patient_id in members:
            who = (f"patient:{patient_id}", "patient", patient_id)
            roll, waits = rng.random(), rng.random() < WAITS_FIRST
            if roll < ABSENT:
                continue
            roll -= ABSENT
            if roll < LATE:
                visit(who, start + timedelta(minutes=rng.randint(10, 40)), end, waits=waits)
            elif roll < LATE + DROP_AND_REJOIN:
                drop = start + timedelta(minutes=rng.randint(20, 150))
                visit(who, start, drop, waits=waits, how=AttendanceKind.DROPPED)
                visit(who, drop + timedelta(minutes=rng.randint(1, 10)), end)
            elif roll < LATE + DROP_AND_REJOIN + AUDIO_ONLY:
                visit(who, start, end, video=False, waits=waits)
            elif roll < LATE + DROP_AND_REJOIN + AUDIO_ONLY + LEAVES_EARLY:
                visit(who, start, end - timedelta(minutes=rng.randint(15, 120)), waits=waits)
            else:
                visit(who, start, end, waits=waits)
        beat = start + self.heartbeat
        while beat <= last:
            present = [c for c, came, went in stays if came <= beat < went]
            self.event(session_id, beat, AttendanceKind.HEARTBEAT, present=present)
            self.counts["heartbeats"] += 1
            beat += self.heartbeat
        if not stopped:
            self.event(session_id, end, AttendanceKind.SESSION_ENDED)


async def timed(label: str, work: Callable[[], Awaitable[T]],
                results: dict[str, float]) -> T:
    began = time.perf_counter()
    value = await work()
    results[label] = time.perf_counter() - began
    return value


async def measure(engine: AsyncEngine, size: Size) -> dict[str, float]:
    """Time each report in a fresh database session (nothing cached between them)."""
    factory = session_factory(engine, BENCH_KEYS)
    results: dict[str, float] = {}
    last_week = IsoWeek.of_day(FIRST_MONDAY + timedelta(weeks=size.weeks - 1))
    zone = ZoneInfo(TIMEZONE)
    now = datetime.combine(last_week.monday + timedelta(days=2), clock_time(12), zone)
    start, end = last_week.bounds(TIMEZONE)
    program = None

    async def baseline() -> int:
        async with factory() as db:
            ids = select(Session.id).where(Session.starts_at >= start, Session.starts_at < end)
            rows = await db.execute(select(AttendanceEvent.id, AttendanceEvent.at,
                                           AttendanceEvent.kind, AttendanceEvent.detail).where(
                AttendanceEvent.session_id.in_(ids),
                AttendanceEvent.kind != AttendanceKind.HEARTBEAT))
            return len(rows.all())

    await baseline()  # warm the file cache once, so the baseline is not the only cold run
    fetched = await timed("baseline: fetch the week's log rows", baseline, results)
    async with factory() as db:
        program = await db.get(Program, 1)
    assert program is not None

    async def weekly_report() -> int:
        async with factory() as db:
            return len(await program_week_dosage(db, program, last_week, now))

    async def one_patient() -> int:
        async with factory() as db:
            patient = await db.get(Patient, 1)
            assert patient is not None
            return len(await patient_dosage(db, patient, program, now))

    def export(fmt: ExportFormat, first: date, last: date) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            async with factory() as db:
                made = await export_attendance(db, program, first, last, fmt, "bench", now)
                await db.rollback()
                return made.count
        return run

    patients = await timed("weekly dosage report, every patient", weekly_report, results)
    await timed("one patient's dosage, every week", one_patient, results)
    week_days = (last_week.monday, last_week.days[-1])
    all_days = (FIRST_MONDAY, last_week.days[-1])
    rows = await timed("CSV export, one week", export(ExportFormat.CSV, *week_days), results)
    all_rows = await timed(f"CSV export, {size.weeks} weeks", export(ExportFormat.CSV, *all_days),
                           results)
    encounters = await timed("FHIR export, one week", export(ExportFormat.FHIR, *week_days),
                             results)
    print(f"report: {patients} patients; baseline fetched {fetched} log rows; "
          f"CSV {rows} rows (week), {all_rows} rows (all); FHIR {encounters} encounters (week)")
    return results


async def _fresh_postgres(url: str) -> tuple[str, Callable[[], Awaitable[None]]]:
    name = f"vio_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url)
    async with admin.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))

    async def drop() -> None:
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()

    base, _, _ = url.rpartition("/")
    return f"{base}/{name}", drop


async def main(args: argparse.Namespace) -> int:
    size = Size(**(QUICK if args.quick else FULL))
    if args.patients:
        size = Size(args.patients, size.weeks, size.group_size)
    if args.weeks:
        size = Size(size.patients, args.weeks, size.group_size)
    cleanup: Callable[[], Awaitable[None]] | None = None
    with tempfile.TemporaryDirectory(prefix="vio-bench-") as tmp:
        if args.postgres:
            url, cleanup = await _fresh_postgres(args.postgres)
        else:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.sqlite3'}"
        engine = create_engine(url)
        try:
            await migrate(engine, BENCH_KEYS)
            seeder = Seeder(engine, size, args.heartbeat_seconds, random.Random(args.seed))
            began = time.perf_counter()
            await seeder.seed()
            seeded = time.perf_counter() - began
            print(f"seeded {size.patients} patients x {size.weeks} weeks x {len(WEEKDAYS)} "
                  f"sessions a week: {seeder.counts['sessions']} sessions, "
                  f"{seeder.counts['events']} events ({seeder.counts['heartbeats']} heartbeats "
                  f"every {args.heartbeat_seconds:g} s) in {seeded:.1f} s "
                  f"on {url.split(':')[0]}")
            results = await measure(engine, size)
        finally:
            await engine.dispose()
            if cleanup is not None:
                await cleanup()
    base = next(iter(results.values()))
    width = max(len(label) for label in results)
    for label, seconds in results.items():
        print(f"{label:<{width}}  {seconds * 1000:9.1f} ms  {seconds / base:7.1f}x baseline")
    if args.json:
        print(json.dumps({"size": size.__dict__, "seconds": results}))
    return 0


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--quick", action="store_true", help="a small size (under a minute)")
    cli.add_argument("--postgres", metavar="URL",
                     help="make a fresh database on this PostgreSQL server instead of SQLite")
    cli.add_argument("--patients", type=int, help="override the number of patients")
    cli.add_argument("--weeks", type=int, help="override the number of weeks")
    cli.add_argument("--heartbeat-seconds", type=float, default=HEARTBEAT_SECONDS)
    cli.add_argument("--seed", type=int, default=1, help="random seed for the attendance")
    cli.add_argument("--json", action="store_true", help="also print the figures as JSON")
    return cli


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parser().parse_args())))
