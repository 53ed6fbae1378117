"""Pages anyone may see: the front page, the patient's home, and health."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from vio import clinic
from vio.models import Program
from vio.pages.attendance import patient_week_summary
from vio.pages.common import ViewerRole, current_viewer, render, state


async def home(request: Request) -> Response:
    """What vio is, and where the demo's ways in are."""
    app = state(request)
    async with app.db() as db:
        viewer = await current_viewer(request, db)
        program = await db.get(Program, 1)
    request.scope["vio.viewer"] = viewer
    return render(request, "home.html", program=program,
                  demo_links_command="vio demo-links --json")


async def patient_home(request: Request) -> Response:
    """The patient's own page: upcoming sessions, with a way into today's."""
    app = state(request)
    async with app.db() as db:
        viewer = await current_viewer(request, db)
        request.scope["vio.viewer"] = viewer
        if viewer.role is not ViewerRole.PATIENT or viewer.patient is None:
            return RedirectResponse("/", status_code=303)
        patient = viewer.patient
        program = await db.get(Program, patient.program_id)
        assert program is not None
        now = app.clock.now()
        upcoming = await clinic.sessions_for_patient(
            db, patient, now - timedelta(hours=12), now + timedelta(days=14))
        upcoming = [s for s in upcoming if s.ends_at > now]
        week = await patient_week_summary(db, patient, program, now)
    zone = ZoneInfo(program.timezone)
    return render(request, "patient/home.html", patient=patient, sessions=upcoming, zone=zone,
                  now=now, join_early=timedelta(minutes=app.settings.join_early_minutes),
                  week=week)


async def healthz(request: Request) -> Response:
    async with state(request).db() as db:
        await db.execute(text("SELECT 1"))
    return JSONResponse({"status": "ok"})


routes = [
    Route("/", home),
    Route("/me", patient_home),
    Route("/healthz", healthz),
]
