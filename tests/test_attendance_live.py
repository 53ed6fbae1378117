"""Attendance from a real room: a scripted session to the second, and a crash mid-session."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import TEST_KEYS, LiveServer, seconds
from tests.test_signaling import Room, patient_cookie, wait_for
from vio.attendance.records import session_record
from vio.bot import Bot, check_in_at_home, sign_in
from vio.clock import ManualClock
from vio.db import create_engine, session_factory
from vio.demo import ROSTER
from vio.media import announce_host_addresses
from vio.models import AttendanceEvent, AttendanceKind, Program, Session, SessionKind

T0 = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def loopback_only():
    announce_host_addresses(["127.0.0.1"])


async def _events(db, kind: AttendanceKind, **detail) -> list[AttendanceEvent]:
    await db.commit()  # end the read transaction, to see what the server wrote since
    live = (await db.execute(select(Session.id).where(Session.kind == SessionKind.GROUP)
                             .order_by(Session.starts_at.desc()))).scalars().first()
    rows = (await db.execute(select(AttendanceEvent).where(
        AttendanceEvent.kind == kind, AttendanceEvent.session_id == live)
        .order_by(AttendanceEvent.id))).scalars().all()
    return [r for r in rows if r.role == "patient"
            and all(r.detail.get(k) == v for k, v in detail.items())]


async def _until(db, within: float, what: str, kind: AttendanceKind, count: int, **detail):
    deadline = time.monotonic() + seconds(within)
    while len(await _events(db, kind, **detail)) < count:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_scripted_session_matches_to_the_second(live_settings, engine, demo, db):
    clock = ManualClock(T0)
    settings = dataclasses.replace(live_settings, reconnect_grace_seconds=60)
    with LiveServer(settings, clock) as server:
        session = (await db.execute(select(Session).where(Session.kind == SessionKind.GROUP))
                   ).scalars().first()
        room = Room(server, session.id)
        cookie = await patient_cookie(db, settings, clock, server, ROSTER[0])

        dana = room.start(cookie)  # joins at 18:00:00
        await _until(db, 20, "audio and video arriving", AttendanceKind.MEDIA, 1,
                     audio=True, video=True)
        clock.advance(timedelta(minutes=10))  # 18:10 camera off
        dana.set_camera(False)
        await _until(db, 20, "video stopping", AttendanceKind.MEDIA, 1, audio=True, video=False)
        clock.advance(timedelta(minutes=5))  # 18:15 the connection drops
        await dana._ws.close(code=4000)
        await room.tasks.pop(dana)
        await _until(db, 10, "the drop", AttendanceKind.DROPPED, 1)
        clock.advance(timedelta(minutes=2))  # 18:17 back, camera on
        dana = room.start(cookie)
        await _until(db, 20, "media again", AttendanceKind.MEDIA, 2, audio=True, video=True)
        clock.advance(timedelta(minutes=20))  # 18:37 leaves
        await room.stop(dana)
        await _until(db, 10, "the leave", AttendanceKind.LEFT, 1)

    program = await db.get(Program, session.program_id)
    record = await session_record(db, session, program)
    dana_record = next(p for p in record.patients if p.attendance.intervals)
    attendance = dana_record.attendance
    assert [(i.start, i.end) for i in attendance.intervals] == [
        (T0, T0 + timedelta(minutes=15)),
        (T0 + timedelta(minutes=17), T0 + timedelta(minutes=37))]
    assert attendance.attended_seconds == 35 * 60
    assert attendance.audio_video_seconds == 30 * 60
    assert attendance.audio_only_seconds == 5 * 60
    others = [p for p in record.patients if p is not dana_record]
    assert all(p.attendance.attended_seconds == 0 for p in others)


def _serve(tmp: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(Path(sys.executable).with_name("vio")), "serve", "--demo",
                             "--port", str(port)], cwd=tmp, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _healthy(base: str, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)


async def test_crash_loses_no_acknowledged_event(tmp_path):
    from tests.browser.harness import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    heartbeat = 1.0
    env = {**os.environ, "VIO_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/vio.sqlite3",
           "VIO_ICE_ANNOUNCE_ADDRESSES": "127.0.0.1", "VIO_PUBLIC_BASE_URL": base,
           "VIO_SECRET_KEY": "crash-test", "VIO_ATTENDANCE_HEARTBEAT_SECONDS": str(heartbeat),
           "VIO_ROOM_TICK_SECONDS": "0.2"}
    server = _serve(tmp_path, port, env)
    try:
        await asyncio.to_thread(_healthy, base, seconds(30))
        links = json.loads((await asyncio.to_thread(
            subprocess.run, [str(Path(sys.executable).with_name("vio")), "demo-links", "--json"],
            cwd=tmp_path, env=env, check=True, capture_output=True, text=True)).stdout)
        session_id = next(s["id"] for s in links["sessions"] if s["kind"] == "group")
        bots = []
        for patient in links["patients"][:2]:
            web = await asyncio.to_thread(sign_in, patient["link"])
            await asyncio.to_thread(check_in_at_home, web, session_id)
            bots.append(Bot(f"ws://127.0.0.1:{port}/ws/sessions/{session_id}", web.cookie,
                            reconnect=False))
        tasks = [asyncio.create_task(b.run(seconds(60))) for b in bots]
        await wait_for(lambda: all(b.result.admitted for b in bots), seconds(20), "welcome")
        acknowledged = {b.participant_id for b in bots}
        await wait_for(lambda: all(b.first_video.is_set() for b in bots), seconds(20), "media")
        await asyncio.sleep(heartbeat * 2.5)
        killed_at = datetime.now(UTC)
        server.send_signal(signal.SIGKILL)
        server.wait(seconds(10))
        for task in tasks:  # the bots notice the server is gone
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, seconds(10))
    finally:
        if server.poll() is None:
            server.kill()

    engine = create_engine(env["VIO_DATABASE_URL"])
    try:
        async with session_factory(engine, TEST_KEYS)() as db:
            admitted = (await db.execute(select(AttendanceEvent).where(
                AttendanceEvent.kind == AttendanceKind.ADMITTED))).scalars().all()
            assert acknowledged <= {e.connection for e in admitted}
            beats = (await db.execute(select(AttendanceEvent).where(
                AttendanceEvent.kind == AttendanceKind.HEARTBEAT))).scalars().all()
            assert beats and acknowledged <= set(beats[-1].detail["present"])
            session = await db.get(Session, session_id)
            program = await db.get(Program, session.program_id)
            record = await session_record(db, session, program)
            for patient in record.patients:
                if not patient.attendance.intervals:
                    continue
                end = patient.attendance.intervals[-1].end
                assert end == beats[-1].at
                assert killed_at - end <= timedelta(seconds=heartbeat + 1)
                assert patient.attendance.attended_seconds > 0
            assert len([p for p in record.patients if p.attendance.intervals]) == 2
    finally:
        await engine.dispose()

    restarted = _serve(tmp_path, port, env)  # the same records, served again
    try:
        await asyncio.to_thread(_healthy, base, seconds(30))
    finally:
        restarted.terminate()
        restarted.wait(seconds(10))
