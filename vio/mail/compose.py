"""What a message says, and its calendar entry: pure functions of a ``Letter``.

Every subject and text comes from ``wording``, the one table of words, and says only: an
appointment, its time in the program's zone (named), the program's neutral display name
(``VIO_MAIL_DISPLAY_NAME``), and links. Never the type of care, the group or session title, a
diagnosis or anyone's name: a shared mailbox or a phone's lock screen shows subjects, and 42 CFR
Part 2 forbids saying that a person is in a substance-use program.

The calendar entry (RFC 5545, ``icalendar``) has one ``UID`` per session, a ``SEQUENCE`` that
grows with each move or cancellation, and the session's own zone (``VTIMEZONE``); an update
is ``METHOD:REQUEST`` with the new time, a cancellation ``METHOD:CANCEL``. It carries no link.

Every message has ``List-Unsubscribe`` and ``List-Unsubscribe-Post`` (RFC 8058) when it has an
unsubscribe link, and ``Auto-Submitted: auto-generated`` (RFC 3834).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event, vCalAddress, vText

from vio.mail.models import MessageKind

DISPLAY_NAME_MAX_CHARS = 80
PRODID = "-//vio//appointments//EN"
CALENDAR_FILENAME = "appointment.ics"


class AddressProblem(ValueError):
    """An email address vio will not write to; the message says why."""


def checked_address(raw: str) -> str:
    """``raw`` as an address to send to (``someone@example.org``), or ``AddressProblem``."""
    text = raw.strip()
    if not text or not text.isascii() or any(c.isspace() or c in "<>,;\"\\" for c in text):
        raise AddressProblem("must be one email address such as someone@example.org")
    try:
        address = Address(addr_spec=text)
    except (HeaderParseError, IndexError, ValueError):
        raise AddressProblem("must be one email address such as someone@example.org") from None
    if not address.username or "." not in address.domain or address.domain.startswith(".") \
            or address.domain.endswith(".") or address.addr_spec != text:
        raise AddressProblem("must be one email address such as someone@example.org")
    return text


def checked_display_name(raw: str) -> str:
    name = " ".join(raw.split())
    if not name:
        raise ValueError("must not be empty")
    if len(name) > DISPLAY_NAME_MAX_CHARS or not name.isprintable():
        raise ValueError(f"must be at most {DISPLAY_NAME_MAX_CHARS} printable characters")
    return name


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


@dataclass(frozen=True)
class Appointment:
    """The session as a calendar sees it."""

    uid: str
    sequence: int
    starts_at: datetime
    ends_at: datetime
    timezone: str


@dataclass(frozen=True)
class Letter:
    """Everything one message says, decided before it is written."""

    kind: MessageKind
    to: str
    sender: str
    display_name: str
    message_id: str
    appointment: Appointment
    now: datetime
    opens_minutes_early: int
    join_link: str | None = None
    cant_make_it_link: str | None = None
    unsubscribe_link: str | None = None
    previous_start: datetime | None = None
    for_family: bool = False

    @property
    def cancels(self) -> bool:
        return self.kind is MessageKind.SESSION_CANCELLED


def _clock(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%-I:%M %p")


def _day(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%A, %B %-d")


def when(moment: datetime, now: datetime, timezone: str) -> str:
    """``today at 6:00 PM CST``, ``tomorrow at …``, or ``on Tue, Nov 24 at …``: the day as
    the reader counts days, in the program's zone, named (short enough for a subject line)."""
    zone = ZoneInfo(timezone)
    day: date = moment.astimezone(zone).date()
    today = now.astimezone(zone).date()
    at = moment.astimezone(zone).strftime("%-I:%M %p %Z")
    if day == today:
        return f"today at {at}"
    if (day - today).days == 1:
        return f"tomorrow at {at}"
    return f"on {moment.astimezone(zone).strftime('%a, %b %-d')} at {at}"


def span(appointment: Appointment) -> str:
    """``Tuesday, November 24, 6:00 PM to 9:00 PM CST``."""
    zone = ZoneInfo(appointment.timezone)
    end = appointment.ends_at.astimezone(zone).strftime("%-I:%M %p %Z")
    return (f"{_day(appointment.starts_at, zone)}, {_clock(appointment.starts_at, zone)} "
            f"to {end}")


def wording(letter: Letter) -> tuple[str, list[str]]:
    """The subject and the paragraphs of the text: the one table of words."""
    a = letter.appointment
    at = when(a.starts_at, letter.now, a.timezone)
    name = letter.display_name
    whole = span(a)
    if letter.kind is MessageKind.REMINDER:
        subject = f"Reminder: video appointment {at}"
        lead = [f"This is a reminder of your video appointment {at}: {whole}."]
    elif letter.kind is MessageKind.ROOM_OPEN:
        subject = f"Your video appointment's room is open: it starts {at}"
        lead = [f"The room for your video appointment is open now. The appointment runs "
                f"{whole}."]
    elif letter.kind is MessageKind.SESSION_MOVED:
        subject = f"Moved: your video appointment is now {at}"
        before = (f" (it was {when(letter.previous_start, letter.now, a.timezone)})"
                  if letter.previous_start is not None else "")
        lead = [f"Your video appointment has moved to {whole}{before}. The attached "
                "calendar entry replaces the old one."]
    elif letter.kind is MessageKind.SESSION_CANCELLED:
        subject = f"Cancelled: video appointment {at}"
        lead = [f"Your video appointment {at} ({whole}) is cancelled. The attached "
                "calendar entry takes it out of your calendar."]
    else:
        subject = f"Invitation: video appointment {at}"
        lead = [f"You are invited to join a video appointment with {name}, {whole}."]
    paragraphs = list(lead)
    if not letter.cancels:
        early = (f" The room opens {letter.opens_minutes_early} minutes before the start."
                 if letter.opens_minutes_early else "")
        if letter.join_link:
            paragraphs.append(f"To join, open this link.{early}\n{letter.join_link}")
        elif letter.for_family:
            paragraphs.append("To join, use the invitation link you were sent.")
        else:
            paragraphs.append(f"To join, open the personal link you were given.{early}")
    if letter.cant_make_it_link:
        paragraphs.append(f"Can't make it? Let us know here:\n{letter.cant_make_it_link}")
    footer = f"-- \n{name}"
    if letter.unsubscribe_link:
        footer += ("\nYou get these messages because you agreed to appointment messages by "
                   f"email. To stop them, open:\n{letter.unsubscribe_link}")
    return subject, ["Hello,", *paragraphs, footer]


def calendar(letter: Letter) -> bytes:
    """The ``.ics`` of the appointment: a request with its time, or its cancellation."""
    a = letter.appointment
    zone = ZoneInfo(a.timezone)
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("method", "CANCEL" if letter.cancels else "REQUEST")
    event = Event()
    event.add("uid", a.uid)
    event.add("sequence", a.sequence)
    event.add("dtstamp", letter.now)
    event.add("dtstart", a.starts_at.astimezone(zone))
    event.add("dtend", a.ends_at.astimezone(zone))
    event.add("summary", f"Video appointment ({letter.display_name})")
    event.add("description", "Join with the link in the email you received.")
    event.add("location", "Video")
    event.add("status", "CANCELLED" if letter.cancels else "CONFIRMED")
    organizer = vCalAddress(f"mailto:{letter.sender}")
    organizer.params["cn"] = vText(letter.display_name)
    event.add("organizer", organizer)
    attendee = vCalAddress(f"mailto:{letter.to}")
    attendee.params["rsvp"] = vText("FALSE")
    event.add("attendee", attendee)
    cal.add_component(event)
    year = a.starts_at.astimezone(zone).year
    cal.add_missing_timezones(first_date=date(year - 1, 1, 1), last_date=date(year + 2, 1, 1))
    result: bytes = cal.to_ical()
    return result


def compose(letter: Letter) -> EmailMessage:
    """The whole message: headers, the text, and the calendar entry twice (inline, so mail
    programs offer to add it, and as ``appointment.ics``)."""
    subject, paragraphs = wording(letter)
    message = EmailMessage()
    message["From"] = Address(display_name=letter.display_name, addr_spec=letter.sender)
    message["To"] = letter.to
    message["Subject"] = subject
    message["Date"] = format_datetime(letter.now)
    message["Message-ID"] = letter.message_id
    message["Auto-Submitted"] = "auto-generated"
    if letter.unsubscribe_link:
        message["List-Unsubscribe"] = f"<{letter.unsubscribe_link}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content("\n\n".join(paragraphs) + "\n")
    ics = calendar(letter)
    method = "CANCEL" if letter.cancels else "REQUEST"
    message.add_alternative(ics.decode(), subtype="calendar", params={"method": method})
    message.add_attachment(ics, maintype="application", subtype="ics",
                           filename=CALENDAR_FILENAME)
    return message
