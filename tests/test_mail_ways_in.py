"""The way in that a message carries, and what staff type about email: a reminder's personal
link (only while the patient holds one), a family member's invitation sealed until it is sent,
and bad addresses and schedule changes refused with nothing changed. Against the real app and
a real relay on loopback (``tests.test_mail``'s clinic)."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select
from starlette.testclient import TestClient

from tests.conftest import csrf_from
from tests.smtp_relay import Received, until
from tests.test_mail import (
    ADDRESSES,
    NAMES,
    STARTS_AT,
    build_clinic,
    mail_settings,
    move_to,
    rows,
    schedule,
    session_at,
    settle,
    sign_in,
)
from tests.test_mail import relay as relay
from tests.test_mail_words import assert_discreet, calendar_of
from vio import clinic
from vio.app import create_app
from vio.mail.models import MessageKind, MessageStatus
from vio.models import (
    AuditEvent,
    Consent,
    ConsentKind,
    FamilyMember,
    Patient,
    PatientLink,
    Session,
    SessionKind,
)
from vio.security import Signer


def plain(received: Received) -> str:
    part = received.message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


async def test_a_reminder_carries_a_way_in_only_while_the_patient_has_one(
        settings, clock, engine, db, relay):
    world = await build_clinic(db, clock.now())
    ada = world.patients["ada"]
    await clinic.issue_patient_link(db, Signer(settings.secret_key),
                                    await db.get(Patient, ada), clock.now())
    await db.commit()
    box = relay.mailbox
    app = create_app(mail_settings(settings, relay), clock=clock)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        schedule(client, sign_in(client), world)
        move_to(clock, STARTS_AT - timedelta(hours=23))
        await until(lambda: len(box.messages()) == 2, what="the day-before reminders")
        await settle(client, db, clock)
        [to_ada] = box.to(ADDRESSES["ada"])
        [to_ben] = box.to(ADDRESSES["ben"])
        link = next(word for word in plain(to_ada).split() if "/p/" in word)
        assert "/p/" not in plain(to_ben) and "the personal link you were given" in plain(to_ben)
        phone = TestClient(app, base_url="http://127.0.0.1")
        opened = phone.get(link.removeprefix(settings.public_base_url), follow_redirects=False)
        assert opened.status_code == 303 and opened.headers["location"] == "/me"
        db.expire_all()
        links = (await db.execute(select(PatientLink).where(PatientLink.patient_id == ada)
                                  .order_by(PatientLink.id))).scalars().all()
        assert len(links) == 2 and links[1].expires_at == STARTS_AT + timedelta(hours=3)
        emailed = (await db.execute(select(AuditEvent).where(
            AuditEvent.action == "patient-link-emailed"))).scalar_one()
        assert emailed.target == f"patient:{ada}"

        await clinic.revoke_patient_links(db, ada, clock.now())  # an admin turns them off
        await db.commit()
        move_to(clock, STARTS_AT - timedelta(minutes=59))
        await until(lambda: len(box.messages()) == 4, what="the hour-before reminders")
        await settle(client, db, clock)
        assert "/p/" not in plain(box.to(ADDRESSES["ada"])[1])


async def test_a_family_member_gets_the_invitation_with_the_calendar_entry(
        settings, clock, engine, db, relay):
    world = await build_clinic(db, clock.now())
    ada = world.patients["ada"]
    member = FamilyMember(patient_id=ada, name="Grace Hopper", relationship_to_patient="aunt",
                          email="grace@example.org")
    db.add(member)
    await db.flush()
    db.add(Consent(patient_id=ada, kind=ConsentKind.FAMILY_DISCLOSURE,
                   family_member_id=member.id, granted_at=clock.now() - timedelta(days=1)))
    family_session = await clinic.schedule_session(db, clinic.SessionPlan(
        program_id=world.program_id, title="Family session: Ada L.", kind=SessionKind.FAMILY,
        timezone="America/Chicago", duration_minutes=50, therapist_ids=(world.admin_id,),
        patient_id=ada), STARTS_AT)
    session_id = family_session.id
    await db.commit()
    box = relay.mailbox
    relay.stop()
    app = create_app(mail_settings(settings, relay), clock=clock)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        sign_in(client)
        page = client.get(f"/staff/sessions/{session_id}/invites")
        issued = client.post(f"/staff/sessions/{session_id}/invites", data={
            "family_member_id": str(member.id), "csrf_token": csrf_from(page.text)})
        assert issued.status_code == 200 and 'id="invite-emailed"' in issued.text
        link = re.search(r'id="invite-link" value="([^"]+)"', issued.text).group(1)
        secret = link.rpartition(".")[2]
        [row] = await rows(db)
        assert row.kind is MessageKind.FAMILY_INVITE and row.status is MessageStatus.QUEUED
        assert row.sealed_link is not None and secret not in row.sealed_link

        relay.start()
        await until(lambda: len(box.messages()) == 1, what="the invitation")
        await settle(client, db, clock)
        [received] = box.to("grace@example.org")
        assert link in plain(received)
        assert "/m/" not in plain(received)  # "I can't make it" is the patient's to say
        assert str(received.message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
        assert_discreet(received.message, tuple(NAMES.values()))  # not even Ada's name
        [event] = calendar_of(received.message).walk("VEVENT")
        assert event.decoded("dtstart") == STARTS_AT
        assert event.decoded("dtend") == STARTS_AT + timedelta(minutes=50)
        [row] = await rows(db)
        assert row.status is MessageStatus.SENT and row.sealed_link is None
        early = TestClient(app, base_url="http://127.0.0.1").get(
            link.removeprefix(settings.public_base_url))
        assert early.status_code == 425 and 'data-code="too-early"' in early.text


async def test_bad_input_is_refused_and_changes_nothing(settings, clock, engine, db, relay):
    world = await build_clinic(db, clock.now())
    ada = world.patients["ada"]
    with TestClient(create_app(mail_settings(settings, relay), clock=clock),
                    base_url="http://127.0.0.1") as client:
        csrf = sign_in(client)
        record = {"legal_name": NAMES["ada"], "level_of_care": "2.1", "age_group": "adult",
                  "enrolled_on": "2026-11-01", "enrollment_ends_on": "2027-01-31",
                  "status": "active", "action": "save", "csrf_token": csrf}
        for address in ("not an address", "ada@example.org\r\nBcc: x@example.org",
                        "Ada <ada@example.org>"):
            answer = client.post(f"/staff/patients/{ada}", data={**record, "email": address})
            assert answer.status_code == 400 and "one email address" in answer.text
        family = client.post(f"/staff/patients/{ada}/family", data={
            "action": "add-member", "name": "Grace", "relationship": "aunt",
            "email": "grace@", "csrf_token": csrf})
        assert family.status_code == 400 and "one email address" in family.text
        schedule(client, csrf, world)
        session = await session_at(db, STARTS_AT)
        for form, says in (({"action": "move", "first_day": "2026-11-20", "local_start": "18:00"},
                            "still to come"),
                           ({"action": "move", "first_day": "2026-11-25",
                             "local_start": "18:00"}, "already has"),
                           ({"action": "move", "first_day": "2026-13-01",
                             "local_start": "18:00"}, "must be a date"),
                           ({"action": "cancel"}, "Tick the box"),
                           ({"action": "vanish"}, "Unknown action")):
            answer = client.post(f"/staff/sessions/{session}/schedule",
                                 data={**form, "csrf_token": csrf})
            assert answer.status_code == 400 and says in answer.text, (form, answer.text[:300])
        db.expire_all()
        assert (await db.get(Patient, ada)).email == ADDRESSES["ada"]
        moved = await db.get(Session, session)
        assert (moved.starts_at, moved.calendar_sequence, moved.status.value) == (
            STARTS_AT, 0, "scheduled")
        assert await rows(db) == []
