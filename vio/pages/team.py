"""Staff accounts: the program's team (admins turn accounts off and on, and can require a second
factor for admins), and each staff member's own sign-in settings (the authenticator app).

Turning an account off ends its sign-ins and takes it out of every live room at once.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from vio import clinic, identity
from vio.identity import EndReason, staff_identity
from vio.models import StaffRole, StaffUser
from vio.pages import forms
from vio.pages.common import (
    Viewer,
    checked_form,
    disconnect,
    disconnect_sign_ins,
    forbidden,
    render,
    staff_page,
    state,
)
from vio.pages.staff import NOT_FOR_YOUR_ROLE, program_of
from vio.policy import Action, Scope, may, staff_where
from vio.security import new_totp_secret, totp_accepts, totp_uri

SETUP_KEY = "totp_setup"


@staff_page()
async def team(request: Request, db: AsyncSession, viewer: Viewer, scope: Scope) -> Response:
    """The program's staff; an admin turns accounts off or on and sets the sign-in rule."""
    program = await program_of(db, viewer)
    app = state(request)
    error = None
    if request.method == "POST":
        form = await checked_form(request)
        if not may(scope, Action.MANAGE_STAFF, program):
            return forbidden(request, NOT_FOR_YOUR_ROLE)
        action = form.get("action")
        now = app.clock.now()
        if action in ("deactivate", "activate"):
            member = await db.get(StaffUser, forms.record_id(form, "staff_id") or 0)
            if not may(scope, Action.MANAGE_STAFF, member):
                error = "There is no such staff member."
            elif member is not None and viewer.staff is not None and member.id == viewer.staff.id:
                error = "You can't turn off your own account."
            elif action == "deactivate" and form.get("confirm") != "yes":
                error = "Tick the box to confirm turning off the account; nothing was changed."
            elif member is not None:
                member.active = action == "activate"
                ended: list[int] = []
                if not member.active:
                    ended = await identity.end_sign_ins(db, now, EndReason.DEACTIVATED,
                                                        staff_id=member.id)
                await clinic.audit(db, now, viewer.actor, f"staff-{action}d",
                                   staff_identity(member.id))
                await db.commit()
                if ended or not member.active:
                    staff_id = member.id
                    disconnect_sign_ins(request, ended)
                    disconnect(request, lambda person: person.staff_id == staff_id,
                               "signed-out")
                return RedirectResponse("/staff/team", status_code=303)
        elif action == "second-factor":
            program.admins_need_second_factor = form.get("required") == "yes"
            await clinic.audit(db, now, viewer.actor, "second-factor-rule",
                               f"program:{program.id}",
                               required=program.admins_need_second_factor)
            await db.commit()
            return RedirectResponse("/staff/team", status_code=303)
        else:
            error = "Unknown action."
    members = (await db.execute(select(StaffUser).where(staff_where(scope))
                                .order_by(StaffUser.name))).scalars().all()
    return render(request, "staff/team.html", status_code=400 if error else 200, error=error,
                  members=members, program=program,
                  may_manage=may(scope, Action.MANAGE_STAFF, program), admin=StaffRole.ADMIN)


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
        secret = staff.totp_secret or (setup if isinstance(setup, str) else None)
        step = None if secret is None else totp_accepts(secret, form.get("code"),
                                                        app.clock.now(), staff.totp_last_step)
        if action not in ("enable", "disable"):
            error = "Unknown action."
        elif step is None:
            error = "That code didn't work. Please enter the current code from your app."
        elif action == "disable" and required:
            error = "Your program requires a second factor for admins."
        else:
            assert secret is not None
            staff.totp_secret = secret if action == "enable" else None
            staff.totp_last_step = step
            await clinic.audit(db, app.clock.now(), viewer.actor, f"second-factor-{action}d",
                               viewer.actor)
            await db.commit()
            request.session.pop(SETUP_KEY, None)
            return RedirectResponse("/staff/account", status_code=303)
    return render(request, "staff/account.html", status_code=400 if error else 200,
                  error=error, staff=staff, required=required,
                  setup=setup if staff.totp_secret is None else None,
                  uri=totp_uri(setup, staff.email)
                  if staff.totp_secret is None and isinstance(setup, str) else None)


routes = [
    Route("/staff/team", team, methods=["GET", "POST"]),
    Route("/staff/account", account, methods=["GET", "POST"]),
]
