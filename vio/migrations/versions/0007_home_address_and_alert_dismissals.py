"""a patient's home address and phone for the safety card; dosage alerts dismissed with a note

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    with op.batch_alter_table("patients") as batch:
        batch.add_column(sa.Column("home_address", sa.String(300), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("phone", sa.String(40), nullable=False, server_default=""))
    op.create_table(
        "alert_dismissals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("week_start", sa.Date(), nullable=False),
        sa.Column("alert", sa.String(40), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("dismissed_by", sa.Integer(), nullable=False),
        sa.Column("dismissed_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"],
                                name=op.f("fk_alert_dismissals_patient_id_patients")),
        sa.ForeignKeyConstraint(["dismissed_by"], ["staff_users.id"],
                                name=op.f("fk_alert_dismissals_dismissed_by_staff_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_dismissals")),
        sa.UniqueConstraint("patient_id", "week_start", "alert",
                            name=op.f("uq_alert_dismissals_patient_id")),
    )
    op.create_index(op.f("ix_alert_dismissals_patient_id"), "alert_dismissals", ["patient_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_alert_dismissals_patient_id"), table_name="alert_dismissals")
    op.drop_table("alert_dismissals")
    with op.batch_alter_table("patients") as batch:
        batch.drop_column("phone")
        batch.drop_column("home_address")
