"""HTTPS by address: which origins are secure, and HSTS on what was served over HTTPS.

Browsers give a page the camera and microphone only in a secure context: an ``https://``
origin, or a loopback one (``localhost``, ``127.0.0.0/8``, ``[::1]``). :func:`is_secure_origin`
applies that rule to ``VIO_PUBLIC_BASE_URL``; ``vio serve`` refuses any other address unless told
``--insecure-http``, and ``vio doctor`` reports it.

:class:`StrictTransportSecurity` is a pure ASGI middleware, installed when the public URL is
``https://``. It adds ``Strict-Transport-Security`` to every HTTP response whose request came
over HTTPS: straight to ``vio serve`` (``VIO_TLS_CERT_FILE``), or through a proxy in
``VIO_TRUSTED_PROXIES`` that said ``X-Forwarded-Proto: https`` (uvicorn's proxy headers rewrite
the scope's scheme). A browser that has seen it once goes to HTTPS by itself from then on.
Responses over plain HTTP never carry it (RFC 6797, section 7.2).
"""

from __future__ import annotations

import ipaddress
import urllib.parse

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HSTS_MAX_AGE_SECONDS", "StrictTransportSecurity", "is_loopback_host",
           "is_secure_origin"]

# One year: the usual value, and the least that browsers' HSTS preload lists accept.
HSTS_MAX_AGE_SECONDS = 365 * 24 * 3600


def is_loopback_host(host: str) -> bool:
    """``localhost`` (and names under it), or an address in ``127.0.0.0/8`` or ``::1``."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_secure_origin(url: str) -> bool:
    """Whether a browser treats a page at ``url`` as a secure context (camera allowed)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and is_loopback_host(parts.hostname or "")


class StrictTransportSecurity:
    """Adds ``Strict-Transport-Security`` to HTTP responses sent over HTTPS."""

    def __init__(self, app: ASGIApp, max_age: int = HSTS_MAX_AGE_SECONDS) -> None:
        self.app = app
        self.header = (b"strict-transport-security", f"max-age={max_age}".encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", [])
                           if name.lower() != self.header[0]]
                message = {**message, "headers": [*headers, self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)
