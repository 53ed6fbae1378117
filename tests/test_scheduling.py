from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from tests.conftest import TEST_KEYS
from vio import clinic
from vio.db import create_engine, migrate, session_factory
from vio.models import Program, Session, SessionKind, StaffRole, StaffUser
from vio.scheduling import parse_weekdays, weekly_occurrences

CHICAGO = ZoneInfo("America/Chicago")


def test_weekly_series_keeps_local_time_across_november_change():
    # 2026-11-01 is the first Sunday of November: Chicago moves from CDT (-5) to CST (-6).
    starts = weekly_occurrences(date(2026, 10, 19), 4, (1, 3, 4), time(18, 0), "America/Chicago")
    assert len(starts) == 12
    assert all(s.astimezone(CHICAGO).time() == time(18, 0) for s in starts)
    assert [s.astimezone(CHICAGO).isoweekday() for s in starts[:3]] == [1, 3, 4]
    before = [s for s in starts if s < datetime(2026, 11, 1, tzinfo=UTC)]
    after = [s for s in starts if s > datetime(2026, 11, 2, tzinfo=UTC)]
    assert {s.hour for s in before} == {23}  # 18:00 CDT
    assert {s.hour for s in after} == {0}  # 18:00 CST is midnight UTC
    assert len(before) == 6 and len(after) == 6


@pytest.mark.parametrize("text", ["", "0", "8", "1,x"])
def test_bad_weekdays_are_refused(text):
    with pytest.raises(ValueError):
        parse_weekdays(text)


async def _series_round_trip(url: str) -> list[datetime]:
    engine = create_engine(url)
    try:
        await migrate(engine, TEST_KEYS)
        async with session_factory(engine, TEST_KEYS)() as db:
            program = Program(name="P", timezone="America/Chicago")
            db.add(program)
            await db.flush()
            staff = StaffUser(program_id=program.id, name="T", email="t@x", password_hash="x",
                              role=StaffRole.THERAPIST)
            db.add(staff)
            await db.flush()
            plan = clinic.SessionPlan(program_id=program.id, title="Evening", kind=SessionKind.
                                      INDIVIDUAL, timezone="America/Chicago", duration_minutes=180,
                                      therapist_ids=(staff.id,), patient_id=None, group_id=None)
            with pytest.raises(ValueError, match="patient"):
                await clinic.schedule_series(db, plan, date(2026, 10, 19), 4, "1,3,4", time(18))
            await db.rollback()
        async with session_factory(engine, TEST_KEYS)() as db:
            program = Program(name="P", timezone="America/Chicago")
            db.add(program)
            await db.flush()
            staff = StaffUser(program_id=program.id, name="T", email="t2@x", password_hash="x",
                              role=StaffRole.THERAPIST)
            db.add(staff)
            await db.flush()
            from vio.models import Group

            group = Group(program_id=program.id, name="G")
            db.add(group)
            await db.flush()
            plan = clinic.SessionPlan(program_id=program.id, title="Evening",
                                      kind=SessionKind.GROUP, timezone="America/Chicago",
                                      duration_minutes=180, therapist_ids=(staff.id,),
                                      group_id=group.id)
            await clinic.schedule_series(db, plan, date(2026, 10, 19), 4, "1,3,4", time(18))
            await db.commit()
        async with session_factory(engine, TEST_KEYS)() as db:
            rows = (await db.execute(select(Session).order_by(Session.starts_at))).scalars().all()
            return [r.starts_at for r in rows]
    finally:
        await engine.dispose()


async def test_series_stored_in_sqlite_stays_at_local_time(sqlite_url):
    starts = await _series_round_trip(sqlite_url)
    assert len(starts) == 12
    assert {s.astimezone(CHICAGO).time() for s in starts} == {time(18, 0)}


@pytest.mark.postgres
async def test_series_stored_in_postgres_stays_at_local_time(postgres_url):
    starts = await _series_round_trip(postgres_url)
    assert len(starts) == 12
    assert {s.astimezone(CHICAGO).time() for s in starts} == {time(18, 0)}
