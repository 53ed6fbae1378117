"""Email, end to end: the real app (its sender running in the app's lifespan) hands messages to
a real SMTP relay on loopback (aiosmtpd, STARTTLS with a test CA, AUTH), while the test moves
the clock.

The clinic here: an admin who runs the group, and five patients on its roster: Ada and Ben
agreed to email; Cal gave an address but no consent; Dee consented with no address; Eve
consented, but the relay refuses her address for good (550).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.testclient import TestClient

from tests.conftest import csrf_from
from tests.smtp_relay import Received, Relay, until
from tests.test_mail_words import SESSION_TITLE, assert_discreet, calendar_of
from vio.app import create_app
from vio.clock import OffsetClock
from vio.mail.models import MessageKind, MessageStatus, OutboxMessage
from vio.models import (
    AgeGroup,
    AuditEvent,
    Consent,
    ConsentKind,
    Group,
    GroupTherapist,
    LevelOfCare,
    Patient,
    Program,
    RosterMembership,
    Session,
    StaffRole,
    StaffUser,
)
from vio.security import hash_password
from vio.settings import Settings

ADMIN_EMAIL, ADMIN_PASSWORD = "lead@clinic.example.org", "lead-password-9"
MAIL_FROM = "appointments@clinic.example.org"
NAMES = {"ada": "Ada Lovelace", "ben": "Ben Okri", "cal": "Cal Ripken", "dee": "Dee Snider",
         "eve": "Eve Arden"}
ADDRESSES = {"ada": "ada@example.org", "ben": "ben@example.org", "cal": "cal@example.org",
             "dee": "", "eve": "gone@example.org"}
CONSENTING = ("ada", "ben", "dee", "eve")
# Wednesday 2026-11-25, 6:00 PM in Chicago (the program's zone); the clock starts on Monday.
FIRST_DAY, LOCAL_START = "2026-11-25", "18:00"
STARTS_AT = datetime(2026, 11, 26, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class World:
    """The clinic's ids (the rows themselves expire as the test re-reads the database)."""

    program_id: int
    admin_id: int
    group_id: int
    patients: dict[str, int]


async def build_clinic(db: AsyncSession, now: datetime) -> World:
    program = Program(name="Riverside Evening Program", timezone="America/Chicago")
    db.add(program)
    await db.flush()
    admin = StaffUser(program_id=program.id, name="Lee Park", email=ADMIN_EMAIL,
                      role=StaffRole.ADMIN, password_hash=hash_password(ADMIN_PASSWORD))
    group = Group(program_id=program.id, name=SESSION_TITLE)
    patients = {key: Patient(program_id=program.id, legal_name=name, email=ADDRESSES[key],
                             level_of_care=LevelOfCare.IOP, age_group=AgeGroup.ADULT,
                             enrolled_on=date(2026, 11, 1), enrollment_ends_on=date(2027, 1, 31))
                for key, name in NAMES.items()}
    db.add_all([admin, group, *patients.values()])
    await db.flush()
    db.add(GroupTherapist(group_id=group.id, staff_id=admin.id))
    for key, patient in patients.items():
        db.add(RosterMembership(group_id=group.id, patient_id=patient.id,
                                joined_on=date(2026, 11, 1)))
        kinds = [ConsentKind.TELEHEALTH, ConsentKind.GROUP_PARTICIPATION]
        if key in CONSENTING:
            kinds.append(ConsentKind.EMAIL_CONTACT)
        for kind in kinds:
            db.add(Consent(patient_id=patient.id, kind=kind, granted_at=now - timedelta(days=20)))
    await db.commit()
    return World(program.id, admin.id, group.id, {k: p.id for k, p in patients.items()})


def mail_settings(settings: Settings, relay: Relay) -> Settings:
    return dataclasses.replace(
        settings, smtp_url=relay.url, smtp_ca_file=relay.ca_file, mail_from=MAIL_FROM,
        mail_display_name="Riverside Appointments", mail_poll_seconds=0.05,
        mail_retry_seconds=0.2, mail_retry_max_seconds=0.4, smtp_timeout_seconds=5.0,
        mail_claim_seconds=10.0)


@pytest.fixture
def relay(tmp_path) -> Iterator[Relay]:  # type: ignore[no-untyped-def]
    relay = Relay(tmp_path / "relay")
    relay.mailbox.refuse[ADDRESSES["eve"]] = "550 5.1.1 <gone@example.org>: no such mailbox"
    with relay:
        yield relay


def sign_in(client: TestClient) -> str:
    csrf = csrf_from(client.get("/login").text)
    answer = client.post("/login", data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD,
                                         "csrf_token": csrf}, follow_redirects=False)
    assert answer.status_code == 303, answer.text[:300]
    return csrf_from(client.get("/staff/sessions").text)


def schedule(client: TestClient, csrf: str, world: World, first_day: str = FIRST_DAY,
             local_start: str = LOCAL_START) -> None:
    answer = client.post("/staff/sessions", data={
        "title": SESSION_TITLE, "kind": "group", "group_id": str(world.group_id),
        "therapist_ids": [str(world.admin_id)], "first_day": first_day,
        "local_start": local_start, "duration_minutes": "180", "csrf_token": csrf},
        follow_redirects=False)
    assert answer.status_code == 303, answer.text[:500]


async def session_at(db: AsyncSession, starts_at: datetime) -> int:
    """The id of the session starting at ``starts_at``."""
    db.expire_all()
    return int((await db.execute(select(Session.id).where(Session.starts_at == starts_at))
                ).scalar_one())


async def rows(db: AsyncSession) -> list[OutboxMessage]:
    db.expire_all()
    return list((await db.execute(select(OutboxMessage).order_by(OutboxMessage.id))).scalars())


def move_to(clock: OffsetClock, moment: datetime) -> None:
    clock.advance(moment - clock.now())


async def settle(client: TestClient, db: AsyncSession, clock: OffsetClock) -> None:
    """Run a round of the sender, then wait until nothing due is queued or being sent."""
    client.portal.call(client.app.state.mail.round)  # type: ignore[union-attr]

    async def quiet() -> bool:
        now = clock.now()
        return not [r for r in await rows(db) if r.status is MessageStatus.QUEUED and (
            r.next_attempt_at <= now or (r.claimed_until is not None and r.claimed_until > now))]

    await until(quiet, what="the outbox to settle")


def others(world: World, key: str) -> tuple[str, ...]:
    return tuple(name for other, name in NAMES.items() if other != key)


def reminder_subjects(received: list[Received]) -> list[str]:
    return [str(r.message["Subject"]).strip() for r in received]


# --- 1: reminders, once per due time, and a cancellation ---------------------------------------

async def test_scheduling_sends_each_consenting_patient_one_reminder_per_due_time(
        settings, clock, engine, db, relay, caplog):
    caplog.set_level(logging.INFO)
    world = await build_clinic(db, clock.now())
    box = relay.mailbox
    with TestClient(create_app(mail_settings(settings, relay), clock=clock),
                    base_url="http://127.0.0.1") as client:
        csrf = sign_in(client)
        schedule(client, csrf, world)
        session = await session_at(db, STARTS_AT)

        move_to(clock, STARTS_AT - timedelta(hours=23))  # the day before
        await until(lambda: len(box.messages()) == 2, what="the day-before reminders")
        await settle(client, db, clock)
        move_to(clock, STARTS_AT - timedelta(minutes=59))
        await until(lambda: len(box.messages()) == 4, what="the hour-before reminders")
        await settle(client, db, clock)
        move_to(clock, STARTS_AT - timedelta(minutes=14))  # the room opens 15 minutes early
        await until(lambda: len(box.messages()) == 6, what="the room-open messages")
        await settle(client, db, clock)

        for key in ("ada", "ben"):
            got = box.to(ADDRESSES[key])
            assert reminder_subjects(got) == [
                "Reminder: video appointment tomorrow at 6:00 PM CST",
                "Reminder: video appointment today at 6:00 PM CST",
                "Your video appointment's room is open: it starts today at 6:00 PM CST"]
            assert len({r.message_id for r in got}) == 3
            for received in got:
                assert_discreet(received.message, others(world, key))
                [event] = calendar_of(received.message).walk("VEVENT")
                assert event.decoded("dtstart") == STARTS_AT
                assert event["dtstart"].params["TZID"] == "America/Chicago"
                assert event.decoded("dtstart").hour == 18
                assert str(event["uid"]) == f"vio-session-{session}@clinic.example.org"
        for key in ("cal", "dee", "eve"):
            assert box.to(ADDRESSES[key] or "nobody") == []
        outbox = await rows(db)
        eve = world.patients["eve"]
        bounced = [r for r in outbox if r.patient_id == eve]
        assert [r.status for r in bounced] == [MessageStatus.BOUNCED] * 3
        assert all(r.reply_code == 550 and "no such mailbox" in r.reply_text for r in bounced)
        assert {r.patient_id for r in outbox} == {world.patients[k] for k in ("ada", "ben",
                                                                              "eve")}
        sent = [r for r in outbox if r.status is MessageStatus.SENT]
        assert sorted(r.message_id for r in sent) == sorted(r.message_id for r in box.messages())
        assert all(r.sealed_link is None for r in outbox)

        # Staff see what became of each message, and every look is audited.
        csrf = sign_in(client)  # a day and more went by: a new sign-in
        page = client.get(f"/staff/patients/{eve}/messages")
        assert page.status_code == 200
        assert "bounced" in page.text and "550 5.1.1" in page.text
        ada_page = client.get(f"/staff/patients/{world.patients['ada']}/messages")
        assert ada_page.text.count("delivered to the relay") == 3
        db.expire_all()
        views = (await db.execute(select(AuditEvent).where(
            AuditEvent.action == "messages-view"))).scalars().all()
        assert sorted(v.target for v in views) == sorted(
            [f"patient:{eve}", f"patient:{world.patients['ada']}"])

        # A second session, cancelled: the calendar entry is cancelled, no reminder follows.
        schedule(client, csrf, world, first_day="2026-11-27")
        friday_start = STARTS_AT + timedelta(days=2)
        friday = await session_at(db, friday_start)
        form = client.get(f"/staff/sessions/{friday}/schedule")
        assert form.status_code == 200
        answer = client.post(f"/staff/sessions/{friday}/schedule", data={
            "action": "cancel", "confirm": "yes", "csrf_token": csrf_from(form.text)},
            follow_redirects=False)
        assert answer.status_code == 303
        await until(lambda: len(box.messages()) == 8, what="the cancellations")
        for key in ("ada", "ben"):
            cancelled = box.to(ADDRESSES[key])[-1]
            assert reminder_subjects([cancelled]) == [
                "Cancelled: video appointment on Fri, Nov 27 at 6:00 PM CST"]
            calendar = calendar_of(cancelled.message)
            assert str(calendar["method"]) == "CANCEL"
            [event] = calendar.walk("VEVENT")
            assert str(event["uid"]) == f"vio-session-{friday}@clinic.example.org"
            assert int(event["sequence"]) == 1 and str(event["status"]) == "CANCELLED"
            assert_discreet(cancelled.message, others(world, key))
        move_to(clock, friday_start - timedelta(minutes=30))
        await settle(client, db, clock)
        assert len(box.messages()) == 8

    logged = "\n".join(r.getMessage() for r in caplog.records
                       if r.name.split(".")[0] in ("vio", "uvicorn", "sqlalchemy"))
    assert "mail: message" in logged  # the sender does log, by row id
    for secret in (*NAMES.values(), *[a for a in ADDRESSES.values() if a], "/p/", "/m/", "/u/",
                   relay.url.split("@")[0]):
        assert secret not in logged, secret


# --- 3: the relay down for a while ------------------------------------------------------------

async def test_while_the_relay_is_down_messages_wait_and_go_when_it_returns(
        settings, clock, engine, db, relay):
    world = await build_clinic(db, clock.now())
    box = relay.mailbox
    with TestClient(create_app(mail_settings(settings, relay), clock=clock),
                    base_url="http://127.0.0.1") as client:
        csrf = sign_in(client)
        schedule(client, csrf, world)
        session = await session_at(db, STARTS_AT)
        relay.stop()
        form = client.get(f"/staff/sessions/{session}/schedule")
        moved = client.post(f"/staff/sessions/{session}/schedule", data={
            "action": "move", "first_day": "2026-11-26", "local_start": "17:30",
            "csrf_token": csrf_from(form.text)}, follow_redirects=False)
        assert moved.status_code == 303

        async def retrying() -> bool:
            found = [r for r in await rows(db) if r.kind is MessageKind.SESSION_MOVED
                     and r.patient_id in (world.patients["ada"], world.patients["ben"])]
            return len(found) == 2 and all(
                r.status is MessageStatus.QUEUED and r.attempts >= 2
                and "could not be reached" in r.reply_text for r in found)

        await until(retrying, what="the moved-session messages to be retried")
        page = client.get(f"/staff/patients/{world.patients['ada']}/messages")
        assert "retrying" in page.text and "could not be reached" in page.text

        relay.start()  # back on the same port
        await until(lambda: len(box.messages()) == 2, what="the messages after the outage")
        await settle(client, db, clock)
        moved_rows = {r.to_address: r for r in await rows(db)
                      if r.kind is MessageKind.SESSION_MOVED}
        for key in ("ada", "ben"):
            [received] = box.to(ADDRESSES[key])
            row = moved_rows[ADDRESSES[key]]
            assert row.status is MessageStatus.SENT and row.attempts >= 3
            assert received.message_id == row.message_id
            assert reminder_subjects([received]) == [
                "Moved: your video appointment is now on Thu, Nov 26 at 5:30 PM CST"]
            [event] = calendar_of(received.message).walk("VEVENT")
            assert event.decoded("dtstart") == datetime(2026, 11, 26, 23, 30, tzinfo=UTC)
            assert int(event["sequence"]) == 1
            assert_discreet(received.message, others(world, key))
        assert box.to(ADDRESSES["eve"]) == []
        assert moved_rows[ADDRESSES["eve"]].status is MessageStatus.BOUNCED


# --- 4: unsubscribe, at once ----------------------------------------------------------------

async def test_unsubscribing_stops_further_messages_at_once(settings, clock, engine, db, relay):
    world = await build_clinic(db, clock.now())
    box = relay.mailbox
    ada, ben = world.patients["ada"], world.patients["ben"]  # ids
    with TestClient(create_app(mail_settings(settings, relay), clock=clock),
                    base_url="http://127.0.0.1") as client:
        csrf = sign_in(client)
        schedule(client, csrf, world)
        move_to(clock, STARTS_AT - timedelta(hours=23))
        await until(lambda: len(box.messages()) == 2, what="the day-before reminders")
        await settle(client, db, clock)
        [first] = box.to(ADDRESSES["ada"])
        link = str(first.message["List-Unsubscribe"]).strip().strip("<>")
        assert first.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert link.startswith(f"{settings.public_base_url}/u/")
        path = link.removeprefix(settings.public_base_url)

        stranger = TestClient(client.app, base_url="http://127.0.0.1")  # a mail program
        assert stranger.get(path).status_code == 200  # a link checker's look changes nothing
        assert "Stop appointment emails?" in stranger.get(path).text

        relay.stop()
        move_to(clock, STARTS_AT - timedelta(minutes=59))

        async def queued_for_both() -> bool:
            return len([r for r in await rows(db) if r.status is MessageStatus.QUEUED
                        and r.attempts >= 1 and r.patient_id in (ada, ben)]) == 2

        await until(queued_for_both, what="the hour-before reminders, waiting for the relay")
        answer = stranger.post(path, content=b"List-Unsubscribe=One-Click",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert answer.status_code == 200 and "won't get these emails" in answer.text
        withdrawn = [r for r in await rows(db) if r.patient_id == ada
                     and r.status is MessageStatus.WITHDRAWN]
        assert len(withdrawn) == 1 and withdrawn[0].reply_text == "not sent: unsubscribed"
        db.expire_all()
        consent = (await db.execute(select(Consent).where(
            Consent.patient_id == ada, Consent.kind == ConsentKind.EMAIL_CONTACT))
        ).scalar_one()
        assert consent.revoked_at is not None
        audit = (await db.execute(select(AuditEvent).where(
            AuditEvent.action == "email-unsubscribed"))).scalar_one()
        assert audit.target == f"patient:{ada}" and audit.detail["how"] == "one-click"
        again = stranger.post(path, data={"List-Unsubscribe": "One-Click"})
        assert again.status_code == 200 and "already asked" in again.text

        relay.start()
        await until(lambda: len(box.to(ADDRESSES["ben"])) == 2, what="Ben's next reminder")
        await settle(client, db, clock)
        move_to(clock, STARTS_AT - timedelta(minutes=14))
        await until(lambda: len(box.to(ADDRESSES["ben"])) == 3, what="Ben's room-open message")
        await settle(client, db, clock)
        assert len(box.to(ADDRESSES["ada"])) == 1  # nothing after she unsubscribed
        sign_in(client)
        page = client.get(f"/staff/patients/{ada}/messages")
        assert "no active email consent" in page.text and "not sent: unsubscribed" in page.text


async def test_a_bad_unsubscribe_link_changes_nothing(settings, clock, engine, db, relay):
    world = await build_clinic(db, clock.now())
    with TestClient(create_app(mail_settings(settings, relay), clock=clock),
                    base_url="http://127.0.0.1") as client:
        for path in ("/u/forged.token.here", "/m/forged.token.here", "/u/" + "x" * 300):
            assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code in (
                403, 404)
            assert client.get(path).status_code == 404
    db.expire_all()
    consents = (await db.execute(select(Consent).where(
        Consent.kind == ConsentKind.EMAIL_CONTACT))).scalars().all()
    assert len(consents) == len(CONSENTING) and all(c.revoked_at is None for c in consents)
    assert world.patients["ada"]



# --- vio doctor, and the logs ---------------------------------------------------------------

async def test_the_doctor_checks_the_relay_without_showing_its_password(settings, relay):
    from vio.doctor import Status, check_mail

    good = await check_mail(mail_settings(settings, relay))
    assert good.status is Status.OK, good.line
    assert "STARTTLS, TLSv1.3" in good.line and "took the user name and password" in good.line
    wrong = dataclasses.replace(mail_settings(settings, relay),
                                smtp_url=relay.url.replace("relay-pass", "not-the-pass"))
    refused = await check_mail(wrong)
    assert refused.status is Status.PROBLEM and "refused the user name and password" in refused.line
    untrusted = dataclasses.replace(mail_settings(settings, relay), smtp_ca_file="")
    assert "certificate not trusted" in (await check_mail(untrusted)).line
    for check in (good, refused):
        assert "relay-pass" not in check.line and "not-the-pass" not in check.line
    off = await check_mail(settings)
    assert off.status is Status.OK and "nothing is emailed" in off.line


def test_request_logs_blank_the_links_in_messages():
    from vio.pages.redact import redact

    line = '127.0.0.1 - "POST /u/eyJtIjoxfQ.aBc.dEf HTTP/1.1" 200; "GET /m/eyJtIjo0fQ.x.y?x=1"'
    assert redact(line) == ('127.0.0.1 - "POST /u/[redacted] HTTP/1.1" 200; '
                            '"GET /m/[redacted]?x=1"')

