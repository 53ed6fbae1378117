"""The mail's pure rules, each a table: which reminder is due when, the backoff, what a relay's
reply means, when a queued message is withdrawn, the relay URL and addresses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vio.mail.compose import AddressProblem, checked_address
from vio.mail.due import (
    Delivery,
    ReminderRule,
    Withdrawal,
    delivery,
    due_reminder,
    reminder_moments,
    retry_delay,
    withdrawal,
)
from vio.mail.models import MessageKind, MessageStatus
from vio.mail.relay import Outcome, Security, Stage, classify, parse_relay_url
from vio.models import SessionStatus
from vio.settings import Settings, SettingsError

START = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)  # Tuesday 6:00 PM in Chicago
END = START + timedelta(hours=3)
RULE = ReminderRule(lead_minutes=(1440, 60), join_early_minutes=15)


def at(minutes_before_start: float) -> datetime:
    return START - timedelta(minutes=minutes_before_start)


# when (minutes before the start), rescheduled at (minutes before), -> the reminder's key
DUE = [
    (3000, None, None),  # two days ahead: nothing yet
    (1441, None, None),
    (1440, None, "before-1440"),  # the day before, to the minute
    (1000, None, "before-1440"),  # still the day-before reminder's time
    (61, None, "before-1440"),
    (60, None, "before-60"),
    (16, None, "before-60"),
    (15, None, "room-open"),  # the room opens
    (0, None, "room-open"),
    (-179, None, "room-open"),  # while the session runs
    (-180, None, None),  # it is over
    (1000, 1200, None),  # moved after the day-before moment: the move's message said it
    (60, 1200, "before-60"),  # the next reminder after a move goes as usual
]


@pytest.mark.parametrize(("minutes", "moved", "expected"), DUE)
def test_one_reminder_is_due_at_a_time(minutes, moved, expected):
    since = at(moved) if moved is not None else None
    found = due_reminder(RULE, START, END, at(minutes), since)
    assert (found.key if found else None) == expected


def test_a_lead_inside_the_join_window_gives_way_to_the_room_opening():
    rule = ReminderRule(lead_minutes=(1440, 10), join_early_minutes=15)
    assert [m.key for m in reminder_moments(rule, START, END)] == ["before-1440", "room-open"]
    moments = reminder_moments(RULE, START, END)
    assert [(m.key, m.until) for m in moments] == [
        ("before-1440", at(60)), ("before-60", at(15)), ("room-open", END)]
    assert [m.kind for m in moments] == [MessageKind.REMINDER, MessageKind.REMINDER,
                                         MessageKind.ROOM_OPEN]


@pytest.mark.parametrize(("attempts", "seconds"), [
    (1, 60), (2, 120), (3, 240), (6, 1920), (7, 3600), (50, 3600), (0, 60)])
def test_retries_back_off_by_doubling_up_to_the_longest_wait(attempts, seconds):
    assert retry_delay(attempts, 60, 3600) == timedelta(seconds=seconds)


# stage, code -> outcome
REPLIES = [
    (Stage.MESSAGE, 250, Outcome.SENT),
    (Stage.RECIPIENT, 550, Outcome.BOUNCED),  # no such mailbox: for good
    (Stage.RECIPIENT, 553, Outcome.BOUNCED),
    (Stage.MESSAGE, 554, Outcome.BOUNCED),  # content refused
    (Stage.RECIPIENT, 450, Outcome.RETRY),  # mailbox busy: later
    (Stage.MESSAGE, 451, Outcome.RETRY),
    (Stage.RELAY, 535, Outcome.RETRY),  # our sign-in refused: the set-up, not the patient
    (Stage.RELAY, 530, Outcome.RETRY),
    (Stage.RELAY, None, Outcome.RETRY),  # unreachable
]


@pytest.mark.parametrize(("stage", "code", "outcome"), REPLIES)
def test_a_relay_reply_is_sent_bounced_or_tried_again(stage, code, outcome):
    assert classify(stage, code, "text").outcome is outcome


NOW = START - timedelta(hours=2)
# kind, expires at, session status, recipient problem -> withdrawal
WITHDRAWALS = [
    (MessageKind.REMINDER, at(60), SessionStatus.SCHEDULED, None, None),
    (MessageKind.REMINDER, at(60), SessionStatus.SCHEDULED, Withdrawal.NO_CONSENT,
     Withdrawal.NO_CONSENT),
    (MessageKind.REMINDER, NOW, SessionStatus.SCHEDULED, None, Withdrawal.TOO_LATE),
    (MessageKind.REMINDER, at(60), SessionStatus.CANCELLED, None,
     Withdrawal.SESSION_CANCELLED),
    (MessageKind.ROOM_OPEN, END, SessionStatus.ENDED, None, Withdrawal.SESSION_OVER),
    (MessageKind.FAMILY_INVITE, END, SessionStatus.CANCELLED, None,
     Withdrawal.SESSION_CANCELLED),
    (MessageKind.SESSION_CANCELLED, END, SessionStatus.CANCELLED, None, None),  # it says so
    (MessageKind.SESSION_MOVED, END, SessionStatus.SCHEDULED, Withdrawal.UNSUBSCRIBED,
     Withdrawal.UNSUBSCRIBED),
]


@pytest.mark.parametrize(("kind", "expires", "status", "recipient", "expected"), WITHDRAWALS)
def test_a_queued_message_is_withdrawn_when_it_should_no_longer_go(kind, expires, status,
                                                                   recipient, expected):
    assert withdrawal(kind, NOW, expires, status, END, recipient) is expected


@pytest.mark.parametrize(("status", "attempts", "claimed", "expected"), [
    (MessageStatus.QUEUED, 0, None, Delivery.WAITING),
    (MessageStatus.QUEUED, 1, NOW + timedelta(seconds=30), Delivery.SENDING),
    (MessageStatus.QUEUED, 2, NOW - timedelta(seconds=1), Delivery.RETRYING),
    (MessageStatus.SENT, 1, None, Delivery.DELIVERED),
    (MessageStatus.BOUNCED, 1, None, Delivery.BOUNCED),
    (MessageStatus.FAILED, 12, None, Delivery.FAILED),
    (MessageStatus.WITHDRAWN, 0, None, Delivery.WITHDRAWN),
])
def test_what_staff_are_told_of_a_message(status, attempts, claimed, expected):
    assert delivery(status, attempts, claimed, NOW) is expected


# --- the relay's URL ------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "host", "port", "security", "user", "password"), [
    ("smtp+starttls://vio:p%40ss@mail.example.org:587", "mail.example.org", 587,
     Security.STARTTLS, "vio", "p@ss"),
    ("smtp+starttls://mail.example.org", "mail.example.org", 587, Security.STARTTLS, "", ""),
    ("smtps://vio:secret@mail.example.org", "mail.example.org", 465, Security.TLS, "vio",
     "secret"),
    ("smtp://127.0.0.1:25", "127.0.0.1", 25, Security.NONE, "", ""),
    ("smtp://localhost", "localhost", 25, Security.NONE, "", ""),
    ("SMTPS://[::1]:2465", "::1", 2465, Security.TLS, "", ""),
])
def test_relay_urls(url, host, port, security, user, password):
    relay = parse_relay_url(url)
    assert (relay.host, relay.port, relay.security, relay.username, relay.password) == (
        host, port, security, user, password)
    assert password == "" or password not in relay.shown
    assert password == "" or password not in repr(relay)


@pytest.mark.parametrize(("url", "says"), [
    ("http://mail.example.org", "must start with"),
    ("smtp://mail.example.org:25", "only to a relay on this machine"),
    ("smtp://user:pw@10.0.0.5", "only to a relay on this machine"),
    ("smtp+starttls://", "names no host"),
    ("smtp+starttls://mail.example.org:99999", "is not an SMTP URL"),
    ("smtp+starttls://mail.example.org/path", "only the user"),
    ("smtp+starttls://:pw@mail.example.org", "no user name"),
])
def test_bad_relay_urls_say_what_is_wrong(url, says):
    with pytest.raises(ValueError, match=says):
        parse_relay_url(url)


def test_a_bad_smtp_url_stops_start_up_without_showing_the_password():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"VIO_SMTP_URL": "smtp://vio:Hunter2-secret@mail.example.org",
                           "VIO_MAIL_FROM": "a@example.org"}, secret_key="k")
    assert "VIO_SMTP_URL" in str(caught.value) and "Hunter2-secret" not in str(caught.value)
    good = Settings.from_env({"VIO_SMTP_URL": "smtps://vio:Hunter2-secret@mail.example.org",
                              "VIO_MAIL_FROM": "a@example.org"}, secret_key="k")
    assert "Hunter2-secret" not in repr(good)


@pytest.mark.parametrize(("environ", "says"), [
    ({"VIO_SMTP_URL": "smtps://mail.example.org"}, "VIO_MAIL_FROM"),
    ({"VIO_MAIL_FROM": "not an address"}, "VIO_MAIL_FROM"),
    ({"VIO_MAIL_DISPLAY_NAME": "   "}, "VIO_MAIL_DISPLAY_NAME"),
    ({"VIO_MAIL_CLAIM_SECONDS": "30", "VIO_SMTP_TIMEOUT_SECONDS": "20"},
     "VIO_MAIL_CLAIM_SECONDS"),
    ({"VIO_MAIL_REMINDER_MINUTES": "60,-5"}, "VIO_MAIL_REMINDER_MINUTES"),
])
def test_bad_mail_settings_name_the_variable(environ, says):
    with pytest.raises(SettingsError, match=says):
        Settings.from_env(environ, secret_key="k")


@pytest.mark.parametrize(("raw", "good"), [
    ("dana.reyes@example.org", True), (" dana@example.org ", True),
    ("", False), ("dana", False), ("dana@localhost", False), ("a@b@example.org", False),
    ("Dana <dana@example.org>", False), ("dana@example.org\r\nBcc: x@example.org", False),
    ("dana@exämple.org", False), ("dana@example.org, tom@example.org", False),
    ("dana@.example.org", False),
])
def test_addresses(raw, good):
    if good:
        assert checked_address(raw) == raw.strip()
    else:
        with pytest.raises(AddressProblem):
            checked_address(raw)
