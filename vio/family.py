"""Family members' invites: issued only under a consent naming them, for one family session.

An invite link carries ``{invite id}.{secret}``; the secret is 192 random bits and only its hash
is kept. It expires at the end of its session and dies at once when revoked or when the patient's
family-disclosure consent for that person is revoked.

The sentences of every problem are the refusals' own (``vio.errors.REFUSAL_TEXT``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vio import audit_chain
from vio.errors import REFUSAL_TEXT
from vio.errors import InviteRefused as InviteRefused
from vio.identity import family_member_identity, patient_identity
from vio.models import (
    Consent,
    ConsentKind,
    FamilyInvite,
    FamilyMember,
    Session,
    SessionKind,
    SessionStatus,
)
from vio.security import new_secret, same_secret, secret_hash

FAMILY_KINDS = (SessionKind.FAMILY, SessionKind.MULTI_FAMILY)


class InviteProblem(enum.StrEnum):
    MALFORMED = "invite-malformed"
    UNKNOWN = "invite-unknown"
    EXPIRED = "invite-expired"
    REVOKED = "invite-revoked"
    CONSENT_REVOKED = "consent-revoked"
    WRONG_SESSION = "wrong-session"
    TOO_EARLY = "too-early"
    SESSION_ENDED = "session-ended"


INVITE_PROBLEM_TEXT = {problem: REFUSAL_TEXT[problem.value] for problem in InviteProblem}


@dataclass(frozen=True)
class ValidInvite:
    invite: FamilyInvite
    member: FamilyMember
    session: Session


async def active_disclosure_consent(db: AsyncSession, member: FamilyMember,
                                    now: datetime) -> Consent | None:
    """The patient's family-disclosure consent naming ``member`` that is active now."""
    consents = (await db.execute(select(Consent).where(
        Consent.patient_id == member.patient_id, Consent.kind == ConsentKind.FAMILY_DISCLOSURE,
        Consent.family_member_id == member.id))).scalars().all()
    return next((c for c in consents if c.active_at(now)), None)


async def issue_invite(db: AsyncSession, session: Session, member: FamilyMember, actor: str,
                       now: datetime) -> str:
    """Issue an invite and return its link token; refuses without consent or a family session."""
    if session.kind not in FAMILY_KINDS:
        raise InviteRefused("Family members can be invited to family sessions only.")
    if session.status in (SessionStatus.ENDED, SessionStatus.CANCELLED) or session.ends_at <= now:
        raise InviteRefused("This session is over or cancelled.")
    if session.kind is SessionKind.FAMILY and session.patient_id != member.patient_id:
        raise InviteRefused("This family member belongs to another patient.")
    if await active_disclosure_consent(db, member, now) is None:
        raise InviteRefused(f"There is no active family-disclosure consent naming {member.name}.")
    secret = new_secret()
    invite = FamilyInvite(session_id=session.id, family_member_id=member.id,
                          secret_hash=secret_hash(secret), created_at=now, created_by=actor,
                          expires_at=session.ends_at)
    db.add(invite)
    await db.flush()
    await audit_chain.audit(db, now, actor, "family-invite-issued",
                            family_member_identity(member.id),
                            session=session.id, invite=invite.id)
    return f"{invite.id}.{secret}"


async def check_invite(db: AsyncSession, token: str, now: datetime, join_early_minutes: int,
                       session_id: int | None = None) -> ValidInvite | InviteProblem:
    """Resolve a link token to a usable invite, or say exactly what is wrong with it."""
    raw_id, dot, secret = token.partition(".")
    if not dot or not raw_id.isdigit() or len(secret) < 22:
        return InviteProblem.MALFORMED
    invite = await db.get(FamilyInvite, int(raw_id))
    if invite is None or not same_secret(invite.secret_hash, secret):
        return InviteProblem.UNKNOWN
    return await check_invite_record(db, invite, now, join_early_minutes, session_id)


async def check_invite_record(db: AsyncSession, invite: FamilyInvite, now: datetime,
                              join_early_minutes: int,
                              session_id: int | None = None) -> ValidInvite | InviteProblem:
    if invite.revoked_at is not None:
        return InviteProblem.REVOKED
    if session_id is not None and invite.session_id != session_id:
        return InviteProblem.WRONG_SESSION
    member = await db.get(FamilyMember, invite.family_member_id)
    session = await db.get(Session, invite.session_id)
    if member is None or session is None:
        return InviteProblem.UNKNOWN
    if await active_disclosure_consent(db, member, now) is None:
        return InviteProblem.CONSENT_REVOKED
    if session.status is SessionStatus.ENDED or now >= session.ends_at:
        return InviteProblem.SESSION_ENDED
    if now >= invite.expires_at or session.status is SessionStatus.CANCELLED:
        return InviteProblem.EXPIRED
    if now < session.starts_at - timedelta(minutes=join_early_minutes):
        return InviteProblem.TOO_EARLY
    return ValidInvite(invite, member, session)


async def revoke_invite(db: AsyncSession, invite: FamilyInvite, actor: str,
                        now: datetime) -> None:
    if invite.revoked_at is None:
        invite.revoked_at = now
        await audit_chain.audit(db, now, actor, "family-invite-revoked",
                                family_member_identity(invite.family_member_id), invite=invite.id)


async def revoke_consent(db: AsyncSession, consent: Consent, actor: str,
                         now: datetime) -> list[int]:
    """Revoke a consent; for a family disclosure, that person's open invites die with it.

    Returns the ids of the invites revoked.
    """
    consent.revoked_at = now
    await audit_chain.audit(db, now, actor, "consent-revoked", patient_identity(consent.patient_id),
                            consent=consent.id, kind=consent.kind.value)
    if consent.kind is not ConsentKind.FAMILY_DISCLOSURE or consent.family_member_id is None:
        return []
    invites = (await db.execute(select(FamilyInvite).where(
        FamilyInvite.family_member_id == consent.family_member_id,
        FamilyInvite.revoked_at.is_(None)))).scalars().all()
    for invite in invites:
        await revoke_invite(db, invite, actor, now)
    return [invite.id for invite in invites]
