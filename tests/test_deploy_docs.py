"""``docs/deploy.md`` and ``deploy/``: every name they use exists, and the recipe works here.

The first tests read the recipe: each ``vio`` command line parses with vio's own argument
parser, each ``VIO_*`` name is a setting, each file it installs is in ``deploy/``, each program
its shell blocks run is on this machine, each section it points to is there; the Caddyfile
adapts and the systemd units verify.

``test_the_recipe_on_this_machine`` then follows the recipe's commands, as written in the
document, with names and paths moved into a temporary directory: PostgreSQL over its local
socket, the settings file, ``vio-admin migrate``, ``vio serve`` as ``vio.service`` runs it,
Caddy from ``deploy/Caddyfile`` (with its own CA, on loopback), coturn, ``vio-admin doctor``,
the first administrator, a backup by ``deploy/vio-backup`` and a restore. systemd itself is
the part left out: its units are run by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.https_harness import caddy, caddy_config, caddy_root
from tests.conftest import REQUIRE_SERVICES, seconds, stop_process, unavailable
from tests.test_doctor import coturn
from tests.test_https import Browserish, csrf, free_port
from vio.cli import parser
from vio.settings import Settings

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "deploy.md"
DEPLOY = ROOT / "deploy"
VIO = str(Path(sys.executable).with_name("vio"))
SETTINGS = {f.metadata["env"] for f in dataclasses.fields(Settings)}
# Where the recipe puts vio's own files, and where they are in this checkout.
INSTALLED = {"/opt/vio/.venv/bin/vio": VIO, "/opt/vio/.venv/bin/": f"{Path(VIO).parent}/",
             "/opt/vio/deploy/": f"{DEPLOY}/",
             "/opt/vio/": f"{ROOT}/", "/usr/local/bin/vio-admin": str(DEPLOY / "vio-admin")}


def shell_blocks(text: str) -> list[str]:
    """The command lines of the ```sh blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(" ".join(line.split()))
    return lines


def vio_command_lines(text: str) -> list[list[str]]:
    """Every ``vio …``/``vio-admin …`` command in code, as arguments to the ``vio`` parser."""
    candidates = shell_blocks(text) + re.findall(r"`([^`\n]+)`", text)
    commands = []
    for candidate in candidates:
        try:
            words = shlex.split(candidate)
        except ValueError:
            continue
        if len(words) > 1 and words[0] in ("vio", "vio-admin", "/opt/vio/.venv/bin/vio") \
                and re.fullmatch(r"[a-z][a-z-]*", words[1]):
            commands.append(words[1:])
    return commands


DOC_TEXT = DOC.read_text()
DEPLOY_TEXTS = {path.name: path.read_text() for path in sorted(DEPLOY.iterdir())
                if path.is_file()}
ALL_TEXTS = {"docs/deploy.md": DOC_TEXT, **{f"deploy/{k}": v for k, v in DEPLOY_TEXTS.items()}}


# --- every name exists ---------------------------------------------------------------------

def test_every_vio_command_in_the_recipe_parses() -> None:
    commands = [c for text in ALL_TEXTS.values() for c in vio_command_lines(text)]
    assert {c[0] for c in commands} >= {"migrate", "doctor", "serve", "staff"}
    for words in commands:
        assert parses(words) or (words[-1].startswith("--") and parses([*words, "0"])), \
            f"`vio {' '.join(words)}` does not parse"  # (an option may be named without value)


def parses(words: list[str]) -> bool:
    with contextlib.redirect_stderr(io.StringIO()):  # argparse says why, then exits
        try:
            parser().parse_args(words)
        except SystemExit:
            return False
    return True


def test_every_setting_named_is_a_setting() -> None:
    for name, text in ALL_TEXTS.items():
        for variable in set(re.findall(r"\bVIO_[A-Z0-9_]+\b", text)):
            assert variable in SETTINGS, f"{name} names {variable}, which is no setting"


def test_every_file_named_is_there() -> None:
    for name, text in {**ALL_TEXTS, "README.md": (ROOT / "README.md").read_text()}.items():
        for path in set(re.findall(r"(?<![\w/.])((?:deploy|docs|tests)/[\w./-]*\w)", text)):
            assert (ROOT / path).exists(), f"{name} names {path}, which does not exist"
        for path in set(re.findall(r"/opt/vio/([\w./-]*\w)", text)):
            if not path.startswith(".venv"):
                assert (ROOT / path).exists(), f"{name} names /opt/vio/{path}: not in vio"
    for unit in re.findall(r"\b([\w-]+\.(?:service|timer))\b", DOC_TEXT):
        if unit.startswith("vio"):
            assert (DEPLOY / unit).exists(), f"docs/deploy.md names {unit}, not in deploy/"


def here(path: str) -> str:
    """Where a file the recipe installs is in this checkout."""
    if path == "vio-admin":
        return INSTALLED["/usr/local/bin/vio-admin"]
    for installed, checkout in INSTALLED.items():
        if path.startswith(installed):
            return checkout + path[len(installed):]
    return path


def test_every_program_the_shell_blocks_run_is_here() -> None:
    for line in shell_blocks(DOC_TEXT):
        words = shlex.split(line)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            variable = words.pop(0).split("=", 1)[0]  # an assignment, as in vio.env
            assert variable in SETTINGS, f"{variable} in `{line}` is no setting"
        if not words:
            continue
        programs = [words[0]]
        if words[0] == "runuser":
            programs.append(words[words.index("--") + 1])
        for program in programs:
            found = here(program)
            assert (os.access(found, os.X_OK) if "/" in found else shutil.which(found)), \
                f"`{line}` runs {program}, which is not here"


def headings(text: str) -> set[str]:
    return {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}


def anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_every_section_pointed_to_is_there() -> None:
    sections = headings(DOC_TEXT)
    anchors = {anchor(h) for h in sections}
    sources = dict(ALL_TEXTS)
    sources.update({str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "vio").rglob("*.py")})
    for name, text in sources.items():
        for target in re.findall(r"docs/deploy\.md#([\w-]+)", text) + (
                re.findall(r"\]\(#([\w-]+)\)", text) if name == "docs/deploy.md" else []):
            assert target in anchors, f"{name} links to #{target}, no such section"
        for title in re.findall(r'docs/deploy\.md, "([^"]+)"', text.replace("\n# ", " ")):
            assert any(h == title or re.sub(r"^\d+\. ", "", h) == title for h in sections), \
                f"{name} refers to the section {title!r} of docs/deploy.md"
    assert "Media ports, NAT and TURN" in sections


def test_the_recipe_covers_what_a_deployment_needs() -> None:
    for needed in ("DNS", "PostgreSQL", "vio-admin migrate", "systemctl enable", "Caddyfile",
                   "443/tcp", "VIO_RTC_PORT_RANGE", "pg_dump", "pg_restore", "Upgrading",
                   "journalctl", "vio-admin doctor", "VIO_DATABASE_URL", "staff add"):
        assert needed in DOC_TEXT, needed


def test_the_settings_file_is_valid_once_its_key_is_set() -> None:
    env = env_file(DEPLOY / "vio.env")
    assert env["VIO_SECRET_KEY"] == "", "the shipped key must be empty, so vio refuses to start"
    commented = re.findall(r"^#(VIO_[A-Z0-9_]+)=", DEPLOY_TEXTS["vio.env"], re.M)
    assert set(env) | set(commented) <= SETTINGS
    settings = Settings.from_env({**env, "VIO_SECRET_KEY": "k" * 64})
    assert settings.public_base_url.startswith("https://")
    assert settings.trusted_proxies == ("127.0.0.1", "::1")


def test_the_caddyfile_adapts_and_proxies_to_vio() -> None:
    if shutil.which("caddy") is None:
        unavailable("caddy", "not installed (make system-packages)")
    result = subprocess.run(["caddy", "adapt", "--config", str(DEPLOY / "Caddyfile"),
                             "--adapter", "caddyfile"], capture_output=True, text=True,
                            timeout=seconds(30), env={**os.environ, "HOME": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    server = next(iter(config["apps"]["http"]["servers"].values()))
    route = server["routes"][0]
    assert route["match"] == [{"host": ["vio.example.org"]}]
    assert '"upstreams":[{"dial":"127.0.0.1:8000"}]' in json.dumps(route, separators=(",", ":"))
    assert "logs" not in server, "no access log: URLs carry personal links"


def test_the_systemd_units_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:  # a tool, not a service: nothing to require
        pytest.skip("systemd-analyze is not installed")
    units = ["vio.service", "vio-backup.service", "vio-backup.timer"]
    for unit in units:
        text = DEPLOY_TEXTS[unit]
        for installed, here in INSTALLED.items():
            text = text.replace(installed, here)
        (tmp_path / unit).write_text(text)
    coturn_unit = Path("/lib/systemd/system/coturn.service")
    if coturn_unit.exists():
        shutil.copy(coturn_unit, tmp_path)
        (tmp_path / "coturn.service.d").mkdir()
        shutil.copy(DEPLOY / "coturn-override.conf",
                    tmp_path / "coturn.service.d" / "override.conf")
        units.append("coturn.service")
    result = subprocess.run(["systemd-analyze", "verify", *units], cwd=tmp_path,
                            capture_output=True, text=True, timeout=seconds(60),
                            env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"})
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    service = DEPLOY_TEXTS["vio.service"]
    assert "EnvironmentFile=/etc/vio/vio.env" in service and "User=vio" in service
    assert "--host 127.0.0.1" in service
    assert "ExecStart=/opt/vio/deploy/vio-backup" in DEPLOY_TEXTS["vio-backup.service"]


# --- the recipe, followed ------------------------------------------------------------------

def env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines as systemd's ``EnvironmentFile=`` reads them (no quoting used)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def set_setting(path: Path, name: str, value: str) -> None:
    """What "then edit /etc/vio/vio.env" does to one line (uncommenting it if need be)."""
    text, count = re.subn(rf"^#?{name}=.*$", f"{name}={value}", path.read_text(), flags=re.M)
    path.write_text(text if count else f"{text}{name}={value}\n")


@dataclasses.dataclass
class Recipe:
    """The recipe's commands, moved into ``root`` and onto ``role``/``database``."""

    root: Path
    role: str
    database: str
    env: dict[str, str]

    @property
    def env_path(self) -> Path:
        return self.root / "etc-vio" / "vio.env"

    def command(self, line: str, **more: str) -> str:
        assert line in shell_blocks(DOC_TEXT), f"docs/deploy.md has no `{line}`"
        if line.startswith("vio-admin "):
            line = here("vio-admin") + line[len("vio-admin"):]
        moves = {
            "/etc/vio/vio.env": str(self.env_path), "/etc/vio": str(self.env_path.parent),
            "/etc/caddy/Caddyfile": str(self.root / "Caddyfile.installed"),
            "/var/backups/vio": str(self.root / "backups"),
            "createuser vio": f"createuser {self.role}",
            "createdb --owner=vio vio": f"createdb --owner={self.role} {self.database}",
            "dropdb vio": f"dropdb {self.database}",
            "--dbname=vio": f"--dbname={self.database}", "-g vio": "-g root",
            "runuser -u vio": "runuser -u root", **INSTALLED, **more}
        for installed, checkout in moves.items():
            line = line.replace(installed, checkout)
        return line

    def run(self, line: str, stdin: str | None = None, env: dict[str, str] | None = None,
            **more: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(line, **more), shell=True,
                                env={**self.env, **(env or {})}, cwd=self.root, input=stdin,
                                capture_output=True, text=True, timeout=seconds(90))
        assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
        return result


@contextlib.contextmanager
def vio_service(recipe: Recipe, port: int) -> Iterator[None]:
    """``vio.service`` without systemd: its ExecStart, EnvironmentFile and WorkingDirectory."""
    exec_start = re.search(r"^ExecStart=(.*)$", DEPLOY_TEXTS["vio.service"], re.M)
    assert exec_start is not None
    words = shlex.split(exec_start.group(1).replace("/opt/vio/.venv/bin/vio", VIO))
    words[words.index("--port") + 1] = str(port)
    env = {**{k: v for k, v in recipe.env.items() if not k.startswith("VIO_")},
           **env_file(recipe.env_path)}
    log = recipe.root / f"vio-{len(list(recipe.root.glob('vio-*.log')))}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(words, cwd=recipe.root / "state", env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + seconds(30)
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/healthz", timeout=seconds(1)) as response:
                if response.status == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError(f"vio.service did not start: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield
    finally:
        stop_process(process)


def postgres_by_socket() -> None:
    needs = [tool for tool in ("runuser", "createuser", "pg_dump", "pg_restore", "caddy")
             if shutil.which(tool) is None]
    if needs or os.geteuid() != 0:
        why = f"needs {', '.join(needs)}" if needs else "needs root (runuser)"
        if REQUIRE_SERVICES:
            pytest.fail(f"the recipe cannot be followed here: {why}")
        pytest.skip(f"the recipe cannot be followed here: {why}")
    probe = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-Atc", "select 1"],
                           capture_output=True, text=True, timeout=seconds(30))
    if probe.returncode != 0:
        unavailable("PostgreSQL on its local socket, as the postgres user", probe.stderr.strip())


def sign_in(web: Browserish, origin: str, email: str, password: str) -> int:
    status, _, page = web.fetch(f"{origin}/login")
    assert status == 200, page[:300]
    status, _, _ = web.fetch(f"{origin}/login", {
        "email": email, "password": password, "next": "/staff", "csrf_token": csrf(page)})
    return status


PASSWORD = "correct horse battery staple"


@pytest.mark.postgres
def test_the_recipe_on_this_machine(tmp_path: Path) -> None:
    postgres_by_socket()
    name = f"vio_recipe_{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIO_", "PG"))}
    # vio-admin's defaults (/etc/vio/vio.env, the vio user, /var/lib/vio, /opt/vio) moved here.
    env.update(ENV_FILE=str(tmp_path / "etc-vio" / "vio.env"), RUN_AS="root",
               STATE_DIR=str(tmp_path / "state"), PROGRAM=VIO, PGHOST="/var/run/postgresql")
    as_vio = {"PGUSER": name}  # what peer authentication makes of the vio user
    recipe = Recipe(root=tmp_path, role=name, database=name, env=env)
    (tmp_path / "state").mkdir()
    vio_port, https_port, http_port = free_port(), free_port(), free_port()
    origin = f"https://localhost:{https_port}"
    try:
        # 4. PostgreSQL
        recipe.run("runuser -u postgres -- createuser vio")
        recipe.run("runuser -u postgres -- createdb --owner=vio vio")
        # 5. Settings
        recipe.run("install -d -m 0750 -g vio /etc/vio")
        recipe.run("install -m 0640 -g vio /opt/vio/deploy/vio.env /etc/vio/vio.env")
        recipe.run('sed -i "s/^VIO_SECRET_KEY=$/VIO_SECRET_KEY=$(openssl rand -hex 32)/" '
                   "/etc/vio/vio.env")
        assert re.fullmatch(r"[0-9a-f]{64}", env_file(recipe.env_path)["VIO_SECRET_KEY"])
        url = env_file(recipe.env_path)["VIO_DATABASE_URL"]
        assert url == "postgresql+asyncpg://vio@/vio?host=/var/run/postgresql"
        set_setting(recipe.env_path, "VIO_DATABASE_URL",
                    url.replace("vio@/vio", f"{name}@/{name}"))
        set_setting(recipe.env_path, "VIO_PUBLIC_BASE_URL", origin)
        set_setting(recipe.env_path, "VIO_DATA_DIR", str(tmp_path / "state"))
        set_setting(recipe.env_path, "VIO_ICE_ANNOUNCE_ADDRESSES", "127.0.0.1")
        # 6. The database schema
        assert "database is up to date" in recipe.run("vio-admin migrate").stdout
        # 8. The Caddyfile, named for this machine ("localhost" here)
        recipe.run("install -m 0644 /opt/vio/deploy/Caddyfile /etc/caddy/Caddyfile")
        recipe.run('sed -i "s/vio.example.org/vio.yourclinic.org/" /etc/caddy/Caddyfile',
                   **{"vio.yourclinic.org": "localhost"})
        config = caddy_config(https_port, http_port, vio_port, tmp_path / "caddy",
                              site=(tmp_path / "Caddyfile.installed").read_text(),
                              hostname="localhost")
        with coturn(tmp_path) as turn:
            # 9. TURN: coturn on loopback, and its URLs and secret in vio.env
            set_setting(recipe.env_path, "VIO_TURN_URLS", turn.urls)
            set_setting(recipe.env_path, "VIO_TURN_SECRET", turn.secret)
            # 7. vio.service (by hand), then Caddy in front
            with vio_service(recipe, vio_port), caddy(config, tmp_path, origin) as context:
                recipe.env["SSL_CERT_FILE"] = str(caddy_root(tmp_path))
                # 11. Check
                doctor = recipe.run("vio-admin doctor")
                assert doctor.stdout.strip().endswith("0 problems, 0 warnings"), doctor.stdout
                # 12. The first group: its administrator, signed in over HTTPS
                added = recipe.run('vio-admin staff add --program "Riverside IOP" --role admin '
                                   '--name "Ana Ruiz" --email ana@example.org',
                                   stdin=f"{PASSWORD}\n")
                assert "admin ana@example.org added" in added.stdout
                assert sign_in(Browserish(context), origin, "ana@example.org", PASSWORD) == 303
                # Backups: vio-backup.service by hand; a dump older than KEEP_DAYS goes.
                backups = tmp_path / "backups"
                backups.mkdir(mode=0o700)
                old = backups / "vio-20200101T031500Z.dump"
                old.write_bytes(b"old")
                os.utime(old, (time.time() - 40 * 86400,) * 2)
                unit_env = re.search(r"^Environment=(.*)$", DEPLOY_TEXTS["vio-backup.service"],
                                     re.M)
                assert unit_env is not None
                backup_env = {**env, **as_vio,
                              **dict(w.split("=", 1) for w in shlex.split(unit_env.group(1))),
                              "BACKUP_DIR": str(backups), "PGDATABASE": name}
                made = subprocess.run([str(DEPLOY / "vio-backup")], env=backup_env,
                                      capture_output=True, text=True, timeout=seconds(60))
                assert made.returncode == 0, made.stderr
                [dump] = backups.glob("vio-*.dump")
                assert dump != old and dump.stat().st_mode & 0o777 == 0o600
            # Restore, with vio stopped, as written
            recipe.run("runuser -u postgres -- dropdb vio")
            recipe.run("runuser -u postgres -- createdb --owner=vio vio")
            recipe.run("runuser -u vio -- pg_restore --no-owner --dbname=vio "
                       "/var/backups/vio/vio-20261201T031500Z.dump", env=as_vio,
                       **{"vio-20261201T031500Z.dump": dump.name})
            assert "database is up to date" in recipe.run("vio-admin migrate").stdout
            with vio_service(recipe, vio_port), caddy(config, tmp_path, origin) as context:
                doctor = recipe.run("vio-admin doctor")
                assert doctor.stdout.strip().endswith("0 problems, 0 warnings"), doctor.stdout
                assert sign_in(Browserish(context), origin, "ana@example.org", PASSWORD) == 303
    finally:
        for command in (["dropdb", "--if-exists", "--force", name],
                        ["dropuser", "--if-exists", name]):
            subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True,
                           timeout=seconds(30))


def test_vio_commands_are_found_in_blocks_and_inline_code() -> None:
    text = ("run `vio doctor` then `vio-admin migrate`\n"
            "```sh\nvio-admin staff add --x \\\n  y\n```\n")
    assert vio_command_lines(text) == [["staff", "add", "--x", "y"], ["doctor"], ["migrate"]]
