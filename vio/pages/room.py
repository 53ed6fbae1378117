"""The room page and its signaling WebSocket."""

from __future__ import annotations

from datetime import timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from vio import clinic
from vio.models import Session
from vio.pages.common import ViewerRole, current_viewer, render, room_ticket, state
from vio.rooms.signaling import serve


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
        return render(request, "message.html", status_code=404, title="Not found",
                      message="We can't find this session.", code="no-such-session")
    ws_scheme = "wss" if request.url.scheme == "https" else "ws"
    role = "therapist" if viewer.is_staff else viewer.role.value
    display = (viewer.staff.name if viewer.staff else
               viewer.patient.display_name if viewer.patient else "")
    config = {
        "wsUrl": f"{ws_scheme}://{request.url.netloc}/ws/sessions/{session.id}"
                 f"?ticket={room_ticket(request, viewer, session.id)}",
        "sessionTitle": session.title,
        "role": role,
        "displayName": display,
        "iceServers": [{"urls": url} for url in app.settings.ice_servers],
        "endedUrl": "/staff" if viewer.is_staff else "/me",
    }
    return render(request, "room.html", room_config=config, session_title=session.title)


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
    WebSocketRoute("/ws/sessions/{session_id:int}", serve),
]
