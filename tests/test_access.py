"""The authorization matrix: every route of the app and every command of the protocol, for
every kind of person, each cell asserted.

The rows come from the app itself (``app.routes``) and the protocol (``CLIENT_MESSAGES``): a
route or command without an entry here fails the test, and so does an entry for one that no
longer exists. The columns are the actors:

- ``anonymous``; ``patient-a`` (Dana, on the evening group's roster, checked in);
  ``patient-b`` (Riley, enrolled in the same program, on no roster); ``family`` (Angela, with an
  accepted invite to her son's family session);
- ``unassigned`` (a therapist of the program, assigned to nothing); ``assigned`` (the evening
  group's therapist); ``admin``; ``admin-2`` (the admin of a second program, with a patient,
  a group and a live session of its own).

Each actor gets a fresh database (the demo, plus the second program), so one actor's changes
never decide another's cell. A cell is a status code, and for pages that list records, which
people's names the page shows and which it must not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient

from tests.conftest import csrf_from
from tests.test_session_rules import loopback_only  # noqa: F401
from tests.wsclient import Client
from vio import clinic, family
from vio.app import create_app
from vio.bot import WebSession, check_in_at_home
from vio.demo import NOT_ON_ROSTER, ROSTER
from vio.mail import links as mail_links
from vio.mail.models import MessageKind, MessageStatus, OutboxMessage
from vio.models import (
    AgeGroup,
    AttendanceEvent,
    AttendanceKind,
    Consent,
    ConsentKind,
    FamilyMember,
    Group,
    GroupTherapist,
    LevelOfCare,
    Patient,
    Program,
    RosterMembership,
    Session,
    SessionKind,
    StaffRole,
    StaffUser,
    WaitingRoomPolicy,
)
from vio.protocol import CLIENT_MESSAGES
from vio.security import Signer, hash_password

ACTORS = ("anonymous", "patient-a", "patient-b", "family", "unassigned", "assigned", "admin",
          "admin-2")
A_NAME, B_NAME, P2_NAME = ROSTER[0], NOT_ON_ROSTER, "Quinn Harper"
GROUP_NAME, GROUP2_NAME = "Evening Process Group", "Hillside Group"
PASSWORDS = {"unassigned": ("casey@demo.vio", "casey-pass"),
             "assigned": ("therapist@demo.vio", "demo-therapist"),
             "admin": ("admin@demo.vio", "demo-admin"),
             "admin-2": ("admin@hillside.test", "hillside-admin")}


# --- the world -------------------------------------------------------------------------------

@dataclass
class World:
    a: Patient
    b: Patient
    p2: Patient
    group: Group
    group2: Group
    session: Session  # the evening group's live session
    family_session: Session  # open now
    session2: Session  # the second program's live session
    member: FamilyMember
    unassigned: StaffUser
    therapist: StaffUser
    tokens: dict[str, str] = field(default_factory=dict)


async def build_world(db, demo, clock) -> World:  # type: ignore[no-untyped-def]
    now = clock.now()
    unassigned = StaffUser(program_id=demo.program.id, name="Casey Doe", email="casey@demo.vio",
                           role=StaffRole.THERAPIST, password_hash=hash_password("casey-pass"))
    program2 = Program(name="Hillside Program", timezone="America/Denver")
    db.add_all([unassigned, program2])
    await db.flush()
    admin2 = StaffUser(program_id=program2.id, name="Robin Vale", email="admin@hillside.test",
                       role=StaffRole.ADMIN, password_hash=hash_password("hillside-admin"))
    p2 = Patient(program_id=program2.id, legal_name=P2_NAME, level_of_care=LevelOfCare.IOP,
                 age_group=AgeGroup.ADULT, enrolled_on=now.date() - timedelta(days=7),
                 enrollment_ends_on=now.date() + timedelta(days=60))
    group2 = Group(program_id=program2.id, name=GROUP2_NAME)
    db.add_all([admin2, p2, group2])
    await db.flush()
    db.add(GroupTherapist(group_id=group2.id, staff_id=admin2.id))
    db.add(RosterMembership(group_id=group2.id, patient_id=p2.id,
                            joined_on=now.date() - timedelta(days=7)))
    for kind in (ConsentKind.TELEHEALTH, ConsentKind.GROUP_PARTICIPATION):
        db.add(Consent(patient_id=p2.id, kind=kind, granted_at=now - timedelta(days=7)))
    session2 = await clinic.schedule_session(db, clinic.SessionPlan(
        program_id=program2.id, title="Hillside Evening", kind=SessionKind.GROUP,
        timezone=program2.timezone, duration_minutes=120, therapist_ids=(admin2.id,),
        group_id=group2.id, waiting_room=WaitingRoomPolicy.OPEN), now - timedelta(minutes=5))
    session = (await db.execute(select(Session).where(
        Session.group_id == demo.group.id, Session.starts_at <= now)
        .order_by(Session.starts_at.desc()))).scalars().first()
    family_session = (await db.execute(select(Session).where(
        Session.kind == SessionKind.FAMILY))).scalars().first()
    family_session.starts_at = now - timedelta(minutes=1)
    a = demo.patients[A_NAME]
    db.add(AttendanceEvent(session_id=session.id, at=now, kind=AttendanceKind.CHECKED_IN,
                           person=f"patient:{a.id}", role="patient", patient_id=a.id,
                           detail={"location": "home", "address": "Home"}))
    await db.commit()
    world = World(a=a, b=demo.patients[B_NAME], p2=p2, group=demo.group, group2=group2,
                  session=session, family_session=family_session, session2=session2,
                  member=demo.family_member, unassigned=unassigned, therapist=demo.therapist)
    return world


async def fresh_tokens(db, world: World, settings, clock) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Personal links for both patients and two family invites (one to sign in with, one for
    a cell to open)."""
    signer = Signer(settings.secret_key)
    now = clock.now()
    tokens = {
        "patient-a": await clinic.issue_patient_link(db, signer, world.a, now),
        "patient-b": await clinic.issue_patient_link(db, signer, world.b, now),
        "cell-link": await clinic.issue_patient_link(db, signer, world.a, now),
        "family": await family.issue_invite(db, world.family_session, world.member,
                                            "staff:1", now),
        "cell-invite": await family.issue_invite(db, world.family_session, world.member,
                                                 "staff:1", now),
    }
    # A reminder Dana got about the live session: its unsubscribe and "I can't make it" links.
    reminder = OutboxMessage(
        program_id=world.a.program_id, kind=MessageKind.REMINDER, dedupe_key="access:a",
        message_id="<access@clinic.example.org>", patient_id=world.a.id,
        session_id=world.session.id, to_address="dana@example.org",
        status=MessageStatus.SENT, created_at=now, next_attempt_at=now)
    db.add(reminder)
    await db.flush()
    tokens["unsubscribe"] = mail_links.unsubscribe_link("", signer, reminder.id)
    tokens["cant-make-it"] = mail_links.cant_make_it_link("", signer, reminder.id)
    await db.commit()
    return tokens


def sign_in(client: TestClient, actor: str, tokens: dict[str, str]) -> None:
    if actor in ("patient-a", "patient-b"):
        assert client.get(f"/p/{tokens[actor]}", follow_redirects=False).status_code == 303
    elif actor == "family":
        page = client.get(f"/i/{tokens['family']}")
        assert client.post(f"/i/{tokens['family']}", data={
            "name": "Angela L.", "terms": "yes", "csrf_token": csrf_from(page.text)},
            follow_redirects=False).status_code == 303
    elif actor in PASSWORDS:
        email, password = PASSWORDS[actor]
        csrf = csrf_from(client.get("/login").text)
        assert client.post("/login", data={"email": email, "password": password,
                                           "csrf_token": csrf},
                           follow_redirects=False).status_code == 303


# --- cells -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    status: int
    location: str | None = None  # where a 303 goes (prefix)
    shows: tuple[str, ...] = ()  # text the response must contain
    hides: tuple[str, ...] = ()  # text it must not


Request = Callable[[World], tuple[str, dict[str, Any] | None]]  # path, form (None: no form)
OK, SEE_OTHER, NOT_SIGNED_IN, FORBIDDEN, NOT_FOUND = 200, 303, 401, 403, 404
LOGIN = Cell(SEE_OTHER, "/login")
NO = Cell(FORBIDDEN)
GONE = Cell(NOT_FOUND)
FINE = Cell(OK)


def row(anonymous: Cell, patient_a: Cell, patient_b: Cell, family_: Cell, unassigned: Cell,
        assigned: Cell, admin: Cell, admin_2: Cell) -> dict[str, Cell]:
    return dict(zip(ACTORS, (anonymous, patient_a, patient_b, family_, unassigned, assigned,
                             admin, admin_2), strict=True))


def everyone(cell: Cell) -> dict[str, Cell]:
    return dict.fromkeys(ACTORS, cell)


def staff_only(unassigned: Cell, assigned: Cell, admin: Cell, admin_2: Cell) -> dict[str, Cell]:
    """A staff page: anonymous people go to sign in, patients and family are refused."""
    return row(LOGIN, NO, NO, NO, unassigned, assigned, admin, admin_2)


PATIENT_FORM = {"legal_name": "New Person", "level_of_care": "2.1", "age_group": "adult",
                "enrolled_on": "2026-11-01", "enrollment_ends_on": "2026-12-31",
                "status": "active"}


def _schedule(w: World) -> dict[str, Any]:
    return {"title": "Extra group", "kind": "group", "group_id": str(w.group.id),
            "therapist_ids": [str(w.therapist.id)], "first_day": "2026-11-25",
            "local_start": "18:00", "duration_minutes": "90"}


# (method, route path) -> how to ask, and what each actor gets.
ROUTES: dict[tuple[str, str], tuple[Request, dict[str, Cell]]] = {
    ("GET", "/"): (lambda w: ("/", None), everyone(FINE)),
    ("GET", "/healthz"): (lambda w: ("/healthz", None), everyone(Cell(OK, shows=('"ok"',)))),
    ("GET", "/me"): (lambda w: ("/me", None), row(
        Cell(SEE_OTHER, "/"), Cell(OK, shows=("Hello, Dana R.",)),
        Cell(OK, shows=("Hello, Riley M.",)), Cell(SEE_OTHER, "/"), Cell(SEE_OTHER, "/"),
        Cell(SEE_OTHER, "/"), Cell(SEE_OTHER, "/"), Cell(SEE_OTHER, "/"))),
    ("GET", "/login"): (lambda w: ("/login", None), everyone(FINE)),
    ("POST", "/login"): (lambda w: ("/login", {"email": "nobody@example.test",
                                                "password": "guess"}),
                         everyone(Cell(401, shows=("match our records",)))),
    ("GET", "/login/second-factor"): (lambda w: ("/login/second-factor", None),
                                      everyone(LOGIN)),
    ("POST", "/login/second-factor"): (lambda w: ("/login/second-factor", {"code": "123456"}),
                                       everyone(LOGIN)),
    ("POST", "/logout"): (lambda w: ("/logout", {}), everyone(Cell(SEE_OTHER, "/"))),
    # A personal link signs its patient in on whatever browser opens it; an invite likewise
    # (the link is the credential). Opened here in a throwaway copy of the actor's browser.
    ("GET", "/p/{token}"): (lambda w: (f"/p/{w.tokens['cell-link']}", None),
                            everyone(Cell(SEE_OTHER, "/me"))),
    ("GET", "/i/{token}"): (lambda w: (f"/i/{w.tokens['cell-invite']}", None),
                            everyone(Cell(OK, shows=('id="family-terms"',)))),
    ("POST", "/i/{token}"): (lambda w: (f"/i/{w.tokens['cell-invite']}",
                                        {"name": "Angela L.", "terms": "yes"}),
                             everyone(Cell(SEE_OTHER, "/sessions/"))),
    ("GET", "/staff"): (lambda w: ("/staff", None), staff_only(
        Cell(OK, hides=(GROUP_NAME,)), Cell(OK, shows=(GROUP_NAME,)),
        Cell(OK, shows=(GROUP_NAME,)), Cell(OK, shows=("Hillside Evening",),
                                            hides=(GROUP_NAME,)))),
    ("GET", "/staff/patients"): (lambda w: ("/staff/patients", None), staff_only(
        Cell(OK, hides=(A_NAME, B_NAME, P2_NAME)), Cell(OK, shows=(A_NAME,),
                                                         hides=(B_NAME, P2_NAME)),
        Cell(OK, shows=(A_NAME, B_NAME), hides=(P2_NAME,)),
        Cell(OK, shows=(P2_NAME,), hides=(A_NAME, B_NAME)))),
    ("GET", "/staff/patients/new"): (lambda w: ("/staff/patients/new", None),
                                     staff_only(NO, NO, FINE, FINE)),
    ("POST", "/staff/patients/new"): (lambda w: ("/staff/patients/new", PATIENT_FORM),
                                      staff_only(NO, NO, Cell(SEE_OTHER, "/staff/patients/"),
                                                 Cell(SEE_OTHER, "/staff/patients/"))),
    ("GET", "/staff/patients/{patient_id:id}"): (
        lambda w: (f"/staff/patients/{w.a.id}", None),
        staff_only(GONE, Cell(OK, shows=(A_NAME,)), Cell(OK, shows=(A_NAME,)), GONE)),
    ("POST", "/staff/patients/{patient_id:id}"): (
        lambda w: (f"/staff/patients/{w.a.id}", {"action": "issue-link"}),
        staff_only(GONE, NO, Cell(OK, shows=('id="patient-link"',)), GONE)),
    ("GET", "/staff/groups"): (lambda w: ("/staff/groups", None), staff_only(
        Cell(OK, hides=(GROUP_NAME, GROUP2_NAME)), Cell(OK, shows=(GROUP_NAME,)),
        Cell(OK, shows=(GROUP_NAME,), hides=(GROUP2_NAME,)),
        Cell(OK, shows=(GROUP2_NAME,), hides=(GROUP_NAME,)))),
    ("POST", "/staff/groups"): (lambda w: ("/staff/groups", {"name": "Morning Group"}),
                                staff_only(NO, NO, Cell(SEE_OTHER, "/staff/groups/"),
                                           Cell(SEE_OTHER, "/staff/groups/"))),
    ("GET", "/staff/groups/{group_id:id}"): (
        lambda w: (f"/staff/groups/{w.group.id}", None),
        staff_only(GONE, Cell(OK, shows=(A_NAME,), hides=(B_NAME,)),
                   Cell(OK, shows=(A_NAME,)), GONE)),
    ("POST", "/staff/groups/{group_id:id}"): (
        lambda w: (f"/staff/groups/{w.group.id}", {"action": "add-therapist",
                                                   "staff_id": str(w.unassigned.id)}),
        staff_only(GONE, NO, Cell(SEE_OTHER, "/staff/groups/"), GONE)),
    ("GET", "/staff/sessions"): (lambda w: ("/staff/sessions", None), staff_only(
        Cell(OK, hides=(A_NAME, B_NAME, GROUP_NAME)),
        Cell(OK, shows=(A_NAME, GROUP_NAME), hides=(B_NAME, P2_NAME)),
        Cell(OK, shows=(A_NAME, B_NAME, GROUP_NAME), hides=(P2_NAME,)),
        Cell(OK, shows=(P2_NAME,), hides=(A_NAME, B_NAME, GROUP_NAME)))),
    ("POST", "/staff/sessions"): (lambda w: ("/staff/sessions", _schedule(w)), staff_only(
        Cell(400, shows=("you work with",)), Cell(SEE_OTHER, "/staff/sessions"),
        Cell(SEE_OTHER, "/staff/sessions"), Cell(400, shows=("you work with",)))),
    ("GET", "/staff/audit"): (lambda w: ("/staff/audit", None), staff_only(
        NO, NO, Cell(OK, shows=("Riverside",), hides=("Hillside",)),
        Cell(OK, shows=("Hillside",), hides=(A_NAME, "Riverside")))),
    ("GET", "/staff/team"): (lambda w: ("/staff/team", None), staff_only(
        Cell(OK, shows=("Casey Doe",), hides=("Robin Vale",)),
        Cell(OK, shows=("Casey Doe",), hides=("Robin Vale",)),
        Cell(OK, shows=("Casey Doe", "Turn off"), hides=("Robin Vale",)),
        Cell(OK, shows=("Robin Vale",), hides=("Casey Doe",)))),
    ("POST", "/staff/team"): (lambda w: ("/staff/team", {"action": "deactivate",
                                                          "staff_id": str(w.unassigned.id),
                                                          "confirm": "yes"}),
                              staff_only(NO, NO, Cell(SEE_OTHER, "/staff/team"),
                                         Cell(400, shows=("no such staff member",)))),
    ("GET", "/staff/account"): (lambda w: ("/staff/account", None),
                                staff_only(FINE, FINE, FINE, FINE)),
    ("POST", "/staff/account"): (lambda w: ("/staff/account", {"action": "enable",
                                                                "code": "000000"}),
                                 staff_only(*[Cell(400, shows=("That code",))] * 4)),
    ("GET", "/staff/patients/{patient_id:id}/family"): (
        lambda w: (f"/staff/patients/{w.a.id}/family", None),
        staff_only(GONE, Cell(OK, shows=(A_NAME,), hides=("Record consent",)),
                   Cell(OK, shows=(A_NAME, "Record consent")), GONE)),
    ("POST", "/staff/patients/{patient_id:id}/family"): (
        lambda w: (f"/staff/patients/{w.a.id}/family", {"action": "add-consent",
                                                        "kind": "telehealth"}),
        staff_only(GONE, NO, Cell(SEE_OTHER, "/staff/patients/"), GONE)),
    ("GET", "/staff/sessions/{session_id:id}/invites"): (
        lambda w: (f"/staff/sessions/{w.family_session.id}/invites", None),
        staff_only(GONE, Cell(OK, shows=("Angela Lee",)), Cell(OK, shows=("Angela Lee",)),
                   GONE)),
    ("POST", "/staff/sessions/{session_id:id}/invites"): (
        lambda w: (f"/staff/sessions/{w.family_session.id}/invites",
                   {"family_member_id": str(w.member.id)}),
        staff_only(GONE, Cell(OK, shows=('id="invite-link"',)),
                   Cell(OK, shows=('id="invite-link"',)), GONE)),
    ("GET", "/staff/sessions/{session_id:id}/attendance"): (
        lambda w: (f"/staff/sessions/{w.session.id}/attendance", None),
        staff_only(GONE, Cell(OK, shows=(A_NAME,)), Cell(OK, shows=(A_NAME,)), GONE)),
    ("POST", "/staff/sessions/{session_id:id}/attendance"): (
        lambda w: (f"/staff/sessions/{w.session.id}/attendance", {
            "action": "override", "person": f"patient:{w.a.id}", "status": "excused",
            "reason": "Called in sick"}),
        staff_only(GONE, Cell(SEE_OTHER, "/staff/sessions/"),
                   Cell(SEE_OTHER, "/staff/sessions/"), GONE)),
    ("GET", "/staff/patients/{patient_id:id}/dosage"): (
        lambda w: (f"/staff/patients/{w.a.id}/dosage", None),
        staff_only(GONE, Cell(OK, shows=(A_NAME,)), Cell(OK, shows=(A_NAME,)), GONE)),
    ("POST", "/staff/patients/{patient_id:id}/alerts"): (
        lambda w: (f"/staff/patients/{w.a.id}/alerts", {
            "alert": "cannot-reach-target-this-week", "week": "2026-W48",
            "note": "Holiday week; she comes Monday"}),
        staff_only(GONE, Cell(SEE_OTHER, "/staff/dashboard"),
                   Cell(SEE_OTHER, "/staff/dashboard"), GONE)),
    ("GET", "/staff/dashboard"): (lambda w: ("/staff/dashboard", None), staff_only(
        Cell(OK, hides=(A_NAME, B_NAME, P2_NAME)),
        Cell(OK, shows=(A_NAME,), hides=(B_NAME, P2_NAME)),
        Cell(OK, shows=(A_NAME, B_NAME), hides=(P2_NAME,)),
        Cell(OK, shows=(P2_NAME,), hides=(A_NAME, B_NAME)))),
    ("GET", "/staff/exports/attendance.csv"): (
        lambda w: ("/staff/exports/attendance.csv?from=2026-11-01&to=2026-11-30", None),
        staff_only(Cell(OK, shows=("42 CFR part 2",), hides=("patient:{a}",)),
                   Cell(OK, shows=("42 CFR part 2", "patient:{a}"), hides=("patient:{b}",)),
                   Cell(OK, shows=("42 CFR part 2", "patient:{a}")),
                   Cell(OK, shows=("42 CFR part 2", "patient:{p2}"),
                        hides=("patient:{a}", "Evening Process")))),
    ("GET", "/staff/exports/attendance.fhir.json"): (
        lambda w: ("/staff/exports/attendance.fhir.json?from=2026-11-01&to=2026-11-30", None),
        staff_only(Cell(OK, shows=("42CFRPart2",), hides=("Patient/",)),
                   Cell(OK, shows=("42CFRPart2", '"Patient/{a}"')),
                   Cell(OK, shows=("42CFRPart2", '"Patient/{a}"')),
                   Cell(OK, shows=("42CFRPart2", '"Patient/{p2}"'),
                        hides=('"Patient/{a}"',)))),
    ("GET", "/api/sessions/joinable"): (lambda w: ("/api/sessions/joinable", None), row(
        Cell(NOT_SIGNED_IN), Cell(OK, shows=(GROUP_NAME,)), Cell(OK, hides=(GROUP_NAME,)),
        Cell(NOT_SIGNED_IN), Cell(OK, hides=(GROUP_NAME,)), Cell(OK, shows=(GROUP_NAME,)),
        Cell(OK, shows=(GROUP_NAME,)), Cell(OK, shows=("Hillside Evening",),
                                            hides=(GROUP_NAME,)))),
    ("GET", "/sessions/{session_id:id}/room"): (
        lambda w: (f"/sessions/{w.session.id}/room", None), row(
            Cell(NOT_SIGNED_IN), Cell(OK, shows=('"role": "patient"',)),
            Cell(FORBIDDEN, shows=('data-code="not-on-roster"',)),
            Cell(FORBIDDEN, shows=('data-code="wrong-session"',)), GONE,
            Cell(OK, shows=('"role": "therapist"',)), Cell(OK, shows=('"role": "therapist"',)),
            GONE)),
    ("GET", "/sessions/{session_id:id}/check-in"): (
        lambda w: (f"/sessions/{w.session.id}/check-in", None), row(
            Cell(SEE_OTHER, "/sessions/"), Cell(OK, shows=('id="check-in"',)),
            Cell(FORBIDDEN, shows=('data-code="not-on-roster"',)),
            *[Cell(SEE_OTHER, "/sessions/")] * 5)),
    ("POST", "/sessions/{session_id:id}/check-in"): (
        lambda w: (f"/sessions/{w.session.id}/check-in", {"location": "home"}), row(
            Cell(SEE_OTHER, "/sessions/"), Cell(SEE_OTHER, "/sessions/"),
            Cell(FORBIDDEN, shows=('data-code="not-on-roster"',)),
            *[Cell(SEE_OTHER, "/sessions/")] * 5)),
    ("GET", "/static/{path}"): (lambda w: ("/static/css/site.css", None), everyone(FINE)),
    # A message's links are their own credential, like an invite: the same for everyone.
    ("GET", "/u/{token}"): (lambda w: (w.tokens["unsubscribe"], None),
                            everyone(Cell(OK, shows=("Stop appointment emails?",)))),
    ("POST", "/u/{token}"): (lambda w: (w.tokens["unsubscribe"],
                                        {"List-Unsubscribe": "One-Click"}),
                             everyone(Cell(OK, shows=("won't get these emails",)))),
    ("GET", "/m/{token}"): (lambda w: (w.tokens["cant-make-it"], None),
                            everyone(Cell(OK, shows=('id="cant-make-it"',)))),
    ("POST", "/m/{token}"): (lambda w: (w.tokens["cant-make-it"], {"reason": "Sick"}),
                             everyone(Cell(OK, shows=("Thank you for letting us know",)))),
    ("GET", "/staff/patients/{patient_id:id}/messages"): (
        lambda w: (f"/staff/patients/{w.a.id}/messages", None),
        staff_only(GONE, Cell(OK, shows=(A_NAME, "dana@example.org", "Email is off"),
                              hides=(B_NAME,)),
                   Cell(OK, shows=(A_NAME, "dana@example.org", "Email is off")), GONE)),
    ("POST", "/staff/patients/{patient_id:id}/outreach"): (
        lambda w: (f"/staff/patients/{w.a.id}/outreach", {"note": "Phoned"}),
        staff_only(GONE, Cell(400, shows=("not on the outreach list",)),
                   Cell(400, shows=("not on the outreach list",)), GONE)),
    ("GET", "/staff/sessions/{session_id:id}/schedule"): (
        lambda w: (f"/staff/sessions/{w.session.id}/schedule", None),
        staff_only(GONE, Cell(OK, shows=("room has opened",)),
                   Cell(OK, shows=("room has opened",)), GONE)),
    ("POST", "/staff/sessions/{session_id:id}/schedule"): (
        lambda w: (f"/staff/sessions/{w.session.id}/schedule",
                   {"action": "cancel", "confirm": "yes"}),
        staff_only(GONE, Cell(400, shows=("room has opened",)),
                   Cell(400, shows=("room has opened",)), GONE)),
}
# The signaling route: the join each actor gets (the commands after it are the next table).
WEBSOCKET_ROUTES = {"/ws/sessions/{session_id:id}": row(
    "refused:not-signed-in", "welcome", "refused:not-on-roster", "refused:wrong-session",
    "refused:not-on-roster", "welcome", "welcome", "refused:not-on-roster")}


def route_table(app) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    found = set()
    for route in app.routes:
        if isinstance(route, Route):
            found |= {(method, route.path) for method in (route.methods or {"GET"}) - {"HEAD"}}
        elif isinstance(route, Mount):
            found.add(("GET", route.path + "/{path}"))
        elif isinstance(route, WebSocketRoute):
            found.add(("WEBSOCKET", route.path))
        else:
            raise AssertionError(f"unknown kind of route: {route!r}")
    return found


def test_every_route_and_command_has_an_entry(settings, clock, engine):
    app = create_app(settings, clock=clock)
    routes = route_table(app)
    listed = set(ROUTES) | {("WEBSOCKET", path) for path in WEBSOCKET_ROUTES}
    assert routes - listed == set(), "routes without an entry in the matrix"
    assert listed - routes == set(), "entries for routes the app no longer has"
    assert set(COMMANDS) == set(CLIENT_MESSAGES), "protocol commands without an entry"
    for cells in [*(c for _, c in ROUTES.values()), *WEBSOCKET_ROUTES.values(),
                  *COMMANDS.values()]:
        assert tuple(cells) == ACTORS


def _check(cell: Cell, response, where: str, world: World) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == cell.status, (where, response.status_code,
                                                 response.text[:300])
    if cell.location is not None:
        assert response.headers["location"].startswith(cell.location), (
            where, response.headers["location"])
    ids = {"a": world.a.id, "b": world.b.id, "p2": world.p2.id}
    for text in cell.shows:
        assert text.format(**ids) in response.text, (where, "should show", text)
    for text in cell.hides:
        assert text.format(**ids) not in response.text, (where, "must not show", text)


@pytest.mark.parametrize("actor", ACTORS)
async def test_every_route_for_every_actor(actor, settings, clock, engine, demo, db):
    world = await build_world(db, demo, clock)
    world.tokens = await fresh_tokens(db, world, settings, clock)
    app = create_app(settings, clock=clock)
    with TestClient(app, base_url="http://127.0.0.1") as browser:
        sign_in(browser, actor, world.tokens)
        csrf = csrf_from(browser.get("/login").text)
        # Sign-out last: it ends the actor's sign-in for good.
        for (method, path), (ask, cells) in sorted(ROUTES.items(),
                                                   key=lambda item: item[0][1] == "/logout"):
            target, form = ask(world)
            # A copy of the actor's browser, so a cell that signs someone in (a link, an
            # invite) or out changes only the copy.
            tab = TestClient(app, base_url="http://127.0.0.1", cookies=dict(browser.cookies))
            if method == "POST":
                response = tab.post(target, data={**(form or {}), "csrf_token": csrf},
                                    follow_redirects=False)
            else:
                response = tab.get(target, follow_redirects=False)
            _check(cells[actor], response, f"{actor} {method} {path}", world)
        if actor != "anonymous":  # the copied cookie is dead once its sign-in ended
            assert browser.get("/me", follow_redirects=False).status_code == 303
            assert browser.get("/staff", follow_redirects=False).status_code in (303,)


# --- the protocol's commands -----------------------------------------------------------------

MODERATOR = {
    "join": "welcome", "ping": "pong", "answer": "error:bad-answer",
    "media": "target:media-state", "chat": "target:chat", "admit": "error:no-such-participant",
    "deny": "error:no-such-participant", "admit-all": "quiet", "mute": "target:moderated:mute",
    "lock-mic": "target:moderated:lock-mic", "unlock-mic": "target:moderated:unlock-mic",
    "stop-video": "target:moderated:stop-video", "lock": "self:room-state",
    "unlock": "self:room-state", "extend": "self:time", "safety-card": "self:safety-card",
    "side-room": "target:side-room", "main-room": "target:side-room",
    "remove": "target:refused:removed", "leave": "closed:1000", "end": "self:ended",
}
ADMITTED = {"answer", "media", "chat"}
ANYONE = {"join", "ping", "leave"}
PATIENT = {command: (MODERATOR[command] if command in ANYONE | ADMITTED else "error:not-allowed")
           for command in MODERATOR}
FAMILY_WAITING = {command: ("waiting" if command == "join" else MODERATOR[command]
                            if command in ANYONE else "error:waiting" if command in ADMITTED
                            else "error:not-allowed") for command in MODERATOR}


def refused(code: str) -> dict[str, str]:
    return {command: f"refused:{code}" for command in MODERATOR}


# command -> actor -> outcome; the family member is in her own (family) session, waiting.
COMMANDS: dict[str, dict[str, str]] = {
    command: row(refused("not-signed-in")[command], PATIENT[command],
                 refused("not-on-roster")[command], FAMILY_WAITING[command],
                 refused("not-on-roster")[command], MODERATOR[command], MODERATOR[command],
                 refused("not-on-roster")[command])
    for command in MODERATOR
}
ORDER = [c for c in MODERATOR if c not in ("leave", "end")] + ["leave", "end"]


def _command(kind: str, target_id: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"type": kind}
    if kind == "join":
        fields["v"] = 1
    if "participant_id" in CLIENT_MESSAGES[kind]:
        fields["participant_id"] = ("p-nobody" if kind in ("admit", "deny") else target_id)
    extra = {"answer": {"sdp": "v=0\r\n"}, "media": {"audio": False, "video": False},
             "chat": {"text": "hello", "to": "room"}, "remove": {"reason": "testing"},
             "extend": {"minutes": 5}}
    return {**fields, **extra.get(kind, {})}


async def _observe(outcome: str, command: str, actor: Client, target: Client | None,
                   actor_id: str) -> None:
    kind, _, rest = outcome.partition(":")
    if kind == "pong":
        await actor.expect("pong")
    elif kind == "error":
        error = await actor.expect("error", about=command)
        assert error["code"] == rest, (command, error)
    elif kind == "quiet":
        await actor.send(type="ping")
        answer = await actor.expect("pong", "error")
        assert answer["type"] == "pong", (command, answer)
    elif kind == "self":
        await actor.expect(rest)
    elif kind == "target":
        assert target is not None, command
        what, _, detail = rest.partition(":")
        if what == "moderated":
            await target.expect("moderated", action=detail)
        elif what == "refused":
            assert (await target.expect("refused"))["code"] == detail
        elif what == "media-state":
            await target.expect("media-state", participant_id=actor_id)
        else:
            await target.expect(what)
    elif kind == "closed":
        assert await actor.closed() == int(rest)
    else:
        raise AssertionError(f"unknown outcome {outcome!r}")


async def _cookie(server, actor: str, world: World) -> str | None:  # type: ignore[no-untyped-def]
    base = server.base_url
    if actor == "anonymous":
        return None
    web = WebSession(base)
    if actor in ("patient-a", "patient-b"):
        assert (await asyncio.to_thread(web.fetch, f"/p/{world.tokens[actor]}"))[0] == 303
        await asyncio.to_thread(check_in_at_home, web, world.session.id)
    elif actor == "family":
        assert await asyncio.to_thread(web.post_form, f"/i/{world.tokens['family']}",
                                       {"name": "Angela L.", "terms": "yes"}) == 303
    else:
        email, password = PASSWORDS[actor]
        assert await asyncio.to_thread(web.post_form, "/login",
                                       {"email": email, "password": password}) == 303
    return web.cookie


@pytest.mark.parametrize("actor", ACTORS)
async def test_every_protocol_command_for_every_actor(actor, live_server, db, demo, clock,
                                                      live_settings):
    world = await build_world(db, demo, clock)
    world.tokens = await fresh_tokens(db, world, live_settings, clock)
    room = world.family_session if actor == "family" else world.session
    url = f"{live_server.ws_base}/ws/sessions/{room.id}"
    cookie = await _cookie(live_server, actor, world)
    joined = WEBSOCKET_ROUTES["/ws/sessions/{session_id:id}"][actor]
    if actor != "family":  # the family member's own session is the next part
        async with Client(f"{live_server.ws_base}/ws/sessions/{world.session.id}",
                          cookie) as probe:
            answer = await probe.join()
            assert (answer["type"] if answer["type"] != "refused"
                    else f"refused:{answer['code']}") == joined
    else:
        async with Client(f"{live_server.ws_base}/ws/sessions/{world.session.id}",
                          cookie) as probe:
            assert f"refused:{(await probe.join())['code']}" == joined
    cells = {command: COMMANDS[command][actor] for command in ORDER}
    if all(outcome.startswith("refused:") for outcome in cells.values()):
        # Nothing is done before "join", and the join is refused: each command, first thing
        # on a new connection, is answered "join-first", then the join is refused.
        for command, outcome in cells.items():
            async with Client(url, cookie) as ws:
                if command == "ping":
                    await ws.send(type="ping")
                    await ws.expect("pong")  # a keep-alive is answered, and nothing else
                elif command != "join":
                    await ws.send(**_command(command, "p-nobody"))
                    first = await ws.expect("error")
                    assert first["code"] == "join-first", (command, first)
                answer = await ws.join()
                assert f"refused:{answer.get('code')}" == outcome, (command, answer)
                assert await ws.closed() in (4401, 4403)
        return
    # The target of the commands: Marcus, on the roster and in the room. The family member's
    # own session has nobody else in it: her commands are refused before they find anyone.
    target_cookie = None if actor == "family" else await _target_cookie(live_server, world)
    async with contextlib.AsyncExitStack() as stack:
        target = None
        target_id = "p-nobody"
        if target_cookie is not None:
            target = await stack.enter_async_context(Client(url, target_cookie))
            target_id = (await target.join())["you"]["id"]
        async with Client(url, cookie) as ws:
            actor_id = ""
            for command in ORDER:
                outcome = cells[command]
                if command == "join":
                    answer = await ws.join()
                    assert answer["type"] == outcome, answer
                    actor_id = answer.get("you", {}).get("id", "")
                    continue
                if command == "end":
                    break  # below, on a new connection: the actor has just left
                await ws.send(**_command(command, target_id))
                await _observe(outcome, command, ws, target, actor_id)
        async with Client(url, cookie) as again:
            assert (await again.join())["type"] in ("welcome", "waiting")
            await again.send(type="end")
            await _observe(cells["end"], "end", again, target, actor_id)


async def _target_cookie(server, world: World) -> str:  # type: ignore[no-untyped-def]
    app_state = server.app.state.vio
    async with app_state.db() as db:
        marcus = (await db.execute(select(Patient).where(Patient.legal_name == ROSTER[1]))
                  ).scalar_one()
        token = await clinic.issue_patient_link(db, Signer(app_state.settings.secret_key),
                                                marcus, app_state.clock.now())
        await db.commit()
    web = WebSession(server.base_url)
    status, _ = await asyncio.to_thread(web.fetch, f"/p/{token}")
    assert status == 303
    await asyncio.to_thread(check_in_at_home, web, world.session.id)
    return web.cookie


def test_the_matrix_is_complete_for_every_cell():
    for (method, path), (_, cells) in ROUTES.items():
        assert set(cells) == set(ACTORS), (method, path)
        for cell in cells.values():
            assert isinstance(cell, Cell) and 200 <= cell.status < 500
    for command, cells in COMMANDS.items():
        assert set(cells) == set(ACTORS), command
        assert all(re.fullmatch(r"[a-z:\-0-9]+", outcome) for outcome in cells.values())
    assert json.dumps(COMMANDS)  # plain data, reviewable as a table
