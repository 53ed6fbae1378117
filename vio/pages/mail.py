"""Pages of the messages vio sends: the links in them, and what staff see of them.

- ``/u/{token}``: unsubscribe. ``GET`` asks (a link checker that opens it changes nothing);
  ``POST`` unsubscribes at once, from the page's button or a mail program's one-click
  ``List-Unsubscribe-Post`` (RFC 8058), which can carry no CSRF token: the signed link is the
  authority, and it can only stop messages.
- ``/m/{token}``: "I can't make it", with an optional reason (``POST`` with the page's CSRF
  token).
- ``/staff/patients/{id}/messages``: what was sent to the patient and their family, and what
  became of it (the relay's reply), as ``vio.policy`` lets the viewer see the patient; every
  view is audited.

The pages a recipient sees use neutral words, like the messages: nothing about the type of
care.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vio.attendance.notices import NoticeRefused, notice_for, notice_problem
from vio.identity import Viewer
from vio.mail import answers
from vio.mail.answers import LinkProblem
from vio.mail.due import delivery
from vio.mail.models import MessageKind, OutboxMessage
from vio.mail.outbox import messages_about, patient_problem
from vio.models import Consent, ConsentKind, FamilyMember, Patient, Program, Session
from vio.pages.common import (
    checked_form,
    current_viewer,
    not_found,
    read_form,
    render,
    staff_page,
    state,
)
from vio.pages.forms import TEXT_LIMITS
from vio.pages.staff import viewed
from vio.policy import Action, Scope, may

MESSAGES_PAGE_ROWS = 200
KIND_LABELS = {MessageKind.REMINDER: "reminder", MessageKind.ROOM_OPEN: "room is open",
               MessageKind.SESSION_MOVED: "session moved",
               MessageKind.SESSION_CANCELLED: "session cancelled",
               MessageKind.FAMILY_INVITE: "family invitation"}


def _link_problem(request: Request, problem: LinkProblem) -> Response:
    return render(request, "message.html", status_code=404, title="This link doesn't work",
                  message=answers.LINK_PROBLEM_TEXT[problem], code=problem.value)


async def unsubscribe(request: Request) -> Response:
    app = state(request)
    async with app.db() as db:
        await current_viewer(request, db)
        row = await answers.message_for(db, app.signer, request.path_params["token"],
                                        app.settings.mail_link_days, cant_make_it=False)
        if isinstance(row, LinkProblem):
            return _link_problem(request, row)
        if request.method == "GET":
            return render(request, "mail/unsubscribe.html", done=False)
        form = await read_form(request)
        how = "one-click" if form.get("List-Unsubscribe") == "One-Click" else "page"
        result = await answers.unsubscribe(db, row, app.clock.now(), how)
        await db.commit()
    return render(request, "mail/unsubscribe.html", done=True, already=result.already)


async def cant_make_it(request: Request) -> Response:
    app = state(request)
    async with app.db() as db:
        await current_viewer(request, db)
        row = await answers.message_for(db, app.signer, request.path_params["token"],
                                        app.settings.mail_link_days, cant_make_it=True)
        session = await db.get(Session, row.session_id) \
            if isinstance(row, OutboxMessage) and row.session_id is not None else None
        if isinstance(row, LinkProblem) or session is None or row.patient_id is None \
                or row.family_member_id is not None:
            return _link_problem(request, row if isinstance(row, LinkProblem)
                                 else LinkProblem.NOT_FOR_THIS)
        now = app.clock.now()
        problem = notice_problem(session, now)
        if problem is None and await notice_for(db, session.id, row.patient_id) is not None:
            problem = NoticeRefused("already-told", "You already told us you can't make it. "
                                                    "Thank you.")
        error = None
        if request.method == "POST" and problem is None:
            form = await checked_form(request)
            try:
                await answers.cant_make_it(db, row, form.get("reason"), now)
            except NoticeRefused as refused:
                error = refused.message  # nothing was written
            else:
                await db.commit()
                return render(request, "mail/cant_make_it.html", done=True, session=session)
        status = 400 if error else 410 if problem is not None else 200
        return render(request, "mail/cant_make_it.html", status_code=status, done=False,
                      session=session, problem=problem, error=error,
                      reason_max=TEXT_LIMITS["reason"])


@staff_page()
async def patient_messages(request: Request, db: AsyncSession, viewer: Viewer,
                           scope: Scope) -> Response:
    """What was sent to a patient and their family, and whether the relay took it."""
    app = state(request)
    patient = await db.get(Patient, request.path_params["patient_id"])
    if not may(scope, Action.VIEW, patient):
        return not_found(request, "There is no such patient.")
    assert patient is not None
    program = await db.get(Program, patient.program_id)
    assert program is not None
    now = app.clock.now()
    rows = await messages_about(db, patient, MESSAGES_PAGE_ROWS)
    await viewed(request, db, viewer, "messages-view", f"patient:{patient.id}", count=len(rows))
    members = {m.id: m.name for m in (await db.execute(select(FamilyMember).where(
        FamilyMember.patient_id == patient.id))).scalars()}
    consents = (await db.execute(select(Consent).where(
        Consent.patient_id == patient.id, Consent.kind == ConsentKind.EMAIL_CONTACT)
        .order_by(Consent.granted_at.desc()))).scalars().all()
    return render(request, "mail/messages.html", patient=patient, program=program, rows=rows,
                  now=now, delivery=delivery, kind_labels=KIND_LABELS, members=members,
                  consents=consents, problem=await patient_problem(db, patient, now),
                  mail_on=bool(app.settings.smtp_url), limit=MESSAGES_PAGE_ROWS)


routes = [
    Route("/u/{token}", unsubscribe, methods=["GET", "POST"]),
    Route("/m/{token}", cant_make_it, methods=["GET", "POST"]),
    Route("/staff/patients/{patient_id:id}/messages", patient_messages),
]
