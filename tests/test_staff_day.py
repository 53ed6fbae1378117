"""A staff member's day on the real pages (issue #16): live sessions say who is where, a
therapist's hold never turns minutes into audio-only (93), alerts are dismissed with a note,
past sessions say how they went, exports name people, confirmations before what can't be
undone. Real SQLite, the real app through Starlette's TestClient."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from tests.conftest import TEST_KEYS, csrf_from
from vio.attendance.dosage import DosageAlert
from vio.attendance.export import MODIFIER_AUDIO_VIDEO, REDISCLOSURE_NOTICE, modifier_for, parse_csv
from vio.attendance.intervals import (
    Event,
    Hold,
    Modality,
    Presence,
    SessionWindow,
    attendance_by_person,
    presence_now,
)
from vio.identity import patient_identity, staff_identity
from vio.models import (
    AlertDismissal,
    AttendanceEvent,
    AttendanceKind,
    AuditEvent,
    PatientLink,
    RosterMembership,
    Session,
    SessionStatus,
    StaffRole,
    StaffUser,
)
from vio.pages.attendance import last_month
from vio.security import hash_password

K = AttendanceKind
START = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
WINDOW = SessionWindow(START, START + timedelta(minutes=90))
PATIENT = "patient:7"
THERAPIST = "staff:1"


def at(minute: float) -> datetime:
    return START + timedelta(minutes=minute)


def event(n: int, minute: float, kind: AttendanceKind, person: str | None = None,
          connection: str | None = None, **detail: object) -> Event:
    role = None if person is None else "patient" if person.startswith("patient") else "therapist"
    return Event(id=n, session_id=1, at=at(minute), kind=kind, person=person, role=role,
                 connection=connection, patient_id=7 if person == PATIENT else None,
                 detail=detail)


# --- a therapist's hold is not the patient's modality ------------------------------------------

def _video_stopped_by_therapist() -> list[Event]:
    """In from 0 with camera and microphone; at 30 the therapist stops the video (the server
    then sees audio only); the connection drops at 40 and comes back at 45, still held; at 60
    the patient turns the camera back on; left at 90."""
    return [event(1, 0, K.ADMITTED, PATIENT, "p-1"),
            event(2, 0, K.MEDIA, PATIENT, "p-1", audio=True, video=True),
            event(3, 30, K.MEDIA, PATIENT, "p-1", audio=True, video=False),
            event(4, 40, K.DROPPED, PATIENT, "p-1"),
            event(5, 45, K.ADMITTED, PATIENT, "p-2"),
            event(6, 45, K.MEDIA, PATIENT, "p-2", audio=True, video=False),
            event(7, 60, K.MEDIA, PATIENT, "p-2", audio=True, video=True),
            event(8, 90, K.LEFT, PATIENT, "p-2")]


def test_minutes_with_the_video_held_by_a_therapist_stay_audio_video_95():
    events = _video_stopped_by_therapist()
    held = attendance_by_person(events, WINDOW, 75,
                                [Hold(at(30), PATIENT, "video", THERAPIST)])[PATIENT]
    assert held.attended_minutes == 85  # 5 minutes away between the drop and the rejoin
    assert (held.audio_video_minutes, held.audio_only_minutes, held.held_minutes) == (85, 0, 25)
    assert modifier_for(held.audio_video_minutes, held.audio_only_minutes) == MODIFIER_AUDIO_VIDEO
    assert [(s.start, s.end, s.modality) for s in held.spans] == [
        (at(0), at(30), Modality.AUDIO_VIDEO), (at(30), at(40), Modality.HELD_BY_THERAPIST),
        (at(45), at(60), Modality.HELD_BY_THERAPIST), (at(60), at(90), Modality.AUDIO_VIDEO)]
    # The same log without the therapist's hold: the patient turned the camera off themselves.
    own = attendance_by_person(events, WINDOW, 75)[PATIENT]
    assert (own.audio_video_minutes, own.audio_only_minutes, own.held_minutes) == (60, 25, 0)


def test_a_mute_with_video_on_is_a_hold_and_a_hold_ends_when_the_media_returns():
    events = [event(1, 0, K.ADMITTED, PATIENT, "p-1"),
              event(2, 0, K.MEDIA, PATIENT, "p-1", audio=True, video=True),
              event(3, 10, K.MEDIA, PATIENT, "p-1", audio=False, video=True),  # muted at 10
              event(4, 20, K.MEDIA, PATIENT, "p-1", audio=True, video=True),  # unmutes
              event(5, 50, K.MEDIA, PATIENT, "p-1", audio=False, video=True),  # mutes self
              event(6, 90, K.LEFT, PATIENT, "p-1")]
    measured = attendance_by_person(events, WINDOW, 75,
                                    [Hold(at(10), PATIENT, "audio", THERAPIST)])[PATIENT]
    assert measured.held_minutes == 10  # 10 to 20 only: the hold ended when audio came back
    assert measured.audio_video_minutes == 50
    assert [s.modality for s in measured.spans] == [
        Modality.AUDIO_VIDEO, Modality.HELD_BY_THERAPIST, Modality.AUDIO_VIDEO, Modality.NO_MEDIA]
    # Holding a camera that was already off changes nothing: audio-only stays audio-only.
    own_choice = [event(1, 0, K.ADMITTED, PATIENT, "p-1"),
                  event(2, 0, K.MEDIA, PATIENT, "p-1", audio=True, video=False),
                  event(3, 90, K.LEFT, PATIENT, "p-1")]
    kept = attendance_by_person(own_choice, WINDOW, 75,
                                [Hold(at(10), PATIENT, "video", THERAPIST)])[PATIENT]
    assert (kept.audio_only_minutes, kept.held_minutes, kept.audio_video_minutes) == (90, 0, 0)
    # A hold of someone else's video changes nothing for this patient.
    other = attendance_by_person(events, WINDOW, 75, [Hold(at(10), "patient:8", "audio")])
    assert other[PATIENT].held_minutes == 0


# --- who is where while the session runs ---------------------------------------------------------

def test_presence_from_the_log():
    events = [event(1, 0, K.ADMITTED, THERAPIST, "p-t"),
              event(2, 1, K.CHECKED_IN, PATIENT, "p-1", location="home"),
              event(3, 2, K.WAITING, PATIENT, "p-1"),
              event(4, 3, K.WAITING, "patient:8", "p-2"),
              event(5, 4, K.ADMITTED, "patient:8", "p-2"),
              event(6, 5, K.WAITING, "patient:9", "p-3"),
              event(7, 6, K.DENIED, "patient:9", "p-3"),
              event(8, 7, K.CHECKED_IN, "patient:10", "p-4", location="home")]
    assert presence_now(events) == {THERAPIST: Presence.IN_ROOM, PATIENT: Presence.WAITING,
                                    "patient:8": Presence.IN_ROOM, "patient:9": Presence.LEFT}
    ended = presence_now([*events, event(9, 8, K.SESSION_ENDED, present=["p-t", "p-2"])])
    assert set(ended.values()) == {Presence.LEFT}


# --- pages -------------------------------------------------------------------------------------

def _sign_in(client, email="therapist@demo.vio", password="demo-therapist"):  # type: ignore[no-untyped-def]
    token = csrf_from(client.get("/login").text)
    response = client.post("/login", data={"email": email, "password": password,
                                           "csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return csrf_from(client.get("/staff").text)


async def _live(db, demo) -> Session:  # type: ignore[no-untyped-def]
    return (await db.execute(select(Session).where(
        Session.group_id == demo.group.id, Session.status == SessionStatus.SCHEDULED)
        .order_by(Session.starts_at))).scalars().first()


async def _log(db, session: Session, minute: float, kind: AttendanceKind,  # type: ignore[no-untyped-def]
               person: str | None = None, connection: str | None = None, **detail: object) -> None:
    role = None if person is None else "patient" if person.startswith("patient") else "therapist"
    patient_id = int(person.split(":")[1]) if person and person.startswith("patient") else None
    db.add(AttendanceEvent(session_id=session.id, at=session.starts_at + timedelta(minutes=minute),
                           kind=kind, person=person, role=role, connection=connection,
                           patient_id=patient_id, detail=detail))
    await db.commit()


async def test_a_live_session_says_who_is_in_the_room_and_who_is_waiting(client, demo, db):
    session = await _live(db, demo)
    dana, marcus = demo.patients["Dana Reyes"], demo.patients["Marcus Lee"]
    await _log(db, session, 1, K.ADMITTED, staff_identity(demo.therapist.id), "p-t")
    await _log(db, session, 2, K.ADMITTED, patient_identity(dana.id), "p-d")
    await _log(db, session, 2, K.MEDIA, patient_identity(dana.id), "p-d", audio=True, video=True)
    await _log(db, session, 3, K.WAITING, patient_identity(marcus.id), "p-m")
    _sign_in(client)
    page = client.get(f"/staff/sessions/{session.id}/attendance").text
    cells = dict(re.findall(r'data-presence="([a-z_]+)">([^<]+)<', page))
    assert re.findall(r'data-presence="([a-z_]+)"', page).count("not_here") == 4  # 4 more rostered
    assert cells == {"in_room": "in the room now", "waiting": "waiting",
                     "not_here": "not here yet"}
    assert "<strong>absent</strong>" not in page and "Live now" in page
    assert page.count("\u2013now") == 2 and "min early" not in page  # still in: counted until now
    today = client.get("/staff").text
    row = re.search(rf'<tr data-session="{session.id}">(.*?)</tr>', today, re.S)
    assert row is not None
    assert "Live" in row[1] and "2 in the room, 1 waiting" in row[1] and "Open room" in row[1]
    # Once the room has ended it: absent in bold, no room to open, sign-off possible.
    await _log(db, session, 20, K.SESSION_ENDED, present=["p-t", "p-d"])
    session.status = SessionStatus.ENDED
    await db.commit()
    page = client.get(f"/staff/sessions/{session.id}/attendance").text
    assert "<strong>absent</strong>" in page and "data-presence" not in page
    assert "ended early at" in page
    today = client.get("/staff").text
    row = re.search(rf'<tr data-session="{session.id}">(.*?)</tr>', today, re.S)
    assert row is not None and "Open room" not in row[1] and "ended early" in row[1]
    assert f'href="/staff/sessions/{session.id}/attendance"' in row[1]


async def test_a_session_ended_early_can_be_signed_off_after_a_confirmation(client, demo, db):
    session = await _live(db, demo)
    token = _sign_in(client)
    path = f"/staff/sessions/{session.id}/attendance"
    assert 'name="confirm"' not in client.get(path).text  # still running: nothing to confirm
    too_soon = client.post(path, data={"csrf_token": token, "action": "sign-off",
                                       "confirm": "yes"})
    assert too_soon.status_code == 400 and "once the session has ended" in too_soon.text
    await _log(db, session, 1, K.ADMITTED, staff_identity(demo.therapist.id), "p-t")
    await _log(db, session, 30, K.SESSION_ENDED, present=["p-t"])
    session.status = SessionStatus.ENDED
    await db.commit()
    page = client.get(path).text
    button = re.search(r'<button name="action" value="sign-off"[^>]*>', page)
    assert button is not None and "disabled" not in button[0]
    assert re.search(r'name="confirm" value="yes" required', page)
    unconfirmed = client.post(path, data={"csrf_token": token, "action": "sign-off"})
    assert unconfirmed.status_code == 400 and "Tick the box" in unconfirmed.text
    assert "This record is locked" not in client.get(path).text
    signed = client.post(path, data={"csrf_token": token, "action": "sign-off",
                                     "confirm": "yes"}, follow_redirects=False)
    assert signed.status_code == 303
    assert "This record is locked" in client.get(path).text


async def test_an_alert_is_dismissed_with_a_note_for_its_week_only(client, demo, db, clock):
    marcus = demo.patients["Marcus Lee"]
    token = _sign_in(client)
    dashboard = client.get("/staff/dashboard").text
    item = (f'data-patient="{marcus.id}" data-alert="{DosageAlert.CONSECUTIVE_ABSENCES.value}"')
    assert item in dashboard and "missed in a row" in dashboard
    week = re.search(r'name="week" value="([0-9]{4}-W[0-9]{2})"', dashboard)
    assert week is not None
    form = {"csrf_token": token, "alert": DosageAlert.CONSECUTIVE_ABSENCES.value,
            "week": week[1], "next": "/staff/dashboard"}
    path = f"/staff/patients/{marcus.id}/alerts"
    for bad, says in (({"note": "   "}, "Write a note"), ({"note": "x", "alert": "nope"},
                                                           "Choose one of"),
                      ({"note": "x", "week": "2026-W99"}, "Give the week"),
                      ({"note": "x", "week": "2027-W02"}, "weeks to come"),
                      ({"note": "x" * 501}, "under 500")):
        refused = client.post(path, data={**form, **bad})
        assert refused.status_code == 400 and says in refused.text, bad
    dana = demo.patients["Dana Reyes"]  # no absences: no such alert to dismiss
    refused = client.post(f"/staff/patients/{dana.id}/alerts", data={**form, "note": "x"})
    assert refused.status_code == 400 and "no such alert" in refused.text
    assert (await db.execute(select(func.count()).select_from(AlertDismissal))).scalar_one() == 0
    done = client.post(path, data={**form, "note": "Called him; back on Wednesday."},
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/staff/dashboard"
    dashboard = client.get("/staff/dashboard").text
    assert item not in dashboard  # gone for this week
    assert f'data-patient="{marcus.id}" data-alert="below-target-last-week"' in dashboard
    dosage = client.get(f"/staff/patients/{marcus.id}/dosage").text
    assert re.search(r"Dismissed by Jordan Alvarez, LCSW on \w+ \w+ \d+, \d+:\d\d [AP]M CST: "
                     r"Called him; back on Wednesday\.", dosage)
    again = client.post(path, data={**form, "note": "twice"})
    assert again.status_code == 400 and "already dismissed" in again.text
    audit = (await db.execute(select(AuditEvent).where(AuditEvent.action == "alert-dismissed"))
             ).scalar_one()
    assert audit.actor == staff_identity(demo.therapist.id)
    assert audit.target == patient_identity(marcus.id)
    assert audit.detail["week"] == week[1] and audit.detail["alert"] == "consecutive-absences"
    # Next week the alert is back on the dashboard (if still true): a dismissal is for one week.
    clock.advance(timedelta(days=7))
    _sign_in(client)  # a week later the sign-in has long ended
    later = client.get("/staff/dashboard").text
    assert f'data-patient="{marcus.id}" data-alert="consecutive-absences"' in later


async def test_only_staff_who_may_see_the_patient_dismiss_their_alerts(client, demo, db):
    outsider = StaffUser(program_id=demo.program.id, name="Lee Outside", email="lee@demo.vio",
                         role=StaffRole.THERAPIST, password_hash=hash_password("lee-password"))
    db.add(outsider)
    await db.commit()
    marcus = demo.patients["Marcus Lee"]
    token = _sign_in(client, "lee@demo.vio", "lee-password")
    assert "Marcus Lee" not in client.get("/staff/dashboard").text
    refused = client.post(f"/staff/patients/{marcus.id}/alerts", data={
        "csrf_token": token, "alert": "consecutive-absences", "week": "2026-W48",
        "note": "not mine"})
    assert refused.status_code == 404
    client.cookies.clear()
    anonymous = client.post(f"/staff/patients/{marcus.id}/alerts", data={
        "alert": "consecutive-absences", "week": "2026-W48", "note": "x"},
        follow_redirects=False)
    assert anonymous.status_code in (303, 403)
    assert (await db.execute(select(func.count()).select_from(AlertDismissal))).scalar_one() == 0


async def test_the_sessions_page_lists_past_sessions_with_how_they_went(client, demo, db):
    past = list((await db.execute(select(Session).where(
        Session.status == SessionStatus.ENDED).order_by(Session.starts_at))).scalars())
    assert len(past) == 3  # the demo's last week
    nobody = past[0]
    await db.execute(AttendanceEvent.__table__.delete().where(
        AttendanceEvent.session_id == nobody.id, AttendanceEvent.kind != K.SESSION_ENDED))
    early = past[1]
    await db.execute(AttendanceEvent.__table__.update().where(  # everyone left at the end
        AttendanceEvent.session_id == early.id,
        AttendanceEvent.kind.in_([K.LEFT, K.SESSION_ENDED])).values(
        at=early.starts_at + timedelta(hours=1)))
    await db.commit()
    _sign_in(client)
    page = client.get("/staff/sessions").text
    upcoming, _, earlier = page.partition("Past 28 days")
    live = await _live(db, demo)
    assert f'data-session="{live.id}"' in upcoming and "Live" in upcoming
    outcomes = dict(re.findall(r'<tr data-session="(\d+)">.*?data-outcome="([a-z ]+)"',
                               earlier, re.S))
    assert outcomes == {str(nobody.id): "not held", str(early.id): "ended early",
                        str(past[2].id): "held"}
    for session in past:
        assert f'href="/staff/sessions/{session.id}/attendance"' in earlier
        assert f'data-session="{session.id}"' not in upcoming
    assert "CST" in earlier  # every time says its zone


async def test_exports_name_the_people_and_sessions_and_default_to_last_month(client, demo, db,
                                                                             clock):
    _sign_in(client, "admin@demo.vio", "demo-admin")
    dashboard = client.get("/staff/dashboard").text
    first, last = last_month(date(2026, 11, 23))
    assert (first, last) == (date(2026, 10, 1), date(2026, 10, 31))
    assert f'name="from" value="{first}"' in dashboard and f'name="to" value="{last}"' in dashboard
    response = client.get("/staff/exports/attendance.csv?from=2026-11-16&to=2026-11-22")
    assert response.status_code == 200
    assert next(csv.reader(io.StringIO(response.text))) == [REDISCLOSURE_NOTICE]
    rows = parse_csv(response.text)
    dana = demo.patients["Dana Reyes"]
    mine = [r for r in rows if r.patient_id == dana.id]
    assert len(mine) == 3 and {r.name for r in mine} == {"Dana Reyes"}
    assert {r.title for r in mine} == {"Evening Process Group"}
    header = response.text.split("\r\n")[1].split(",")
    assert header[header.index("person") + 1] == "name"
    fhir = client.get("/staff/exports/attendance.fhir.json?from=2026-11-16&to=2026-11-22").json()
    encounter = next(e["resource"] for e in fhir["entry"]
                     if e["resource"]["subject"]["reference"] == f"Patient/{dana.id}")
    assert encounter["subject"]["display"] == "Dana Reyes"
    assert encounter["extension"][0]["valueString"] == "Evening Process Group"
    assert fhir["meta"]["tag"][0]["display"] == REDISCLOSURE_NOTICE
    exported = (await db.execute(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == "attendance-exported"))).scalar_one()
    assert exported == 2


async def test_the_audit_log_names_people_in_program_time_with_readable_detail(client, demo, db):
    token = _sign_in(client, "admin@demo.vio", "demo-admin")
    marcus = demo.patients["Marcus Lee"]
    client.post(f"/staff/patients/{marcus.id}/alerts", data={
        "csrf_token": token, "alert": "consecutive-absences", "week": "2026-W48",
        "note": "Reached by phone"})
    page = client.get("/staff/audit?action=alert-dismissed").text
    row = re.search(r"<tbody><tr>(.*?)</tr>", page, re.S)
    assert row is not None, page
    cells = row[1]
    assert "Sam Okafor" in cells and "Marcus Lee" in cells
    assert re.search(r"2026-11-23 \d+:\d\d:\d\d [AP]M CST", cells)
    assert "<dt>note</dt> <dd>Reached by phone</dd>" in cells
    assert "{&#34;" not in cells and '{"' not in cells  # no raw JSON
    assert f"patient:{marcus.id}" not in cells and "staff:" not in cells


async def test_ending_a_membership_needs_a_confirmation(client, demo, db):
    token = _sign_in(client, "admin@demo.vio", "demo-admin")
    membership = (await db.execute(select(RosterMembership).where(
        RosterMembership.patient_id == demo.patients["Tom Becker"].id))).scalar_one()
    path = f"/staff/groups/{demo.group.id}"
    page = client.get(path).text
    assert re.search(r'name="confirm" value="yes" required', page)
    form = {"csrf_token": token, "action": "end-membership", "membership_id": str(membership.id),
            "left_on": "2026-11-23"}
    refused = client.post(path, data=form)
    assert refused.status_code == 400 and "Tick the box" in refused.text
    await db.refresh(membership)
    assert membership.left_on is None
    done = client.post(path, data={**form, "confirm": "yes"}, follow_redirects=False)
    assert done.status_code == 303
    await db.refresh(membership)
    assert membership.left_on == date(2026, 11, 23)


async def test_patient_page_asks_before_turning_off_links_and_offers_copy(client, demo, db):
    token = _sign_in(client, "admin@demo.vio", "demo-admin")
    dana = demo.patients["Dana Reyes"]
    page = client.get(f"/staff/patients/{dana.id}").text
    revoke = re.search(r'<form[^>]*id="revoke-links".*?</form>', page, re.S)
    assert revoke is not None and re.search(r'name="confirm" value="yes" required', revoke[0])
    issued = client.post(f"/staff/patients/{dana.id}", data={"csrf_token": token,
                                                            "action": "issue-link"}).text
    assert re.search(r'<button type="button" data-copy-from="patient-link"[^>]*>Copy</button>',
                     issued)
    assert 'id="patient-link"' in issued and "/p/" in issued
    assert json.dumps("copy.js")[1:-1] in issued
    # Without the box ticked the server changes nothing, even when the browser is bypassed.
    unconfirmed = client.post(f"/staff/patients/{dana.id}", data={"csrf_token": token,
                                                                 "action": "revoke-links"})
    assert unconfirmed.status_code == 400 and "Tick the box" in unconfirmed.text
    assert await db.scalar(select(func.count()).select_from(PatientLink).where(
        PatientLink.patient_id == dana.id, PatientLink.revoked_at.is_(None))) > 0


async def test_the_rooms_own_stop_video_keeps_the_minutes_audio_video_on_the_record(
        engine, demo, db, client):
    """The room's own transitions, written by its own store: the therapist stops Dana's video
    ten minutes in; the server then sees only her audio for 30 minutes. The record (page and
    export) bills those minutes 95 and says the therapist held the video."""
    from vio.attendance.export import parse_csv
    from vio.clock import ManualClock
    from vio.db import session_factory
    from vio.rooms.admission import Person, Role
    from vio.rooms.effects import Audit, Record
    from vio.rooms.outbox import Outbox
    from vio.rooms.records import DatabaseRoomStore, load_facts
    from vio.rooms.room import Room
    from vio.settings import Settings

    session = await _live(db, demo)
    dana = demo.patients["Dana Reyes"]
    room_clock = ManualClock(session.starts_at)
    facts = await load_facts(db, session.id, room_clock.now())
    assert facts is not None
    facts = dataclasses.replace(facts, checked_in_patient_ids=frozenset({dana.id}))
    settings = Settings.from_env({}, secret_key="x")
    room = Room(facts, settings, room_clock)
    store = DatabaseRoomStore(session_factory(engine, TEST_KEYS), room_clock)

    async def apply(effects: list) -> None:  # type: ignore[type-arg]
        for effect in effects:
            if isinstance(effect, Record):
                await store.record(session.id, effect.event)
            elif isinstance(effect, Audit):
                await store.audit(effect.actor, effect.action, effect.target, **effect.detail)

    therapist_person = Person(staff_identity(demo.therapist.id), Role.THERAPIST, "Jordan",
                              staff_id=demo.therapist.id)
    patient_person = Person(patient_identity(dana.id), Role.PATIENT, "Dana R.",
                            patient_id=dana.id)
    therapist, effects = room.join(therapist_person, Outbox(settings.ws_send_queue), facts)
    await apply(effects)
    patient, effects = room.join(patient_person, Outbox(settings.ws_send_queue), facts)
    await apply(effects)
    if patient.id in room.waiting:
        await apply(room.admit(therapist, patient.id))
    await apply(room.media_arrived(patient.id, audio=True, video=True))
    room_clock.advance(timedelta(minutes=10))
    await apply(room.hold(therapist, patient.id, "video"))
    await apply(room.media_arrived(patient.id, audio=True, video=False))
    room_clock.advance(timedelta(minutes=30))
    await apply(room.leave(patient))
    room_clock.advance(timedelta(minutes=5))
    await apply(room.end("ended"))
    _sign_in(client, "admin@demo.vio", "demo-admin")
    page = client.get(f"/staff/sessions/{session.id}/attendance").text
    assert "30 min audio-video with the video or microphone held by the therapist" in page
    day = session.starts_at.astimezone(ZoneInfo("America/Chicago")).date()
    rows = parse_csv(client.get(f"/staff/exports/attendance.csv?from={day}&to={day}").text)
    row = next(r for r in rows if r.session_id == session.id and r.patient_id == dana.id)
    assert (row.audio_video_minutes, row.audio_only_minutes, row.held_minutes) == (40, 0, 30)
    assert row.modifier == MODIFIER_AUDIO_VIDEO
    assert row.modality_note == "30 min audio-video with the video or microphone held by the " \
                                "therapist"


async def test_turning_off_a_staff_account_needs_a_confirmation(client, demo, db):
    token = _sign_in(client, "admin@demo.vio", "demo-admin")
    therapist = demo.therapist
    page = client.get("/staff/team").text
    assert re.search(r'name="confirm" value="yes" required', page)
    unconfirmed = client.post("/staff/team", data={"csrf_token": token, "action": "deactivate",
                                                   "staff_id": str(therapist.id)})
    assert unconfirmed.status_code == 400 and "Tick the box" in unconfirmed.text
    await db.refresh(therapist)
    assert therapist.active
    done = client.post("/staff/team", data={"csrf_token": token, "action": "deactivate",
                                            "staff_id": str(therapist.id), "confirm": "yes"},
                       follow_redirects=False)
    assert done.status_code == 303
    await db.refresh(therapist)
    assert not therapist.active
