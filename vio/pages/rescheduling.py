"""Staff move or cancel a session that has not begun (``/staff/sessions/{id}/schedule``).

Who may: the session's therapists and the program's admins (``vio.policy``, run-session);
anyone else gets 404. A refused change (bad date, a session whose room has opened, no
confirmation for a cancellation) is a 400 page and changes nothing. The messages a change
queues (``vio.rescheduling``) go out at once: the page wakes the sender after the commit.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from vio import rescheduling
from vio.identity import Viewer
from vio.pages import forms
from vio.pages.common import checked_form, not_found, render, staff_page, state
from vio.pages.forms import FormProblem
from vio.pages.staff import session_for_staff
from vio.policy import Scope


def wake_mail(request: Request) -> None:
    """Tell this process's sender that messages were queued (other nodes see them at their
    next poll)."""
    sender = getattr(request.app.state, "mail", None)
    if sender is not None:
        sender.wake()


@staff_page()
async def session_schedule(request: Request, db: AsyncSession, viewer: Viewer,
                           scope: Scope) -> Response:
    """Move a session to another day or time, or cancel it."""
    app = state(request)
    session = await session_for_staff(db, scope, request.path_params["session_id"])
    if session is None:
        return not_found(request, "There is no such session, or it is not yours.")
    now = app.clock.now()
    error = None
    if request.method == "POST":
        form = await checked_form(request)
        action = form.get("action")
        try:
            if action == "move":
                starts_at = datetime.combine(forms.day(form, "first_day", "Date"),
                                             forms.clock_time(form, "local_start", "Start time"),
                                             ZoneInfo(session.timezone))
                await rescheduling.move_session(db, app.settings, session, starts_at,
                                                viewer.actor, now)
            elif action == "cancel":
                if form.get("confirm") != "yes":
                    raise FormProblem("Tick the box to confirm the cancellation; nothing was "
                                      "changed.")
                await rescheduling.cancel_session(db, app.settings, session, viewer.actor, now)
            else:
                raise FormProblem("Unknown action.")
        except FormProblem as bad:
            error = str(bad)
        except rescheduling.ChangeRefused as refused:
            error = refused.message  # refused before anything was written
        else:
            await db.commit()
            wake_mail(request)
            return RedirectResponse("/staff/sessions", status_code=303)
    local = session.starts_at.astimezone(ZoneInfo(session.timezone))
    problem = rescheduling.change_problem(session, now, app.settings.join_early_minutes)
    return render(request, "staff/session_schedule.html", status_code=400 if error else 200,
                  session=session, error=error, problem=problem, day=local.date().isoformat(),
                  start=local.strftime("%H:%M"), mail_on=bool(app.settings.smtp_url))


routes = [
    Route("/staff/sessions/{session_id:id}/schedule", session_schedule, methods=["GET", "POST"]),
]
