"""The room page and its signaling WebSocket."""

from __future__ import annotations

import re
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute

from vio import clinic, family
from vio.identity import patient_identity
from vio.models import AttendanceKind, FamilyInvite, Session
from vio.pages.common import (
    ViewerRole,
    checked_form,
    current_viewer,
    not_found,
    render,
    room_ticket,
    state,
)
from vio.pages.signaling import serve
from vio.rooms import records
from vio.rooms.effects import RoomEvent


async def room_page(request: Request) -> Response:
    """The browser room. Who may enter is decided on the WebSocket, by the room itself."""
    app = state(request)
    session_id = request.path_params["session_id"]
    async with app.db() as db:
        viewer = await current_viewer(request, db)
        session = await db.get(Session, session_id)
    request.scope["vio.viewer"] = viewer
    if viewer.role is ViewerRole.ANONYMOUS:
        return render(request, "message.html", status_code=401, title="Please sign in",
                      message="Open the personal link your care team sent you, or sign in, "
                              "to join this session.", code="not-signed-in")
    if session is None:
        return not_found(request, "We can't find this session.", "no-such-session")
    if viewer.family_invite_id is not None:
        async with app.db() as db:
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
        async with app.db() as db:
            check_in = await records.latest_check_in(db, session.id, viewer.patient.id)
        if check_in is None:
            return RedirectResponse(f"/sessions/{session.id}/check-in", status_code=303)
    ws_scheme = "wss" if request.url.scheme == "https" else "ws"
    role = "therapist" if viewer.is_staff else viewer.role.value
    display = (viewer.staff.name if viewer.staff else
               viewer.patient.display_name if viewer.patient else viewer.family_name or "")
    config = {
        "wsUrl": f"{ws_scheme}://{request.url.netloc}/ws/sessions/{session.id}"
                 f"?ticket={room_ticket(request, viewer, session.id)}",
        "sessionTitle": session.title,
        "role": role,
        "displayName": display,
        "iceServers": [{"urls": url} for url in app.settings.ice_servers],
        "endedUrl": "/staff" if viewer.is_staff else "/me" if viewer.patient else "/",
    }
    return render(request, "room.html", room_config=config, session_title=session.title)


US_STATE = re.compile(r"^[A-Za-z]{2}$")


async def check_in(request: Request) -> Response:
    """Before each session, a patient confirms where they are right now (DESIGN.md, Safety)."""
    app = state(request)
    session_id = request.path_params["session_id"]
    async with app.db() as db:
        viewer = await current_viewer(request, db)
        request.scope["vio.viewer"] = viewer
        if viewer.patient is None:
            return RedirectResponse(f"/sessions/{session_id}/room", status_code=303)
        patient = viewer.patient
        facts = await records.load_facts(db, session_id, app.clock.now())
        if facts is None or patient.id not in facts.patient_ids:
            return render(request, "message.html", status_code=403, title="Not on your schedule",
                          message="This session isn't on your schedule. Please check with your "
                                  "care team.", code="not-on-roster")
        error = None
        form_values: dict[str, str] = {}
        if request.method == "POST":
            form = await checked_form(request)
            form_values = {k: str(form.get(k, "")).strip()
                           for k in ("location", "address", "city", "state")}
            location = form_values["location"]
            if location == "home":
                detail = {"location": "home", "address": patient.usual_location}
            elif location == "other":
                if not (form_values["address"] and form_values["city"]
                        and US_STATE.match(form_values["state"])):
                    error = "Please give the address, city and two-letter state where you are."
                detail = {"location": "other", "address": form_values["address"],
                          "city": form_values["city"], "state": form_values["state"].upper()}
            else:
                error = "Please tell us where you are right now."
            if error is None:
                await records.append_event(db, session_id, app.clock.now(), RoomEvent(
                    AttendanceKind.CHECKED_IN, person=patient_identity(patient.id), role="patient",
                    patient_id=patient.id, detail=detail))
                return RedirectResponse(f"/sessions/{session_id}/room", status_code=303)
    return render(request, "check_in.html", status_code=400 if error else 200, error=error,
                  patient=patient, session_title=facts.title, values=form_values)


async def joinable(request: Request) -> Response:
    """Sessions whose room is open to the signed-in person now (for `vio bot` and pages)."""
    app = state(request)
    now = app.clock.now()
    early = timedelta(minutes=app.settings.join_early_minutes)
    async with app.db() as db:
        viewer = await current_viewer(request, db)
        if viewer.staff is not None:
            sessions = await clinic.sessions_for_staff(db, viewer.staff, now - timedelta(days=1),
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
    Route("/sessions/{session_id:int}/room", room_page),
    Route("/sessions/{session_id:int}/check-in", check_in, methods=["GET", "POST"]),
    WebSocketRoute("/ws/sessions/{session_id:int}", serve),
]
