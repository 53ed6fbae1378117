"""The room page, the patient's check-in before it, the joinable-sessions API, and the
signaling WebSocket's route.

Links in the page come from ``VIO_PUBLIC_BASE_URL`` (the WebSocket address too, ``wss://`` for
an ``https://`` site), never from the request's Host header.
"""

from __future__ import annotations

import re
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute

from vio import audit_chain, clinic, family
from vio.identity import patient_identity, session_identity
from vio.models import AttendanceKind, FamilyInvite, Patient, Program, Session, SessionStatus
from vio.pages import forms
from vio.pages.common import (
    ViewerRole,
    checked_form,
    current_scope,
    current_viewer,
    not_found,
    render,
    room_ticket,
    state,
)
from vio.pages.signaling import serve
from vio.policy import Action, may
from vio.rooms import records
from vio.rooms.effects import RoomEvent
from vio.turn import room_ice_servers, turn_user


async def room_page(request: Request) -> Response:
    """The browser room. Who may enter is decided on the WebSocket, by the room itself; the
    page is shown only to people the session concerns (``vio.policy`` for staff, the roster for
    patients, the invite for family members)."""
    app = state(request)
    session_id = request.path_params["session_id"]
    async with app.db() as db:
        viewer, scope = await current_scope(request, db)
        session = await db.get(Session, session_id)
        if viewer.role is ViewerRole.ANONYMOUS:
            return render(request, "message.html", status_code=401, title="Please sign in",
                          message="Open the personal link your care team sent you, or sign "
                                  "in, to join this session.", code="not-signed-in")
        if session is None or (viewer.is_staff
                               and not may(scope, Action.RUN_SESSION, session)):
            return not_found(request, "We can't find this session.", "no-such-session")
        if viewer.family_invite_id is not None:
            invite = await db.get(FamilyInvite, viewer.family_invite_id)
            checked = (family.InviteProblem.UNKNOWN if invite is None else
                       await family.check_invite_record(db, invite, app.clock.now(),
                                                        app.settings.join_early_minutes,
                                                        session.id))
            if isinstance(checked, family.InviteProblem):
                return render(request, "message.html", status_code=403,
                              title="This invitation can't be used",
                              message=family.INVITE_PROBLEM_TEXT[checked], code=checked.value)
        if viewer.patient is not None:
            facts = await records.load_facts(db, session.id, app.clock.now())
            if facts is None or viewer.patient.id not in facts.patient_ids:
                return not_on_schedule(request)
            if facts.status is SessionStatus.ENDED or facts.status is SessionStatus.CANCELLED:
                return session_over(request, facts.status)
            if await records.latest_check_in(db, session.id, viewer.patient.id) is None:
                return RedirectResponse(f"/sessions/{session.id}/check-in", status_code=303)
        program = await db.get(Program, session.program_id)
    role = "therapist" if viewer.is_staff else viewer.role.value
    display = (viewer.staff.name if viewer.staff else
               viewer.patient.display_name if viewer.patient else viewer.family_name or "")
    ticket = room_ticket(request, viewer, session.id)
    config = {
        "wsUrl": f"{ws_base_url(app.settings.public_base_url)}/ws/sessions/{session.id}"
                 f"?ticket={ticket}",
        "sessionTitle": session.title,
        "role": role,
        "displayName": display,
        "iceServers": room_ice_servers(app.settings, session_end=session.ends_at,
                                       user=turn_user(ticket)),
        "endedUrl": "/staff" if viewer.is_staff else "/me" if viewer.patient else "/",
        # Staff: the session's attendance record, linked from the closing screen.
        "attendanceUrl": f"/staff/sessions/{session.id}/attendance" if viewer.is_staff else "",
        # Shown with every refusal: whom to call when someone is in danger right now.
        "emergencyNumber": program.emergency_number if program is not None else "",
    }
    # No idle warning here: a live room connection keeps the sign-in alive.
    return render(request, "room.html", room_config=config, session_title=session.title,
                  idle_logoff_seconds=0)


US_STATE = re.compile(r"^[A-Za-z]{2}$")


def ws_base_url(public_base_url: str) -> str:
    """``VIO_PUBLIC_BASE_URL`` as a WebSocket address: https becomes wss, http ws."""
    if public_base_url.startswith("https://"):
        return "wss://" + public_base_url[len("https://"):]
    return "ws://" + public_base_url[len("http://"):]


def not_on_schedule(request: Request) -> Response:
    return render(request, "message.html", status_code=403, title="Not on your schedule",
                  message="This session isn't on your schedule. Please check with your "
                          "care team.", code="not-on-roster")


async def check_in(request: Request) -> Response:
    """Before each session, a patient confirms where they are right now (DESIGN.md, Safety);
    the check-in is audited (without the address, which stays with the attendance record)."""
    app = state(request)
    session_id = request.path_params["session_id"]
    async with app.db() as db:
        viewer = await current_viewer(request, db)
        if viewer.patient is None:
            return RedirectResponse(f"/sessions/{session_id}/room", status_code=303)
        patient = viewer.patient
        facts = await records.load_facts(db, session_id, app.clock.now())
        if facts is None or patient.id not in facts.patient_ids:
            return not_on_schedule(request)
        if facts.status is SessionStatus.ENDED or facts.status is SessionStatus.CANCELLED:
            return session_over(request, facts.status)
        error = None
        form_values: dict[str, str] = {}
        if request.method == "POST":
            form = await checked_form(request)
            try:
                form_values = {name: forms.text(form, name, label, required=False)
                               for name, label in (("location", "Location"),
                                                   ("address", "Street address"),
                                                   ("city", "City"), ("state", "State"))}
            except forms.FormProblem as problem:
                error = str(problem)
                form_values = {}
            location = form_values.get("location")
            detail: dict[str, str] = {}
            if error is None and location == "home":
                detail = {"location": "home", "address": home_address(patient)}
            elif error is None and location == "other":
                if not (form_values["address"] and form_values["city"]
                        and US_STATE.match(form_values["state"])):
                    error = "Please give the address, city and two-letter state where you are."
                detail = {"location": "other", "address": form_values["address"],
                          "city": form_values["city"], "state": form_values["state"].upper()}
            elif error is None:
                error = "Please tell us where you are right now."
            if error is None:
                now = app.clock.now()
                await audit_chain.audit(db, now, patient_identity(patient.id), "check-in",
                                        session_identity(session_id), location=detail["location"])
                await records.append_event(db, session_id, now, RoomEvent(
                    AttendanceKind.CHECKED_IN, person=patient_identity(patient.id), role="patient",
                    patient_id=patient.id, detail=detail))
                return RedirectResponse(f"/sessions/{session_id}/room", status_code=303)
    return render(request, "check_in.html", status_code=400 if error else 200, error=error,
                  patient=patient, home=home_address(patient), session_title=facts.title,
                  starts_at=facts.starts_at, timezone=facts.timezone, values=form_values)


def home_address(patient: Patient) -> str:
    """The home a patient checks in from when they say "at home": the address on their record
    (``patients.home_address``), else the usual location staff noted."""
    return patient.home_address.strip() or patient.usual_location.strip()


def session_over(request: Request, status: SessionStatus) -> Response:
    """A session ended (or called off) before its time: say so, and the way back home."""
    if status is SessionStatus.CANCELLED:
        title, message = "This session was cancelled", "This session was cancelled."
    else:
        title, message = "This session has ended", "The therapist has ended this session."
    return render(request, "message.html", status_code=410, title=title,
                  message=f"{message} Your other sessions are on your page.",
                  code="session-cancelled" if status is SessionStatus.CANCELLED
                  else "session-ended", back_href="/me", back_label="Back to your sessions")


async def joinable(request: Request) -> Response:
    """Sessions whose room is open to the signed-in person now (for `vio bot` and pages)."""
    app = state(request)
    now = app.clock.now()
    early = timedelta(minutes=app.settings.join_early_minutes)
    async with app.db() as db:
        viewer, scope = await current_scope(request, db)
        if viewer.staff is not None:
            sessions = await clinic.sessions_for_staff(db, scope, now - timedelta(days=1),
                                                       now + early)
        elif viewer.patient is not None:
            sessions = await clinic.sessions_for_patient(db, viewer.patient,
                                                         now - timedelta(days=1), now + early)
        else:
            return JSONResponse({"error": "not-signed-in"}, status_code=401)
    return JSONResponse({"sessions": [
        {"id": s.id, "title": s.title, "kind": s.kind.value, "starts_at": s.starts_at.isoformat(),
         "ends_at": s.ends_at.isoformat()}
        for s in sessions
        if s.starts_at - early <= now < s.ends_at and s.status.value in ("scheduled", "open")]})


routes = [
    Route("/api/sessions/joinable", joinable),
    Route("/sessions/{session_id:id}/room", room_page),
    Route("/sessions/{session_id:id}/check-in", check_in, methods=["GET", "POST"]),
    WebSocketRoute("/ws/sessions/{session_id:id}", serve),
]
