"""Family members: invites under consent, every bad link, one device at a time, revocation."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from tests.conftest import csrf_from, seconds
from tests.test_session_rules import Clinic, loopback_only  # noqa: F401
from tests.wsclient import Client
from vio import family
from vio.bot import WebSession
from vio.models import (
    AuditEvent,
    Consent,
    ConsentKind,
    FamilyInvite,
    FamilyMember,
    Session,
    SessionKind,
    SessionStatus,
)


async def family_session(db) -> Session:
    return (await db.execute(select(Session).where(Session.kind == SessionKind.FAMILY))
            ).scalars().first()


async def member(db) -> FamilyMember:
    return (await db.execute(select(FamilyMember))).scalars().first()


async def disclosure(db, who: FamilyMember) -> Consent:
    return (await db.execute(select(Consent).where(
        Consent.kind == ConsentKind.FAMILY_DISCLOSURE, Consent.family_member_id == who.id))
    ).scalar_one()


async def open_family_session(db, clock) -> Session:
    """Move the demo family session to now, so its room is open."""
    session = await family_session(db)
    session.starts_at = clock.now() - timedelta(minutes=1)
    await db.commit()
    return session


async def issue(db, clock, session=None, who=None) -> str:
    session = session or await family_session(db)
    token = await family.issue_invite(db, session, who or await member(db), "staff:1",
                                      clock.now())
    await db.commit()
    return token


# --- issuing ----------------------------------------------------------------------------------

async def test_invite_needs_a_family_session_and_an_active_consent_naming_the_person(
        db, demo, clock):
    who = await member(db)
    group = (await db.execute(select(Session).where(Session.kind == SessionKind.GROUP))
             ).scalars().first()
    with pytest.raises(family.InviteRefused, match="family sessions only"):
        await family.issue_invite(db, group, who, "staff:1", clock.now())
    stranger = FamilyMember(patient_id=who.patient_id, name="Uncle Bob",
                            relationship_to_patient="uncle")
    db.add(stranger)
    await db.flush()
    with pytest.raises(family.InviteRefused, match="no active family-disclosure consent"):
        await family.issue_invite(db, await family_session(db), stranger, "staff:1",
                                  clock.now())
    consent = await disclosure(db, who)
    consent.expires_at = clock.now() - timedelta(days=1)
    with pytest.raises(family.InviteRefused, match="no active"):
        await family.issue_invite(db, await family_session(db), who, "staff:1", clock.now())
    await db.rollback()
    token = await issue(db, clock)
    invite_id, secret = token.split(".")
    stored = await db.get(FamilyInvite, int(invite_id))
    assert len(secret) * 6 >= 128 and secret not in stored.secret_hash
    assert stored.expires_at == (await family_session(db)).ends_at


# --- bad links ----------------------------------------------------------------------------------

def _open(client: TestClient, token: str):
    return client.get(f"/i/{token}", follow_redirects=False)


def _code(response) -> str:
    import re

    match = re.search(r'data-code="([^"]+)"', response.text)
    return match.group(1) if match else ""


async def test_every_bad_link_gets_a_clear_page_and_changes_nothing(client, db, demo, clock):
    client.app.state.invite_throttle.max_failures = 100  # the limit has its own test
    token = await issue(db, clock)
    cases = {"invite-malformed": "not-a-token", "invite-unknown": "999.AAAAAAAAAAAAAAAAAAAAAAAAAA",
             "too-early": token}
    wrong_secret = token.split(".")[0] + "." + "B" * 32
    cases["invite-unknown-secret"] = wrong_secret
    for expected, link in cases.items():
        response = _open(client, link)
        assert _code(response) == expected.replace("-secret", ""), (expected, response.text)
        assert "substance" not in response.text.lower()
        assert client.get("/me", follow_redirects=False).status_code == 303

    await open_family_session(db, clock)
    assert _open(client, token).status_code == 200  # good now

    clock.advance(timedelta(hours=3))
    response = _open(client, token)
    assert _code(response) == "session-ended"

    clock.advance(timedelta(hours=-3))
    invite = await db.get(FamilyInvite, int(token.split(".")[0]))
    invite.expires_at = clock.now() - timedelta(seconds=1)
    await db.commit()
    assert _code(_open(client, token)) == "invite-expired"

    fresh = await issue(db, clock)
    stored = await db.get(FamilyInvite, int(fresh.split(".")[0]))
    await family.revoke_invite(db, stored, "staff:1", clock.now())
    await db.commit()
    assert _code(_open(client, fresh)) == "invite-revoked"

    other = await issue(db, clock)
    await family.revoke_consent(db, await disclosure(db, await member(db)), "staff:1",
                                clock.now())
    await db.commit()
    # Revoking the consent revoked the outstanding invite; an invite whose consent went away
    # without revocation (e.g. it expired) says so.
    assert _code(_open(client, other)) == "invite-revoked"
    nothing_changed = (await db.execute(select(AuditEvent).where(
        AuditEvent.action == "family-invite-opened"))).scalars().all()
    assert nothing_changed == []


async def test_consent_expiry_makes_the_link_unusable(client, db, demo, clock):
    await open_family_session(db, clock)
    token = await issue(db, clock)
    consent = await disclosure(db, await member(db))
    consent.expires_at = clock.now() - timedelta(seconds=1)
    await db.commit()
    assert _code(_open(client, token)) == "consent-revoked"


async def test_wrong_session_is_refused(live_server, db, demo, clock, live_settings):
    await open_family_session(db, clock)
    token = await issue(db, clock)
    web = await asyncio.to_thread(_accept, live_server.base_url, token, "Angela L.")
    group = (await db.execute(select(Session).where(Session.kind == SessionKind.GROUP))
             ).scalars().first()
    status, page = await asyncio.to_thread(web.fetch, f"/sessions/{group.id}/room")
    assert status == 403 and 'data-code="wrong-session"' in page
    async with Client(f"{live_server.ws_base}/ws/sessions/{group.id}", web.cookie) as ws:
        answer = await ws.join()
        assert answer["code"] == "wrong-session"


async def test_failed_attempts_are_rate_limited_per_address(client, db, demo, clock, settings):
    await open_family_session(db, clock)
    good = await issue(db, clock)
    for _ in range(settings.login_max_failures):
        assert _open(client, "1.nope-nope-nope-nope-nope").status_code in (400, 404)
    response = _open(client, good)
    assert response.status_code == 429


# --- joining ------------------------------------------------------------------------------------

def _accept(base: str, token: str, name: str) -> WebSession:
    """Open the invite, enter a name, accept the terms (as the join page asks)."""
    web = WebSession(base)
    status = web.post_form(f"/i/{token}", {"name": name, "terms": "yes"})
    assert status == 303, status
    return web


async def test_join_flow_asks_for_name_and_terms(client, db, demo, clock):
    await open_family_session(db, clock)
    token = await issue(db, clock)
    page = _open(client, token)
    assert page.status_code == 200 and 'id="family-terms"' in page.text
    csrf = csrf_from(page.text)
    refused = client.post(f"/i/{token}", data={"csrf_token": csrf, "name": "Angela L."},
                          follow_redirects=False)
    assert refused.status_code == 400 and "terms" in refused.text
    accepted = client.post(f"/i/{token}", data={"csrf_token": csrf, "name": "Angela L.",
                                                "terms": "yes"}, follow_redirects=False)
    assert accepted.status_code == 303
    room = client.get(accepted.headers["location"])
    assert room.status_code == 200 and '"role": "family"' in room.text


async def test_one_device_at_a_time(live_server, db, demo, clock):
    session = await open_family_session(db, clock)
    token = await issue(db, clock)
    url = f"{live_server.ws_base}/ws/sessions/{session.id}"
    first = await asyncio.to_thread(_accept, live_server.base_url, token, "Angela L.")
    second = await asyncio.to_thread(_accept, live_server.base_url, token, "Angela L.")
    async with Client(url, first.cookie) as phone:
        assert (await phone.join())["type"] == "waiting"
        async with Client(url, second.cookie) as laptop:
            answer = await laptop.join()
            assert answer["code"] == "invite-in-use"
            assert await laptop.closed() == 4403
        assert phone.close_code is None
    await asyncio.sleep(0.3)
    async with Client(url, second.cookie) as laptop:
        assert (await laptop.join())["type"] == "waiting"


async def test_revoking_consent_removes_the_family_member_within_two_seconds(
        live_server, db, demo, clock, live_settings):
    session = await open_family_session(db, clock)
    place = Clinic(live_server, db, live_settings, clock)
    token = await issue(db, clock)
    url = f"{live_server.ws_base}/ws/sessions/{session.id}"
    angela = await asyncio.to_thread(_accept, live_server.base_url, token, "Angela L.")
    admin = await asyncio.to_thread(WebSession, live_server.base_url)
    await asyncio.to_thread(admin.post_form, "/login", {"email": "admin@demo.vio",
                                                        "password": "demo-admin"})
    who = await member(db)
    consent = await disclosure(db, who)
    async with Client(url, await place.staff()) as therapist, Client(url, angela.cookie) as fam:
        await therapist.join()
        assert (await fam.join())["type"] == "waiting"
        listing = await therapist.expect("waiting-list")
        while not listing["waiting"]:
            listing = await therapist.expect("waiting-list")
        assert listing["waiting"][0]["role"] == "family"
        assert listing["waiting"][0]["name"] == "Angela L."
        await therapist.send(type="admit", participant_id=listing["waiting"][0]["participant_id"])
        await fam.expect("welcome")
        started = time.monotonic()
        status = await asyncio.to_thread(
            admin.post_form, f"/staff/patients/{who.patient_id}/family",
            {"action": "revoke-consent", "consent_id": str(consent.id)})
        assert status == 303
        refused = await fam.expect("refused", within=2)
        assert refused["code"] == "consent-revoked"
        assert await fam.closed() == 4403
        assert time.monotonic() - started < seconds(2)
        await therapist.expect("participant-left")
    audit = (await db.execute(select(AuditEvent).where(AuditEvent.action == "consent-revoked"))
             ).scalars().all()
    assert len(audit) == 1 and audit[0].actor.startswith("staff:")
    assert _code(_open_sync(live_server.base_url, token)) == "invite-revoked"


def _open_sync(base: str, token: str):
    class Page:
        def __init__(self, text):
            self.text = text

    return Page(WebSession(base).fetch(f"/i/{token}")[1])


async def test_staff_issue_invites_from_the_session_page(client, db, demo, clock):
    session = await family_session(db)
    csrf = csrf_from(client.get("/login").text)
    client.post("/login", data={"email": "therapist@demo.vio", "password": "demo-therapist",
                                "csrf_token": csrf})
    page = client.get(f"/staff/sessions/{session.id}/invites")
    assert page.status_code == 200
    who = await member(db)
    issued = client.post(f"/staff/sessions/{session.id}/invites", data={
        "csrf_token": csrf_from(page.text), "family_member_id": str(who.id)})
    assert issued.status_code == 200 and 'id="invite-link"' in issued.text
    assert "/i/" in issued.text
    status = SessionStatus
    assert session.status is status.SCHEDULED


async def test_family_minutes_count_for_the_session_not_the_patients_dosage(
        live_settings, engine, demo, db):
    from tests.conftest import LiveServer
    from vio.attendance.dosage import IsoWeek
    from vio.attendance.records import patient_week_dosage, session_record
    from vio.clock import ManualClock
    from vio.models import Patient, Program

    session = await family_session(db)
    start = session.starts_at
    clock = ManualClock(start)
    with LiveServer(live_settings, clock) as server:
        place = Clinic(server, db, live_settings, clock)
        url = f"{server.ws_base}/ws/sessions/{session.id}"
        token = await issue(db, clock)
        angela = await asyncio.to_thread(_accept, server.base_url, token, "Angela L.")
        patient = await db.get(Patient, session.patient_id)
        async with Client(url, await place.staff()) as therapist, \
                Client(url, angela.cookie) as fam:
            await therapist.join()
            assert (await fam.join())["type"] == "waiting"
            await therapist.send(type="admit-all")
            await fam.expect("welcome")
            clock.advance(timedelta(minutes=10))
            async with Client(url, await place.patient(patient.legal_name, session.id)) as pt:
                assert (await pt.join())["type"] == "waiting"  # family sessions: therapist admits
                await therapist.send(type="admit-all")
                await pt.expect("welcome")
                clock.advance(timedelta(minutes=30))
                await pt.send(type="leave")
                await pt.closed()
            clock.advance(timedelta(minutes=5))
            await fam.send(type="leave")
            await fam.closed()
    program = await db.get(Program, session.program_id)
    await db.commit()
    record = await session_record(db, session, program)
    family_record = next(p for p in record.people if p.role == "family")
    assert family_record.attendance.attended_seconds == 45 * 60
    assert record.patients[0].attendance.attended_seconds == 30 * 60
    assert record.billing_code == "90847"  # with the patient present
    week = IsoWeek.containing(start, program.timezone)
    dosage = await patient_week_dosage(db, patient, program, week, clock.now())
    assert dosage.attended_seconds == 30 * 60
