"""Weekly schedules in local time: 18:00 in Chicago stays 18:00 across daylight-saving changes."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


def parse_weekdays(text: str) -> tuple[int, ...]:
    """"1,3,4" -> (1, 3, 4): ISO weekdays, Monday = 1."""
    days = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    if not days or any(not 1 <= d <= 7 for d in days):
        raise ValueError("weekdays are numbers 1 (Monday) to 7 (Sunday)")
    return days


def weekly_occurrences(
    first_day: date, weeks: int, weekdays: Iterable[int], local_start: time, timezone: str
) -> list[datetime]:
    """Start moments (UTC) of a series: each chosen weekday at ``local_start`` for ``weeks`` weeks.

    The week count starts on ``first_day``; a local time that does not exist on a
    spring-forward day is moved forward by the gap, as a wall clock would be.
    """
    zone = ZoneInfo(timezone)
    wanted = set(weekdays)
    starts = []
    for offset in range(weeks * 7):
        day = first_day + timedelta(days=offset)
        if day.isoweekday() in wanted:
            local = datetime.combine(day, local_start, tzinfo=zone)
            starts.append(local.astimezone(UTC).astimezone(zone).astimezone(UTC))
    return starts


def local_time(moment: datetime, timezone: str) -> datetime:
    return moment.astimezone(ZoneInfo(timezone))
