"""Reaching Redis as a component that carries PHI: TLS, an ACL user and password, and a plain
sentence for whatever is wrong.

Redis carries chat, safety cards, rosters and SDP with patients' addresses between nodes, so a
deployment runs one Redis per install on a private network, with TLS (``rediss://`` and
``VIO_REDIS_CA_FILE``) and an ACL user (``VIO_REDIS_USERNAME``/``VIO_REDIS_PASSWORD``).
``redis_client`` is the only place a client is made. ``config_problems`` says what the settings
leave open (read by ``vio doctor``); ``reach`` signs in and touches a key under the prefix, and
says why that failed (``vio doctor`` and ``vio serve`` at start-up).
"""

from __future__ import annotations

import ipaddress
import secrets
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError

from vio.settings import Settings, without_password


def redis_client(settings: Settings) -> aioredis.Redis:
    """A client as the settings describe it (TLS verified against ``VIO_REDIS_CA_FILE``)."""
    options: dict[str, Any] = {"socket_timeout": settings.redis_timeout_seconds,
                               "socket_connect_timeout": settings.redis_timeout_seconds}
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password:
        options["password"] = settings.redis_password
    if settings.redis_url.startswith("rediss://") and settings.redis_ca_file:
        options["ssl_ca_certs"] = settings.redis_ca_file
    return aioredis.Redis.from_url(settings.redis_url, **options)


def shown_redis(settings: Settings) -> str:
    return without_password(settings.redis_url)


def _loopback(host: str | None) -> bool:
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_problems(settings: Settings) -> list[str]:
    """What the Redis settings leave open: plain text off this machine, no password."""
    if not settings.redis_url:
        return []
    parts = urllib.parse.urlsplit(settings.redis_url)
    problems = []
    if parts.scheme == "redis" and not _loopback(parts.hostname):
        problems.append(
            f"VIO_REDIS_URL={shown_redis(settings)} is plain redis:// to another machine: "
            "Redis carries PHI between nodes (chat, safety cards, rosters); use rediss:// "
            "with VIO_REDIS_CA_FILE (docs/scaling.md)")
    if not (settings.redis_password or parts.password):
        problems.append(
            f"Redis at {shown_redis(settings)} is used without a password: anyone who reaches "
            "it can read what the nodes exchange; give vio an ACL user (VIO_REDIS_USERNAME, "
            "VIO_REDIS_PASSWORD)")
    return problems


@dataclass(frozen=True)
class Reached:
    """How reaching Redis went: ``ok``, or why not, and whether it is the settings' fault
    (``refused``: a wrong password, an untrusted certificate, a user without the rights)."""

    ok: bool
    refused: bool
    message: str


def _tls_reason(error: BaseException) -> str | None:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"this machine does not trust its certificate ({cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            return f"the TLS handshake failed ({cause.reason or cause})"
        cause = cause.__cause__ or cause.__context__
    return None


async def reach(settings: Settings) -> Reached:
    """Sign in to Redis and set, read and delete a key under the prefix."""
    shown = shown_redis(settings)
    client = redis_client(settings)
    key = f"{settings.redis_prefix}:reach:{secrets.token_hex(4)}"
    try:
        await client.set(key, "1", px=5000)
        await client.get(key)
        await client.delete(key)
    except AuthenticationError:
        return Reached(False, True, f"Redis at {shown} refused the user name or password "
                                    "(VIO_REDIS_USERNAME, VIO_REDIS_PASSWORD)")
    except NoPermissionError as error:
        return Reached(False, True, f"the Redis user may not use vio's keys under "
                                    f"{settings.redis_prefix}: ({_first_line(error)}); see the "
                                    "ACL in docs/scaling.md")
    except ResponseError as error:
        if "NOAUTH" in str(error) or "WRONGPASS" in str(error):
            return Reached(False, True, f"Redis at {shown} wants a user name and password "
                                        "(VIO_REDIS_USERNAME, VIO_REDIS_PASSWORD)")
        return Reached(False, False, f"Redis at {shown} answered: {_first_line(error)}")
    except (RedisError, OSError) as error:
        tls = _tls_reason(error)
        if tls is not None:
            return Reached(False, True, f"cannot reach Redis at {shown}: {tls} "
                                        "(VIO_REDIS_CA_FILE)")
        return Reached(False, False, f"cannot reach Redis at {shown} ({_first_line(error)})")
    finally:
        await client.aclose()
    tls = "over TLS" if settings.redis_url.startswith("rediss://") else "without TLS"
    return Reached(True, False, f"Redis at {shown} answers {tls} and lets vio use its keys")


def _first_line(error: BaseException) -> str:
    return (str(error).split("\n", 1)[0].strip() or type(error).__name__)[:200]
