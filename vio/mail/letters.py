"""A queued message made ready to send: its recipient checked again, its links made, its
``Letter`` written (``vio.mail.compose``).

What was true when a message was queued may not be when it goes: the patient unsubscribed or
left the roster, the address changed, the session moved, was cancelled or is over, the
invitation was withdrawn. ``prepare`` decides on what is true now, and either withdraws the
message (``Withdrawal``) or gives the ``Letter`` to send, to the address on record now, with
the session's time now.

A patient's way in is a personal link made for the message, good until the session ends
(``clinic.issue_patient_link``, audited), and only for a patient who holds a working
personal link: turning off a patient's links (``vio.clinic.revoke_patient_links``) stops
messages from handing out new ones. A family member's is the invite's own link, sealed in the
row when it was issued.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from vio import audit_chain, clinic
from vio.attendance import records
from vio.db import keys_of
from vio.identity import patient_identity
from vio.mail import links
from vio.mail.compose import Appointment, Letter, domain_of
from vio.mail.due import Withdrawal, withdrawal
from vio.mail.models import MessageKind, OutboxMessage
from vio.mail.outbox import family_problem, patient_problem
from vio.models import FamilyInvite, FamilyMember, Patient, Session
from vio.security import Signer
from vio.settings import Settings

MAIL_ACTOR = "vio-mail"
# Messages that lead a patient into a session to come: they carry a way in and "I can't make
# it".
INTO_A_SESSION = (MessageKind.REMINDER, MessageKind.ROOM_OPEN, MessageKind.SESSION_MOVED)


def appointment_of(session: Session, settings: Settings) -> Appointment:
    return Appointment(uid=f"vio-session-{session.id}@{domain_of(settings.mail_from)}",
                       sequence=session.calendar_sequence, starts_at=session.starts_at,
                       ends_at=session.ends_at, timezone=session.timezone)


async def _recipient(db: AsyncSession, row: OutboxMessage, session: Session,
                     now: datetime) -> tuple[str, Withdrawal | None]:
    """The address to write to now, and what is wrong with writing to it, if anything."""
    if row.family_member_id is not None:
        member = await db.get(FamilyMember, row.family_member_id)
        if member is None:
            return row.to_address, Withdrawal.NO_ADDRESS
        invite_id = row.detail.get("invite")
        if row.kind is MessageKind.FAMILY_INVITE and isinstance(invite_id, int):
            invite = await db.get(FamilyInvite, invite_id)
            if invite is None or invite.revoked_at is not None:
                return member.email, Withdrawal.INVITE_WITHDRAWN
        return member.email, family_problem(member)
    patient = await db.get(Patient, row.patient_id) if row.patient_id is not None else None
    if patient is None:
        return row.to_address, Withdrawal.NO_ADDRESS
    problem = await patient_problem(db, patient, now)
    if problem is None and row.kind in INTO_A_SESSION:
        expected = await records.expected_patients(db, [session])
        if patient.id not in expected[session.id]:
            problem = Withdrawal.NOT_EXPECTED
    return patient.email, problem


async def _join_link(db: AsyncSession, settings: Settings, signer: Signer, row: OutboxMessage,
                     session: Session, now: datetime) -> str | None:
    if row.sealed_link is not None:
        return links.open_link(keys_of(db), row.message_id, row.sealed_link)
    if row.family_member_id is not None or row.kind not in INTO_A_SESSION \
            or row.patient_id is None:
        return None
    patient = await db.get(Patient, row.patient_id)
    if patient is None or not await clinic.has_live_link(db, patient.id, now):
        return None
    token = await clinic.issue_patient_link(db, signer, patient, now, until=session.ends_at)
    link = f"{settings.public_base_url}/p/{token}"
    row.sealed_link = links.seal_link(keys_of(db), row.message_id, link)
    await audit_chain.audit(db, now, MAIL_ACTOR, "patient-link-emailed",
                            patient_identity(patient.id), message=row.id,
                            session=session.id)
    return link


async def prepare(db: AsyncSession, settings: Settings, signer: Signer, row: OutboxMessage,
                  now: datetime) -> Letter | Withdrawal:
    """The letter to send for ``row`` now, or why it is withdrawn. Leaves committing (a new
    link, a changed address) to the caller."""
    session = await db.get(Session, row.session_id) if row.session_id is not None else None
    if session is None:
        return Withdrawal.SESSION_CANCELLED
    to, problem = await _recipient(db, row, session, now)
    reason = withdrawal(row.kind, now, row.expires_at, session.status, session.ends_at, problem)
    if reason is not None:
        return reason
    row.to_address = to
    base = settings.public_base_url
    patient_letter = row.family_member_id is None
    previous = row.detail.get("previous_start")
    return Letter(
        kind=row.kind, to=to, sender=settings.mail_from, display_name=settings.mail_display_name,
        message_id=row.message_id, appointment=appointment_of(session, settings), now=now,
        opens_minutes_early=settings.join_early_minutes,
        join_link=await _join_link(db, settings, signer, row, session, now),
        cant_make_it_link=(links.cant_make_it_link(base, signer, row.id)
                           if patient_letter and row.kind in INTO_A_SESSION else None),
        unsubscribe_link=links.unsubscribe_link(base, signer, row.id),
        previous_start=datetime.fromisoformat(previous) if isinstance(previous, str) else None,
        for_family=not patient_letter)
