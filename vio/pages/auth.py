"""Signing in and out: staff by email and password (and an authenticator code where set up or
required), patients by their personal link.

A staff sign-in try is counted before the password is looked at (``AttemptCounter.reserve``,
keyed by address and email): once the tries are used up, the rest are refused unread. The
address is the connection's peer as uvicorn reports it, which honours ``X-Forwarded-For`` only
from ``VIO_TRUSTED_PROXIES``. Passwords are checked off the event loop. Every sign-in, failed
sign-in and sign-out is audited.

After the password, a sign-in stays pending (it names no one: no staff page, room or socket
lets it in) while it owes a step, taken at ``/login/second-factor``: the authenticator code
where set up or required, then, after an admin's reset (``StaffUser.must_change_password``),
a new password of the person's own choosing.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from vio import audit_chain, clinic, identity, staff_accounts
from vio.db import keys_of
from vio.identity import SignInRules, patient_identity, staff_identity
from vio.models import Program, SignInKind, SignInSession, StaffRole, StaffUser
from vio.pages import forms
from vio.pages.common import (
    SIGN_IN_KEY,
    ViewerRole,
    begin_sign_in,
    checked_form,
    current_viewer,
    recheck_rooms,
    render,
    sign_out,
    state,
)
from vio.password_policy import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from vio.security import (
    DUMMY_HASH,
    SEED_UNREADABLE,
    SeedUnreadable,
    new_totp_secret,
    open_totp_seed,
    seal_totp_seed,
    totp_accepts,
    totp_uri,
    verify_password_off_loop,
)

NOT_AUTHORISED = "That email and password don't match our records."
log = logging.getLogger(__name__)
TOO_MANY = "Too many sign-in attempts. Please wait a few minutes and try again."
WRONG_CODE = "That code didn't work. Please enter the current code from your app."
SETUP_KEY = "totp_setup"  # in the cookie while a required second factor is being set up
# In the cookie: the sign-in whose authenticator code was right while its new password is due.
SECOND_FACTOR_PASSED_KEY = "second_factor_passed"


def safe_next(target: object) -> str:
    """Where to go after signing in: a path on this site, never another site."""
    if (isinstance(target, str) and target.startswith("/") and not target.startswith("//")
            and "\\" not in target and target.isascii() and target.isprintable()
            and len(target) <= forms.TEXT_LIMITS["next"]):
        return target
    return "/staff"


def password_field(form: FormData, name: str) -> str:
    """A password field as typed (not trimmed: the policy refuses spaces at either end), or
    empty; one past the sign-in form's cap at most, which the policy still refuses."""
    value = form.get(name)
    return value[:forms.TEXT_LIMITS["password"] + 1] if isinstance(value, str) else ""


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def needs_second_factor(staff: StaffUser, program: Program | None) -> bool:
    return staff.totp_secret is not None or (
        staff.role is StaffRole.ADMIN and program is not None
        and program.admins_need_second_factor)


async def _failed(request: Request, db: AsyncSession, email: str, next_page: str,
                  reason: str) -> Response:
    app = state(request)
    await audit_chain.audit_in(db, None, app.clock.now(), f"address:{_client(request)}",
                               "sign-in-failed", f"email:{email[:100]}", reason=reason)
    await db.commit()
    await asyncio.sleep(app.settings.login_failure_delay_ms / 1000)
    return render(request, "login.html", status_code=401, error=NOT_AUTHORISED, email=email,
                  next=next_page)


async def login(request: Request) -> Response:
    if request.method == "GET":
        async with state(request).db() as db:
            await current_viewer(request, db)
        return render(request, "login.html", next=safe_next(request.query_params.get("next")))
    app = state(request)
    form = await checked_form(request)
    next_page = safe_next(form.get("next"))
    try:
        email = forms.text(form, "email", "Email").lower()
        password = forms.text(form, "password", "Password")
    except forms.FormProblem as problem:
        return render(request, "login.html", status_code=400, error=str(problem),
                      next=next_page)
    key = f"{_client(request)}|{email}"
    if not await app.sign_in_attempts.reserve(key):
        return render(request, "login.html", status_code=429, error=TOO_MANY, email=email,
                      next=next_page)
    async with app.db() as db:
        staff = await clinic.staff_by_email(db, email)
        ok = await verify_password_off_loop(staff.password_hash if staff else DUMMY_HASH,
                                            password)
        if staff is None or not staff.active or not ok:
            return await _failed(request, db, email, next_page, "password")
        program = await db.get(Program, staff.program_id)
        pending = staff.must_change_password or needs_second_factor(staff, program)
        new = await identity.start_sign_in(db, SignInKind.STAFF, app.clock.now(),
                                           app.sign_in_rules, staff_id=staff.id,
                                           second_factor_pending=pending)
        if not pending:
            await audit_chain.audit(db, app.clock.now(), staff_identity(staff.id), "sign-in",
                                    staff_identity(staff.id), via="password")
        await db.commit()
    if not pending:  # after the commit: the counter writes in a transaction of its own
        await app.sign_in_attempts.clear(key)
    begin_sign_in(request, new)
    if pending:
        return RedirectResponse(f"/login/second-factor?next={quote(next_page)}",
                                status_code=303)
    return RedirectResponse(next_page, status_code=303)


async def _pending(request: Request, db: AsyncSession,
                   rules: SignInRules) -> tuple[SignInSession, StaffUser] | None:
    app = state(request)
    token = request.session.get(SIGN_IN_KEY)
    row = await identity.sign_in_for_token(db, token, app.clock.now(), rules,
                                           lambda _: False)
    if row is None or not row.second_factor_pending or row.staff_id is None:
        return None
    staff = await db.get(StaffUser, row.staff_id)
    return (row, staff) if staff is not None and staff.active else None


async def _new_password(request: Request, db: AsyncSession, row: SignInSession,
                        staff: StaffUser, second_factor_used: bool) -> Response:
    """The last step of a sign-in after an admin's reset: the person's own new password,
    which finishes the sign-in."""
    app = state(request)
    next_page = safe_next(request.query_params.get("next"))
    error = None
    if request.method == "POST":
        form = await checked_form(request)
        next_page = safe_next(form.get("next"))
        new = password_field(form, "new_password")
        now = app.clock.now()
        try:
            if new != password_field(form, "new_password_again"):
                raise staff_accounts.AccountRefused(staff_accounts.PASSWORDS_DIFFER)
            ended = await staff_accounts.change_password(
                db, staff, new, now, staff_identity(staff.id), current_password=None,
                keep_sign_in=row.id, at_sign_in=True)
        except staff_accounts.AccountRefused as refused:
            error = refused.message
        else:
            row.second_factor_pending = False
            row.expires_at = now + app.sign_in_rules.lifetime
            await audit_chain.audit(db, now, staff_identity(staff.id), "sign-in",
                                    staff_identity(staff.id),
                                    via="password+totp" if second_factor_used else "password",
                                    new_password_set=True)
            await db.commit()
            if ended:
                await recheck_rooms(request)
            await app.sign_in_attempts.clear(f"{_client(request)}|{staff.email}")
            request.session.pop(SECOND_FACTOR_PASSED_KEY, None)
            return RedirectResponse(next_page, status_code=303)
    return render(request, "new_password.html", status_code=400 if error else 200,
                  error=error, next=next_page, min_password_length=MIN_PASSWORD_LENGTH,
                  max_password_length=MAX_PASSWORD_LENGTH)


async def second_factor(request: Request) -> Response:
    """The steps a staff sign-in may still owe after the password: the authenticator code
    (set the app up first when the program requires it and the staff member has none yet),
    then, after an admin's reset, a new password."""
    app = state(request)
    async with app.db() as db:
        found = await _pending(request, db, app.sign_in_rules)
        if found is None:
            return RedirectResponse("/login", status_code=303)
        row, staff = found
        if staff.must_change_password:
            factor = needs_second_factor(staff, await db.get(Program, staff.program_id))
            if not factor or request.session.get(SECOND_FACTOR_PASSED_KEY) == row.id:
                return await _new_password(request, db, row, staff, factor)
        setup = None
        if staff.totp_secret is None:
            setup = request.session.get(SETUP_KEY)
            if not isinstance(setup, str):
                setup = new_totp_secret()
                request.session[SETUP_KEY] = setup
        next_page = safe_next(request.query_params.get("next"))
        error = None
        if request.method == "POST":
            form = await checked_form(request)
            next_page = safe_next(form.get("next"))
            key = f"{_client(request)}|{staff.email}"
            if not await app.sign_in_attempts.reserve(key):
                return render(request, "second_factor.html", status_code=429, error=TOO_MANY,
                              setup=setup, next=next_page, uri=None)
            try:
                secret = open_totp_seed(keys_of(db), staff.id, staff.totp_secret) or setup
            except SeedUnreadable:
                log.warning("staff %s: the second-factor seed does not open with this "
                            "install's key", staff.id)
                return render(request, "second_factor.html", status_code=409,
                              error=SEED_UNREADABLE, setup=None, next=next_page, uri=None)
            assert secret is not None
            step = totp_accepts(secret, form.get("code"), app.clock.now(), staff.totp_last_step)
            if step is None:
                await audit_chain.audit(db, app.clock.now(), staff_identity(staff.id),
                                        "sign-in-failed", staff_identity(staff.id),
                                        reason="second-factor")
                await db.commit()
                await asyncio.sleep(app.settings.login_failure_delay_ms / 1000)
                error = WRONG_CODE
            else:
                if setup is not None:
                    staff.totp_secret = seal_totp_seed(keys_of(db), staff.id, secret)
                staff.totp_last_step = step
                if staff.must_change_password:  # the new password comes next, and last
                    request.session[SECOND_FACTOR_PASSED_KEY] = row.id
                    await db.commit()
                    request.session.pop(SETUP_KEY, None)
                    return RedirectResponse(f"/login/second-factor?next={quote(next_page)}",
                                            status_code=303)
                row.second_factor_pending = False
                row.expires_at = app.clock.now() + app.sign_in_rules.lifetime
                await audit_chain.audit(db, app.clock.now(), staff_identity(staff.id), "sign-in",
                                        staff_identity(staff.id), via="password+totp",
                                        second_factor_set_up=setup is not None)
                await db.commit()
                await app.sign_in_attempts.clear(key)
                request.session.pop(SETUP_KEY, None)
                return RedirectResponse(next_page, status_code=303)
    return render(request, "second_factor.html", status_code=401 if error else 200,
                  error=error, setup=setup, next=next_page,
                  uri=totp_uri(setup, staff.email) if setup else None)


async def logout(request: Request) -> Response:
    await checked_form(request)
    async with state(request).db() as db:
        viewer = await current_viewer(request, db)
        if viewer.sign_in_id is not None:
            await audit_chain.audit(db, state(request).clock.now(), viewer.actor, "sign-out",
                                    viewer.actor)
        await sign_out(request, db, viewer)
    return RedirectResponse("/", status_code=303)


async def patient_link(request: Request) -> Response:
    """A patient's personal link: signs them in on this browser, or explains what is wrong."""
    app = state(request)
    now = app.clock.now()
    async with app.db() as db:
        result = await clinic.resolve_patient_link(db, app.signer, request.path_params["token"],
                                                   now)
        if isinstance(result, clinic.LinkProblem):
            viewer = await current_viewer(request, db)
            if viewer.role is ViewerRole.PATIENT:  # a patient's browser: signed in by no one
                request.session.pop(SIGN_IN_KEY, None)
            return render(request, "message.html", status_code=404 if result is
                          clinic.LinkProblem.UNKNOWN else 410, title="This link doesn't work",
                          message=clinic.LINK_PROBLEM_TEXT[result], code=result.value)
        # A sign-in this browser had before is left to lapse, not ended: another tab's room
        # ticket may still stand on it.
        new = await identity.start_sign_in(db, SignInKind.PATIENT, now, app.sign_in_rules,
                                           patient_id=result.id)
        await audit_chain.audit(db, now, patient_identity(result.id), "sign-in",
                                patient_identity(result.id), via="personal-link")
        await db.commit()
    begin_sign_in(request, new)
    return RedirectResponse("/me", status_code=303)


routes = [
    Route("/login", login, methods=["GET", "POST"]),
    Route("/login/second-factor", second_factor, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/p/{token}", patient_link),
]
