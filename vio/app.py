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
from vio.media import MediaConfig, MediaRouter, announce_host_addresses
from vio.pages import attendance, auth, family, public, room, staff
from vio.pages.common import WEB, AppState, render
from vio.rooms.directory import RoomDirectory
from vio.rooms.records import DatabaseRoomStore
from vio.security import LoginThrottle, Signer
from vio.settings import Settings

SESSION_COOKIE = "vio_session"


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return render(request, "message.html", status_code=exc.status_code,
                  title="Something went wrong" if exc.status_code >= 500 else "Not possible",
                  message=exc.detail)


def create_app(settings: Settings, clock: Clock | None = None) -> Starlette:
    engine = create_engine(settings.database_url)
    app_state = AppState(
        settings=settings,
        clock=clock or SystemClock(),
        db=session_factory(engine),
        signer=Signer(settings.secret_key),
        login_throttle=LoginThrottle(settings.login_max_failures, settings.login_window_seconds),
    )

    if settings.ice_announce_addresses:
        announce_host_addresses(list(settings.ice_announce_addresses))
    media_config = MediaConfig(ice_servers=settings.ice_servers,
                               max_video_forwarded=settings.max_video_forwarded)
    rooms = RoomDirectory(settings, app_state.clock,
                          DatabaseRoomStore(app_state.db, app_state.clock),
                          lambda: MediaRouter(media_config))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await rooms.close()
            await engine.dispose()

    app = Starlette(
        routes=[
            *public.routes,
            *auth.routes,
            *staff.routes,
            *room.routes,
            *family.routes,
            *attendance.routes,
            Mount("/static", StaticFiles(directory=WEB / "static"), name="static"),
        ],
        middleware=[
            Middleware(SessionMiddleware, secret_key=settings.secret_key,
                       session_cookie=SESSION_COOKIE, same_site="lax",
                       https_only=settings.cookie_secure, max_age=14 * 24 * 3600),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.vio = app_state
    app.state.rooms = rooms
    app.state.invite_throttle = LoginThrottle(settings.login_max_failures,
                                              settings.login_window_seconds)
    return app
