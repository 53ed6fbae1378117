"""Signaling at scale: K WebSocket clients in R rooms against the real app.

The app (``vio.app.create_app``) runs under uvicorn in its own process, on SQLite in a
temporary directory, seeded here with one program, R groups (a therapist and a roster of
K / R - 1 patients each, with their consents), one live session per group that patients
enter directly, and every patient's check-in for it. Each client signs in with a room ticket
(signed as the room page signs it, ``vio.pages.common.room_ticket``), sends ``join`` and waits
for ``welcome``; it never answers the server's offers. The server still sets up each
participant's media (``MediaRouter.add_participant``: a peer connection and an offer), unless
``--media none`` replaces the router with one that does nothing, to see signaling alone.

Measured: how fast the clients get in (joins per second, time to ``welcome`` p50/p99), the
server's CPU and memory per connection, and the round trip of a moderator command: a therapist
sends ``mute`` for a patient, the patient receives ``moderated`` (p50/p99, one at a time per
client process).

    .venv/bin/python bench/signaling.py            # 1,000 clients in 100 rooms
    .venv/bin/python bench/signaling.py --quick    # 100 clients in 10 rooms
    .venv/bin/python bench/signaling.py --media both   # with and without media setup
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import harness as h

from vio.keys import InstallKeys

if TYPE_CHECKING:
    from vio.client import SignalingClient

SECRET = "signaling-benchmark-secret"
OPEN_TIMEOUT_S = 30.0
MESSAGE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
KEEPALIVE_S = 15.0
"""Clients send the protocol's ``ping`` this often (the server drops silence after 45 s)."""
CONNECT_BUDGET_S = 300.0
SCRIPT = Path(__file__).resolve()

# The benchmark's own install keys (its databases are thrown away).
BENCH_KEYS = InstallKeys.derive("benchmark")


@dataclass(frozen=True)
class Plan:
    clients: int
    rooms: int
    mutes: int
    workers: int
    concurrency: int


FULL = Plan(clients=1000, rooms=100, mutes=400, workers=2, concurrency=100)
QUICK = Plan(clients=100, rooms=10, mutes=100, workers=2, concurrency=50)
SMOKE = Plan(clients=20, rooms=2, mutes=20, workers=1, concurrency=20)


# --- seeding (driver) --------------------------------------------------------------------------


async def seed(database_url: str, rooms: int, per_room: int) -> list[dict[str, Any]]:
    """The program, groups, rosters, consents, live sessions and check-ins; one entry per room."""
    from vio.db import create_engine, migrate, session_factory
    from vio.identity import SignInRules, start_sign_in, ticket_for_sign_in
    from vio.models import (
        AgeGroup,
        AttendanceEvent,
        AttendanceKind,
        Consent,
        ConsentKind,
        Group,
        GroupTherapist,
        LevelOfCare,
        Patient,
        Program,
        RosterMembership,
        Session,
        SessionKind,
        SessionTherapist,
        SignInKind,
        StaffRole,
        StaffUser,
        WaitingRoomPolicy,
    )
    from vio.security import Signer, hash_password

    engine = create_engine(database_url)
    await migrate(engine, BENCH_KEYS)
    now = datetime.now(UTC).replace(microsecond=0)
    today = now.date()
    password = hash_password("not used: clients sign in with room tickets")
    signer = Signer(SECRET)
    rules = SignInRules(idle=timedelta(hours=12), lifetime=timedelta(hours=12),
                        second_factor=timedelta(minutes=5))
    plan: list[dict[str, Any]] = []
    try:
        async with session_factory(engine, BENCH_KEYS)() as db:
            program = Program(name="Benchmark program", timezone="America/Chicago")
            db.add(program)
            await db.flush()
            staff = [StaffUser(program_id=program.id, name=f"Therapist {r}",
                               email=f"therapist{r}@bench.vio", role=StaffRole.THERAPIST,
                               password_hash=password) for r in range(rooms)]
            groups = [Group(program_id=program.id, name=f"Group {r}") for r in range(rooms)]
            patients = [[Patient(program_id=program.id, legal_name=f"Patient {r}-{i} Bench",
                                 level_of_care=LevelOfCare.IOP, age_group=AgeGroup.ADULT,
                                 enrolled_on=today - timedelta(days=7),
                                 enrollment_ends_on=today + timedelta(days=60),
                                 usual_location="Home")
                         for i in range(per_room - 1)] for r in range(rooms)]
            db.add_all([*staff, *groups, *(p for room in patients for p in room)])
            await db.flush()
            sessions = []
            for r in range(rooms):
                db.add(GroupTherapist(group_id=groups[r].id, staff_id=staff[r].id))
                for patient in patients[r]:
                    db.add(RosterMembership(group_id=groups[r].id, patient_id=patient.id,
                                            joined_on=today - timedelta(days=7)))
                    for kind in (ConsentKind.TELEHEALTH, ConsentKind.GROUP_PARTICIPATION):
                        db.add(Consent(patient_id=patient.id, kind=kind,
                                       granted_at=now - timedelta(days=7),
                                       expires_at=now + timedelta(days=365)))
                sessions.append(Session(
                    program_id=program.id, title=f"Group {r}", kind=SessionKind.GROUP,
                    group_id=groups[r].id, starts_at=now - timedelta(minutes=5),
                    duration_minutes=180, timezone=program.timezone, billing_code="90853",
                    waiting_room=WaitingRoomPolicy.OPEN))
            db.add_all(sessions)
            await db.flush()
            for r, session in enumerate(sessions):
                db.add(SessionTherapist(session_id=session.id, staff_id=staff[r].id))
                for patient in patients[r]:
                    db.add(AttendanceEvent(
                        session_id=session.id, at=now, kind=AttendanceKind.CHECKED_IN,
                        person=f"patient:{patient.id}", role="patient", patient_id=patient.id,
                        detail={"location": "home", "address": "Home"}))

                async def ticket(kind: SignInKind, session_id: int = session.id,
                                 **person: int) -> str:
                    """A room ticket bound to a sign-in session made for this person."""
                    signed_in = await start_sign_in(db, kind, now, rules, **person)
                    return ticket_for_sign_in(signer, signed_in.row.id, session_id)

                plan.append({"session_id": session.id,
                             "therapist": await ticket(SignInKind.STAFF, staff_id=staff[r].id),
                             "patients": [await ticket(SignInKind.PATIENT, patient_id=p.id)
                                          for p in patients[r]]})
            await db.commit()
    finally:
        await engine.dispose()
    return plan


# --- the server child --------------------------------------------------------------------------


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def server_main(config: dict[str, Any]) -> None:
    import uvicorn

    from vio.app import create_app
    from vio.media import MediaError, MediaRouter
    from vio.settings import Settings

    raise_file_limit()
    settings = Settings.from_env(
        {}, database_url=config["database_url"], secret_key=SECRET,
        ice_announce_addresses=(h.HOST,), login_failure_delay_ms=0,
        room_capacity=max(16, int(config["per_room"])))
    app = create_app(settings)
    if config["media"] == "none":

        class NoMedia(MediaRouter):
            """The room's media router minus the media: no peer connection, no offer."""

            async def add_participant(self, pid: str, *, is_therapist: bool,
                                      on_offer: Any) -> None:
                return None

            async def accept_answer(self, pid: str, sdp: str) -> None:
                raise MediaError("this benchmark runs without media")

        app.state.rooms.media_factory = NoMedia
    server = uvicorn.Server(uvicorn.Config(
        app, host=h.HOST, port=0, log_level="warning", lifespan="on", backlog=4096,
        ws_max_size=settings.ws_max_message_bytes * 4))
    serving = asyncio.create_task(server.serve())
    if not await h.poll(lambda: server.started or serving.done(), 30, 0.05) or serving.done():
        raise RuntimeError("uvicorn did not start")
    port = server.servers[0].sockets[0].getsockname()[1]

    async def handle(cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "port":
            return port
        if cmd == "mark":
            # A live room holds its Room (a baseline's vio may predate that: the room itself).
            rooms = [getattr(r, "room", r) for r in app.state.rooms.rooms.values()]
            return {"t": time.monotonic(), "cpu": h.cpu_seconds(), "rss_mib": rss_mib(),
                    "rooms": len(rooms), "participants": sum(len(r.participants) for r in rooms)}
        raise ValueError(f"unknown command {cmd!r}")

    try:
        await h.serve_commands(handle)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 30)


# --- the clients child -------------------------------------------------------------------------


@dataclass(eq=False)
class Client:
    url: str
    pid: str | None = None
    connected_in: float | None = None
    refusal: str | None = None
    ws: SignalingClient | None = None
    moderated: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None
    offers: int = 0
    off_loopback: int = 0

    async def connect(self) -> None:
        # Imported here: the server child may run a baseline vio that predates vio.client.
        from vio.client import SignalingClient

        started = time.monotonic()
        self.ws = SignalingClient(self.url, open_timeout=OPEN_TIMEOUT_S,
                                  close_timeout=CLOSE_TIMEOUT_S, ping_interval=None,
                                  max_size=1 << 22)
        await self.ws.connect()
        await self.ws.send(type="join", v=1)
        msg = await self.ws.expect("welcome", "refused", within=MESSAGE_TIMEOUT_S)
        if msg["type"] == "refused":
            self.refusal = msg["code"]
            return
        self.pid = msg["you"]["id"]
        self.connected_in = time.monotonic() - started
        self.reader = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws: SignalingClient) -> None:
        async for msg in ws.incoming():
            if msg["type"] == "moderated":
                self.moderated.set()
            elif msg["type"] == "offer":
                self.offers += 1
                try:
                    h.check_loopback(msg["sdp"])
                except RuntimeError:
                    self.off_loopback += 1

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(**msg)

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.send({"type": "leave"})
                await asyncio.wait_for(self.ws.close(), CLOSE_TIMEOUT_S)
        if self.reader is not None:
            self.reader.cancel()


async def clients_main(config: dict[str, Any]) -> None:
    raise_file_limit()
    base = config["ws_base"]
    rooms = [(Client(f"{base}/ws/sessions/{r['session_id']}?ticket={r['therapist']}"),
              [Client(f"{base}/ws/sessions/{r['session_id']}?ticket={t}") for t in r["patients"]])
             for r in config["rooms"]]
    everyone = [c for therapist, patients in rooms for c in (therapist, *patients)]
    failures: dict[str, int] = {}

    async def keepalive() -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            for client in everyone:
                if client.pid is not None:
                    with contextlib.suppress(Exception):
                        await client.send({"type": "ping"})

    async def connect_all(concurrency: int) -> dict[str, Any]:
        gate = asyncio.Semaphore(concurrency)

        async def one(client: Client) -> None:
            async with gate:
                try:
                    await client.connect()
                except Exception as exc:
                    key = type(exc).__name__
                    failures[key] = failures.get(key, 0) + 1
                if client.refusal is not None:
                    failures[client.refusal] = failures.get(client.refusal, 0) + 1

        started = time.monotonic()
        therapists = [t for t, _ in rooms]
        await asyncio.gather(*(one(c) for c in therapists))
        await asyncio.gather(*(one(c) for _, patients in rooms for c in patients))
        return {"started": started, "finished": time.monotonic(),
                "connected": sum(1 for c in everyone if c.pid is not None),
                "times": [c.connected_in for c in everyone if c.connected_in is not None],
                "failures": failures}

    async def mute_round_trips(samples: int) -> list[float]:
        pairs = [(t, p) for t, patients in rooms for p in patients
                 if t.pid is not None and p.pid is not None]
        random.Random(1).shuffle(pairs)
        times = []
        for i in range(min(samples, len(pairs) * 4)):
            therapist, patient = pairs[i % len(pairs)]
            patient.moderated.clear()
            started = time.monotonic()
            await therapist.send({"type": "mute", "participant_id": patient.pid})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(patient.moderated.wait(), MESSAGE_TIMEOUT_S)
                times.append(time.monotonic() - started)
        return times

    pinger = asyncio.create_task(keepalive())

    async def handle(cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "connect":
            return await connect_all(int(args["concurrency"]))
        if cmd == "mute":
            return await mute_round_trips(int(args["samples"]))
        if cmd == "offers":
            return {"offers": sum(c.offers for c in everyone),
                    "off_loopback": sum(c.off_loopback for c in everyone)}
        raise ValueError(f"unknown command {cmd!r}")

    try:
        await h.serve_commands(handle)
    finally:
        pinger.cancel()
        await asyncio.gather(*(c.close() for c in everyone), return_exceptions=True)


# --- driver ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    media: str
    clients: int
    rooms: int
    connected: int
    seconds: float
    times: list[float]
    mutes: list[float]
    cpu_ms_per_join: float
    rss_mib_per_join: float
    failures: dict[str, int]
    offers: int
    off_loopback: int

    @property
    def rate(self) -> float:
        return self.connected / self.seconds if self.seconds else float("nan")


async def run(plan: Plan, media: str, directory: Path, baseline: str | None = None) -> Result:
    label = media if baseline is None else f"{media} baseline"
    per_room = plan.clients // plan.rooms
    database = directory / f"vio-{label.replace(' ', '-')}.sqlite3"
    rooms = await seed(f"sqlite+aiosqlite:///{database}", plan.rooms, per_room)
    server = await h.Child.start(SCRIPT, "server", {
        "database_url": f"sqlite+aiosqlite:///{database}", "media": media,
        "per_room": per_room, "name": f"app-{media}", "uvloop": True}, name=f"app-{media}",
        pythonpath=baseline)
    children: list[h.Child] = [server]
    try:
        port = await server.call("port")
        shares = [rooms[i::plan.workers] for i in range(plan.workers)]
        clients = [await h.Child.start(SCRIPT, "clients", {
            "ws_base": f"ws://{h.HOST}:{port}", "rooms": share, "name": f"clients-{i}"},
            name=f"clients-{i}") for i, share in enumerate(shares) if share]
        children += clients
        before = await server.call("mark")
        joined = await asyncio.gather(*(c.call("connect", within=CONNECT_BUDGET_S,
                                                concurrency=plan.concurrency // len(clients))
                                        for c in clients))
        after = await server.call("mark")
        per_client = max(1, plan.mutes // len(clients))
        mutes = [t for part in await asyncio.gather(*(c.call("mute", samples=per_client)
                                                      for c in clients)) for t in part]
        offers = await asyncio.gather(*(c.call("offers") for c in clients))
        connected = sum(j["connected"] for j in joined)
        failures: dict[str, int] = {}
        for j in joined:
            for key, count in j["failures"].items():
                failures[key] = failures.get(key, 0) + count
        print(f"  media={label}: {connected}/{plan.clients} in {after['participants']} "
              f"participants over {after['rooms']} rooms", file=sys.stderr, flush=True)
        return Result(
            media=label, clients=plan.clients, rooms=plan.rooms, connected=connected,
            seconds=max(j["finished"] for j in joined) - min(j["started"] for j in joined),
            times=[t for j in joined for t in j["times"]], mutes=mutes,
            cpu_ms_per_join=1000 * (after["cpu"] - before["cpu"]) / max(1, connected),
            rss_mib_per_join=(after["rss_mib"] - before["rss_mib"]) / max(1, connected),
            failures=failures, offers=sum(o["offers"] for o in offers),
            off_loopback=sum(o["off_loopback"] for o in offers))
    finally:
        await h.close_all(reversed(children))


def report(results: list[Result], plan: Plan, started: float, machine: str) -> None:
    print("# Signaling: WebSocket clients joining rooms of the real app")
    print(f"machine: {machine}")
    print(f"commit: {h.git_head()}; date: {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"{plan.clients} clients in {plan.rooms} rooms ({plan.clients // plan.rooms} each: "
          f"1 therapist), {plan.workers} client processes, at most {plan.concurrency} joins "
          "in flight; server on uvicorn + uvloop, SQLite\n")
    print(h.table(
        ["media", "clients", "joined", "joins/s", "welcome p50 s", "welcome p99 s",
         "server CPU ms per join", "server RSS MiB per join", "offers received",
         "mute->moderated p50 ms", "mute->moderated p99 ms", "mutes", "failures"],
        [[r.media, r.clients, r.connected, r.rate, h.percentile(r.times, 50),
          h.percentile(r.times, 99), r.cpu_ms_per_join, r.rss_mib_per_join, r.offers,
          1000 * h.percentile(r.mutes, 50), 1000 * h.percentile(r.mutes, 99), len(r.mutes),
          ", ".join(f"{k}: {v}" for k, v in sorted(r.failures.items())) or "none"]
         for r in results]))
    for r in results:
        p50, p99 = (1000 * h.percentile(r.mutes, p) for p in (50, 99))
        print(f"signaling media={r.media}: joins/s {r.rate:.1f}, mute p50 ms {p50:.2f}, "
              f"p99 ms {p99:.2f}")
    print(f"\nfinished in {time.monotonic() - started:.0f} s")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 clients in 10 rooms")
    parser.add_argument("--smoke", action="store_true", help="20 clients in 2 rooms (tests)")
    parser.add_argument("--clients", type=int)
    parser.add_argument("--rooms", type=int)
    parser.add_argument("--media", choices=["aiortc", "none", "both"], default="aiortc",
                        help="aiortc: the app as it runs; none: a media router that does "
                             "nothing; both: one after the other")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run the app from the vio package in DIR (e.g. an older "
                             "commit's, from `git archive`), after this checkout's")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.clients or args.rooms:
        plan = replace(plan, clients=args.clients or plan.clients, rooms=args.rooms or plan.rooms)
    if plan.clients // plan.rooms < 2:
        parser.error("each room needs a therapist and at least one patient")
    medias = ["aiortc", "none"] if args.media == "both" else [args.media]
    started = time.monotonic()
    machine = h.machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="vio-bench-signaling-") as tmp:
        for media in medias:
            results.append(await run(plan, media, Path(tmp)))
            if args.baseline is not None and media == "aiortc":
                results.append(await run(plan, media, Path(tmp), args.baseline))
    report(results, plan, started, machine)
    if any(r.off_loopback for r in results):
        print("an offer carried an ICE candidate off 127.0.0.1", file=sys.stderr)
        return 1
    return 0 if all(r.connected == r.clients for r in results) else 1


if __name__ == "__main__":
    if not h.child_entry({"server": server_main, "clients": clients_main}):
        raise SystemExit(asyncio.run(main()))
