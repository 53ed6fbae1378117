"""Dosage alerts against a table worked by hand: each alert true, with the sentence that says why.

Target 9 h a week. Groups Monday, Wednesday and Thursday 6-9 pm in Chicago. "Now" is Thursday
of week 47 at noon, before that evening's group; "last week" is week 46.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from vio.attendance.dosage import (
    DosageAlert,
    DosagePlan,
    IsoWeek,
    ScheduledAttendance,
    weekly_dosage,
)
from vio.attendance.intervals import AttendanceInterval, AttendanceStatus

CHICAGO = ZoneInfo("America/Chicago")
NOW = datetime(2026, 11, 19, 12, 0, tzinfo=CHICAGO)
THIS_WEEK = IsoWeek(2026, 47)
PLAN = DosagePlan(patient_id=1, target_hours=9.0, timezone="America/Chicago",
                  enrolled_on=date(2026, 11, 2), enrollment_ends_on=date(2026, 12, 20))
A, P = AttendanceStatus.ABSENT, AttendanceStatus.PRESENT


def group(day: date, status: AttendanceStatus, minutes: int = 180,
          number: int = 0) -> ScheduledAttendance:
    start = datetime(day.year, day.month, day.day, 18, 0, tzinfo=CHICAGO)
    attended = () if status is A else (AttendanceInterval(start, start + timedelta(
        minutes=minutes)),)
    return ScheduledAttendance(number, start, start + timedelta(hours=3), status, attended)


def week_of(monday: date, *statuses: tuple[AttendanceStatus, int]) -> list[ScheduledAttendance]:
    days = (monday, monday + timedelta(days=2), monday + timedelta(days=3))
    return [group(day, status, minutes, i) for i, (day, (status, minutes))
            in enumerate(zip(days, statuses, strict=True))]


W46 = date(2026, 11, 9)
W47 = date(2026, 11, 16)
THIS_WEEK_ON_TRACK = [group(W47, P), group(W47 + timedelta(days=2), P),
                      group(W47 + timedelta(days=3), A)]  # Thursday's is still to come

CASES = {
    # who: (sessions, alerts, reasons) — worked by hand
    "met exactly": (week_of(W46, (P, 180), (P, 180), (P, 180)) + THIS_WEEK_ON_TRACK, (), ()),
    "met as shown (8.98 h is 9.0 h)": (
        week_of(W46, (P, 179), (P, 180), (P, 180)) + THIS_WEEK_ON_TRACK, (), ()),
    "short last week": (
        week_of(W46, (P, 180), (A, 0), (A, 0)) + THIS_WEEK_ON_TRACK,
        (DosageAlert.BELOW_TARGET_LAST_WEEK,),
        ("Attended 3.0 of 9.0 h last week; 2 sessions missed.",)),
    "nothing scheduled last week (a holiday week)": (THIS_WEEK_ON_TRACK, (), ()),
    "in no group": ([], (), ()),
    "missed Monday and Wednesday": (
        [*week_of(W46, (P, 180), (P, 180), (P, 180)), group(W47, A),
         group(W47 + timedelta(days=2), A), group(W47 + timedelta(days=3), A)],
        (DosageAlert.CANNOT_REACH_TARGET, DosageAlert.CONSECUTIVE_ABSENCES),
        ("0.0 h attended and 3.0 h still scheduled this week: at most 3.0 of 9.0 h.",
         "2 sessions missed in a row without an excuse; time to reach out.")),
}


@pytest.mark.parametrize("who", list(CASES))
def test_alerts_are_true_and_say_why(who):
    sessions, alerts, reasons = CASES[who]
    dosage = weekly_dosage(PLAN, sessions, THIS_WEEK, NOW.astimezone(ZoneInfo("UTC")))
    assert dosage.alerts == alerts
    assert dosage.reasons == reasons
    assert dosage.summary()["alert_reasons"] == list(reasons)


def test_a_week_that_has_not_started_raises_nothing():
    sessions, _, _ = CASES["missed Monday and Wednesday"]
    assert weekly_dosage(PLAN, sessions, THIS_WEEK.next(), NOW).alerts == ()
