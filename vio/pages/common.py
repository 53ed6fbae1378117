"""What every page shares: templates, who is asking, CSRF, and the staff gate."""

from __future__ import annotations

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

from vio import identity
from vio.clock import Clock
from vio.identity import ANONYMOUS as ANONYMOUS
from vio.identity import ROOM_TICKET_NAMESPACE as ROOM_TICKET_NAMESPACE
from vio.identity import Viewer as Viewer
from vio.identity import ViewerRole as ViewerRole
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
    app = state(conn)
    return await identity.viewer_from_cookie(
        conn.session, db, idle_logoff_minutes=app.settings.idle_logoff_minutes,
        today=app.clock.now().date())


def room_ticket(conn: HTTPConnection, viewer: Viewer, session_id: int) -> str:
    """A signed ticket naming who opened this room page, so each browser tab keeps its person."""
    return identity.room_ticket(state(conn).signer, viewer, session_id)


async def viewer_from_ticket(conn: HTTPConnection, db: AsyncSession, ticket: str,
                             session_id: int) -> Viewer:
    app = state(conn)
    return await identity.viewer_from_ticket(app.signer, db, ticket, session_id,
                                             app.clock.now().date())


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
