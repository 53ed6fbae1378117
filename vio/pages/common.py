"""What every page shares: templates, who is asking, CSRF, and the staff gate."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from vio.clock import Clock
from vio.identity import ANONYMOUS as ANONYMOUS
from vio.identity import Viewer as Viewer
from vio.identity import ViewerRole as ViewerRole
from vio.models import Patient, StaffRole, StaffUser
from vio.security import LoginThrottle, Signer, csrf_ok, new_csrf_token
from vio.settings import Settings

WEB = Path(__file__).resolve().parent.parent.parent / "web"
templates = Jinja2Templates(directory=WEB / "templates")
templates.env.filters["zone"] = ZoneInfo


@dataclass
class AppState:
    """Everything the app's routes need, made once at start-up."""

    settings: Settings
    clock: Clock
    db: async_sessionmaker[AsyncSession]
    signer: Signer
    login_throttle: LoginThrottle


def state(conn: HTTPConnection) -> AppState:
    app_state: AppState = conn.app.state.vio
    return app_state




async def current_viewer(conn: HTTPConnection, db: AsyncSession) -> Viewer:
    """The signed-in person, after the idle sign-out rule for staff."""
    cookie = conn.session
    app = state(conn)
    staff_id = cookie.get("staff_id")
    if isinstance(staff_id, int):
        idle_limit = app.settings.idle_logoff_minutes * 60
        seen = cookie.get("seen")
        if not isinstance(seen, (int, float)) or time.time() - seen > idle_limit:
            cookie.clear()
            return ANONYMOUS
        staff = await db.get(StaffUser, staff_id)
        if staff is None or not staff.active:
            return ANONYMOUS
        cookie["seen"] = int(time.time())
        role = ViewerRole.ADMIN if staff.role is StaffRole.ADMIN else ViewerRole.THERAPIST
        return Viewer(role, staff=staff)
    patient_id = cookie.get("patient_id")
    if isinstance(patient_id, int):
        patient = await db.get(Patient, patient_id)
        if patient is not None and patient.is_enrolled_on(app.clock.now().date()):
            return Viewer(ViewerRole.PATIENT, patient=patient)
        cookie.clear()
        return ANONYMOUS
    invite_id = cookie.get("family_invite_id")
    if isinstance(invite_id, int):
        return Viewer(ViewerRole.FAMILY, family_invite_id=invite_id,
                      family_name=cookie.get("family_name"), device=cookie.get("device"))
    return ANONYMOUS


ROOM_TICKET_NAMESPACE = "room-ticket"
ROOM_TICKET_MAX_AGE_SECONDS = 12 * 3600


def room_ticket(conn: HTTPConnection, viewer: Viewer, session_id: int) -> str:
    """A signed ticket naming who opened this room page, so each browser tab keeps its person."""
    return state(conn).signer.sign(
        {"who": viewer.actor, "s": session_id, "n": viewer.family_name, "d": viewer.device},
        ROOM_TICKET_NAMESPACE)


async def viewer_from_ticket(conn: HTTPConnection, db: AsyncSession, ticket: str,
                             session_id: int) -> Viewer:
    payload = state(conn).signer.unsign(ticket, ROOM_TICKET_NAMESPACE,
                                        ROOM_TICKET_MAX_AGE_SECONDS)
    if not isinstance(payload, dict) or payload.get("s") != session_id:
        return ANONYMOUS
    kind, _, raw_id = str(payload.get("who", "")).partition(":")
    if not raw_id.isdigit():
        return ANONYMOUS
    if kind == "staff":
        staff = await db.get(StaffUser, int(raw_id))
        if staff is None or not staff.active:
            return ANONYMOUS
        role = ViewerRole.ADMIN if staff.role is StaffRole.ADMIN else ViewerRole.THERAPIST
        return Viewer(role, staff=staff)
    if kind == "patient":
        patient = await db.get(Patient, int(raw_id))
        if patient is not None and patient.is_enrolled_on(state(conn).clock.now().date()):
            return Viewer(ViewerRole.PATIENT, patient=patient)
    if kind == "family-invite":
        name, device = payload.get("n"), payload.get("d")
        return Viewer(ViewerRole.FAMILY, family_invite_id=int(raw_id),
                      family_name=name if isinstance(name, str) else None,
                      device=device if isinstance(device, str) else None)
    return ANONYMOUS


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = new_csrf_token()
        request.session["csrf"] = token
    return token


async def checked_form(request: Request) -> FormData:
    """The posted form, or a 403 when its CSRF token is missing or wrong."""
    form = await request.form()
    if not csrf_ok(request.session.get("csrf"), form.get("csrf_token")):
        raise HTTPException(403, "This form has expired. Please go back, reload and try again.")
    return form


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    context.setdefault("csrf_token", csrf_token(request))
    context.setdefault("viewer", request.scope.get("vio.viewer", ANONYMOUS))
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def not_found(request: Request, message: str, code: str | None = None) -> Response:
    return render(request, "message.html", status_code=404, title="Not found", message=message,
                  code=code)


StaffPage = Callable[[Request, AsyncSession, Viewer], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def staff_page(*roles: ViewerRole) -> Callable[[StaffPage], Endpoint]:
    """Wrap a staff route: signs in or refuses, and hands it a database session and the viewer."""
    allowed = set(roles) or {ViewerRole.THERAPIST, ViewerRole.ADMIN}

    def wrap(page: StaffPage) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            async with state(request).db() as db:
                viewer = await current_viewer(request, db)
                request.scope["vio.viewer"] = viewer
                if viewer.role is ViewerRole.ANONYMOUS:
                    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
                if viewer.role not in allowed:
                    return render(request, "message.html", status_code=403,
                                  title="Not available",
                                  message="This page is for program staff.")
                return await page(request, db, viewer)

        endpoint.__name__ = page.__name__
        endpoint.__doc__ = page.__doc__
        return endpoint

    return wrap
