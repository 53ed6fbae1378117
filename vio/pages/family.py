"""Family members: the invite link's join flow, and staff pages for family, consents and invites.

The join flow's pages use neutral wording: they never say what the program treats.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from vio import clinic, family
from vio.errors import refusal
from vio.models import Consent, ConsentKind, FamilyInvite, FamilyMember, Patient, Session
from vio.pages.common import Viewer, checked_form, not_found, render, staff_page, state
from vio.pages.staff import session_for_staff
from vio.protocol import NAME_MAX_CHARS

PROBLEM_STATUS = {
    family.InviteProblem.MALFORMED: 400,
    family.InviteProblem.UNKNOWN: 404,
    family.InviteProblem.TOO_EARLY: 425,
    family.InviteProblem.WRONG_SESSION: 403,
}
TOO_MANY_TRIES = "Too many attempts from this network. Please wait a few minutes and try again."


def _client(request: Request) -> str:
    return f"invite|{request.client.host if request.client else 'unknown'}"


async def invite_link(request: Request) -> Response:
    """A family member's invite: explain what happens, ask for a name and the terms."""
    app = state(request)
    throttle = request.app.state.invite_throttle
    key = _client(request)
    if throttle.blocked(key):
        return render(request, "message.html", status_code=429, title="Please wait",
                      message=TOO_MANY_TRIES, code="too-many-attempts")
    async with app.db() as db:
        checked = await family.check_invite(db, request.path_params["token"], app.clock.now(),
                                            app.settings.join_early_minutes)
        if isinstance(checked, family.InviteProblem):
            throttle.failed(key)
            return render(request, "message.html", status_code=PROBLEM_STATUS.get(checked, 410),
                          title="This invitation can't be used",
                          message=family.INVITE_PROBLEM_TEXT[checked], code=checked.value)
        error = None
        name = checked.member.name
        if request.method == "POST":
            form = await checked_form(request)
            name = " ".join(str(form.get("name", "")).split())
            if not 1 <= len(name) <= NAME_MAX_CHARS:
                error = f"Please enter the name others will see (up to {NAME_MAX_CHARS} letters)."
            elif form.get("terms") != "yes":
                error = "Please confirm that you have read the terms for video sessions."
            else:
                device = request.session.get("device") or secrets.token_urlsafe(16)
                request.session.clear()
                request.session.update({"family_invite_id": checked.invite.id,
                                        "family_name": name, "device": device})
                await clinic.audit(db, app.clock.now(), f"family-invite:{checked.invite.id}",
                                   "family-invite-opened", f"session:{checked.session.id}",
                                   name=name)
                await db.commit()
                return RedirectResponse(f"/sessions/{checked.session.id}/room", status_code=303)
    return render(request, "family/join.html", status_code=400 if error else 200, error=error,
                  name=name, starts_at=checked.session.starts_at,
                  timezone=checked.session.timezone)


# --- staff: family members and consents --------------------------------------------------

async def _patient(db: AsyncSession, viewer: Viewer, patient_id: int) -> Patient | None:
    patient = await db.get(Patient, patient_id)
    if patient is None or viewer.staff is None or patient.program_id != viewer.staff.program_id:
        return None
    return patient


def _date_end(raw: str) -> datetime | None:
    if not raw:
        return None
    return datetime.combine(datetime.strptime(raw, "%Y-%m-%d").date(), time(23, 59), UTC)


@staff_page()
async def family_and_consents(request: Request, db: AsyncSession, viewer: Viewer) -> Response:
    """A patient's family members and consents: add, record, revoke."""
    app = state(request)
    patient = await _patient(db, viewer, request.path_params["patient_id"])
    if patient is None:
        return not_found(request, "There is no such patient.")
    now = app.clock.now()
    error = None
    if request.method == "POST":
        form = await checked_form(request)
        action = form.get("action")
        if action == "add-member":
            name = str(form.get("name", "")).strip()
            relationship = str(form.get("relationship", "")).strip()
            if not name or not relationship:
                error = "A family member needs a name and a relationship."
            else:
                member = FamilyMember(patient_id=patient.id, name=name,
                                      relationship_to_patient=relationship,
                                      contact=str(form.get("contact", "")).strip())
                db.add(member)
                await db.flush()
                await clinic.audit(db, now, viewer.actor, "family-member-added",
                                   f"patient:{patient.id}", member=member.id)
        elif action == "add-consent":
            try:
                kind = ConsentKind(str(form.get("kind", "")))
                expires = _date_end(str(form.get("expires_on", "")).strip())
            except ValueError:
                kind, expires, error = ConsentKind.TELEHEALTH, None, "Check the consent details."
            member_id = str(form.get("family_member_id", ""))
            named = await db.get(FamilyMember, int(member_id)) if member_id.isdigit() else None
            if error is None and kind is ConsentKind.FAMILY_DISCLOSURE and (
                    named is None or named.patient_id != patient.id):
                error = "A family-disclosure consent must name one of the patient's family."
            if error is None:
                consent = Consent(patient_id=patient.id, kind=kind,
                                  family_member_id=named.id if named and kind is
                                  ConsentKind.FAMILY_DISCLOSURE else None,
                                  scope=str(form.get("scope", "")).strip()
                                  or ("family therapy sessions"
                                      if kind is ConsentKind.FAMILY_DISCLOSURE else ""),
                                  granted_at=now, expires_at=expires)
                db.add(consent)
                await db.flush()
                await clinic.audit(db, now, viewer.actor, "consent-recorded",
                                   f"patient:{patient.id}", consent=consent.id, kind=kind.value)
        elif action == "revoke-consent":
            revoked = await db.get(Consent, int(str(form.get("consent_id", "0")) or 0))
            if revoked is None or revoked.patient_id != patient.id:
                error = "There is no such consent."
            else:
                await family.revoke_consent(db, revoked, viewer.actor, now)
                await db.commit()
                if revoked.family_member_id is not None:
                    request.app.state.rooms.remove_family_member(
                        revoked.family_member_id, refusal("consent-revoked"))
        else:
            error = "Unknown action."
        if error is None:
            await db.commit()
            return RedirectResponse(f"/staff/patients/{patient.id}/family", status_code=303)
    members = (await db.execute(select(FamilyMember).where(
        FamilyMember.patient_id == patient.id))).scalars().all()
    consents = (await db.execute(select(Consent).where(Consent.patient_id == patient.id)
                                 .order_by(Consent.granted_at.desc()))).scalars().all()
    return render(request, "family/staff_family.html", status_code=400 if error else 200,
                  patient=patient, members=members, consents=consents, error=error, now=now,
                  kinds=list(ConsentKind), names={m.id: m.name for m in members})


@staff_page()
async def session_invites(request: Request, db: AsyncSession, viewer: Viewer) -> Response:
    """A session's family invites: issue (with a link to copy), list, revoke."""
    app = state(request)
    session = await session_for_staff(db, viewer, request.path_params["session_id"])
    if session is None:
        return not_found(request, "There is no such session, or it is not yours.")
    now = app.clock.now()
    error = link = None
    if request.method == "POST":
        form = await checked_form(request)
        if form.get("action") == "revoke":
            invite = await db.get(FamilyInvite, int(str(form.get("invite_id", "0")) or 0))
            if invite is None or invite.session_id != session.id:
                error = "There is no such invitation."
            else:
                await family.revoke_invite(db, invite, viewer.actor, now)
                await db.commit()
                request.app.state.rooms.remove_family_member(
                    invite.family_member_id, refusal("invite-revoked"))
        else:
            raw = str(form.get("family_member_id", ""))
            member = await db.get(FamilyMember, int(raw)) if raw.isdigit() else None
            if member is None:
                error = "Choose a family member."
            else:
                try:
                    token = await family.issue_invite(db, session, member, viewer.actor, now)
                except family.InviteRefused as refused:
                    error = refused.message
                else:
                    await db.commit()
                    link = f"{app.settings.public_base_url}/i/{token}"
    members = await _family_for(db, session)
    invites = (await db.execute(select(FamilyInvite).where(
        FamilyInvite.session_id == session.id).order_by(FamilyInvite.id))).scalars().all()
    return render(request, "family/staff_invites.html", status_code=400 if error else 200,
                  session=session, members=members, invites=invites, error=error, link=link,
                  now=now, names={m.id: m.name for m in members})


async def _family_for(db: AsyncSession, session: Session) -> list[FamilyMember]:
    if session.patient_id is not None:
        patient_ids = [session.patient_id]
    elif session.group_id is not None:
        patient_ids = [p.id for p in await clinic.roster(db, session.group_id,
                                                          session.starts_at.date())]
    else:
        patient_ids = []
    return list((await db.execute(select(FamilyMember).where(
        FamilyMember.patient_id.in_(patient_ids)).order_by(FamilyMember.name))).scalars())


routes = [
    Route("/i/{token}", invite_link, methods=["GET", "POST"]),
    Route("/staff/patients/{patient_id:int}/family", family_and_consents, methods=["GET", "POST"]),
    Route("/staff/sessions/{session_id:int}/invites", session_invites, methods=["GET", "POST"]),
]
