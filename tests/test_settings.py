import os
import subprocess
import sys

import pytest

from vio.settings import Settings, SettingsError


def test_defaults_need_no_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite+aiosqlite:///var/vio.sqlite3"
    assert settings.ice_servers == ()
    assert settings.join_early_minutes == 15
    assert settings.warning_minutes == (10, 2)
    assert (tmp_path / "var" / "secret.key").read_text() == settings.secret_key


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
