"""Signing in and out: staff by email and password, patients by their personal link."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from vio import clinic
from vio.pages.common import checked_form, render, state
from vio.security import DUMMY_HASH, verify_password

NOT_AUTHORISED = "That email and password don't match our records."
TOO_MANY = "Too many sign-in attempts. Please wait a few minutes and try again."


def _safe_next(target: object) -> str:
    if isinstance(target, str) and target.startswith("/") and not target.startswith("//"):
        return target
    return "/staff"


async def login(request: Request) -> Response:
    if request.method == "GET":
        return render(request, "login.html", next=_safe_next(request.query_params.get("next")))
    app = state(request)
    form = await checked_form(request)
    email = str(form.get("email", "")).strip().lower()
    password = str(form.get("password", ""))
    next_page = _safe_next(form.get("next"))
    client = request.client.host if request.client else "unknown"
    key = f"{client}|{email}"
    if app.login_throttle.blocked(key):
        return render(request, "login.html", status_code=429, error=TOO_MANY, email=email,
                      next=next_page)
    async with app.db() as db:
        staff = await clinic.staff_by_email(db, email)
        ok = verify_password(staff.password_hash if staff else DUMMY_HASH, password)
        if staff is None or not staff.active or not ok:
            app.login_throttle.failed(key)
            await clinic.audit(db, app.clock.now(), f"address:{client}", "sign-in-failed",
                               f"email:{email}")
            await db.commit()
            await asyncio.sleep(app.settings.login_failure_delay_ms / 1000)
            return render(request, "login.html", status_code=401, error=NOT_AUTHORISED,
                          email=email, next=next_page)
        app.login_throttle.succeeded(key)
        await clinic.audit(db, app.clock.now(), f"staff:{staff.id}", "sign-in", f"staff:{staff.id}")
        await db.commit()
    request.session.clear()
    request.session.update({"staff_id": staff.id, "seen": int(time.time())})
    return RedirectResponse(next_page, status_code=303)


async def logout(request: Request) -> Response:
    await checked_form(request)
    request.session.clear()
    return RedirectResponse("/", status_code=303)


async def patient_link(request: Request) -> Response:
    """A patient's personal link: signs them in on this browser, or explains what is wrong."""
    app = state(request)
    async with app.db() as db:
        result = await clinic.resolve_patient_link(db, app.signer, request.path_params["token"],
                                                   app.clock.now())
    if isinstance(result, clinic.LinkProblem):
        request.session.pop("patient_id", None)
        return render(request, "message.html", status_code=404 if result is
                      clinic.LinkProblem.UNKNOWN else 410, title="This link doesn't work",
                      message=clinic.LINK_PROBLEM_TEXT[result], code=result.value)
    request.session.clear()
    request.session["patient_id"] = result.id
    return RedirectResponse("/me", status_code=303)


routes = [
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/p/{token}", patient_link),
]
