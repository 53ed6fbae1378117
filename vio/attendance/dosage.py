"""Weekly treatment dosage: attended hours against the patient's target, week by week.

Pure arithmetic over a patient's sessions and their measured attendance, no I/O. Weeks are ISO
weeks (Monday to Sunday) and days are calendar days, both in the program's time zone.

Facts used (DESIGN.md):

- Weekly targets by ASAM level of care (``Program.weekly_target_hours``), or the patient's own.
- H0015 needs at least 3 attended hours a day on at least 3 days a week; S9480 needs at least
  3 attended hours that day. Attended time is split at local midnight to count it.
- Two unexcused absences in a row should prompt outreach (``Program.absences_before_outreach``).
  An excused absence neither counts toward a streak nor ends one; attending any part of a
  session ends it.
- Family members never count toward a patient's dosage: only the patient's own record does.
"""

from __future__ import annotations

import enum
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from vio.attendance.intervals import (
    SECOND,
    AttendanceInterval,
    AttendanceStatus,
    PersonAttendance,
)
from vio.models import Patient, Program

SECONDS_PER_HOUR = 3600
HOURS_DECIMALS = 2
DAYS_PER_WEEK = 7
DAY_RULE_HOURS = 3  # H0015 / S9480: at least 3 attended hours in one day
H0015_DAYS_PER_WEEK = 3  # H0015: on at least 3 days a week
PATIENT_ROLE = "patient"
ATTENDED = frozenset({AttendanceStatus.PRESENT, AttendanceStatus.PARTIAL})
ALERT_HOURS_DECIMALS = 1  # hours as the dashboard shows them
ISO_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


class DosageAlert(enum.StrEnum):
    BELOW_TARGET_LAST_WEEK = "below-target-last-week"
    CANNOT_REACH_TARGET = "cannot-reach-target-this-week"
    CONSECUTIVE_ABSENCES = "consecutive-absences"


@dataclass(frozen=True, order=True)
class IsoWeek:
    """An ISO week, written ``2026-W48``."""

    year: int
    week: int

    def __post_init__(self) -> None:
        date.fromisocalendar(self.year, self.week, 1)  # raises ValueError for no such week

    @classmethod
    def parse(cls, text: str) -> IsoWeek:
        match = ISO_WEEK.match(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not an ISO week like 2026-W48")
        try:
            return cls(int(match[1]), int(match[2]))
        except ValueError:
            raise ValueError(f"{text!r}: that year has no such week") from None

    @classmethod
    def of_day(cls, day: date) -> IsoWeek:
        year, week, _ = day.isocalendar()
        return cls(year, week)

    @classmethod
    def containing(cls, moment: datetime, timezone: str) -> IsoWeek:
        return cls.of_day(moment.astimezone(ZoneInfo(timezone)).date())

    @property
    def monday(self) -> date:
        return date.fromisocalendar(self.year, self.week, 1)

    @property
    def days(self) -> tuple[date, ...]:
        return tuple(self.monday + timedelta(days=n) for n in range(DAYS_PER_WEEK))

    def bounds(self, timezone: str) -> tuple[datetime, datetime]:
        """Local Monday midnight to the next local Monday midnight, as UTC moments."""
        return (local_midnight(self.monday, timezone),
                local_midnight(self.monday + timedelta(days=DAYS_PER_WEEK), timezone))

    def previous(self) -> IsoWeek:
        return IsoWeek.of_day(self.monday - timedelta(days=DAYS_PER_WEEK))

    def next(self) -> IsoWeek:
        return IsoWeek.of_day(self.monday + timedelta(days=DAYS_PER_WEEK))

    def __str__(self) -> str:
        return f"{self.year}-W{self.week:02d}"


def local_midnight(day: date, timezone: str) -> datetime:
    return datetime.combine(day, time(0), ZoneInfo(timezone)).astimezone(UTC)


def local_day(moment: datetime, timezone: str) -> date:
    return moment.astimezone(ZoneInfo(timezone)).date()


@dataclass(frozen=True)
class DosagePlan:
    """What one patient is expected to receive."""

    patient_id: int
    target_hours: float
    timezone: str
    enrolled_on: date
    enrollment_ends_on: date
    absences_before_outreach: int = 2

    @classmethod
    def for_patient(cls, patient: Patient, program: Program) -> DosagePlan:
        target = (patient.weekly_target_override if patient.weekly_target_override is not None
                  else program.weekly_target_hours(patient.level_of_care, patient.age_group))
        return cls(patient_id=patient.id, target_hours=target, timezone=program.timezone,
                   enrolled_on=patient.enrolled_on,
                   enrollment_ends_on=patient.enrollment_ends_on,
                   absences_before_outreach=program.absences_before_outreach)

    @property
    def target_seconds(self) -> float:
        return self.target_hours * SECONDS_PER_HOUR

    def enrolled_during(self, week: IsoWeek) -> bool:
        return week.monday <= self.enrollment_ends_on and self.enrolled_on <= week.days[-1]

    def weeks(self) -> list[IsoWeek]:
        """Every week the enrollment touches, in order."""
        weeks, week = [], IsoWeek.of_day(self.enrolled_on)
        while week.monday <= self.enrollment_ends_on:
            weeks.append(week)
            week = week.next()
        return weeks


@dataclass(frozen=True)
class ScheduledAttendance:
    """One session the patient was expected at (not cancelled), and what happened there."""

    session_id: int
    starts_at: datetime
    ends_at: datetime
    status: AttendanceStatus
    intervals: tuple[AttendanceInterval, ...] = ()

    @classmethod
    def from_record(cls, session_id: int, patient_id: int, people: Iterable[PersonAttendance],
                    status: AttendanceStatus | None = None) -> ScheduledAttendance | None:
        """The patient's own record among a session's people; family members never count."""
        for person in people:
            if person.role == PATIENT_ROLE and person.patient_id == patient_id:
                return cls(session_id, person.window.starts_at, person.window.ends_at,
                           status or person.status, person.intervals)
        return None


def seconds_by_day(intervals: Iterable[AttendanceInterval], timezone: str) -> dict[date, int]:
    """Attended seconds on each local calendar day, splitting intervals at local midnight."""
    spent: dict[date, timedelta] = defaultdict(timedelta)
    for interval in intervals:
        start = interval.start.astimezone(UTC)
        end = interval.end.astimezone(UTC)
        while start < end:
            day = local_day(start, timezone)
            cut = min(end, local_midnight(day + timedelta(days=1), timezone))
            spent[day] += cut - start
            start = cut
    return {day: seconds // SECOND for day, seconds in sorted(spent.items())}


def absence_streak(sessions: Iterable[ScheduledAttendance], as_of: datetime,
                   since: datetime | None = None) -> tuple[ScheduledAttendance, ...]:
    """The unexcused absences in a row (oldest first), counting back from the last session
    over by ``as_of``; with ``since`` (when staff last reached out), only sessions that
    started after it count. An excused absence is skipped; attending any part ends the row."""
    streak: list[ScheduledAttendance] = []
    over = [s for s in sessions
            if s.ends_at <= as_of and (since is None or s.starts_at > since)]
    for session in sorted(over, key=lambda s: s.starts_at, reverse=True):
        if session.status is AttendanceStatus.ABSENT:
            streak.append(session)
        elif session.status in ATTENDED:
            break
    return tuple(reversed(streak))


def consecutive_absences(sessions: Iterable[ScheduledAttendance], as_of: datetime) -> int:
    """Unexcused absences in a row, counting back from the last session over by ``as_of``."""
    return len(absence_streak(sessions, as_of))


@dataclass(frozen=True)
class WeeklyDosage:
    """One patient's dosage in one ISO week, as of a moment."""

    patient_id: int
    week: IsoWeek
    target_hours: float
    attended_seconds: int
    day_seconds: tuple[tuple[date, int], ...]
    sessions_scheduled: int
    sessions_attended: int
    sessions_missed: int
    sessions_excused: int
    sessions_remaining: int
    remaining_seconds: int
    consecutive_absences: int
    alerts: tuple[DosageAlert, ...]
    reasons: tuple[str, ...] = ()  # one sentence per alert, in the same order

    @property
    def attended_hours(self) -> float:
        return self.attended_seconds / SECONDS_PER_HOUR

    @property
    def remaining_hours(self) -> float:
        return self.remaining_seconds / SECONDS_PER_HOUR

    @property
    def days_attended(self) -> int:
        return sum(1 for _, seconds in self.day_seconds if seconds > 0)

    @property
    def days_with_three_hours(self) -> int:
        """Days meeting the H0015 / S9480 day rule (≥ 3 attended hours)."""
        return sum(1 for _, seconds in self.day_seconds
                   if seconds >= DAY_RULE_HOURS * SECONDS_PER_HOUR)

    @property
    def meets_h0015_day_rule(self) -> bool:
        return self.days_with_three_hours >= H0015_DAYS_PER_WEEK

    @property
    def met_target(self) -> bool:
        return self.attended_hours >= self.target_hours

    @property
    def can_reach_target(self) -> bool:
        """Attended time plus what is still scheduled this week reaches the target."""
        return (self.attended_seconds + self.remaining_seconds
                >= self.target_hours * SECONDS_PER_HOUR)

    def summary(self) -> dict[str, Any]:
        """Plain values for JSON: hours to two decimals, days as ISO dates."""
        return {
            "patient_id": self.patient_id, "week": str(self.week),
            "target_hours": self.target_hours,
            "attended_hours": round(self.attended_hours, HOURS_DECIMALS),
            "remaining_scheduled_hours": round(self.remaining_hours, HOURS_DECIMALS),
            "can_reach_target": self.can_reach_target, "met_target": self.met_target,
            "days_attended": self.days_attended,
            "days_with_three_hours": self.days_with_three_hours,
            "meets_h0015_day_rule": self.meets_h0015_day_rule,
            "hours_by_day": {day.isoformat(): round(seconds / SECONDS_PER_HOUR, HOURS_DECIMALS)
                             for day, seconds in self.day_seconds},
            "sessions_scheduled": self.sessions_scheduled,
            "sessions_attended": self.sessions_attended,
            "sessions_missed": self.sessions_missed,
            "sessions_excused": self.sessions_excused,
            "sessions_remaining": self.sessions_remaining,
            "consecutive_absences": self.consecutive_absences,
            "alerts": [alert.value for alert in self.alerts],
            "alert_reasons": list(self.reasons),
        }


def _attended_in(sessions: Iterable[ScheduledAttendance], week: IsoWeek,
                 timezone: str) -> dict[date, int]:
    days = set(week.days)
    by_day = seconds_by_day((i for s in sessions for i in s.intervals), timezone)
    return {day: seconds for day, seconds in by_day.items() if day in days}


def weekly_dosage(plan: DosagePlan, sessions: Sequence[ScheduledAttendance], week: IsoWeek,
                  now: datetime) -> WeeklyDosage:
    """The patient's dosage in ``week`` as it stands at ``now``.

    ``sessions`` are the patient's sessions, of any weeks: the previous week gives the
    below-target alert and earlier ones the absence streak. Hours fall on the local day they
    were attended, so a session crossing midnight into Monday counts there.
    """
    start, end = week.bounds(plan.timezone)
    mine = [s for s in sessions if start <= s.starts_at < end]
    by_day = _attended_in(sessions, week, plan.timezone)  # a late session may cross midnight
    attended = sum(by_day.values())
    over = [s for s in mine if s.ends_at <= now]
    to_come = [s for s in mine if s.ends_at > now]
    remaining = sum(((s.ends_at - max(s.starts_at, now)) // SECOND for s in to_come), 0)
    streak = consecutive_absences(sessions, min(now, end))
    alerts: list[tuple[DosageAlert, str]] = []
    if start <= now:  # a week still to come raises nothing yet
        alerts = _alerts(plan, sessions, week, now, attended, remaining, streak)
    return WeeklyDosage(
        patient_id=plan.patient_id, week=week, target_hours=plan.target_hours,
        attended_seconds=attended, day_seconds=tuple(sorted(by_day.items())),
        sessions_scheduled=len(mine),
        sessions_attended=sum(1 for s in over if s.status in ATTENDED),
        sessions_missed=sum(1 for s in over if s.status is AttendanceStatus.ABSENT),
        sessions_excused=sum(1 for s in over if s.status is AttendanceStatus.EXCUSED),
        sessions_remaining=len(to_come), remaining_seconds=remaining,
        consecutive_absences=streak, alerts=tuple(a for a, _ in alerts),
        reasons=tuple(r for _, r in alerts))


def _hours(seconds: float) -> float:
    """Hours as staff see them (one decimal); alerts compare what they show."""
    return round(seconds / SECONDS_PER_HOUR, ALERT_HOURS_DECIMALS)


def _sessions(n: int) -> str:
    return f"{n} session{'s' if n != 1 else ''}"


def _alerts(plan: DosagePlan, sessions: Sequence[ScheduledAttendance], week: IsoWeek,
            now: datetime, attended: int, remaining: int,
            streak: int) -> list[tuple[DosageAlert, str]]:
    """The alerts that are true of the patient's week, each with the sentence that shows why.

    A week with nothing scheduled for the patient (no group, a holiday week) raises no hours
    alert: there was nothing to attend. Hours are compared as staff see them, to one decimal,
    so "9.0 of 9.0 h" is never flagged.
    """
    target = round(plan.target_hours, ALERT_HOURS_DECIMALS)
    alerts = []
    previous = week.previous()
    p_start, p_end = previous.bounds(plan.timezone)
    last_week = [s for s in sessions if p_start <= s.starts_at < p_end]
    last_hours = _hours(sum(_attended_in(sessions, previous, plan.timezone).values()))
    if plan.enrolled_during(previous) and last_week and last_hours < target:
        missed = sum(1 for s in last_week if s.status is AttendanceStatus.ABSENT)
        alerts.append((DosageAlert.BELOW_TARGET_LAST_WEEK,
                       f"Attended {last_hours:.1f} of {target:.1f} h last week; "
                       f"{_sessions(missed)} missed."))
    start, end = week.bounds(plan.timezone)
    this_week = [s for s in sessions if start <= s.starts_at < end]
    reachable = _hours(attended + remaining)
    if plan.enrolled_during(week) and this_week and reachable < target:
        alerts.append((DosageAlert.CANNOT_REACH_TARGET,
                       f"{_hours(attended):.1f} h attended and {_hours(remaining):.1f} h still "
                       f"scheduled this week: at most {reachable:.1f} of {target:.1f} h."))
    if streak >= plan.absences_before_outreach:
        alerts.append((DosageAlert.CONSECUTIVE_ABSENCES,
                       f"{_sessions(streak)} missed in a row without an excuse; time to reach "
                       f"out."))
    return alerts


def dosage_by_week(plan: DosagePlan, sessions: Sequence[ScheduledAttendance],
                   now: datetime) -> list[WeeklyDosage]:
    """The patient's dosage in every week of their enrollment."""
    return [weekly_dosage(plan, sessions, week, now) for week in plan.weeks()]
