"""``vio doctor`` against real set-ups: ``vio serve`` with TLS, coturn, SQLite and PostgreSQL.

coturn is Debian's ``turnserver``, started here on 127.0.0.1 only with a shared secret
(``--use-auth-secret``), no CLI, and its log in the test's directory. The doctor's TURN check
makes real Allocate requests to it over UDP and TCP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES, TEST_KEYS, seconds, stop_process
from tests.test_https import base_env, free_port, make_certificate, vio_serve
from vio.db import create_engine, migrate
from vio.doctor import Check, Status, diagnose, report, settings_checks, tls_check, turn_target
from vio.settings import Settings

VIO = str(Path(sys.executable).with_name("vio"))
TURN_SECRET = "doctor-test-shared-secret"
LONG_KEY = "a-signing-key-long-enough-for-the-doctor-0123456789"


@dataclasses.dataclass(frozen=True)
class Coturn:
    port: int
    secret: str
    log: Path

    @property
    def urls(self) -> str:
        return (f"turn:127.0.0.1:{self.port}?transport=udp,"
                f"turn:127.0.0.1:{self.port}?transport=tcp")


@contextlib.contextmanager
def coturn(directory: Path, secret: str = TURN_SECRET) -> Iterator[Coturn]:
    """Debian's turnserver on 127.0.0.1, REST-API credentials only, until the block ends."""
    if shutil.which("turnserver") is None:
        if REQUIRE_SERVICES:
            pytest.fail("coturn's turnserver is not installed (make system-packages)")
        pytest.skip("coturn's turnserver is not installed (make system-packages)")
    port = free_port()
    log = directory / "turnserver.log"
    process = subprocess.Popen(
        ["turnserver", "-n", "--no-cli", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
         f"--listening-port={port}", "--use-auth-secret", f"--static-auth-secret={secret}",
         "--realm=vio.test", f"--log-file={log}", "--simple-log", "--no-stdout-log",
         "--no-tls", "--no-dtls", f"--pidfile={directory / 'turnserver.pid'}",
         f"--db={directory / 'turndb'}", "--no-software-attribute"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + seconds(10)
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError("turnserver did not start: "
                                     + (log.read_text()[-2000:] if log.exists() else ""))
            time.sleep(0.05)
        yield Coturn(port=port, secret=secret, log=log)
    finally:
        stop_process(process)


def run_doctor(env: dict[str, str], cwd: Path) -> tuple[int, list[str]]:
    result = subprocess.run([VIO, "doctor"], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=seconds(60))
    assert not result.stderr.strip(), result.stderr
    return result.returncode, result.stdout.strip().splitlines()


def problems(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("problem")]


# --- against a real deployment on loopback -------------------------------------------------

def test_a_healthy_set_up_has_no_problem_and_a_broken_one_names_each(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path)
    port = free_port()
    with coturn(tmp_path) as turn:
        env = base_env(tmp_path, VIO_TLS_CERT_FILE=str(cert.cert),
                       VIO_TLS_KEY_FILE=str(cert.key), VIO_SECRET_KEY=LONG_KEY,
                       VIO_PUBLIC_BASE_URL=f"https://localhost:{port}",
                       VIO_TURN_URLS=turn.urls, VIO_TURN_SECRET=turn.secret,
                       VIO_RTC_PORT_RANGE="50100-50199",
                       SSL_CERT_FILE=str(cert.ca))
        context = ssl.create_default_context(cafile=str(cert.ca))
        with vio_serve(tmp_path, env, port=port, context=context):
            status, healthy = run_doctor(env, tmp_path)
            broken_env = {**env, "VIO_TURN_SECRET": "not-the-shared-secret",
                          "VIO_DATABASE_URL": "postgresql+asyncpg://vio:db-password-x@"
                                              f"127.0.0.1:{free_port()}/vio"}
            broken_status, broken = run_doctor(broken_env, tmp_path)

    assert status == 0, healthy
    assert problems(healthy) == [], healthy
    parts = [line.split()[1] for line in healthy[:-1]]
    for part in ("settings:", "tls:", "database:", "public-url:", "ice:", "turn:"):
        assert part in parts, healthy
    assert sum("granted a relay allocation" in line for line in healthy) == 2, healthy
    assert any("over HTTPS, with HSTS" in line for line in healthy), healthy
    assert healthy[-1] == "vio doctor: 0 problems, 0 warnings"

    assert broken_status == 1
    found = problems(broken)
    assert len(found) == 3, broken
    database = [line for line in found if line.startswith("problem database:")]
    assert len(database) == 1 and "cannot connect" in database[0], broken
    turn_lines = [line for line in found if line.startswith("problem turn:")]
    assert len(turn_lines) == 2 and all(
        "401" in line and "VIO_TURN_SECRET" in line for line in turn_lines), broken
    output = "\n".join(broken)
    assert "db-password-x" not in output and "not-the-shared-secret" not in output
    assert TURN_SECRET not in output
    assert broken[-1] == "vio doctor: 3 problems, 0 warnings"


# --- single findings, in process -----------------------------------------------------------

def environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"VIO_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/vio.sqlite3",
            "VIO_SECRET_KEY": LONG_KEY, "VIO_PUBLIC_BASE_URL": f"http://127.0.0.1:{free_port()}",
            **extra}


def lines_about(checks: list[Check], part: str) -> list[str]:
    return [check.line for check in checks if check.part == part]


async def test_a_bad_setting_is_the_one_problem(tmp_path: Path) -> None:
    checks = await diagnose(environ(tmp_path, VIO_ROOM_CAPACITY="lots"))
    [line] = [check.line for check in checks]
    assert line.startswith("problem settings: VIO_ROOM_CAPACITY='lots'")


def settings_from(tmp_path: Path, **extra: str) -> Settings:
    return Settings.from_env(environ(tmp_path, **extra))


def test_settings_findings(tmp_path: Path) -> None:
    # Pure: a non-loopback public URL must not be fetched by a test.
    lines = [c.line for c in settings_checks(
        settings_from(tmp_path, VIO_PUBLIC_BASE_URL="http://10.1.2.3:8000"),
        key_from_environment=True)]
    assert lines[0].startswith("problem settings: VIO_PUBLIC_BASE_URL=http://10.1.2.3:8000")
    assert "camera" in lines[0]
    assert any("VIO_TURN_URLS is empty" in line for line in lines), lines
    [short] = [c.line for c in settings_checks(settings_from(tmp_path, VIO_SECRET_KEY="short"),
                                               key_from_environment=True)
               if "VIO_SECRET_KEY" in c.line]
    assert short.startswith("problem settings: VIO_SECRET_KEY has 5 characters")
    [https] = [c.line for c in settings_checks(
        settings_from(tmp_path, VIO_PUBLIC_BASE_URL="https://vio.example.org"),
        key_from_environment=True) if "public URL" in c.line]
    assert https == "ok      settings: every VIO_* setting is valid; public URL " \
                    "https://vio.example.org"


async def test_the_shipped_empty_key_is_a_problem(tmp_path: Path) -> None:
    [line] = [c.line for c in await diagnose(environ(tmp_path, VIO_SECRET_KEY=""))]
    assert line.startswith("problem settings: VIO_SECRET_KEY=''")


async def test_an_unset_key_is_a_warning_and_no_key_file_is_made(tmp_path: Path) -> None:
    env = environ(tmp_path, VIO_DATA_DIR=str(tmp_path / "data"))
    env.pop("VIO_SECRET_KEY")
    checks = await diagnose(env)
    assert any(line.startswith("warning settings: VIO_SECRET_KEY is not set") for line in
               lines_about(checks, "settings")), checks
    assert not (tmp_path / "data").exists(), "the doctor made a key file"


async def test_database_not_made_and_not_migrated(tmp_path: Path) -> None:
    checks = await diagnose(environ(tmp_path))
    assert lines_about(checks, "database") == [
        f"problem database: the SQLite file of sqlite+aiosqlite:///{tmp_path}/vio.sqlite3 "
        "does not exist: run `vio migrate`"]
    assert not (tmp_path / "vio.sqlite3").exists()
    (tmp_path / "vio.sqlite3").touch()
    checks = await diagnose(environ(tmp_path))
    [line] = lines_about(checks, "database")
    assert "is at migration (none)" in line and "run `vio migrate`" in line


@pytest.mark.postgres
async def test_postgresql_reachable_then_migrated(tmp_path: Path, postgres_url: str) -> None:
    env = environ(tmp_path, VIO_DATABASE_URL=postgres_url)
    [before] = lines_about(await diagnose(env), "database")
    assert before.startswith("problem database:") and "run `vio migrate`" in before
    engine = create_engine(postgres_url)
    await migrate(engine, TEST_KEYS)
    await engine.dispose()
    [after] = lines_about(await diagnose(env), "database")
    assert after.startswith("ok      database:") and "newest migration" in after


def test_tls_findings(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_certificate(tmp_path / "other")
    mismatched = tls_check(settings_from(tmp_path, VIO_TLS_CERT_FILE=str(cert.cert),
                                         VIO_TLS_KEY_FILE=str(other.key)))
    assert mismatched.line.startswith("problem tls: VIO_TLS_CERT_FILE=")
    assert "VIO_TLS_KEY_FILE" in mismatched.line
    served = tls_check(settings_from(tmp_path, VIO_TLS_CERT_FILE=str(cert.cert),
                                     VIO_TLS_KEY_FILE=str(cert.key),
                                     VIO_PUBLIC_BASE_URL="https://localhost:8443"))
    assert served.line == f"ok      tls: vio serves TLS itself with {cert.cert}"
    http = tls_check(settings_from(tmp_path, VIO_TLS_CERT_FILE=str(cert.cert),
                                   VIO_TLS_KEY_FILE=str(cert.key)))
    assert http.line.startswith("problem tls: vio serves HTTPS (VIO_TLS_CERT_FILE) but ")
    untrusted = tls_check(settings_from(tmp_path, VIO_PUBLIC_BASE_URL="https://vio.test",
                                        VIO_TRUSTED_PROXIES=""))
    assert untrusted.line.startswith("problem tls:")
    assert "VIO_TRUSTED_PROXIES is empty" in untrusted.line


async def test_public_url_findings(tmp_path: Path) -> None:
    closed = free_port()
    [down] = lines_about(await diagnose(environ(
        tmp_path, VIO_PUBLIC_BASE_URL=f"https://127.0.0.1:{closed}")), "public-url")
    assert down.startswith(f"problem public-url: https://127.0.0.1:{closed}/healthz does not "
                           "answer"), down
    cert = make_certificate(tmp_path)
    port = free_port()
    env = base_env(tmp_path, VIO_TLS_CERT_FILE=str(cert.cert), VIO_TLS_KEY_FILE=str(cert.key),
                   VIO_PUBLIC_BASE_URL=f"https://localhost:{port}")
    with vio_serve(tmp_path, env, port=port,
                   context=ssl.create_default_context(cafile=str(cert.ca))):
        # This machine does not trust the test CA: the doctor says so.
        [untrusted] = lines_about(await diagnose(environ(
            tmp_path, VIO_PUBLIC_BASE_URL=f"https://localhost:{port}")), "public-url")
    assert untrusted.startswith("problem public-url:") and "does not trust" in untrusted


async def test_ice_findings(tmp_path: Path) -> None:
    checks = await diagnose(environ(tmp_path, VIO_ICE_ANNOUNCE_ADDRESSES="127.0.0.1,192.0.2.1"))
    assert lines_about(checks, "ice") == [
        "ok      ice: media sockets bind on 127.0.0.1",
        "problem ice: 192.0.2.1 (VIO_ICE_ANNOUNCE_ADDRESSES) is not an address of this machine "
        "(docs/deploy.md#media-ports-nat-and-turn)"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        checks = await diagnose(environ(tmp_path, VIO_ICE_ANNOUNCE_ADDRESSES="127.0.0.1",
                                        VIO_RTC_PORT_RANGE=f"{port}-{port}"))
    assert lines_about(checks, "ice") == [
        f"problem ice: no UDP port of VIO_RTC_PORT_RANGE {port}-{port} is free on 127.0.0.1"]


async def test_turn_not_answering_and_refused(tmp_path: Path) -> None:
    closed = free_port()
    checks = await diagnose(environ(
        tmp_path, VIO_TURN_URLS=f"turn:127.0.0.1:{closed}?transport=tcp",
        VIO_TURN_SECRET="s"))
    [line] = lines_about(checks, "turn")
    assert line.startswith(f"problem turn: cannot reach turn:127.0.0.1:{closed}?transport=tcp")
    with coturn(tmp_path) as turn:
        good = await diagnose(environ(tmp_path, VIO_TURN_URLS=turn.urls,
                                      VIO_TURN_SECRET=turn.secret))
    assert [line.split(" granted")[0] for line in lines_about(good, "turn")] == [
        f"ok      turn: turn:127.0.0.1:{turn.port}?transport=udp",
        f"ok      turn: turn:127.0.0.1:{turn.port}?transport=tcp"]


def test_turn_urls_point_where_they_say() -> None:
    assert turn_target("turn:turn.example.org") == turn_target(
        "turn:turn.example.org:3478?transport=udp")
    target = turn_target("turns:turn.example.org:443?transport=tcp")
    assert (target.host, target.port, target.transport, target.tls) == (
        "turn.example.org", 443, "tcp", True)
    target = turn_target("turn:[2001:db8::1]:3479?transport=tcp")
    assert (target.host, target.port, target.transport) == ("2001:db8::1", 3479, "tcp")
    assert turn_target("turns:turn.example.org").port == 5349


def test_report_counts_and_one_line_each() -> None:
    checks = [Check(Status.OK, "database", "fine"),
              Check(Status.PROBLEM, "turn", "refused\nthe credentials"),
              Check(Status.WARNING, "settings", "no TURN")]
    assert report(checks) == ["ok      database: fine",
                              "problem turn: refused the credentials",
                              "warning settings: no TURN",
                              "vio doctor: 1 problem, 1 warning"]
