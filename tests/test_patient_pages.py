"""The patient's and family member's pages outside the room: the home page's cue for each
session (live, opening, later, ended early, cancelled), the hours still scheduled when a
session ends early (and the staff's dosage agreeing), check-in from the home on record, the
sign-out for a shared device, and the family invite before its session opens and when it
can't be used."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select

from tests.conftest import csrf_from
from tests.test_family import family_session, issue, member
from vio import clinic, family
from vio.attendance import records as attendance
from vio.attendance.dosage import IsoWeek
from vio.models import (
    AttendanceEvent,
    AttendanceKind,
    FamilyInvite,
    Patient,
    Program,
    Session,
    SessionKind,
    SessionStatus,
)
from vio.pages.patient import Cue, home_lines, lead_line, main_action, session_line
from vio.security import Signer

ZONE = "America/Chicago"
EARLY = timedelta(minutes=15)
# 6:00 PM Central Standard Time on Tuesday December 1, 2026.
SIX_PM = datetime(2026, 12, 2, 0, 0, tzinfo=UTC)


def _session(starts_at: datetime = SIX_PM, minutes: int = 180,
             status: SessionStatus = SessionStatus.SCHEDULED, session_id: int = 1) -> Session:
    return Session(id=session_id, title="Evening Process Group", kind=SessionKind.GROUP,
                   starts_at=starts_at, duration_minutes=minutes, extended_minutes=0,
                   timezone=ZONE, status=status)


# --- the cue for each session (pure) -----------------------------------------------------------

def test_each_session_says_when_it_opens_starts_or_ended_with_its_zone():
    later = session_line(_session(), SIX_PM - timedelta(hours=2), EARLY, ZONE)
    assert (later.cue, later.label, later.joinable) == (Cue.LATER, "Opens at 5:45 PM CST", False)
    assert later.when == "Tuesday December 1 at 6:00 PM CST"

    opening = session_line(_session(), SIX_PM - timedelta(minutes=12), EARLY, ZONE)
    assert (opening.cue, opening.label, opening.joinable) == (
        Cue.OPENING, "Starts in 12 minutes", True)
    almost = session_line(_session(), SIX_PM - timedelta(seconds=20), EARLY, ZONE)
    assert almost.label == "Starts in 1 minute"

    live = session_line(_session(), SIX_PM + timedelta(minutes=30), EARLY, ZONE)
    assert (live.cue, live.label, live.joinable) == (Cue.LIVE, "Live now", True)

    ended = session_line(_session(status=SessionStatus.ENDED), SIX_PM + timedelta(hours=1),
                         EARLY, ZONE, ended_at=SIX_PM + timedelta(minutes=40))
    assert (ended.cue, ended.label, ended.joinable) == (
        Cue.ENDED, "Ended early at 6:40 PM CST", False)
    assert ended.minutes == 40  # as held, not the 180 scheduled

    cancelled = session_line(_session(status=SessionStatus.CANCELLED), SIX_PM, EARLY, ZONE)
    assert (cancelled.cue, cancelled.joinable) == (Cue.CANCELLED, False)


def test_the_main_action_is_the_live_session_and_past_sessions_are_left_out():
    now = SIX_PM + timedelta(minutes=10)
    sessions = [_session(SIX_PM + timedelta(minutes=15), 60, session_id=2),  # opening
                _session(SIX_PM, 60, session_id=1),  # live
                _session(SIX_PM - timedelta(hours=3), 60, session_id=3),  # over
                _session(SIX_PM + timedelta(days=1), 60, session_id=4)]  # tomorrow
    lines = home_lines(sessions, now, EARLY, ZONE, {})
    assert [line.session.id for line in lines] == [1, 2, 4]
    chosen = main_action(lines)
    assert chosen is not None and chosen.session.id == 1
    assert main_action(home_lines(sessions[3:], now, EARLY, ZONE, {})) is None
    tomorrow = lead_line(home_lines(sessions[3:], now, EARLY, ZONE, {}))
    assert tomorrow is not None and tomorrow.session.id == 4 and tomorrow.cue is Cue.LATER
    assert tomorrow.opens_in_seconds == (timedelta(days=1, minutes=-25)).total_seconds()
    ended = home_lines(sessions[1:2], now, EARLY, ZONE, {1: SIX_PM + timedelta(minutes=5)})
    assert main_action(ended) is None


# --- the home page --------------------------------------------------------------------------

async def _sign_in(client, db, settings, clock, name: str = "Dana Reyes") -> Patient:
    patient = (await db.execute(select(Patient).where(Patient.legal_name == name))).scalar_one()
    token = await clinic.issue_patient_link(db, Signer(settings.secret_key), patient, clock.now())
    await db.commit()
    assert client.get(f"/p/{token}", follow_redirects=False).status_code == 303
    return patient


async def _group_session(db) -> Session:
    now_live = (await db.execute(select(Session).where(
        Session.kind == SessionKind.GROUP, Session.status == SessionStatus.SCHEDULED)
        .order_by(Session.starts_at.desc()))).scalars().first()
    assert now_live is not None
    return now_live


def _hours_scheduled(html: str) -> float:
    match = re.search(r"\(([0-9.]+) more hours scheduled\)", html)
    return float(match.group(1)) if match else 0.0


async def test_home_page_leads_with_the_live_session_and_every_time_names_its_zone(
        client, db, demo, settings, clock):
    await _sign_in(client, db, settings, clock, "Marcus Lee")  # on the roster, and has family
    page = client.get("/me").text
    group = await _group_session(db)
    assert f'<a class="button primary large" id="join-now" href="/sessions/{group.id}/room">' \
        in page
    assert 'id="next-cue">Live now<' in page
    family_start = (await family_session(db)).starts_at
    opens = (family_start - EARLY).astimezone(ZoneInfo(ZONE))
    assert f"Opens at {opens.strftime('%-I:%M %p')} CST" in page
    times = re.findall(r"\d{1,2}:\d\d [AP]M(?: ([A-Z]{3}))?", page)
    assert times and all(zone == "CST" for zone in times), times
    assert page.index('id="join-now"') < page.index('id="hours-this-week"')
    # Sign-out for a shared device, on the page itself.
    assert 'id="sign-out-here"' in page
    assert client.post("/logout", data={"csrf_token": csrf_from(page)},
                       follow_redirects=False).status_code == 303
    assert client.get("/me", follow_redirects=False).status_code == 303


async def test_a_session_ended_early_offers_no_join_and_its_unheld_time_is_not_scheduled(
        client, db, demo, settings, clock):
    patient = await _sign_in(client, db, settings, clock)
    group = await _group_session(db)
    clock.advance(timedelta(minutes=25))  # half an hour into the session
    before = client.get("/me").text
    assert 'id="join-now"' in before
    scheduled_before = _hours_scheduled(before)
    left = (group.ends_at - clock.now()).total_seconds() / 3600
    assert scheduled_before >= round(left, 1)

    ended_at = clock.now()
    group.status = SessionStatus.ENDED
    db.add(AttendanceEvent(session_id=group.id, at=ended_at, kind=AttendanceKind.SESSION_ENDED,
                           detail={"present": []}))
    await db.commit()
    clock.advance(timedelta(minutes=20))
    after = client.get("/me").text
    local = ended_at.astimezone(ZoneInfo(ZONE))
    assert f"Ended early at {local.strftime('%-I:%M %p')} CST" in after
    assert 'id="join-now"' not in after
    assert f'href="/sessions/{group.id}/room"' not in after
    scheduled_after = _hours_scheduled(after)
    assert round(scheduled_before - scheduled_after, 1) >= round(left, 1) - 0.1

    # The staff's weekly dosage counts the same hours still scheduled.
    program = await db.get(Program, patient.program_id)
    assert program is not None
    week = IsoWeek.containing(clock.now(), program.timezone)
    rows = await attendance.program_week_dosage(db, program, week, clock.now())
    dosage = next(d for p, d in rows if p.id == patient.id)
    assert round(dosage.remaining_hours, 1) == scheduled_after

    # Check-in for the ended session says it is over, and the way back.
    over = client.get(f"/sessions/{group.id}/check-in")
    assert over.status_code == 410
    assert "This session has ended" in over.text and 'href="/me"' in over.text
    # So does the room's own address, checked in or not.
    room = client.get(f"/sessions/{group.id}/room")
    assert room.status_code == 410 and "This session has ended" in room.text


async def test_check_in_offers_the_home_on_record_and_saves_it(client, db, demo, settings, clock):
    patient = await _sign_in(client, db, settings, clock)
    group = await _group_session(db)
    page = client.get(f"/sessions/{group.id}/check-in")
    assert page.status_code == 200
    assert f"At home <span class=\"muted\" id=\"home-address\">({patient.home_address})" \
        in page.text
    assert patient.home_address == "120 Maple Street, Springfield"
    assert "(Home)" not in page.text
    assert re.search(r"\d:\d\d [AP]M CST", page.text)
    sent = client.post(f"/sessions/{group.id}/check-in", data={
        "csrf_token": csrf_from(page.text), "location": "home", "address": "ignored"},
        follow_redirects=False)
    assert sent.status_code == 303
    saved = (await db.execute(select(AttendanceEvent).where(
        AttendanceEvent.session_id == group.id, AttendanceEvent.patient_id == patient.id,
        AttendanceEvent.kind == AttendanceKind.CHECKED_IN))).scalar_one()
    assert saved.detail == {"location": "home", "address": "120 Maple Street, Springfield"}


# --- the family invite ------------------------------------------------------------------------

async def test_an_invite_opened_early_says_when_it_opens_and_offers_a_device_check(
        client, db, demo, clock):
    client.app.state.invite_throttle.max_failures = 2
    token = await issue(db, clock)
    session = await family_session(db)
    for _ in range(4):  # reloading an early invite is no failed attempt
        page = client.get(f"/i/{token}")
        assert page.status_code == 425, page.text
    opens = (session.starts_at - EARLY).astimezone(ZoneInfo(ZONE))
    text = page.text
    assert f"This session opens at {opens.strftime('%-I:%M %p')} CST" in text
    assert f"{opens.strftime('%A %B %-d at %-I:%M %p')} CST" in text
    starts = session.starts_at.astimezone(opens.tzinfo)
    assert f"{starts.strftime('%A %B %-d at %-I:%M %p')} CST" in text
    wait = int(re.search(r'data-opens-in-seconds="(\d+)"', text).group(1))
    expected = (session.starts_at - EARLY - clock.now()).total_seconds()
    assert abs(wait - expected) <= 2
    assert 'id="device-check-start"' in text and "js/devicecheck.js" in text
    assert "js/countdown.js" in text and 'data-code="too-early"' in text
    assert "substance" not in text.lower()
    # Posting early changes nothing: no sign-in, the same page.
    posted = client.post(f"/i/{token}", data={"csrf_token": csrf_from(text), "name": "A",
                                              "terms": "yes"}, follow_redirects=False)
    assert posted.status_code == 425
    assert client.get("/me", follow_redirects=False).status_code == 303
    # Once the window opens, the same link shows the form to go in.
    clock.advance(session.starts_at - EARLY - clock.now() + timedelta(seconds=1))
    opened = client.get(f"/i/{token}")
    assert opened.status_code == 200 and 'id="family-terms"' in opened.text
    assert "device-check-start" not in opened.text


async def test_unusable_invites_have_a_headline_and_a_next_step(client, db, demo, clock):
    client.app.state.invite_throttle.max_failures = 100
    token = await issue(db, clock)
    invite = await db.get(FamilyInvite, int(token.split(".")[0]))
    await family.revoke_invite(db, invite, "staff:1", clock.now())
    await db.commit()
    cases = {"not-a-token": ("This link is not complete", "invite-malformed"),
             token: ("This invitation was withdrawn", "invite-revoked")}
    fresh = await issue(db, clock)
    stored = await db.get(FamilyInvite, int(fresh.split(".")[0]))
    stored.expires_at = clock.now() - timedelta(seconds=1)
    await db.commit()
    cases[fresh] = ("This invitation has expired", "invite-expired")
    for link, (headline, code) in cases.items():
        page = client.get(f"/i/{link}")
        assert f"<h1>{headline}</h1>" in page.text, page.text
        assert 'id="next-step"' in page.text and "contact the care team" in page.text
        assert f'data-code="{code}"' in page.text
        assert "substance" not in page.text.lower()
    assert (await member(db)) is not None


async def test_with_nothing_open_the_home_page_leads_with_when_the_next_one_opens(
        client, db, demo, settings, clock):
    await _sign_in(client, db, settings, clock, "Marcus Lee")
    group = await _group_session(db)
    group.starts_at = clock.now() + timedelta(hours=3)
    await db.commit()
    page = client.get("/me").text
    family_start = (await family_session(db)).starts_at
    opens = (family_start - EARLY).astimezone(ZoneInfo(ZONE))
    assert f'id="next-cue">Opens at {opens.strftime("%-I:%M %p")} CST<' in page
    assert 'id="join-now"' not in page and "/room" not in page
    assert "Also coming up" in page
    assert f'data-session-id="{group.id}"' in page.split("Also coming up")[1]
    assert "opens-countdown" not in page  # opens later than the idle sign-out: no reload

    family = await family_session(db)
    family.starts_at = clock.now() + EARLY + timedelta(minutes=10)
    await db.commit()
    soon = client.get("/me").text
    wait = int(re.search(r'id="opens-countdown" data-opens-in-seconds="(\d+)"', soon).group(1))
    assert abs(wait - 600) <= 2 and "js/countdown.js" in soon
