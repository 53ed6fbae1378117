from datetime import time
from zoneinfo import ZoneInfo

from sqlalchemy import select

from tests.conftest import csrf_from
from vio.models import Patient, RosterMembership, Session


def _sign_in(client, email="therapist@demo.vio", password="demo-therapist"):
    token = csrf_from(client.get("/login").text)
    client.post("/login", data={"email": email, "password": password, "csrf_token": token})
    return csrf_from(client.get("/staff").text)


def test_anonymous_is_sent_to_sign_in(client, demo):
    for path in ["/staff", "/staff/patients", "/staff/groups", "/staff/sessions", "/staff/audit"]:
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login")


def test_audit_log_is_for_admins_only(client, demo):
    _sign_in(client)
    assert client.get("/staff/audit").status_code == 403


async def test_create_patient_and_put_on_roster(client, demo, db):
    token = _sign_in(client, "admin@demo.vio", "demo-admin")
    bad = client.post("/staff/patients/new", data={
        "csrf_token": token, "legal_name": "", "level_of_care": "2.1", "age_group": "adult",
        "enrolled_on": "2026-11-01", "enrollment_ends_on": "2026-12-31", "status": "active"})
    assert bad.status_code == 400 and "Legal name is required" in bad.text
    made = client.post("/staff/patients/new", data={
        "csrf_token": token, "legal_name": "Jamie Quinn Ortiz", "level_of_care": "2.1",
        "age_group": "adolescent", "enrolled_on": "2026-11-01", "enrollment_ends_on": "2026-12-31",
        "status": "active", "emergency_contact_name": "Pat Ortiz",
        "emergency_contact_phone": "555-0199", "home_address": "14 Elm Court, Springfield",
        "phone": "555-0142"}, follow_redirects=False)
    assert made.status_code == 303
    page = client.get(made.headers["location"])
    assert "6.0 (program default)" in page.text  # ASAM 2.1 adolescent default target
    assert 'value="14 Elm Court, Springfield"' in page.text and 'value="555-0142"' in page.text
    patient = (await db.execute(select(Patient).where(Patient.legal_name == "Jamie Quinn Ortiz"))
               ).scalar_one()
    assert (patient.home_address, patient.phone) == ("14 Elm Court, Springfield", "555-0142")
    assert patient.display_name == "Jamie O."
    issued = client.post(made.headers["location"], data={"csrf_token": token,
                                                         "action": "issue-link"})
    assert "/p/" in issued.text
    added = client.post(f"/staff/groups/{demo.group.id}", data={
        "csrf_token": token, "action": "add-patient", "patient_id": str(patient.id),
        "joined_on": "2026-11-20"}, follow_redirects=False)
    assert added.status_code == 303
    membership = (await db.execute(select(RosterMembership).where(
        RosterMembership.patient_id == patient.id))).scalar_one()
    assert str(membership.joined_on) == "2026-11-20"


async def test_schedule_weekly_series_from_the_form(client, demo, db):
    token = _sign_in(client)
    response = client.post("/staff/sessions", data={
        "csrf_token": token, "title": "Skills Group", "kind": "group",
        "group_id": str(demo.group.id), "therapist_ids": [str(demo.therapist.id)],
        "first_day": "2026-10-26", "local_start": "18:00", "duration_minutes": "180",
        "repeat": "weekly", "weekdays": ["1", "3", "4"], "weeks": "2"}, follow_redirects=False)
    assert response.status_code == 303
    rows = (await db.execute(select(Session).where(Session.title == "Skills Group"))
            ).scalars().all()
    assert len(rows) == 6
    chicago = ZoneInfo("America/Chicago")
    assert {r.starts_at.astimezone(chicago).time() for r in rows} == {time(18, 0)}
    assert {r.billing_code for r in rows} == {"90853"}


def test_schedule_refuses_incomplete_form(client, demo):
    token = _sign_in(client)
    response = client.post("/staff/sessions", data={
        "csrf_token": token, "title": "No group", "kind": "group", "first_day": "2026-10-26",
        "local_start": "18:00", "duration_minutes": "180", "therapist_ids": ["1"]})
    assert response.status_code == 400
    assert "needs a group" in response.text


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
