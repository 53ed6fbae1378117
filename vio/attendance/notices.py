"""A patient's "I can't make it": an excused absence told ahead, from a reminder's link.

The notice makes the patient's absence from that session excused wherever attendance is read
(``vio.attendance.records``: the session's record, weekly dosage, exports, the outreach rule);
if the patient comes after all, what the room measured stands. A therapist's override still
has the last word. The group's therapists see it on their day's list and the session's
attendance page. One notice per patient and session; each is audited. Functions leave
committing to the caller.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vio import audit_chain
from vio.attendance.models import REASON_MAX_CHARS, AbsenceNotice
from vio.identity import patient_identity, session_identity
from vio.models import Session, SessionStatus

IDS_PER_QUERY = 500


class NoticeRefused(ValueError):
    """A notice that cannot be taken; ``code`` says why, the message in words for the patient."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def checked_reason(value: object) -> str:
    reason = " ".join(value.split()) if isinstance(value, str) else ""
    if len(reason) > REASON_MAX_CHARS:
        raise NoticeRefused("reason-too-long",
                            f"Please keep the reason under {REASON_MAX_CHARS} characters.")
    return reason


def notice_problem(session: Session, now: datetime) -> NoticeRefused | None:
    """Why a notice for ``session`` cannot be taken now, if it cannot."""
    if session.status is SessionStatus.CANCELLED:
        return NoticeRefused("session-cancelled", "This appointment was cancelled, so there is "
                                                  "nothing to tell us.")
    if session.status is SessionStatus.ENDED or now >= session.ends_at:
        return NoticeRefused("session-over", "This appointment is over.")
    return None


async def notice_for(db: AsyncSession, session_id: int, patient_id: int) -> AbsenceNotice | None:
    return (await db.execute(select(AbsenceNotice).where(
        AbsenceNotice.session_id == session_id,
        AbsenceNotice.patient_id == patient_id))).scalar_one_or_none()


async def record_notice(db: AsyncSession, session: Session, patient_id: int, reason: object,
                        now: datetime, outbox_message_id: int | None = None) -> AbsenceNotice:
    """Take the patient's word that they can't make ``session``; audited."""
    text = checked_reason(reason)
    problem = notice_problem(session, now)
    if problem is not None:
        raise problem
    if await notice_for(db, session.id, patient_id) is not None:
        raise NoticeRefused("already-told", "You already told us you can't make it. Thank you.")
    notice = AbsenceNotice(session_id=session.id, patient_id=patient_id, reason=text, at=now,
                           outbox_message_id=outbox_message_id)
    db.add(notice)
    await db.flush()
    await audit_chain.audit(db, now, patient_identity(patient_id), "absence-notice",
                            session_identity(session.id), reason=text, notice=notice.id)
    return notice


async def notices_for(db: AsyncSession, session_ids: Collection[int],
                      ) -> dict[tuple[int, int], AbsenceNotice]:
    """The notices of these sessions, by (session id, patient id)."""
    ordered = sorted(set(session_ids))
    found: dict[tuple[int, int], AbsenceNotice] = {}
    for start in range(0, len(ordered), IDS_PER_QUERY):
        rows = await db.execute(select(AbsenceNotice).where(
            AbsenceNotice.session_id.in_(ordered[start:start + IDS_PER_QUERY])))
        for notice in rows.scalars():
            found[(notice.session_id, notice.patient_id)] = notice
    return found
