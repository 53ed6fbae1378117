"""What every page shares: templates, who is asking (and their scope), signing in and out,
CSRF and capped forms, bounded ids in paths, and the staff gate.

Who is asking comes from the sign-in cookie, which holds only the opaque token of a sign-in
session kept on the server (``vio.identity``), or from a room ticket bound to one. After a change
that ends someone's place (a sign-out, a revoked link or consent, an account turned off) the
pages call ``recheck_rooms``: every live room, on every node, looks its people up again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from vio import identity
from vio.clock import Clock
from vio.identity import ANONYMOUS as ANONYMOUS
from vio.identity import ROOM_TICKET_NAMESPACE as ROOM_TICKET_NAMESPACE
from vio.identity import EndReason, NewSignIn, SignInRules
from vio.identity import Viewer as Viewer
from vio.identity import ViewerRole as ViewerRole
from vio.policy import Scope, scope_for
from vio.security import AttemptCounter, Signer, csrf_ok, new_csrf_token
from vio.settings import Settings

WEB = Path(__file__).resolve().parent.parent.parent / "web"
templates = Jinja2Templates(directory=WEB / "templates")
templates.env.filters["zone"] = ZoneInfo

# How a moment is shown to a person: always in one named zone, always saying which.
TIME_STYLES = {
    "long": "%A %B %-d at %-I:%M %p %Z",  # Tuesday December 1 at 6:00 PM EST
    "datetime": "%a %b %-d, %-I:%M %p %Z",  # Tue Dec 1, 6:00 PM EST
    "seconds": "%Y-%m-%d %-I:%M:%S %p %Z",  # the audit log
    "time": "%-I:%M %p %Z",  # 6:00 PM EST
    "clock": "%-I:%M %p",  # the start of a range whose end says the zone
    "date": "%A %B %-d",
}


def local_time(moment: datetime, zone: str | ZoneInfo, style: str = "datetime") -> str:
    """``{{ s.starts_at | local(program.timezone, "long") }}``: the moment in that zone."""
    tz = zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone)
    return moment.astimezone(tz).strftime(TIME_STYLES[style])


templates.env.filters["local"] = local_time
SIGN_IN_KEY = "sid"  # in the cookie: the sign-in session's token
DEVICE_KEY = "device"  # in the cookie: a family member's browser
IDLE_WARNING_SECONDS = 120  # staff pages warn this long before the idle sign-out


def static_url(path: str) -> str:
    """A path under /static: relative to the site, so no request header ever shapes it."""
    return f"/static/{path.lstrip('/')}"


templates.env.globals["static"] = static_url


class RecordId(Convertor[int]):
    """``{name:id}`` in a route: a database id, 1 to 18 ASCII digits; longer never matches."""

    regex = "[0-9]{1,18}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("id", RecordId())


@dataclass
class AppState:
    """Everything the app's routes need, made once at start-up."""

    settings: Settings
    clock: Clock
    db: async_sessionmaker[AsyncSession]
    signer: Signer
    sign_in_attempts: AttemptCounter

    @property
    def sign_in_rules(self) -> SignInRules:
        return SignInRules(idle=timedelta(minutes=self.settings.idle_logoff_minutes),
                           lifetime=timedelta(hours=self.settings.sign_in_max_hours),
                           second_factor=timedelta(
                               seconds=self.settings.second_factor_timeout_seconds))


def state(conn: HTTPConnection) -> AppState:
    app_state: AppState = conn.app.state.vio
    return app_state


def _in_live_room(conn: HTTPConnection) -> Callable[[int], bool]:
    """Whether a sign-in holds a connection to a live room of this process right now."""
    directory = getattr(conn.app.state, "rooms", None)

    def holds(sign_in_id: int) -> bool:
        return directory is not None and bool(directory.holds_sign_in(sign_in_id))

    return holds


async def current_viewer(conn: HTTPConnection, db: AsyncSession) -> Viewer:
    """The signed-in person, after the idle and lifetime rules; remembered for the templates."""
    app = state(conn)
    token = conn.session.get(SIGN_IN_KEY)
    viewer = ANONYMOUS
    if token is not None:
        now = app.clock.now()
        row = await identity.sign_in_for_token(db, token, now, app.sign_in_rules,
                                               _in_live_room(conn))
        if row is None:  # ended or unknown: forget it (a pending second factor is kept)
            conn.session.pop(SIGN_IN_KEY, None)
        viewer = await identity.viewer_for(db, row, now)
    conn.scope["vio.viewer"] = viewer
    return viewer


async def current_scope(conn: HTTPConnection, db: AsyncSession) -> tuple[Viewer, Scope]:
    viewer = await current_viewer(conn, db)
    return viewer, await scope_for(db, viewer)


def begin_sign_in(request: Request, new: NewSignIn) -> None:
    """Put a fresh sign-in on this browser (a new cookie session: new CSRF token too)."""
    device = request.session.get(DEVICE_KEY)
    request.session.clear()
    request.session[SIGN_IN_KEY] = new.token
    if isinstance(device, str):
        request.session[DEVICE_KEY] = device


async def recheck_rooms(conn: HTTPConnection) -> int:
    """After a committed change that may end someone's place in a room: every live room, here
    and on every other node, looks its people up again and removes whoever lost it, with the
    refusal the records call for (``vio.rooms.standing``). Returns how many left rooms here."""
    return int(await conn.app.state.rooms.recheck_everywhere())


async def sign_in_of(conn: HTTPConnection, db: AsyncSession, ticket: str | None,
                     session_id: int) -> int | None:
    """The sign-in a room connection comes with: the one its ticket names, else the cookie's
    (while it holds). Only the id: the room looks the person up (``RoomDirectory.enter``)."""
    app = state(conn)
    if ticket:
        return identity.ticket_sign_in(app.signer, ticket, session_id)
    row = await identity.sign_in_for_token(db, conn.session.get(SIGN_IN_KEY), app.clock.now(),
                                           app.sign_in_rules, _in_live_room(conn))
    return None if row is None else row.id


async def sign_out(request: Request, db: AsyncSession, viewer: Viewer) -> None:
    """End this browser's sign-in on the server and its room connections, and forget it."""
    if viewer.sign_in_id is not None:
        ended = await identity.end_sign_ins(db, state(request).clock.now(),
                                            EndReason.SIGNED_OUT, sign_in_id=viewer.sign_in_id)
        await db.commit()
        if ended:
            await recheck_rooms(request)
    request.session.pop(SIGN_IN_KEY, None)
    request.session.pop("csrf", None)


def room_ticket(conn: HTTPConnection, viewer: Viewer, session_id: int) -> str:
    """A signed ticket naming the sign-in that opened this room page."""
    return identity.room_ticket(state(conn).signer, viewer, session_id)


async def viewer_from_ticket(conn: HTTPConnection, db: AsyncSession, ticket: str,
                             session_id: int) -> Viewer:
    app = state(conn)
    viewer = await identity.viewer_from_ticket(app.signer, db, ticket, session_id,
                                               app.clock.now(), app.sign_in_rules,
                                               _in_live_room(conn))
    conn.scope["vio.viewer"] = viewer
    return viewer


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = new_csrf_token()
        request.session["csrf"] = token
    return token


FORM_TOO_LARGE = "This form is too large. Please shorten what you wrote and try again."


async def read_form(request: Request) -> FormData:
    """The posted form, read only up to ``VIO_MAX_FORM_BYTES`` (413 above that)."""
    cap = state(request).settings.max_form_bytes
    declared = request.headers.get("content-length", "")
    if declared and (not declared.isascii() or not declared.isdigit()
                     or len(declared) > 12 or int(declared) > cap):
        raise HTTPException(413, FORM_TOO_LARGE)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise HTTPException(413, FORM_TOO_LARGE)
    request._body = bytes(body)
    return await request.form(max_files=0, max_fields=500, max_part_size=cap)


async def checked_form(request: Request) -> FormData:
    """The posted form, or a 403 when its CSRF token is missing or wrong."""
    form = await read_form(request)
    if not csrf_ok(request.session.get("csrf"), form.get("csrf_token")):
        raise HTTPException(403, "This form has expired. Please go back, reload and try again.")
    return form


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    viewer: Viewer = request.scope.get("vio.viewer", ANONYMOUS)
    context.setdefault("csrf_token", csrf_token(request))
    context.setdefault("viewer", viewer)
    if viewer.sign_in_id is not None:
        settings = state(request).settings
        context.setdefault("idle_logoff_seconds", settings.idle_logoff_minutes * 60)
        context.setdefault("idle_warning_seconds", IDLE_WARNING_SECONDS)
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def not_found(request: Request, message: str, code: str | None = None) -> Response:
    return render(request, "message.html", status_code=404, title="Not found", message=message,
                  code=code)


def forbidden(request: Request, message: str, code: str | None = None) -> Response:
    return render(request, "message.html", status_code=403, title="Not available",
                  message=message, code=code)


def bad_request(request: Request, message: str) -> Response:
    return render(request, "message.html", status_code=400, title="Not possible",
                  message=message)


StaffPage = Callable[[Request, AsyncSession, Viewer, Scope], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def staff_page(*roles: ViewerRole) -> Callable[[StaffPage], Endpoint]:
    """Wrap a staff route: signs in or refuses, and hands it a database session, the viewer
    and their scope (``vio.policy``)."""
    allowed = set(roles) or {ViewerRole.THERAPIST, ViewerRole.ADMIN}

    def wrap(page: StaffPage) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            async with state(request).db() as db:
                viewer, scope = await current_scope(request, db)
                if viewer.role is ViewerRole.ANONYMOUS:
                    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
                if viewer.role not in allowed:
                    return forbidden(request, "This page is for program staff."
                                     if not viewer.is_staff else "This page is for admins.")
                return await page(request, db, viewer, scope)

        endpoint.__name__ = page.__name__
        endpoint.__doc__ = page.__doc__
        return endpoint

    return wrap
