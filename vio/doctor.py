"""``vio doctor``: checks one deployment from the machine it runs on, one line per finding.

Each finding is a :class:`Check`: ``ok``, ``warning`` (works, with a caveat) or ``problem``
(something patients or staff would run into), the part it is about, and one sentence. The
parts, in order:

- ``settings``: every ``VIO_*`` variable parses; the public URL is one where browsers allow the
  camera; the signing key is long and stable; TURN is configured.
- ``tls``: ``VIO_TLS_CERT_FILE`` and ``VIO_TLS_KEY_FILE`` load as a certificate and its key
  (also checked by ``vio serve`` before it starts), or, with no certificate and an ``https://``
  public URL, a proxy in front is trusted (``VIO_TRUSTED_PROXIES``).
- ``database``: reachable within :data:`DATABASE_TIMEOUT_SECONDS` and at the newest migration.
- ``redis`` (with ``VIO_REDIS_URL``): TLS unless on loopback, a password, and that vio can sign
  in and use its keys (``vio.nodes.connection``).
- ``public-url``: ``VIO_PUBLIC_BASE_URL/healthz`` answers, over HTTPS with a certificate this
  machine trusts and with ``Strict-Transport-Security``.
- ``ice``: each of ``VIO_ICE_ANNOUNCE_ADDRESSES`` can be bound (and a port of
  ``VIO_RTC_PORT_RANGE`` on it).
- ``turn``: each of ``VIO_TURN_URLS`` grants a relay allocation (a real TURN Allocate, over UDP,
  TCP or TLS) to credentials minted from ``VIO_TURN_SECRET`` the way rooms mint them.
- ``mail``: ``VIO_SMTP_URL``'s relay answers, with the TLS the URL asks for and a certificate
  this machine trusts, and takes the user name and password (no message is sent).

What it prints holds no secret: the database URL appears without its password (the public URL
cannot hold one), a bad secret setting is named without its value, TURN credentials and the
secret never appear, and the SMTP URL is shown without its password.
"""

from __future__ import annotations

import asyncio
import enum
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aioice import stun
from aioice.turn import create_turn_endpoint
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from vio.db import alembic_config, create_engine
from vio.mail import relay as mail_relay
from vio.nodes import connection
from vio.pages.https import is_secure_origin
from vio.settings import Settings, SettingsError, without_password
from vio.turn import turn_credentials

__all__ = [
    "DATABASE_TIMEOUT_SECONDS",
    "PUBLIC_URL_TIMEOUT_SECONDS",
    "TURN_TIMEOUT_SECONDS",
    "Check",
    "Status",
    "TurnTarget",
    "check_database",
    "check_ice",
    "check_mail",
    "check_public_url",
    "check_redis",
    "check_turn",
    "diagnose",
    "report",
    "settings_checks",
    "tls_check",
    "tls_problem",
    "turn_target",
]

DATABASE_TIMEOUT_SECONDS = 5.0
PUBLIC_URL_TIMEOUT_SECONDS = 5.0
# Long enough for aioice's STUN retransmissions (0.5 s, then doubling) to be retried a few times.
TURN_TIMEOUT_SECONDS = 5.0
TURN_PROBE_CREDENTIAL_LIFETIME = timedelta(minutes=5)
TURN_PROBE_USER = "vio-doctor"
TURN_DEFAULT_PORTS = {"turn": 3478, "turns": 5349}
# `openssl rand -hex 32` makes 64; vio's own stored key has 43.
MIN_SECRET_KEY_LENGTH = 32
MEDIA_DOC = "docs/deploy.md#media-ports-nat-and-turn"


class Status(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    PROBLEM = "problem"


@dataclass(frozen=True)
class Check:
    """One finding: its status, the part of the deployment, and one sentence."""

    status: Status
    part: str
    message: str

    @property
    def is_problem(self) -> bool:
        return self.status is Status.PROBLEM

    @property
    def line(self) -> str:
        sentence = " ".join(self.message.split())
        return f"{self.status.value:<8}{self.part}: {sentence}"


def ok(part: str, message: str) -> Check:
    return Check(Status.OK, part, message)


def warning(part: str, message: str) -> Check:
    return Check(Status.WARNING, part, message)


def problem(part: str, message: str) -> Check:
    return Check(Status.PROBLEM, part, message)


def report(checks: list[Check]) -> list[str]:
    """The lines ``vio doctor`` prints: one per check, then a count."""
    problems = sum(check.status is Status.PROBLEM for check in checks)
    warnings = sum(check.status is Status.WARNING for check in checks)
    summary = (f"vio doctor: {problems} problem{'s' * (problems != 1)}, "
               f"{warnings} warning{'s' * (warnings != 1)}")
    return [check.line for check in checks] + [summary]


async def diagnose(environ: Mapping[str, str], now: datetime | None = None) -> list[Check]:
    """Every check against the deployment ``environ`` describes."""
    try:
        # The doctor only looks: it must not make a stored key when VIO_SECRET_KEY is unset.
        keep_key = {} if "VIO_SECRET_KEY" in environ else {"secret_key": "doctor"}
        settings = Settings.from_env(environ, **keep_key)
    except SettingsError as exc:
        return [problem("settings", str(exc))]
    checks = settings_checks(settings, key_from_environment=not keep_key)
    checks.append(tls_check(settings))
    checks.append(await check_database(settings))
    checks.extend(await check_redis(settings))
    checks.append(await check_public_url(settings))
    checks.extend(check_ice(settings))
    checks.extend(await check_turn(settings, now or datetime.now(UTC)))
    checks.append(await check_mail(settings))
    return checks


# --- settings ------------------------------------------------------------------------------

def settings_checks(settings: Settings, *, key_from_environment: bool) -> list[Check]:
    checks = []
    url = settings.public_base_url
    if not is_secure_origin(url):
        checks.append(problem(
            "settings", f"VIO_PUBLIC_BASE_URL={url} is plain http:// on an address other than "
                        "loopback: browsers will give the room page no camera or microphone "
                        "there; use the https:// address people reach vio at"))
    elif url.startswith("http://"):
        checks.append(warning(
            "settings", f"VIO_PUBLIC_BASE_URL={url} is plain HTTP on loopback: only browsers on "
                        "this machine can join"))
    else:
        checks.append(ok("settings", f"every VIO_* setting is valid; public URL {url}"))
    if key_from_environment and len(settings.secret_key) < MIN_SECRET_KEY_LENGTH:
        checks.append(problem(
            "settings", f"VIO_SECRET_KEY has {len(settings.secret_key)} characters: a key that "
                        "short can be guessed, and with it sign-ins and links forged; make one "
                        "with `openssl rand -hex 32`"))
    if not key_from_environment:
        stored = Path(settings.data_dir) / "secret.key"
        checks.append(warning(
            "settings", f"VIO_SECRET_KEY is not set: the key is kept in {stored}"
                        f"{'' if stored.exists() else ' (not made yet)'}; a new key signs "
                        "everyone out and voids every personal link"))
    if not settings.turn_urls:
        checks.append(warning(
            "settings", "VIO_TURN_URLS is empty: a patient whose network blocks UDP cannot "
                        f"connect ({MEDIA_DOC})"))
    return checks


def tls_problem(settings: Settings) -> str | None:
    """Why ``VIO_TLS_CERT_FILE``/``VIO_TLS_KEY_FILE`` cannot serve TLS, or None."""
    if not settings.tls_cert_file:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        return (f"VIO_TLS_CERT_FILE={settings.tls_cert_file} and VIO_TLS_KEY_FILE="
                f"{settings.tls_key_file} are not a PEM certificate and its private key "
                f"({reason})")
    return None


def tls_check(settings: Settings) -> Check:
    if settings.tls_cert_file:
        reason = tls_problem(settings)
        if reason is not None:
            return problem("tls", reason)
        if not settings.public_base_url.startswith("https://"):
            return problem("tls", f"vio serves HTTPS (VIO_TLS_CERT_FILE) but "
                                  f"VIO_PUBLIC_BASE_URL={settings.public_base_url} says http://: "
                                  "its links would not work")
        return ok("tls", f"vio serves TLS itself with {settings.tls_cert_file}")
    if not settings.public_base_url.startswith("https://"):
        return ok("tls", "vio serves plain HTTP")
    if not settings.trusted_proxies:
        return problem(
            "tls", "the public URL is https:// but vio serves plain HTTP, so a proxy in front "
                   "terminates TLS, and VIO_TRUSTED_PROXIES is empty: vio cannot tell that "
                   "requests came over HTTPS (no HSTS) nor whom they came from")
    return ok("tls", "a proxy in front terminates TLS; vio believes X-Forwarded-* from "
                     + ", ".join(settings.trusted_proxies))


# --- database ------------------------------------------------------------------------------

def shown_database(url: str) -> str:
    return without_password(url)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = str(exc).split("\n", 1)[0].strip()
    return text or type(exc).__name__


async def check_database(settings: Settings) -> Check:
    shown = shown_database(settings.database_url)
    path = settings.sqlite_path
    if path is not None and not path.exists():
        return problem("database", f"the SQLite file of {shown} does not exist: run `vio migrate`")
    engine = create_engine(settings.database_url)
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS):
            async with engine.connect() as conn:
                current = await conn.run_sync(
                    lambda sync: MigrationContext.configure(sync).get_current_revision())
    except TimeoutError:
        return problem("database", f"{shown} did not answer within "
                                   f"{DATABASE_TIMEOUT_SECONDS:g} s")
    except (OSError, SQLAlchemyError) as exc:
        return problem("database", f"cannot connect to {shown}: {_one_line(exc)}")
    finally:
        await engine.dispose()
    newest = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if current != newest:
        return problem("database", f"{shown} is at migration {current or '(none)'}, the newest "
                                   f"is {newest}: run `vio migrate`")
    return ok("database", f"{shown} answers and is at the newest migration ({newest})")


# --- Redis ---------------------------------------------------------------------------------

async def check_redis(settings: Settings) -> list[Check]:
    """Redis carries PHI between nodes: TLS off loopback, a password, and it lets vio in."""
    if not settings.redis_url:
        return []
    checks = [problem("redis", found) for found in connection.config_problems(settings)]
    reached = await connection.reach(settings)
    checks.append((ok if reached.ok else problem)("redis", reached.message))
    return checks


# --- public URL ----------------------------------------------------------------------------

def _fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    # No proxy from the environment: the check is about the path browsers take to this host.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=ssl.create_default_context()))
    try:
        with opener.open(url, timeout=PUBLIC_URL_TIMEOUT_SECONDS) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), b""


async def check_public_url(settings: Settings) -> Check:
    url = f"{settings.public_base_url}/healthz"
    try:
        status, headers, body = await asyncio.to_thread(_fetch, url)
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            return problem("public-url", f"{url}: this machine does not trust the certificate "
                                         f"({reason.verify_message})")
        return problem("public-url", f"{url} does not answer ({reason})")
    except (OSError, ValueError) as exc:
        return problem("public-url", f"{url} does not answer ({exc})")
    try:
        healthy = status == 200 and json.loads(body).get("status") == "ok"
    except ValueError:
        healthy = False
    if not healthy:
        return problem("public-url", f"{url} answers HTTP {status}, not vio's health check "
                                     "(is vio running behind the proxy?)")
    if not url.startswith("https://"):
        return ok("public-url", f"{url} answers (plain HTTP)")
    if not any(name.lower() == "strict-transport-security" for name in headers):
        return problem("public-url", f"{url} answers over HTTPS without Strict-Transport-"
                                     "Security: vio does not know the request came over HTTPS "
                                     "(is the proxy's address in VIO_TRUSTED_PROXIES?)")
    return ok("public-url", f"{url} answers over HTTPS, with HSTS")


# --- ICE -----------------------------------------------------------------------------------

def _binds(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def check_ice(settings: Settings) -> list[Check]:
    public = (f"; offered to browsers as {settings.ice_public_address}"
              if settings.ice_public_address else "")
    if not settings.ice_announce_addresses:
        return [ok("ice", f"no VIO_ICE_ANNOUNCE_ADDRESSES: every non-loopback interface is "
                          f"offered{public}")]
    ports = (range(settings.rtc_port_range[0], settings.rtc_port_range[1] + 1)
             if settings.rtc_port_range else None)
    checks = []
    for address in settings.ice_announce_addresses:
        if not _binds(address, 0):
            checks.append(problem("ice", f"{address} (VIO_ICE_ANNOUNCE_ADDRESSES) is not an "
                                         f"address of this machine ({MEDIA_DOC})"))
        elif ports is not None and not any(_binds(address, port) for port in ports):
            checks.append(problem("ice", f"no UDP port of VIO_RTC_PORT_RANGE "
                                         f"{ports.start}-{ports.stop - 1} is free on {address}"))
        else:
            within = f" within {ports.start}-{ports.stop - 1}" if ports is not None else ""
            checks.append(ok("ice", f"media sockets bind on {address}{within}{public}"))
    return checks


# --- TURN ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TurnTarget:
    host: str
    port: int
    transport: str  # "udp" or "tcp"
    tls: bool


def turn_target(url: str) -> TurnTarget:
    """Where a ``turn:``/``turns:`` URL (RFC 7065) points (the URL is already validated)."""
    scheme, _, rest = url.partition(":")
    address, _, query = rest.partition("?")
    transport = urllib.parse.parse_qs(query).get("transport", ["udp"])[0]
    if address.startswith("["):
        host, _, port = address[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = address.partition(":")
    tls = scheme == "turns"
    return TurnTarget(host=host, port=int(port) if port else TURN_DEFAULT_PORTS[scheme],
                      transport="tcp" if tls else transport, tls=tls)


class _Probe(asyncio.DatagramProtocol):
    """The receiving end of the probe's allocation: notes when the allocation is gone."""

    def __init__(self, closed: asyncio.Future[None]) -> None:
        self.closed = closed

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def check_turn_url(url: str, secret: str, now: datetime) -> Check:
    target = turn_target(url)
    username, password = turn_credentials(
        secret, expires_at=now + TURN_PROBE_CREDENTIAL_LIFETIME, user=TURN_PROBE_USER)
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    context = ssl.create_default_context() if target.tls else None
    try:
        async with asyncio.timeout(TURN_TIMEOUT_SECONDS):
            transport, _ = await create_turn_endpoint(
                lambda: _Probe(closed), (target.host, target.port), username, password,
                ssl=context, transport=target.transport)
            transport.close()  # gives the allocation back (a Refresh with lifetime 0)
            await closed
    except TimeoutError:
        return problem("turn", f"{url} did not answer within {TURN_TIMEOUT_SECONDS:g} s (is "
                               f"coturn running, and {target.port}/{target.transport} open?)")
    except stun.TransactionFailed as exc:
        code, reason = exc.response.attributes.get("ERROR-CODE", (0, "error"))
        if code == 401:
            return problem("turn", f"{url} refused the credentials (401 {reason}): "
                                   "VIO_TURN_SECRET is not coturn's static-auth-secret (or "
                                   "the two machines' clocks are minutes apart)")
        return problem("turn", f"{url} refused the allocation ({code} {reason})")
    except stun.TransactionError as exc:
        return problem("turn", f"{url}: {exc}")
    except ssl.SSLCertVerificationError as exc:
        return problem("turn", f"{url}: this machine does not trust the TURN server's "
                               f"certificate ({exc.verify_message})")
    except OSError as exc:  # refused, unreachable, or a reply without a relayed address
        return problem("turn", f"cannot reach {url} ({exc.strerror or exc})")
    return ok("turn", f"{url} granted a relay allocation to credentials from VIO_TURN_SECRET")


async def check_turn(settings: Settings, now: datetime) -> list[Check]:
    return [await check_turn_url(url, settings.turn_secret, now) for url in settings.turn_urls]


# --- mail ----------------------------------------------------------------------------------

async def check_mail(settings: Settings) -> Check:
    """``VIO_SMTP_URL``: the relay answers, secures the connection as the URL says (a
    certificate this machine trusts, or ``VIO_SMTP_CA_FILE``) and takes the user name and
    password; no message is sent. The URL is shown without its password."""
    if not settings.smtp_url:
        return ok("mail", "VIO_SMTP_URL is empty: nothing is emailed (no reminders, "
                          "invitations or changes; docs/deploy.md#email)")
    relay = mail_relay.parse_relay_url(settings.smtp_url)
    found = await mail_relay.probe(relay, within=settings.smtp_timeout_seconds,
                                   ca_file=settings.smtp_ca_file)
    if not found.ok:
        return problem("mail", found.message)
    return ok("mail", f"{found.message}; messages come from {settings.mail_from}")
