"""Whether the people in a room still stand where they did when they came in.

Admission looked everyone up when they joined. The records can change under them afterwards:
a sign-out, a revoked link, invite or consent, an account turned off, made on any node or from
the command line. Every live room re-checks its people against the database: every
``VIO_ROOM_RECHECK_SECONDS``, whenever a removal is announced on any node
(``RoomDirectory.recheck_everywhere``), and when a node's Redis comes back. Nothing but the
database decides; an announcement only says "look again".

``load`` reads what the re-check needs in a handful of queries, whatever the room's size;
``refusal_for`` (pure) says whether one person lost their place, and with which refusal:

- their sign-in ended, lapsed or is gone: ``signed-out``; a family member's ended with a
  revoked consent or invite says ``consent-revoked`` or ``invite-revoked``, a patient's ended
  with a revoked telehealth consent ``consent-missing``;
- a therapist's account was turned off: ``signed-out``;
- a patient lacks a consent this kind of session needs: ``consent-missing``;
- a family member's invite was revoked (``invite-revoked``), or the patient's consent naming
  them is no longer active (``consent-revoked``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vio import family
from vio.errors import Refusal, refusal
from vio.identity import EndReason
from vio.models import Consent, ConsentKind, FamilyInvite, FamilyMember, SignInSession, StaffUser
from vio.rooms.admission import Person, Role

GONE = ""  # the end reason of a sign-in that is not in the records at all


@dataclass(frozen=True)
class Standing:
    """What the records say now about the people of one room."""

    ended_sign_ins: dict[int, str]  # sign-in id -> why it ended (``EndReason`` or GONE)
    inactive_staff: frozenset[int]
    consented_patients: frozenset[int]  # with every consent the session's kind needs
    revoked_invites: frozenset[int]
    unconsented_invites: frozenset[int]  # the patient's consent naming the member is not active


def _ended_code(role: Role, reason: str) -> str:
    if role is Role.FAMILY and reason == EndReason.CONSENT_REVOKED:
        return "consent-revoked"
    if role is Role.FAMILY and reason == EndReason.LINKS_REVOKED:
        return "invite-revoked"
    if role is Role.PATIENT and reason == EndReason.CONSENT_REVOKED:
        return "consent-missing"
    return "signed-out"


def refusal_for(person: Person, standing: Standing) -> Refusal | None:
    """Why ``person`` may no longer be in the room, or None while they may."""
    if person.sign_in_id is not None and person.sign_in_id in standing.ended_sign_ins:
        return refusal(_ended_code(person.role, standing.ended_sign_ins[person.sign_in_id]))
    if person.role is Role.THERAPIST:
        if person.staff_id in standing.inactive_staff:
            return refusal("signed-out")
    elif person.role is Role.PATIENT:
        if person.patient_id not in standing.consented_patients:
            return refusal("consent-missing")
    elif person.family_invite_id in standing.revoked_invites:
        return refusal("invite-revoked")
    elif person.family_invite_id in standing.unconsented_invites:
        return refusal("consent-revoked")
    return None


async def load(db: AsyncSession, people: Iterable[Person], needed: frozenset[ConsentKind],
               now: datetime) -> Standing:
    """Read the records the re-check needs about ``people``; ``needed``: the consents a
    patient needs for this kind of session."""
    people = list(people)
    sign_in_ids = {p.sign_in_id for p in people if p.sign_in_id is not None}
    staff_ids = {p.staff_id for p in people if p.staff_id is not None}
    patient_ids = {p.patient_id for p in people
                   if p.role is Role.PATIENT and p.patient_id is not None}
    invite_ids = {p.family_invite_id for p in people if p.family_invite_id is not None}
    ended = dict.fromkeys(sign_in_ids, GONE)
    if sign_in_ids:
        for row in (await db.execute(select(SignInSession).where(
                SignInSession.id.in_(sign_in_ids)))).scalars():
            if row.ended_at is None and now < row.expires_at:
                del ended[row.id]
            else:
                ended[row.id] = row.end_reason or EndReason.EXPIRED.value
    inactive = frozenset((await db.execute(select(StaffUser.id).where(
        StaffUser.id.in_(staff_ids), StaffUser.active.is_(False)))).scalars()) \
        if staff_ids else frozenset()
    held: dict[int, set[ConsentKind]] = {}
    if patient_ids:
        for consent in (await db.execute(select(Consent).where(
                Consent.patient_id.in_(patient_ids)))).scalars():
            if consent.active_at(now):
                held.setdefault(consent.patient_id, set()).add(consent.kind)
    revoked, unconsented = set(), set()
    if invite_ids:
        for invite in (await db.execute(select(FamilyInvite).where(
                FamilyInvite.id.in_(invite_ids)))).scalars():
            if invite.revoked_at is not None:
                revoked.add(invite.id)
            member = await db.get(FamilyMember, invite.family_member_id)
            if member is None or await family.active_disclosure_consent(db, member, now) is None:
                unconsented.add(invite.id)
    return Standing(ended_sign_ins=ended, inactive_staff=inactive,
                    consented_patients=frozenset(p for p in patient_ids
                                                 if needed <= held.get(p, set())),
                    revoked_invites=frozenset(revoked), unconsented_invites=frozenset(unconsented))
