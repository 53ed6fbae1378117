"""staff accounts: a password change required at next sign-in

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    # A plain ADD COLUMN: a batch rebuild would drop staff_users, which other tables point at.
    op.add_column("staff_users", sa.Column("must_change_password", sa.Boolean(), nullable=False,
                                           server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("staff_users") as batch:
        batch.drop_column("must_change_password")
