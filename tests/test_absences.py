"""Absences: "I can't make it" from a reminder makes an excused absence that the session's
record, the dosage and the staff's day show; unexcused absences in a row put a patient on the
dashboard's outreach list until staff record the contact.

End to end against the real app and a real SMTP relay on loopback (``tests.test_mail``'s
clinic), and the rule itself as a table."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from tests.conftest import csrf_from
from tests.smtp_relay import until
from tests.test_mail import (
    ADDRESSES,
    NAMES,
    STARTS_AT,
    build_clinic,
    mail_settings,
    move_to,
    schedule,
    session_at,
    settle,
    sign_in,
)
from tests.test_mail import relay as relay
from vio import clinic
from vio.app import create_app
from vio.attendance import records
from vio.attendance.dosage import IsoWeek, ScheduledAttendance, absence_streak
from vio.attendance.intervals import AttendanceStatus
from vio.attendance.models import AbsenceNotice, OutreachContact
from vio.models import AuditEvent, Patient, Program, SessionKind

MONDAY_MORNING = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)  # 8:00 AM in Chicago
REASON = "Picking up my daughter"


def link_in(text: str, path: str) -> str:
    found = re.search(rf"https?://[^\s]+({re.escape(path)}[^\s]+)", text)
    assert found, f"no {path} link"
    return found.group(1)


async def test_cant_make_it_excuses_and_two_unexcused_absences_call_for_outreach(
        settings, clock, engine, db, relay):
    world = await build_clinic(db, clock.now())
    ada, ben = world.patients["ada"], world.patients["ben"]
    await clinic.schedule_session(db, clinic.SessionPlan(
        program_id=world.program_id, title="Morning check-in", kind=SessionKind.GROUP,
        timezone="America/Chicago", duration_minutes=60, therapist_ids=(world.admin_id,),
        group_id=world.group_id), MONDAY_MORNING)  # over when the test starts; nobody came
    await db.commit()
    monday = await session_at(db, MONDAY_MORNING)
    box = relay.mailbox
    app = create_app(mail_settings(settings, relay), clock=clock)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        schedule(client, sign_in(client), world)
        wednesday = await session_at(db, STARTS_AT)
        move_to(clock, STARTS_AT - timedelta(hours=23))
        await until(lambda: len(box.messages()) == 2, what="the day-before reminders")
        await settle(client, db, clock)
        [reminder] = box.to(ADDRESSES["ben"])
        body = reminder.message.get_body(("plain",)).get_content()
        assert "Can't make it?" in body
        path = link_in(body, "/m/")

        phone = TestClient(app, base_url="http://127.0.0.1")  # Ben's phone, not signed in
        form = phone.get(path)
        assert form.status_code == 200 and "Wednesday November 25 at 6:00 PM CST" in form.text
        assert phone.post(path, data={"reason": REASON}).status_code == 403  # no CSRF token
        too_long = phone.post(path, data={"reason": "x" * 501,
                                          "csrf_token": csrf_from(form.text)})
        assert too_long.status_code == 400
        db.expire_all()
        assert (await db.execute(select(AbsenceNotice))).scalars().all() == []
        done = phone.post(path, data={"reason": REASON, "csrf_token": csrf_from(form.text)})
        assert done.status_code == 200 and "Thank you for letting us know" in done.text
        again = phone.get(path)
        assert again.status_code == 410 and "already told us" in again.text
        db.expire_all()
        [notice] = (await db.execute(select(AbsenceNotice))).scalars().all()
        assert (notice.session_id, notice.patient_id, notice.reason) == (wednesday, ben, REASON)
        [audited] = (await db.execute(select(AuditEvent).where(
            AuditEvent.action == "absence-notice"))).scalars().all()
        assert (audited.actor, audited.target) == (f"patient:{ben}", f"session:{wednesday}")

        # The group's therapist sees it on the day.
        move_to(clock, STARTS_AT - timedelta(hours=1))
        sign_in(client)
        today = client.get("/staff")
        assert f"Can't make it: {NAMES['ben']} ({REASON})" in today.text

        # The session comes and goes; nobody joins.
        move_to(clock, STARTS_AT + timedelta(hours=3, minutes=5))
        await settle(client, db, clock)
        assert phone.get(path).status_code == 410  # too late to say so now
        sign_in(client)
        page = client.get(f"/staff/sessions/{wednesday}/attendance")
        assert page.status_code == 200
        assert f"said ahead they can't make it: {REASON}" in page.text
        db.expire_all()
        program = await db.get(Program, world.program_id)
        week = IsoWeek.containing(clock.now(), program.timezone)
        dosage = {key: await records.patient_week_dosage(
            db, await db.get(Patient, world.patients[key]), program, week, clock.now())
            for key in ("ada", "ben")}
        assert (dosage["ben"].sessions_excused, dosage["ben"].sessions_missed) == (1, 1)
        assert (dosage["ada"].sessions_excused, dosage["ada"].sessions_missed) == (0, 2)
        assert (dosage["ada"].consecutive_absences, dosage["ben"].consecutive_absences) == (2, 1)

        # Two unexcused absences in a row: Ada is on the outreach list, with both sessions;
        # Ben, one of whose absences was excused, is not.
        board = client.get("/staff/dashboard")
        assert f'data-outreach="{ada}"' in board.text
        assert f'data-outreach="{ben}"' not in board.text
        card = board.text.split(f'data-outreach="{ada}"')[1].split("</li>\n")[0]
        assert f"/staff/sessions/{monday}/attendance" in card
        assert f"/staff/sessions/{wednesday}/attendance" in card
        csrf = csrf_from(board.text)
        refused = client.post(f"/staff/patients/{ben}/outreach",
                              data={"note": "Called", "csrf_token": csrf})
        assert refused.status_code == 400 and "not on the outreach list" in refused.text
        empty = client.post(f"/staff/patients/{ada}/outreach", data={"note": " ",
                                                                      "csrf_token": csrf})
        assert empty.status_code == 400
        db.expire_all()
        assert (await db.execute(select(OutreachContact))).scalars().all() == []
        recorded = client.post(f"/staff/patients/{ada}/outreach", data={
            "note": "Phoned her; back on Friday", "csrf_token": csrf}, follow_redirects=False)
        assert recorded.status_code == 303
        assert f'data-outreach="{ada}"' not in client.get("/staff/dashboard").text
        db.expire_all()
        [contact] = (await db.execute(select(OutreachContact))).scalars().all()
        assert (contact.patient_id, contact.sessions) == (ada, [monday, wednesday])
        assert (await db.execute(select(AuditEvent).where(
            AuditEvent.action == "outreach-recorded"))).scalar_one().target == f"patient:{ada}"


# --- the rule -----------------------------------------------------------------------------

BASE = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)
A, P, X, E = (AttendanceStatus.ABSENT, AttendanceStatus.PARTIAL, AttendanceStatus.PRESENT,
              AttendanceStatus.EXCUSED)


def history(*statuses: AttendanceStatus) -> list[ScheduledAttendance]:
    return [ScheduledAttendance(n, BASE + timedelta(days=n), BASE + timedelta(days=n, hours=3),
                                status) for n, status in enumerate(statuses)]


# statuses oldest first, days since the contact (None: never) -> the sessions of the streak
STREAKS = [
    ((A, A), None, (0, 1)),
    ((X, A, A), None, (1, 2)),
    ((A, X, A), None, (2,)),
    ((A, E, A), None, (0, 2)),  # an excused absence neither counts nor ends the row
    ((A, A, P), None, ()),  # coming for part of a session ends it
    ((A, A, E), None, (0, 1)),
    ((A, A, A), 1.5, (2,)),  # only absences after the contact count
    ((A, A), 5, ()),
    ((), None, ()),
]


@pytest.mark.parametrize(("statuses", "contact_days", "expected"), STREAKS)
def test_absences_in_a_row_since_the_last_contact(statuses, contact_days, expected):
    since = BASE + timedelta(days=contact_days) if contact_days is not None else None
    found = absence_streak(history(*statuses), BASE + timedelta(days=30), since)
    assert tuple(s.session_id for s in found) == expected


def test_a_session_still_to_come_is_not_an_absence():
    sessions = history(A, A)
    assert [s.session_id for s in absence_streak(sessions, BASE + timedelta(days=1, hours=1))
            ] == [0]
