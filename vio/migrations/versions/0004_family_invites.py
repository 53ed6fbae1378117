"""family invites

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "family_invites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("family_member_id", sa.Integer(), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"],
                                name=op.f("fk_family_invites_session_id_sessions")),
        sa.ForeignKeyConstraint(["family_member_id"], ["family_members.id"],
                                name=op.f("fk_family_invites_family_member_id_family_members")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_family_invites")),
    )
    with op.batch_alter_table("family_invites") as batch_op:
        batch_op.create_index(batch_op.f("ix_family_invites_session_id"), ["session_id"])
        batch_op.create_index(batch_op.f("ix_family_invites_family_member_id"),
                              ["family_member_id"])


def downgrade() -> None:
    op.drop_table("family_invites")
