"""No secret and no patient's name or whereabouts in the server's log.

A scripted session runs against the app under uvicorn in its own process, with the access log
on and the app's loggers at INFO (more than ``vio serve`` logs): patients sign in by link and
check in from an address, a family member opens an invite, staff sign in, run the room, look at
a safety card and a patient's record, export; bad links and a wrong password are tried. Then
the log is read for every link token, invite secret, room ticket, patient name and address.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from tests.conftest import TEST_KEYS, csrf_from
from tests.test_sessions import server_process, ticket_from
from tests.wsclient import Client
from vio import clinic, demo, family
from vio.bot import WebSession
from vio.db import create_engine, migrate, session_factory
from vio.models import FamilyMember, Patient, Session, SessionKind
from vio.pages.redact import redact
from vio.security import Signer

SECRET = "log-test-secret"
ADDRESS, CITY = "742 Evergreen Terrace", "Springfield"

SERVER_WITH_APP_LOGS = """
import logging, sys
import uvicorn
from vio.app import create_app
from vio.settings import Settings

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(levelname)s %(name)s %(message)s")
uvicorn.run(create_app(Settings.from_env()), host="127.0.0.1", port=int(sys.argv[1]),
            log_level="info", access_log=True, proxy_headers=True,
            forwarded_allow_ips=sys.argv[3])
"""


def test_redact_blanks_links_invites_and_tickets():
    line = ('127.0.0.1:5 - "GET /p/eyJsIjo1LCJzIjoiYWJjIn0.Zz9 HTTP/1.1" 303; '
            '"GET /i/12.secretsecretsecretsecret HTTP/1.1"; '
            '"WebSocket /ws/sessions/3?ticket=eyJzaWQiOjF9.abc&x=1" [accepted]; '
            "/login/second-factor?code=123456 /api/sessions/joinable /static/js/room.js")
    cleaned = redact(line)
    for secret in ("eyJsIjo1LCJzIjoiYWJjIn0.Zz9", "12.secretsecretsecretsecret",
                   "eyJzaWQiOjF9.abc", "123456"):
        assert secret not in cleaned
    assert "/p/[redacted]" in cleaned and "/i/[redacted]" in cleaned
    assert "ticket=[redacted]&x=1" in cleaned
    assert "/api/sessions/joinable" in cleaned and "/static/js/room.js" in cleaned


async def _seed(url: str) -> dict[str, object]:
    """The demo, live now, with links and an invite issued the way staff issue them."""
    engine = create_engine(url)
    now = datetime.now(UTC)
    try:
        await migrate(engine, TEST_KEYS)
        async with session_factory(engine, TEST_KEYS)() as db:
            people = await demo.seed(db, "America/Chicago", now)
            await db.commit()
            signer = Signer(SECRET)
            links = {}
            for name in ("Dana Reyes", "Marcus Lee"):
                patient = people.patients[name]
                links[name] = await clinic.issue_patient_link(db, signer, patient, now)
            family_session = (await db.execute(select(Session).where(
                Session.kind == SessionKind.FAMILY))).scalars().first()
            assert family_session is not None
            family_session.starts_at = now - timedelta(minutes=1)
            member = (await db.execute(select(FamilyMember))).scalars().first()
            assert member is not None
            invite = await family.issue_invite(db, family_session, member, "staff:1", now)
            group = (await db.execute(select(Session).where(
                Session.kind == SessionKind.GROUP, Session.starts_at <= now)
                .order_by(Session.starts_at.desc()))).scalars().first()
            assert group is not None
            await db.commit()
            patients = (await db.execute(select(Patient))).scalars().all()
            return {"links": links, "invite": invite, "group": group.id,
                    "family_session": family_session.id,
                    "names": [p.legal_name for p in patients]
                    + [p.display_name for p in patients] + [member.name],
                    "dana": people.patients["Dana Reyes"].id}
    finally:
        await engine.dispose()


async def test_the_server_log_holds_no_secret_and_no_patients_name_or_address(tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'vio.sqlite3'}"
    log = tmp_path / "server.log"
    env = {"VIO_DATABASE_URL": url, "VIO_SECRET_KEY": SECRET, "VIO_LOGIN_FAILURE_DELAY_MS": "0",
           "VIO_ICE_ANNOUNCE_ADDRESSES": "127.0.0.1"}
    tickets: list[str] = []
    with server_process(env, log_level="info", log=log, trusted_proxies="127.0.0.1",
                        script=SERVER_WITH_APP_LOGS) as base:
        seeded = await _seed(url)
        await asyncio.to_thread(_browse, base, seeded, tickets)
        await _room(base.replace("http://", "ws://"), seeded, tickets)
    text = log.read_text()
    assert "POST /login" in text and "/p/[redacted]" in text and "/i/[redacted]" in text, text
    assert "WebSocket" in text  # the handshakes were logged, their tickets blanked
    secrets = [*seeded["links"].values(), seeded["invite"],  # type: ignore[union-attr]
               str(seeded["invite"]).split(".", 1)[1], *tickets]
    for secret in secrets:
        assert secret not in text, "a secret reached the log"
    for name in seeded["names"]:  # type: ignore[union-attr]
        assert name not in text, f"a name reached the log: {name}"
    assert ADDRESS not in text and CITY not in text


def _browse(base: str, seeded: dict, tickets: list[str]) -> None:  # type: ignore[type-arg]
    links: dict[str, str] = seeded["links"]
    group = seeded["group"]
    dana = WebSession(base)
    assert dana.fetch(f"/p/{links['Dana Reyes']}")[0] == 303
    assert dana.post_form(f"/sessions/{group}/check-in", {
        "location": "other", "address": ADDRESS, "city": CITY, "state": "IL"}) == 303
    status, page = dana.fetch(f"/sessions/{group}/room")
    assert status == 200
    tickets.append(ticket_from(page))
    seeded["dana_web"] = dana
    marcus = WebSession(base)
    assert marcus.fetch(f"/p/{links['Marcus Lee']}")[0] == 303
    assert marcus.post_form(f"/sessions/{group}/check-in", {"location": "home"}) == 303
    seeded["marcus_web"] = marcus
    # Bad links, a wrong password.
    WebSession(base).fetch(f"/p/{links['Dana Reyes'][:-4]}AAAA")
    WebSession(base).fetch("/i/99.notarealsecretnotarealsecret")
    stranger = WebSession(base)
    stranger.post_form("/login", {"email": "therapist@demo.vio", "password": "wrong guess"})
    # The family member opens the invite.
    angela = WebSession(base)
    assert angela.post_form(f"/i/{seeded['invite']}", {"name": "Angela L.", "terms": "yes"}) \
        == 303
    status, page = angela.fetch(f"/sessions/{seeded['family_session']}/room")
    assert status == 200
    tickets.append(ticket_from(page))
    seeded["angela_web"] = angela
    # Staff.
    therapist = WebSession(base)
    assert therapist.post_form("/login", {"email": "therapist@demo.vio",
                                          "password": "demo-therapist"}) == 303
    status, page = therapist.fetch(f"/sessions/{group}/room")
    tickets.append(ticket_from(page))
    seeded["therapist_web"] = therapist
    admin = WebSession(base)
    assert admin.post_form("/login", {"email": "admin@demo.vio", "password": "demo-admin"}) \
        == 303
    assert admin.fetch(f"/staff/patients/{seeded['dana']}")[0] == 200
    assert admin.fetch(f"/staff/patients/{seeded['dana']}/dosage")[0] == 200
    today = datetime.now(UTC).date()
    assert admin.fetch(f"/staff/exports/attendance.csv?from={today - timedelta(days=9)}"
                       f"&to={today}")[0] == 200
    issued = admin.post_form(f"/staff/patients/{seeded['dana']}", {"action": "issue-link"})
    assert issued == 200
    seeded["admin_web"] = admin


async def _room(ws_base: str, seeded: dict, tickets: list[str]) -> None:  # type: ignore[type-arg]
    group_url = f"{ws_base}/ws/sessions/{seeded['group']}"
    family_url = f"{ws_base}/ws/sessions/{seeded['family_session']}"
    async with Client(f"{group_url}?ticket={tickets[2]}") as therapist, \
            Client(f"{group_url}?ticket={tickets[0]}") as dana, \
            Client(group_url, seeded["marcus_web"].cookie) as marcus:
        await therapist.join()
        dana_id = (await dana.join())["you"]["id"]
        await marcus.join()
        await dana.send(type="chat", text=f"I'm at {ADDRESS} today", to="therapists")
        await therapist.send(type="safety-card", participant_id=dana_id)
        card = await therapist.expect("safety-card")
        assert card["location"]["address"] == ADDRESS
        await dana.send(type="leave")
        await marcus.send(type="leave")
    async with Client(f"{family_url}?ticket={tickets[1]}") as angela:
        assert (await angela.join())["type"] == "waiting"
        await angela.send(type="leave")
    web: WebSession = seeded["admin_web"]
    csrf = csrf_from(web.fetch("/staff")[1])
    await asyncio.to_thread(web.fetch, "/logout", {"csrf_token": csrf})
    await asyncio.sleep(0.3)  # the server writes its last lines before it stops
