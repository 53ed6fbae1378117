"""room states: what a live room knows that must outlive the process serving it

Revision ID: room_states
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "room_states"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "room_states",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("saved_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"],
                                name=op.f("fk_room_states_session_id_sessions")),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_room_states")),
    )


def downgrade() -> None:
    op.drop_table("room_states")
