"""TURN credentials: vio's minting, checked by coturn itself, and the shipped coturn config.

The pure tests pin the shared-secret scheme and the browser's ``iceServers``. The others start
Debian's ``turnserver`` on 127.0.0.1 with ``deploy/turnserver.conf`` and talk to it with
aioice's TURN client: coturn accepts what vio mints (UDP, TCP and TLS), refuses an expired or
wrongly signed credential, and relays only to the address the config allows. No packet is
relayed: permissions are asked for, data never sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aioice import stun
from aioice.turn import TurnClientTcpProtocol, TurnClientUdpProtocol

from tests import netns
from tests.conftest import REQUIRE_SERVICES, seconds
from vio.settings import Settings, SettingsError
from vio.turn import (
    browser_ice_servers,
    check_turn_urls,
    credentials_expiry,
    turn_credentials,
    turn_user,
)

ROOT = Path(__file__).parent.parent
TURN_CONFIG = ROOT / "deploy" / "turnserver.conf"
TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
COTURN_START_SECONDS = 10.0
"""How long coturn may take to open its listeners."""
COTURN_STOP_SECONDS = 5.0
TURN_REQUEST_SECONDS = 10.0
"""Longest wait for one TURN transaction (aioice retransmits within it)."""
ALLOWED_PEER = "127.0.0.2"
SECRET = "turn-test-secret"
EXPIRES = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


# --- the scheme, pure ---------------------------------------------------------------------------


def test_credentials_follow_coturns_shared_secret_scheme() -> None:
    username, password = turn_credentials(SECRET, expires_at=EXPIRES, user="t1ck3t")
    assert username == f"{int(EXPIRES.timestamp())}:t1ck3t"
    digest = hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()
    assert password == base64.b64encode(digest).decode()
    assert credentials_expiry(username) == int(EXPIRES.timestamp())


@pytest.mark.parametrize(
    ("secret", "expires_at", "user"),
    [
        ("", EXPIRES, "abc"),
        (SECRET, EXPIRES.replace(tzinfo=None), "abc"),
        (SECRET, EXPIRES, "Dana R."),
        (SECRET, EXPIRES, "a:b"),
        (SECRET, EXPIRES, ""),
        (SECRET, EXPIRES, "x" * 65),
    ],
)
def test_minting_refuses_what_would_be_ambiguous_or_identifying(
    secret: str, expires_at: datetime, user: str
) -> None:
    with pytest.raises(ValueError):
        turn_credentials(secret, expires_at=expires_at, user=user)


def test_turn_user_is_opaque_and_stable_per_ticket() -> None:
    ticket = "patient:42.session:7.signature"
    user = turn_user(ticket)
    assert user == turn_user(ticket) != turn_user(ticket + "x")
    assert "42" not in user and "patient" not in user and len(user) == 16
    turn_credentials(SECRET, expires_at=EXPIRES, user=user)  # an acceptable user id


def test_browser_ice_servers_carry_minted_credentials_and_nothing_by_default() -> None:
    assert browser_ice_servers(turn_urls=(), turn_secret="", expires_at=EXPIRES, user="u") == []
    urls = ("turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:443?transport=tcp")
    servers = browser_ice_servers(turn_urls=urls, turn_secret=SECRET, expires_at=EXPIRES,
                                  user="u", other_urls=("stun:stun.example.org:3478",))
    username, credential = turn_credentials(SECRET, expires_at=EXPIRES, user="u")
    assert servers == [
        {"urls": list(urls), "username": username, "credential": credential},
        {"urls": ["stun:stun.example.org:3478"]},
    ]


@pytest.mark.parametrize(
    "url",
    ["stun:turn.example.org", "turn:user:pw@turn.example.org", "turn:host:99999",
     "turn:host?transport=sctp", "turn:"],
)
def test_turn_urls_must_be_plain_turn_urls(url: str) -> None:
    with pytest.raises(ValueError):
        check_turn_urls([url])


def test_turn_settings() -> None:
    settings = Settings.from_env({
        "VIO_SECRET_KEY": "k", "VIO_TURN_SECRET": SECRET,
        "VIO_TURN_URLS": "turn:10.0.0.1:3478?transport=udp, turns:turn.example.org?transport=tcp",
    })
    assert settings.turn_urls == ("turn:10.0.0.1:3478?transport=udp",
                                  "turns:turn.example.org?transport=tcp")
    assert settings.turn_credential_margin_minutes == 60
    assert SECRET not in repr(settings)
    with pytest.raises(SettingsError, match="VIO_TURN_SECRET"):
        Settings.from_env({"VIO_SECRET_KEY": "k", "VIO_TURN_URLS": "turn:10.0.0.1"})
    with pytest.raises(SettingsError, match="VIO_TURN_URLS"):
        Settings.from_env({"VIO_SECRET_KEY": "k", "VIO_TURN_URLS": "http://10.0.0.1"})


async def test_the_room_page_hands_out_credentials_until_the_end_plus_the_margin(
    settings: Settings, clock: Any, db: Any, demo: Any
) -> None:
    from sqlalchemy import select
    from starlette.testclient import TestClient

    from tests.conftest import csrf_from
    from vio import clinic
    from vio.app import create_app
    from vio.models import Patient, Session, SessionKind
    from vio.security import Signer

    urls = ("turn:turn.vio.test:3478?transport=udp", "turns:turn.vio.test:443?transport=tcp")
    configured = dataclasses.replace(settings, turn_urls=urls, turn_secret=SECRET,
                                     turn_credential_margin_minutes=45)
    patient = (await db.execute(select(Patient).where(Patient.legal_name == "Dana Reyes"))
               ).scalar_one()
    session = (await db.execute(select(Session).where(Session.kind == SessionKind.GROUP))
               ).scalars().first()
    token = await clinic.issue_patient_link(db, Signer(settings.secret_key), patient,
                                            clock.now())
    await db.commit()
    with TestClient(create_app(configured, clock=clock), base_url="http://127.0.0.1") as web:
        web.get(f"/p/{token}")
        check_in = web.get(f"/sessions/{session.id}/check-in").text
        web.post(f"/sessions/{session.id}/check-in",
                 data={"location": "home", "csrf_token": csrf_from(check_in)})
        page = web.get(f"/sessions/{session.id}/room").text
    found = re.search(r'<script id="room-config" type="application/json">(.*?)</script>',
                      page, re.S)
    assert found, page[:500]
    [server] = json.loads(found.group(1))["iceServers"]
    assert server["urls"] == list(urls)
    expires = session.ends_at + timedelta(minutes=45)
    assert credentials_expiry(server["username"]) == int(expires.timestamp())
    user = server["username"].partition(":")[2]
    assert len(user) == 16 and user != str(patient.id) and "Dana" not in user
    assert server["credential"] == turn_credentials(SECRET, expires_at=expires, user=user)[1]


# --- coturn -------------------------------------------------------------------------------------


def coturn_command(*, config: Path, listening_ip: str, relay_ip: str, port: int, secret: str,
                   workdir: Path, allowed_peers: Sequence[str] = (),
                   tls: tuple[Path, Path, int] | None = None,
                   extra: Sequence[str] = ()) -> list[str]:
    """``turnserver`` with vio's config and this test's address, secret and files."""
    args = [
        TURNSERVER, "-c", str(config), f"--listening-ip={listening_ip}",
        f"--relay-ip={relay_ip}", f"--listening-port={port}", f"--static-auth-secret={secret}",
        "--realm=vio.test", f"--log-file={workdir / 'turn.log'}", "--simple-log",
        f"--pidfile={workdir / 'turn.pid'}", f"--userdb={workdir / 'turndb'}", "--no-dtls",
        *(f"--allowed-peer-ip={peer}" for peer in allowed_peers), *extra,
    ]
    if tls is None:
        args.append("--no-tls")
    else:
        cert, key, tls_port = tls
        args += [f"--cert={cert}", f"--pkey={key}", f"--tls-listening-port={tls_port}"]
    return args


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(seconds(COTURN_STOP_SECONDS))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class Coturn:
    host: str
    port: int
    tls_port: int
    ca: ssl.SSLContext
    log: Path


def _free_ports(count: int) -> list[int]:
    """Ports free for TCP and UDP on 127.0.0.1."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def _self_signed(workdir: Path) -> tuple[Path, Path, ssl.SSLContext]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "turn.vio.test")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("turn.vio.test")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = workdir / "turn.crt", workdir / "turn.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(cafile=str(cert_path))
    return cert_path, key_path, context


def _wait_for_listener(host: str, port: int, process: subprocess.Popen[str], log: Path) -> None:
    import time

    deadline = time.monotonic() + seconds(COTURN_START_SECONDS)
    while True:
        try:
            socket.create_connection((host, port), timeout=netns.PROBE_SECONDS).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                detail = log.read_text()[-2000:] if log.exists() else "(no log)"
                raise RuntimeError(f"coturn did not start: {detail}") from None
            time.sleep(netns.POLL_SECONDS)


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    if not Path(TURNSERVER).exists():
        why = "coturn's turnserver is not installed (Debian package coturn)"
        if REQUIRE_SERVICES:
            pytest.fail(why)
        pytest.skip(why)
    workdir = tmp_path_factory.mktemp("coturn")
    cert, key, ca = _self_signed(workdir)
    port, tls_port = _free_ports(2)
    # Loopback peers are refused unless allowed; allowing them lets the config's own rules
    # (deny everything, allow vio's address) decide, on addresses that stay on this machine.
    command = coturn_command(config=TURN_CONFIG, listening_ip="127.0.0.1", relay_ip="127.0.0.1",
                             port=port, secret=SECRET, workdir=workdir,
                             allowed_peers=[ALLOWED_PEER], tls=(cert, key, tls_port),
                             extra=["--allow-loopback-peers"])
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               text=True)
    try:
        _wait_for_listener("127.0.0.1", port, process, workdir / "turn.log")
        _wait_for_listener("127.0.0.1", tls_port, process, workdir / "turn.log")
        yield Coturn("127.0.0.1", port, tls_port, ca, workdir / "turn.log")
    finally:
        stop(process)


TurnClient = TurnClientUdpProtocol | TurnClientTcpProtocol


@contextlib.asynccontextmanager
async def turn_client(server: Coturn, username: str, password: str,
                      transport: str = "udp") -> AsyncIterator[TurnClient]:
    """A TURN client connection to coturn (not yet allocated)."""
    loop = asyncio.get_running_loop()
    client: TurnClient
    inner: asyncio.BaseTransport
    if transport == "udp":
        address = (server.host, server.port)
        inner, client = await loop.create_datagram_endpoint(
            lambda: TurnClientUdpProtocol(address, username=username, password=password,
                                          lifetime=600, channel_refresh_time=300),
            remote_addr=address)
    else:
        address = (server.host, server.tls_port if transport == "tls" else server.port)
        inner, client = await loop.create_connection(
            lambda: TurnClientTcpProtocol(address, username=username, password=password,
                                          lifetime=600, channel_refresh_time=300),
            host=address[0], port=address[1],
            ssl=server.ca if transport == "tls" else None,
            server_hostname="turn.vio.test" if transport == "tls" else None)
    try:
        yield client
    finally:
        if client.refresh_task is not None:
            client.refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client.refresh_task
        inner.close()


async def allocate(client: TurnClient) -> tuple[str, int]:
    return await asyncio.wait_for(client.connect(), seconds(TURN_REQUEST_SECONDS))


def error_code(failure: pytest.ExceptionInfo[stun.TransactionFailed]) -> int:
    code: int = failure.value.response.attributes["ERROR-CODE"][0]
    return code


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_coturn_accepts_what_vio_mints(coturn: Coturn, transport: str) -> None:
    username, password = turn_credentials(
        SECRET, expires_at=datetime.now(UTC) + timedelta(minutes=5), user=turn_user("ticket"))
    async with turn_client(coturn, username, password, transport) as client:
        relayed = await allocate(client)
    assert relayed[0] == "127.0.0.1"


async def test_coturn_refuses_an_expired_credential(coturn: Coturn) -> None:
    username, password = turn_credentials(
        SECRET, expires_at=datetime.now(UTC) - timedelta(seconds=5), user=turn_user("ticket"))
    async with turn_client(coturn, username, password) as client:
        with pytest.raises(stun.TransactionFailed) as failure:
            await allocate(client)
    assert error_code(failure) == 401


async def test_coturn_refuses_a_credential_minted_with_another_secret(coturn: Coturn) -> None:
    username, password = turn_credentials(
        "not-" + SECRET, expires_at=datetime.now(UTC) + timedelta(minutes=5), user="u")
    async with turn_client(coturn, username, password, "tcp") as client:
        with pytest.raises(stun.TransactionFailed) as failure:
            await allocate(client)
    assert error_code(failure) == 401


async def test_the_relay_reaches_only_the_allowed_media_address(coturn: Coturn) -> None:
    """deploy/turnserver.conf denies every peer; only vio's (allowed-peer-ip) is permitted."""
    username, password = turn_credentials(
        SECRET, expires_at=datetime.now(UTC) + timedelta(minutes=5), user="u")
    async with turn_client(coturn, username, password) as client:
        await allocate(client)
        await asyncio.wait_for(client.channel_bind(0x4000, (ALLOWED_PEER, 50000)),
                               seconds(TURN_REQUEST_SECONDS))
        for number, denied in enumerate(["127.0.0.3", "10.99.0.1", "192.168.1.1",
                                         "198.51.100.7"], start=0x4001):
            with pytest.raises(stun.TransactionFailed) as failure:
                await asyncio.wait_for(client.channel_bind(number, (denied, 50000)),
                                       seconds(TURN_REQUEST_SECONDS))
            assert error_code(failure) == 403, denied


def test_the_config_keeps_deployment_values_out_and_the_relay_closed() -> None:
    active = [line.strip() for line in TURN_CONFIG.read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    assert "use-auth-secret" in active
    assert "denied-peer-ip=0.0.0.0-255.255.255.255" in active
    assert "denied-peer-ip=::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" in active
    assert "no-tcp-relay" in active and "no-cli" in active
    assert not any(line.startswith(("static-auth-secret", "allow-loopback-peers",
                                    "allowed-peer-ip", "lt-cred-mech")) for line in active)
    assert "tls-listening-port=443" in active
