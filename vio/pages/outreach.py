"""Outreach after absences in a row: the dashboard's list, and recording the contact
(``POST /staff/patients/{id}/outreach``, with a note; audited).

Who sees and records follows ``vio.policy``: a patient's therapists and the program's admins.
A refused record (no note, a patient not on the list) is a 400 page and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from vio.attendance import outreach
from vio.attendance.outreach import OutreachDue, OutreachRefused
from vio.identity import Viewer
from vio.models import Patient, Program
from vio.pages.common import bad_request, checked_form, not_found, staff_page, state
from vio.policy import Action, Scope, may


async def outreach_list(request: Request, db: AsyncSession, program: Program,
                        patients: Sequence[Patient], now: datetime) -> list[OutreachDue]:
    """The dashboard's outreach list, of the patients the viewer sees there."""
    return await outreach.outreach_due(db, program, patients, now,
                                       state(request).settings.outreach_lookback_days)


@staff_page()
async def record_outreach(request: Request, db: AsyncSession, viewer: Viewer,
                          scope: Scope) -> Response:
    """Record that a staff member reached out to a patient on the outreach list."""
    patient = await db.get(Patient, request.path_params["patient_id"])
    if not may(scope, Action.VIEW, patient):
        return not_found(request, "There is no such patient.")
    assert patient is not None and viewer.staff is not None
    program = await db.get(Program, patient.program_id)
    assert program is not None
    form = await checked_form(request)
    app = state(request)
    try:
        await outreach.record_contact(db, program, patient, viewer.staff, form.get("note"),
                                      app.clock.now(), app.settings.outreach_lookback_days)
    except OutreachRefused as refusal:  # refused before anything was written
        return bad_request(request, str(refusal))
    await db.commit()
    return RedirectResponse("/staff/dashboard", status_code=303)


routes = [
    Route("/staff/patients/{patient_id:id}/outreach", record_outreach, methods=["POST"]),
]
