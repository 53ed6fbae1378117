"""The Starlette application, made by ``create_app`` from ``Settings``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from vio.clock import Clock, SystemClock
from vio.db import create_engine, session_factory
from vio.mail.sender import MailSender
from vio.media import MediaConfig, MediaRouter, announce_host_addresses, use_port_range
from vio.nodes.node import Node
from vio.pages import (
    attendance,
    auth,
    family,
    outreach,
    public,
    redact,
    rescheduling,
    room,
    staff,
    team,
)
from vio.pages import mail as mail_pages
from vio.pages.common import WEB, AppState, render
from vio.pages.headers import HostCheck, SecurityHeaders
from vio.pages.https import StrictTransportSecurity
from vio.rooms.directory import RoomDirectory
from vio.rooms.fences import DatabaseFences
from vio.rooms.lookup import DatabasePeople
from vio.rooms.records import DatabaseRoomStore
from vio.security import AttemptCounter, Signer
from vio.settings import Settings

SESSION_COOKIE = "vio_session"


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return render(request, "message.html", status_code=exc.status_code,
                  title="Something went wrong" if exc.status_code >= 500 else "Not possible",
                  message=exc.detail)


def create_app(settings: Settings, clock: Clock | None = None) -> Starlette:
    engine = create_engine(settings.database_url)
    db = session_factory(engine, settings.keys)
    app_clock = clock or SystemClock()
    app_state = AppState(
        settings=settings,
        clock=app_clock,
        db=db,
        signer=Signer(settings.secret_key),
        sign_in_attempts=AttemptCounter(db, app_clock, settings.login_max_failures,
                                        settings.login_window_seconds, "sign-in"),
    )
    redact.install()

    if settings.ice_announce_addresses:
        announce_host_addresses(list(settings.ice_announce_addresses))
    use_port_range(settings.rtc_port_range)
    media_config = MediaConfig(ice_servers=settings.ice_servers,
                               max_video_forwarded=settings.max_video_forwarded,
                               public_address=settings.ice_public_address,
                               keep_private_address=settings.ice_keep_private_address)
    rooms = RoomDirectory(settings, app_state.clock,
                          DatabaseRoomStore(app_state.db, app_state.clock),
                          lambda: MediaRouter(media_config),
                          DatabasePeople(app_state.db, app_state.clock, app_state.sign_in_rules))
    # A take-over waits at most a lease for a write in flight (vio.rooms.fences).
    fences = DatabaseFences(app_state.db, app_state.clock, settings.room_lease_seconds)
    node = Node(settings, rooms, fences) if settings.redis_url else None

    mail = MailSender(settings, app_state.clock, app_state.db) if settings.smtp_url else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redact.install_on_handlers()
        if node is not None:
            node.start()
        if mail is not None:
            mail.start()
        try:
            yield
        finally:
            if mail is not None:
                await mail.stop()
            if node is not None:
                node.drain()
            await rooms.close()
            if node is not None:
                await node.stop()
            await engine.dispose()

    app = Starlette(
        routes=[
            *public.routes,
            *auth.routes,
            *staff.routes,
            *room.routes,
            *family.routes,
            *attendance.routes,
            *team.routes,
            *mail_pages.routes,
            *rescheduling.routes,
            *outreach.routes,
            Mount("/static", StaticFiles(directory=WEB / "static"), name="static"),
        ],
        middleware=[
            Middleware(SecurityHeaders, public_base_url=settings.public_base_url),
            Middleware(HostCheck, public_base_url=settings.public_base_url),
            *([Middleware(StrictTransportSecurity)]
              if settings.public_base_url.startswith("https://") else []),
            Middleware(SessionMiddleware, secret_key=settings.secret_key,
                       session_cookie=SESSION_COOKIE, same_site="lax",
                       https_only=settings.cookies_secure, max_age=14 * 24 * 3600),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.vio = app_state
    app.state.rooms = rooms
    app.state.node = node
    app.state.mail = mail
    app.state.invite_throttle = AttemptCounter(app_state.db, app_state.clock,
                                               settings.login_max_failures,
                                               settings.login_window_seconds, "invite")
    app.router.redirect_slashes = False  # a redirect would repeat the request's Host
    return app
