"""Who may do what: every moderator command and every staff page, for every kind of person."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from tests.conftest import csrf_from
from tests.test_session_rules import Clinic, loopback_only  # noqa: F401
from tests.wsclient import Client
from vio import clinic
from vio.app import create_app
from vio.demo import ROSTER
from vio.models import Patient, StaffRole, StaffUser
from vio.protocol import CLIENT_MESSAGES, MODERATOR_MESSAGES
from vio.security import Signer, hash_password

ROLES = ["anonymous", "patient", "unassigned-therapist", "assigned-therapist", "admin"]
MAY_MODERATE = {"assigned-therapist", "admin"}


@pytest.fixture
async def unassigned_therapist(db, demo):
    staff = StaffUser(program_id=demo.program.id, name="Casey Doe", email="casey@demo.vio",
                      role=StaffRole.THERAPIST, password_hash=hash_password("casey-pass"))
    db.add(staff)
    await db.commit()
    return staff


def command(kind: str, target: str) -> dict:
    fields = {"type": kind}
    if "participant_id" in CLIENT_MESSAGES[kind]:
        fields["participant_id"] = target
    if kind == "remove":
        fields["reason"] = "testing"
    if kind == "extend":
        fields["minutes"] = 5
    return fields


async def cookie_for(place: Clinic, role: str) -> str | None:
    return await {
        "anonymous": lambda: asyncio.sleep(0, None),
        "patient": lambda: place.patient(ROSTER[1]),
        "unassigned-therapist": lambda: place.staff("casey@demo.vio", "casey-pass"),
        "assigned-therapist": lambda: place.staff(),
        "admin": lambda: place.staff("admin@demo.vio", "demo-admin"),
    }[role]()


@pytest.mark.parametrize("role", ROLES)
async def test_moderator_commands_by_role(role, live_server, db, live_settings, clock,
                                          unassigned_therapist):
    place = Clinic(live_server, db, live_settings, clock)
    url = await place.url()
    # Everything but "end" first; "end" last, as it closes the room.
    kinds = [*sorted(MODERATOR_MESSAGES - {"end"}), "end"]
    async with Client(url, await place.patient(ROSTER[0])) as target:
        target_id = (await target.join())["you"]["id"]
        async with Client(url, await cookie_for(place, role)) as actor:
            answer = await actor.join()
            if answer["type"] == "refused":
                assert role in ("anonymous", "unassigned-therapist"), answer
                assert answer["code"] == {"anonymous": "not-signed-in",
                                          "unassigned-therapist": "not-on-roster"}[role]
                assert target.received("moderated") == []
                return
            assert role in ("patient", *MAY_MODERATE)
            for kind in kinds:
                if kind == "remove":
                    continue  # checked below, as it removes the target
                await actor.send(**command(kind, "p-nobody" if kind != "mute" else target_id))
                if kind == "end" and role in MAY_MODERATE:
                    assert (await target.expect("ended"))["type"] == "ended"
                    continue
                if kind in ("lock", "unlock", "admit-all") and role in MAY_MODERATE:
                    continue
                if kind == "extend" and role in MAY_MODERATE:
                    assert (await actor.expect("time"))["ends_at"]
                    continue
                if kind == "mute" and role in MAY_MODERATE:
                    assert (await target.expect("moderated"))["action"] == "mute"
                    continue
                error = await actor.expect("error")
                assert error["about"] == kind
                expected = "not-allowed" if role not in MAY_MODERATE else {
                    "safety-card": "no-such-participant"}.get(kind, "no-such-participant")
                assert error["code"] == expected, (kind, error)
            if role not in MAY_MODERATE:
                await actor.send(**command("remove", target_id))
                assert (await actor.expect("error"))["code"] == "not-allowed"
                await asyncio.sleep(0.2)
                assert target.received("moderated") == [] and target.close_code is None


STAFF_ROUTES = ["/staff", "/staff/patients", "/staff/patients/new", "/staff/groups",
                "/staff/sessions", "/staff/groups/1", "/staff/patients/1", "/staff/dashboard",
                "/staff/patients/1/dosage", "/staff/patients/1/family"]
# Pages about one session: its therapists and admins only.
SESSION_ROUTES = ["/staff/sessions/1/attendance", "/staff/sessions/2/invites"]
ADMIN_ROUTES = ["/staff/audit"]
# Patient 1 is on group 1's roster, whose therapist is the assigned one (vio.policy): the
# unassigned therapist finds neither; creating patients is an admin action.
THERAPIST_EXCEPTIONS = {
    ("unassigned-therapist", "/staff/groups/1"): 404,
    ("unassigned-therapist", "/staff/patients/1"): 404,
    ("unassigned-therapist", "/staff/patients/1/dosage"): 404,
    ("unassigned-therapist", "/staff/patients/1/family"): 404,
    ("unassigned-therapist", "/staff/patients/new"): 403,
    ("assigned-therapist", "/staff/patients/new"): 403,
}


@pytest.mark.parametrize("role", ROLES)
async def test_staff_pages_by_role(role, settings, clock, engine, demo, db, unassigned_therapist):
    with TestClient(create_app(settings, clock=clock), base_url="http://127.0.0.1") as client:
        if role == "patient":
            patient = (await db.execute(select(Patient))).scalars().first()
            token = await clinic.issue_patient_link(db, Signer(settings.secret_key), patient,
                                                    clock.now())
            await db.commit()
            client.get(f"/p/{token}")
        elif role != "anonymous":
            email, password = {"unassigned-therapist": ("casey@demo.vio", "casey-pass"),
                               "assigned-therapist": ("therapist@demo.vio", "demo-therapist"),
                               "admin": ("admin@demo.vio", "demo-admin")}[role]
            token = csrf_from(client.get("/login").text)
            client.post("/login", data={"email": email, "password": password,
                                        "csrf_token": token})
        for path in SESSION_ROUTES:
            response = client.get(path, follow_redirects=False)
            expected = {"anonymous": 303, "patient": 403, "unassigned-therapist": 404}
            assert response.status_code == expected.get(role, 200), (role, path)
        for path in STAFF_ROUTES + ADMIN_ROUTES:
            response = client.get(path, follow_redirects=False)
            if role == "anonymous":
                assert response.status_code == 303, path
            elif role == "patient" or (path in ADMIN_ROUTES and role != "admin"):
                assert response.status_code == 403, path
            else:
                assert response.status_code == THERAPIST_EXCEPTIONS.get((role, path), 200), (
                    role, path)
