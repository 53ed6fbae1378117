import pytest
from sqlalchemy import inspect, text

from tests.conftest import TEST_KEYS
from vio.db import create_engine, migrate

TABLES = {"programs", "staff_users", "patients", "patient_links", "groups", "group_therapists",
          "roster_memberships", "session_series", "sessions", "session_therapists",
          "family_members", "consents", "audit_events", "attendance_events", "attendance_reviews",
          "family_invites", "room_states", "sign_in_sessions", "alert_dismissals",
          "outbox_messages", "absence_notices", "outreach_contacts", "room_fences",
          "alembic_version"}


async def _migrate_from_empty(url: str) -> tuple[set[str], str]:
    engine = create_engine(url)
    try:
        await migrate(engine, TEST_KEYS)
        await migrate(engine, TEST_KEYS)  # a second run changes nothing
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))
                       ).scalar_one()
        return tables, version
    finally:
        await engine.dispose()


async def test_migrations_run_from_empty_on_sqlite(sqlite_url):
    tables, version = await _migrate_from_empty(sqlite_url)
    assert tables >= TABLES
    assert version


@pytest.mark.postgres
async def test_migrations_run_from_empty_on_postgres(postgres_url):
    tables, version = await _migrate_from_empty(postgres_url)
    assert tables >= TABLES
    assert version
