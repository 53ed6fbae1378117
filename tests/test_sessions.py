"""Sign-in sessions live on the server: sign-out, link and consent revocation and account
deactivation end a copied cookie and the live room connection within two seconds; room tickets
die with the sign-in that issued them; idle sign-out for patients too; the second factor; and
the sign-in attempt counter, checked and counted in the database (across processes), with
passwords checked off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from tests.conftest import TEST_KEYS, csrf_from, seconds
from tests.test_family import _accept, issue, open_family_session
from tests.test_session_rules import Clinic, loopback_only  # noqa: F401
from tests.wsclient import Client
from vio.bot import WebSession
from vio.db import create_engine, migrate, session_factory
from vio.demo import ROSTER
from vio.models import (
    AuditEvent,
    Consent,
    ConsentKind,
    Patient,
    Program,
    Session,
    SessionKind,
    SignInSession,
    StaffRole,
    StaffUser,
)
from vio.security import hash_password, open_totp_seed

ROOT = Path(__file__).parent.parent
WITHIN = 2.0  # the issue's bound, seconds


@pytest.fixture
def place(live_server, db, live_settings, clock):
    return Clinic(live_server, db, live_settings, clock)


# --- plain HTTP with a given cookie -----------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def fetch(base: str, path: str, cookie: str | None = None,
          data: dict[str, str] | None = None, headers: dict[str, str] | None = None,
          ) -> tuple[int, str, dict[str, str]]:
    """One request as a browser holding exactly this cookie would make it."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(
        base + path, data=urllib.parse.urlencode(data).encode() if data is not None else None,
        headers={**({"Cookie": cookie} if cookie else {}), **(headers or {})})
    try:
        with opener.open(request, timeout=seconds(30)) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace"), dict(error.headers)


def ticket_from(page: str) -> str:
    match = re.search(r'<script id="room-config" type="application/json">(.*?)</script>', page,
                      re.S)
    assert match, "no room config on the page"
    ws_url = json.loads(match.group(1))["wsUrl"]
    return urllib.parse.parse_qs(urllib.parse.urlsplit(ws_url).query)["ticket"][0]


async def admin_session(server) -> WebSession:  # type: ignore[no-untyped-def]
    web = await asyncio.to_thread(WebSession, server.base_url)
    status = await asyncio.to_thread(web.post_form, "/login",
                                     {"email": "admin@demo.vio", "password": "demo-admin"})
    assert status == 303
    return web


async def ended_within(client: Client, code: str, close: int) -> float:
    started = time.monotonic()
    refused = await client.expect("refused", within=WITHIN)
    assert refused["code"] == code, refused
    assert await client.closed(within=WITHIN) == close
    return time.monotonic() - started


# --- sign-out -----------------------------------------------------------------------------------

async def test_sign_out_ends_a_copied_cookie_the_live_connection_and_the_ticket(place,
                                                                                live_server):
    session = await place.group_session()
    url = await place.url()
    web = await asyncio.to_thread(WebSession, live_server.base_url)
    assert await asyncio.to_thread(web.post_form, "/login", {
        "email": "therapist@demo.vio", "password": "demo-therapist"}) == 303
    copied = web.cookie
    status, page = await asyncio.to_thread(web.fetch, f"/sessions/{session.id}/room")
    assert status == 200
    ticket = ticket_from(page)
    async with Client(url, copied) as therapist:
        assert (await therapist.join())["type"] == "welcome"
        csrf = csrf_from((await asyncio.to_thread(web.fetch, "/staff"))[1])
        started = time.monotonic()
        status, _ = await asyncio.to_thread(web.fetch, "/logout", {"csrf_token": csrf})
        assert status == 303
        await ended_within(therapist, "signed-out", 4401)
        assert time.monotonic() - started < seconds(WITHIN)
    status, _, headers = await asyncio.to_thread(fetch, live_server.base_url, "/staff", copied)
    assert status == 303 and headers["location"].startswith("/login")
    async with Client(f"{url}?ticket={ticket}") as by_ticket:
        answer = await by_ticket.join()
        assert answer["type"] == "refused" and answer["code"] == "not-signed-in"
    audits = await place.audits("sign-out")
    assert len(audits) == 1 and audits[0].actor.startswith("staff:")


async def test_a_patients_room_ticket_is_useless_after_sign_out(place, live_server, db):
    session = await place.group_session()
    patient_cookie = await place.patient(ROSTER[0])
    status, page, _ = await asyncio.to_thread(fetch, live_server.base_url,
                                              f"/sessions/{session.id}/room", patient_cookie)
    assert status == 200
    ticket = ticket_from(page)
    url = await place.url()
    async with Client(f"{url}?ticket={ticket}") as tab:  # the ticket alone, as a tab uses it
        assert (await tab.join())["type"] == "welcome"
        _, home, _ = await asyncio.to_thread(fetch, live_server.base_url, "/me", patient_cookie)
        assert 'id="sign-out"' in home  # patients have a sign-out button
        status, _, _ = await asyncio.to_thread(fetch, live_server.base_url, "/logout",
                                               patient_cookie, {"csrf_token": csrf_from(home)})
        assert status == 303
        await ended_within(tab, "signed-out", 4401)
    async with Client(f"{url}?ticket={ticket}") as again:
        assert (await again.join())["code"] == "not-signed-in"
    status, _, headers = await asyncio.to_thread(fetch, live_server.base_url, "/me",
                                                 patient_cookie)
    assert status == 303 and headers["location"] == "/"
    rows = (await db.execute(select(SignInSession).where(
        SignInSession.kind == "patient", SignInSession.ended_at.is_not(None)))).scalars().all()
    assert [r.end_reason for r in rows] == ["signed-out"]


# --- revocations and deactivation ---------------------------------------------------------------

async def test_turning_off_a_patients_links_ends_their_sign_in_and_connection(place,
                                                                              live_server, db):
    url = await place.url()
    dana = (await db.execute(select(Patient).where(Patient.legal_name == ROSTER[0]))
            ).scalar_one()
    cookie = await place.patient(ROSTER[0])
    admin = await admin_session(live_server)
    async with Client(url, cookie) as patient:
        assert (await patient.join())["type"] == "welcome"
        started = time.monotonic()
        status = await asyncio.to_thread(admin.post_form, f"/staff/patients/{dana.id}",
                                         {"action": "revoke-links", "confirm": "yes"})
        assert status == 200
        await ended_within(patient, "signed-out", 4401)
        assert time.monotonic() - started < seconds(WITHIN)
    status, _, headers = await asyncio.to_thread(fetch, live_server.base_url, "/me", cookie)
    assert status == 303 and headers["location"] == "/"
    async with Client(url, cookie) as again:
        assert (await again.join())["code"] == "not-signed-in"


async def test_revoking_the_family_consent_ends_the_family_members_sign_in_and_connection(
        place, live_server, db, clock):
    session = await open_family_session(db, clock)
    token = await issue(db, clock)
    family = await asyncio.to_thread(_accept, live_server.base_url, token, "Angela L.")
    url = await place.url(session.id)
    consent = (await db.execute(select(Consent).where(
        Consent.kind == ConsentKind.FAMILY_DISCLOSURE))).scalar_one()
    admin = await admin_session(live_server)
    async with Client(url, family.cookie) as member:
        assert (await member.join())["type"] == "waiting"
        started = time.monotonic()
        status = await asyncio.to_thread(
            admin.post_form, f"/staff/patients/{consent.patient_id}/family",
            {"action": "revoke-consent", "consent_id": str(consent.id)})
        assert status == 303
        await ended_within(member, "consent-revoked", 4403)
        assert time.monotonic() - started < seconds(WITHIN)
    status, page, _ = await asyncio.to_thread(fetch, live_server.base_url,
                                              f"/sessions/{session.id}/room", family.cookie)
    assert status == 401 and 'data-code="not-signed-in"' in page


async def test_revoking_a_patients_telehealth_consent_ends_their_sign_in_and_connection(
        place, live_server, db):
    url = await place.url()
    dana = (await db.execute(select(Patient).where(Patient.legal_name == ROSTER[0]))
            ).scalar_one()
    consent = (await db.execute(select(Consent).where(
        Consent.patient_id == dana.id, Consent.kind == ConsentKind.TELEHEALTH))).scalar_one()
    cookie = await place.patient(ROSTER[0])
    admin = await admin_session(live_server)
    async with Client(url, cookie) as patient:
        assert (await patient.join())["type"] == "welcome"
        status = await asyncio.to_thread(
            admin.post_form, f"/staff/patients/{dana.id}/family",
            {"action": "revoke-consent", "consent_id": str(consent.id)})
        assert status == 303
        await ended_within(patient, "consent-missing", 4403)
    status, _, _ = await asyncio.to_thread(fetch, live_server.base_url, "/me", cookie)
    assert status == 303


async def test_turning_off_a_staff_account_ends_its_sign_in_and_connection(place, live_server,
                                                                           db, demo):
    url = await place.url()
    therapist_id = demo.therapist.id
    therapist_cookie = await place.staff()
    admin = await admin_session(live_server)
    async with Client(url, therapist_cookie) as therapist:
        assert (await therapist.join())["type"] == "welcome"
        started = time.monotonic()
        status = await asyncio.to_thread(admin.post_form, "/staff/team", {
            "action": "deactivate", "staff_id": str(therapist_id),
            "confirm": "yes"})
        assert status == 303
        await ended_within(therapist, "signed-out", 4401)
        assert time.monotonic() - started < seconds(WITHIN)
    status, _, _ = await asyncio.to_thread(fetch, live_server.base_url, "/staff",
                                           therapist_cookie)
    assert status == 303
    async with Client(url, therapist_cookie) as again:
        assert (await again.join())["code"] == "not-signed-in"
    deactivated = await place.audits("staff-deactivated")
    assert len(deactivated) == 1 and deactivated[0].target == f"staff:{therapist_id}"


async def test_staff_in_a_live_room_stay_signed_in_past_the_idle_limit(place, live_server,
                                                                       clock, live_settings):
    url = await place.url()
    cookie = await place.staff()
    idle = timedelta(minutes=live_settings.idle_logoff_minutes, seconds=30)
    async with Client(url, cookie) as therapist:
        assert (await therapist.join())["type"] == "welcome"
        clock.advance(idle)
        status, _, _ = await asyncio.to_thread(fetch, live_server.base_url, "/staff", cookie)
        assert status == 200  # connected to a live room: still signed in
        await therapist.send(type="leave")
        await therapist.closed()
    clock.advance(idle)
    status, _, _ = await asyncio.to_thread(fetch, live_server.base_url, "/staff", cookie)
    assert status == 303


# --- idle sign-out and the warning ----------------------------------------------------------

async def test_patients_are_signed_out_when_idle_and_staff_pages_warn_first(client, demo, db,
                                                                            settings, clock):
    from vio import clinic
    from vio.security import Signer

    dana = demo.patients[ROSTER[0]]
    token = await clinic.issue_patient_link(db, Signer(settings.secret_key), dana, clock.now())
    await db.commit()
    assert client.get(f"/p/{token}", follow_redirects=False).status_code == 303
    home = client.get("/me")
    assert home.status_code == 200 and 'id="sign-out"' in home.text
    clock.advance(timedelta(minutes=settings.idle_logoff_minutes, seconds=5))
    assert client.get("/me", follow_redirects=False).status_code == 303
    csrf = csrf_from(client.get("/login").text)
    client.post("/login", data={"email": "therapist@demo.vio", "password": "demo-therapist",
                                "csrf_token": csrf})
    page = client.get("/staff").text
    assert f'data-idle-logoff-seconds="{settings.idle_logoff_minutes * 60}"' in page
    assert "/static/js/idle.js" in page


async def test_a_sign_in_ends_after_its_lifetime_however_active(client, demo, settings, clock):
    csrf = csrf_from(client.get("/login").text)
    client.post("/login", data={"email": "therapist@demo.vio", "password": "demo-therapist",
                                "csrf_token": csrf})
    step = timedelta(minutes=settings.idle_logoff_minutes - 1)
    elapsed = timedelta()
    while elapsed + step < timedelta(hours=settings.sign_in_max_hours):
        assert client.get("/staff", follow_redirects=False).status_code == 200
        clock.advance(step)
        elapsed += step
    clock.advance(step)
    assert client.get("/staff", follow_redirects=False).status_code == 303


# --- the second factor ------------------------------------------------------------------------

def _password(client: TestClient, email: str, password: str):  # type: ignore[no-untyped-def]
    csrf = csrf_from(client.get("/login").text)
    return client.post("/login", data={"email": email, "password": password,
                                       "csrf_token": csrf}, follow_redirects=False)


def _code(client: TestClient, code: str):  # type: ignore[no-untyped-def]
    page = client.get("/login/second-factor")
    return client.post("/login/second-factor", data={
        "code": code, "csrf_token": csrf_from(page.text), "next": "/staff"},
        follow_redirects=False)


async def test_a_staff_member_can_add_an_authenticator_and_then_needs_its_code(
        client, demo, clock, db):
    assert _password(client, "therapist@demo.vio", "demo-therapist").status_code == 303
    page = client.get("/staff/account").text
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page).group(1)
    wrong = client.post("/staff/account", data={"action": "enable", "code": "000000",
                                                "csrf_token": csrf_from(page)})
    assert wrong.status_code == 400
    enabled = client.post("/staff/account", data={
        "action": "enable", "code": pyotp.TOTP(secret).at(clock.now()),
        "csrf_token": csrf_from(page)}, follow_redirects=False)
    assert enabled.status_code == 303
    staff = await db.get(StaffUser, demo.therapist.id)
    await db.refresh(staff)
    assert secret not in staff.totp_secret
    assert open_totp_seed(TEST_KEYS, staff.id, staff.totp_secret) == secret
    client.post("/logout", data={"csrf_token": csrf_from(client.get("/staff").text)})

    clock.advance(timedelta(seconds=31))  # a new time step: the enabling code was spent
    response = _password(client, "therapist@demo.vio", "demo-therapist")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login/second-factor")
    assert client.get("/staff", follow_redirects=False).status_code == 303  # not yet in
    assert _code(client, "123456").status_code == 401
    code = pyotp.TOTP(secret).at(clock.now())
    assert _code(client, code).status_code == 303
    assert client.get("/staff").status_code == 200
    client.post("/logout", data={"csrf_token": csrf_from(client.get("/staff").text)})
    _password(client, "therapist@demo.vio", "demo-therapist")
    assert _code(client, code).status_code == 401  # a code is good once
    kinds = [a.detail.get("via") for a in (await db.execute(select(AuditEvent).where(
        AuditEvent.action == "sign-in"))).scalars()]
    assert "password+totp" in kinds


async def test_a_program_can_require_the_second_factor_for_admins(client, demo, clock, db):
    program = await db.get(Program, demo.program.id)
    program.admins_need_second_factor = True
    await db.commit()
    response = _password(client, "admin@demo.vio", "demo-admin")
    assert response.headers["location"].startswith("/login/second-factor")
    page = client.get("/login/second-factor").text
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page).group(1)  # set up first
    assert _code(client, pyotp.TOTP(secret).at(clock.now())).status_code == 303
    assert client.get("/staff/audit").status_code == 200
    staff = await db.get(StaffUser, demo.admin.id)
    await db.refresh(staff)
    assert secret not in staff.totp_secret  # kept sealed, opened with the install's key
    assert open_totp_seed(TEST_KEYS, staff.id, staff.totp_secret) == secret
    # Therapists are not asked.
    client.cookies.clear()
    assert _password(client, "therapist@demo.vio", "demo-therapist").headers[
        "location"] == "/staff"


# --- the attempt counter ----------------------------------------------------------------------

async def test_concurrent_wrong_passwords_get_exactly_the_allowed_tries(live_server, db,
                                                                        live_settings):
    tries = 20
    statuses = await asyncio.to_thread(_guesses, [live_server.base_url], tries,
                                       "therapist@demo.vio", "guess")
    assert statuses.count(401) == live_settings.login_max_failures, statuses
    assert statuses.count(429) == tries - live_settings.login_max_failures
    db.expire_all()
    checked = (await db.execute(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == "sign-in-failed"))).scalar_one()
    assert checked == live_settings.login_max_failures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


SERVER = """
import sys
import uvicorn
from vio.app import create_app
from vio.settings import Settings

uvicorn.run(create_app(Settings.from_env()), host="127.0.0.1", port=int(sys.argv[1]),
            log_level=sys.argv[2], access_log=True, proxy_headers=True,
            forwarded_allow_ips=sys.argv[3])
"""


@contextlib.contextmanager
def server_process(env: dict[str, str], log_level: str = "warning",
                   trusted_proxies: str = "192.0.2.1", log: Path | None = None,
                   script: str = SERVER) -> Iterator[str]:
    """The app under uvicorn in a process of its own; yields its base URL."""
    port = free_port()
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(port), log_level, trusted_proxies], cwd=ROOT,
        env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + seconds(30)
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1):
                    break
            except OSError:
                assert process.poll() is None, "the server stopped"
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(seconds(10))
        except subprocess.TimeoutExpired:
            process.kill()
        if log:
            out.close()  # type: ignore[union-attr]


async def _seed_staff(url: str, count: int) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine, TEST_KEYS)
        async with session_factory(engine, TEST_KEYS)() as db:
            program = Program(name="Throttle test", timezone="America/Chicago")
            db.add(program)
            await db.flush()
            password = hash_password("right-password")
            db.add_all(StaffUser(program_id=program.id, name=f"Staff {n}",
                                 email=f"staff{n}@example.test", role=StaffRole.THERAPIST,
                                 password_hash=password) for n in range(count))
            await db.commit()
    finally:
        await engine.dispose()


def _guesses(bases: list[str], tries: int, email: str, password: str,
             headers: list[dict[str, str]] | None = None) -> list[int]:
    """``tries`` sign-ins at once, spread over the servers at ``bases``."""
    webs = [WebSession(bases[n % len(bases)]) for n in range(tries)]
    tokens = [csrf_from(web.fetch("/login")[1]) for web in webs]
    barrier = threading.Barrier(tries)
    results: list[int] = [0] * tries

    def guess(n: int) -> None:
        barrier.wait()
        request = urllib.request.Request(
            webs[n].base + "/login", data=urllib.parse.urlencode({
                "email": email, "password": password, "csrf_token": tokens[n]}).encode(),
            headers={"Cookie": webs[n].cookie, **(headers[n] if headers else {})})
        try:
            with webs[n]._opener.open(request, timeout=seconds(60)) as response:
                results[n] = response.status
        except urllib.error.HTTPError as error:
            results[n] = error.code

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(tries)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.postgres
async def test_the_attempt_counter_holds_across_processes(postgres_url):
    await _seed_staff(postgres_url, 1)
    env = {"VIO_DATABASE_URL": postgres_url, "VIO_SECRET_KEY": "throttle-test",
           "VIO_PUBLIC_BASE_URL": "http://127.0.0.1:8000", "VIO_LOGIN_FAILURE_DELAY_MS": "0"}
    with server_process(env) as first, server_process(env) as second:
        statuses = await asyncio.to_thread(_guesses, [first, second], 20,
                                           "staff0@example.test", "guess")
        assert statuses.count(401) == 5, statuses  # VIO_LOGIN_MAX_FAILURES
        assert statuses.count(429) == 15
        right = await asyncio.to_thread(_guesses, [second], 1, "staff0@example.test",
                                        "right-password")
        assert right == [429]  # used up, whichever process is asked


async def test_x_forwarded_for_counts_only_from_a_trusted_proxy(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'vio.sqlite3'}"
    await _seed_staff(url, 1)
    env = {"VIO_DATABASE_URL": url, "VIO_SECRET_KEY": "throttle-test",
           "VIO_LOGIN_FAILURE_DELAY_MS": "0"}
    spoofed = [{"X-Forwarded-For": f"198.51.100.{n}"} for n in range(12)]
    with server_process(env, trusted_proxies="192.0.2.1") as base:  # not us: ignored
        statuses = await asyncio.to_thread(_guesses, [base], 12, "staff0@example.test",
                                           "guess", spoofed)
        assert statuses.count(401) == 5 and statuses.count(429) == 7, statuses
    env["VIO_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'other.sqlite3'}"
    await _seed_staff(env["VIO_DATABASE_URL"], 1)
    with server_process(env, trusted_proxies="127.0.0.1") as base:  # a proxy of ours: believed
        statuses = await asyncio.to_thread(_guesses, [base], 12, "staff0@example.test",
                                           "guess", spoofed)
        assert statuses.count(401) == 12, statuses  # one address each


def _healthz_ms(base: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(base + "/healthz", timeout=seconds(10)) as response:
        assert response.status == 200
    return (time.perf_counter() - started) * 1000


async def test_healthz_answers_quickly_during_ten_sign_ins(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'vio.sqlite3'}"
    await _seed_staff(url, 10)
    env = {"VIO_DATABASE_URL": url, "VIO_SECRET_KEY": "healthz-test"}
    with server_process(env) as base:
        samples: list[float] = []
        done = threading.Event()

        def sign_ins() -> list[int]:
            webs = [WebSession(base) for _ in range(10)]
            tokens = [csrf_from(web.fetch("/login")[1]) for web in webs]
            results: list[int] = []
            threads = [threading.Thread(target=lambda n=n: results.append(webs[n].fetch(
                "/login", {"email": f"staff{n}@example.test", "password": "right-password",
                           "csrf_token": tokens[n]})[0])) for n in range(10)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            done.set()
            return results

        def probe() -> None:
            while not done.is_set():
                samples.append(_healthz_ms(base))
                time.sleep(0.01)

        prober = threading.Thread(target=probe)
        prober.start()
        statuses = await asyncio.to_thread(sign_ins)
        prober.join()
        assert statuses == [303] * 10
        assert len(samples) >= 5, samples
        assert statistics.median(samples) < seconds(0.1) * 1000, samples


def test_the_home_page_names_the_demo_sign_ins_only_on_a_demo_server(settings, clock, engine,
                                                                     demo):
    import dataclasses

    from vio.app import create_app

    for demo_mode, shown in ((False, False), (True, True)):
        app = create_app(dataclasses.replace(settings, demo=demo_mode), clock=clock)
        with TestClient(app, base_url="http://127.0.0.1") as client:
            page = client.get("/").text
            assert ("demo-therapist" in page) is shown
            assert ("demo-admin" in page) is shown


async def test_every_sign_in_is_audited(client, demo, db, settings, clock):
    from vio import clinic
    from vio.security import Signer

    _password(client, "therapist@demo.vio", "demo-therapist")
    client.cookies.clear()
    token = await clinic.issue_patient_link(db, Signer(settings.secret_key),
                                            demo.patients[ROSTER[0]], clock.now())
    await db.commit()
    client.get(f"/p/{token}")
    session = (await db.execute(select(Session).where(Session.kind == SessionKind.FAMILY))
               ).scalars().first()
    session.starts_at = clock.now()
    await db.commit()
    invite = await issue(db, clock)
    client.cookies.clear()
    page = client.get(f"/i/{invite}")
    client.post(f"/i/{invite}", data={"name": "Angela L.", "terms": "yes",
                                      "csrf_token": csrf_from(page.text)})
    db.expire_all()
    rows = (await db.execute(select(AuditEvent).where(AuditEvent.action.in_(
        ["sign-in", "family-invite-opened"])).order_by(AuditEvent.seq))).scalars().all()
    assert [(r.action, r.actor.split(":")[0]) for r in rows] == [
        ("sign-in", "staff"), ("sign-in", "patient"), ("family-invite-opened", "family-invite")]


async def test_a_seed_sealed_under_another_secret_is_explained_not_a_server_error(
        client, demo, clock, db):
    from vio.keys import InstallKeys
    from vio.security import SEED_UNREADABLE, seal_totp_seed

    staff = await db.get(StaffUser, demo.therapist.id)
    secret = pyotp.random_base32()
    # As after a change of VIO_SECRET_KEY without `vio audit reseal`.
    staff.totp_secret = seal_totp_seed(InstallKeys.derive("the secret before"), staff.id, secret)
    await db.commit()
    assert _password(client, "therapist@demo.vio", "demo-therapist").status_code == 303
    refused = _code(client, pyotp.TOTP(secret).at(clock.now()))
    assert refused.status_code == 409
    assert SEED_UNREADABLE.split(". ")[1] in refused.text  # "Ask an admin … reset …"
    assert client.get("/staff", follow_redirects=False).status_code == 303  # still not in
