"""Clinic records: the operations staff pages, the command line and the demo share.

Functions take an ``AsyncSession`` and leave committing to the caller unless they say otherwise.

The audit log is one sealed chain (``AuditEvent``): ``audit`` takes the chain's head row first
(``UPDATE audit_chain``, which makes concurrent writers, in any process, take turns until
commit), numbers the new row, and stores ``hash = HMAC-SHA256(audit key, canonical row content,
prev_hash)``; the key comes from the install's secret (``vio.keys``), never the database, so
whoever can write the database cannot seal a row. ``verify_audit_chain`` walks the rows in
order and names the first one altered or missing; given a head kept off the machine
(``AuditHead``), it also catches the newest rows deleted and the head row set back.
Each row is scoped to the program it concerns, found from its target (or actor) unless given.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from vio.db import keys_of
from vio.models import (
    DEFAULT_BILLING_CODE,
    AttendanceEvent,
    AttendanceKind,
    AuditChain,
    AuditEvent,
    FamilyInvite,
    FamilyMember,
    Group,
    GroupTherapist,
    Patient,
    PatientLink,
    Program,
    RosterMembership,
    Session,
    SessionKind,
    SessionSeries,
    SessionTherapist,
    StaffUser,
    WaitingRoomPolicy,
)
from vio.policy import Scope, session_where
from vio.scheduling import parse_weekdays, weekly_occurrences
from vio.security import Signer, new_secret, same_secret, secret_hash

PATIENT_LINK_NAMESPACE = "patient-link"
# Signature age cap; the link's real expiry is the enrollment end, checked in the database.
PATIENT_LINK_MAX_AGE_SECONDS = 2 * 365 * 24 * 3600


AUDIT_GENESIS = "0" * 64
AUDIT_CHAIN_ID = 1
AUDIT_HASH_HEX_DIGITS = 64
AUDIT_SEQ_MAX_DIGITS = 18
VERIFY_BATCH = 1000


def audit_digest(key: bytes, seq: int, at: datetime, program_id: int | None, actor: str,
                 action: str, target: str, detail: Any, prev_hash: str) -> str:
    """HMAC-SHA256, under the install's audit key, of one audit row's canonical content and
    the hash of the row before it."""
    body = json.dumps([seq, at.astimezone(UTC).isoformat(timespec="microseconds"), program_id,
                       actor, action, target, detail, prev_hash],
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AuditHead:
    """Row ``seq`` of the audit chain and its hash, ``SEQ:HASH``: ``vio audit head`` prints
    it, and kept off the machine, ``vio audit verify --expect`` proves it is still there."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> AuditHead:
        """Read ``SEQ:HASH``, or the whole ``audit head SEQ:HASH`` line; ValueError says why."""
        words = text.split()
        if words[:2] == ["audit", "head"]:
            words = words[2:]
        seq_text, colon, hash_text = (words[0] if len(words) == 1 else "").partition(":")
        hash_text = hash_text.lower()
        if not (colon and seq_text.isascii() and seq_text.isdigit()
                and len(seq_text) <= AUDIT_SEQ_MAX_DIGITS
                and len(hash_text) == AUDIT_HASH_HEX_DIGITS
                and all(c in "0123456789abcdef" for c in hash_text)):
            raise ValueError(
                f"'{text.strip()}' is not an audit head: give it as `vio audit head` prints it, "
                f"SEQ:HASH, a row number, a colon and {AUDIT_HASH_HEX_DIGITS} hex digits")
        return cls(int(seq_text), hash_text)


async def program_of(db: AsyncSession, identity_text: str) -> int | None:
    """The program a ``kind:id`` identity belongs to, if it names a record that has one."""
    kind, _, raw = identity_text.partition(":")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return None
    record_id = int(raw)
    record: Any
    if kind == "program":
        return record_id if await db.get(Program, record_id) is not None else None
    if kind == "staff":
        record = await db.get(StaffUser, record_id)
    elif kind == "patient":
        record = await db.get(Patient, record_id)
    elif kind == "session":
        record = await db.get(Session, record_id)
    elif kind == "group":
        record = await db.get(Group, record_id)
    elif kind == "family-member":
        member = await db.get(FamilyMember, record_id)
        record = None if member is None else await db.get(Patient, member.patient_id)
    elif kind == "family-invite":
        invite = await db.get(FamilyInvite, record_id)
        record = None if invite is None else await db.get(Session, invite.session_id)
    else:
        return None
    return None if record is None else int(record.program_id)


async def audit(db: AsyncSession, at: datetime, actor: str, action: str, target: str,
                **detail: Any) -> AuditEvent:
    """Append one row to the audit chain (committed with the caller's transaction), scoped to
    the program of its target, else of its actor."""
    program_id = await program_of(db, target) or await program_of(db, actor)
    return await audit_in(db, program_id, at, actor, action, target, **detail)


async def audit_in(db: AsyncSession, program_id: int | None, at: datetime, actor: str,
                   action: str, target: str, **detail: Any) -> AuditEvent:
    """``audit``, scoped to ``program_id`` as given (None: no one program's business)."""
    canonical = json.loads(json.dumps(detail, default=str))
    head = (await db.execute(
        update(AuditChain).where(AuditChain.id == AUDIT_CHAIN_ID)
        .values(length=AuditChain.length + 1)
        .returning(AuditChain.length, AuditChain.last_hash)
        .execution_options(synchronize_session=False))).one()
    seq, prev_hash = int(head.length), str(head.last_hash)
    digest = audit_digest(keys_of(db).audit, seq, at, program_id, actor, action, target,
                          canonical, prev_hash)
    event = AuditEvent(seq=seq, at=at, program_id=program_id, actor=actor, action=action,
                       target=target, detail=canonical, prev_hash=prev_hash, hash=digest)
    db.add(event)
    await db.execute(update(AuditChain).where(AuditChain.id == AUDIT_CHAIN_ID)
                     .values(last_hash=digest).execution_options(synchronize_session=False))
    await db.flush()
    return event


class ChainProblem(enum.StrEnum):
    ALTERED = "altered"
    MISSING = "missing"
    HEAD_ALTERED = "head-altered"
    HEAD_MISSING = "head-missing"
    CUT_SHORT = "cut-short"  # the chain ends before a head kept elsewhere
    NOT_EXPECTED = "not-expected"  # the row at a head kept elsewhere has another hash


CHAIN_PROBLEM_TEXT = {
    ChainProblem.ALTERED: "audit row {seq} (id {audit_id}) was altered",
    ChainProblem.MISSING: "audit row {seq} is missing: it was deleted",
    ChainProblem.HEAD_ALTERED: "the audit chain's head (table audit_chain) does not match its "
                               "last row, {seq}: one of them was altered",
    ChainProblem.HEAD_MISSING: "the audit chain's head (table audit_chain) is missing: it was "
                               "deleted",
    ChainProblem.CUT_SHORT: "audit rows from {seq} on are missing: the chain ends at row "
                            "{before}, before the head kept elsewhere ({expected}); the newest "
                            "rows were deleted",
    ChainProblem.NOT_EXPECTED: "audit row {seq} (id {audit_id}) does not have the hash of the "
                               "head kept elsewhere ({expected}): the chain was rewritten up "
                               "to there, or that head is another install's",
}


@dataclass(frozen=True)
class ChainBreak:
    """Where the audit chain stops holding: the first row altered or missing, or the head
    kept elsewhere (``expected``) that the chain no longer reaches unchanged."""

    seq: int
    audit_id: int | None
    problem: ChainProblem
    expected: AuditHead | None = None

    def __str__(self) -> str:
        return CHAIN_PROBLEM_TEXT[self.problem].format(
            seq=self.seq, before=self.seq - 1, audit_id=self.audit_id, expected=self.expected)


@dataclass(frozen=True)
class ChainReport:
    """How far the chain holds: ``rows`` rows ending in ``head_hash``, then ``broken``."""

    rows: int
    head_hash: str
    broken: ChainBreak | None

    @property
    def head(self) -> AuditHead:
        return AuditHead(self.rows, self.head_hash)


async def _rows_in_order(db: AsyncSession, last_seq: int) -> AsyncIterator[AuditEvent]:
    """Rows 1 to ``last_seq`` by ``seq``, a batch at a time (changes flushed between)."""
    after = 0
    while True:
        batch = list((await db.execute(
            select(AuditEvent).where(AuditEvent.seq > after, AuditEvent.seq <= last_seq)
            .order_by(AuditEvent.seq).limit(VERIFY_BATCH))).scalars())
        for row in batch:
            yield row
        if len(batch) < VERIFY_BATCH:
            return
        after = batch[-1].seq
        await db.flush()
        db.expunge_all()


async def verify_audit_chain(db: AsyncSession, expect: AuditHead | None = None,
                             key: bytes | None = None) -> ChainReport:
    """Check every row's seal from the first to the head; report the first one altered or
    deleted. ``expect``, a head kept off the machine, must still be on the chain unchanged.

    The seal is checked under ``key``, by default the install's (``keys_of``). The head row is
    read first, so rows committed meanwhile lie beyond it and are left for the next check."""
    key = keys_of(db).audit if key is None else key
    head = (await db.execute(select(AuditChain.length, AuditChain.last_hash).where(
        AuditChain.id == AUDIT_CHAIN_ID))).one_or_none()
    if head is None:
        return ChainReport(0, AUDIT_GENESIS, ChainBreak(1, None, ChainProblem.HEAD_MISSING))
    length, last_hash = int(head.length), str(head.last_hash)

    def off(seq: int, audit_id: int | None, digest: str) -> ChainReport | None:
        if expect is None or seq != expect.seq or hmac.compare_digest(digest, expect.hash):
            return None
        return ChainReport(seq - 1, prev_hash,
                           ChainBreak(seq, audit_id, ChainProblem.NOT_EXPECTED, expect))

    expected, prev_hash, previous = 1, AUDIT_GENESIS, None
    if (report := off(0, None, AUDIT_GENESIS)) is not None:
        return report
    async for row in _rows_in_order(db, length):
        if row.seq != expected:
            return ChainReport(expected - 1, prev_hash,
                               ChainBreak(expected, None, ChainProblem.MISSING))
        if row.prev_hash != prev_hash:  # the row before was altered, or this one if first
            blame = previous or row
            return ChainReport(blame.seq - 1, blame.prev_hash if previous else prev_hash,
                               ChainBreak(blame.seq, blame.id, ChainProblem.ALTERED))
        digest = audit_digest(key, row.seq, row.at, row.program_id, row.actor, row.action,
                              row.target, row.detail, row.prev_hash)
        if not hmac.compare_digest(digest, row.hash):
            return ChainReport(expected - 1, prev_hash,
                               ChainBreak(row.seq, row.id, ChainProblem.ALTERED))
        if (report := off(row.seq, row.id, row.hash)) is not None:
            return report
        previous, prev_hash, expected = row, row.hash, expected + 1
    rows = expected - 1
    if rows < length:
        return ChainReport(rows, prev_hash, ChainBreak(rows + 1, None, ChainProblem.MISSING))
    if last_hash != prev_hash:
        return ChainReport(rows, prev_hash, ChainBreak(rows, None, ChainProblem.HEAD_ALTERED))
    if expect is not None and expect.seq > rows:
        return ChainReport(rows, prev_hash,
                           ChainBreak(rows + 1, None, ChainProblem.CUT_SHORT, expect))
    return ChainReport(rows, prev_hash, None)


async def reseal_audit_chain(db: AsyncSession, old_key: bytes, at: datetime,
                             actor: str) -> ChainReport:
    """Seal the chain again under the install's key, after ``VIO_SECRET_KEY`` changed.

    Only a chain that holds under ``old_key`` is resealed (else nothing changes); the row
    appended, ``audit-chain-resealed``, names the head that held under the old key. Returns the
    old key's report. Writers wait for the caller's commit (the head row is taken first)."""
    await db.execute(update(AuditChain).where(AuditChain.id == AUDIT_CHAIN_ID)
                     .values(length=AuditChain.length)
                     .execution_options(synchronize_session=False))
    before = await verify_audit_chain(db, key=old_key)
    if before.broken is not None:
        return before
    key, prev_hash = keys_of(db).audit, AUDIT_GENESIS
    async for row in _rows_in_order(db, before.rows):
        row.prev_hash = prev_hash
        row.hash = prev_hash = audit_digest(key, row.seq, row.at, row.program_id, row.actor,
                                            row.action, row.target, row.detail, prev_hash)
    await db.flush()
    await db.execute(update(AuditChain).where(AuditChain.id == AUDIT_CHAIN_ID)
                     .values(last_hash=prev_hash).execution_options(synchronize_session=False))
    await audit_in(db, None, at, actor, "audit-chain-resealed", "audit-chain",
                   old_head=str(before.head))
    return before


async def staff_by_email(db: AsyncSession, email: str) -> StaffUser | None:
    return (await db.execute(
        select(StaffUser).where(StaffUser.email == email.strip().lower()))).scalar_one_or_none()


# --- patient links -------------------------------------------------------------------------

class LinkProblem(enum.StrEnum):
    MALFORMED = "link-malformed"
    UNKNOWN = "link-unknown"
    REVOKED = "link-revoked"
    EXPIRED = "link-expired"


LINK_PROBLEM_TEXT = {
    LinkProblem.MALFORMED: "This link is not complete. Please copy the whole link and try again.",
    LinkProblem.UNKNOWN: "We don't recognise this link. Please ask your care team for a new one.",
    LinkProblem.REVOKED: "This link has been turned off. Please ask your care team for a new one.",
    LinkProblem.EXPIRED: "This link has expired. Please ask your care team for a new one.",
}


async def issue_patient_link(db: AsyncSession, signer: Signer, patient: Patient,
                             now: datetime) -> str:
    """A new personal link token for ``patient``, valid until the end of their enrollment."""
    secret = new_secret()
    expires = datetime.combine(patient.enrollment_ends_on + timedelta(days=1), time(0), UTC)
    link = PatientLink(patient_id=patient.id, secret_hash=secret_hash(secret), created_at=now,
                       expires_at=expires)
    db.add(link)
    await db.flush()
    return signer.sign({"l": link.id, "s": secret}, PATIENT_LINK_NAMESPACE)


async def resolve_patient_link(db: AsyncSession, signer: Signer, token: str,
                               now: datetime) -> Patient | LinkProblem:
    payload = signer.unsign(token, PATIENT_LINK_NAMESPACE, PATIENT_LINK_MAX_AGE_SECONDS)
    if (not isinstance(payload, dict) or not isinstance(payload.get("l"), int)
            or not isinstance(payload.get("s"), str)):
        return LinkProblem.MALFORMED
    link = await db.get(PatientLink, payload["l"])
    if link is None or not same_secret(link.secret_hash, payload["s"]):
        return LinkProblem.UNKNOWN
    if link.revoked_at is not None:
        return LinkProblem.REVOKED
    patient = await db.get(Patient, link.patient_id)
    if patient is None:
        return LinkProblem.UNKNOWN
    if now >= link.expires_at or not patient.is_enrolled_on(now.date()):
        return LinkProblem.EXPIRED
    return patient


async def revoke_patient_links(db: AsyncSession, patient_id: int, now: datetime) -> int:
    links = (await db.execute(select(PatientLink).where(
        PatientLink.patient_id == patient_id, PatientLink.revoked_at.is_(None)))).scalars().all()
    for link in links:
        link.revoked_at = now
    return len(links)


# --- groups and rosters ---------------------------------------------------------------------

async def roster(db: AsyncSession, group_id: int, day: date) -> list[Patient]:
    """Patients on the group's roster on ``day``."""
    rows = (await db.execute(
        select(Patient, RosterMembership)
        .join(RosterMembership, RosterMembership.patient_id == Patient.id)
        .where(RosterMembership.group_id == group_id)
        .order_by(Patient.legal_name))).all()
    return [patient for patient, membership in rows if membership.covers(day)]


async def group_therapist_ids(db: AsyncSession, group_id: int) -> list[int]:
    return list((await db.execute(select(GroupTherapist.staff_id).where(
        GroupTherapist.group_id == group_id))).scalars())


# --- sessions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionPlan:
    """What staff fill in to schedule a session or a weekly series of them."""

    program_id: int
    title: str
    kind: SessionKind
    timezone: str
    duration_minutes: int
    therapist_ids: tuple[int, ...]
    group_id: int | None = None
    patient_id: int | None = None
    billing_code: str | None = None
    waiting_room: WaitingRoomPolicy = WaitingRoomPolicy.THERAPIST_ADMITS

    def check(self) -> None:
        if not self.title.strip():
            raise ValueError("A session needs a title.")
        if not 5 <= self.duration_minutes <= 8 * 60:
            raise ValueError("Duration must be between 5 minutes and 8 hours.")
        if self.kind is SessionKind.GROUP and self.group_id is None:
            raise ValueError("A group session needs a group.")
        if self.kind is not SessionKind.GROUP and self.group_id is None \
                and self.patient_id is None:
            raise ValueError("This kind of session needs a patient.")
        if not self.therapist_ids:
            raise ValueError("A session needs at least one therapist.")


async def schedule_session(db: AsyncSession, plan: SessionPlan, starts_at: datetime,
                           series_id: int | None = None) -> Session:
    plan.check()
    session = Session(
        program_id=plan.program_id, series_id=series_id, title=plan.title.strip(),
        kind=plan.kind, group_id=plan.group_id, patient_id=plan.patient_id,
        starts_at=starts_at, duration_minutes=plan.duration_minutes, timezone=plan.timezone,
        billing_code=plan.billing_code or DEFAULT_BILLING_CODE[plan.kind],
        waiting_room=plan.waiting_room)
    db.add(session)
    await db.flush()
    for staff_id in plan.therapist_ids:
        db.add(SessionTherapist(session_id=session.id, staff_id=staff_id))
    return session


async def schedule_series(db: AsyncSession, plan: SessionPlan, first_day: date, weeks: int,
                          weekdays: str, local_start: time) -> list[Session]:
    """A weekly series and all its sessions, at the same local time every time."""
    plan.check()
    days = parse_weekdays(weekdays)
    if not 1 <= weeks <= 52:
        raise ValueError("A series runs from 1 to 52 weeks.")
    series = SessionSeries(
        program_id=plan.program_id, title=plan.title.strip(), kind=plan.kind,
        group_id=plan.group_id, patient_id=plan.patient_id,
        weekdays=",".join(map(str, days)), local_start=local_start,
        duration_minutes=plan.duration_minutes, timezone=plan.timezone, first_day=first_day,
        weeks=weeks)
    db.add(series)
    await db.flush()
    return [await schedule_session(db, plan, start, series_id=series.id)
            for start in weekly_occurrences(first_day, weeks, days, local_start, plan.timezone)]


async def session_therapist_ids(db: AsyncSession, session_id: int) -> list[int]:
    return list((await db.execute(select(SessionTherapist.staff_id).where(
        SessionTherapist.session_id == session_id))).scalars())


def sessions_between(start: datetime, end: datetime) -> Select[Session]:
    return (select(Session).where(Session.starts_at >= start, Session.starts_at < end)
            .order_by(Session.starts_at))


async def sessions_for_staff(db: AsyncSession, scope: Scope, start: datetime,
                             end: datetime) -> list[Session]:
    """The sessions in [start, end) that ``vio.policy`` lets this staff member see: an admin's
    whole program's, a therapist's those they are assigned to."""
    query = sessions_between(start, end).where(session_where(scope))
    return list((await db.execute(query)).scalars())


async def sessions_for_patient(db: AsyncSession, patient: Patient, start: datetime,
                               end: datetime) -> list[Session]:
    """Sessions the patient belongs in: their own, and their groups' while on the roster."""
    memberships = (await db.execute(select(RosterMembership).where(
        RosterMembership.patient_id == patient.id))).scalars().all()
    sessions = (await db.execute(sessions_between(start, end).where(
        Session.program_id == patient.program_id))).scalars().all()
    mine = []
    for session in sessions:
        if session.patient_id == patient.id or (session.group_id is not None and any(
                m.group_id == session.group_id and m.covers(session.starts_at.date())
                for m in memberships)):
            mine.append(session)
    return mine


async def room_end_moments(db: AsyncSession, session_ids: Iterable[int]) -> dict[int, datetime]:
    """When each of these sessions' rooms ended (its first ``session-ended`` event), for the
    sessions whose room has ended. A session ended early is over at that moment: what was
    held is all that was scheduled."""
    ids = sorted(set(session_ids))
    if not ids:
        return {}
    rows = await db.execute(
        select(AttendanceEvent.session_id, func.min(AttendanceEvent.at))
        .where(AttendanceEvent.session_id.in_(ids),
               AttendanceEvent.kind == AttendanceKind.SESSION_ENDED)
        .group_by(AttendanceEvent.session_id))
    return {int(session_id): ended for session_id, ended in rows}
