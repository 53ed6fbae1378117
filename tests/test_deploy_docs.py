"""``docs/deploy.md`` and ``deploy/``: every name they use exists, and the recipe works here.

The first tests read the recipe: each ``vio`` command line parses with vio's own argument
parser, each ``VIO_*`` name is a setting, each file it installs is in ``deploy/``, each program
its shell blocks run is on this machine, each section it points to is there, it installs the
release this checkout is; the Caddyfile validates, the systemd units verify, and vio's sandbox
scores what the recipe says.

``test_the_recipe_on_this_machine`` then follows the recipe's commands, as written in the
document, with names, paths and ports moved into a temporary directory: the release's tag
cloned and its lock checked, PostgreSQL over its local socket, the settings file, ``vio-admin
migrate``, Caddy from ``deploy/Caddyfile`` (with its own CA, on loopback), the TURN
certificate's deploy hook, coturn from ``deploy/turnserver.conf`` as installed and filled in,
``vio serve`` as ``vio.service`` runs it, ``vio-admin doctor`` (TURN over UDP, TCP and TLS
included), the first administrator, an encrypted backup by ``deploy/vio-backup`` and a restore
through the backup key (``docs/backup.md``). systemd itself is the part left out: its units are
run by hand; the computer that keeps the backup key is this one, ``ssh`` to the server is left
out, and certbot's hook is given a certificate of the test's own CA.

``test_caddy_and_coturn_each_have_port_443`` runs Caddy and coturn, configured by the recipe,
side by side in a network namespace of their own, on their real ports and two loopback
addresses (the web address and the TURN address), then renews the TURN certificate through the
hook and coturn's reload.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import io
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netns
from tests.browser.https_harness import caddy, caddy_config, caddy_root
from tests.conftest import REQUIRE_SERVICES, seconds, stop_process, unavailable
from tests.test_https import Browserish, Certificate, csrf, free_port, make_certificate
from vio.cli import parser
from vio.settings import Settings

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "deploy.md"
BACKUP_DOC = ROOT / "docs" / "backup.md"
DEPLOY = ROOT / "deploy"
VIO = str(Path(sys.executable).with_name("vio"))
SETTINGS = {f.metadata["env"] for f in dataclasses.fields(Settings)}
# Shell variables the recipe's blocks set for their own use: not settings.
RECIPE_VARIABLES = {"VIO_REPOSITORY", "TURN_SECRET"}
# Where the recipe puts vio's own files, and where they are in this checkout.
INSTALLED = {"/opt/vio/.venv/bin/vio": VIO, "/opt/vio/.venv/bin/": f"{Path(VIO).parent}/",
             "/opt/vio/deploy/": f"{DEPLOY}/",
             "/opt/vio/": f"{ROOT}/", "/usr/local/bin/vio-admin": str(DEPLOY / "vio-admin")}
# What "with your name in place of …" stands for in the recipe's commands.
YOUR_NAME, YOUR_TURN_NAME = "vio.yourclinic.org", "turn.yourclinic.org"
YOUR_WEB_ADDRESS, YOUR_TURN_ADDRESS = "192.0.2.10", "192.0.2.11"
# A value the reader fills in, which vio's parser may refuse as a value (`--expect SEQ:HASH`).
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(?::[A-Z][A-Z0-9_]*)*")


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
BACKUP_TEXT = BACKUP_DOC.read_text()
DEPLOY_TEXTS = {path.name: path.read_text() for path in sorted(DEPLOY.iterdir())
                if path.is_file()}
ALL_TEXTS = {"docs/deploy.md": DOC_TEXT, **{f"deploy/{k}": v for k, v in DEPLOY_TEXTS.items()}}


# --- every name exists ---------------------------------------------------------------------

def test_every_vio_command_in_the_recipe_parses() -> None:
    commands = [c for text in ALL_TEXTS.values() for c in vio_command_lines(text)]
    assert {c[0] for c in commands} >= {"migrate", "doctor", "serve", "staff", "audit"}
    for words in commands:
        assert parses(words) or (words[-1].startswith("--") and parses([*words, "0"])), \
            f"`vio {' '.join(words)}` does not parse"  # (an option may be named without value)


def parses(words: list[str]) -> bool:
    said = io.StringIO()
    with contextlib.redirect_stderr(said):  # argparse says why, then exits
        try:
            parser().parse_args(words)
        except SystemExit:
            refused = re.search(r"error: argument [^:]+: .*?'([^']*)'", said.getvalue())
            return refused is not None and PLACEHOLDER.fullmatch(refused.group(1)) is not None
    return True


def test_a_placeholder_passes_only_where_a_value_goes() -> None:
    assert parses(["audit", "verify", "--expect", "SEQ:HASH"])
    assert not parses(["audit", "verify", "--expect", "12:nothex"])
    assert not parses(["audit", "verfy", "--expect", "SEQ:HASH"])
    assert not parses(["staff", "passwd"])


def test_every_setting_named_is_a_setting() -> None:
    for name, text in ALL_TEXTS.items():
        for variable in set(re.findall(r"\bVIO_[A-Z0-9_]+\b", text)):
            assert variable in SETTINGS | RECIPE_VARIABLES, \
                f"{name} names {variable}, which is no setting"
    assigned = {line.split("=", 1)[0] for line in shell_blocks(DOC_TEXT)
                if re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", line)}
    assert assigned >= RECIPE_VARIABLES, "each recipe variable is set by the recipe"
    assert not RECIPE_VARIABLES & SETTINGS


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
    for link in re.findall(r"\]\(((?:\.\./)?[\w./-]+)(?:#[\w-]*)?\)", DOC_TEXT):
        assert (DOC.parent / link).exists(), f"docs/deploy.md links to {link}, not there"


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
            assert variable in SETTINGS | RECIPE_VARIABLES, f"{variable} in `{line}` is no setting"
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
                   "443/tcp", "443/udp", "VIO_RTC_PORT_RANGE", "pg_dump", "Upgrading",
                   "journalctl", "vio-admin doctor", "VIO_DATABASE_URL", "staff add",
                   "age-keygen", "/etc/vio/backup-recipients.txt", "backup.md", "certbot",
                   "--require-hashes", "CHANGELOG.md", "systemd-analyze security"):
        assert needed in DOC_TEXT, needed


def test_the_recipe_installs_this_release_from_its_lock() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    lines = shell_blocks(DOC_TEXT)
    clone = f'git clone --branch v{version} "$VIO_REPOSITORY" /opt/vio'
    assert clone in lines, f"the recipe does not install v{version}, this checkout's release"
    assert lines.index("VIO_REPOSITORY=") < lines.index(clone)
    lock = ("/opt/vio/.venv/bin/pip install --require-hashes --no-deps -r "
            "/opt/vio/requirements/runtime.txt")
    itself = "/opt/vio/.venv/bin/pip install --no-deps -e /opt/vio"
    upgrade = DOC_TEXT[DOC_TEXT.index("## Upgrading"):DOC_TEXT.index("## Logs")]
    for text in (DOC_TEXT[:DOC_TEXT.index("## 4.")], upgrade):
        installs = [line for line in shell_blocks(text) if " install " in line and "pip" in line]
        assert installs == [lock, itself], installs
    upgrade_steps = [line.split()[0] if not line.startswith("git") else line.split()[3]
                     for line in shell_blocks(upgrade)]
    assert upgrade_steps == ["fetch", "show", "systemctl", "checkout", *["/opt/vio/.venv/bin/pip"]
                             * 2, "vio-admin", "systemctl", "vio-admin"], upgrade_steps
    changelog = (ROOT / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog, re.M)
    assert released[:2] == [version, "0.1.0"], released


def test_the_settings_file_is_valid_once_its_key_is_set() -> None:
    env = env_file(DEPLOY / "vio.env")
    assert env["VIO_SECRET_KEY"] == "", "the shipped key must be empty, so vio refuses to start"
    commented = re.findall(r"^#(VIO_[A-Z0-9_]+)=", DEPLOY_TEXTS["vio.env"], re.M)
    assert set(env) | set(commented) <= SETTINGS
    settings = Settings.from_env({**env, "VIO_SECRET_KEY": "k" * 64})
    assert settings.public_base_url.startswith("https://")
    assert settings.trusted_proxies == ("127.0.0.1", "::1")


def port_range(text: str, low: str, high: str) -> range:
    first = re.search(rf"^{low}=(\d+)$", text, re.M)
    last = re.search(rf"^{high}=(\d+)$", text, re.M)
    assert first is not None and last is not None, (low, high)
    return range(int(first.group(1)), int(last.group(1)) + 1)


def test_vio_media_ports_and_coturn_relay_ports_do_not_overlap() -> None:
    media = Settings.from_env({**env_file(DEPLOY / "vio.env"), "VIO_SECRET_KEY": "k"})
    low, high = media.rtc_port_range
    relay = port_range(DEPLOY_TEXTS["turnserver.conf"], "min-port", "max-port")
    assert not set(range(low, high + 1)) & set(relay)
    dash = "\N{EN DASH}"  # as the recipe writes a range
    assert f"{relay.start}{dash}{relay.stop - 1}" in DOC_TEXT and f"{low}{dash}{high}" in DOC_TEXT


def caddy_env(directory: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(directory), "XDG_DATA_HOME": str(directory / "data"),
            "XDG_CONFIG_HOME": str(directory / "config")}


def test_the_caddyfile_validates_and_proxies_to_vio(tmp_path: Path) -> None:
    if shutil.which("caddy") is None:
        unavailable("caddy", "not installed (make system-packages)")
    for command in ("adapt", "validate"):
        result = subprocess.run(["caddy", command, "--config", str(DEPLOY / "Caddyfile"),
                                 "--adapter", "caddyfile"], capture_output=True, text=True,
                                timeout=seconds(30), env=caddy_env(tmp_path))
        assert result.returncode == 0, result.stderr
    config = json.loads(subprocess.run(
        ["caddy", "adapt", "--config", str(DEPLOY / "Caddyfile"), "--adapter", "caddyfile"],
        capture_output=True, text=True, timeout=seconds(30), env=caddy_env(tmp_path)).stdout)
    assert config["admin"] == {"disabled": True}, "no admin endpoint"
    server = next(iter(config["apps"]["http"]["servers"].values()))
    assert server["listen"] == ["203.0.113.10:443"], "only on the web address (default_bind)"
    route = server["routes"][0]
    assert route["match"] == [{"host": ["vio.example.org"]}]
    assert '"upstreams":[{"dial":"127.0.0.1:8000"}]' in json.dumps(route, separators=(",", ":"))
    assert "logs" not in server, "no access log: URLs carry personal links"


def test_the_systemd_units_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:  # a tool, not a service: nothing to require
        pytest.skip("systemd-analyze is not installed")
    units = [name for name in DEPLOY_TEXTS if name.endswith((".service", ".timer"))]
    assert {"vio.service", "vio-backup.service", "vio-backup.timer", "vio-audit-head.service",
            "vio-audit-head.timer"} <= set(units)
    for unit in units:
        text = DEPLOY_TEXTS[unit]
        for installed, checkout in INSTALLED.items():
            text = text.replace(installed, checkout)
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


def test_the_service_sandbox_scores_what_the_recipe_says() -> None:
    service = DEPLOY_TEXTS["vio.service"]
    for directive in ("CapabilityBoundingSet=", "NoNewPrivileges=yes", "ProtectSystem=strict",
                      "ProtectProc=invisible", "RestrictNamespaces=yes", "LockPersonality=yes",
                      "SystemCallArchitectures=native", "SystemCallFilter=@system-service",
                      "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK"):
        assert re.search(rf"^{re.escape(directive)}$", service, re.M), directive
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                             str(DEPLOY / "vio.service")], capture_output=True, text=True,
                            timeout=seconds(60))
    score = re.search(r"Overall exposure level for vio\.service: (\d+\.\d) (\w+)", result.stdout)
    assert score is not None, result.stdout + result.stderr
    assert f"rates its exposure **{score.group(1)} {score.group(2)}**" in DOC_TEXT, score.group(0)
    # The two timers' services say they carry the same sandbox: they score the same.
    for unit in ("vio-backup.service", "vio-audit-head.service"):
        result = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                                 str(DEPLOY / unit)], capture_output=True, text=True,
                                timeout=seconds(60))
        assert f"Overall exposure level for {unit}: {score.group(1)}" in result.stdout, unit
    assert f"score {score.group(1)} as well" in DOC_TEXT


def test_the_certbot_command_uses_certbot_options() -> None:
    if shutil.which("certbot") is None:
        unavailable("certbot", "not installed (apt-get install certbot)")
    [command] = [line for line in shell_blocks(DOC_TEXT) if line.startswith("certbot ")]
    assert "--deploy-hook /opt/vio/deploy/coturn-certificate" in command
    assert f"--http-01-address {YOUR_TURN_ADDRESS}" in command
    options = subprocess.run(["certbot", "--help", "all"], capture_output=True, text=True,
                             timeout=seconds(60)).stdout
    for option in re.findall(r"(?<!\S)(--[\w-]+)", command):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", options), option


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


def set_line(path: Path, name: str, value: str) -> None:
    """What "edit the lines marked SET" does to one ``name=value`` line, which must be there."""
    text, count = re.subn(rf"^#?{name}=.*$", f"{name}={value}", path.read_text(), flags=re.M)
    assert count == 1, f"{path.name} has no line {name}= to set"
    path.write_text(text)


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

    @property
    def cert_dir(self) -> Path:
        return self.root / "coturn-certs"

    def moved(self, text: str, **more: str) -> str:
        """``text`` with the recipe's names and paths moved here (``more`` first)."""
        moves = {
            **more,
            "/etc/vio/vio.env": str(self.env_path), "/etc/vio": str(self.env_path.parent),
            "/etc/caddy/Caddyfile": str(self.root / "Caddyfile.installed"),
            "/etc/turnserver.conf": str(self.root / "turnserver.conf"),
            "/etc/coturn/certs": str(self.cert_dir),
            "/var/backups/vio": str(self.root / "backups"),
            "createuser vio": f"createuser {self.role}",
            "createdb --owner=vio vio": f"createdb --owner={self.role} {self.database}",
            "dropdb vio": f"dropdb {self.database}",
            "--dbname=vio": f"--dbname={self.database}", "-o vio -g vio": "-o root -g root",
            "-g vio": "-g root", "runuser -u vio": "runuser -u root", **INSTALLED}
        for installed, checkout in moves.items():
            text = text.replace(installed, checkout)
        return text

    def command(self, line: str, **more: str) -> str:
        assert line in shell_blocks(DOC_TEXT) + shell_blocks(BACKUP_TEXT), \
            f"docs/deploy.md (nor docs/backup.md) has no `{line}`"
        if line.startswith("vio-admin "):
            line = here("vio-admin") + line[len("vio-admin"):]
        return self.moved(line, **more)

    def run(self, line: str, stdin: str | None = None, env: dict[str, str] | None = None,
            also: str = "", **more: str) -> subprocess.CompletedProcess[str]:
        return self.run_together([line], stdin, env, also, **more)

    def run_together(self, lines: list[str], stdin: str | None = None,
                     env: dict[str, str] | None = None, also: str = "",
                     **more: str) -> subprocess.CompletedProcess[str]:
        """``lines`` in one shell (a variable set by one is used by the next); ``also`` is
        added to the last (an option that keeps it on this machine)."""
        script = "set -e\n" + "\n".join(self.command(line, **more) for line in lines) + also
        result = subprocess.run(script, shell=True, env={**self.env, **(env or {})},
                                cwd=self.root, input=stdin, capture_output=True, text=True,
                                timeout=seconds(90))
        assert result.returncode == 0, f"{lines}\n{result.stdout}\n{result.stderr}"
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


def needs_turn() -> None:
    missing = [tool for tool in ("turnserver", "caddy") if shutil.which(tool) is None]
    try:
        grp.getgrnam("turnserver")
    except KeyError:
        missing.append("the turnserver group")
    if missing or os.geteuid() != 0:
        why = f"needs {', '.join(missing)}" if missing else "needs root"
        if REQUIRE_SERVICES:
            pytest.fail(f"coturn cannot be set up here as the recipe does: {why}")
        pytest.skip(f"coturn cannot be set up here as the recipe does: {why}")


def postgres_by_socket() -> None:
    needs = [tool for tool in ("runuser", "createuser", "pg_dump", "pg_restore", "caddy", "age",
                               "git") if shutil.which(tool) is None]
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


def follow_settings(recipe: Recipe) -> None:
    """Step 5's commands."""
    recipe.run("install -d -m 0750 -g vio /etc/vio")
    recipe.run("install -m 0640 -g vio /opt/vio/deploy/vio.env /etc/vio/vio.env")
    recipe.run('sed -i "s/^VIO_SECRET_KEY=$/VIO_SECRET_KEY=$(openssl rand -hex 32)/" '
               "/etc/vio/vio.env")


def follow_caddy(recipe: Recipe, name: str, address: str) -> str:
    """Step 7's commands, but the restart: the installed Caddyfile, for ``name``/``address``."""
    recipe.run("install -m 0644 /opt/vio/deploy/Caddyfile /etc/caddy/Caddyfile")
    recipe.run('sed -i "s/vio.example.org/vio.yourclinic.org/" /etc/caddy/Caddyfile',
               **{YOUR_NAME: name})
    recipe.run(f'sed -i "s/default_bind 203.0.113.10/default_bind {YOUR_WEB_ADDRESS}/" '
               "/etc/caddy/Caddyfile", **{YOUR_WEB_ADDRESS: address})
    valid = recipe.run("caddy validate --adapter caddyfile --config /etc/caddy/Caddyfile",
                       env=caddy_env(recipe.root / "caddy-validate"))
    assert "Valid configuration" in valid.stdout + valid.stderr
    return (recipe.root / "Caddyfile.installed").read_text()


def certificate(directory: Path, name: str, address: str) -> Certificate:
    """A certificate for ``name`` and ``address`` from a CA of the test's own."""
    directory.mkdir()
    return make_certificate(directory, names=(name,), addresses=(address,))


def certificate_lineage(recipe: Recipe, cert: Certificate) -> Path:
    """What certbot keeps in /etc/letsencrypt/live/NAME after obtaining ``cert``."""
    lineage = recipe.root / "letsencrypt" / "live" / YOUR_TURN_NAME
    lineage.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copy(cert.cert, lineage / "fullchain.pem")
    shutil.copy(cert.key, lineage / "privkey.pem")
    return lineage


def run_certificate_hook(recipe: Recipe, lineage: Path, reload: str) -> None:
    """certbot running step 8's deploy hook after a success."""
    [command] = [line for line in shell_blocks(DOC_TEXT) if line.startswith("certbot ")]
    hook = shlex.split(command)[shlex.split(command).index("--deploy-hook") + 1]
    done = subprocess.run([recipe.moved(hook)], env={**recipe.env, "RENEWED_LINEAGE": str(lineage),
                                       "CERT_DIR": str(recipe.cert_dir), "RELOAD": reload},
                          capture_output=True, text=True, timeout=seconds(30))
    assert done.returncode == 0, done.stderr
    turnserver = grp.getgrnam("turnserver").gr_gid
    for name in ("turn.fullchain.pem", "turn.key"):
        info = (recipe.cert_dir / name).stat()
        assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (0o640, 0, turnserver), name
    assert sorted(p.name for p in recipe.cert_dir.iterdir()) == ["turn.fullchain.pem",
                                                                 "turn.key"]


TURN_STEP = [
    'TURN_SECRET="$(openssl rand -hex 32)"',
    'sed -i "s/^#static-auth-secret=$/static-auth-secret=$TURN_SECRET/" /etc/turnserver.conf',
    'sed -i "s/^#VIO_TURN_SECRET=$/VIO_TURN_SECRET=$TURN_SECRET/" /etc/vio/vio.env',
    'sed -i "s/^#realm=turn.example.org$/realm=turn.yourclinic.org/" /etc/turnserver.conf',
    'sed -i "s/^#VIO_TURN_URLS=/VIO_TURN_URLS=/; s/turn.example.org/turn.yourclinic.org/g" '
    "/etc/vio/vio.env",
]


def follow_turn(recipe: Recipe, turn_address: str, media_address: str) -> Path:
    """Step 9's file: installed, the secret in both files, the lines marked SET filled in."""
    recipe.run("install -m 0640 -o root -g turnserver /opt/vio/deploy/turnserver.conf "
               "/etc/turnserver.conf")
    conf = recipe.root / "turnserver.conf"
    info = conf.stat()
    assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (
        0o640, 0, grp.getgrnam("turnserver").gr_gid), "root:turnserver 0640: it holds the secret"
    recipe.run_together(TURN_STEP, **{YOUR_TURN_NAME: turn_address})
    secret = env_file(conf)["static-auth-secret"]
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    assert env_file(recipe.env_path)["VIO_TURN_SECRET"] == secret
    for line in ("listening-ip", "relay-ip"):
        set_line(conf, line, turn_address)
    set_line(conf, "allowed-peer-ip", media_address)
    conf.write_text(recipe.moved(conf.read_text()))  # the certificate's folder
    return conf


@contextlib.contextmanager
def turnserver(conf: Path, directory: Path, within: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """coturn as ``coturn.service`` runs it, ``turnserver -c FILE``, its user database and pid
    file in ``directory``; ``within`` runs it in a network namespace."""
    with open(directory / "turnserver.log", "wb") as out:
        process = subprocess.Popen(
            [*within, "turnserver", "-c", str(conf), f"--db={directory / 'turndb'}",
             f"--pidfile={directory / 'turnserver.pid'}"], stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process)


def listening(within: list[str], address: str, port: int, log: Path) -> None:
    probe = ("import socket, sys\n"
             "socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()\n")
    deadline = time.monotonic() + seconds(20)
    while subprocess.run([*within, sys.executable, "-c", probe, address, str(port)],
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on {address}:{port}: "
                                 f"{log.read_text()[-3000:] if log.exists() else ''}")
        time.sleep(0.1)


PASSWORD = "correct horse battery staple"
EXAMPLE_RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
ON_THE_SERVER = "ssh root@vio.example.org "  # the restore streams from the key's computer
RESTORE = ("age -d -i vio-backup-key.txt vio-20261201T031500Z.dump.age | ssh root@vio.example.org "
           "runuser -u vio -- pg_restore --no-owner --exit-on-error --dbname=vio")


def release_repository(directory: Path, tag: str) -> Path:
    """A copy of this repository in which ``tag`` names a commit (this checkout's, unless the
    tag is made already)."""
    bare = directory / "vio.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", "--no-hardlinks", str(ROOT), str(bare)],
                   check=True, capture_output=True, timeout=seconds(60))
    if subprocess.run(["git", "-C", str(bare), "rev-parse", "-q", "--verify",
                       f"refs/tags/{tag}"], capture_output=True).returncode != 0:
        subprocess.run(["git", "-C", str(bare), "tag", tag, "HEAD"], check=True,
                       capture_output=True)
    return bare


@pytest.mark.postgres
def test_the_recipe_on_this_machine(tmp_path: Path) -> None:
    postgres_by_socket()
    needs_turn()
    name = f"vio_recipe_{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIO_", "PG"))}
    # vio-admin's defaults (/etc/vio/vio.env, the vio user, /var/lib/vio, /opt/vio) moved here.
    env.update(ENV_FILE=str(tmp_path / "etc-vio" / "vio.env"), RUN_AS="root",
               STATE_DIR=str(tmp_path / "state"), PROGRAM=VIO, PGHOST="/var/run/postgresql")
    as_vio = {"PGUSER": name}  # what peer authentication makes of the vio user
    recipe = Recipe(root=tmp_path, role=name, database=name, env=env)
    (tmp_path / "state").mkdir()
    vio_port, https_port, http_port = free_port(), free_port(), free_port()
    turn_port, turns_port = free_port(), free_port()
    origin = f"https://localhost:{https_port}"
    try:
        # 3. The code: the release's tag, and its lock (checked against this environment,
        # which is what the index would give: nothing is fetched here)
        checkout = tmp_path / "opt-vio"
        [clone] = [line for line in shell_blocks(DOC_TEXT) if line.startswith("git clone ")]
        tag = shlex.split(clone)[shlex.split(clone).index("--branch") + 1]
        recipe.run(clone, env={"VIO_REPOSITORY": str(release_repository(tmp_path, tag))},
                   **{"/opt/vio": str(checkout)})
        described = subprocess.run(["git", "-C", str(checkout), "describe", "--tags"],
                                   capture_output=True, text=True, check=True)
        assert described.stdout.strip() == tag
        assert (checkout / "requirements" / "runtime.txt").exists()
        recipe.run("/opt/vio/.venv/bin/pip install --require-hashes --no-deps -r "
                   "/opt/vio/requirements/runtime.txt", also=" --dry-run --no-index --quiet",
                   **{"/opt/vio/requirements/": f"{checkout}/requirements/"})
        # 4. PostgreSQL
        recipe.run("runuser -u postgres -- createuser vio")
        recipe.run("runuser -u postgres -- createdb --owner=vio vio")
        # 5. Settings
        follow_settings(recipe)
        assert re.fullmatch(r"[0-9a-f]{64}", env_file(recipe.env_path)["VIO_SECRET_KEY"])
        url = env_file(recipe.env_path)["VIO_DATABASE_URL"]
        assert url == "postgresql+asyncpg://vio@/vio?host=/var/run/postgresql"
        set_setting(recipe.env_path, "VIO_DATABASE_URL",
                    url.replace("vio@/vio", f"{name}@/{name}"))
        set_setting(recipe.env_path, "VIO_PUBLIC_BASE_URL", origin)
        set_setting(recipe.env_path, "VIO_DATA_DIR", str(tmp_path / "state"))
        set_setting(recipe.env_path, "VIO_ICE_ANNOUNCE_ADDRESSES", "127.0.0.1")
        # 6. The database schema
        assert "applied" in recipe.run("vio-admin migrate").stdout
        assert "database is up to date" in recipe.run("vio-admin migrate").stdout
        # 7. The Caddyfile, named for this machine ("localhost" here), validated
        site = follow_caddy(recipe, "localhost", "127.0.0.1")
        config = caddy_config(https_port, http_port, vio_port, tmp_path / "caddy", site=site,
                              hostname="localhost")
        # 8. The TURN certificate: certbot's hook, given one of the test CA's
        turn_cert = certificate(tmp_path / "turn-ca", "localhost", "127.0.0.1")
        run_certificate_hook(recipe, certificate_lineage(recipe, turn_cert), reload="true")
        # 9. coturn: the recipe's file, on 127.0.0.1 and two free ports instead of 3478 and 443
        conf = follow_turn(recipe, turn_address="127.0.0.1", media_address="127.0.0.1")
        set_line(conf, "listening-port", str(turn_port))
        set_line(conf, "tls-listening-port", str(turns_port))
        urls = env_file(recipe.env_path)["VIO_TURN_URLS"]
        assert urls.count(":3478?") == 2 and urls.count(":443?") == 1, urls
        set_setting(recipe.env_path, "VIO_TURN_URLS", urls.replace(
            ":3478?", f":{turn_port}?").replace(":443?", f":{turns_port}?"))
        # 10. The backup key, made on "your own computer" (here), its public key on the server
        key = tmp_path / "vio-backup-key.txt"
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        public = subprocess.run(["age-keygen", "-y", str(key)], capture_output=True, text=True,
                                check=True).stdout.strip()
        recipe.run(f"echo {EXAMPLE_RECIPIENT} > /etc/vio/backup-recipients.txt",
                   **{EXAMPLE_RECIPIENT: public})
        recipe.run("chmod 0644 /etc/vio/backup-recipients.txt")
        recipe.run("install -d -m 0700 -o vio -g vio /var/backups/vio")
        backups = tmp_path / "backups"
        assert backups.stat().st_mode & 0o777 == 0o700
        with turnserver(conf, tmp_path, within=[]):
            listening([], "127.0.0.1", turns_port, tmp_path / "turnserver.log")
            # vio.service (by hand), then Caddy in front
            with vio_service(recipe, vio_port), caddy(config, tmp_path, origin) as context:
                trusted = tmp_path / "trusted.pem"
                trusted.write_text(caddy_root(tmp_path).read_text() + turn_cert.ca.read_text())
                recipe.env["SSL_CERT_FILE"] = str(trusted)
                # 12. Check: TURN over UDP, TCP and TLS included
                doctor = recipe.run("vio-admin doctor")
                assert doctor.stdout.strip().endswith("0 problems, 0 warnings"), doctor.stdout
                assert doctor.stdout.count("granted a relay allocation") == 3, doctor.stdout
                # 13. The first group: its administrator, signed in over HTTPS
                added = recipe.run('vio-admin staff add --program "Riverside IOP" --role admin '
                                   '--name "Ana Ruiz" --email ana@example.org',
                                   stdin=f"{PASSWORD}\n")
                assert "admin ana@example.org added" in added.stdout
                assert sign_in(Browserish(context), origin, "ana@example.org", PASSWORD) == 303
                # Backups: vio-backup.service by hand, with its Environment= moved here; a
                # backup older than KEEP_DAYS goes.
                old = backups / "vio-20200101T031500Z.dump.age"
                old.write_bytes(b"old")
                os.utime(old, (time.time() - 40 * 86400,) * 2)
                unit_env = re.search(r"^Environment=(.*)$", DEPLOY_TEXTS["vio-backup.service"],
                                     re.M)
                assert unit_env is not None
                unit_settings = dict(w.split("=", 1)
                                     for w in shlex.split(recipe.moved(unit_env.group(1))))
                backup_env = {**env, **as_vio, **unit_settings, "PGDATABASE": name}
                made = subprocess.run([str(DEPLOY / "vio-backup")], env=backup_env,
                                      capture_output=True, text=True, timeout=seconds(60))
                assert made.returncode == 0, made.stderr
                [dump] = backups.iterdir()
                assert dump.name.endswith(".dump.age")
                assert dump.stat().st_mode & 0o777 == 0o600
                assert dump.read_bytes().startswith(b"age-encryption.org/v1\n")
            # Restore (docs/backup.md), with vio stopped, as written
            recipe.run("runuser -u postgres -- dropdb vio")
            recipe.run("runuser -u postgres -- createdb --owner=vio vio")
            recipe.run(RESTORE, env=as_vio, **{"vio-backup-key.txt": str(key),
                                               "vio-20261201T031500Z.dump.age": str(dump),
                                               ON_THE_SERVER: ""})
            assert "database is up to date" in recipe.run("vio-admin migrate").stdout
            with vio_service(recipe, vio_port), caddy(config, tmp_path, origin) as context:
                doctor = recipe.run("vio-admin doctor")
                assert doctor.stdout.strip().endswith("0 problems, 0 warnings"), doctor.stdout
                assert sign_in(Browserish(context), origin, "ana@example.org", PASSWORD) == 303
                assert "audit chain intact" in recipe.run("vio-admin audit verify").stdout
    finally:
        for command in (["dropdb", "--if-exists", "--force", name],
                        ["dropuser", "--if-exists", name]):
            subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True,
                           timeout=seconds(30))


WEB, TURN = "127.0.0.1", "127.0.0.2"  # the two addresses, on the namespace's loopback


def sockets(within: list[str]) -> set[tuple[str, str, int, str]]:
    """(protocol, address, port, program) of every listening socket, as ``ss`` shows them."""
    shown = subprocess.run([*within, "ss", "-Hlntup"], capture_output=True, text=True,
                           check=True).stdout
    found = set()
    for line in shown.splitlines():
        fields = line.split()
        address, _, port = fields[4].rpartition(":")
        program = re.search(r'users:\(\("([^"]+)"', line)
        found.add((fields[0], address, int(port), program.group(1) if program else "?"))
    return found


def served_certificate(within: list[str], address: str, port: int) -> str:
    fetch = "import ssl, sys\nprint(ssl.get_server_certificate((sys.argv[1], int(sys.argv[2]))))"
    result = subprocess.run([*within, sys.executable, "-c", fetch, address, str(port)],
                            capture_output=True, text=True, timeout=seconds(30))
    return ssl.PEM_cert_to_DER_cert(result.stdout).hex() if result.returncode == 0 else ""


def test_caddy_and_coturn_each_have_port_443(tmp_path: Path) -> None:
    needs_turn()
    if netns.unavailable() is not None:
        unavailable("network namespaces", str(netns.unavailable()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIO_")}
    recipe = Recipe(root=tmp_path, role="vio", database="vio", env=env)
    follow_settings(recipe)
    # 7. Caddy on the web address, with its own CA in place of Let's Encrypt
    site = follow_caddy(recipe, "vio.test", WEB)
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(site.replace("\n{\n", f"\n{{\n\tlocal_certs\n\tskip_install_trust\n"
                                               f"\tstorage file_system {tmp_path / 'caddy'}\n", 1))
    # 8. The TURN certificate, for the TURN address
    first = certificate(tmp_path / "first", YOUR_TURN_NAME, TURN)
    lineage = certificate_lineage(recipe, first)
    run_certificate_hook(recipe, lineage, reload="true")  # coturn is not running yet
    # 9. coturn on the TURN address, on the recipe's own ports
    conf = follow_turn(recipe, turn_address=TURN, media_address=WEB)
    turn_env = env_file(recipe.env_path)
    assert turn_env["VIO_TURN_URLS"] == (
        f"turn:{TURN}:3478?transport=udp,turn:{TURN}:3478?transport=tcp,"
        f"turns:{TURN}:443?transport=tcp")
    with netns.Network() as network:
        within = network.namespace("recipe").exec_args([])
        with open(tmp_path / "caddy.log", "wb") as log:
            caddy_process = subprocess.Popen(
                [*within, "caddy", "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
                env=caddy_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
        with contextlib.ExitStack() as stack:
            stack.callback(stop_process, caddy_process)
            coturn = stack.enter_context(turnserver(conf, tmp_path, within))
            listening(within, WEB, 443, tmp_path / "caddy.log")
            listening(within, TURN, 443, tmp_path / "turnserver.log")
            found = sockets(within)
            assert {s[:3] for s in found if s[3] == "caddy"} == {
                ("tcp", WEB, 80), ("tcp", WEB, 443), ("udp", WEB, 443)}, found
            assert {s[:3] for s in found if s[3] == "turnserver"} == {
                ("tcp", TURN, 3478), ("udp", TURN, 3478), ("tcp", TURN, 443)}, found
            # The recipe's TURN URLs and secret, as vio doctor checks them from vio's side
            doctor = subprocess.run(
                [*within, VIO, "doctor"], capture_output=True, text=True, timeout=seconds(90),
                env={**env, "VIO_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/v.sqlite3",
                     "VIO_SECRET_KEY": turn_env["VIO_SECRET_KEY"],
                     "VIO_TURN_URLS": turn_env["VIO_TURN_URLS"],
                     "VIO_TURN_SECRET": turn_env["VIO_TURN_SECRET"],
                     "SSL_CERT_FILE": str(first.ca)})
            turn_lines = [line for line in doctor.stdout.splitlines() if " turn: " in line]
            assert len(turn_lines) == 3 and all(
                line.startswith("ok") and "granted a relay allocation" in line
                for line in turn_lines), doctor.stdout
            # A renewal: certbot's hook copies the new certificate and reloads coturn the way
            # `systemctl reload coturn` does (the override's ExecReload), with no restart.
            assert served_certificate(within, TURN, 443) == ssl.PEM_cert_to_DER_cert(
                first.cert.read_text()).hex()
            second = certificate(tmp_path / "second", YOUR_TURN_NAME, TURN)
            reload = re.search(r"^ExecReload=(.*)$", DEPLOY_TEXTS["coturn-override.conf"], re.M)
            assert reload is not None
            run_certificate_hook(recipe, certificate_lineage(recipe, second),
                                 reload=reload.group(1).replace("$MAINPID", str(coturn.pid)))
            renewed = ssl.PEM_cert_to_DER_cert(second.cert.read_text()).hex()
            deadline = time.monotonic() + seconds(10)
            while served_certificate(within, TURN, 443) != renewed:
                assert time.monotonic() < deadline, "coturn still serves the old certificate"
                time.sleep(0.2)
            assert coturn.poll() is None


def test_vio_commands_are_found_in_blocks_and_inline_code() -> None:
    text = ("run `vio doctor` then `vio-admin migrate`\n"
            "```sh\nvio-admin staff add --x \\\n  y\n```\n")
    assert vio_command_lines(text) == [["staff", "add", "--x", "y"], ["doctor"], ["migrate"]]
