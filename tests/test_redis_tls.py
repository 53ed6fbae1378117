"""Redis as a component that carries PHI: TLS with a CA of the install's, an ACL user and
password. Two real nodes carry a room with media through a ``redis-server`` that accepts only
that (``tests.cluster.PrivateRedis``); with a wrong password ``vio doctor`` and ``vio serve``
say what is wrong. The settings' own problems (plain text off loopback, no password) are named
without reaching anything."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from tests.cluster import (
    VIO,
    Bots,
    Cluster,
    PrivateRedis,
    TlsFiles,
    free_port,
    make_tls,
    media_flows,
    people,
    wait,
    ws,
)
from tests.conftest import seconds
from vio.media import announce_host_addresses
from vio.nodes.connection import config_problems
from vio.settings import Settings

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

PASSWORD = secrets.token_urlsafe(24)
PREFIX = "vio"  # the ACL below lets the user have its keys and channels, and nothing else


@pytest.fixture(autouse=True)
def loopback_only():
    announce_host_addresses(["127.0.0.1"])


@pytest.fixture
def tls(tmp_path) -> TlsFiles:
    return make_tls(tmp_path)


@pytest.fixture
def secured_redis(tmp_path, tls) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, tls=tls, user="vio", password=PASSWORD,
                          keys=f"{PREFIX}:*")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_two_nodes_carry_a_room_through_redis_with_tls_and_a_password(
        tmp_path, postgres_url, secured_redis):
    cluster = Cluster(tmp_path, postgres_url, secured_redis.url,
                      redis_client=secured_redis.client, prefix=PREFIX, **secured_redis.env())
    bots = Bots()
    try:
        b = await cluster.start("b")
        session_id, therapist_cookie, (dana,) = await people(cluster, b.base, 1)
        therapist = bots.start(ws(b.base, session_id), therapist_cookie, admit_all=True)
        await wait(lambda: therapist.result.admitted, 20, "therapist in", cluster)
        assert await cluster.owner_pid(session_id) == b.process.pid
        a = await cluster.start("a")
        patient = bots.start(ws(a.base, session_id), dana)  # relayed over TLS to B
        await media_flows([therapist, patient], cluster)
        assert await cluster.owner_pid(session_id) == b.process.pid
        assert len(await cluster.node_ids()) == 2
    finally:
        await bots.close()
        cluster.close()


def _env(tmp_path, postgres_url, redis: PrivateRedis, **changes: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("VIO_")}
    return {**env, "VIO_DATABASE_URL": postgres_url, "VIO_SECRET_KEY": secrets.token_hex(32),
            "VIO_DATA_DIR": str(tmp_path), "VIO_REDIS_PREFIX": PREFIX, **redis.env(), **changes}


def _doctor(env: dict[str, str]) -> list[dict[str, str]]:
    done = subprocess.run([VIO, "doctor", "--json"], env=env, capture_output=True, text=True,
                          timeout=seconds(60), check=False)
    return [c for c in json.loads(done.stdout) if c["part"] == "redis"]


async def test_a_wrong_password_is_named_by_the_doctor_and_at_start_up(
        tmp_path, postgres_url, secured_redis):
    right = await asyncio.to_thread(_doctor, _env(tmp_path, postgres_url, secured_redis))
    assert [c["status"] for c in right] == ["ok"], right
    assert "over TLS" in right[0]["message"]

    wrong = _env(tmp_path, postgres_url, secured_redis, VIO_REDIS_PASSWORD="not-the-password")
    found = await asyncio.to_thread(_doctor, wrong)
    assert [c["status"] for c in found] == ["problem"], found
    assert "refused the user name or password" in found[0]["message"]
    assert "not-the-password" not in json.dumps(found)

    port = free_port()
    started = await asyncio.to_thread(
        subprocess.run, [VIO, "serve", "--port", str(port)],
        env={**wrong, "VIO_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}, cwd=tmp_path,
        capture_output=True, text=True, timeout=seconds(60), check=False)
    assert started.returncode == 2
    assert "refused the user name or password" in started.stderr
    assert "not-the-password" not in started.stderr + started.stdout

    untrusted = _env(tmp_path, postgres_url, secured_redis, VIO_REDIS_CA_FILE="")
    found = await asyncio.to_thread(_doctor, untrusted)
    assert [c["status"] for c in found] == ["problem"], found
    assert "does not trust its certificate" in found[0]["message"]


def test_plain_text_off_loopback_and_no_password_are_problems():
    def problems(**env: str) -> list[str]:
        return config_problems(Settings.from_env({"VIO_SECRET_KEY": "k", **env}))

    assert problems() == []
    remote = problems(VIO_REDIS_URL="redis://10.0.0.5:6379/0")
    assert len(remote) == 2
    assert "plain redis://" in remote[0] and "without a password" in remote[1]
    assert problems(VIO_REDIS_URL="redis://127.0.0.1:6379/0", VIO_REDIS_PASSWORD="pw") == []
    assert problems(VIO_REDIS_URL="rediss://redis.internal:6380/0",
                    VIO_REDIS_USERNAME="vio", VIO_REDIS_PASSWORD="pw") == []
    url_password = problems(VIO_REDIS_URL="rediss://vio:pw-in-url@redis.internal:6380/0")
    assert url_password == []
    local = problems(VIO_REDIS_URL="redis://localhost:6379/0")
    assert len(local) == 1 and "without a password" in local[0]
