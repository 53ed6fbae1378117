"""Staff accounts over the years: the password policy (a table), one's own password change, an
admin's reset of a colleague's password and second factor with the new password owed at the
next sign-in, turning accounts off and on (sign-ins and live room connections end at once),
program boundaries, CSRF on every new form, and the ``vio staff`` commands in their own
processes. Every change leaves an audit row without the password in it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from tests.conftest import TEST_SECRET, csrf_from, seconds
from tests.test_session_rules import Clinic, loopback_only  # noqa: F401
from tests.wsclient import Client
from vio.bot import WebSession, sign_in
from vio.models import AuditEvent, Program, SignInSession, StaffRole, StaffUser
from vio.password_policy import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    REFUSAL_TEXT,
    PasswordRefusal,
    common_passwords,
    password_refusal,
    temporary_password,
)
from vio.security import hash_password

ROOT = Path(__file__).parent.parent
NEW_PASSWORD = "river stones hum at dusk"
OTHER_PASSWORD = "seven quiet lanterns glow"
THERAPIST = ("therapist@demo.vio", "demo-therapist")
ADMIN = ("admin@demo.vio", "demo-admin")
CASEY = {"name": "Casey Doe", "email": "casey.doe@riverside.example"}

# --- the policy, a table ----------------------------------------------------------------------

POLICY = [
    ("short", "x" * (MIN_PASSWORD_LENGTH - 1), PasswordRefusal.TOO_SHORT),
    ("just long enough", "kq7 vent oboe", None),
    ("too long", "kq7 vent oboe " * 10, PasswordRefusal.TOO_LONG),
    ("at most long", ("kq7 vent oboe " * 10)[:MAX_PASSWORD_LENGTH - 1] + "z", None),
    ("space in front", " kq7 vent oboe", PasswordRefusal.SPACE_AT_END),
    ("space behind", "kq7 vent oboe ", PasswordRefusal.SPACE_AT_END),
    ("a tab", "kq7\tvent oboe", PasswordRefusal.UNTYPEABLE),
    ("listed as is", "administrator", PasswordRefusal.COMMON),
    ("listed, other case", "AdMiNiStRaToR", PasswordRefusal.COMMON),
    ("word and a run", "password1234", PasswordRefusal.COMMON),
    ("capital, run, symbol", "Password1234!", PasswordRefusal.COMMON),
    ("swapped letters and a year", "P@ssw0rd2024!", PasswordRefusal.COMMON),
    ("a key row and digits", "qwertyuiop12", PasswordRefusal.COMMON),
    ("a word, a year, symbols", "summer2024!!", PasswordRefusal.COMMON),
    ("key walk", "1q2w3e4r5t6y", PasswordRefusal.COMMON),
    ("digits in a row", "123456789012", PasswordRefusal.PATTERN),
    ("digits down", "987654321098", PasswordRefusal.PATTERN),
    ("one key", "aaaaaaaaaaaa", PasswordRefusal.PATTERN),
    ("short block repeated", "abcabcabcabc", PasswordRefusal.PATTERN),
    ("a listed word twice", "mondaymonday", PasswordRefusal.PATTERN),
    ("digits and symbols repeated", "12341234!!!!", PasswordRefusal.PATTERN),
    ("the alphabet", "ABCDEFGHIJKL", PasswordRefusal.PATTERN),
    ("the name", "CaseyDoe!!!!!", PasswordRefusal.PERSONAL),
    ("the first name in a phrase", "my name is casey ok", PasswordRefusal.PERSONAL),
    ("the email's local part", "xx casey.doe xx", PasswordRefusal.PERSONAL),
    ("a passphrase", "correct horse battery staple", None),
    ("a word and random digits", "love84729163", None),
    ("random symbols", "Kx!8#2@9$4%7", None),
    ("unlisted words", "Clinicians-Rise-Early", None),
]


@pytest.mark.parametrize(("case", "password", "expected"), POLICY,
                         ids=[case for case, _, _ in POLICY])
def test_the_password_policy(case, password, expected):
    assert password_refusal(password, **CASEY) == expected, case


def test_the_shipped_list_is_read_and_compared_without_case():
    listed = common_passwords()
    assert len(listed) > 5000
    assert all(entry == entry.casefold() and entry.strip() == entry for entry in listed)
    for entry in sorted(e for e in listed if len(e) >= MIN_PASSWORD_LENGTH)[:50]:
        assert password_refusal(entry.upper()) is PasswordRefusal.COMMON, entry
    assert password_refusal("bluebird song!", common=frozenset({"bluebird song!"})) \
        is PasswordRefusal.COMMON
    assert password_refusal("bluebird song!", common=frozenset()) is None


def test_every_refusal_has_a_sentence_and_a_temporary_password_passes():
    for refusal in PasswordRefusal:
        assert REFUSAL_TEXT[refusal].endswith(".")
    made = {temporary_password(**CASEY) for _ in range(20)}
    assert len(made) == 20
    assert all(password_refusal(p, **CASEY) is None for p in made)


# --- pages --------------------------------------------------------------------------------------

def _login(client: TestClient, email: str, password: str):  # type: ignore[no-untyped-def]
    csrf = csrf_from(client.get("/login").text)
    return client.post("/login", data={"email": email, "password": password, "next": "/staff",
                                       "csrf_token": csrf}, follow_redirects=False)


def _browser(client: TestClient) -> TestClient:
    """Another browser on the same server."""
    return TestClient(client.app, base_url="http://127.0.0.1")


def _post(client: TestClient, path: str, **fields: str):  # type: ignore[no-untyped-def]
    csrf = csrf_from(client.get(path).text)
    return client.post(path, data={**fields, "csrf_token": csrf}, follow_redirects=False)


def _change(client: TestClient, current: str, new: str, again: str | None = None):  # type: ignore[no-untyped-def]
    return _post(client, "/staff/account", action="change-password", current_password=current,
                 new_password=new, new_password_again=new if again is None else again)


async def _audits(db, action: str) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    return list((await db.execute(select(AuditEvent).where(AuditEvent.action == action)
                                  .order_by(AuditEvent.id))).scalars())


async def _staff(db, staff_id: int) -> StaffUser:  # type: ignore[no-untyped-def]
    """The account as the database has it now (the server changed it meanwhile)."""
    return (await db.execute(select(StaffUser).where(StaffUser.id == staff_id)
                             .execution_options(populate_existing=True))).scalar_one()


def _signed_in(client: TestClient) -> bool:
    return client.get("/staff", follow_redirects=False).status_code == 200


async def test_own_password_change(client, demo, db):
    assert _login(client, *THERAPIST).status_code == 303
    other = _browser(client)
    assert _login(other, *THERAPIST).status_code == 303
    before = (await _staff(db, demo.therapist.id)).password_hash

    wrong = _change(client, "not-my-password", NEW_PASSWORD)
    assert wrong.status_code == 400 and "current password" in wrong.text
    common = _change(client, THERAPIST[1], "Password1234!")
    assert common.status_code == 400 and "most common passwords" in common.text
    differ = _change(client, THERAPIST[1], NEW_PASSWORD, NEW_PASSWORD + "!")
    assert differ.status_code == 400 and "differ" in differ.text
    assert (await _staff(db, demo.therapist.id)).password_hash == before

    done = _change(client, THERAPIST[1], NEW_PASSWORD)
    assert done.status_code == 303
    assert "Your password was changed" in client.get(done.headers["location"]).text
    assert _signed_in(client)  # this browser stays signed in; the other one does not
    assert not _signed_in(other)

    client.cookies.clear()
    assert _login(client, *THERAPIST).status_code == 401
    assert _login(client, THERAPIST[0], NEW_PASSWORD).status_code == 303
    [changed] = await _audits(db, "staff-password-changed")
    assert changed.actor == changed.target == f"staff:{demo.therapist.id}"
    assert changed.detail["sign_ins_ended"] == 1
    assert NEW_PASSWORD not in json.dumps(changed.detail)


async def _turn_on_authenticator(client: TestClient, clock) -> str:  # type: ignore[no-untyped-def]
    page = client.get("/staff/account").text
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page).group(1)  # type: ignore[union-attr]
    enabled = client.post("/staff/account", data={
        "action": "enable", "code": pyotp.TOTP(secret).at(clock.now()),
        "csrf_token": csrf_from(page)}, follow_redirects=False)
    assert enabled.status_code == 303
    return secret


def _reset(admin: TestClient, staff_id: int, second_factor: bool = False) -> str:
    done = _post(admin, "/staff/team", action="reset", staff_id=str(staff_id), confirm="yes",
                 **({"second_factor": "yes"} if second_factor else {}))
    assert done.status_code == 200, done.text
    found = re.search(r'id="temporary-password-value">([^<]+)<', done.text)
    assert found, "the temporary password is shown"
    return found.group(1)


def _new_password(client: TestClient, new: str, again: str | None = None):  # type: ignore[no-untyped-def]
    return _post(client, "/login/second-factor?next=/staff", new_password=new,
                 new_password_again=new if again is None else again, next="/staff")


async def test_admin_reset_of_password_and_second_factor(client, demo, db, clock):
    therapist = _browser(client)
    assert _login(therapist, *THERAPIST).status_code == 303
    await _turn_on_authenticator(therapist, clock)
    assert (await _staff(db, demo.therapist.id)).totp_secret is not None
    assert _login(client, *ADMIN).status_code == 303

    temporary = _reset(client, demo.therapist.id, second_factor=True)
    assert temporary not in client.get("/staff/team").text  # shown once, never again
    staff = await _staff(db, demo.therapist.id)
    assert staff.must_change_password and staff.totp_secret is None
    assert not _signed_in(therapist)  # the reset signed them out

    therapist.cookies.clear()
    assert _login(therapist, *THERAPIST).status_code == 401
    pending = _login(therapist, THERAPIST[0], temporary)
    assert pending.status_code == 303
    assert pending.headers["location"].startswith("/login/second-factor")
    for page in ("/staff", "/staff/account", "/staff/team", "/staff/patients"):
        assert therapist.get(page, follow_redirects=False).status_code == 303, page
    step = therapist.get("/login/second-factor")
    assert "Choose a new password" in step.text and "totp-secret" not in step.text
    refused = _new_password(therapist, "qwertyuiop12")
    assert refused.status_code == 400 and "most common passwords" in refused.text
    assert _new_password(therapist, temporary).status_code == 400  # not the temporary one
    assert not _signed_in(therapist)
    done = _new_password(therapist, NEW_PASSWORD)
    assert done.status_code == 303 and done.headers["location"] == "/staff"
    assert _signed_in(therapist)
    assert not (await _staff(db, demo.therapist.id)).must_change_password

    therapist.cookies.clear()
    assert _login(therapist, THERAPIST[0], temporary).status_code == 401
    assert _login(therapist, THERAPIST[0], NEW_PASSWORD).headers["location"] == "/staff"
    [reset] = await _audits(db, "staff-password-reset")
    assert reset.actor == f"staff:{demo.admin.id}"
    assert reset.target == f"staff:{demo.therapist.id}"
    assert reset.detail["second_factor_cleared"] is True
    assert temporary not in json.dumps(reset.detail)
    [changed] = await _audits(db, "staff-password-changed")
    assert changed.actor == f"staff:{demo.therapist.id}" and changed.detail["at_sign_in"]


async def test_a_reset_admin_gives_the_required_code_before_the_new_password(client, demo,
                                                                             db, clock):
    program = await db.get(Program, demo.program.id)
    program.admins_need_second_factor = True
    db.add(StaffUser(program_id=demo.program.id, name="Robin Hale", email="robin@demo.vio",
                     role=StaffRole.ADMIN, password_hash=hash_password("robin-old-pass")))
    await db.commit()
    robin = (await db.execute(select(StaffUser).where(StaffUser.email == "robin@demo.vio"))
             ).scalar_one()
    assert _login(client, *ADMIN).status_code == 303
    page = client.get("/login/second-factor").text
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page).group(1)  # type: ignore[union-attr]
    client.post("/login/second-factor", data={
        "code": pyotp.TOTP(secret).at(clock.now()), "csrf_token": csrf_from(page)})
    temporary = _reset(client, robin.id)

    other = _browser(client)
    assert _login(other, "robin@demo.vio", temporary).status_code == 303
    first = other.get("/login/second-factor").text
    assert "totp-secret" in first and "Choose a new password" not in first
    robin_secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', first).group(1)  # type: ignore[union-attr]
    coded = other.post("/login/second-factor", data={
        "code": pyotp.TOTP(robin_secret).at(clock.now()), "csrf_token": csrf_from(first),
        "next": "/staff"}, follow_redirects=False)
    assert coded.status_code == 303 and coded.headers["location"].startswith(
        "/login/second-factor")
    assert not _signed_in(other)  # the new password is still owed
    assert _new_password(other, OTHER_PASSWORD).headers["location"] == "/staff"
    assert other.get("/staff/audit").status_code == 200
    [sign_in_row] = [a for a in await _audits(db, "sign-in")
                     if a.actor == f"staff:{robin.id}"]
    assert sign_in_row.detail["via"] == "password+totp"


async def test_turning_an_account_off_and_on(client, demo, db):
    therapist = _browser(client)
    assert _login(therapist, *THERAPIST).status_code == 303
    assert _login(client, *ADMIN).status_code == 303
    own = _post(client, "/staff/team", action="deactivate", staff_id=str(demo.admin.id),
                confirm="yes")
    assert own.status_code == 400 and "your own account" in own.text
    off = _post(client, "/staff/team", action="deactivate", staff_id=str(demo.therapist.id),
                confirm="yes")
    assert off.status_code == 303
    assert not _signed_in(therapist)  # its next request finds it signed out
    rows = (await db.execute(select(SignInSession).where(
        SignInSession.staff_id == demo.therapist.id))).scalars().all()
    assert rows and all(row.end_reason == "deactivated" for row in rows)
    therapist.cookies.clear()
    assert _login(therapist, *THERAPIST).status_code == 401

    again = _post(client, "/staff/team", action="deactivate", staff_id=str(demo.therapist.id),
                  confirm="yes")
    assert again.status_code == 400 and "already off" in again.text
    on = _post(client, "/staff/team", action="activate", staff_id=str(demo.therapist.id))
    assert on.status_code == 303
    assert _login(therapist, *THERAPIST).status_code == 303 and _signed_in(therapist)
    [deactivated] = await _audits(db, "staff-deactivated")
    [activated] = await _audits(db, "staff-activated")
    assert deactivated.actor == activated.actor == f"staff:{demo.admin.id}"
    assert deactivated.detail["sign_ins_ended"] == 1


async def test_an_admin_of_another_program_cannot_touch_this_programs_staff(client, demo, db):
    other = Program(name="Hillside IOP", timezone="America/Chicago")
    db.add(other)
    await db.flush()
    db.add(StaffUser(program_id=other.id, name="Robin Vale", email="robin@hillside.example",
                     role=StaffRole.ADMIN, password_hash=hash_password("hillside-admin")))
    await db.commit()
    assert _login(client, "robin@hillside.example", "hillside-admin").status_code == 303
    assert demo.therapist.name not in client.get("/staff/team").text
    before = (await _staff(db, demo.therapist.id)).password_hash
    for action in ("reset", "deactivate"):
        refused = _post(client, "/staff/team", action=action, staff_id=str(demo.therapist.id),
                        confirm="yes", second_factor="yes")
        assert refused.status_code == 400 and "no such staff member" in refused.text, action
    staff = await _staff(db, demo.therapist.id)
    assert staff.active and not staff.must_change_password and staff.password_hash == before
    assert await _audits(db, "staff-password-reset") == []


async def test_a_therapist_cannot_reset_a_colleague(client, demo, db):
    assert _login(client, *THERAPIST).status_code == 303
    refused = _post(client, "/staff/team", action="reset", staff_id=str(demo.admin.id),
                    confirm="yes")
    assert refused.status_code == 403
    assert not (await _staff(db, demo.admin.id)).must_change_password


async def test_every_new_form_needs_its_csrf_token(client, demo, db):
    assert _login(client, *ADMIN).status_code == 303
    for path, fields in (
            ("/staff/account", {"action": "change-password", "current_password": ADMIN[1],
                                "new_password": NEW_PASSWORD,
                                "new_password_again": NEW_PASSWORD}),
            ("/staff/team", {"action": "reset", "staff_id": str(demo.therapist.id),
                             "confirm": "yes"}),
            ("/staff/team", {"action": "deactivate", "staff_id": str(demo.therapist.id),
                             "confirm": "yes"})):
        for token in (None, "forged"):
            data = {**fields, **({"csrf_token": token} if token else {})}
            assert client.post(path, data=data).status_code == 403, (path, token)
    temporary = _reset(client, demo.therapist.id)
    therapist = _browser(client)
    assert _login(therapist, THERAPIST[0], temporary).status_code == 303
    assert therapist.post("/login/second-factor", data={
        "new_password": NEW_PASSWORD, "new_password_again": NEW_PASSWORD}).status_code == 403
    admin = await _staff(db, demo.admin.id)
    therapist_row = await _staff(db, demo.therapist.id)
    assert admin.active and therapist_row.active and therapist_row.must_change_password
    assert len(await _audits(db, "staff-password-reset")) == 1


# --- live room connections ----------------------------------------------------------------------

@pytest.fixture
def place(live_server, db, live_settings, clock):  # type: ignore[no-untyped-def]
    return Clinic(live_server, db, live_settings, clock)


async def _admin(server) -> WebSession:  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(sign_in, f"{server.base_url}/login", *ADMIN)


@pytest.mark.parametrize("action", ["deactivate", "reset"])
async def test_turning_off_or_resetting_closes_the_persons_room_connection(
        action, place, live_server, demo):
    url = await place.url()
    cookie = await place.staff()
    admin = await _admin(live_server)
    async with Client(url, cookie) as therapist:
        assert (await therapist.join())["type"] == "welcome"
        status = await asyncio.to_thread(admin.post_form, "/staff/team", {
            "action": action, "staff_id": str(demo.therapist.id), "confirm": "yes"})
        assert status == (303 if action == "deactivate" else 200)
        refused = await therapist.expect("refused", within=2.0)
        assert refused["code"] == "signed-out" and refused["message"]
        assert await therapist.closed(within=2.0) == 4401
    async with Client(url, cookie) as again:
        assert (await again.join())["code"] == "not-signed-in"


# --- vio staff, in its own process --------------------------------------------------------------

def vio(settings, tmp_path: Path, *args: str, stdin: str = ""):  # type: ignore[no-untyped-def]
    env = {name: value for name, value in os.environ.items() if not name.startswith("VIO_")}
    env.update(VIO_DATABASE_URL=settings.database_url, VIO_SECRET_KEY=TEST_SECRET,
               VIO_DATA_DIR=str(tmp_path))
    return subprocess.run([sys.executable, "-m", "vio.cli", "staff", *args], cwd=ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=seconds(60),
                          check=False)


async def test_staff_commands(client, demo, db, engine, settings, tmp_path):
    weak = vio(settings, tmp_path, "add", "--program", demo.program.name, "--role",
               "therapist", "--name", "Lee Park", "--email", "lee@demo.vio",
               stdin="password1234\n")
    assert weak.returncode == 1 and "most common passwords" in weak.stderr
    added = vio(settings, tmp_path, "add", "--program", demo.program.name, "--role",
                "therapist", "--name", "Lee Park", "--email", "lee@demo.vio",
                stdin=f"{NEW_PASSWORD}\n")
    assert added.returncode == 0, added.stderr
    assert "therapist lee@demo.vio added" in added.stdout
    listed = json.loads(vio(settings, tmp_path, "list", "--json").stdout)
    lee = next(row for row in listed if row["email"] == "lee@demo.vio")
    assert lee == {"program": demo.program.name, "name": "Lee Park", "email": "lee@demo.vio",
                   "role": "therapist", "active": True, "second_factor": False,
                   "must_change_password": False}
    lines = vio(settings, tmp_path, "list").stdout.splitlines()
    assert lines[0].split()[:4] == ["program", "name", "email", "role"]
    assert any("lee@demo.vio" in line and "therapist" in line for line in lines[1:])

    therapist = _browser(client)
    assert _login(therapist, *THERAPIST).status_code == 303
    changed = vio(settings, tmp_path, "passwd", "--email", THERAPIST[0], "--json",
                  stdin=f"{OTHER_PASSWORD}\n")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["sign_ins_ended"] == 1
    assert not _signed_in(therapist)
    assert _login(therapist, THERAPIST[0], OTHER_PASSWORD).status_code == 303

    reset = vio(settings, tmp_path, "reset", "--email", THERAPIST[0], "--second-factor",
                stdin="lantern moss quietly\n")
    assert reset.returncode == 0, reset.stderr
    assert "a new one is due at the next sign-in" in reset.stdout
    assert not _signed_in(therapist)
    pending = _login(therapist, THERAPIST[0], "lantern moss quietly")
    assert pending.headers["location"].startswith("/login/second-factor")

    off = vio(settings, tmp_path, "deactivate", "--email", THERAPIST[0])
    assert off.returncode == 0 and "account turned off" in off.stdout
    assert _login(therapist, THERAPIST[0], "lantern moss quietly").status_code == 401
    last = vio(settings, tmp_path, "deactivate", "--email", ADMIN[0])
    assert last.returncode == 1 and "last active admin" in last.stderr
    on = vio(settings, tmp_path, "reactivate", "--email", THERAPIST[0], "--json")
    assert json.loads(on.stdout) == {"email": THERAPIST[0], "active": True,
                                     "sign_ins_ended": 0}
    nobody = vio(settings, tmp_path, "passwd", "--email", "nobody@demo.vio",
                 stdin=f"{NEW_PASSWORD}\n")
    assert nobody.returncode == 1 and "no staff account" in nobody.stderr

    audits = {a.action: a for a in (await db.execute(select(AuditEvent).where(
        AuditEvent.actor == "command-line"))).scalars()}
    assert {"staff-added", "staff-password-changed", "staff-password-reset",
            "staff-deactivated", "staff-activated"} <= set(audits)
    assert audits["staff-password-reset"].detail["second_factor_cleared"] is True
    assert all(secret not in json.dumps(a.detail) for a in audits.values()
               for secret in (NEW_PASSWORD, OTHER_PASSWORD, "lantern moss quietly"))
    assert (await _staff(db, demo.admin.id)).active


async def test_the_new_password_step_lapses_with_its_pending_sign_in(client, demo, clock,
                                                                      settings):
    assert _login(client, *ADMIN).status_code == 303
    temporary = _reset(client, demo.therapist.id)
    therapist = _browser(client)
    assert _login(therapist, THERAPIST[0], temporary).status_code == 303
    clock.advance(timedelta(seconds=settings.second_factor_timeout_seconds + 1))
    assert therapist.get("/login/second-factor", follow_redirects=False).headers[
        "location"] == "/login"  # the step lapsed; the temporary password signs in again
    assert _login(therapist, THERAPIST[0], temporary).status_code == 303
    assert _new_password(therapist, NEW_PASSWORD).status_code == 303
