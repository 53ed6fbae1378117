"""TURN credentials in coturn's shared-secret scheme, and the ICE servers handed to browsers.

coturn's ``use-auth-secret`` mode (the "TURN REST API", draft-uberti-behave-turn-rest) needs no
user database: vio and coturn share one secret, and for each room ticket vio mints

* username ``"<expiry>:<user>"``, ``expiry`` the Unix time after which coturn refuses it, and
* password ``base64(HMAC-SHA1(secret, username))``.

``user`` (:func:`turn_user`) is an opaque id derived from the ticket, so a relay allocation in
coturn's log can be tied to a ticket; it is never a name, an email or a patient id. The
credentials are secrets: nothing here logs them.

:func:`room_ice_servers` builds the ``iceServers`` of a room page's configuration from the
settings (:func:`browser_ice_servers` from explicit values); :func:`check_turn_urls` validates
``VIO_TURN_URLS``. Everything here is pure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from vio.settings import Settings

__all__ = [
    "IceServer",
    "browser_ice_servers",
    "check_turn_urls",
    "credentials_expiry",
    "room_ice_servers",
    "turn_credentials",
    "turn_user",
]

_OPAQUE_USER = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TURN_URL = re.compile(
    r"(?P<scheme>turns?):(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?"
)


class IceServer(TypedDict, total=False):
    """One entry of a browser's ``RTCConfiguration.iceServers``."""

    urls: list[str]
    username: str
    credential: str


def turn_credentials(secret: str, *, expires_at: datetime, user: str) -> tuple[str, str]:
    """``(username, password)`` for coturn with ``static-auth-secret=secret``, until ``expires_at``.

    ``expires_at`` must be timezone-aware; ``user`` is an opaque id of letters, digits, ``-``
    and ``_`` (at most 64), never a person's name or record id. Raises ``ValueError`` for an
    empty secret, a naive ``expires_at`` or a ``user`` of any other shape.
    """
    if not secret:
        raise ValueError("the TURN secret is empty")
    if expires_at.tzinfo is None or expires_at.utcoffset() is None:
        raise ValueError("expires_at must be timezone-aware")
    if not _OPAQUE_USER.fullmatch(user):
        raise ValueError("user must be an opaque id: 1-64 letters, digits, '-' or '_'")
    username = f"{int(expires_at.timestamp())}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def turn_user(ticket: str) -> str:
    """The opaque TURN user id for a room ticket: a digest of it, naming no one.

    The same ticket always gives the same id, so a relay allocation in coturn's log can be
    matched to a ticket by whoever holds the ticket, and by no one else.
    """
    digest = hashlib.sha256(b"vio turn user\0" + ticket.encode()).digest()
    return base64.urlsafe_b64encode(digest[:12]).decode("ascii")


def credentials_expiry(username: str) -> int:
    """The Unix time encoded in a username from :func:`turn_credentials`."""
    expiry, sep, _ = username.partition(":")
    if not sep or not expiry.isdigit():
        raise ValueError("not a shared-secret TURN username")
    return int(expiry)


def check_turn_urls(urls: Sequence[str]) -> tuple[str, ...]:
    """Validate ``turn:host[:port][?transport=udp|tcp]`` / ``turns:…`` URLs; return them stripped.

    Credentials do not belong in these URLs (they are minted per ticket); raises ``ValueError``
    naming the first URL that is not of that form.
    """
    checked = []
    for url in urls:
        url = url.strip()
        match = _TURN_URL.fullmatch(url)
        if match is None:
            raise ValueError(
                f"{url!r} is not turn:host[:port][?transport=udp|tcp] or turns:host[:port]…"
            )
        port = match.group("port")
        if port is not None and not 0 < int(port) < 65536:
            raise ValueError(f"{url!r} has a port outside 1-65535")
        checked.append(url)
    return tuple(checked)


def browser_ice_servers(
    *,
    turn_urls: Sequence[str],
    turn_secret: str,
    other_urls: Sequence[str] = (),
    expires_at: datetime,
    user: str,
) -> list[IceServer]:
    """The ``iceServers`` for one room ticket.

    One entry with every TURN URL and credentials minted for ``user`` until ``expires_at``
    (when both URLs and a secret are set), then one entry per URL of ``other_urls`` as
    configured (plain STUN, or TURN with static credentials in the URL). Empty when nothing is
    configured: browsers are never given a public STUN server by default.
    """
    servers: list[IceServer] = []
    if turn_urls and turn_secret:
        username, credential = turn_credentials(turn_secret, expires_at=expires_at, user=user)
        servers.append(
            IceServer(urls=list(turn_urls), username=username, credential=credential)
        )
    servers.extend(_static_server(url) for url in other_urls)
    return servers


def room_ice_servers(settings: Settings, *, session_end: datetime, user: str) -> list[IceServer]:
    """The ``iceServers`` for one room ticket of a session that ends at ``session_end``.

    TURN credentials (``VIO_TURN_URLS``, ``VIO_TURN_SECRET``) stay valid until
    ``session_end`` plus ``VIO_TURN_CREDENTIAL_MARGIN_MINUTES``; ``VIO_ICE_SERVERS`` follow.
    """
    return browser_ice_servers(
        turn_urls=settings.turn_urls,
        turn_secret=settings.turn_secret,
        other_urls=settings.ice_servers,
        expires_at=session_end + timedelta(minutes=settings.turn_credential_margin_minutes),
        user=user,
    )


def _static_server(url: str) -> IceServer:
    scheme, _, rest = url.partition(":")
    if "@" in rest and scheme in ("turn", "turns"):
        userinfo, _, rest = rest.rpartition("@")
        username, _, credential = userinfo.partition(":")
        return IceServer(urls=[f"{scheme}:{rest}"], username=username, credential=credential)
    return IceServer(urls=[url])
