"""Attendance pages: staff see them, patients and strangers don't; overrides need a reason and
are audited; a sign-off locks the record."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import func, select

from tests.test_attendance_export import sign_in, sign_in_patient, staff_client  # noqa: F401
from tests.test_dosage import seed_program
from vio.attendance.models import AttendanceReview
from vio.models import AuditEvent, Program
from vio.pages.attendance import patient_week_summary


def _paths(seeded) -> list[str]:  # type: ignore[no-untyped-def]
    session = seeded.sessions[("2026-W46", "Wed")]
    return [f"/staff/sessions/{session.id}/attendance",
            f"/staff/patients/{seeded.patients['A'].id}/dosage", "/staff/dashboard"]


async def test_pages_render_for_staff(db, staff_client):  # noqa: F811
    seeded = await seed_program(db)
    await db.commit()
    sign_in(staff_client, "robin@lakeside.test")
    session_page, dosage_page, dashboard = (staff_client.get(p) for p in _paths(seeded))
    assert session_page.status_code == 200
    assert "<svg" in session_page.text and 'role="img"' in session_page.text
    assert "Avery Stone" in session_page.text and "min late" in session_page.text
    assert session_page.text.count('class="audio-video"') >= 3
    assert dosage_page.status_code == 200
    assert "Weekly attended hours against the target" in dosage_page.text
    assert "2026-W45" in dosage_page.text and 'class="target"' in dosage_page.text
    assert dashboard.status_code == 200
    assert "absences in a row" in dashboard.text and "consecutive-absences" in dashboard.text
    assert "Casey Park" in dashboard.text


async def test_pages_refuse_patients_and_strangers(db, staff_client, settings):  # noqa: F811
    seeded = await seed_program(db)
    await db.commit()
    for path in _paths(seeded):
        response = staff_client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login")
    await sign_in_patient(staff_client, db, seeded, settings)
    for path in _paths(seeded):
        assert staff_client.get(path).status_code == 403, path


async def test_other_programs_sessions_and_patients_are_not_found(db, staff_client, demo):  # noqa: F811
    seeded = await seed_program(db)
    await db.commit()
    sign_in(staff_client, "morgan@lakeside.test")
    other = next(iter(demo.patients.values()))
    assert staff_client.get(f"/staff/patients/{other.id}/dosage").status_code == 404
    assert staff_client.get("/staff/sessions/99999/attendance").status_code == 404
    assert seeded  # the Lakeside admin sees only Lakeside


async def test_override_needs_a_reason_and_is_audited(db, staff_client):  # noqa: F811
    seeded = await seed_program(db)
    await db.commit()
    token = sign_in(staff_client, "robin@lakeside.test")
    session = seeded.sessions[("2026-W46", "Thu")]
    path = f"/staff/sessions/{session.id}/attendance"
    avery = f"patient:{seeded.patients['A'].id}"
    refused = staff_client.post(path, data={"csrf_token": token, "action": "override",
                                            "person": avery, "status": "excused",
                                            "reason": "  "})
    assert refused.status_code == 400 and "Give a reason" in refused.text
    no_token = staff_client.post(path, data={"action": "override", "person": avery,
                                             "status": "excused", "reason": "Sick"})
    assert no_token.status_code == 403
    done = staff_client.post(path, data={"csrf_token": token, "action": "override",
                                         "person": avery, "status": "excused",
                                         "reason": "Flu, note on file"}, follow_redirects=False)
    assert done.status_code == 303
    page = staff_client.get(path).text
    assert "Flu, note on file" in page
    audit = (await db.execute(select(AuditEvent).where(
        AuditEvent.action == "attendance-override",
        AuditEvent.actor == f"staff:{seeded.therapist.id}"))).scalar_one()
    assert audit.target == f"session:{session.id}"
    assert audit.detail == {"person": avery, "status": "excused", "measured": "absent",
                            "reason": "Flu, note on file"}
    stranger = staff_client.post(path, data={"csrf_token": token, "action": "override",
                                             "person": "patient:99999", "status": "present",
                                             "reason": "typo"})
    assert stranger.status_code == 400


async def test_sign_off_locks_the_record(db, staff_client):  # noqa: F811
    seeded = await seed_program(db)
    await db.commit()
    token = sign_in(staff_client, "robin@lakeside.test")
    session = seeded.sessions[("2026-W46", "Mon")]
    path = f"/staff/sessions/{session.id}/attendance"
    assert staff_client.post(path, data={"csrf_token": token, "action": "sign-off",
                                         "confirm": "yes"},
                             follow_redirects=False).status_code == 303
    page = staff_client.get(path).text
    assert "This record is locked" in page and 'value="override"' not in page
    blake = f"patient:{seeded.patients['B'].id}"
    refused = staff_client.post(path, data={"csrf_token": token, "action": "override",
                                            "person": blake, "status": "absent",
                                            "reason": "late change"})
    assert refused.status_code == 409 and "signed off" in refused.text
    again = staff_client.post(path, data={"csrf_token": token, "action": "sign-off"})
    assert again.status_code == 409
    reviews = (await db.execute(select(func.count()).select_from(AttendanceReview).where(
        AttendanceReview.session_id == session.id))).scalar_one()
    assert reviews == 1
    assert (await db.execute(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == "attendance-sign-off"))).scalar_one() == 1


async def test_sign_off_waits_for_the_session_to_end(db, staff_client, clock):  # noqa: F811
    # Seeded as of Thursday of week 47 at 6 PM: that session has just begun, not ended.
    clock.advance(datetime(2026, 11, 20, 0, 0, tzinfo=UTC) - clock.now())
    seeded = await seed_program(db, now=clock.now())
    await db.commit()
    token = sign_in(staff_client, "robin@lakeside.test")
    upcoming = seeded.sessions[("2026-W47", "Thu")]
    assert upcoming.starts_at <= clock.now() < upcoming.ends_at
    page = staff_client.post(f"/staff/sessions/{upcoming.id}/attendance",
                             data={"csrf_token": token, "action": "sign-off"})
    assert page.status_code == 400 and "once the session has ended" in page.text


async def test_patient_week_summary_for_the_home_page(db):
    seeded = await seed_program(db)
    program = await db.get(Program, seeded.program.id)
    assert program is not None
    now = datetime(2026, 11, 19, 18, 0, tzinfo=UTC)  # Thursday noon in Chicago
    summary = await patient_week_summary(db, seeded.patients["B"], program, now)
    assert summary["week"] == "2026-W47"
    assert (summary["attended_hours"], summary["target_hours"]) == (4.0, 6.0)
    assert summary["remaining_scheduled_hours"] == 3.0 and summary["can_reach_target"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", next(iter(summary["hours_by_day"])))
