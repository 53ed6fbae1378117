"""Settings: one frozen object read from ``VIO_*`` environment variables.

Every setting is declared once in ``SETTINGS`` with its variable, default, parser and a sentence
for the README table (``tests/test_docs.py`` keeps the two in step). A bad value raises
``SettingsError`` naming the variable, and start-up stops there.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class SettingsError(ValueError):
    """A setting has a value vio cannot use; the message names the variable."""


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
    url = raw.strip()
    if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    return url


def _url(raw: str) -> str:
    url = raw.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
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


def setting(env: str, default: Any, parse: Callable[[str], Any], doc: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    database_url: str = setting(
        "VIO_DATABASE_URL", "sqlite+aiosqlite:///var/vio.sqlite3", _database_url,
        "Database. The embedded SQLite file by default; `postgresql+asyncpg://…` for PostgreSQL.")
    secret_key: str = setting(
        "VIO_SECRET_KEY", "", _text,
        "Key that signs cookies and links. Unset: a random key kept in `var/secret.key`.")
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
        "Host addresses the media server offers as ICE candidates (e.g. `127.0.0.1`, or a "
        "public address behind NAT). Empty: every non-loopback interface.")
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
        "Staff are signed out after this many minutes without a request.")
    login_max_failures: int = setting(
        "VIO_LOGIN_MAX_FAILURES", 5, _int(1, 100),
        "Failed sign-ins from one address and email before further tries are refused.")
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
    cookie_secure: bool = setting(
        "VIO_COOKIE_SECURE", False, _bool, "Send cookies only over HTTPS.")

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
                    raise SettingsError(f"{name}={env[name]!r}: {exc}") from None
        values.update(overrides)
        settings = cls(**values)
        if not settings.secret_key:
            settings = dataclasses.replace(settings, secret_key=_stored_secret_key())
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


def _stored_secret_key(path: Path = Path("var/secret.key")) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    path.write_text(key)
    path.chmod(0o600)
    return key
