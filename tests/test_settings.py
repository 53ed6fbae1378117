import dataclasses
import os
import subprocess
import sys

import pytest

from tests.conftest import TEST_KEYS
from vio.settings import Settings, SettingsError, _bad_value


def test_defaults_need_no_environment_and_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    data = tmp_path / "home" / ".local" / "share" / "vio"
    assert settings.data_dir == str(data)
    assert settings.database_url == f"sqlite+aiosqlite:///{data / 'vio.sqlite3'}"
    assert settings.ice_servers == ()
    assert settings.join_early_minutes == 15
    assert settings.warning_minutes == (10, 2)
    key = data / "secret.key"
    assert key.read_text() == settings.secret_key
    assert key.stat().st_mode & 0o777 == 0o600 and data.stat().st_mode & 0o777 == 0o700
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert Settings.from_env({}).secret_key == settings.secret_key  # the same key from anywhere
    assert not (tmp_path / "var").exists()


def test_data_dir_holds_the_database_and_the_key(tmp_path):
    settings = Settings.from_env({"VIO_DATA_DIR": str(tmp_path / "vio-data")})
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'vio-data' / 'vio.sqlite3'}"
    assert (tmp_path / "vio-data" / "secret.key").read_text() == settings.secret_key
    with pytest.raises(SettingsError, match="VIO_DATA_DIR"):
        Settings.from_env({"VIO_DATA_DIR": "relative/dir", "VIO_SECRET_KEY": "k"})


def test_the_database_its_log_and_the_data_folder_are_private(tmp_path):
    import asyncio

    from sqlalchemy import text

    from vio.db import create_engine, migrate

    folder = tmp_path / "data"
    settings = Settings.from_env({"VIO_DATA_DIR": str(folder)})

    async def use() -> None:
        engine = create_engine(settings.database_url)
        try:
            await migrate(engine, TEST_KEYS)
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE probe (x INTEGER)"))
                await conn.execute(text("INSERT INTO probe VALUES (1)"))
            for name in ("vio.sqlite3", "vio.sqlite3-wal", "vio.sqlite3-shm"):
                mode = (folder / name).stat().st_mode & 0o777
                assert mode == 0o600, (name, oct(mode))
        finally:
            await engine.dispose()

    asyncio.run(use())
    assert folder.stat().st_mode & 0o777 == 0o700
    existing = tmp_path / "old.sqlite3"
    existing.touch(mode=0o644)
    existing.chmod(0o644)
    create_engine(f"sqlite+aiosqlite:///{existing}")
    assert existing.stat().st_mode & 0o777 == 0o600  # an existing file is tightened


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VIO_JOIN_EARLY_MINUTES", "soon"),
        ("VIO_JOIN_EARLY_MINUTES", "-3"),
        ("VIO_DATABASE_URL", "mysql://localhost/vio"),
        ("VIO_TIMEZONE", "Mars/Olympus"),
        ("VIO_ICE_SERVERS", "stun.example.org:3478"),
        ("VIO_COOKIE_SECURE", "maybe"),
        ("VIO_WARNING_MINUTES", "10,-2"),
        ("VIO_REDIS_URL", "http://redis.example.org:6379"),
        ("VIO_REDIS_CA_FILE", "/nonexistent/ca.pem"),
        ("VIO_ROOM_RECHECK_SECONDS", "0"),
    ],
)
def test_bad_value_names_the_variable(variable, value):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value, "VIO_SECRET_KEY": "k"})


@pytest.mark.parametrize(
    ("variable", "value", "secret", "shown"),
    [
        ("VIO_DATABASE_URL", "mysql://vio:db-pass-1@db.example.org/vio", "db-pass-1",
         "mysql://vio:***@db.example.org/vio"),
        ("VIO_DATABASE_URL", "postgres://vio:p@ss w/rd@db.example.org/vio", "ss w/rd",
         "postgres://vio:***@db.example.org/vio"),
        ("VIO_DATABASE_URL", "postgresql+asyncpg://vio:db-pass-5@db.example.org:port/vio",
         "db-pass-5", "postgresql+asyncpg://vio:***@db.example.org:port/vio"),
        ("VIO_DATABASE_URL", "postgresql+asyncpg://vio@db:x/vio?password=db-pass-2",
         "db-pass-2", "postgresql+asyncpg://vio@db:x/vio?password=***"),
        ("VIO_PUBLIC_BASE_URL", "https://staff:web-pass-3@vio.example.org", "web-pass-3",
         "https://staff:***@vio.example.org"),
        ("VIO_TURN_SECRET", "   ", None, "VIO_TURN_SECRET='   '"),
        ("VIO_REDIS_URL", "redis-tls://vio:redis-pass-6@10.0.0.5:6380/0", "redis-pass-6",
         "redis-tls://vio:***@10.0.0.5:6380/0"),
    ],
)
def test_a_bad_value_is_shown_without_its_password(variable, value, secret, shown):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({variable: value, "VIO_SECRET_KEY": "k"})
    message = str(raised.value)
    assert message.startswith(variable) and shown in message, message
    assert secret is None or secret not in message, message


def test_a_secret_setting_is_named_without_its_value():
    fields = {f.metadata["env"]: f for f in dataclasses.fields(Settings)}
    secrets = {name for name, f in fields.items() if f.metadata["secret"]}
    assert secrets == {"VIO_SECRET_KEY", "VIO_TURN_SECRET", "VIO_REDIS_PASSWORD", "VIO_SMTP_URL"}
    assert all(not fields[name].repr for name in secrets)
    settings = Settings.from_env({"VIO_SECRET_KEY": "signing-key-0123", "VIO_TURN_SECRET": "t-9",
                                  "VIO_DATA_DIR": "/nonexistent"})
    assert "signing-key-0123" not in repr(settings) and "t-9" not in repr(settings)
    for name in secrets:
        problem = ValueError("must not be empty")
        assert str(_bad_value(name, "hunter2", problem, secret=True)) == \
            f"{name} (its value is not shown): must not be empty"
        assert str(_bad_value(name, "", problem, secret=True)) == f"{name}='': must not be empty"


def test_a_lease_outlives_a_missed_heartbeat():
    with pytest.raises(SettingsError, match="VIO_ROOM_LEASE_SECONDS"):
        Settings.from_env({"VIO_SECRET_KEY": "k", "VIO_ROOM_LEASE_SECONDS": "3",
                           "VIO_NODE_HEARTBEAT_SECONDS": "2"})
    settings = Settings.from_env({"VIO_SECRET_KEY": "k", "VIO_ROOM_LEASE_SECONDS": "4",
                                  "VIO_NODE_HEARTBEAT_SECONDS": "2"})
    assert settings.room_lease_seconds == 2 * settings.node_heartbeat_seconds


def test_database_errors_hold_no_bound_parameters(tmp_path):
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from vio.db import create_engine

    async def insert_twice() -> str:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'vio.sqlite3'}")
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE patient (name TEXT UNIQUE)"))
            for _ in range(2):
                async with engine.begin() as conn:
                    await conn.execute(text("INSERT INTO patient VALUES (:name)"),
                                       {"name": "Jane Roe, DOB 1980-02-03"})
        except IntegrityError as exc:
            return str(exc)
        finally:
            await engine.dispose()
        raise AssertionError("the second insert was accepted")

    message = asyncio.run(insert_twice())
    assert "UNIQUE constraint failed" in message and "INSERT INTO patient" in message
    assert "Jane Roe" not in message, message


def test_bad_setting_stops_start_up(tmp_path):
    env = {**os.environ, "VIO_RECONNECT_GRACE_SECONDS": "a minute",
           "VIO_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.sqlite3"}
    result = subprocess.run([sys.executable, "-m", "vio.cli", "serve", "--port", "0"],
                            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert "VIO_RECONNECT_GRACE_SECONDS" in result.stderr
    assert not (tmp_path / "x.sqlite3").exists()
    env["VIO_DATABASE_URL"] = "postgresql+asyncpg://vio:db-pass-4@db.example.org:5432x/vio"
    result = subprocess.run([sys.executable, "-m", "vio.cli", "migrate"], env=env,
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "VIO_DATABASE_URL" in result.stderr, result.stderr
    assert "db-pass-4" not in result.stderr + result.stdout
