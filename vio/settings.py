"""Settings: one frozen object read from ``VIO_*`` environment variables.

Every setting is declared once in ``SETTINGS`` with its variable, default, parser and a sentence
for the README table (``tests/test_docs.py`` keeps the two in step). A bad value raises
``SettingsError`` naming the variable, and start-up stops there. The message never holds a
secret: a secret setting is named without its value, and a URL is shown without its password.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import secrets
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from vio.keys import InstallKeys


class SettingsError(ValueError):
    """A setting has a value vio cannot use; the message names the variable."""


def without_password(url: str) -> str:
    """``url`` with its password replaced by ``***``: the one of ``scheme://user:password@``
    (up to the last ``@``, so a password holding ``@``, ``/`` or spaces goes too) and a
    ``password=`` query parameter (as asyncpg and redis read them)."""
    url = re.sub(r"([?&]password=)[^&]*", r"\1***", url, flags=re.IGNORECASE)
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def _int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _seconds(raw: str) -> float:
    value = float(raw.strip())
    if not 0 < value <= 3600:
        raise ValueError("must be a number of seconds above 0 and at most 3600")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


def parse_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _minutes_list(raw: str) -> tuple[int, ...]:
    values = tuple(sorted({int(item) for item in parse_list(raw)}, reverse=True))
    if any(v <= 0 for v in values):
        raise ValueError("must be positive whole minutes, comma-separated")
    return values


def _timezone(raw: str) -> str:
    try:
        ZoneInfo(raw.strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("must be an IANA time zone such as America/Chicago") from exc
    return raw.strip()


def _database_url(raw: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = raw.strip()
    if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    try:
        make_url(url)
    except (ArgumentError, ValueError):  # their messages repeat the URL, password and all
        raise ValueError("is not a database URL such as "
                         "postgresql+asyncpg://USER:PASSWORD@HOST:5432/DATABASE") from None
    return url


def _url(raw: str) -> str:
    url = raw.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    if "@" in urllib.parse.urlsplit(url).netloc:
        raise ValueError("must hold no user name or password: people open it in their browser")
    return url


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _ice_servers(raw: str) -> tuple[str, ...]:
    servers = parse_list(raw)
    for server in servers:
        if not server.startswith(("stun:", "turn:", "turns:")):
            raise ValueError("each entry must be a stun:, turn: or turns: URL")
    return servers


def _ip_address(raw: str) -> str:
    value = raw.strip()
    if not value:
        return ""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ValueError("must be an IP address such as 203.0.113.10") from exc


def _port_range(raw: str) -> tuple[int, ...]:
    if not raw.strip():
        return ()
    first, sep, last = raw.strip().partition("-")
    try:
        low, high = int(first), int(last)
    except ValueError:
        low = high = -1
    if not sep or not 1024 <= low <= high <= 65535:
        raise ValueError("must be FIRST-LAST UDP ports between 1024 and 65535, e.g. 50000-50999")
    return (low, high)


def _turn_urls(raw: str) -> tuple[str, ...]:
    from vio.turn import check_turn_urls

    return check_turn_urls(parse_list(raw))


def _pem_file(raw: str) -> str:
    path = raw.strip()
    if path and not Path(path).is_file():
        raise ValueError("no such file")
    return path


def _redis_url(raw: str) -> str:
    url = raw.strip()
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with rediss:// (TLS), redis:// or unix://")
    return url


def _smtp_url(raw: str) -> str:
    from vio.mail.relay import parse_relay_url

    url = raw.strip()
    if url:
        parse_relay_url(url)
    return url


def _mail_address(raw: str) -> str:
    from vio.mail.compose import checked_address

    return checked_address(raw) if raw.strip() else ""


def _display_name(raw: str) -> str:
    from vio.mail.compose import checked_display_name

    return checked_display_name(raw)


def _networks(raw: str) -> tuple[str, ...]:
    networks = []
    for item in parse_list(raw):
        try:
            networks.append(str(ipaddress.ip_network(item)) if "/" in item
                            else str(ipaddress.ip_address(item)))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an IP address or network such as "
                             "127.0.0.1 or 10.0.0.0/24") from exc
    return tuple(networks)


def _absolute_dir(raw: str) -> str:
    path = raw.strip()
    if not path or not Path(path).is_absolute():
        raise ValueError("must be an absolute path such as /var/lib/vio")
    return str(Path(path))


def default_data_dir(environ: Mapping[str, str]) -> str:
    """``$XDG_DATA_HOME/vio``, else ``~/.local/share/vio``: the same whatever the working
    directory."""
    base = environ.get("XDG_DATA_HOME", "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local/share"
    return str(root / "vio")


def setting(env: str, default: Any, parse: Callable[[str], Any], doc: str, *,
            secret: bool = False) -> Any:
    """One setting. A ``secret`` one is left out of the settings' repr and of error messages."""
    return field(default=default, repr=not secret,
                 metadata={"env": env, "parse": parse, "doc": doc, "secret": secret})


def _bad_value(name: str, raw: str, problem: ValueError, secret: bool) -> SettingsError:
    """The error for a value ``raw`` of ``name`` that cannot be used, holding no secret."""
    if secret and raw.strip():
        return SettingsError(f"{name} (its value is not shown): {problem}")
    return SettingsError(f"{name}={without_password(raw)!r}: {problem}")


@dataclass(frozen=True)
class Settings:
    data_dir: str = setting(
        "VIO_DATA_DIR", "", _absolute_dir,
        "Absolute path of the folder that holds the embedded database and the stored key "
        "(created mode 0700). Empty: `$XDG_DATA_HOME/vio`, else `~/.local/share/vio`.")
    database_url: str = setting(
        "VIO_DATABASE_URL", "", _database_url,
        "Database. Empty: the embedded SQLite file `vio.sqlite3` in `VIO_DATA_DIR`; "
        "`postgresql+asyncpg://…` for PostgreSQL.")
    secret_key: str = setting(
        "VIO_SECRET_KEY", "", _text,
        "Key that signs cookies and links. Unset: a random key kept in `VIO_DATA_DIR/secret.key` "
        "(mode 0600).", secret=True)
    public_base_url: str = setting(
        "VIO_PUBLIC_BASE_URL", "http://127.0.0.1:8000", _url,
        "Address people use to reach vio; links in invites and demo output start with it.")
    timezone: str = setting(
        "VIO_TIMEZONE", "America/Chicago", _timezone,
        "Default time zone for new programs and schedules.")
    join_early_minutes: int = setting(
        "VIO_JOIN_EARLY_MINUTES", 15, _int(0, 240),
        "How many minutes before the scheduled start a session's room opens.")
    reconnect_grace_seconds: int = setting(
        "VIO_RECONNECT_GRACE_SECONDS", 60, _int(0, 3600),
        "A dropped participant who rejoins within this time skips the waiting room.")
    warning_minutes: tuple[int, ...] = setting(
        "VIO_WARNING_MINUTES", (10, 2), _minutes_list,
        "Minutes before the end at which everyone in the room is warned.")
    max_extend_minutes: int = setting(
        "VIO_MAX_EXTEND_MINUTES", 30, _int(1, 240),
        "Most minutes a therapist may add to a session's end in one step.")
    room_capacity: int = setting(
        "VIO_ROOM_CAPACITY", 16, _int(2, 100), "Most participants in one room.")
    ice_servers: tuple[str, ...] = setting(
        "VIO_ICE_SERVERS", (), _ice_servers,
        "STUN/TURN servers offered to browsers and used by the server, comma-separated. "
        "None by default.")
    ice_announce_addresses: tuple[str, ...] = setting(
        "VIO_ICE_ANNOUNCE_ADDRESSES", (), parse_list,
        "Local addresses the media server binds and offers as ICE host candidates (e.g. "
        "`127.0.0.1`). Empty: every non-loopback interface. Behind 1:1 NAT see "
        "`VIO_ICE_PUBLIC_ADDRESS`.")
    ice_public_address: str = setting(
        "VIO_ICE_PUBLIC_ADDRESS", "", _ip_address,
        "Public address of a server behind 1:1 NAT (a cloud VM): media sockets stay bound to "
        "the private address, and the offer's host candidates show this one instead.")
    ice_keep_private_address: bool = setting(
        "VIO_ICE_KEEP_PRIVATE_ADDRESS", False, _bool,
        "With `VIO_ICE_PUBLIC_ADDRESS`, offer the private address as well (for clients on the "
        "same private network).")
    rtc_port_range: tuple[int, ...] = setting(
        "VIO_RTC_PORT_RANGE", (), _port_range,
        "UDP ports the media server binds, `FIRST-LAST` (e.g. `50000-50999`); one port per "
        "participant and announced address. When all are in use a new participant is refused "
        "with `media-unavailable`. Empty: any port.")
    turn_urls: tuple[str, ...] = setting(
        "VIO_TURN_URLS", (), _turn_urls,
        "coturn URLs handed to browsers with per-ticket credentials, comma-separated (e.g. "
        "`turn:turn.example.org:3478?transport=udp,turns:turn.example.org:443?transport=tcp`).")
    turn_secret: str = setting(
        "VIO_TURN_SECRET", "", _text,
        "Shared secret with coturn (`static-auth-secret`), which mints the TURN "
        "credentials; needed with `VIO_TURN_URLS`.", secret=True)
    turn_credential_margin_minutes: int = setting(
        "VIO_TURN_CREDENTIAL_MARGIN_MINUTES", 60, _int(1, 1440),
        "TURN credentials stay valid this long past the session's scheduled end (covers "
        "extensions and late reconnects).")
    publish_width: int = setting(
        "VIO_PUBLISH_WIDTH", 640, _int(160, 1920), "Widest video a client may publish.")
    publish_height: int = setting(
        "VIO_PUBLISH_HEIGHT", 360, _int(120, 1080), "Tallest video a client may publish.")
    publish_fps: int = setting(
        "VIO_PUBLISH_FPS", 15, _int(1, 60), "Highest frame rate a client may publish.")
    publish_max_kbps: int = setting(
        "VIO_PUBLISH_MAX_KBPS", 300, _int(50, 5000), "Video bitrate cap for publishers.")
    max_video_forwarded: int = setting(
        "VIO_MAX_VIDEO_FORWARDED", 6, _int(1, 50),
        "Videos forwarded to each receiver besides the therapists': the latest speakers.")
    idle_logoff_minutes: int = setting(
        "VIO_IDLE_LOGOFF_MINUTES", 30, _int(1, 1440),
        "Staff, patients and family members are signed out after this many minutes without a "
        "request; a connection to a live room counts as activity. Staff pages warn first.")
    sign_in_max_hours: int = setting(
        "VIO_SIGN_IN_MAX_HOURS", 12, _int(1, 336),
        "A sign-in ends this many hours after it began, however active.")
    second_factor_timeout_seconds: int = setting(
        "VIO_SECOND_FACTOR_TIMEOUT_SECONDS", 300, _int(30, 3600),
        "Time to enter the authenticator code after the password at staff sign-in.")
    max_form_bytes: int = setting(
        "VIO_MAX_FORM_BYTES", 65536, _int(1024, 1 << 20),
        "Largest form a browser may post; a larger one is refused (413) unread.")
    demo: bool = setting(
        "VIO_DEMO", False, _bool,
        "The server holds the demo program: its home page shows the demo's sign-in details "
        "(`vio serve --demo`).")
    login_max_failures: int = setting(
        "VIO_LOGIN_MAX_FAILURES", 5, _int(1, 100),
        "Sign-in tries from one address and email (checked and counted in the database, "
        "so across processes) before further tries are refused; a success resets the count.")
    login_window_seconds: int = setting(
        "VIO_LOGIN_WINDOW_SECONDS", 300, _int(1, 86400),
        "Window over which failed sign-ins are counted.")
    login_failure_delay_ms: int = setting(
        "VIO_LOGIN_FAILURE_DELAY_MS", 300, _int(0, 10000),
        "Pause before answering a failed sign-in.")
    ws_max_message_bytes: int = setting(
        "VIO_WS_MAX_MESSAGE_BYTES", 65536, _int(1024, 1 << 20),
        "Largest signaling message a client may send.")
    @property
    def ws_frame_cap_bytes(self) -> int:
        """Frames above the message limit get ``message-too-large`` up to this; above, 1009."""
        return 4 * self.ws_max_message_bytes

    ws_send_buffer_bytes: int = setting(
        "VIO_WS_SEND_BUFFER_BYTES", 131072, _int(4096, 16 << 20),
        "Kernel send buffer of each client connection: how much a client that stops reading "
        "can hold before the send deadline drops it.")
    ws_send_queue: int = setting(
        "VIO_WS_SEND_QUEUE", 64, _int(4, 10000),
        "Messages queued for one client before it is dropped as too slow.")
    ws_send_timeout_seconds: float = setting(
        "VIO_WS_SEND_TIMEOUT_SECONDS", 5.0, _seconds,
        "A send that takes longer than this drops the client.")
    ws_idle_timeout_seconds: float = setting(
        "VIO_WS_IDLE_TIMEOUT_SECONDS", 45.0, _seconds,
        "A client silent for this long (no message, no ping) is dropped.")
    join_timeout_seconds: float = setting(
        "VIO_JOIN_TIMEOUT_SECONDS", 10.0, _seconds,
        "A new signaling connection must send `join` within this time.")
    room_tick_seconds: float = setting(
        "VIO_ROOM_TICK_SECONDS", 1.0, _seconds,
        "How often a room checks its clock for warnings and the end.")
    attendance_heartbeat_seconds: float = setting(
        "VIO_ATTENDANCE_HEARTBEAT_SECONDS", 15.0, _seconds,
        "How often a live room records who is present; after a crash, open attendance "
        "intervals close at the last such record.")
    redis_url: str = setting(
        "VIO_REDIS_URL", "", _redis_url,
        "Redis for several node processes (`rediss://host:6380/0` with TLS; `redis://` only on "
        "loopback): room leases, placement, relayed connections, events. Empty: one process, "
        "no Redis.")
    redis_username: str = setting(
        "VIO_REDIS_USERNAME", "", str.strip,
        "Redis ACL user the nodes sign in as, with `VIO_REDIS_PASSWORD`. Empty: the user in "
        "`VIO_REDIS_URL`, else Redis's `default`.")
    redis_password: str = setting(
        "VIO_REDIS_PASSWORD", "", str.strip,
        "Password of `VIO_REDIS_USERNAME` (Redis ACL). Empty: the password in `VIO_REDIS_URL`, "
        "if any.", secret=True)
    redis_ca_file: str = setting(
        "VIO_REDIS_CA_FILE", "", _pem_file,
        "PEM certificate(s) of the CA that signed the Redis server's certificate, for "
        "`rediss://`. Empty: the system's trusted CAs.")
    redis_prefix: str = setting(
        "VIO_REDIS_PREFIX", "vio", str, "Prefix of every Redis key and channel vio uses.")
    redis_timeout_seconds: float = setting(
        "VIO_REDIS_TIMEOUT_SECONDS", 2.0, _seconds,
        "A Redis call that takes longer than this fails (the rooms go on without it).")
    room_lease_seconds: float = setting(
        "VIO_ROOM_LEASE_SECONDS", 10.0, _seconds,
        "A room whose node stops renewing its lease for this long is opened on another node.")
    node_heartbeat_seconds: float = setting(
        "VIO_NODE_HEARTBEAT_SECONDS", 2.0, _seconds,
        "How often a node renews its leases and reports its load; a node and its leases "
        "lapse together, `VIO_ROOM_LEASE_SECONDS` after its last report.")
    cluster_message_max_age_seconds: float = setting(
        "VIO_CLUSTER_MESSAGE_MAX_AGE_SECONDS", 30.0, _seconds,
        "A message between nodes dated further than this from the receiver's clock (either "
        "way) is dropped as stale; keep the nodes' clocks in step (NTP).")
    room_recheck_seconds: float = setting(
        "VIO_ROOM_RECHECK_SECONDS", 15.0, _seconds,
        "How often each live room re-checks its people's sign-ins and consents against the "
        "database, and removes whoever lost their place (e.g. an account turned off with "
        "`vio staff deactivate`).")
    worker_restart_seconds: float = setting(
        "VIO_WORKER_RESTART_SECONDS", 1.0, _seconds,
        "`vio serve --workers`: a worker that dies is started again after this long, doubled "
        "after each death that follows a short run.")
    worker_restart_max_seconds: float = setting(
        "VIO_WORKER_RESTART_MAX_SECONDS", 30.0, _seconds,
        "Longest wait before a dead worker is started again; a worker that ran this long "
        "starts its next wait from `VIO_WORKER_RESTART_SECONDS`.")
    smtp_url: str = setting(
        "VIO_SMTP_URL", "", _smtp_url,
        "The clinic's SMTP relay for reminders and invites: "
        "`smtp+starttls://USER:PASSWORD@HOST:587`, `smtps://USER:PASSWORD@HOST:465`, or "
        "`smtp://127.0.0.1:25` for a relay on this machine (plain `smtp://` only on loopback); "
        "a secret. Empty: no email is sent.", secret=True)
    smtp_ca_file: str = setting(
        "VIO_SMTP_CA_FILE", "", _pem_file,
        "PEM certificate(s) of the CA that signed the relay's certificate. Empty: the "
        "system's trusted CAs.")
    smtp_timeout_seconds: float = setting(
        "VIO_SMTP_TIMEOUT_SECONDS", 30.0, _seconds,
        "A send to the relay (connect, TLS, sign-in, message) that takes longer than this "
        "fails, and the message is tried again later.")
    mail_from: str = setting(
        "VIO_MAIL_FROM", "", _mail_address,
        "The From address of every message (e.g. `appointments@clinic.example.org`); needed "
        "with `VIO_SMTP_URL`. SPF and DKIM for its domain are the relay's job.")
    mail_display_name: str = setting(
        "VIO_MAIL_DISPLAY_NAME", "Appointments", _display_name,
        "The program's neutral name in every message: sender, subject, text and calendar "
        "entry. It must not name the type of care.")
    mail_reminder_minutes: tuple[int, ...] = setting(
        "VIO_MAIL_REMINDER_MINUTES", (1440, 60), _minutes_list,
        "Minutes before a session's start at which each patient who agreed to email is "
        "reminded; a \"your room is open\" message follows when the room opens.")
    mail_poll_seconds: float = setting(
        "VIO_MAIL_POLL_SECONDS", 10.0, _seconds,
        "How often the sender looks for reminders falling due and messages waiting to go "
        "(an invite or a change goes at once).")
    mail_claim_seconds: float = setting(
        "VIO_MAIL_CLAIM_SECONDS", 120.0, _seconds,
        "A message a node took for sending and did not finish (it died) is taken again after "
        "this long, with the same Message-ID; at least twice `VIO_SMTP_TIMEOUT_SECONDS`.")
    mail_retry_seconds: float = setting(
        "VIO_MAIL_RETRY_SECONDS", 60.0, _seconds,
        "Wait before trying again a message the relay did not take (unreachable, or a 4xx "
        "reply); doubled after each further try.")
    mail_retry_max_seconds: float = setting(
        "VIO_MAIL_RETRY_MAX_SECONDS", 3600.0, _seconds,
        "Longest wait between two tries of one message.")
    mail_max_attempts: int = setting(
        "VIO_MAIL_MAX_ATTEMPTS", 12, _int(1, 100),
        "Tries of one message before it is marked failed (a reminder is withdrawn sooner, "
        "when its session begins).")
    mail_link_days: int = setting(
        "VIO_MAIL_LINK_DAYS", 30, _int(1, 365),
        "A message's unsubscribe and \"I can't make it\" links work this many days after it "
        "was sent (\"I can't make it\" never after its session has ended).")
    outreach_lookback_days: int = setting(
        "VIO_OUTREACH_LOOKBACK_DAYS", 28, _int(7, 366),
        "How far back the dashboard's outreach list looks for unexcused absences in a row.")
    cookie_secure: bool = setting(
        "VIO_COOKIE_SECURE", False, _bool,
        "Send cookies only over HTTPS. Always so when `VIO_PUBLIC_BASE_URL` is `https://…`.")
    tls_cert_file: str = setting(
        "VIO_TLS_CERT_FILE", "", _pem_file,
        "PEM certificate (with its chain) for `vio serve` to terminate TLS itself, with "
        "`VIO_TLS_KEY_FILE`. Empty: plain HTTP, for a proxy in front (Caddy).")
    tls_key_file: str = setting(
        "VIO_TLS_KEY_FILE", "", _pem_file, "PEM private key of `VIO_TLS_CERT_FILE`.")
    trusted_proxies: tuple[str, ...] = setting(
        "VIO_TRUSTED_PROXIES", ("127.0.0.1", "::1"), _networks,
        "Addresses or networks (comma-separated) of the reverse proxies whose "
        "`X-Forwarded-For`/`-Proto` vio believes; from any other peer they are ignored.")

    @property
    def cookies_secure(self) -> bool:
        """Cookies carry ``Secure``: asked for, or implied by an ``https://`` public URL."""
        return self.cookie_secure or self.public_base_url.startswith("https://")

    @property
    def keys(self) -> InstallKeys:
        """The keys derived from ``secret_key`` (the audit seal, secrets at rest)."""
        return InstallKeys.derive(self.secret_key)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every setting from ``environ`` (default ``os.environ``), then apply overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if name in env:
                try:
                    values[f.name] = f.metadata["parse"](env[name])
                except ValueError as exc:
                    raise _bad_value(name, env[name], exc, f.metadata["secret"]) from None
        values.update(overrides)
        settings = cls(**values)
        if settings.turn_urls and not settings.turn_secret:
            raise SettingsError("VIO_TURN_URLS is set but VIO_TURN_SECRET is not: "
                                "TURN credentials are minted with that secret")
        if settings.room_lease_seconds < 2 * settings.node_heartbeat_seconds:
            raise SettingsError("VIO_ROOM_LEASE_SECONDS must be at least twice "
                                "VIO_NODE_HEARTBEAT_SECONDS: a lease outlives a missed renewal")
        if settings.smtp_url and not settings.mail_from:
            raise SettingsError("VIO_SMTP_URL is set but VIO_MAIL_FROM is not: every message "
                                "needs a From address")
        if settings.mail_claim_seconds < 2 * settings.smtp_timeout_seconds:
            raise SettingsError("VIO_MAIL_CLAIM_SECONDS must be at least twice "
                                "VIO_SMTP_TIMEOUT_SECONDS: a send outlives its claim otherwise")
        if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
            raise SettingsError("VIO_TLS_CERT_FILE and VIO_TLS_KEY_FILE go together: "
                                "set both, or neither")
        if not settings.data_dir:
            settings = dataclasses.replace(settings, data_dir=default_data_dir(env))
        if not settings.database_url:
            settings = dataclasses.replace(
                settings,
                database_url=f"sqlite+aiosqlite:///{Path(settings.data_dir) / 'vio.sqlite3'}")
        if not settings.secret_key:
            settings = dataclasses.replace(
                settings, secret_key=_stored_secret_key(Path(settings.data_dir) / "secret.key"))
        return settings

    @property
    def sqlite_path(self) -> Path | None:
        prefix = "sqlite+aiosqlite:///"
        if self.database_url.startswith(prefix):
            return Path(self.database_url[len(prefix):])
        return None


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) rows for the README."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default)
        rows.append((f.metadata["env"], str(default), f.metadata["doc"]))
    return rows


def _stored_secret_key(path: Path) -> str:
    """The key kept at ``path``, made (mode 0600, never readable by others) on first use."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key)
    return key
