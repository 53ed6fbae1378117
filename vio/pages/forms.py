"""Reading what a browser sends: every text field has a length cap, every id is a bounded
ASCII whole number, every date a real day between ``MIN_YEAR`` and ``MAX_YEAR``.

Bad input raises ``FormProblem`` with a sentence for the person, before anything is written;
pages turn it into a 400 page. ``TEXT_LIMITS`` is the one table of caps (the README's "Text
fields" table lists the same, and ``tests/test_no_500.py`` keeps the two in step); the caps are
at most the database columns' lengths.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import date, time
from typing import TypeVar

from starlette.datastructures import FormData

MIN_YEAR = 1900
MAX_YEAR = 2200
MAX_ID_DIGITS = 18  # below 2**63: fits every database's integer columns

# field name -> most characters accepted
TEXT_LIMITS: dict[str, int] = {
    "action": 40,
    "address": 300,
    "age_group": 20,
    "city": 100,
    "code": 12,
    "contact": 200,
    "csrf_token": 100,
    "email": 320,
    "emergency_contact_name": 200,
    "emergency_contact_phone": 40,
    "kind": 40,
    "legal_name": 200,
    "level_of_care": 10,
    "location": 20,
    "name": 200,
    "next": 500,
    "password": 1000,
    "person": 80,
    "reason": 500,
    "relationship": 80,
    "repeat": 10,
    "room_name": 80,
    "scope": 200,
    "state": 2,
    "status": 40,
    "terms": 10,
    "title": 200,
    "usual_location": 300,
    "home_address": 300,
    "phone": 40,
    "waiting_room": 40,
}
# Fields that are numbers, dates or times (checked by ``whole``, ``day``, ``clock_time``).
NUMBER_FIELDS = ("consent_id", "duration_minutes", "family_member_id", "group_id", "invite_id",
                 "membership_id", "patient_id", "staff_id", "therapist_ids", "weekdays",
                 "weekly_target_override", "weeks")
DATE_FIELDS = ("enrolled_on", "enrollment_ends_on", "expires_on", "first_day", "from",
               "joined_on", "left_on", "to")
TIME_FIELDS = ("local_start",)


class FormProblem(ValueError):
    """What is wrong with the form, in a sentence for the person who filled it in."""


Fields = FormData | Mapping[str, str]


def text(form: Fields, name: str, label: str, required: bool = True) -> str:
    """The field's text, stripped, within its cap (``TEXT_LIMITS``)."""
    cap = TEXT_LIMITS[name]
    raw = form.get(name, "")
    value = (raw if isinstance(raw, str) else "").strip()
    if len(value) > cap:
        raise FormProblem(f"{label} can be at most {cap} characters.")
    if required and not value:
        raise FormProblem(f"{label} is required.")
    return value


def email(form: Fields, label: str, name: str = "email") -> str:
    """An email address to write to (``""`` when left empty); ``FormProblem`` when it is not
    one address."""
    from vio.mail.compose import AddressProblem, checked_address

    value = text(form, name, label, required=False)
    if not value:
        return ""
    try:
        return checked_address(value)
    except AddressProblem as problem:
        raise FormProblem(f"{label} {problem}.") from None


def whole(raw: object, low: int = 1, high: int = 10 ** MAX_ID_DIGITS - 1) -> int | None:
    """An ASCII whole number in [low, high], or None for anything else (``²``, ``1e9``, …)."""
    if not isinstance(raw, str):
        return None
    value = raw.strip()
    if not value or len(value) > MAX_ID_DIGITS or not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if low <= number <= high else None


def record_id(form: Fields, name: str) -> int | None:
    raw = form.get(name)
    return whole(raw if isinstance(raw, str) else None)


def parse_day(raw: object) -> date | None:
    """A day written YYYY-MM-DD between MIN_YEAR and MAX_YEAR, or None."""
    if not isinstance(raw, str) or len(raw.strip()) != 10 or not raw.isascii():
        return None
    try:
        day = date.fromisoformat(raw.strip())
    except ValueError:
        return None
    return day if MIN_YEAR <= day.year <= MAX_YEAR else None


def day(form: Fields, name: str, label: str) -> date:
    found = parse_day(form.get(name))
    if found is None:
        raise FormProblem(f"{label} must be a date (YYYY-MM-DD) between {MIN_YEAR} and "
                          f"{MAX_YEAR}.")
    return found


def clock_time(form: Fields, name: str, label: str) -> time:
    raw = form.get(name)
    if isinstance(raw, str) and raw.isascii() and 4 <= len(raw.strip()) <= 8:
        try:
            return time.fromisoformat(raw.strip())
        except ValueError:
            pass
    raise FormProblem(f"{label} must look like 18:00.")


E = TypeVar("E", bound=enum.Enum)


def choice(form: Fields, name: str, enum_type: type[E], label: str) -> E:
    try:
        return enum_type(text(form, name, label))
    except ValueError as exc:
        raise FormProblem(f"Choose a {label.lower()}.") from exc
