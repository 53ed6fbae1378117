"""room fences: each room's lease epoch, and writes of an older epoch refused by the database

``room_fences`` keeps the epoch of the latest lease on each session's room (``vio.rooms.fences``).
Attendance events and saved room states carry the epoch of the room that wrote them (None with
one process); a trigger refuses the insert (and, for room states, the update) of a row whose
epoch is below its session's current one. On PostgreSQL the trigger reads the fence row
``FOR SHARE``, so a node taking the room over waits for a write in flight and every write after
that sees the new epoch.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"

STALE = "vio: stale room epoch"
FENCED = (("attendance_events", "INSERT"), ("room_states", "INSERT"), ("room_states", "UPDATE"))

POSTGRES_FUNCTION = f"""
CREATE FUNCTION vio_refuse_stale_epoch() RETURNS trigger AS $$
DECLARE
  current_epoch BIGINT;
BEGIN
  IF NEW.epoch IS NULL THEN
    RETURN NEW;
  END IF;
  SELECT epoch INTO current_epoch FROM room_fences WHERE session_id = NEW.session_id FOR SHARE;
  IF current_epoch IS NOT NULL AND NEW.epoch < current_epoch THEN
    RAISE EXCEPTION '{STALE} % (the room is at %)', NEW.epoch, current_epoch;
  END IF;
  RETURN NEW;
END
$$ LANGUAGE plpgsql
"""


def _trigger(table: str, event: str) -> str:
    return f"{table}_{event.lower()}_epoch"


def upgrade() -> None:
    op.create_table(
        "room_fences",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("node", sa.String(120), nullable=False),
        sa.Column("taken_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"],
                                name=op.f("fk_room_fences_session_id_sessions")),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_room_fences")),
    )
    with op.batch_alter_table("attendance_events") as batch:
        batch.add_column(sa.Column("epoch", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("room_states") as batch:
        batch.add_column(sa.Column("epoch", sa.BigInteger(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRES_FUNCTION)
        for table, event in FENCED:
            op.execute(f"CREATE TRIGGER {_trigger(table, event)} BEFORE {event} ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION vio_refuse_stale_epoch()")
    else:
        for table, event in FENCED:
            op.execute(
                f"CREATE TRIGGER {_trigger(table, event)} BEFORE {event} ON {table} "
                "WHEN NEW.epoch IS NOT NULL AND NEW.epoch < (SELECT epoch FROM room_fences "
                "WHERE session_id = NEW.session_id) "
                f"BEGIN SELECT RAISE(ABORT, '{STALE}'); END")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, event in FENCED:
        op.execute(f"DROP TRIGGER IF EXISTS {_trigger(table, event)}"
                   + (f" ON {table}" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS vio_refuse_stale_epoch()")
    # Plain DROP COLUMNs (SQLite 3.35+): a batch rebuild would drop tables others point at.
    op.drop_column("room_states", "epoch")
    op.drop_column("attendance_events", "epoch")
    op.drop_table("room_fences")
