"""Second-factor seeds at rest: sealed for one account under the install's key, and migration
0010 sealing the clear seeds of an older database (and opening them again on the way down)."""

from __future__ import annotations

from datetime import UTC, datetime

import pyotp
import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import TEST_KEYS
from vio import demo
from vio.db import alembic_config, create_engine, migrate, session_factory
from vio.keys import InstallKeys
from vio.models import StaffUser
from vio.security import (
    SEALED_SEED_VERSION,
    SeedUnreadable,
    open_totp_seed,
    reseal_totp_seeds,
    seal_totp_seed,
)

OTHER_KEYS = InstallKeys.derive("another install's secret")
NOW = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)


def test_a_sealed_seed_opens_only_for_its_account_under_its_install_key() -> None:
    seed = pyotp.random_base32()
    sealed = seal_totp_seed(TEST_KEYS, 7, seed)
    assert sealed.startswith(f"{SEALED_SEED_VERSION}:") and seed not in sealed
    assert seal_totp_seed(TEST_KEYS, 7, seed) != sealed  # a fresh nonce each time
    assert open_totp_seed(TEST_KEYS, 7, sealed) == seed
    assert open_totp_seed(TEST_KEYS, 7, None) is None
    with pytest.raises(SeedUnreadable):
        open_totp_seed(TEST_KEYS, 8, sealed)  # moved to another account
    with pytest.raises(SeedUnreadable):
        open_totp_seed(OTHER_KEYS, 7, sealed)
    with pytest.raises(SeedUnreadable):
        open_totp_seed(TEST_KEYS, 7, seed)  # a clear seed is not taken as sealed
    body = sealed.split(":", 1)[1]
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    for damaged in (f"v1:{flipped}", f"v2:{body}", "v1:", "v1:%%%", "v1:" + "é" * 8):
        with pytest.raises(SeedUnreadable):
            open_totp_seed(TEST_KEYS, 7, damaged)


async def test_seeds_are_resealed_under_a_new_secret(engine: AsyncEngine) -> None:
    new_keys = InstallKeys.derive("the replacement secret")
    async with session_factory(engine, TEST_KEYS)() as db:
        people = await demo.seed(db, "America/Chicago", NOW)
        seeds = {people.admin.id: pyotp.random_base32(),
                 people.therapist.id: pyotp.random_base32()}
        for staff_id, seed in seeds.items():
            staff = await db.get(StaffUser, staff_id)
            assert staff is not None
            staff.totp_secret = seal_totp_seed(TEST_KEYS, staff_id, seed)
        await db.commit()
    async with session_factory(engine, new_keys)() as db:
        with pytest.raises(SeedUnreadable):  # neither the old secret nor the new opens them
            await reseal_totp_seeds(db, OTHER_KEYS)
        await db.rollback()
        assert await reseal_totp_seeds(db, TEST_KEYS) == 2
        await db.commit()
        assert await reseal_totp_seeds(db, TEST_KEYS) == 0  # done already
    stored = await _raw_seeds(engine)
    for staff_id, seed in seeds.items():
        sealed = stored[staff_id]
        assert sealed is not None
        assert open_totp_seed(new_keys, staff_id, sealed) == seed
        with pytest.raises(SeedUnreadable):
            open_totp_seed(TEST_KEYS, staff_id, sealed)


async def _alembic(engine: AsyncEngine, keys: InstallKeys | None, action: str,
                   target: str) -> None:
    def run(sync_conn: Connection) -> None:
        getattr(command, action)(alembic_config(sync_conn, keys), target)

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def _raw_seeds(engine: AsyncEngine) -> dict[int, str | None]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT id, totp_secret FROM staff_users ORDER BY id"))
        return {row.id: row.totp_secret for row in rows}


async def _migration_seals_and_opens(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine, TEST_KEYS)
        async with session_factory(engine, TEST_KEYS)() as db:
            people = await demo.seed(db, "America/Chicago", NOW)
            seeds = {people.admin.id: pyotp.random_base32(),
                     people.therapist.id: pyotp.random_base32()}
            for staff_id, seed in seeds.items():
                staff = await db.get(StaffUser, staff_id)
                assert staff is not None
                staff.totp_secret = seal_totp_seed(TEST_KEYS, staff_id, seed)
            await db.commit()

        await _alembic(engine, TEST_KEYS, "downgrade", "0009")
        clear = await _raw_seeds(engine)
        assert {k: v for k, v in clear.items() if v is not None} == seeds

        with pytest.raises(RuntimeError, match="needs it"):
            await _alembic(engine, None, "upgrade", "head")
        assert await _raw_seeds(engine) == clear  # refused, and nothing changed

        assert await migrate(engine, TEST_KEYS, "0010") == ["0010"]
        sealed = await _raw_seeds(engine)
        for staff_id, seed in seeds.items():
            stored = sealed[staff_id]
            assert stored is not None and seed not in stored
            assert open_totp_seed(TEST_KEYS, staff_id, stored) == seed
        admin, therapist = people.admin.id, people.therapist.id
        with pytest.raises(SeedUnreadable):
            open_totp_seed(TEST_KEYS, admin, sealed[therapist])
        assert [v for k, v in sealed.items() if k not in seeds] == [None] * (len(sealed) - 2)

        with pytest.raises(RuntimeError, match="does not open"):
            await _alembic(engine, OTHER_KEYS, "downgrade", "0009")
        assert await _raw_seeds(engine) == sealed
    finally:
        await engine.dispose()


async def test_migration_0010_seals_clear_seeds_on_sqlite(sqlite_url: str) -> None:
    await _migration_seals_and_opens(sqlite_url)


@pytest.mark.postgres
async def test_migration_0010_seals_clear_seeds_on_postgres(postgres_url: str) -> None:
    await _migration_seals_and_opens(postgres_url)
