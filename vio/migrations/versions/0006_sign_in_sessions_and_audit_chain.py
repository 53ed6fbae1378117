"""sign-in sessions, sign-in attempts, a second factor for staff, and the audit hash chain

Existing audit rows are numbered in id order, given the program they concern (from their
target or actor) and chained, so ``vio audit verify`` holds for them too.

Revision ID: 0006
Revises: room_states
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "room_states"

GENESIS = "0" * 64


def _digest(seq: int, at: datetime, program_id: int | None, actor: str, action: str,
            target: str, detail: Any, prev_hash: str) -> str:
    """The same canonical form as ``vio.audit_chain.audit_digest`` (kept here as it was at 0006)."""
    moment = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
    body = json.dumps([seq, moment.isoformat(timespec="microseconds"), program_id, actor,
                       action, target, detail, prev_hash],
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


_PROGRAM_OF = {
    "program": None,
    "staff": "SELECT program_id FROM staff_users WHERE id = :id",
    "patient": "SELECT program_id FROM patients WHERE id = :id",
    "session": "SELECT program_id FROM sessions WHERE id = :id",
    "group": "SELECT program_id FROM groups WHERE id = :id",
    "family-member": "SELECT p.program_id FROM family_members f JOIN patients p "
                     "ON p.id = f.patient_id WHERE f.id = :id",
    "family-invite": "SELECT s.program_id FROM family_invites i JOIN sessions s "
                     "ON s.id = i.session_id WHERE i.id = :id",
}


def _program_of(conn: sa.Connection, *identities: str) -> int | None:
    for identity in identities:
        kind, _, raw = identity.partition(":")
        if kind not in _PROGRAM_OF or not raw.isdigit() or len(raw) > 18:
            continue
        query = _PROGRAM_OF[kind]
        if query is None:
            return int(raw)
        found = conn.execute(sa.text(query), {"id": int(raw)}).scalar()
        if found is not None:
            return int(found)
    return None


def upgrade() -> None:
    op.create_table(
        "sign_in_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.Enum("staff", "patient", "family", name="signinkind",
                                  native_enum=False, length=32), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=True),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("family_invite_id", sa.Integer(), nullable=True),
        sa.Column("family_member_id", sa.Integer(), nullable=True),
        sa.Column("family_name", sa.String(length=60), nullable=True),
        sa.Column("device", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("end_reason", sa.String(length=40), nullable=True),
        sa.Column("second_factor_pending", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["staff_id"], ["staff_users.id"],
                                name=op.f("fk_sign_in_sessions_staff_id_staff_users")),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"],
                                name=op.f("fk_sign_in_sessions_patient_id_patients")),
        sa.ForeignKeyConstraint(["family_invite_id"], ["family_invites.id"],
                                name=op.f("fk_sign_in_sessions_family_invite_id_family_invites")),
        sa.ForeignKeyConstraint(["family_member_id"], ["family_members.id"],
                                name=op.f("fk_sign_in_sessions_family_member_id_family_members")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sign_in_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_sign_in_sessions_token_hash")),
    )
    with op.batch_alter_table("sign_in_sessions") as batch_op:
        for column in ("staff_id", "patient_id", "family_invite_id", "family_member_id"):
            batch_op.create_index(batch_op.f(f"ix_sign_in_sessions_{column}"), [column])

    op.create_table(
        "sign_in_attempts",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("window_started_at", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", name=op.f("pk_sign_in_attempts")),
    )

    with op.batch_alter_table("staff_users") as batch_op:
        batch_op.add_column(sa.Column("totp_secret", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("totp_last_step", sa.Integer(), nullable=True))
    with op.batch_alter_table("programs") as batch_op:
        batch_op.add_column(sa.Column("admins_need_second_factor", sa.Boolean(),
                                      nullable=False, server_default=sa.false()))

    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.add_column(sa.Column("seq", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("program_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))

    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT id, at, actor, action, target, detail FROM audit_events ORDER BY id")).all()
    prev = GENESIS
    for seq, row in enumerate(rows, start=1):
        detail = row.detail if not isinstance(row.detail, str) else json.loads(row.detail)
        at = row.at if isinstance(row.at, datetime) else datetime.fromisoformat(row.at)
        program_id = _program_of(conn, row.target, row.actor)
        digest = _digest(seq, at, program_id, row.actor, row.action, row.target, detail, prev)
        conn.execute(sa.text(
            "UPDATE audit_events SET seq = :seq, program_id = :program, prev_hash = :prev, "
            "hash = :hash WHERE id = :id"),
            {"seq": seq, "program": program_id, "prev": prev, "hash": digest, "id": row.id})
        prev = digest

    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_audit_events_seq"), ["seq"])
        batch_op.create_foreign_key(batch_op.f("fk_audit_events_program_id_programs"),
                                    "programs", ["program_id"], ["id"])
        batch_op.create_index(batch_op.f("ix_audit_events_program_id"), ["program_id"])
        batch_op.create_index(batch_op.f("ix_audit_events_actor"), ["actor"])
        batch_op.create_index(batch_op.f("ix_audit_events_target"), ["target"])

    chain = op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain")),
    )
    op.bulk_insert(chain, [{"id": 1, "length": len(rows), "last_hash": prev}])


def downgrade() -> None:
    op.drop_table("audit_chain")
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_events_target"))
        batch_op.drop_index(batch_op.f("ix_audit_events_actor"))
        batch_op.drop_index(batch_op.f("ix_audit_events_program_id"))
        batch_op.drop_constraint(batch_op.f("fk_audit_events_program_id_programs"),
                                 type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("uq_audit_events_seq"), type_="unique")
        for column in ("hash", "prev_hash", "program_id", "seq"):
            batch_op.drop_column(column)
    with op.batch_alter_table("programs") as batch_op:
        batch_op.drop_column("admins_need_second_factor")
    with op.batch_alter_table("staff_users") as batch_op:
        batch_op.drop_column("totp_last_step")
        batch_op.drop_column("totp_secret")
    op.drop_table("sign_in_attempts")
    op.drop_table("sign_in_sessions")
