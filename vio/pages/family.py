"""Family members: the invite link's join flow, and staff pages for family, consents and invites.

The join flow's pages use neutral wording: they never say what the program treats. Accepting
an invite starts a sign-in session of the family member's own, for that one session (audited).
Staff pages follow ``vio.policy``: a patient's therapists and admins see and add family;
recording and revoking consents is an admin's. Revoking a consent, or an invite, ends what
stood on it at once: the family member's sign-ins and room connections (or, for a patient's
own consents, the patient's place in the rooms that need them).
"""

from __future__ import annotations

import math
import secrets
from datetime import UTC, datetime, time, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from vio import audit_chain, clinic, family, identity
from vio.identity import EndReason
from vio.mail import outbox
from vio.models import (
    Consent,
    ConsentKind,
    FamilyInvite,
    FamilyMember,
    Patient,
    Session,
    SignInKind,
)
from vio.pages import forms
from vio.pages.common import (
    DEVICE_KEY,
    Viewer,
    begin_sign_in,
    checked_form,
    current_viewer,
    forbidden,
    not_found,
    recheck_rooms,
    render,
    staff_page,
    state,
)
from vio.pages.forms import FormProblem
from vio.pages.rescheduling import wake_mail
from vio.pages.staff import session_for_staff
from vio.policy import Action, Scope, may
from vio.protocol import NAME_MAX_CHARS
from vio.security import AttemptCounter

PROBLEM_STATUS = {
    family.InviteProblem.MALFORMED: 400,
    family.InviteProblem.UNKNOWN: 404,
    family.InviteProblem.TOO_EARLY: 425,
    family.InviteProblem.WRONG_SESSION: 403,
}
TOO_MANY_TRIES = "Too many attempts from this network. Please wait a few minutes and try again."


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def invite_link(request: Request) -> Response:
    """A family member's invite: explain what happens, ask for a name and the terms; then sign
    them in for that one session (a sign-in session of their own, audited)."""
    app = state(request)
    throttle: AttemptCounter = request.app.state.invite_throttle
    key = _client(request)
    if await throttle.blocked(key):
        return render(request, "message.html", status_code=429, title="Please wait",
                      message=TOO_MANY_TRIES, code="too-many-attempts")
    async with app.db() as db:
        await current_viewer(request, db)
        token = request.path_params["token"]
        checked = await family.check_invite(db, token, app.clock.now(),
                                            app.settings.join_early_minutes)
        if checked is family.InviteProblem.TOO_EARLY:
            # The link itself is good (its secret matched): say when it opens, not a failure.
            early = await _invited(db, token)
            if early is not None:
                return _too_early(request, *early, app.clock.now(),
                                  app.settings.join_early_minutes)
        if isinstance(checked, family.InviteProblem):
            await throttle.failed(key)
            return invite_problem(request, checked)
        error = None
        name = checked.member.name
        if request.method == "POST":
            form = await checked_form(request)
            raw = form.get("name", "")
            name = " ".join(raw.split())[:forms.TEXT_LIMITS["name"]] if isinstance(raw, str) \
                else ""
            if not 1 <= len(name) <= NAME_MAX_CHARS:
                error = f"Please enter the name others will see (up to {NAME_MAX_CHARS} letters)."
            elif form.get("terms") != "yes":
                error = "Please confirm that you have read the terms for video sessions."
            else:
                device = request.session.get(DEVICE_KEY)
                if not isinstance(device, str) or len(device) > 40:
                    device = secrets.token_urlsafe(16)
                now = app.clock.now()
                new = await identity.start_sign_in(
                    db, SignInKind.FAMILY, now, app.sign_in_rules,
                    family_invite_id=checked.invite.id, family_member_id=checked.member.id,
                    family_name=name, device=device)
                await audit_chain.audit(db, now, f"family-invite:{checked.invite.id}",
                                        "family-invite-opened", f"session:{checked.session.id}",
                                        name=name)
                await db.commit()
                request.session[DEVICE_KEY] = device
                begin_sign_in(request, new)
                return RedirectResponse(f"/sessions/{checked.session.id}/room", status_code=303)
    return render(request, "family/join.html", status_code=400 if error else 200, error=error,
                  name=name, starts_at=checked.session.starts_at,
                  timezone=checked.session.timezone, minutes=_minutes(checked.session))


# How each unusable invite is headed, and what the family member can do next.
INVITE_PROBLEM_TITLE = {
    family.InviteProblem.MALFORMED: "This link is not complete",
    family.InviteProblem.UNKNOWN: "We don't recognise this invitation",
    family.InviteProblem.EXPIRED: "This invitation has expired",
    family.InviteProblem.REVOKED: "This invitation was withdrawn",
    family.InviteProblem.CONSENT_REVOKED: "This invitation is no longer valid",
    family.InviteProblem.WRONG_SESSION: "This invitation is for a different session",
    family.InviteProblem.TOO_EARLY: "This session has not opened yet",
    family.InviteProblem.SESSION_ENDED: "This session is over",
}
INVITE_NEXT_STEP = {
    family.InviteProblem.MALFORMED: "Copy the whole link from the message you received and "
                                    "open it again. If it still doesn't work, contact the care "
                                    "team that invited you.",
    family.InviteProblem.TOO_EARLY: "Open your invitation link again closer to the time of "
                                    "the session.",
}
# Where the refusal's own sentence would only repeat the headline.
INVITE_PROBLEM_DETAIL = {
    family.InviteProblem.MALFORMED: "Part of the invitation link is missing, which can happen "
                                    "when a long link is split over two lines.",
}
CONTACT_THE_PROGRAM = ("Please contact the care team that invited you: they can tell you what "
                       "comes next and send you a new invitation if you need one.")


def invite_problem(request: Request, problem: family.InviteProblem) -> Response:
    """An invite that can't be used: a clear headline, what it means, and what to do next."""
    return render(request, "family/invite_problem.html",
                  status_code=PROBLEM_STATUS.get(problem, 410),
                  title=INVITE_PROBLEM_TITLE[problem],
                  message=INVITE_PROBLEM_DETAIL.get(problem, family.INVITE_PROBLEM_TEXT[problem]),
                  next_step=INVITE_NEXT_STEP.get(problem, CONTACT_THE_PROGRAM),
                  code=problem.value)


async def _invited(db: AsyncSession, token: str) -> tuple[Session, FamilyMember] | None:
    """The session and person of an invite ``family.check_invite`` found too early (so its id
    and secret were checked already)."""
    raw_id = token.partition(".")[0]
    invite = await db.get(FamilyInvite, int(raw_id)) if raw_id.isdigit() else None
    if invite is None:
        return None
    session = await db.get(Session, invite.session_id)
    member = await db.get(FamilyMember, invite.family_member_id)
    return None if session is None or member is None else (session, member)


def _minutes(session: Session) -> int:
    return session.duration_minutes + session.extended_minutes


def _too_early(request: Request, session: Session, member: FamilyMember, now: datetime,
               join_early_minutes: int) -> Response:
    """The invite before its session opens: when it opens, in the family member's terms (the
    session's zone, named), a camera and microphone check meanwhile, and a countdown after
    which the page asks the server again (``web/static/js/countdown.js``)."""
    opens_at = session.starts_at - timedelta(minutes=join_early_minutes)
    wait = max(1, math.ceil((opens_at - now).total_seconds()))
    return render(request, "family/join.html", status_code=PROBLEM_STATUS[
        family.InviteProblem.TOO_EARLY], early=True, code=family.InviteProblem.TOO_EARLY.value,
                  starts_at=session.starts_at, opens_at=opens_at, timezone=session.timezone,
                  minutes=_minutes(session), opens_in_seconds=wait, name=member.name,
                  join_early_minutes=join_early_minutes)


# --- staff: family members and consents --------------------------------------------------

def _date_end(raw: object) -> datetime | None:
    """The end of the day written ``raw`` (empty: no end); ``FormProblem`` when it is no day."""
    if raw in (None, ""):
        return None
    day = forms.parse_day(raw)
    if day is None:
        raise FormProblem("Expiry must be a date (YYYY-MM-DD).")
    return datetime.combine(day, time(23, 59), UTC)


async def end_family_sign_ins(request: Request, db: AsyncSession, reason: EndReason, *,
                              family_member_id: int | None = None,
                              family_invite_id: int | None = None) -> None:
    await identity.end_sign_ins(db, state(request).clock.now(), reason,
                                family_member_id=family_member_id,
                                family_invite_id=family_invite_id)
    await db.commit()
    await recheck_rooms(request)


async def _revoke_consent(request: Request, db: AsyncSession, viewer: Viewer,
                          consent: Consent) -> None:
    """Revoke, and end at once what stood on the consent: a family member's sign-ins and room
    connections, or the patient's place in rooms that need it."""
    app = state(request)
    await family.revoke_consent(db, consent, viewer.actor, app.clock.now())
    await db.commit()
    if consent.family_member_id is not None:
        await end_family_sign_ins(request, db, EndReason.CONSENT_REVOKED,
                                  family_member_id=consent.family_member_id)
        return
    if consent.kind is ConsentKind.TELEHEALTH:
        await identity.end_sign_ins(db, app.clock.now(), EndReason.CONSENT_REVOKED,
                                    patient_id=consent.patient_id)
        await db.commit()
    await recheck_rooms(request)  # every room, on every node, that needs the consent


async def _family_change(request: Request, db: AsyncSession, viewer: Viewer, scope: Scope,
                         patient: Patient, action: object, form: FormData) -> Response | None:
    """One change to a patient's family or consents; a refusal page, or None when done."""
    now = state(request).clock.now()
    if action == "add-member":
        if not may(scope, Action.ADD_FAMILY, patient):
            return forbidden(request, "Only the patient's therapists and admins can add family.")
        member = FamilyMember(patient_id=patient.id,
                              name=forms.text(form, "name", "A family member's name"),
                              relationship_to_patient=forms.text(form, "relationship",
                                                                 "The relationship"),
                              contact=forms.text(form, "contact", "Contact", required=False),
                              email=forms.email(form, "Email"))
        db.add(member)
        await db.flush()
        await audit_chain.audit(db, now, viewer.actor, "family-member-added",
                                f"patient:{patient.id}", member=member.id)
        return None
    if action not in ("add-consent", "revoke-consent"):
        raise FormProblem("Unknown action.")
    if not may(scope, Action.MANAGE_CONSENT, patient):
        return forbidden(request, "Only a program admin can record or revoke consents.")
    if action == "revoke-consent":
        revoked = await db.get(Consent, forms.record_id(form, "consent_id") or 0)
        if revoked is None or revoked.patient_id != patient.id:
            raise FormProblem("There is no such consent.")
        await _revoke_consent(request, db, viewer, revoked)
        return None
    try:
        kind = ConsentKind(forms.text(form, "kind", "Kind"))
    except ValueError:
        raise FormProblem("Check the consent details.") from None
    expires = _date_end(form.get("expires_on"))
    member_id = forms.record_id(form, "family_member_id")
    named = await db.get(FamilyMember, member_id) if member_id is not None else None
    if kind is ConsentKind.FAMILY_DISCLOSURE and (named is None
                                                  or named.patient_id != patient.id):
        raise FormProblem("A family-disclosure consent must name one of the patient's family.")
    consent = Consent(patient_id=patient.id, kind=kind,
                      family_member_id=named.id if named and kind is
                      ConsentKind.FAMILY_DISCLOSURE else None,
                      scope=forms.text(form, "scope", "Scope", required=False)
                      or ("family therapy sessions"
                          if kind is ConsentKind.FAMILY_DISCLOSURE else ""),
                      granted_at=now, expires_at=expires)
    db.add(consent)
    await db.flush()
    await audit_chain.audit(db, now, viewer.actor, "consent-recorded",
                            f"patient:{patient.id}", consent=consent.id, kind=kind.value)
    return None


@staff_page()
async def family_and_consents(request: Request, db: AsyncSession, viewer: Viewer,
                              scope: Scope) -> Response:
    """A patient's family members and consents: add family; admins record and revoke
    consents."""
    app = state(request)
    patient = await db.get(Patient, request.path_params["patient_id"])
    if not may(scope, Action.VIEW, patient):
        return not_found(request, "There is no such patient.")
    assert patient is not None
    now = app.clock.now()
    error = None
    if request.method == "POST":
        form = await checked_form(request)
        try:
            refused = await _family_change(request, db, viewer, scope, patient,
                                           form.get("action"), form)
        except FormProblem as problem:
            error = str(problem)  # refused before anything was written
        else:
            if refused is not None:
                return refused
            await db.commit()
            return RedirectResponse(f"/staff/patients/{patient.id}/family", status_code=303)
    members = (await db.execute(select(FamilyMember).where(
        FamilyMember.patient_id == patient.id))).scalars().all()
    consents = (await db.execute(select(Consent).where(Consent.patient_id == patient.id)
                                 .order_by(Consent.granted_at.desc()))).scalars().all()
    if request.method == "GET":
        await audit_chain.audit(db, now, viewer.actor, "consents-view", f"patient:{patient.id}")
        await db.commit()
    return render(request, "family/staff_family.html", status_code=400 if error else 200,
                  patient=patient, members=members, consents=consents, error=error, now=now,
                  kinds=list(ConsentKind), names={m.id: m.name for m in members},
                  may_manage=may(scope, Action.MANAGE_CONSENT, patient),
                  may_add=may(scope, Action.ADD_FAMILY, patient))


@staff_page()
async def session_invites(request: Request, db: AsyncSession, viewer: Viewer,
                          scope: Scope) -> Response:
    """A session's family invites: issue (with a link to copy), list, revoke."""
    app = state(request)
    session = await session_for_staff(db, scope, request.path_params["session_id"])
    if session is None:
        return not_found(request, "There is no such session, or it is not yours.")
    now = app.clock.now()
    error = link = None
    emailed = False
    members = await _family_for(db, session)
    if request.method == "POST":
        form = await checked_form(request)
        if form.get("action") == "revoke":
            invite = await db.get(FamilyInvite, forms.record_id(form, "invite_id") or 0)
            if invite is None or invite.session_id != session.id:
                error = "There is no such invitation."
            else:
                await family.revoke_invite(db, invite, viewer.actor, now)
                await db.commit()
                await end_family_sign_ins(request, db, EndReason.LINKS_REVOKED,
                                          family_invite_id=invite.id)
        else:
            member_id = forms.record_id(form, "family_member_id")
            member = next((m for m in members if m.id == member_id), None)
            if member is None:
                error = "Choose a family member."
            else:
                try:
                    token = await family.issue_invite(db, session, member, viewer.actor, now)
                except family.InviteRefused as refused:
                    error = refused.message
                else:
                    emailed = await outbox.queue_family_invite(
                        db, app.settings, session, member, int(token.partition(".")[0]), token,
                        now) is not None
                    await db.commit()
                    wake_mail(request)
                    link = f"{app.settings.public_base_url}/i/{token}"
    invites = (await db.execute(select(FamilyInvite).where(
        FamilyInvite.session_id == session.id).order_by(FamilyInvite.id))).scalars().all()
    return render(request, "family/staff_invites.html", status_code=400 if error else 200,
                  session=session, members=members, invites=invites, error=error, link=link,
                  emailed=emailed, mail_on=outbox.mail_on(app.settings),
                  now=now, names={m.id: m.name for m in members})


async def _family_for(db: AsyncSession, session: Session) -> list[FamilyMember]:
    if session.patient_id is not None:
        patient_ids = [session.patient_id]
    elif session.group_id is not None:
        patient_ids = [p.id for p in await clinic.roster(db, session.group_id,
                                                          session.starts_at.date())]
    else:
        patient_ids = []
    return list((await db.execute(select(FamilyMember).join(
        Patient, Patient.id == FamilyMember.patient_id).where(
        FamilyMember.patient_id.in_(patient_ids),
        Patient.program_id == session.program_id).order_by(FamilyMember.name))).scalars())


routes = [
    Route("/i/{token}", invite_link, methods=["GET", "POST"]),
    Route("/staff/patients/{patient_id:id}/family", family_and_consents,
          methods=["GET", "POST"]),
    Route("/staff/sessions/{session_id:id}/invites", session_invites, methods=["GET", "POST"]),
]
