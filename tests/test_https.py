"""HTTPS: secure origins, HSTS, Secure cookies, TLS in ``vio serve``, trusted proxies, and a
browser through Caddy.

``vio serve`` runs as a real process on loopback; certificates are made here (a throwaway CA
and a leaf for ``localhost``/``127.0.0.1``). The Caddy scenario runs in a loopback-only network
namespace (``tests/browser/https_harness.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest
import websockets
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.conftest import REQUIRE_SERVICES, seconds, stop_process
from vio.app import create_app
from vio.pages.https import HSTS_MAX_AGE_SECONDS, StrictTransportSecurity, is_secure_origin
from vio.settings import Settings, SettingsError

ROOT = Path(__file__).parent.parent
VIO = str(Path(sys.executable).with_name("vio"))


# --- helpers shared with test_doctor and test_deploy_docs ----------------------------------

@dataclass(frozen=True)
class Certificate:
    ca: Path
    cert: Path
    key: Path


def make_certificate(directory: Path, names: tuple[str, ...] = ("localhost",),
                     addresses: tuple[str, ...] = ("127.0.0.1",)) -> Certificate:
    """A throwaway CA and a server certificate it signed, as PEM files in ``directory``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vio test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = Certificate(ca=directory / "ca.pem", cert=directory / "cert.pem",
                        key=directory / "key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    files.key.chmod(0o600)
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def base_env(directory: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``vio`` process on a fresh SQLite file, with no inherited VIO_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIO_")}
    env.update(VIO_DATABASE_URL=f"sqlite+aiosqlite:///{directory}/vio.sqlite3",
               VIO_SECRET_KEY="https-test", VIO_ICE_ANNOUNCE_ADDRESSES="127.0.0.1")
    env.update(extra)
    return env


@dataclass
class Served:
    base: str
    port: int
    env: dict[str, str]
    cwd: Path
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def vio_serve(directory: Path, env: dict[str, str], *args: str, port: int | None = None,
              health_url: str | None = None,
              context: ssl.SSLContext | None = None) -> Iterator[Served]:
    """``vio serve ARGS`` on a loopback port until its health check answers; stopped after."""
    port = port or free_port()
    log = directory / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([VIO, "serve", "--port", str(port), *args], cwd=directory,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    scheme = "https" if env.get("VIO_TLS_CERT_FILE") else "http"
    health = health_url or f"{scheme}://127.0.0.1:{port}/healthz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    try:
        deadline = time.monotonic() + seconds(30)
        while True:
            try:
                with opener.open(health, timeout=seconds(1)) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError(f"vio serve did not start: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield Served(base=env.get("VIO_PUBLIC_BASE_URL", f"{scheme}://127.0.0.1:{port}"),
                     port=port, env=env, cwd=directory, process=process, log=log)
    finally:
        stop_process(process)


def demo_links(served: Served) -> dict[str, Any]:
    result = subprocess.run([VIO, "demo-links", "--json"], cwd=served.cwd, env=served.env,
                            check=True, capture_output=True, text=True, timeout=seconds(60))
    links: dict[str, Any] = json.loads(result.stdout)
    return links


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Browserish:
    """Cookies, no automatic redirects, one TLS context: enough to walk vio's pages."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.jar = CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context),
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect)

    def fetch(self, url: str, form: dict[str, str] | None = None
              ) -> tuple[int, http.client.HTTPMessage, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.opener.open(url, data, timeout=seconds(10)) as response:
                return response.status, response.headers, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read().decode(errors="replace")


def csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


# --- secure origins and HSTS (pure) --------------------------------------------------------

@pytest.mark.parametrize(("url", "secure"), [
    ("https://vio.example.org", True),
    ("https://203.0.113.5:8443", True),
    ("http://127.0.0.1:8000", True),
    ("http://127.8.9.10", True),
    ("http://localhost:8000", True),
    ("http://vio.localhost", True),
    ("http://[::1]:8000", True),
    ("http://vio.example.org", False),
    ("http://10.0.0.5:8000", False),
    ("http://0.0.0.0:8000", False),
    ("http://[2001:db8::1]", False),
    ("ftp://127.0.0.1", False),
])
def test_which_public_urls_let_a_browser_use_the_camera(url: str, secure: bool) -> None:
    assert is_secure_origin(url) is secure


def _hello(request: Any) -> PlainTextResponse:
    return PlainTextResponse("hello", headers={"Strict-Transport-Security": "max-age=1"})


def test_hsts_is_added_to_responses_over_https_only() -> None:
    app = StrictTransportSecurity(Starlette(routes=[Route("/", _hello)]))
    with TestClient(app, base_url="https://vio.test") as client:
        response = client.get("/")
        assert response.headers.get_list("strict-transport-security") == [
            f"max-age={HSTS_MAX_AGE_SECONDS}"]
        assert response.text == "hello"
    with TestClient(app, base_url="http://vio.test") as client:
        # RFC 6797 7.2: never over plain HTTP, and what the app set passes through untouched.
        assert client.get("/").headers.get_list("strict-transport-security") == ["max-age=1"]


# --- settings ------------------------------------------------------------------------------

def test_cookies_are_secure_when_the_public_url_is_https() -> None:
    assert Settings.from_env({"VIO_SECRET_KEY": "k",
                              "VIO_PUBLIC_BASE_URL": "https://vio.example.org"}).cookies_secure
    assert not Settings.from_env({"VIO_SECRET_KEY": "k"}).cookies_secure
    assert Settings.from_env({"VIO_SECRET_KEY": "k", "VIO_COOKIE_SECURE": "1"}).cookies_secure


@pytest.mark.parametrize(("environ", "named"), [
    ({"VIO_TRUSTED_PROXIES": "127.0.0.1,caddy"}, "VIO_TRUSTED_PROXIES"),
    ({"VIO_TRUSTED_PROXIES": "10.0.0.1/24"}, "VIO_TRUSTED_PROXIES"),
    ({"VIO_TLS_CERT_FILE": "/nonexistent/cert.pem"}, "VIO_TLS_CERT_FILE"),
    ({"VIO_TLS_CERT_FILE": __file__}, "VIO_TLS_KEY_FILE"),
    ({"VIO_TLS_KEY_FILE": __file__}, "VIO_TLS_CERT_FILE"),
])
def test_bad_https_settings_name_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env({"VIO_SECRET_KEY": "k", **environ})


def test_trusted_proxies_default_to_loopback_and_take_networks() -> None:
    assert Settings.from_env({"VIO_SECRET_KEY": "k"}).trusted_proxies == ("127.0.0.1", "::1")
    assert Settings.from_env({"VIO_SECRET_KEY": "k", "VIO_TRUSTED_PROXIES": "10.0.0.0/24, ::1"}
                             ).trusted_proxies == ("10.0.0.0/24", "::1")
    assert Settings.from_env({"VIO_SECRET_KEY": "k", "VIO_TRUSTED_PROXIES": ""}
                             ).trusted_proxies == ()


# --- the app in process --------------------------------------------------------------------

@pytest.mark.parametrize("public", ["https://vio.test", "http://127.0.0.1:8000"])
async def test_cookie_and_hsts_follow_the_public_url(settings: Settings, clock: Any, db: Any,
                                                     demo: Any, public: str) -> None:
    import dataclasses

    from sqlalchemy import select

    from vio import clinic
    from vio.models import Patient
    from vio.security import Signer

    patient = (await db.execute(select(Patient).where(Patient.legal_name == "Dana Reyes"))
               ).scalar_one()
    token = await clinic.issue_patient_link(db, Signer(settings.secret_key), patient,
                                            clock.now())
    await db.commit()
    app = create_app(dataclasses.replace(settings, public_base_url=public), clock=clock)
    with TestClient(app, base_url=public) as client:
        response = client.get(f"/p/{token}", follow_redirects=False)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"].lower()
    hsts = response.headers.get("strict-transport-security")
    if public.startswith("https"):
        assert "; secure" in cookie
        assert hsts == f"max-age={HSTS_MAX_AGE_SECONDS}"
    else:
        assert "secure" not in cookie
        assert hsts is None


# --- vio serve -----------------------------------------------------------------------------

def test_serve_terminates_tls_itself_and_the_room_page_comes_over_https(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path)
    context = ssl.create_default_context(cafile=str(cert.ca))
    port = free_port()
    env = base_env(tmp_path, VIO_TLS_CERT_FILE=str(cert.cert), VIO_TLS_KEY_FILE=str(cert.key),
                   VIO_PUBLIC_BASE_URL=f"https://localhost:{port}")
    with vio_serve(tmp_path, env, "--demo", port=port, context=context) as served:
        links = demo_links(served)
        patient = next(p for p in links["patients"] if p["on_roster"])
        session = next(s for s in links["sessions"] if s["kind"] == "group")
        web = Browserish(context)
        status, headers, _ = web.fetch(patient["link"])
        assert status == 303
        assert "secure" in headers["Set-Cookie"].lower()
        assert headers["Strict-Transport-Security"] == f"max-age={HSTS_MAX_AGE_SECONDS}"
        check_in = f"{served.base}/sessions/{session['id']}/check-in"
        status, _, page = web.fetch(check_in)
        assert status == 200
        status, _, _ = web.fetch(check_in, {"location": "home", "csrf_token": csrf(page)})
        assert status == 303
        status, headers, page = web.fetch(session["room"])
        assert status == 200, page[:500]
        assert headers["Strict-Transport-Security"]
        found = re.search(r'<script id="room-config" type="application/json">(.*?)</script>',
                          page, re.S)
        assert found, page[:500]
        config = json.loads(found.group(1))
        assert config["wsUrl"].startswith(f"wss://localhost:{port}/ws/sessions/{session['id']}")

        async def join() -> dict[str, Any]:
            async with websockets.connect(config["wsUrl"], ssl=context) as ws:
                await ws.send(json.dumps({"type": "join", "v": 1}))
                reply: dict[str, Any] = json.loads(await ws.recv(decode=True))
                return reply

        first = asyncio.run(asyncio.wait_for(join(), seconds(20)))
        assert first["type"] != "error", first
        # Plain HTTP on that port gets no answer: TLS is not optional.
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=seconds(5))
        with pytest.raises((OSError, http.client.HTTPException)):
            plain.request("GET", "/healthz")
            plain.getresponse()
        plain.close()


@pytest.mark.parametrize("public", ["http://vio.example.org", "http://10.20.30.40:8000"])
def test_a_non_loopback_http_public_url_stops_start_up(tmp_path: Path, public: str) -> None:
    env = base_env(tmp_path, VIO_PUBLIC_BASE_URL=public)
    result = subprocess.run([VIO, "serve", "--port", "0"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=seconds(60))
    assert result.returncode == 2
    assert "VIO_PUBLIC_BASE_URL" in result.stderr and public in result.stderr
    assert "--insecure-http" in result.stderr and "camera" in result.stderr
    assert not (tmp_path / "vio.sqlite3").exists(), "nothing changes before start-up stops"


def test_listening_on_all_interfaces_without_a_public_url_stops_start_up(tmp_path: Path) -> None:
    result = subprocess.run([VIO, "serve", "--host", "0.0.0.0", "--port", "0"], cwd=tmp_path,
                            env=base_env(tmp_path), capture_output=True, text=True,
                            timeout=seconds(60))
    assert result.returncode == 2 and "VIO_PUBLIC_BASE_URL" in result.stderr


def test_insecure_http_serves_anyway(tmp_path: Path) -> None:
    env = base_env(tmp_path, VIO_PUBLIC_BASE_URL="http://vio.example.org")
    with vio_serve(tmp_path, env, "--insecure-http") as served:
        assert served.process.poll() is None


def test_a_certificate_that_does_not_load_stops_start_up(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path)
    env = base_env(tmp_path, VIO_TLS_CERT_FILE=str(cert.key), VIO_TLS_KEY_FILE=str(cert.cert))
    result = subprocess.run([VIO, "serve", "--port", "0"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=seconds(60))
    assert result.returncode == 2
    assert "VIO_TLS_CERT_FILE" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "vio.sqlite3").exists()


# --- X-Forwarded-* -------------------------------------------------------------------------

def _get(port: int, source: str, path: str, headers: dict[str, str], *,
         method: str = "GET", body: str | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=seconds(10),
                                      source_address=(source, 0))
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def _failed_sign_in(port: int, source: str, forwarded_for: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=seconds(10),
                                      source_address=(source, 0))
    conn.request("GET", "/login", headers={"Host": "vio.test"})
    response = conn.getresponse()
    token = csrf(response.read().decode())
    cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    form = urllib.parse.urlencode({"email": "nobody@example.org", "password": "wrong",
                                   "next": "/staff", "csrf_token": token})
    conn.request("POST", "/login", body=form, headers={
        "Host": "vio.test", "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded",
        "X-Forwarded-For": forwarded_for, "X-Forwarded-Proto": "https"})
    assert conn.getresponse().status == 401
    conn.close()


def test_forwarded_headers_count_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    env = base_env(tmp_path, VIO_PUBLIC_BASE_URL="https://vio.test",
                   VIO_TRUSTED_PROXIES="127.0.0.1", VIO_LOGIN_FAILURE_DELAY_MS="0")
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    with vio_serve(tmp_path, env) as served:
        # From 127.0.0.1, the trusted proxy: the request came over HTTPS, so HSTS.
        trusted = _get(served.port, "127.0.0.1", "/healthz", forwarded)
        assert trusted.headers["Strict-Transport-Security"]
        # From 127.0.0.2, anyone else: the claim is ignored, the request was plain HTTP.
        untrusted = _get(served.port, "127.0.0.2", "/healthz", forwarded)
        assert untrusted.status == 200 and untrusted.headers["Strict-Transport-Security"] is None
        _failed_sign_in(served.port, "127.0.0.1", "203.0.113.9")
        _failed_sign_in(served.port, "127.0.0.2", "198.51.100.7")
    with sqlite3.connect(tmp_path / "vio.sqlite3") as conn:
        actors = [row[0] for row in conn.execute(
            "SELECT actor FROM audit_events WHERE action = 'sign-in-failed' ORDER BY id")]
    assert actors == ["address:203.0.113.9", "address:127.0.0.2"]


# --- a browser through Caddy ---------------------------------------------------------------

def run_https_scenario(name: str) -> dict[str, Any]:
    chromium = os.environ.get("VIO_TEST_CHROMIUM", "/usr/bin/chromium")
    missing = [tool for tool in ("unshare", "ip", "mount", "caddy") if shutil.which(tool) is None]
    if not Path(chromium).exists():
        missing.append(chromium)
    if missing or os.geteuid() != 0:
        why = (f"needs root and {', '.join(missing)}" if missing
               else "needs root for unshare -n -m")
        if REQUIRE_SERVICES:
            pytest.fail(f"HTTPS browser test cannot run: {why}")
        pytest.skip(f"HTTPS browser test cannot run: {why}")
    # -n: only a loopback interface; -m: a private /etc/hosts that names vio.test.
    result = subprocess.run(
        ["unshare", "-n", "-m", "--", sys.executable, "-m", "tests.browser.https_harness", name],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds(240))
    assert result.returncode == 0, result.stderr[-4000:]
    outcome: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return outcome


@pytest.mark.browser
def test_patient_joins_over_https_through_caddy_and_media_flows_both_ways() -> None:
    result = run_https_scenario("caddy")
    origin = result["origin"]
    assert origin.startswith("https://vio.test:")
    assert result["secure_context"] is True
    assert result["check_in_form"] is True
    vio_cookies = [c for c in result["cookies"] if c["name"] == "vio_session"]
    assert vio_cookies and all(c["secure"] for c in result["cookies"]), result["cookies"]
    assert result["hsts"] and all(h == f"max-age={HSTS_MAX_AGE_SECONDS}"
                                  for h in result["hsts"].values()), result["hsts"]
    assert result["websockets"] and all(url.startswith(f"wss://{origin[8:]}/ws/sessions/")
                                        for url in result["websockets"]), result["websockets"]
    page = result["page"]
    assert page["playing"] >= 1 and page["rising"] >= 1 and page["hearing"] >= 1, page
    assert result["log_lines"] > 0 and result["link_token_logged"] is False
    # Caddy replaces a client's X-Forwarded-For: vio records the real peer, not the claim.
    assert result["spoofed_sign_in_actor"] == "address:127.0.0.1"
    patient = [r for r in result["bot"]["remote"] if r["role"] == "patient"]
    assert patient and patient[0]["video_frames"] > 0 and patient[0]["audio_frames"] > 0, \
        result["bot"]
