"""Moving and cancelling a session that has not begun, and telling everyone it concerns.

A change bumps the session's calendar ``SEQUENCE`` and, in the same transaction, queues a
message to each patient expected at it who agreed to email and to each family member holding
an open invitation (``vio.mail.outbox.queue_session_change``): a move carries the updated
calendar entry, a cancellation the entry's cancellation. Reminders already queued for a
cancelled session are withdrawn with it; after a move, reminders are worked out afresh from
the new time. Invitations follow a moved session (they expire at its new end); a cancelled
session's die with it. Every change is audited; a refused one changes nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vio import audit_chain
from vio.attendance import records
from vio.identity import session_identity
from vio.mail import outbox
from vio.mail.due import Withdrawal
from vio.mail.models import MessageKind
from vio.models import FamilyInvite, Session, SessionStatus
from vio.settings import Settings


class ChangeRefused(ValueError):
    """A move or cancellation that cannot be made; ``code`` says why, the message in words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def change_problem(session: Session, now: datetime,
                   join_early_minutes: int) -> ChangeRefused | None:
    """Why this session can no longer be moved or cancelled, if it cannot."""
    if session.status is SessionStatus.CANCELLED:
        return ChangeRefused("session-cancelled", "This session is already cancelled.")
    if session.status is not SessionStatus.SCHEDULED \
            or now >= session.starts_at - timedelta(minutes=join_early_minutes):
        return ChangeRefused("session-begun", "This session's room has opened: it can no "
                                              "longer be moved or cancelled.")
    return None


async def move_session(db: AsyncSession, settings: Settings, session: Session,
                       starts_at: datetime, actor: str, now: datetime) -> list[int]:
    """Move ``session`` to start at ``starts_at``; the outbox rows queued."""
    problem = change_problem(session, now, settings.join_early_minutes)
    if problem is not None:
        raise problem
    if starts_at <= now:
        raise ChangeRefused("in-the-past", "Choose a new time that is still to come.")
    if starts_at == session.starts_at:
        raise ChangeRefused("same-time", "That is the time it already has; nothing was changed.")
    previous = session.starts_at
    session.starts_at = starts_at
    session.calendar_sequence += 1
    session.rescheduled_at = now
    for invite in (await db.execute(select(FamilyInvite).where(
            FamilyInvite.session_id == session.id, FamilyInvite.revoked_at.is_(None)))).scalars():
        invite.expires_at = session.ends_at
    await db.flush()
    await audit_chain.audit(db, now, actor, "session-moved", session_identity(session.id),
                            previous_start=previous.isoformat(),
                            starts_at=starts_at.isoformat())
    expected = (await records.expected_patients(db, [session]))[session.id]
    await outbox.withdraw_queued(db, Withdrawal.SESSION_MOVED, session_id=session.id,
                                 kinds=[MessageKind.REMINDER, MessageKind.ROOM_OPEN])
    return await outbox.queue_session_change(db, settings, session, MessageKind.SESSION_MOVED,
                                             sorted(expected), now, previous)


async def cancel_session(db: AsyncSession, settings: Settings, session: Session, actor: str,
                         now: datetime) -> list[int]:
    """Cancel ``session``; the outbox rows queued."""
    problem = change_problem(session, now, settings.join_early_minutes)
    if problem is not None:
        raise problem
    expected = (await records.expected_patients(db, [session]))[session.id]
    session.status = SessionStatus.CANCELLED
    session.calendar_sequence += 1
    await db.flush()
    await audit_chain.audit(db, now, actor, "session-cancelled", session_identity(session.id))
    await outbox.withdraw_queued(db, Withdrawal.SESSION_CANCELLED, session_id=session.id,
                                 kinds=[MessageKind.REMINDER, MessageKind.ROOM_OPEN,
                                        MessageKind.SESSION_MOVED, MessageKind.FAMILY_INVITE])
    return await outbox.queue_session_change(db, settings, session,
                                             MessageKind.SESSION_CANCELLED, sorted(expected), now)
