"""What a message says: never the type of care, a diagnosis, a session's title or anyone's
name; the time in the program's zone, named; a calendar entry that calendars read right.

``assert_discreet`` is the check the end-to-end tests run on every message the relay got."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import pytest
from icalendar import Calendar

from vio.demo import NOT_ON_ROSTER, ROSTER
from vio.mail.compose import Appointment, Letter, compose, when
from vio.mail.models import MessageKind

# Words a mailbox or lock screen must never show (42 CFR Part 2; DESIGN.md: "wording never
# reveals the type of care"): kinds of care and program, what is treated, and clinical words.
CARE_AND_DIAGNOSIS_TERMS = (
    "addiction", "alcohol", "substance", "drug", "opioid", "recovery", "relapse", "sober",
    "rehab", "detox", "methadone", "suboxone", "12-step", "aa meeting", "narcotic",
    "intensive outpatient", "outpatient", "iop", "partial hospital", "php", "inpatient",
    "psychiatr", "mental", "behavioral health", "behavioural", "therapy", "therapist",
    "therapeutic", "counsel", "psycho", "treatment", "diagnos", "disorder",
    "depress", "anxiety", "bipolar", "schizo", "ptsd", "trauma", "eating", "suicid",
    "self-harm", "crisis", "patient", "process group", "asam", "h0015", "s9480", "90853",
)
SESSION_TITLE = "Evening Process Group"


def text_of(message: EmailMessage) -> str:
    """Subject, headers people see, and every text part (the calendar entry too)."""
    parts = [str(message["Subject"]), str(message["From"])]
    for part in message.walk():
        if part.get_content_maintype() == "multipart":
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            parts.append(payload.decode("utf-8", "replace"))
    return "\n".join(parts)


def assert_discreet(message: EmailMessage, names: tuple[str, ...] = ()) -> None:
    """No care or diagnosis word, no session title, none of ``names`` (first or last); the
    recipient's own address (in the calendar entry) set aside."""
    own = str(message["To"] or "").strip().lower()
    text = text_of(message).lower().replace(own, "") if own else text_of(message).lower()
    for term in CARE_AND_DIAGNOSIS_TERMS:
        assert not re.search(rf"(?<![a-z]){re.escape(term)}", text), (term, text[:2000])
    assert SESSION_TITLE.lower() not in text
    for name in names:
        for word in name.lower().split():
            if len(word) > 2:
                assert not re.search(rf"(?<![a-z]){re.escape(word)}(?![a-z])", text), (
                    name, text[:2000])


def calendar_of(message: EmailMessage) -> Calendar:
    attachment = next(p for p in message.walk()
                      if p.get_content_type() == "application/ics")
    calendar = Calendar.from_ical(attachment.get_payload(decode=True))
    inline = next(p for p in message.walk() if p.get_content_type() == "text/calendar")
    assert Calendar.from_ical(inline.get_payload(decode=True)).to_ical() == calendar.to_ical()
    return calendar


START = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
APPOINTMENT = Appointment(uid="vio-session-7@clinic.example.org", sequence=2, starts_at=START,
                          ends_at=START + timedelta(hours=3), timezone="America/Chicago")


def letter(kind: MessageKind, now: datetime = START - timedelta(hours=20),
           **extra: object) -> Letter:
    fields: dict[str, object] = dict(
        kind=kind, to="recipient@example.org", sender="appointments@clinic.example.org",
        display_name="Riverside Appointments", message_id="<vio.abc@clinic.example.org>",
        appointment=APPOINTMENT, now=now, opens_minutes_early=15,
        join_link="https://vio.example.org/p/token", unsubscribe_link="https://vio.example.org/u/t")
    if kind is not MessageKind.FAMILY_INVITE:
        fields["cant_make_it_link"] = "https://vio.example.org/m/t"
    fields.update(extra)
    return Letter(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", list(MessageKind))
def test_no_message_names_the_care_a_title_or_a_person(kind):
    message = compose(letter(kind, previous_start=START - timedelta(days=1),
                             for_family=kind is MessageKind.FAMILY_INVITE))
    assert_discreet(message, (*ROSTER, NOT_ON_ROSTER, "Angela Lee"))
    assert "Tuesday, November 24" in text_of(message)  # the day, in the program's zone
    assert "CST" in str(message["Subject"])


def test_the_check_catches_what_it_looks_for():
    bad = compose(letter(MessageKind.REMINDER,
                         display_name="Riverside Recovery Treatment Center"))
    with pytest.raises(AssertionError):
        assert_discreet(bad)
    with pytest.raises(AssertionError):
        assert_discreet(compose(letter(MessageKind.REMINDER, display_name="Dana's group")),
                        ("Dana Reyes",))


@pytest.mark.parametrize(("kind", "method", "status"), [
    (MessageKind.REMINDER, "REQUEST", "CONFIRMED"),
    (MessageKind.SESSION_MOVED, "REQUEST", "CONFIRMED"),
    (MessageKind.FAMILY_INVITE, "REQUEST", "CONFIRMED"),
    (MessageKind.SESSION_CANCELLED, "CANCEL", "CANCELLED"),
])
def test_the_calendar_entry_has_the_time_in_its_zone(kind, method, status):
    calendar = calendar_of(compose(letter(kind)))
    assert str(calendar["method"]) == method
    [event] = calendar.walk("VEVENT")
    start = event.decoded("dtstart")
    assert start == START and start.utcoffset() == timedelta(hours=-6)
    assert event["dtstart"].params["TZID"] == "America/Chicago"
    assert event.decoded("dtend") - start == timedelta(hours=3)
    assert str(event["uid"]) == APPOINTMENT.uid and int(event["sequence"]) == 2
    assert str(event["status"]) == status
    assert [str(z["tzid"]) for z in calendar.walk("VTIMEZONE")] == ["America/Chicago"]
    assert "/p/" not in calendar.to_ical().decode()  # the way in stays in the email


def test_headers_for_one_click_unsubscribe_and_a_fixed_message_id():
    message = compose(letter(MessageKind.REMINDER))
    assert message["List-Unsubscribe"] == "<https://vio.example.org/u/t>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Message-ID"] == "<vio.abc@clinic.example.org>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["From"].addresses[0].display_name == "Riverside Appointments"


@pytest.mark.parametrize(("now", "says"), [
    (datetime(2026, 11, 24, 23, 0, tzinfo=UTC), "today at 6:00 PM CST"),
    (datetime(2026, 11, 24, 6, 0, tzinfo=UTC), "today at 6:00 PM CST"),  # just after midnight
    (datetime(2026, 11, 24, 5, 0, tzinfo=UTC), "tomorrow at 6:00 PM CST"),  # the 24th in UTC
    (datetime(2026, 11, 23, 20, 0, tzinfo=UTC), "tomorrow at 6:00 PM CST"),
    (datetime(2026, 11, 20, 20, 0, tzinfo=UTC), "on Tue, Nov 24 at 6:00 PM CST"),
])
def test_days_are_counted_in_the_program_zone(now, says):
    assert when(START, now, "America/Chicago") == says
    assert START.astimezone(ZoneInfo("America/Chicago")).hour == 18
