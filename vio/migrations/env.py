"""Alembic environment: runs on the connection vio hands it (see ``vio.db.migrate``)."""

from __future__ import annotations

from alembic import context

from vio.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `vio migrate`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
