"""the audit chain sealed with an HMAC under a key derived from the install's secret

Until now each audit row's hash was a plain SHA-256, which anyone who can write the database
can recompute after changing a row. This migration first checks that plain chain as it stands
(every row's hash, the link to the row before, no row missing, the head row), then seals every
row again with HMAC-SHA256 under the install's audit key (``vio.keys``, derived from
``VIO_SECRET_KEY``, which alembic is handed by ``vio migrate``), and appends one sealed row,
``audit-chain-sealed``, that records the old chain: how many rows it had, its head, whether it
held, and if not, where it broke (a new install's empty chain needs no record). A broken
old chain is sealed all the same, so the install can run, with its rows numbered 1, 2, 3 …
again around any that were deleted; the appended row is the record of what was found.
Downgrading does the reverse under the same rules.

Self-contained: the digest and the tables are as they were at this revision.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision = "0008"
down_revision = "0007"

GENESIS = "0" * 64
CHAIN_ID = 1
BATCH = 1000
PROBLEMS_RECORDED = 20  # sentences kept in the record; the count covers them all
ACTOR = "migration:0008"
TARGET = "audit-chain"
PLAIN = "sha256"
SEALED = "hmac-sha256"

log = logging.getLogger("vio.migrations")

events = sa.table(
    "audit_events",
    sa.column("id", sa.Integer), sa.column("seq", sa.Integer), sa.column("at", sa.DateTime),
    sa.column("program_id", sa.Integer), sa.column("actor", sa.String),
    sa.column("action", sa.String), sa.column("target", sa.String),
    sa.column("detail", sa.JSON), sa.column("prev_hash", sa.String),
    sa.column("hash", sa.String))
chain = sa.table("audit_chain", sa.column("id", sa.Integer), sa.column("length", sa.Integer),
                 sa.column("last_hash", sa.String))

Digest = Callable[[bytes], str]


def _body(seq: int, at: datetime, program_id: int | None, actor: str, action: str,
          target: str, detail: Any, prev_hash: str) -> bytes:
    """One row's canonical content, as ``vio.audit_chain.audit_digest`` wrote it at this revision."""
    moment = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
    return json.dumps([seq, moment.isoformat(timespec="microseconds"), program_id, actor,
                       action, target, detail, prev_hash],
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _plain(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _sealed() -> Digest:
    keys = context.config.attributes.get("keys")
    key = getattr(keys, "audit", None)
    if not isinstance(key, bytes):
        raise RuntimeError(
            "migration 0008 seals the audit log under a key derived from VIO_SECRET_KEY, and "
            "was run without the install's keys: run `vio migrate` with the settings vio "
            "serves with, not alembic by hand")
    return lambda body: hmac.new(key, body, hashlib.sha256).hexdigest()


def _digest(digest: Digest, row: Any, seq: int, prev_hash: str) -> str:
    return digest(_body(seq, row.at, row.program_id, row.actor, row.action, row.target,
                        row.detail, prev_hash))


class Found:
    """The chain as it stood: rows present, the head row, and every problem with them.

    (A plain class: alembic loads this file outside ``sys.modules``, where dataclasses fail.)
    """

    def __init__(self, head: Any) -> None:
        self.head = head
        self.rows = self.first_seq = self.last_seq = self.problem_count = 0
        self.problems: list[str] = []

    def problem(self, sentence: str) -> None:
        self.problem_count += 1
        if len(self.problems) < PROBLEMS_RECORDED:
            self.problems.append(sentence)

    @property
    def renumbered(self) -> bool:
        return self.rows > 0 and (self.first_seq != 1 or self.last_seq != self.rows)


def _in_order(conn: sa.Connection) -> Iterator[Any]:
    """Every row by ``seq``, a batch at a time; a row renumbered meanwhile comes back no more."""
    after: int | None = None
    while True:
        query = sa.select(events).order_by(events.c.seq).limit(BATCH)
        batch = conn.execute(query if after is None else query.where(events.c.seq > after)).all()
        yield from batch
        if len(batch) < BATCH:
            return
        after = batch[-1].seq


def _missing(first: int, last: int) -> str:
    if first == last:
        return f"audit row {first} is missing: it was deleted"
    return f"audit rows {first} to {last} are missing: they were deleted"


def _check(conn: sa.Connection, digest: Digest) -> Found:
    found = Found(conn.execute(sa.select(chain.c.length, chain.c.last_hash)
                               .where(chain.c.id == CHAIN_ID)).first())
    expected, prev_hash, previous = 1, GENESIS, None
    for row in _in_order(conn):
        found.rows += 1
        found.first_seq = row.seq if found.rows == 1 else found.first_seq
        found.last_seq = row.seq
        blamed = False
        if row.seq < expected:
            found.problem(f"audit row {row.seq} (id {row.id}) is numbered out of order")
        elif row.seq > expected:
            found.problem(_missing(expected, row.seq - 1))
        elif row.prev_hash != prev_hash:
            blame = row if previous is None else previous
            found.problem(f"audit row {blame.seq} (id {blame.id}) was altered")
            blamed = blame is row
        if _digest(digest, row, row.seq, row.prev_hash) != row.hash and not blamed:
            found.problem(f"audit row {row.seq} (id {row.id}) was altered")
        expected, prev_hash, previous = max(expected, row.seq + 1), row.hash, row
    head = found.head
    if head is None:
        found.problem("the audit chain's head (table audit_chain) is missing: it was deleted")
    elif head.length > found.last_seq:
        found.problem(_missing(found.last_seq + 1, head.length) + " (the newest)")
    elif head.length < found.last_seq or head.last_hash != prev_hash:
        found.problem(f"the audit chain's head (table audit_chain) says row {head.length}, "
                      f"{head.last_hash}, which is not its last row: one of them was altered")
    return found


def _rechain(conn: sa.Connection, found: Found, digest: Digest) -> str:
    """Number the rows 1, 2, 3 … in their order and hash each under ``digest``."""
    if found.renumbered:  # first move every number above both the old ones and the new
        shift = max(found.rows, found.last_seq) + 1 - found.first_seq
        conn.execute(events.update().values(seq=events.c.seq + shift))
    change = (events.update().where(events.c.id == sa.bindparam("row_id"))
              .values(seq=sa.bindparam("new_seq"), prev_hash=sa.bindparam("new_prev"),
                      hash=sa.bindparam("new_hash")))
    prev_hash, changes = GENESIS, []
    for seq, row in enumerate(_in_order(conn), start=1):
        digest_now = _digest(digest, row, seq, prev_hash)
        changes.append({"row_id": row.id, "new_seq": seq, "new_prev": prev_hash,
                        "new_hash": digest_now})
        prev_hash = digest_now
        if len(changes) == BATCH:
            conn.execute(change, changes)
            changes = []
    if changes:
        conn.execute(change, changes)
    return prev_hash


def _convert(old: tuple[str, Digest], new: tuple[str, Digest], action: str) -> None:
    """Check the chain under the old scheme, hash it under the new, append the record."""
    conn = op.get_bind()
    (old_scheme, old_digest), (new_scheme, new_digest) = old, new
    found = _check(conn, old_digest)
    if found.rows == 0 and found.problem_count == 0:
        return  # a new install's empty chain: nothing to convert, nothing to record
    prev_hash = _rechain(conn, found, new_digest)
    head = found.head
    detail = {
        "scheme": new_scheme, "old_scheme": old_scheme, "old_rows": found.rows,
        "old_head_seq": None if head is None else head.length,
        "old_head_hash": None if head is None else head.last_hash,
        "old_chain_held": found.problem_count == 0,
        "old_chain_problems": found.problems, "old_chain_problem_count": found.problem_count,
        "renumbered": found.renumbered,
    }
    seq, at = found.rows + 1, datetime.now(UTC).replace(tzinfo=None)
    record = {"seq": seq, "at": at, "program_id": None, "actor": ACTOR, "action": action,
              "target": TARGET, "detail": detail, "prev_hash": prev_hash}
    record["hash"] = new_digest(_body(seq, at, None, ACTOR, action, TARGET, detail, prev_hash))
    conn.execute(events.insert().values(**record))
    if head is None:
        conn.execute(chain.insert().values(id=CHAIN_ID, length=seq, last_hash=record["hash"]))
    else:
        conn.execute(chain.update().where(chain.c.id == CHAIN_ID)
                     .values(length=seq, last_hash=record["hash"]))
    if found.problem_count:
        log.warning("the audit chain did not hold before it was converted to %s: %s; "
                    "audit row %d records it", new_scheme, "; ".join(found.problems), seq)


def upgrade() -> None:
    _convert((PLAIN, _plain), (SEALED, _sealed()), "audit-chain-sealed")


def downgrade() -> None:
    _convert((SEALED, _sealed()), (PLAIN, _plain), "audit-chain-unsealed")
