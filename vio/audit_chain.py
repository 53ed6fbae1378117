"""The audit log: who did what to whom, and when, as one sealed chain.

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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from vio.db import keys_of
from vio.models import (
    AuditChain,
    AuditEvent,
    FamilyInvite,
    FamilyMember,
    Group,
    Patient,
    Program,
    Session,
    StaffUser,
)

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
