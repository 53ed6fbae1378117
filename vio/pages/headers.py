"""Request and response headers every page gets: the Host is checked, security headers are set.

Two pure ASGI middlewares:

- ``HostCheck`` refuses (400, or a refused WebSocket handshake) a request whose ``Host`` names
  another host than ``VIO_PUBLIC_BASE_URL``; the refusal never repeats the header. Pages never
  build a link from the Host either: links come from the setting, and static paths are
  site-relative. ``/healthz`` answers any host, for load balancers that ask by address.
- ``SecurityHeaders`` adds to every HTTP response: a Content-Security-Policy without inline
  script (``script-src 'self'``; page code lives in ``web/static/js``) that no other site may
  frame (``frame-ancestors 'none'``), ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer`` (links carry tokens), a ``Permissions-Policy`` that allows
  camera and microphone to the room pages and the family invite pages only, and
  ``Cache-Control: no-store`` on everything but static files (pages and downloads carry
  protected health information).
"""

from __future__ import annotations

import re
import urllib.parse

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ANY_HOST_PATHS", "MEDIA_PAGES", "HostCheck", "SecurityHeaders", "host_name"]

ANY_HOST_PATHS = frozenset({"/healthz"})
MEDIA_PAGES = re.compile(r"^/(sessions/[0-9]+/room|i/[^/]+)$")
STATIC_PREFIX = "/static/"
WRONG_HOST = "This server does not answer for that address."


def host_name(host: str) -> str | None:
    """The host name of a ``Host`` header value (lowercase, no port), or None if malformed."""
    if not host or len(host) > 300 or not host.isascii() or any(c in host for c in "/@?#\\ "):
        return None
    try:
        parts = urllib.parse.urlsplit(f"//{host}")
        if parts.port is not None and parts.port == 0:
            return None
    except ValueError:  # a port that is no number, or out of range
        return None
    name = parts.hostname
    return name.rstrip(".") if name else None


class HostCheck:
    """Refuses requests whose ``Host`` is not the public address's host."""

    def __init__(self, app: ASGIApp, public_base_url: str) -> None:
        self.app = app
        self.allowed = (urllib.parse.urlsplit(public_base_url).hostname or "").rstrip(".")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in ANY_HOST_PATHS:
            await self.app(scope, receive, send)
            return
        if host_name(Headers(scope=scope).get("host", "")) == self.allowed:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "wrong host"})
            return
        await PlainTextResponse(WRONG_HOST, status_code=400)(scope, receive, send)


def content_security_policy(public_base_url: str) -> str:
    parts = urllib.parse.urlsplit(public_base_url)
    ws_scheme = "wss" if parts.scheme == "https" else "ws"
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob: mediastream:",
        f"connect-src 'self' {ws_scheme}://{parts.netloc}",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


ROOM_PERMISSIONS = ("camera=(self), microphone=(self), display-capture=(), geolocation=(), "
                    "payment=(), usb=()")
OTHER_PERMISSIONS = ("camera=(), microphone=(), display-capture=(), geolocation=(), "
                     "payment=(), usb=()")


class SecurityHeaders:
    """Adds the security headers (and ``Cache-Control: no-store``) to every HTTP response."""

    def __init__(self, app: ASGIApp, public_base_url: str) -> None:
        self.app = app
        self.common = {
            "content-security-policy": content_security_policy(public_base_url),
            "x-content-type-options": "nosniff",
            "x-frame-options": "DENY",
            "referrer-policy": "no-referrer",
            "cross-origin-opener-policy": "same-origin",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        permissions = ROOM_PERMISSIONS if MEDIA_PAGES.match(path) else OTHER_PERMISSIONS
        cacheable = path.startswith(STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.common.items():
                    headers[name] = value
                headers["permissions-policy"] = permissions
                if not cacheable:
                    headers["cache-control"] = "no-store"
                    headers["pragma"] = "no-cache"
            await send(message)

        await self.app(scope, receive, send_with_headers)
