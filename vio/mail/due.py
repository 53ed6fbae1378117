"""What is due when: reminders, retries and withdrawals, as pure functions of times.

A session has a row of reminder moments: one at each of ``VIO_MAIL_REMINDER_MINUTES`` before
its start (those that fall before its room opens), then "your room is open" when the room
opens (``VIO_JOIN_EARLY_MINUTES`` before the start). Each moment holds until the next one
comes; the room-open message until the session ends. At any moment at most one reminder is
due: the latest whose moment has come and not passed. So a sender that was down for a while
sends the one reminder that still makes sense, never a burst of stale ones, and a session
scheduled at short notice gets the reminder of the moment it is in.

A reminder whose moment came at or before the session last moved (``since``) is not sent: the
message about the move said it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from vio.mail.models import MessageKind, MessageStatus
from vio.models import SessionStatus


@dataclass(frozen=True)
class ReminderRule:
    lead_minutes: tuple[int, ...]  # VIO_MAIL_REMINDER_MINUTES
    join_early_minutes: int  # VIO_JOIN_EARLY_MINUTES


@dataclass(frozen=True)
class DueReminder:
    kind: MessageKind  # REMINDER or ROOM_OPEN
    lead_minutes: int | None  # a reminder's minutes before the start; None for room-open
    due_at: datetime
    until: datetime  # after this it is stale

    @property
    def key(self) -> str:
        """Names the moment in an outbox row's dedupe key."""
        return "room-open" if self.lead_minutes is None else f"before-{self.lead_minutes}"


def reminder_moments(rule: ReminderRule, starts_at: datetime,
                     ends_at: datetime) -> list[DueReminder]:
    """Every reminder of a session, in order, each with how long it holds."""
    opens_at = starts_at - timedelta(minutes=rule.join_early_minutes)
    leads = sorted((m for m in set(rule.lead_minutes) if m > rule.join_early_minutes),
                   reverse=True)
    dues = [(starts_at - timedelta(minutes=m), m) for m in leads]
    moments: list[DueReminder] = []
    for index, (due_at, minutes) in enumerate(dues):
        until = dues[index + 1][0] if index + 1 < len(dues) else opens_at
        moments.append(DueReminder(MessageKind.REMINDER, minutes, due_at, until))
    moments.append(DueReminder(MessageKind.ROOM_OPEN, None, opens_at, ends_at))
    return moments


def due_reminder(rule: ReminderRule, starts_at: datetime, ends_at: datetime, now: datetime,
                 since: datetime | None = None) -> DueReminder | None:
    """The one reminder to send at ``now``, or None."""
    for moment in reversed(reminder_moments(rule, starts_at, ends_at)):
        if moment.due_at <= now:
            fresh = since is None or moment.due_at > since
            return moment if now < moment.until and fresh else None
    return None


# --- retries ---------------------------------------------------------------------------------

def retry_delay(attempts: int, first_seconds: float, longest_seconds: float) -> timedelta:
    """The wait after the ``attempts``-th failed try: the first wait, doubled each time, up to
    the longest."""
    exponent = max(0, min(attempts - 1, 32))
    return timedelta(seconds=min(first_seconds * 2 ** exponent, longest_seconds))


# --- withdrawals ------------------------------------------------------------------------------

class Withdrawal(enum.StrEnum):
    """Why a queued message is not sent after all."""

    NO_CONSENT = "no-consent"
    UNSUBSCRIBED = "unsubscribed"
    NO_ADDRESS = "no-address"
    NOT_EXPECTED = "not-expected"
    TOO_LATE = "too-late"
    SESSION_CANCELLED = "session-cancelled"
    SESSION_MOVED = "session-moved"
    SESSION_OVER = "session-over"
    INVITE_WITHDRAWN = "invite-withdrawn"


WITHDRAWAL_TEXT = {
    Withdrawal.NO_CONSENT: "not sent: no email consent",
    Withdrawal.UNSUBSCRIBED: "not sent: unsubscribed",
    Withdrawal.NO_ADDRESS: "not sent: no email address",
    Withdrawal.NOT_EXPECTED: "not sent: no longer expected at the session",
    Withdrawal.TOO_LATE: "not sent: too late to be of use",
    Withdrawal.SESSION_CANCELLED: "not sent: the session was cancelled",
    Withdrawal.SESSION_MOVED: "not sent: the session moved (the message about the move said so)",
    Withdrawal.SESSION_OVER: "not sent: the session is over",
    Withdrawal.INVITE_WITHDRAWN: "not sent: the invitation was withdrawn",
}
ABOUT_A_SESSION_TO_COME = (MessageKind.REMINDER, MessageKind.ROOM_OPEN,
                           MessageKind.FAMILY_INVITE, MessageKind.SESSION_MOVED)


def withdrawal(kind: MessageKind, now: datetime, expires_at: datetime | None,
               session_status: SessionStatus | None, session_ends_at: datetime | None,
               recipient: Withdrawal | None) -> Withdrawal | None:
    """Why a message due now should not go after all (``recipient``: what is wrong with its
    recipient, if anything), or None to send it."""
    if recipient is not None:
        return recipient
    if kind in ABOUT_A_SESSION_TO_COME:
        if session_status is SessionStatus.CANCELLED:
            return Withdrawal.SESSION_CANCELLED
        if session_status is SessionStatus.ENDED or (
                session_ends_at is not None and now >= session_ends_at):
            return Withdrawal.SESSION_OVER
    if expires_at is not None and now >= expires_at:
        return Withdrawal.TOO_LATE
    return None


# --- what staff see --------------------------------------------------------------------------

class Delivery(enum.StrEnum):
    """A message's state in staff's words."""

    WAITING = "waiting"
    SENDING = "sending"
    RETRYING = "retrying"
    DELIVERED = "delivered to the relay"
    BOUNCED = "bounced"
    FAILED = "failed"
    WITHDRAWN = "not sent"


def delivery(status: MessageStatus, attempts: int, claimed_until: datetime | None,
             now: datetime) -> Delivery:
    if status is MessageStatus.SENT:
        return Delivery.DELIVERED
    if status is MessageStatus.BOUNCED:
        return Delivery.BOUNCED
    if status is MessageStatus.FAILED:
        return Delivery.FAILED
    if status is MessageStatus.WITHDRAWN:
        return Delivery.WITHDRAWN
    if claimed_until is not None and claimed_until > now:
        return Delivery.SENDING
    return Delivery.RETRYING if attempts else Delivery.WAITING

