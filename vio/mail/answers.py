"""What a recipient answers through a message's links: unsubscribe, and "I can't make it".

- **Unsubscribe** (RFC 8058 one-click, or the page's button): honoured at once. A patient's
  email-contact consent is revoked; a family member's address is set aside for good. Every
  message still queued for them is withdrawn in the same transaction, and it is audited. A
  second unsubscribe changes nothing and says so.
- **"I can't make it"**: the patient's notice for the message's session
  (``vio.attendance.notices``), with an optional reason.

The link names the message; the message names its recipient and session. A link that is
forged, too old or names no message is ``LinkProblem.UNKNOWN``. Functions leave committing to
the caller.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vio import audit_chain
from vio.attendance import notices
from vio.attendance.models import AbsenceNotice
from vio.identity import family_member_identity, patient_identity
from vio.mail import links, outbox
from vio.mail.due import Withdrawal
from vio.mail.models import OutboxMessage
from vio.models import Consent, ConsentKind, FamilyMember, Session
from vio.security import Signer


class LinkProblem(enum.StrEnum):
    UNKNOWN = "link-unknown"
    NOT_FOR_THIS = "link-not-for-this"  # a message with no session to answer about


LINK_PROBLEM_TEXT = {
    LinkProblem.UNKNOWN: "We don't recognise this link, or it is too old. If you still get "
                         "messages you don't want, reply to one of them to let us know.",
    LinkProblem.NOT_FOR_THIS: "This link is not for an appointment you can answer here.",
}


@dataclass(frozen=True)
class Unsubscribed:
    recipient: str  # patient:3 or family-member:2
    already: bool  # nothing changed: they had unsubscribed before
    withdrawn: int  # queued messages withdrawn


async def message_for(db: AsyncSession, signer: Signer, token: str, days: int, *,
                      cant_make_it: bool) -> OutboxMessage | LinkProblem:
    row_id = (links.cant_make_it_message if cant_make_it else links.unsubscribe_message)(
        signer, token, days)
    row = await db.get(OutboxMessage, row_id) if row_id is not None else None
    return LinkProblem.UNKNOWN if row is None else row


async def unsubscribe(db: AsyncSession, row: OutboxMessage, now: datetime,
                      how: str) -> Unsubscribed:
    """Stop every message to the recipient of ``row``; ``how`` says which way (one-click by the
    mail program, or the page's button), for the audit log."""
    if row.family_member_id is not None:
        member = await db.get(FamilyMember, row.family_member_id)
        assert member is not None
        recipient = family_member_identity(member.id)
        already = member.email_unsubscribed_at is not None
        if not already:
            member.email_unsubscribed_at = now
        withdrawn = await outbox.withdraw_queued(db, Withdrawal.UNSUBSCRIBED,
                                                 family_member_id=member.id)
    else:
        assert row.patient_id is not None
        recipient = patient_identity(row.patient_id)
        consents = (await db.execute(select(Consent).where(
            Consent.patient_id == row.patient_id,
            Consent.kind == ConsentKind.EMAIL_CONTACT))).scalars().all()
        active = [c for c in consents if c.active_at(now)]
        for consent in active:
            consent.revoked_at = now
        already = not active
        withdrawn = await outbox.withdraw_queued(db, Withdrawal.UNSUBSCRIBED,
                                                 patient_id=row.patient_id)
    if not already or withdrawn:
        await audit_chain.audit(db, now, recipient, "email-unsubscribed", recipient,
                                message=row.id, how=how, withdrawn=withdrawn)
    await db.flush()
    return Unsubscribed(recipient, already, withdrawn)


async def cant_make_it(db: AsyncSession, row: OutboxMessage, reason: object,
                       now: datetime) -> AbsenceNotice:
    """Record the patient's notice for the message's session; ``NoticeRefused`` says why
    not."""
    session = await db.get(Session, row.session_id) if row.session_id is not None else None
    if session is None or row.patient_id is None or row.family_member_id is not None:
        raise notices.NoticeRefused(LinkProblem.NOT_FOR_THIS.value,
                                    LINK_PROBLEM_TEXT[LinkProblem.NOT_FOR_THIS])
    return await notices.record_notice(db, session, row.patient_id, reason, now,
                                       outbox_message_id=row.id)
