"""Writing to the outbox, and taking from it: who gets what, once, and which node sends it.

- **Queued with the cause.** ``queue_family_invite`` and ``queue_session_change`` are called
  inside the transaction that issues the invite or moves or cancels the session, so the
  message exists exactly when the change does. Reminders are derived from the schedule:
  ``queue_due_reminders`` (run by each node's sender) queues the reminder that is due now
  (``vio.mail.due``) for each patient expected at the session who agreed to email.
- **Once.** Every row has a ``dedupe_key`` (unique in the database): the same reminder,
  change or invite is queued once, whichever node gets there first, and a second insert is
  ignored (``ON CONFLICT DO NOTHING``).
- **One sender.** ``claim`` takes one row in a single ``UPDATE``: on PostgreSQL its row is
  picked ``FOR UPDATE SKIP LOCKED``, so concurrent nodes take different rows; on SQLite the
  database has one writer and the ``UPDATE`` re-checks that the row is still free. The claim
  lasts ``VIO_MAIL_CLAIM_SECONDS``; a node that dies mid-send leaves it to lapse, and the row
  is taken again and sent with the same ``Message-ID``. ``finish`` writes the outcome only
  under the claim's own token.

Without ``VIO_SMTP_URL`` nothing is queued.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from vio.attendance import records
from vio.db import keys_of
from vio.mail.compose import domain_of
from vio.mail.due import WITHDRAWAL_TEXT, ReminderRule, Withdrawal, due_reminder
from vio.mail.links import seal_link
from vio.mail.models import REPLY_MAX_CHARS, MessageKind, MessageStatus, OutboxMessage
from vio.models import (
    Consent,
    ConsentKind,
    FamilyInvite,
    FamilyMember,
    Patient,
    Session,
    SessionStatus,
)
from vio.settings import Settings

# A session still running started at most this long ago (8 hours, and extensions).
SESSION_LOOKBACK = timedelta(hours=12)
IDS_PER_QUERY = 500


def mail_on(settings: Settings) -> bool:
    return bool(settings.smtp_url)


def new_message_id(settings: Settings) -> str:
    return f"<vio.{secrets.token_hex(16)}@{domain_of(settings.mail_from)}>"


async def queue(db: AsyncSession, settings: Settings, *, program_id: int, kind: MessageKind,
                dedupe_key: str, to: str, now: datetime, patient_id: int | None = None,
                family_member_id: int | None = None, session_id: int | None = None,
                expires_at: datetime | None = None, link: str | None = None,
                detail: dict[str, Any] | None = None) -> int | None:
    """Queue one message unless its ``dedupe_key`` is queued already; its row id, or None."""
    message_id = new_message_id(settings)
    values = dict(
        program_id=program_id, kind=kind, dedupe_key=dedupe_key, message_id=message_id,
        patient_id=patient_id, family_member_id=family_member_id, session_id=session_id,
        to_address=to, status=MessageStatus.QUEUED, created_at=now, next_attempt_at=now,
        expires_at=expires_at, attempts=0, reply_text="", detail=detail or {},
        sealed_link=None if link is None else seal_link(keys_of(db), message_id, link))
    dialect = db.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    row = (await db.execute(insert(OutboxMessage).values(**values)
                            .on_conflict_do_nothing(index_elements=["dedupe_key"])
                            .returning(OutboxMessage.id))).first()
    return None if row is None else int(row[0])


# --- who may be written to ---------------------------------------------------------------------

async def email_consented(db: AsyncSession, patient_ids: Sequence[int],
                          now: datetime) -> set[int]:
    """Those of ``patient_ids`` with an address and an active email-contact consent."""
    ids = sorted(set(patient_ids))
    found: set[int] = set()
    for start in range(0, len(ids), IDS_PER_QUERY):
        chunk = ids[start:start + IDS_PER_QUERY]
        rows = await db.execute(select(Consent, Patient.email).join(
            Patient, Patient.id == Consent.patient_id).where(
            Consent.patient_id.in_(chunk), Consent.kind == ConsentKind.EMAIL_CONTACT))
        found |= {consent.patient_id for consent, email in rows
                  if email and consent.active_at(now)}
    return found


def family_problem(member: FamilyMember) -> Withdrawal | None:
    if not member.email:
        return Withdrawal.NO_ADDRESS
    if member.email_unsubscribed_at is not None:
        return Withdrawal.UNSUBSCRIBED
    return None


async def patient_problem(db: AsyncSession, patient: Patient, now: datetime) -> Withdrawal | None:
    if not patient.email:
        return Withdrawal.NO_ADDRESS
    if patient.id not in await email_consented(db, [patient.id], now):
        return Withdrawal.NO_CONSENT
    return None


# --- queued with their cause ---------------------------------------------------------------

async def queue_family_invite(db: AsyncSession, settings: Settings, session: Session,
                              member: FamilyMember, invite_id: int, token: str,
                              now: datetime) -> int | None:
    """Email a family member the invite just issued (same transaction), if they have an
    address and did not unsubscribe."""
    if not mail_on(settings) or family_problem(member) is not None:
        return None
    return await queue(db, settings, program_id=session.program_id,
                       kind=MessageKind.FAMILY_INVITE, dedupe_key=f"invite:{invite_id}",
                       to=member.email, now=now, patient_id=member.patient_id,
                       family_member_id=member.id, session_id=session.id,
                       expires_at=session.ends_at, link=f"{settings.public_base_url}/i/{token}",
                       detail={"invite": invite_id})


async def queue_session_change(db: AsyncSession, settings: Settings, session: Session,
                               kind: MessageKind, expected: Sequence[int], now: datetime,
                               previous_start: datetime | None = None) -> list[int]:
    """Tell everyone the session concerns of a move or a cancellation (same transaction):
    the ``expected`` patients who agreed to email, and family members holding an open
    invitation. The calendar entry carries the session's new ``calendar_sequence``."""
    if not mail_on(settings):
        return []
    detail: dict[str, Any] = {"sequence": session.calendar_sequence}
    if previous_start is not None:
        detail["previous_start"] = previous_start.isoformat()
    tag = f"{kind.value}:s{session.id}:v{session.calendar_sequence}"
    queued = []
    patients = (await db.execute(select(Patient).where(
        Patient.id.in_(sorted(await email_consented(db, expected, now)))))).scalars().all()
    for patient in patients:
        queued.append(await queue(
            db, settings, program_id=session.program_id, kind=kind,
            dedupe_key=f"{tag}:p{patient.id}", to=patient.email, now=now,
            patient_id=patient.id, session_id=session.id, expires_at=session.ends_at,
            detail=detail))
    members = (await db.execute(select(FamilyMember).join(
        FamilyInvite, FamilyInvite.family_member_id == FamilyMember.id).where(
        FamilyInvite.session_id == session.id, FamilyInvite.revoked_at.is_(None))
        .distinct())).scalars().all()
    for member in members:
        if family_problem(member) is None:
            queued.append(await queue(
                db, settings, program_id=session.program_id, kind=kind,
                dedupe_key=f"{tag}:f{member.id}", to=member.email, now=now,
                patient_id=member.patient_id, family_member_id=member.id,
                session_id=session.id, expires_at=session.ends_at, detail=detail))
    return [q for q in queued if q is not None]


# --- reminders, from the schedule -------------------------------------------------------------

def reminder_rule(settings: Settings) -> ReminderRule:
    return ReminderRule(settings.mail_reminder_minutes, settings.join_early_minutes)


def reminder_key(kind_key: str, session: Session, patient_id: int) -> str:
    return f"reminder:{kind_key}:s{session.id}:v{session.calendar_sequence}:p{patient_id}"


async def queue_due_reminders(db: AsyncSession, settings: Settings, now: datetime) -> int:
    """Queue each reminder due now that is not queued yet; how many were queued."""
    if not mail_on(settings):
        return 0
    rule = reminder_rule(settings)
    horizon = max((m for m in rule.lead_minutes), default=0)
    candidates = (await db.execute(select(Session).where(
        Session.status.in_([SessionStatus.SCHEDULED, SessionStatus.OPEN]),
        Session.starts_at > now - SESSION_LOOKBACK,
        Session.starts_at <= now + timedelta(minutes=max(horizon,
                                                         rule.join_early_minutes)))
        .order_by(Session.starts_at, Session.id))).scalars().all()
    due = [(s, d) for s in candidates
           if (d := due_reminder(rule, s.starts_at, s.ends_at, now, s.rescheduled_at))]
    if not due:
        return 0
    expected = await records.expected_patients(db, [s for s, _ in due])
    consenting = await email_consented(db, sorted({p for ids in expected.values() for p in ids}),
                                       now)
    wanted = {reminder_key(d.key, s, p): (s, d, p) for s, d in due
              for p in sorted(expected[s.id] & consenting)}
    queued_already = set()
    keys = sorted(wanted)
    for start in range(0, len(keys), IDS_PER_QUERY):
        queued_already |= set((await db.execute(select(OutboxMessage.dedupe_key).where(
            OutboxMessage.dedupe_key.in_(keys[start:start + IDS_PER_QUERY])))).scalars())
    missing = [key for key in keys if key not in queued_already]
    addresses = {int(pid): str(email) for pid, email in await db.execute(
        select(Patient.id, Patient.email).where(
            Patient.id.in_(sorted({wanted[k][2] for k in missing}))))} if missing else {}
    count = 0
    for key in missing:
        session, moment, patient_id = wanted[key]
        if await queue(db, settings, program_id=session.program_id, kind=moment.kind,
                       dedupe_key=key, to=addresses[patient_id], now=now,
                       patient_id=patient_id, session_id=session.id, expires_at=moment.until,
                       detail={"lead_minutes": moment.lead_minutes}) is not None:
            count += 1
    return count


# --- taking and finishing ---------------------------------------------------------------------

def _claimable(now: datetime) -> Any:
    return and_(OutboxMessage.status == MessageStatus.QUEUED,
                OutboxMessage.next_attempt_at <= now,
                or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until <= now))


def _pick(now: datetime) -> Select[int]:
    return (select(OutboxMessage.id).where(_claimable(now))
            .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id).limit(1)
            .with_for_update(skip_locked=True))


async def claim(db: AsyncSession, node: str, now: datetime,
                lease: timedelta) -> tuple[int, str] | None:
    """Take the next message due for sending, for ``lease``: its row id and the claim's
    token, or None. Commits."""
    token = secrets.token_hex(16)
    row = (await db.execute(
        update(OutboxMessage)
        # ``= (subquery)``, evaluated once; an ``IN (subquery)`` may be planned to run per
        # row on PostgreSQL and take more than one.
        .where(OutboxMessage.id == _pick(now).scalar_subquery(), _claimable(now))
        .values(claimed_by=node, claim_token=token, claimed_until=now + lease,
                attempts=OutboxMessage.attempts + 1)
        .returning(OutboxMessage.id)
        .execution_options(synchronize_session=False))).first()
    await db.commit()
    return None if row is None else (int(row[0]), token)


async def finish(db: AsyncSession, row_id: int, token: str, *, still_queued: bool = False,
                 **values: Any) -> bool:
    """Write a message's outcome and let go of it, if the claim ``token`` still holds it (and,
    with ``still_queued``, if nobody withdrew it meanwhile)."""
    if isinstance(values.get("reply_text"), str):
        values["reply_text"] = values["reply_text"][:REPLY_MAX_CHARS]
    query = update(OutboxMessage).where(OutboxMessage.id == row_id,
                                        OutboxMessage.claim_token == token)
    if still_queued:
        query = query.where(OutboxMessage.status == MessageStatus.QUEUED)
    result = await db.execute(
        query
        .values(claimed_by=None, claim_token=None, claimed_until=None, **values)
        .returning(OutboxMessage.id)
        .execution_options(synchronize_session=False))
    return result.first() is not None


async def withdraw_queued(db: AsyncSession, reason: Withdrawal, *,
                          patient_id: int | None = None, family_member_id: int | None = None,
                          session_id: int | None = None,
                          kinds: Sequence[MessageKind] | None = None) -> int:
    """Withdraw every queued message matching these (patient's own, a family member's, a
    session's); how many."""
    query = update(OutboxMessage).where(OutboxMessage.status == MessageStatus.QUEUED)
    if patient_id is not None:
        query = query.where(OutboxMessage.patient_id == patient_id,
                            OutboxMessage.family_member_id.is_(None))
    if family_member_id is not None:
        query = query.where(OutboxMessage.family_member_id == family_member_id)
    if session_id is not None:
        query = query.where(OutboxMessage.session_id == session_id)
    if kinds is not None:
        query = query.where(OutboxMessage.kind.in_(list(kinds)))
    rows = await db.execute(
        query.values(status=MessageStatus.WITHDRAWN, sealed_link=None,
                     reply_text=WITHDRAWAL_TEXT[reason])
        .returning(OutboxMessage.id).execution_options(synchronize_session=False))
    return len(rows.all())


async def messages_about(db: AsyncSession, patient: Patient,
                         limit: int) -> list[OutboxMessage]:
    """The newest messages to the patient and their family, newest first."""
    return list((await db.execute(select(OutboxMessage).where(
        OutboxMessage.program_id == patient.program_id, OutboxMessage.patient_id == patient.id)
        .order_by(OutboxMessage.created_at.desc(), OutboxMessage.id.desc())
        .limit(limit))).scalars())
