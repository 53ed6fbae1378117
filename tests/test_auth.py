from datetime import timedelta

from sqlalchemy import select

from tests.conftest import csrf_from
from vio import clinic
from vio.models import AuditEvent, Patient, PatientLink
from vio.security import Signer


def _login(client, email, password):
    token = csrf_from(client.get("/login").text)
    return client.post("/login", data={"email": email, "password": password,
                                       "csrf_token": token}, follow_redirects=False)


def test_therapist_signs_in_and_sees_today(client, demo):
    response = _login(client, "therapist@demo.vio", "demo-therapist")
    assert response.status_code == 303
    page = client.get("/staff")
    assert page.status_code == 200
    assert "Evening Process Group" in page.text


def test_wrong_password_is_refused(client, demo):
    response = _login(client, "therapist@demo.vio", "guess")
    assert response.status_code == 401
    assert "match our records" in response.text
    assert client.get("/staff", follow_redirects=False).status_code == 303


def test_unknown_email_gets_the_same_answer(client, demo):
    response = _login(client, "nobody@demo.vio", "guess")
    assert response.status_code == 401
    assert "match our records" in response.text


async def test_repeated_failures_are_rate_limited(client, demo, settings, db):
    for _ in range(settings.login_max_failures):
        assert _login(client, "therapist@demo.vio", "guess").status_code == 401
    # Even the right password is refused while the limit holds.
    blocked = _login(client, "therapist@demo.vio", "demo-therapist")
    assert blocked.status_code == 429
    assert client.get("/staff", follow_redirects=False).status_code == 303
    failures = (await db.execute(select(AuditEvent).where(
        AuditEvent.action == "sign-in-failed"))).scalars().all()
    assert len(failures) == settings.login_max_failures


def test_form_post_without_csrf_token_is_refused(client, demo):
    response = client.post("/login", data={"email": "therapist@demo.vio",
                                           "password": "demo-therapist"})
    assert response.status_code == 403
    assert client.get("/staff", follow_redirects=False).status_code == 303
    _login(client, "therapist@demo.vio", "demo-therapist")
    created = client.post("/staff/groups", data={"name": "Sneaky"}, follow_redirects=False)
    assert created.status_code == 403
    assert "Sneaky" not in client.get("/staff/groups").text


def test_staff_idle_logoff(client, demo, settings, clock):
    _login(client, "therapist@demo.vio", "demo-therapist")
    assert client.get("/staff").status_code == 200
    clock.advance(timedelta(minutes=settings.idle_logoff_minutes - 1))
    assert client.get("/staff", follow_redirects=False).status_code == 200  # a request resets
    clock.advance(timedelta(minutes=settings.idle_logoff_minutes, seconds=5))
    assert client.get("/staff", follow_redirects=False).status_code == 303


async def _link_for(db, settings, clock, name="Dana Reyes"):
    patient = (await db.execute(select(Patient).where(Patient.legal_name == name))).scalar_one()
    token = await clinic.issue_patient_link(db, Signer(settings.secret_key), patient, clock.now())
    await db.commit()
    return patient, token


async def test_patient_link_signs_in(client, demo, db, settings, clock):
    _, token = await _link_for(db, settings, clock)
    response = client.get(f"/p/{token}", follow_redirects=False)
    assert response.status_code == 303
    home = client.get("/me")
    assert "Hello, Dana R." in home.text
    assert "of\n    9 hours" in home.text  # ASAM 2.1 adult target
    assert "Evening Process Group" in home.text


async def test_revoked_link_shows_a_clear_page_and_signs_no_one_in(client, demo, db, settings,
                                                                   clock):
    patient, token = await _link_for(db, settings, clock)
    await clinic.revoke_patient_links(db, patient.id, clock.now())
    await db.commit()
    response = client.get(f"/p/{token}", follow_redirects=False)
    assert response.status_code == 410
    assert "turned off" in response.text
    assert 'data-code="link-revoked"' in response.text
    assert client.get("/me", follow_redirects=False).status_code == 303


async def test_expired_link_shows_a_clear_page_and_signs_no_one_in(client, demo, db, settings,
                                                                   clock):
    patient, token = await _link_for(db, settings, clock)
    clock.advance(timedelta(weeks=11))  # the demo enrollment lasts ten weeks
    response = client.get(f"/p/{token}", follow_redirects=False)
    assert response.status_code == 410
    assert "expired" in response.text
    assert client.get("/me", follow_redirects=False).status_code == 303
    link = (await db.execute(select(PatientLink).where(PatientLink.patient_id == patient.id))
            ).scalars().first()
    assert link is not None and link.revoked_at is None


async def test_forged_and_unknown_links_are_refused(client, demo, db, settings, clock):
    _, token = await _link_for(db, settings, clock)
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert client.get(f"/p/{forged}").status_code == 410
    assert 'data-code="link-malformed"' in client.get(f"/p/{forged}").text
    other = Signer(settings.secret_key).sign({"l": 999, "s": "x"}, clinic.PATIENT_LINK_NAMESPACE)
    assert client.get(f"/p/{other}").status_code == 404
    assert client.get("/me", follow_redirects=False).status_code == 303
