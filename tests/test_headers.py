"""Headers: security headers on every route, no inline script anywhere, the WebSocket refuses a
foreign Origin, and a forged Host header never reaches a page (nor shapes a link)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import csrf_from
from tests.test_session_rules import Clinic, loopback_only  # noqa: F401
from tests.wsclient import Client
from vio.demo import ROSTER
from vio.models import Session, SessionKind

WEB = Path(__file__).parent.parent / "web"
MEDIA_PATH = re.compile(r"^/(sessions/[0-9]+/room|i/[^/]+)$")


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def _sign_in(client: TestClient, email: str, password: str) -> None:
    csrf = csrf_from(client.get("/login").text)
    client.post("/login", data={"email": email, "password": password, "csrf_token": csrf})


def _check(path: str, headers) -> None:  # type: ignore[no-untyped-def]
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
    assert "default-src 'self'" in csp and "object-src 'none'" in csp, path
    assert headers["x-content-type-options"] == "nosniff", path
    assert headers["referrer-policy"] == "no-referrer", path
    assert headers["x-frame-options"] == "DENY", path
    permissions = headers["permissions-policy"]
    if MEDIA_PATH.match(path):
        assert "camera=(self)" in permissions and "microphone=(self)" in permissions, path
    else:
        assert "camera=()" in permissions and "microphone=()" in permissions, path
    if not path.startswith("/static/"):
        assert headers["cache-control"] == "no-store", path


@pytest.mark.parametrize("who", ["anonymous", "admin", "patient"])
async def test_security_headers_on_every_route(client, demo, db, settings, clock, who):
    from vio import clinic
    from vio.security import Signer

    if who == "admin":
        _sign_in(client, "admin@demo.vio", "demo-admin")
    elif who == "patient":
        token = await clinic.issue_patient_link(db, Signer(settings.secret_key),
                                                demo.patients[ROSTER[0]], clock.now())
        await db.commit()
        client.get(f"/p/{token}")
    checked = 0
    for route in client.app.routes:
        if isinstance(route, WebSocketRoute):
            continue
        if isinstance(route, Mount):
            paths = ["/static/css/site.css", "/static/js/room.js", "/static/nothing-here"]
        else:
            assert isinstance(route, Route)
            paths = [_concrete(route.path)]
        for path in paths:
            for method in sorted((getattr(route, "methods", None) or {"GET"}) - {"HEAD"}):
                response = client.request(method, path, follow_redirects=False,
                                          data={} if method == "POST" else None)
                _check(path, response.headers)
                checked += 1
    assert checked > 30
    # Error pages carry them too.
    _check("/no/such/page", client.get("/no/such/page").headers)
    _check("/sessions/1/room", client.get("/sessions/1/room").headers)


def test_no_template_or_script_runs_inline_code():
    for template in (WEB / "templates").rglob("*.html"):
        text = template.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag or 'type="application/json"' in tag, (template, tag)
        assert not re.search(r"\son[a-z]+\s*=", text), template  # onclick= and the like
        assert "javascript:" not in text, template
        assert "<style" not in text and " style=" not in text, template


async def test_a_websocket_from_a_foreign_origin_is_refused(live_server, db, live_settings,
                                                            clock):
    place = Clinic(live_server, db, live_settings, clock)
    url = await place.url()
    cookie = await place.patient(ROSTER[0])
    for origin in ("https://evil.example", "null", "http://127.0.0.1:8001",
                   "https://127.0.0.1:8000"):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, origin=origin, additional_headers={"Cookie": cookie}):
                pass
        assert refused.value.response.status_code == 403, origin
    async with connect(url, origin=live_settings.public_base_url,
                       additional_headers={"Cookie": cookie}) as ws:
        await ws.send('{"type": "join", "v": 1}')
        assert '"welcome"' in await ws.recv()
    async with Client(url, cookie) as no_origin:  # not a browser: no ambient credentials
        assert (await no_origin.join())["type"] == "welcome"


async def test_a_forged_host_never_reaches_a_page(client, demo, db, settings):
    for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example", "[::1]",
                 "127.0.0.1@evil.example", "", "127.0.0.1:notaport"):
        for path in ("/", "/login", "/me", "/staff", f"/p/{'x' * 40}", "/sessions/1/room"):
            response = client.get(path, headers={"host": host}, follow_redirects=False)
            assert response.status_code == 400, (host, path)
            assert "evil" not in response.text and "location" not in response.headers
    assert client.get("/healthz", headers={"host": "10.0.0.5:8000"}).json() == {"status": "ok"}


async def test_links_come_from_the_setting_never_from_the_host_header(client, demo, db,
                                                                      settings, clock):
    # Same host name, another port: served, but no link or address on the page repeats it.
    headers = {"host": "127.0.0.1:6666"}
    csrf = csrf_from(client.get("/login", headers=headers).text)
    client.post("/login", headers=headers, data={
        "email": "admin@demo.vio", "password": "demo-admin", "csrf_token": csrf})
    patient = demo.patients[ROSTER[0]]
    page = client.get(f"/staff/patients/{patient.id}", headers=headers)
    issued = client.post(f"/staff/patients/{patient.id}", headers=headers, data={
        "action": "issue-link", "csrf_token": csrf_from(page.text)})
    assert f'value="{settings.public_base_url}/p/' in issued.text
    assert "6666" not in issued.text
    live = (await db.execute(select(Session).where(Session.kind == SessionKind.GROUP))
            ).scalars().first()
    room = client.get(f"/sessions/{live.id}/room", headers=headers)
    assert room.status_code == 200
    ws_base = settings.public_base_url.replace("http://", "ws://")
    assert f'"wsUrl": "{ws_base}/ws/sessions/{live.id}?ticket=' in room.text
    assert "6666" not in room.text
    assert "6666" not in client.get("/staff", headers=headers).text
    # No trailing-slash redirect that would echo the host either.
    slash = client.get("/staff/", headers=headers, follow_redirects=False)
    assert slash.status_code == 404 and "location" not in slash.headers


def test_the_websocket_url_follows_https_in_the_setting():
    from vio.pages.room import ws_base_url

    assert ws_base_url("https://vio.example.org") == "wss://vio.example.org"
    assert ws_base_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000"


def _handshake_status(server, path: str, host: str, cookie: str) -> int:  # type: ignore[no-untyped-def]
    """Send a WebSocket upgrade with exactly this Host header; the status the server answers."""
    import base64
    import os
    import socket
    import urllib.parse

    port = urllib.parse.urlsplit(server.base_url).port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      f"Sec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n").encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0].decode()
    return int(status_line.split()[1])


async def test_a_websocket_with_a_forged_host_is_refused(live_server, db, live_settings, clock):
    import asyncio
    import urllib.parse

    place = Clinic(live_server, db, live_settings, clock)
    path = urllib.parse.urlsplit(await place.url()).path
    cookie = await place.patient(ROSTER[0])
    port = urllib.parse.urlsplit(live_server.base_url).port
    assert await asyncio.to_thread(_handshake_status, live_server, path, "evil.example",
                                   cookie) == 403
    assert await asyncio.to_thread(_handshake_status, live_server, path,
                                   f"127.0.0.1:{port}", cookie) == 101
