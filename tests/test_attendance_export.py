"""Attendance exports: CSV that reads back to the same rows, FHIR that validates, both audited
and for staff only."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select
from starlette.testclient import TestClient

from tests.conftest import TEST_KEYS, csrf_from
from tests.test_dosage import CHICAGO, NOW, STAFF_PASSWORD, Seeded, seed_program
from vio import clinic
from vio.app import create_app
from vio.attendance import cli as attendance_cli
from vio.attendance import records
from vio.attendance.export import (
    REDISCLOSURE_NOTICE,
    AttendanceRow,
    CsvProblem,
    ExportFormat,
    attendance_rows,
    export_attendance,
    fhir_bundle,
    parse_csv,
    write_csv,
)
from vio.attendance.intervals import AttendanceStatus
from vio.db import create_engine, migrate, session_factory
from vio.models import AuditEvent, SessionKind, SessionStatus
from vio.pages import attendance as attendance_pages
from vio.security import Signer

FIRST, LAST = date(2026, 11, 2), date(2026, 11, 22)
TZ = "America/Chicago"


def attendance_app(settings, clock):  # type: ignore[no-untyped-def]
    """The app, with the attendance pages mounted if the app does not mount them yet."""
    app = create_app(settings, clock=clock)
    paths = {getattr(route, "path", None) for route in app.router.routes}
    if "/staff/dashboard" not in paths:
        app.router.routes[0:0] = attendance_pages.routes
    return app


@pytest.fixture
def staff_client(settings, clock, engine) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(attendance_app(settings, clock), base_url="http://127.0.0.1") as client:
        yield client


def sign_in(client: TestClient, email: str) -> str:
    token = csrf_from(client.get("/login").text)
    response = client.post("/login", data={"email": email, "password": STAFF_PASSWORD,
                                           "csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return csrf_from(client.get("/staff").text)


async def sign_in_patient(client: TestClient, db, seeded: Seeded, settings) -> None:  # type: ignore[no-untyped-def]
    token = await clinic.issue_patient_link(db, Signer(settings.secret_key),
                                            seeded.patients["A"], datetime.now(UTC))
    await db.commit()
    client.get(f"/p/{token}")


async def _records(db, seeded: Seeded):  # type: ignore[no-untyped-def]
    return await records.records_between(db, seeded.program, FIRST, LAST)


def _find(rows: list[AttendanceRow], session_id: int, person: str) -> AttendanceRow:
    return next(r for r in rows if r.session_id == session_id and r.person == person)


async def test_csv_reads_back_to_the_same_rows_with_claim_fields(db):
    seeded = await seed_program(db)
    rows = attendance_rows(await _records(db, seeded), TZ)
    text = write_csv(rows)
    assert parse_csv(text) == rows
    a, c = (f"patient:{seeded.patients[k].id}" for k in "AC")
    monday, wednesday = seeded.sessions[("2026-W45", "Mon")], seeded.sessions[("2026-W45", "Wed")]
    c_monday = _find(rows, monday.id, c)
    assert (c_monday.audio_only_minutes, c_monday.audio_video_minutes) == (180, 0)
    assert c_monday.modifier == "93" and c_monday.modality_note == ""
    a_monday = _find(rows, monday.id, a)
    assert (a_monday.modifier, a_monday.place_of_service, a_monday.check_in_location) == (
        "95", "10", "home")
    assert _find(rows, wednesday.id, a).place_of_service == "02"  # checked in away from home
    assert a_monday.first_join is not None
    assert a_monday.first_join.isoformat() == "2026-11-02T18:00:00-06:00"
    assert "2026-11-02T18:00:00-06:00" in text
    assert seeded.family is not None
    family_rows = [r for r in rows if r.session_id == seeded.family.id]
    assert {r.billing_code for r in family_rows} == {"90846"}
    assert {r.role for r in family_rows} == {"therapist", "family", "patient"}
    therapist = _find(rows, monday.id, f"staff:{seeded.therapist.id}")
    assert therapist.place_of_service == "" and therapist.status is AttendanceStatus.PRESENT
    excused = _find(rows, seeded.sessions[("2026-W46", "Thu")].id,
                    f"patient:{seeded.patients['B'].id}")
    assert excused.status is AttendanceStatus.EXCUSED and excused.attended_minutes == 0


ROW_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
                   max_size=30)


@given(ROW_TEXT, ROW_TEXT, st.sampled_from(["", "93", "95"]))
def test_any_title_and_note_survive_the_csv(title, note, modifier):
    start = datetime(2026, 11, 2, 18, tzinfo=CHICAGO)
    row = AttendanceRow(
        session_id=1, title=title, kind=SessionKind.GROUP, code="90853",
        session_status=SessionStatus.ENDED, person="patient:1", role="patient", patient_id=1,
        scheduled_start=start, scheduled_end=start + timedelta(hours=3), first_join=None,
        last_leave=None, attended_minutes=0, audio_video_minutes=0, audio_only_minutes=0,
        check_in_location="", status=AttendanceStatus.ABSENT, modifier=modifier,
        modality_note=note, place_of_service="02", billing_code="90853")
    text = write_csv([row])
    assert parse_csv(text) == [row]
    cells = list(csv.reader(io.StringIO(text)))[2]  # after the notice and the header
    for cell in cells:
        assert not cell.startswith(("=", "+", "-", "@"))  # never runs as a spreadsheet formula


def test_parser_names_the_bad_line():
    with pytest.raises(CsvProblem, match="line 1"):
        parse_csv("name,minutes\r\nDana,30\r\n")
    good = write_csv([])
    with pytest.raises(CsvProblem, match="line 3"):  # line 1 is the notice, 2 the header
        parse_csv(good + "1,x\r\n")
    with pytest.raises(CsvProblem, match=r"line 1.*notice"):
        parse_csv(good.split("\r\n", 1)[1])


def test_every_export_carries_the_part_2_redisclosure_notice():
    csv_text = write_csv([])
    first_line = csv_text.split("\r\n", 1)[0]
    assert first_line.strip('"') == REDISCLOSURE_NOTICE
    assert "42 CFR part 2" in first_line and "2.31" in first_line
    bundle = fhir_bundle([], TZ, NOW)
    Bundle.model_validate(bundle)
    labels = {(c["system"], c["code"]) for c in bundle["meta"]["security"]}
    assert ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "42CFRPart2") in labels
    assert ("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R") in labels


async def test_fhir_bundle_validates_as_r4(db):
    seeded = await seed_program(db)
    found = await _records(db, seeded)
    bundle = fhir_bundle(found, TZ, NOW)
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "collection"
    assert len(parsed.entry) == sum(len(r.patients) for r in found) == bundle["total"]
    encounters = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
    a, b, c = (seeded.patients[k].id for k in "ABC")
    monday = seeded.sessions[("2026-W45", "Mon")].id
    first = encounters[f"session-{monday}-patient-{a}"]
    assert first["status"] == "finished"
    assert first["class"]["code"] == "VR"
    assert first["type"][0]["coding"][0] == {"system": "http://www.ama-assn.org/go/cpt",
                                             "code": "90853"}
    assert first["subject"] == {"reference": f"Patient/{a}"}
    assert first["period"] == {"start": "2026-11-02T18:00:00-06:00",
                               "end": "2026-11-02T21:00:00-06:00"}
    assert first["length"]["value"] == 180
    assert [p["individual"]["reference"] for p in first["participant"]] == [
        f"Practitioner/{seeded.therapist.id}"]  # never the other group members
    missed = encounters[f"session-{seeded.sessions[('2026-W46', 'Thu')].id}-patient-{a}"]
    assert missed["status"] == "cancelled" and "period" not in missed
    assert seeded.family is not None
    family = encounters[f"session-{seeded.family.id}-patient-{c}"]
    assert family["status"] == "finished"
    assert family["type"][0]["coding"][0]["code"] == "90846"
    assert "RelatedPerson/family-invite-1" in [p["individual"]["reference"]
                                               for p in family["participant"]]
    later = seeded.sessions[("2026-W47", "Thu")]
    assert encounters[f"session-{later.id}-patient-{b}"]["status"] == "planned"
    during = fhir_bundle([r for r in found if r.session.id == later.id], TZ,
                         later.starts_at + timedelta(minutes=30))
    Bundle.model_validate(during)
    assert {e["resource"]["status"] for e in during["entry"]} == {"in-progress"}


async def test_each_export_is_audited(db):
    seeded = await seed_program(db)
    for export_format in ExportFormat:
        export = await export_attendance(db, seeded.program, FIRST, LAST, export_format,
                                         f"staff:{seeded.admin.id}", NOW)
        assert export.count > 0
    audits = (await db.execute(select(AuditEvent).where(
        AuditEvent.action == "attendance-exported"))).scalars().all()
    assert [a.detail["format"] for a in audits] == ["csv", "fhir"]
    assert audits[0].detail["first_day"] == "2026-11-02"
    with pytest.raises(ValueError):
        await export_attendance(db, seeded.program, LAST, FIRST, ExportFormat.CSV, "x", NOW)


async def test_downloads_are_staff_only_and_audited(db, staff_client, settings):
    seeded = await seed_program(db)
    await db.commit()
    query = "?from=2026-11-02&to=2026-11-22"
    for path in ("/staff/exports/attendance.csv", "/staff/exports/attendance.fhir.json"):
        anonymous = staff_client.get(path + query, follow_redirects=False)
        assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    await sign_in_patient(staff_client, db, seeded, settings)
    assert staff_client.get("/staff/exports/attendance.csv" + query).status_code == 403
    staff_client.cookies.clear()
    sign_in(staff_client, "morgan@lakeside.test")
    csv_response = staff_client.get("/staff/exports/attendance.csv" + query)
    assert csv_response.status_code == 200
    assert csv_response.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv_response.headers["content-disposition"]
    assert len(parse_csv(csv_response.text)) > 0
    fhir_response = staff_client.get("/staff/exports/attendance.fhir.json" + query)
    Bundle.model_validate(fhir_response.json())
    assert staff_client.get("/staff/exports/attendance.csv?from=2026-11-22&to=2026-11-02"
                            ).status_code == 400
    assert staff_client.get("/staff/exports/attendance.csv?from=soon").status_code == 400
    count = (await db.execute(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == "attendance-exported",
        AuditEvent.actor == f"staff:{seeded.admin.id}"))).scalar_one()
    assert count == 2


async def test_a_therapist_exports_only_their_own_sessions(db, staff_client):
    seeded = await seed_program(db)
    await db.commit()
    sign_in(staff_client, "robin@lakeside.test")
    rows = parse_csv(staff_client.get(
        "/staff/exports/attendance.csv?from=2026-11-02&to=2026-11-22").text)
    assert rows and {r.session_id for r in rows} <= {
        s.id for s in [*seeded.sessions.values(), seeded.family, seeded.sunday] if s}


def test_command_line_export_and_dosage(sqlite_url, tmp_path: Path, monkeypatch, capsys):
    async def seed() -> None:
        engine = create_engine(sqlite_url)
        await migrate(engine, TEST_KEYS)
        async with session_factory(engine, TEST_KEYS)() as db:
            await seed_program(db)
            await db.commit()
        await engine.dispose()

    asyncio.run(seed())
    monkeypatch.setenv("VIO_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("VIO_SECRET_KEY", "test-secret")
    root = argparse.ArgumentParser(prog="vio")
    attendance_cli.register(root.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = root.parse_args(argv)
        return int(args.run(args))

    out = tmp_path / "attendance.fhir.json"
    assert run("export", "attendance", "--from", "2026-11-02", "--to", "2026-11-22",
               "--format", "fhir", "--out", str(out)) == 0
    Bundle.model_validate(json.loads(out.read_text()))
    assert out.stat().st_mode & 0o777 == 0o600  # protected health information: owner only
    assert all(e["resource"]["meta"]["security"]
               for e in json.loads(out.read_text())["entry"])
    assert run("export", "attendance", "--from", "2026-11-02", "--to", "2026-11-08") == 0
    printed = capsys.readouterr()
    assert parse_csv(printed.out) and "rows to standard output" in printed.err
    assert run("dosage", "--week", "2026-W46", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["week"] == "2026-W46"
    casey = next(p for p in report["patients"] if p["name"] == "Casey Park")
    assert casey["attended_hours"] == 3.0 and "consecutive-absences" in casey["alerts"]
    assert run("dosage", "--week", "2026-W46") == 0
    assert "Avery Stone" in capsys.readouterr().out
    assert run("dosage", "--week", "2026-W46", "--program", "99") == 2
    with pytest.raises(SystemExit):
        run("dosage", "--week", "2026-48")
