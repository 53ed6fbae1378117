"""Pages anyone may see: the front page, the patient's home, and health.

The front page names the demo's sign-ins only on a server started with the demo
(``VIO_DEMO``); ``/healthz`` answers any host (load balancers ask by address) and says nothing
but ``ok``.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from vio import clinic, demo
from vio.models import Program
from vio.pages.attendance import patient_week_summary
from vio.pages.common import IDLE_WARNING_SECONDS, ViewerRole, current_viewer, render, state
from vio.pages.patient import home_lines, lead_line


async def home(request: Request) -> Response:
    """What vio is; on a demo server (``VIO_DEMO``, ``vio serve --demo``), the demo's ways in."""
    app = state(request)
    async with app.db() as db:
        await current_viewer(request, db)
        program = None
        if app.settings.demo:
            demo_admin = await clinic.staff_by_email(db, demo.ADMIN["email"])
            program = None if demo_admin is None else await db.get(Program,
                                                                    demo_admin.program_id)
    return render(request, "home.html", program=program, demo=demo if program else None,
                  demo_links_command="vio demo-links --json")


async def patient_home(request: Request) -> Response:
    """The patient's own page: today's session to join first, then hours this week and the
    sessions ahead, each saying when in the program's zone (``vio.pages.patient``)."""
    app = state(request)
    async with app.db() as db:
        viewer = await current_viewer(request, db)
        if viewer.role is not ViewerRole.PATIENT or viewer.patient is None:
            return RedirectResponse("/", status_code=303)
        patient = viewer.patient
        program = await db.get(Program, patient.program_id)
        assert program is not None
        now = app.clock.now()
        upcoming = await clinic.sessions_for_patient(
            db, patient, now - timedelta(hours=12), now + timedelta(days=14))
        ended = await clinic.room_end_moments(db, (s.id for s in upcoming))
        week = await patient_week_summary(db, patient, program, now)
    lines = home_lines(upcoming, now, timedelta(minutes=app.settings.join_early_minutes),
                       program.timezone, ended)
    lead = lead_line(lines)
    # The page reloads itself when the next room opens, if that comes before the idle
    # sign-out's warning (so the reload finds the patient still signed in).
    reload_in = lead.opens_in_seconds if lead is not None else None
    if reload_in is not None and reload_in > (app.settings.idle_logoff_minutes * 60
                                              - IDLE_WARNING_SECONDS):
        reload_in = None
    return render(request, "patient/home.html", patient=patient, lines=lines, first=lead,
                  week=week, timezone=program.timezone, reload_in_seconds=reload_in)


async def healthz(request: Request) -> Response:
    async with state(request).db() as db:
        await db.execute(text("SELECT 1"))
    return JSONResponse({"status": "ok"})


routes = [
    Route("/", home),
    Route("/me", patient_home),
    Route("/healthz", healthz),
]
