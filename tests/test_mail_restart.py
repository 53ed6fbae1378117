"""A message outlives its process: a real ``vio serve --demo`` (SQLite, no Redis) is killed with
SIGKILL while it waits for the relay's reply to its first message, with the rest queued behind
it; after a restart every message is delivered, and the only repeat is that first message,
under its own Message-ID.

The relay has taken the first message (the worst case: vio never heard the 250), so the
restarted server, which cannot know, sends it again once its claim has lapsed.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import seconds
from tests.smtp_relay import Relay, until
from tests.test_attendance_live import _healthy
from tests.test_mail_words import assert_discreet
from vio.demo import FAMILY, NOT_ON_ROSTER, ROSTER, demo_address

VIO = str(Path(sys.executable).with_name("vio"))
CLAIM_SECONDS = 6
SMTP_TIMEOUT_SECONDS = 3


def _serve(directory: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([VIO, "serve", "--demo", "--port", str(port)], cwd=directory,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _outbox(database: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(database) as conn:
        return list(conn.execute(
            "SELECT message_id, to_address, status, kind FROM outbox_messages ORDER BY id"))


async def test_sigkill_between_queueing_and_sending_loses_and_doubles_nothing(tmp_path):
    from tests.browser.harness import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    database = tmp_path / "vio.sqlite3"
    with Relay(tmp_path / "relay") as relay:
        relay.mailbox.hold = threading.Event()
        env = {**os.environ, "VIO_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
               "VIO_PUBLIC_BASE_URL": base, "VIO_SECRET_KEY": "mail-restart-test",
               "VIO_ICE_ANNOUNCE_ADDRESSES": "127.0.0.1", "VIO_SMTP_URL": relay.url,
               "VIO_SMTP_CA_FILE": relay.ca_file, "VIO_MAIL_FROM": "appointments@example.org",
               "VIO_MAIL_POLL_SECONDS": "0.2", "VIO_MAIL_CLAIM_SECONDS": str(CLAIM_SECONDS),
               "VIO_SMTP_TIMEOUT_SECONDS": str(SMTP_TIMEOUT_SECONDS)}
        server = _serve(tmp_path, port, env)
        try:
            await asyncio.to_thread(_healthy, base, seconds(30))
            arrived = await asyncio.to_thread(relay.mailbox.data_arrived.wait, seconds(30))
            assert arrived, "no message reached the relay"
            server.send_signal(signal.SIGKILL)  # mid-DATA, the others queued behind it
            server.wait(seconds(10))
            before = _outbox(database)
            assert len(before) >= 7  # six rostered patients' "room is open", one reminder
            assert [row[2] for row in before].count("queued") == len(before)
            assert len(relay.mailbox.messages()) == 1  # the relay has it; vio never heard
            relay.mailbox.hold.set()

            server = _serve(tmp_path, port, env)  # the same records, served again
            await asyncio.to_thread(_healthy, base, seconds(30))
            await until(lambda: all(row[2] == "sent" for row in _outbox(database)),
                        within=CLAIM_SECONDS + 30, what="every message to be sent")
        finally:
            if server.poll() is None:
                server.terminate()
                server.wait(seconds(10))
        received = relay.mailbox.messages()

    after = _outbox(database)
    assert [row[0] for row in after] == [row[0] for row in before]  # nothing new was queued
    ids = collections.Counter(r.message_id for r in received)
    assert set(ids) == {row[0] for row in after}, "a message was lost, or sent under a new id"
    assert sorted(ids.values()) == [1] * (len(after) - 1) + [2]  # the held one, once more
    by_message = {row[0]: row for row in after}
    for r in received:
        assert r.envelope_to == [by_message[r.message_id][1]]
    rostered = {demo_address(name) for name in ROSTER}
    room_open = {row[1] for row in after if row[3] == "room-open"}
    assert room_open == rostered  # each rostered patient once; nobody else
    assert demo_address(NOT_ON_ROSTER) not in {row[1] for row in after}
    for r in received:
        to = r.envelope_to[0]
        assert_discreet(r.message, tuple(n for n in (*ROSTER, NOT_ON_ROSTER, FAMILY["name"])
                                         if demo_address(n) != to))
