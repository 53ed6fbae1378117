import os
import subprocess
import sys

import pytest

from tests.conftest import TEST_KEYS
from vio.settings import Settings, SettingsError


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
    ],
)
def test_bad_value_names_the_variable(variable, value):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value, "VIO_SECRET_KEY": "k"})


def test_bad_setting_stops_start_up(tmp_path):
    env = {**os.environ, "VIO_RECONNECT_GRACE_SECONDS": "a minute",
           "VIO_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.sqlite3"}
    result = subprocess.run([sys.executable, "-m", "vio.cli", "serve", "--port", "0"],
                            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert "VIO_RECONNECT_GRACE_SECONDS" in result.stderr
    assert not (tmp_path / "x.sqlite3").exists()
