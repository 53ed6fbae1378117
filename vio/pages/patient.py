"""What the patient's home page says about each of their sessions: plain functions, no I/O.

Each session gets one cue, worked out from the schedule, the join window
(``VIO_JOIN_EARLY_MINUTES``) and whether its room has ended:

- ``live``: it has started and not ended — "Live now", with Join as the page's main action;
- ``opening``: its room is open before the start — "Starts in 12 minutes", with Join;
- ``later``: its room is not open yet — "Opens at 5:45 PM EST", no Join;
- ``ended``: the therapist ended it before its scheduled end — "Ended early at 6:40 PM EST",
  no Join, and it no longer counts toward the hours still scheduled this week (for a session
  ended early, scheduled time is what was held; ``vio.attendance.records`` counts it so too);
- ``cancelled``: "Cancelled", no Join.

Every moment shown says its zone (``vio.pages.common.local_time``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from vio.models import Session, SessionStatus
from vio.pages.common import local_time

SECONDS_PER_MINUTE = 60
MINUTES_PER_HOUR = 60


class Cue(enum.StrEnum):
    LIVE = "live"
    OPENING = "opening"
    LATER = "later"
    ENDED = "ended"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SessionLine:
    """One session on the patient's home page, as the patient reads it."""

    session: Session
    cue: Cue
    label: str  # "Live now", "Starts in 12 minutes", "Opens at 5:45 PM EST", …
    when: str  # "Tuesday December 1 at 6:00 PM EST"
    minutes: int  # how long it runs (as held, for a session ended early)
    opens_in_seconds: int | None = None  # for a room not open yet: how long until it opens

    @property
    def joinable(self) -> bool:
        return self.cue in (Cue.LIVE, Cue.OPENING)


def _in_words(delta: timedelta) -> str:
    """A wait in whole minutes (rounded up), hours past the first hour: "1 hour 5 minutes"."""
    minutes = max(1, -(-int(delta.total_seconds()) // SECONDS_PER_MINUTE))
    hours, minutes = divmod(minutes, MINUTES_PER_HOUR)
    parts = []
    if hours:
        parts.append(f"{hours} hour{'s' if hours != 1 else ''}")
    if minutes:
        parts.append(f"{minutes} minute{'s' if minutes != 1 else ''}")
    return " ".join(parts)


def session_line(session: Session, now: datetime, join_early: timedelta, zone: str,
                 ended_at: datetime | None = None) -> SessionLine:
    """What the home page says about ``session`` at ``now``; ``ended_at``: when its room
    ended, if it has."""
    when = local_time(session.starts_at, zone, "long")
    scheduled = session.duration_minutes + session.extended_minutes
    if session.status is SessionStatus.CANCELLED:
        return SessionLine(session, Cue.CANCELLED, "Cancelled", when, scheduled)
    if session.status is SessionStatus.ENDED or ended_at is not None:
        if ended_at is None:
            return SessionLine(session, Cue.ENDED, "Ended", when, scheduled)
        held = max(0, round((ended_at - session.starts_at).total_seconds() / SECONDS_PER_MINUTE))
        return SessionLine(session, Cue.ENDED,
                           f"Ended early at {local_time(ended_at, zone, 'time')}", when,
                           min(held, scheduled))
    opens_at = session.starts_at - join_early
    if now < opens_at:
        return SessionLine(session, Cue.LATER, f"Opens at {local_time(opens_at, zone, 'time')}",
                           when, scheduled, math.ceil((opens_at - now).total_seconds()))
    if now < session.starts_at:
        return SessionLine(session, Cue.OPENING,
                           f"Starts in {_in_words(session.starts_at - now)}", when, scheduled)
    return SessionLine(session, Cue.LIVE, "Live now", when, scheduled)


def home_lines(sessions: Iterable[Session], now: datetime, join_early: timedelta, zone: str,
               ended: Mapping[int, datetime]) -> list[SessionLine]:
    """The sessions still to show (not past their scheduled end), each with its cue, in order."""
    return [session_line(s, now, join_early, zone, ended.get(s.id))
            for s in sorted(sessions, key=lambda s: (s.starts_at, s.id)) if s.ends_at > now]


def main_action(lines: Iterable[SessionLine]) -> SessionLine | None:
    """The session to join now, if any: the one live, else the next opening."""
    joinable = [line for line in lines if line.joinable]
    live = [line for line in joinable if line.cue is Cue.LIVE]
    first = live or joinable
    return first[0] if first else None


def lead_line(lines: Iterable[SessionLine]) -> SessionLine | None:
    """The session the page leads with: the one to join now, else the next to open."""
    lines = list(lines)
    return main_action(lines) or next((line for line in lines if line.cue is Cue.LATER), None)
