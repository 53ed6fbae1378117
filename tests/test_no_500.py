"""No request gives a 500: hypothesis over every route of the app, its path parameters, query
and form fields, for an admin, a therapist and a patient. And the cases the issue found."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from sqlalchemy import Enum, String, select
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from tests.conftest import csrf_from
from vio import clinic
from vio.demo import ROSTER
from vio.models import Base, Session, SessionKind
from vio.pages.forms import DATE_FIELDS, NUMBER_FIELDS, TEXT_LIMITS, TIME_FIELDS
from vio.security import Signer

README = (Path(__file__).parent.parent / "README.md").read_text()
FIELDS = sorted({*TEXT_LIMITS, *NUMBER_FIELDS, *DATE_FIELDS, *TIME_FIELDS})
PARAM = re.compile(r"\{([^}:]+)(?::([^}]+))?\}")

nasty = st.sampled_from([
    "", " ", "0", "-1", "1", "2", "3", "99999999999999999999999", "9" * 18, "²", "١٢", "1e9",
    "1.5", "nan", "inf", "1e309", "9999-12-31", "0000-00-00", "2026-02-30", "2026-13-01",
    "2026-11-23", "18:00", "25:61", "24:00", "\x00", "patient:1", "staff:1", "patient:" + "9" * 30,
    "home", "other", "yes", "weekly", "group", "family", "family-disclosure", "telehealth",
    "issue-link", "revoke-links", "add-patient", "end-membership", "add-therapist",
    "add-member", "add-consent", "revoke-consent", "override", "sign-off", "revoke",
    "deactivate", "activate", "second-factor", "enable", "disable", "excused", "admin",
    "\u202e", "a" * 2_000, "<script>", "'; DROP TABLE patients; --", "%00", "../../etc",
])
value = st.one_of(nasty, st.text(max_size=40), st.integers(-10, 10 ** 25).map(str))


def _routes(app) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    found = []
    for route in app.routes:
        if isinstance(route, Route):
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                found.append((method, route.path))
        elif isinstance(route, Mount):
            found.append(("GET", route.path + "/{path}"))
    return found


def _fill(path: str, values: list[str]) -> str:
    parts = iter(values)
    return PARAM.sub(lambda m: quote(next(parts), safe=""), path)


def _sign_in(client: TestClient, actor: str, demo, db_token: str | None) -> None:  # type: ignore[no-untyped-def]
    client.cookies.clear()
    if actor == "patient":
        assert db_token is not None
        client.get(f"/p/{db_token}")
        return
    email, password = {"admin": ("admin@demo.vio", "demo-admin"),
                       "therapist": ("therapist@demo.vio", "demo-therapist")}[actor]
    csrf = csrf_from(client.get("/login").text)
    client.post("/login", data={"email": email, "password": password, "csrf_token": csrf})


@pytest.mark.parametrize("actor", ["admin", "therapist", "patient"])
async def test_no_route_answers_500(client, demo, db, settings, clock, actor):
    token = None
    if actor == "patient":
        token = await clinic.issue_patient_link(db, Signer(settings.secret_key),
                                                demo.patients[ROSTER[0]], clock.now())
        await db.commit()
    client.app.state.vio.sign_in_attempts.max_failures = 10 ** 6  # the limit has its own test
    client.app.state.invite_throttle.max_failures = 10 ** 6
    _sign_in(client, actor, demo, token)
    routes = _routes(client.app)
    csrf = {"token": csrf_from(client.get("/login").text)}
    outcomes: Counter[int] = Counter()

    @examples(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(route=st.sampled_from(routes), path_values=st.lists(value, min_size=3, max_size=3),
           fields=st.dictionaries(st.sampled_from(FIELDS), value, max_size=8),
           query=st.dictionaries(st.sampled_from(FIELDS), value, max_size=3),
           with_csrf=st.booleans())
    def one_request(route, path_values, fields, query, with_csrf):  # type: ignore[no-untyped-def]
        method, template = route
        path = _fill(template, path_values)
        if method == "POST" and with_csrf:
            fields = {**fields, "csrf_token": csrf["token"]}
        response = client.request(method, path, params=query,
                                  data=fields if method == "POST" else None,
                                  follow_redirects=False)
        assert response.status_code < 500, (method, path, fields, query, response.text[:500])
        outcomes[response.status_code // 100 * 100 if response.status_code != 400 else 400] += 1
        if path in ("/logout",) or response.headers.get("location", "").startswith("/login"):
            _sign_in(client, actor, demo, token)  # keep exploring as the same person
            csrf["token"] = csrf_from(client.get("/login").text)

    one_request()
    # The examples got past the gates, not only into the not-found and sign-in answers.
    assert outcomes[200] + outcomes[400] >= 30, outcomes


async def test_the_cases_the_issue_found(client, demo, db):
    csrf = csrf_from(client.get("/login").text)
    client.post("/login", data={"email": "admin@demo.vio", "password": "demo-admin",
                                "csrf_token": csrf})
    csrf = csrf_from(client.get("/staff").text)
    huge = "99999999999999999999999"
    for path in (f"/sessions/{huge}/room", f"/staff/patients/{huge}",
                 f"/staff/sessions/{huge}/attendance", f"/staff/groups/{huge}",
                 "/sessions/%C2%B2/room", "/staff/patients/999999999999999999"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "<h1>" in response.text  # a clear page, not a stack trace
    group = demo.group.id
    for patient_id in ("²", huge, "-1", "1.0"):
        response = client.post(f"/staff/groups/{group}", data={
            "csrf_token": csrf, "action": "add-patient", "patient_id": patient_id,
            "joined_on": "2026-11-23"})
        assert response.status_code == 400 and "Choose a patient" in response.text
    for day in ("9999-12-31", "0001-01-01", "2026-02-30", "²⁰²⁶-11-23"):
        response = client.post("/staff/sessions", data={
            "csrf_token": csrf, "title": "T", "kind": "group", "group_id": str(group),
            "therapist_ids": [str(demo.therapist.id)], "first_day": day, "local_start": "18:00",
            "duration_minutes": "60"})
        assert response.status_code == 400, day
        assert "must be a date" in response.text
    assert client.get("/staff/exports/attendance.csv?from=9999-12-31&to=9999-12-31"
                      ).status_code == 400
    assert client.get("/staff/audit?from=9999-12-31&person=patient:" + "9" * 40
                      ).status_code == 200


async def test_oversize_fields_are_refused_and_change_nothing(client, demo, db, settings,
                                                              clock):
    token = await clinic.issue_patient_link(db, Signer(settings.secret_key),
                                            demo.patients[ROSTER[0]], clock.now())
    await db.commit()
    client.get(f"/p/{token}")
    session = (await db.execute(select(Session).where(Session.kind == SessionKind.GROUP))
               ).scalars().first()
    page = client.get(f"/sessions/{session.id}/check-in")
    csrf = csrf_from(page.text)
    huge = client.post(f"/sessions/{session.id}/check-in", data={
        "csrf_token": csrf, "location": "other", "address": "x" * 300_000, "city": "A",
        "state": "IL"})
    assert huge.status_code == 413  # above VIO_MAX_FORM_BYTES: refused unread
    long = client.post(f"/sessions/{session.id}/check-in", data={
        "csrf_token": csrf, "location": "other", "address": "x" * 301, "city": "A",
        "state": "IL"})
    assert long.status_code == 400 and "at most 300 characters" in long.text
    from vio.rooms.records import latest_check_in

    assert await latest_check_in(db, session.id, demo.patients[ROSTER[0]].id) is None


def test_every_text_field_cap_is_documented_and_fits_its_column():
    for name, cap in TEXT_LIMITS.items():
        assert f"| `{name}` | {cap} |" in README, f"{name} is missing from the README table"
    columns: dict[str, list[int]] = {}
    for table in Base.metadata.tables.values():
        for column in table.columns:  # free text columns (an enum's value is checked apart)
            if isinstance(column.type, String) and not isinstance(column.type, Enum) \
                    and column.type.length:
                columns.setdefault(column.name, []).append(column.type.length)
    aliases = {"relationship": "relationship_to_patient"}
    checked = 0
    for name, cap in TEXT_LIMITS.items():
        for length in columns.get(aliases.get(name, name), []):
            assert cap <= length, (name, cap, length)
            checked += 1
    assert checked >= 10
