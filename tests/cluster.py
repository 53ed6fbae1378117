"""Rooms across node processes, for tests: real ``vio serve`` nodes on the machine's PostgreSQL
and a Redis, the demo's people, bots, and ``redis-server`` processes a test starts itself.

Each node listens on a port all nodes share (``SO_REUSEPORT``, as ``--workers`` does) and on a
port of its own (``--node-port``), so a test can choose where a connection lands. Redis keys
carry a prefix of the test's own. ``PrivateRedis`` is a ``redis-server`` of the test's own, on a
loopback port: plain, or with TLS (a CA made for the test) and an ACL user; it can be stopped
and started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from tests.conftest import TEST_KEYS, seconds, unavailable
from vio.bot import Bot, check_in_at_home, sign_in
from vio.db import create_engine, session_factory
from vio.models import AttendanceEvent, AttendanceKind, Session, WaitingRoomPolicy

VIO = str(Path(sys.executable).with_name("vio"))
REDIS_URL = os.environ.get("VIO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LEASE_SECONDS = 3.0
NODE_HEARTBEAT_SECONDS = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def healthy(base: str, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{base} did not start"
        time.sleep(0.1)


async def shared_redis() -> str:
    """The machine's Redis, or a skip (a failure under VIO_TEST_REQUIRE_SERVICES=1)."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=seconds(2))
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as error:
        unavailable("Redis", str(error))
    finally:
        await client.aclose()
    return REDIS_URL


# --- private redis-servers --------------------------------------------------------------------

@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path) -> TlsFiles:
    """A CA of the test's own and a certificate it signs for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vio test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(directory / "redis-ca.pem", directory / "redis.pem",
                     directory / "redis-key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    files.key.chmod(0o600)
    return files


class PrivateRedis:
    """A ``redis-server`` of the test's own on a loopback port (with ``tls``: TLS only, and
    with ``user``/``password``: that ACL user only, ``default`` turned off)."""

    def __init__(self, directory: Path, *, tls: TlsFiles | None = None,
                 user: str | None = None, password: str | None = None,
                 keys: str = "*") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server", "not installed")
        self.port = free_port()
        self.tls = tls
        self.user, self.password = user, password
        command = [str(binary), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(directory)]
        if tls is None:
            command += ["--port", str(self.port)]
        else:
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file",
                        str(tls.cert), "--tls-key-file", str(tls.key), "--tls-ca-cert-file",
                        str(tls.ca), "--tls-auth-clients", "no"]
        if user is not None:
            command += ["--user", "default", "off",
                        "--user", user, "on", f">{password}", f"~{keys}", f"&{keys}",
                        "+@all", "-@dangerous"]
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def env(self) -> dict[str, str]:
        """The settings a node needs to reach this Redis."""
        env = {"VIO_REDIS_URL": self.url}
        if self.tls is not None:
            env["VIO_REDIS_CA_FILE"] = str(self.tls.ca)
        if self.user is not None:
            env.update(VIO_REDIS_USERNAME=self.user, VIO_REDIS_PASSWORD=self.password or "")
        return env

    def client(self) -> aioredis.Redis:
        options: dict[str, Any] = {"socket_connect_timeout": seconds(2)}
        if self.tls is not None:
            options["ssl_ca_certs"] = str(self.tls.ca)
        if self.user is not None:
            options.update(username=self.user, password=self.password)
        return aioredis.Redis.from_url(self.url, **options)

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + seconds(10)
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2):
                return
            assert self.process.poll() is None, "redis-server did not start"
            assert time.monotonic() < deadline, "redis-server did not listen"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(seconds(10))

    def restart(self) -> None:
        self.stop()
        self.start()


# --- node processes ---------------------------------------------------------------------------

@dataclass
class NodeProcess:
    name: str
    port: int  # this node's own port
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Cluster:
    """Node processes of one test: one database, one Redis prefix, one shared port."""

    def __init__(self, directory: Path, database_url: str, redis_url: str,
                 redis_client: Callable[[], aioredis.Redis] | None = None,
                 prefix: str | None = None, **extra_env: str) -> None:
        self.directory = directory
        self.shared_port = free_port()
        self.prefix = prefix or f"vio-test-{secrets.token_hex(4)}"
        self.redis_url = redis_url
        self._client = redis_client or (lambda: aioredis.Redis.from_url(redis_url))
        self.env = {**os.environ, "VIO_DATABASE_URL": database_url, "VIO_REDIS_URL": redis_url,
                    "VIO_REDIS_PREFIX": self.prefix, "VIO_SECRET_KEY": "node-test",
                    "VIO_ICE_ANNOUNCE_ADDRESSES": "127.0.0.1",
                    "VIO_PUBLIC_BASE_URL": f"http://127.0.0.1:{self.shared_port}",
                    "VIO_ROOM_LEASE_SECONDS": str(LEASE_SECONDS),
                    "VIO_NODE_HEARTBEAT_SECONDS": str(NODE_HEARTBEAT_SECONDS),
                    "VIO_ROOM_TICK_SECONDS": "0.2", "VIO_ATTENDANCE_HEARTBEAT_SECONDS": "1",
                    **extra_env}
        self.nodes: dict[str, NodeProcess] = {}

    @property
    def shared(self) -> str:
        return f"http://127.0.0.1:{self.shared_port}"

    @property
    def database_url(self) -> str:
        return self.env["VIO_DATABASE_URL"]

    def redis(self) -> aioredis.Redis:
        """A client of the test's own (the caller closes it)."""
        return self._client()

    def _spawn(self, name: str) -> NodeProcess:
        port = free_port()
        log = self.directory / f"node-{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [VIO, "serve", "--demo", "--port", str(self.shared_port), "--node-port",
                 str(port)], cwd=self.directory, env=self.env, stdout=out,
                stderr=subprocess.STDOUT)
        return NodeProcess(name, port, process, log)

    async def start(self, name: str) -> NodeProcess:
        node = self.nodes[name] = self._spawn(name)
        await asyncio.to_thread(healthy, node.base, seconds(30))
        return node

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        node = self.nodes.pop(name)
        node.process.send_signal(sig)
        node.process.wait(seconds(20))

    def close(self) -> None:
        """Stop every node still running (a paused one is woken first); kill any that hangs."""
        hung = []
        for name in list(self.nodes):
            process = self.nodes[name].process
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
            try:
                self.stop(name)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                hung.append(name)
        assert not hung, f"node(s) {hung} did not stop on SIGTERM\n{self.logs()}"

    async def lease(self, session_id: int) -> tuple[str, int] | None:
        """(node id, epoch) of the room's lease, if anyone holds it."""
        client = self.redis()
        try:
            value = await client.get(f"{self.prefix}:room:{session_id}")
        finally:
            await client.aclose()
        if value is None:
            return None
        node, _, epoch = value.decode().rpartition(" ")
        return node, int(epoch)

    async def owner_pid(self, session_id: int) -> int | None:
        lease = await self.lease(session_id)
        return None if lease is None else int(lease[0].rsplit("-", 2)[1])

    async def node_ids(self) -> list[str]:
        """The ids of the nodes whose records are live."""
        client = self.redis()
        try:
            keys = [k.decode() async for k in client.scan_iter(match=f"{self.prefix}:node:*")]
        finally:
            await client.aclose()
        return [k.removeprefix(f"{self.prefix}:node:") for k in keys]

    async def links(self) -> dict[str, Any]:
        done = await asyncio.to_thread(subprocess.run, [VIO, "demo-links", "--json"],
                                       cwd=self.directory, env=self.env, check=True,
                                       capture_output=True, text=True)
        links: dict[str, Any] = json.loads(done.stdout)
        return links

    def log(self, name: str) -> str:
        return (self.directory / f"node-{name}.log").read_text()

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in self.directory.glob("node-*.log"))


async def wait(predicate: Callable[[], bool], within: float, what: str,
               cluster: Cluster | None = None) -> None:
    deadline = time.monotonic() + seconds(within)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}"
                                 + (f"\n{cluster.logs()}" if cluster else ""))
        await asyncio.sleep(0.05)


async def people(cluster: Cluster, base: str, patients: int) -> tuple[int, str, list[str]]:
    """(session id, therapist cookie, patient cookies) signed in at ``base``."""
    links = await cluster.links()
    session_id = next(s["id"] for s in links["sessions"] if s["kind"] == "group")
    therapist = await asyncio.to_thread(sign_in, f"{base}/login", links["therapist"]["email"],
                                        links["therapist"]["password"])
    cookies = []
    for patient in [p for p in links["patients"] if p["on_roster"]][:patients]:
        web = await asyncio.to_thread(sign_in, patient["link"].replace(cluster.shared, base))
        await asyncio.to_thread(check_in_at_home, web, session_id)
        cookies.append(web.cookie)
    return session_id, therapist.cookie, cookies


class Bots:
    def __init__(self) -> None:
        self.tasks: dict[Bot, asyncio.Task[Any]] = {}

    def start(self, url: str, cookie: str, **options: Any) -> Bot:
        bot = Bot(url, cookie, **options)
        self.tasks[bot] = asyncio.create_task(bot.run(seconds(120)))
        return bot

    async def close(self) -> None:
        for bot in self.tasks:
            bot.stop()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


def frames(bot: Bot) -> int:
    return sum(r.video_frames + r.audio_frames for r in bot.result.remote.values())


async def media_flows(bots: list[Bot], cluster: Cluster, within: float = 20) -> None:
    """Every bot receives frames, and keeps receiving them."""
    await wait(lambda: all(len([r for r in b.result.remote.values() if r.video_frames > 0])
                           >= len(bots) - 1 for b in bots), within, "media between all",
               cluster)
    before = [frames(b) for b in bots]
    await wait(lambda: all(frames(b) > n + 10 for b, n in zip(bots, before, strict=True)),
               within, "media still flowing", cluster)


def ws(base: str, session_id: int) -> str:
    return base.replace("http", "ws") + f"/ws/sessions/{session_id}"


async def attendance(database_url: str, session_id: int,
                     kind: AttendanceKind | None = None) -> list[AttendanceEvent]:
    """The session's attendance events (of one kind), in the order they were written."""
    engine = create_engine(database_url)
    try:
        async with session_factory(engine, TEST_KEYS)() as db:
            query = select(AttendanceEvent).where(AttendanceEvent.session_id == session_id)
            if kind is not None:
                query = query.where(AttendanceEvent.kind == kind)
            return list((await db.execute(query.order_by(AttendanceEvent.id))).scalars())
    finally:
        await engine.dispose()


async def set_waiting_room(database_url: str, session_id: int) -> None:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine, TEST_KEYS)() as db:
            session = await db.get(Session, session_id)
            assert session is not None
            session.waiting_room = WaitingRoomPolicy.THERAPIST_ADMITS
            await db.commit()
    finally:
        await engine.dispose()
