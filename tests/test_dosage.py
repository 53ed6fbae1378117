"""Weekly dosage: a three-week program seeded in the database against a table worked by hand.

The program (America/Chicago, standard time throughout) runs a group Monday, Wednesday and
Thursday 6-9 pm local, which is midnight-3 am UTC the next day, so UTC days would put each
session on the wrong day. One patient also has a Sunday 7-10 pm individual session: Monday
in UTC, so the wrong ISO week too. "Now" is Thursday of the third week at noon, before that
evening's group.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.conftest import TEST_KEYS
from vio import clinic
from vio.attendance import records
from vio.attendance.dosage import (
    DosageAlert,
    DosagePlan,
    IsoWeek,
    ScheduledAttendance,
    consecutive_absences,
    seconds_by_day,
    weekly_dosage,
)
from vio.attendance.intervals import AttendanceInterval, AttendanceStatus, PersonAttendance
from vio.db import create_engine, migrate, session_factory
from vio.models import (
    AgeGroup,
    AttendanceEvent,
    AttendanceKind,
    AuditEvent,
    Group,
    LevelOfCare,
    Patient,
    Program,
    RosterMembership,
    Session,
    SessionKind,
    SessionStatus,
    StaffRole,
    StaffUser,
)
from vio.security import hash_password

CHICAGO = ZoneInfo("America/Chicago")
NOW = datetime(2026, 11, 19, 12, 0, tzinfo=CHICAGO)
STAFF_PASSWORD = "lakeside-staff"
FIRST_MONDAY = date(2026, 11, 2)
WEEKS = ("2026-W45", "2026-W46", "2026-W47")
DAYS = {"Mon": 0, "Wed": 2, "Thu": 3}


@dataclass
class Seeded:
    program: Program
    therapist: StaffUser
    admin: StaffUser
    patients: dict[str, Patient]
    group: Group
    sessions: dict[tuple[str, str], Session] = field(default_factory=dict)
    family: Session | None = None
    sunday: Session | None = None


class Log:
    """Writes attendance events the way the room does."""

    def __init__(self, db: AsyncSession) -> None:
        self.db = db
        self.numbers = itertools.count(1)

    def add(self, session: Session, minute: float, kind: AttendanceKind, who: tuple | None = None,
            connection: str | None = None, **detail: object) -> None:
        person, role, patient_id = who or (None, None, None)
        self.db.add(AttendanceEvent(
            session_id=session.id, at=session.starts_at + timedelta(minutes=minute), kind=kind,
            person=person, role=role, connection=connection, patient_id=patient_id,
            detail=detail))

    def stay(self, session: Session, who: tuple, start: float, end: float,
             audio: bool = True, video: bool = True, waiting_from: float | None = None,
             location: str = "home", leave: AttendanceKind = AttendanceKind.LEFT) -> None:
        connection = f"p-{next(self.numbers):04d}"
        arrived = start if waiting_from is None else waiting_from
        if who[1] == "patient":
            self.add(session, arrived, AttendanceKind.CHECKED_IN, who, connection,
                     location=location, address="", city="Springfield", state="IL")
        if waiting_from is not None:
            self.add(session, waiting_from, AttendanceKind.WAITING, who, connection)
        self.add(session, start, AttendanceKind.ADMITTED, who, connection)
        self.add(session, start, AttendanceKind.MEDIA, who, connection, audio=audio, video=video)
        self.add(session, end, leave, who, connection)

    def end(self, session: Session, minute: float) -> None:
        self.add(session, minute, AttendanceKind.SESSION_ENDED)


def local(day: date, hour: int) -> datetime:
    return datetime.combine(day, time(hour), CHICAGO)


async def seed_program(db: AsyncSession, now: datetime = NOW) -> Seeded:
    """Three patients, three weeks of group, a family session and a Sunday session."""
    program = Program(name="Lakeside IOP", timezone="America/Chicago")
    db.add(program)
    await db.flush()
    therapist = StaffUser(program_id=program.id, name="Robin Hale, LPC",
                          email="robin@lakeside.test", role=StaffRole.THERAPIST,
                          password_hash=hash_password(STAFF_PASSWORD))
    admin = StaffUser(program_id=program.id, name="Morgan Diaz", email="morgan@lakeside.test",
                      role=StaffRole.ADMIN, password_hash=hash_password(STAFF_PASSWORD))
    db.add_all([therapist, admin])
    ends = FIRST_MONDAY + timedelta(weeks=8) - timedelta(days=1)
    patients = {
        "A": Patient(program_id=program.id, legal_name="Avery Stone",
                     level_of_care=LevelOfCare.IOP, age_group=AgeGroup.ADULT,
                     enrolled_on=FIRST_MONDAY, enrollment_ends_on=ends),
        "B": Patient(program_id=program.id, legal_name="Blake Moss",
                     level_of_care=LevelOfCare.IOP, age_group=AgeGroup.ADOLESCENT,
                     enrolled_on=FIRST_MONDAY, enrollment_ends_on=ends),
        "C": Patient(program_id=program.id, legal_name="Casey Park",
                     level_of_care=LevelOfCare.IOP, age_group=AgeGroup.ADULT,
                     weekly_target_override=4.0, enrolled_on=FIRST_MONDAY,
                     enrollment_ends_on=ends),
    }
    db.add_all(patients.values())
    group = Group(program_id=program.id, name="Evening Skills Group")
    db.add(group)
    await db.flush()
    for patient in patients.values():
        db.add(RosterMembership(group_id=group.id, patient_id=patient.id,
                                joined_on=FIRST_MONDAY))
    seeded = Seeded(program, therapist, admin, patients, group)
    plan = clinic.SessionPlan(program_id=program.id, title="Evening Skills Group",
                              kind=SessionKind.GROUP, timezone=program.timezone,
                              duration_minutes=180, therapist_ids=(therapist.id,),
                              group_id=group.id)
    series = await clinic.schedule_series(db, plan, FIRST_MONDAY, 3, "1,3,4", time(18))
    for session in series:
        day = session.starts_at.astimezone(CHICAGO).date()
        seeded.sessions[(str(IsoWeek.of_day(day)), day.strftime("%a"))] = session
    seeded.family = await clinic.schedule_session(db, clinic.SessionPlan(
        program_id=program.id, title="Family session", kind=SessionKind.FAMILY,
        timezone=program.timezone, duration_minutes=50, therapist_ids=(therapist.id,),
        patient_id=patients["C"].id), local(date(2026, 11, 10), 17))
    seeded.sunday = await clinic.schedule_session(db, clinic.SessionPlan(
        program_id=program.id, title="Sunday check-in", kind=SessionKind.INDIVIDUAL,
        timezone=program.timezone, duration_minutes=180, therapist_ids=(therapist.id,),
        patient_id=patients["A"].id), local(date(2026, 11, 8), 19))
    for session in [*series, seeded.family, seeded.sunday]:
        if session.ends_at <= now:
            session.status = SessionStatus.ENDED
    await db.flush()
    await _attend(db, seeded, now)
    await db.flush()
    return seeded


async def _attend(db: AsyncSession, s: Seeded, now: datetime) -> None:
    log = Log(db)
    who = {key: (f"patient:{p.id}", "patient", p.id) for key, p in s.patients.items()}
    therapist = (f"staff:{s.therapist.id}", "therapist", None)
    family = ("family-invite:1", "family", s.patients["C"].id)
    full = 180

    def group(week: str, day: str) -> Session:
        return s.sessions[(week, day)]

    for session in s.sessions.values():
        if session.ends_at <= now:
            log.stay(session, therapist, 0, full)
            log.end(session, full)
    # Week 45: everyone comes; B drops once; C is audio-only on Monday; A checks in away.
    for day in DAYS:
        log.stay(group("2026-W45", day), who["A"], 0, full,
                 location="other" if day == "Wed" else "home")
        log.stay(group("2026-W45", day), who["C"], 0, full, video=day != "Mon")
    log.stay(group("2026-W45", "Mon"), who["B"], 0, full)
    log.stay(group("2026-W45", "Wed"), who["B"], 0, 60, leave=AttendanceKind.DROPPED)
    log.stay(group("2026-W45", "Wed"), who["B"], 65, full)
    assert s.sunday is not None
    log.stay(s.sunday, therapist, 0, full)
    log.stay(s.sunday, who["A"], 0, full)
    log.end(s.sunday, full)
    # Week 46: A waits 10 minutes then stays from 6:30; C's family meets without C.
    log.stay(group("2026-W46", "Mon"), who["A"], 0, full)
    log.stay(group("2026-W46", "Wed"), who["A"], 30, full, waiting_from=20)
    for day in ("Mon", "Wed"):
        log.stay(group("2026-W46", day), who["B"], 0, full)
    log.stay(group("2026-W46", "Mon"), who["C"], 0, full)
    assert s.family is not None
    log.stay(s.family, therapist, 0, 50)
    log.stay(s.family, family, 0, 50)
    log.end(s.family, 50)
    # Week 47 (so far): A stays away; B leaves Wednesday after an hour.
    log.stay(group("2026-W47", "Mon"), who["B"], 0, full)
    log.stay(group("2026-W47", "Wed"), who["B"], 0, 60)
    for day in ("Mon", "Wed"):
        log.stay(group("2026-W47", day), who["C"], 0, full)
    await db.flush()
    # B called ahead for Thursday of week 46: the therapist excuses it.
    record = await records.session_record(db, group("2026-W46", "Thu"), s.program)
    await records.override_status(db, record, who["B"][0], AttendanceStatus.EXCUSED,
                                  "Hospital appointment; called ahead", s.admin, now)


# The hand-worked table: attended minutes, days attended, days with 3+ hours, sessions
# scheduled / attended / missed / excused / still to come, absences in a row, alerts.
BELOW, CANNOT, STREAK = (DosageAlert.BELOW_TARGET_LAST_WEEK, DosageAlert.CANNOT_REACH_TARGET,
                         DosageAlert.CONSECUTIVE_ABSENCES)
EXPECTED = {
    # A: adult IOP, 9 h. W45 has the Sunday session too (Monday in UTC).
    ("A", "2026-W45"): (720, 4, 4, 4, 4, 0, 0, 0, 0, ()),
    ("A", "2026-W46"): (330, 2, 1, 3, 2, 1, 0, 0, 1, (CANNOT,)),
    ("A", "2026-W47"): (0, 0, 0, 3, 0, 2, 0, 1, 3, (BELOW, CANNOT, STREAK)),
    # B: adolescent IOP, 6 h. W45 Wednesday is 60 + 115 minutes.
    ("B", "2026-W45"): (355, 2, 1, 3, 2, 1, 0, 0, 1, (CANNOT,)),
    ("B", "2026-W46"): (360, 2, 2, 3, 2, 0, 1, 0, 0, (BELOW,)),
    ("B", "2026-W47"): (240, 2, 1, 3, 2, 0, 0, 1, 0, ()),
    # C: own target 4 h. The family session (W46) is C's, but only the family came.
    ("C", "2026-W45"): (540, 3, 3, 3, 3, 0, 0, 0, 0, ()),
    ("C", "2026-W46"): (180, 1, 1, 4, 1, 3, 0, 0, 3, (CANNOT, STREAK)),
    ("C", "2026-W47"): (360, 2, 2, 3, 2, 0, 0, 1, 0, (BELOW,)),
}
TARGETS = {"A": 9.0, "B": 6.0, "C": 4.0}


def _row(d) -> tuple:
    return (d.attended_seconds // 60, d.days_attended, d.days_with_three_hours,
            d.sessions_scheduled, d.sessions_attended, d.sessions_missed, d.sessions_excused,
            d.sessions_remaining, d.consecutive_absences, d.alerts)


async def test_weekly_dosage_matches_the_hand_table(db):
    seeded = await seed_program(db)
    for key, patient in seeded.patients.items():
        weeks = {str(d.week): d for d in await records.patient_dosage(
            db, patient, seeded.program, NOW.astimezone(ZoneInfo("UTC")))}
        for week in WEEKS:
            assert _row(weeks[week]) == EXPECTED[(key, week)], (key, week)
            assert weeks[week].target_hours == TARGETS[key]
    a_w45 = (await records.patient_week_dosage(db, seeded.patients["A"], seeded.program,
                                               IsoWeek.parse("2026-W45"), NOW))
    assert a_w45.meets_h0015_day_rule and a_w45.met_target
    assert a_w45.day_seconds[-1] == (date(2026, 11, 8), 3 * 3600)  # Sunday, local


@pytest.mark.postgres
async def test_the_hand_table_holds_on_postgres(postgres_url):
    engine = create_engine(postgres_url)
    try:
        await migrate(engine, TEST_KEYS)
        async with session_factory(engine, TEST_KEYS)() as db:
            seeded = await seed_program(db)
            await db.commit()
            report = await records.program_week_dosage(
                db, seeded.program, IsoWeek.parse("2026-W46"), NOW)
            assert [_row(d) for _, d in report] == [EXPECTED[(k, "2026-W46")] for k in "ABC"]
            record = await records.session_record(
                db, seeded.sessions[("2026-W46", "Mon")], seeded.program)
            await records.sign_off(db, record, seeded.therapist, NOW)
            await db.commit()
            record = await records.session_record(db, record.session, seeded.program)
            assert record.locked
    finally:
        await engine.dispose()


async def test_program_report_agrees_and_flags_the_right_patients(db):
    seeded = await seed_program(db)
    report = await records.program_week_dosage(db, seeded.program, IsoWeek.parse("2026-W47"),
                                               NOW)
    by_name = {p.legal_name: d for p, d in report}
    names = {"A": "Avery Stone", "B": "Blake Moss", "C": "Casey Park"}
    for key, name in names.items():
        assert _row(by_name[name]) == EXPECTED[(key, "2026-W47")]
    w46 = await records.program_week_dosage(db, seeded.program, IsoWeek.parse("2026-W46"), NOW)
    assert [_row(d) for _, d in w46] == [EXPECTED[(k, "2026-W46")] for k in "ABC"]
    summary = by_name["Blake Moss"].summary()
    assert summary["attended_hours"] == 4.0 and summary["can_reach_target"] is True
    assert summary["remaining_scheduled_hours"] == 3.0


async def test_statuses_overrides_and_family_billing(db):
    seeded = await seed_program(db)
    ids = {k: f"patient:{p.id}" for k, p in seeded.patients.items()}

    async def status(week: str, day: str, who: str) -> tuple[AttendanceStatus, AttendanceStatus]:
        record = await records.session_record(db, seeded.sessions[(week, day)], seeded.program)
        person = record.record_for(ids[who])
        assert person is not None
        return person.attendance.status, person.status

    present, partial = AttendanceStatus.PRESENT, AttendanceStatus.PARTIAL
    absent, excused = AttendanceStatus.ABSENT, AttendanceStatus.EXCUSED
    assert await status("2026-W46", "Wed", "A") == (present, present)  # 150 of 180 min
    assert await status("2026-W47", "Wed", "B") == (partial, partial)  # 60 of 180 min
    assert await status("2026-W46", "Thu", "B") == (absent, excused)
    assert await status("2026-W46", "Thu", "A") == (absent, absent)  # rostered, never came
    assert seeded.family is not None
    family = await records.session_record(db, seeded.family, seeded.program)
    assert not family.patient_attended and family.billing_code == "90846"
    assert family.record_for("family-invite:1").status is present
    assert family.record_for(ids["C"]).status is absent
    audit = (await db.execute(select(AuditEvent).where(
        AuditEvent.action == "attendance-override"))).scalar_one()
    assert audit.detail["status"] == "excused" and "Hospital" in audit.detail["reason"]


# --- pure pieces --------------------------------------------------------------------------------

def test_iso_weeks_follow_the_local_calendar_across_daylight_saving():
    week = IsoWeek.parse("2026-W10")  # US clocks spring forward on Sunday March 8, 2026
    start, end = week.bounds("America/Chicago")
    assert (end - start) == timedelta(days=7, hours=-1)
    assert str(week.previous()) == "2026-W09" and str(IsoWeek.parse("2026-W53").next()) \
        == "2027-W01"
    sunday_night = datetime(2026, 11, 9, 3, 0, tzinfo=ZoneInfo("UTC"))  # Sun 9 pm Chicago
    assert IsoWeek.containing(sunday_night, "America/Chicago") == IsoWeek(2026, 45)
    for bad in ("2026-48", "2025-W53", "W48"):
        try:
            IsoWeek.parse(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_time_is_split_at_local_midnight():
    late = AttendanceInterval(local(date(2026, 11, 13), 22), local(date(2026, 11, 14), 1))
    assert seconds_by_day([late], "America/Chicago") == {
        date(2026, 11, 13): 2 * 3600, date(2026, 11, 14): 3600}


def _session(n: int, status: AttendanceStatus, hours: float = 0) -> ScheduledAttendance:
    start = local(date(2026, 11, 2) + timedelta(days=n), 18)
    return ScheduledAttendance(n, start, start + timedelta(hours=3), status,
                               (AttendanceInterval(start, start + timedelta(hours=hours)),)
                               if hours else ())


def test_excused_absences_neither_count_nor_break_a_streak():
    absent, excused, partial = (AttendanceStatus.ABSENT, AttendanceStatus.EXCUSED,
                                AttendanceStatus.PARTIAL)
    sessions = [_session(0, partial, 1), _session(1, absent), _session(2, excused),
                _session(3, absent), _session(4, absent)]
    assert consecutive_absences(sessions, local(date(2026, 11, 30), 0)) == 3
    assert consecutive_absences(sessions, local(date(2026, 11, 5), 0)) == 1


def test_family_members_never_count_toward_the_patient():
    start = local(date(2026, 11, 10), 17)
    from vio.attendance.intervals import SessionWindow

    window = SessionWindow(start, start + timedelta(minutes=50))
    family = PersonAttendance(
        person="family-invite:1", role="family", patient_id=7, window=window,
        intervals=(AttendanceInterval(start, window.ends_at),), spans=(),
        attended_seconds=3000, audio_video_seconds=3000, audio_only_seconds=0,
        status=AttendanceStatus.PRESENT)
    assert ScheduledAttendance.from_record(1, 7, [family]) is None
    patient = PersonAttendance.absent("patient:7", "patient", 7, window)
    found = ScheduledAttendance.from_record(1, 7, [family, patient])
    assert found is not None and found.intervals == () and found.status is AttendanceStatus.ABSENT


def test_target_reachable_only_with_enough_scheduled_time_left():
    plan = DosagePlan(patient_id=1, target_hours=9, timezone="America/Chicago",
                      enrolled_on=date(2026, 11, 2), enrollment_ends_on=date(2026, 12, 27))
    present = AttendanceStatus.PRESENT
    sessions = [_session(0, present, 3), _session(2, present, 3), _session(3, present, 0)]
    week = IsoWeek.parse("2026-W45")
    wednesday_night = local(date(2026, 11, 4), 22)
    dosage = weekly_dosage(plan, sessions, week, wednesday_night)
    assert dosage.attended_hours == 6 and dosage.remaining_hours == 3 and dosage.can_reach_target
    thursday_late = local(date(2026, 11, 5), 20)  # an hour of Thursday's group is left
    dosage = weekly_dosage(plan, sessions, week, thursday_late)
    assert not dosage.can_reach_target and DosageAlert.CANNOT_REACH_TARGET in dosage.alerts


def test_a_session_crossing_into_monday_counts_in_the_week_it_was_attended():
    plan = DosagePlan(patient_id=1, target_hours=1, timezone="America/Chicago",
                      enrolled_on=date(2026, 11, 2), enrollment_ends_on=date(2026, 12, 27))
    start = local(date(2026, 11, 8), 23)  # Sunday 11 pm to Monday 1 am
    late = ScheduledAttendance(1, start, start + timedelta(hours=2), AttendanceStatus.PRESENT,
                               (AttendanceInterval(start, start + timedelta(hours=2)),))
    later = local(date(2026, 11, 20), 0)
    sunday = weekly_dosage(plan, [late], IsoWeek.parse("2026-W45"), later)
    monday = weekly_dosage(plan, [late], IsoWeek.parse("2026-W46"), later)
    assert (sunday.attended_seconds, monday.attended_seconds) == (3600, 3600)
    assert (sunday.sessions_scheduled, monday.sessions_scheduled) == (1, 0)
