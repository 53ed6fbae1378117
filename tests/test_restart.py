"""A room outlives its process: SIGKILL mid-session, restart, and everyone's seat is kept.

A real ``vio serve`` process on SQLite (the embedded default, no Redis), killed with SIGKILL
while a therapist and three patients are in a locked room with one patient removed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from tests.conftest import TEST_KEYS, seconds
from tests.test_attendance_live import _healthy
from tests.wsclient import Client
from vio.attendance.records import session_record
from vio.bot import check_in_at_home, sign_in
from vio.db import create_engine, session_factory
from vio.models import Program, Session

VIO = str(Path(sys.executable).with_name("vio"))
HEARTBEAT_SECONDS = 1.0


def _serve(directory: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([VIO, "serve", "--demo", "--port", str(port)], cwd=directory,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_sigkill_and_restart_keep_every_seat(tmp_path):
    from tests.browser.harness import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    database = tmp_path / "vio.sqlite3"
    env = {**os.environ, "VIO_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
           "VIO_ICE_ANNOUNCE_ADDRESSES": "127.0.0.1", "VIO_PUBLIC_BASE_URL": base,
           "VIO_SECRET_KEY": "restart-test", "VIO_ROOM_TICK_SECONDS": "0.2",
           "VIO_ATTENDANCE_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS)}
    server = _serve(tmp_path, port, env)
    clients: list[Client] = []
    try:
        await asyncio.to_thread(_healthy, base, seconds(30))
        links = json.loads((await asyncio.to_thread(
            subprocess.run, [VIO, "demo-links", "--json"], cwd=tmp_path, env=env, check=True,
            capture_output=True, text=True)).stdout)
        session_id = next(s["id"] for s in links["sessions"] if s["kind"] == "group")
        with sqlite3.connect(database) as conn:  # patients wait to be admitted
            conn.execute("UPDATE sessions SET waiting_room = 'therapist-admits' WHERE id = ?",
                         (session_id,))
        url = f"ws://127.0.0.1:{port}/ws/sessions/{session_id}"
        staff = await asyncio.to_thread(sign_in, links["therapist"]["login"],
                                        links["therapist"]["email"],
                                        links["therapist"]["password"])
        rostered = [p for p in links["patients"] if p["on_roster"]]
        cookies = []
        for patient in rostered[:5]:
            web = await asyncio.to_thread(sign_in, patient["link"])
            await asyncio.to_thread(check_in_at_home, web, session_id)
            cookies.append(web.cookie)
        three, removed, newcomer = cookies[:3], cookies[3], cookies[4]

        therapist = Client(url, staff.cookie)
        clients.append(therapist)
        await therapist.connect()
        assert (await therapist.join())["type"] == "welcome"
        for cookie in [*three, removed]:
            patient = Client(url, cookie)
            clients.append(patient)
            await patient.connect()
            assert (await patient.join())["type"] == "waiting"
        await therapist.send(type="admit-all")
        for patient in clients[1:]:
            await patient.expect("welcome", within=10)
        await therapist.send(type="remove", participant_id=clients[4].messages[-1]["you"]["id"],
                             reason="asked to step out")
        assert (await clients[4].expect("refused"))["code"] == "removed"
        await therapist.send(type="lock")
        await therapist.expect("room-state", locked=True)
        await asyncio.sleep(HEARTBEAT_SECONDS * 2.5)

        killed_at = datetime.now(UTC)
        server.send_signal(signal.SIGKILL)
        server.wait(seconds(10))
        for client in clients:
            await client.closed(within=10)
        server = _serve(tmp_path, port, env)  # the same records, served again
        await asyncio.to_thread(_healthy, base, seconds(30))

        back = []
        for cookie in [staff.cookie, *three]:
            client = Client(url, cookie)
            clients.append(client)
            await client.connect()
            answer = await client.join()
            assert answer["type"] == "welcome", answer  # no waiting room: the seat was kept
            back.append(client)
        rejoined_at = datetime.now(UTC)
        for cookie, code in ((removed, "removed"), (newcomer, "room-locked")):
            client = Client(url, cookie)
            clients.append(client)
            await client.connect()
            answer = await client.join()
            assert (answer["type"], answer["code"]) == ("refused", code)
        await back[0].send(type="end")
        for client in back:
            await client.expect("ended", within=10)
    finally:
        for client in clients:
            await client.close()
        if server.poll() is None:
            server.terminate()
            server.wait(seconds(10))

    # Attendance: one stretch before the kill and one after, apart by at most the time the
    # process was down plus one heartbeat.
    allowed_gap = (rejoined_at - killed_at) + timedelta(seconds=HEARTBEAT_SECONDS + 1)
    engine = create_engine(env["VIO_DATABASE_URL"])
    try:
        async with session_factory(engine, TEST_KEYS)() as db:
            session = await db.get(Session, session_id)
            program = await db.get(Program, session.program_id)
            record = await session_record(db, session, program)
            attended = [p for p in record.patients if p.attendance.intervals]
            assert len(attended) == 4  # the three, and the one removed before the kill
            kept = [p for p in attended if len(p.attendance.intervals) == 2]
            assert len(kept) == 3
            for patient in kept:
                first, second = patient.attendance.intervals
                assert second.start - first.end <= allowed_gap
            assert (await db.execute(select(Session.status).where(
                Session.id == session_id))).scalar_one().value == "ended"
    finally:
        await engine.dispose()
