"""email: the outbox, addresses and email consent, calendar sequence, absence notices, outreach

Adds ``outbox_messages`` (every message to send, ``vio.mail``), ``absence_notices`` (a
patient's "I can't make it") and ``outreach_contacts`` (staff reached out after absences);
the email address of patients and family members (and a family member's unsubscribe); a
session's calendar ``SEQUENCE`` and when it last moved. Email-contact consent is a new kind of
``consents`` row, which needs no change to the table. Existing rows keep every value; the new
columns start empty (no address, sequence 0).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"

KINDS = ("reminder", "room-open", "session-moved", "session-cancelled", "family-invite")
STATUSES = ("queued", "sent", "bounced", "failed", "withdrawn")


def upgrade() -> None:
    # Plain ADD COLUMNs: a batch rebuild would drop tables that others point at.
    op.add_column("patients", sa.Column("email", sa.String(320), nullable=False,
                                        server_default=""))
    op.add_column("family_members", sa.Column("email", sa.String(320), nullable=False,
                                              server_default=""))
    op.add_column("family_members", sa.Column("email_unsubscribed_at", sa.DateTime(),
                                              nullable=True))
    op.add_column("sessions", sa.Column("calendar_sequence", sa.Integer(), nullable=False,
                                        server_default="0"))
    op.add_column("sessions", sa.Column("rescheduled_at", sa.DateTime(), nullable=True))

    op.create_table(
        "outbox_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("program_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Enum(*KINDS, name="messagekind", native_enum=False, length=32),
                  nullable=False),
        sa.Column("dedupe_key", sa.String(160), nullable=False),
        sa.Column("message_id", sa.String(250), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("family_member_id", sa.Integer(), nullable=True),
        sa.Column("session_id", sa.Integer(), nullable=True),
        sa.Column("to_address", sa.String(320), nullable=False),
        sa.Column("status", sa.Enum(*STATUSES, name="messagestatus", native_enum=False,
                                    length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claim_token", sa.String(64), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("sealed_link", sa.String(600), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("reply_code", sa.Integer(), nullable=True),
        sa.Column("reply_text", sa.String(500), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["program_id"], ["programs.id"],
                                name="fk_outbox_messages_program_id_programs"),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"],
                                name="fk_outbox_messages_patient_id_patients"),
        sa.ForeignKeyConstraint(["family_member_id"], ["family_members.id"],
                                name="fk_outbox_messages_family_member_id_family_members"),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"],
                                name="fk_outbox_messages_session_id_sessions"),
        sa.PrimaryKeyConstraint("id", name="pk_outbox_messages"),
        sa.UniqueConstraint("dedupe_key", name="uq_outbox_messages_dedupe_key"),
        sa.UniqueConstraint("message_id", name="uq_outbox_messages_message_id"),
    )
    op.create_index("ix_outbox_messages_program_id", "outbox_messages", ["program_id"])
    op.create_index("ix_outbox_messages_patient_id", "outbox_messages", ["patient_id"])
    op.create_index("ix_outbox_messages_session_id", "outbox_messages", ["session_id"])
    op.create_index("ix_outbox_messages_status_next_attempt_at", "outbox_messages",
                    ["status", "next_attempt_at"])

    op.create_table(
        "absence_notices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("outbox_message_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"],
                                name="fk_absence_notices_session_id_sessions"),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"],
                                name="fk_absence_notices_patient_id_patients"),
        sa.PrimaryKeyConstraint("id", name="pk_absence_notices"),
        sa.UniqueConstraint("session_id", "patient_id", name="uq_absence_notices_session_id"),
    )
    op.create_index("ix_absence_notices_session_id", "absence_notices", ["session_id"])
    op.create_index("ix_absence_notices_patient_id", "absence_notices", ["patient_id"])

    op.create_table(
        "outreach_contacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("recorded_by", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("sessions", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"],
                                name="fk_outreach_contacts_patient_id_patients"),
        sa.ForeignKeyConstraint(["recorded_by"], ["staff_users.id"],
                                name="fk_outreach_contacts_recorded_by_staff_users"),
        sa.PrimaryKeyConstraint("id", name="pk_outreach_contacts"),
    )
    op.create_index("ix_outreach_contacts_patient_id", "outreach_contacts", ["patient_id"])


def downgrade() -> None:
    op.drop_table("outreach_contacts")
    op.drop_table("absence_notices")
    op.drop_table("outbox_messages")
    for table, column in (("sessions", "rescheduled_at"), ("sessions", "calendar_sequence"),
                          ("family_members", "email_unsubscribed_at"),
                          ("family_members", "email"), ("patients", "email")):
        # A plain DROP COLUMN (SQLite 3.35+): a batch rebuild would drop the table, which
        # other tables point at.
        op.drop_column(table, column)
