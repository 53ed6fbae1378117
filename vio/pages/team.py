"""Staff accounts: the program's team (admins reset a colleague's password and second factor,
turn accounts off and on, and can require a second factor for admins), and each staff member's
own sign-in settings (their password and the authenticator app).

A reset or turning an account off ends the person's sign-ins and takes them out of every live
room at once; the account logic itself is ``vio.staff_accounts``.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from vio import audit_chain, staff_accounts
from vio.db import keys_of
from vio.models import StaffRole, StaffUser
from vio.pages import forms
from vio.pages.auth import password_field
from vio.pages.common import (
    Viewer,
    checked_form,
    forbidden,
    recheck_rooms,
    render,
    staff_page,
    state,
)
from vio.pages.staff import NOT_FOR_YOUR_ROLE, program_of
from vio.password_policy import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from vio.policy import Action, Scope, may, staff_where
from vio.security import (
    SEED_UNREADABLE,
    SeedUnreadable,
    new_totp_secret,
    open_totp_seed,
    seal_totp_seed,
    totp_accepts,
    totp_uri,
)

SETUP_KEY = "totp_setup"


NO_SUCH_MEMBER = "There is no such staff member."
CONFIRM = {
    "deactivate": "Tick the box to confirm turning off the account; nothing was changed.",
    "reset": "Tick the box to confirm the reset; nothing was changed.",
}
OWN_RESET = "To change your own password, use Your sign-in."


async def _manage(request: Request, db: AsyncSession, viewer: Viewer, scope: Scope,
                  form: FormData) -> Response | str:
    """One admin action on a colleague's account: a redirect or page when done, else the
    sentence saying why not."""
    action = form.get("action")
    member = await db.get(StaffUser, forms.record_id(form, "staff_id") or 0)
    if member is None or not may(scope, Action.MANAGE_STAFF, member):
        return NO_SUCH_MEMBER
    if action in CONFIRM and form.get("confirm") != "yes":
        return CONFIRM[str(action)]
    acting = viewer.staff.id if viewer.staff is not None else None
    now = state(request).clock.now()
    try:
        if action == "reset":
            if member.id == acting:
                return OWN_RESET
            reset = await staff_accounts.reset_sign_in(
                db, member, now, viewer.actor, second_factor=form.get("second_factor") == "yes")
        else:
            await staff_accounts.set_active(db, member, action == "activate", now,
                                            viewer.actor, asked_by=acting)
    except staff_accounts.AccountRefused as refused:
        return refused.message
    await db.commit()
    if action != "activate":  # the person's connections leave every live room at once
        await recheck_rooms(request)
    if action == "reset":  # the temporary password is shown this once, never kept
        return await _team_page(request, db, viewer, scope, reset_for=member, reset=reset)
    return RedirectResponse("/staff/team", status_code=303)


async def _team_page(request: Request, db: AsyncSession, viewer: Viewer, scope: Scope,
                     error: str | None = None, reset_for: StaffUser | None = None,
                     reset: staff_accounts.Reset | None = None) -> Response:
    program = await program_of(db, viewer)
    members = (await db.execute(select(StaffUser).where(staff_where(scope))
                                .order_by(StaffUser.name))).scalars().all()
    return render(request, "staff/team.html", status_code=400 if error else 200, error=error,
                  members=members, program=program, reset_for=reset_for, reset=reset,
                  may_manage=may(scope, Action.MANAGE_STAFF, program), admin=StaffRole.ADMIN)


@staff_page()
async def team(request: Request, db: AsyncSession, viewer: Viewer, scope: Scope) -> Response:
    """The program's staff; an admin resets a colleague's password and second factor, turns
    accounts off or on, and sets the sign-in rule."""
    if request.method != "POST":
        return await _team_page(request, db, viewer, scope)
    form = await checked_form(request)
    program = await program_of(db, viewer)
    if not may(scope, Action.MANAGE_STAFF, program):
        return forbidden(request, NOT_FOR_YOUR_ROLE)
    action = form.get("action")
    if action in ("deactivate", "activate", "reset"):
        done = await _manage(request, db, viewer, scope, form)
        if isinstance(done, str):
            return await _team_page(request, db, viewer, scope, error=done)
        return done
    if action == "second-factor":
        program.admins_need_second_factor = form.get("required") == "yes"
        await audit_chain.audit(db, state(request).clock.now(), viewer.actor, "second-factor-rule",
                                f"program:{program.id}", required=program.admins_need_second_factor)
        await db.commit()
        return RedirectResponse("/staff/team", status_code=303)
    return await _team_page(request, db, viewer, scope, error="Unknown action.")


PASSWORD_CHANGED = "password=changed"  # the account page's query after a change: it says so


async def _change_own_password(request: Request, db: AsyncSession, viewer: Viewer,
                               staff: StaffUser, form: FormData) -> str | None:
    """The signed-in person's new password (the current one first); None once it is set.
    Their other sign-ins end; this one stays."""
    new = password_field(form, "new_password")
    if new != password_field(form, "new_password_again"):
        return staff_accounts.PASSWORDS_DIFFER
    try:
        ended = await staff_accounts.change_password(
            db, staff, new, state(request).clock.now(), viewer.actor,
            current_password=password_field(form, "current_password"),
            keep_sign_in=viewer.sign_in_id)
    except staff_accounts.AccountRefused as refused:
        return refused.message
    await db.commit()
    if ended:
        await recheck_rooms(request)
    return None


@staff_page()
async def account(request: Request, db: AsyncSession, viewer: Viewer,
                  scope: Scope) -> Response:
    """One's own second factor: set up an authenticator app, or turn it off."""
    app = state(request)
    assert viewer.staff is not None
    staff = await db.get(StaffUser, viewer.staff.id)
    assert staff is not None
    program = await program_of(db, viewer)
    required = staff.role is StaffRole.ADMIN and program.admins_need_second_factor
    setup = request.session.get(SETUP_KEY)
    if staff.totp_secret is None and not isinstance(setup, str):
        setup = new_totp_secret()
        request.session[SETUP_KEY] = setup
    error = None
    if request.method == "POST":
        form = await checked_form(request)
        action = form.get("action")
        try:
            secret = (open_totp_seed(keys_of(db), staff.id, staff.totp_secret)
                      or (setup if isinstance(setup, str) else None))
        except SeedUnreadable:
            secret = None
        step = None if secret is None else totp_accepts(secret, form.get("code"),
                                                        app.clock.now(), staff.totp_last_step)
        if action == "change-password":
            error = await _change_own_password(request, db, viewer, staff, form)
            if error is None:
                return RedirectResponse(f"/staff/account?{PASSWORD_CHANGED}", status_code=303)
        elif action not in ("enable", "disable"):
            error = "Unknown action."
        elif secret is None:
            error = SEED_UNREADABLE
        elif step is None:
            error = "That code didn't work. Please enter the current code from your app."
        elif action == "disable" and required:
            error = "Your program requires a second factor for admins."
        else:
            assert secret is not None
            staff.totp_secret = (seal_totp_seed(keys_of(db), staff.id, secret)
                                 if action == "enable" else None)
            staff.totp_last_step = step
            await audit_chain.audit(db, app.clock.now(), viewer.actor, f"second-factor-{action}d",
                                    viewer.actor)
            await db.commit()
            request.session.pop(SETUP_KEY, None)
            return RedirectResponse("/staff/account", status_code=303)
    return render(request, "staff/account.html", status_code=400 if error else 200,
                  error=error, staff=staff, required=required,
                  password_changed=request.url.query == PASSWORD_CHANGED,
                  min_password_length=MIN_PASSWORD_LENGTH,
                  max_password_length=MAX_PASSWORD_LENGTH,
                  setup=setup if staff.totp_secret is None else None,
                  uri=totp_uri(setup, staff.email)
                  if staff.totp_secret is None and isinstance(setup, str) else None)


routes = [
    Route("/staff/team", team, methods=["GET", "POST"]),
    Route("/staff/account", account, methods=["GET", "POST"]),
]
