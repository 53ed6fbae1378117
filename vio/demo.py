"""Demo data: a small evening program with a group that is live now.

Its patients have ``example.org`` addresses and agreed to email, so a server given
``VIO_SMTP_URL`` sends them the live session's "your room is open" messages.

Seeding is repeatable: people and groups are made once; each run makes sure a group session is
live (started five minutes ago, three hours long) and a family session is scheduled later today.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vio import clinic, family
from vio.identity import patient_identity
from vio.models import (
    AgeGroup,
    AttendanceEvent,
    AttendanceKind,
    Consent,
    ConsentKind,
    FamilyMember,
    Group,
    GroupTherapist,
    LevelOfCare,
    Patient,
    Program,
    RosterMembership,
    Session,
    SessionKind,
    SessionStatus,
    StaffRole,
    StaffUser,
    WaitingRoomPolicy,
)
from vio.security import Signer, hash_password

THERAPIST = {"name": "Jordan Alvarez, LCSW", "email": "therapist@demo.vio",
             "password": "demo-therapist"}
ADMIN = {"name": "Sam Okafor", "email": "admin@demo.vio", "password": "demo-admin"}
GROUP_NAME = "Evening Process Group"
ROSTER = ["Dana Reyes", "Marcus Lee", "Priya Shah", "Tom Becker", "Alicia Gomez", "Ken Watanabe"]
NOT_ON_ROSTER = "Riley Morgan"
FAMILY = {"patient": "Marcus Lee", "name": "Angela Lee", "relationship": "mother"}
LIVE_SESSION_MINUTES = 180
FAMILY_SESSION_MINUTES = 50


def demo_address(name: str) -> str:
    """The demo's people have addresses at example.org (RFC 2606: never a real mailbox)."""
    return f"{'.'.join(name.lower().split())}@example.org"


@dataclass(frozen=True)
class DemoPeople:
    program: Program
    therapist: StaffUser
    admin: StaffUser
    patients: dict[str, Patient]
    group: Group
    family_member: FamilyMember


async def _people(db: AsyncSession, timezone: str, now: datetime) -> DemoPeople:
    admin = await clinic.staff_by_email(db, ADMIN["email"])
    if admin is not None:
        program = await db.get(Program, admin.program_id)
        therapist = await clinic.staff_by_email(db, THERAPIST["email"])
        group = (await db.execute(select(Group).where(Group.name == GROUP_NAME))).scalar_one()
        existing = {p.legal_name: p for p in (await db.execute(
            select(Patient).where(Patient.program_id == admin.program_id))).scalars()}
        family = (await db.execute(select(FamilyMember).where(
            FamilyMember.name == FAMILY["name"]))).scalar_one()
        assert program is not None and therapist is not None
        return DemoPeople(program, therapist, admin, existing, group, family)

    program = Program(name="Riverside Evening Program", timezone=timezone, emergency_number="911")
    db.add(program)
    await db.flush()
    therapist = StaffUser(program_id=program.id, name=THERAPIST["name"],
                          email=THERAPIST["email"], role=StaffRole.THERAPIST,
                          password_hash=hash_password(THERAPIST["password"]))
    admin = StaffUser(program_id=program.id, name=ADMIN["name"], email=ADMIN["email"],
                      role=StaffRole.ADMIN, password_hash=hash_password(ADMIN["password"]))
    db.add_all([therapist, admin])
    start = now.date() - timedelta(weeks=3)
    patients: dict[str, Patient] = {}
    for index, name in enumerate([*ROSTER, NOT_ON_ROSTER]):
        patients[name] = Patient(
            program_id=program.id, legal_name=name, level_of_care=LevelOfCare.IOP,
            age_group=AgeGroup.ADULT, enrolled_on=start,
            enrollment_ends_on=start + timedelta(weeks=10),
            emergency_contact_name=f"Contact of {name.split()[0]}",
            emergency_contact_phone=f"555-01{index:02d}",
            home_address=f"{120 + index * 7} Maple Street, Springfield",
            phone=f"555-02{index:02d}", email=demo_address(name))
    db.add_all(patients.values())
    group = Group(program_id=program.id, name=GROUP_NAME)
    db.add(group)
    await db.flush()
    db.add(GroupTherapist(group_id=group.id, staff_id=therapist.id))
    for name in ROSTER:
        db.add(RosterMembership(group_id=group.id, patient_id=patients[name].id, joined_on=start))
    for patient in patients.values():
        for kind in (ConsentKind.TELEHEALTH, ConsentKind.GROUP_PARTICIPATION,
                     ConsentKind.EMAIL_CONTACT):
            db.add(Consent(patient_id=patient.id, kind=kind, granted_at=now - timedelta(weeks=3),
                           expires_at=now + timedelta(days=365)))
    family = FamilyMember(patient_id=patients[FAMILY["patient"]].id, name=FAMILY["name"],
                          relationship_to_patient=FAMILY["relationship"],
                          email=demo_address(FAMILY["name"]))
    db.add(family)
    await db.flush()
    db.add(Consent(patient_id=family.patient_id, kind=ConsentKind.FAMILY_DISCLOSURE,
                   family_member_id=family.id, scope="family therapy sessions",
                   granted_at=now - timedelta(days=7), expires_at=now + timedelta(days=90)))
    return DemoPeople(program, therapist, admin, patients, group, family)


async def seed(db: AsyncSession, timezone: str, now: datetime) -> DemoPeople:
    """Make the demo program (once) and today's live and family sessions (when missing)."""
    first_time = await clinic.staff_by_email(db, ADMIN["email"]) is None
    people = await _people(db, timezone, now)
    live = (await db.execute(select(Session).where(
        Session.group_id == people.group.id, Session.starts_at <= now,
        Session.status.in_([SessionStatus.SCHEDULED, SessionStatus.OPEN])))).scalars().all()
    if not any(s.ends_at > now + timedelta(minutes=30) for s in live):
        await clinic.schedule_session(db, clinic.SessionPlan(
            program_id=people.program.id, title=GROUP_NAME, kind=SessionKind.GROUP,
            timezone=people.program.timezone, duration_minutes=LIVE_SESSION_MINUTES,
            therapist_ids=(people.therapist.id,), group_id=people.group.id,
            waiting_room=WaitingRoomPolicy.OPEN),
            now.replace(microsecond=0) - timedelta(minutes=5))
    family_patient = people.patients[FAMILY["patient"]]
    upcoming_family = (await db.execute(select(Session).where(
        Session.kind == SessionKind.FAMILY, Session.patient_id == family_patient.id,
        Session.starts_at > now))).scalars().first()
    if upcoming_family is None:
        start = (now + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
        await clinic.schedule_session(db, clinic.SessionPlan(
            program_id=people.program.id, title=f"Family session: {family_patient.display_name}",
            kind=SessionKind.FAMILY, timezone=people.program.timezone,
            duration_minutes=FAMILY_SESSION_MINUTES, therapist_ids=(people.therapist.id,),
            patient_id=family_patient.id), start)
    if first_time:
        await _past_week(db, people, now)
    await db.flush()
    return people


# The past week's attendance, patient by patient: minutes attended in each of the three
# sessions (None: absent). Marcus misses the last two, which prompts outreach.
PAST_WEEK_MINUTES: dict[str, tuple[int | None, ...]] = {
    "Dana Reyes": (180, 180, 180),
    "Marcus Lee": (180, None, None),
    "Priya Shah": (150, 180, 180),
    "Tom Becker": (90, 120, 180),
    "Alicia Gomez": (180, 180, 180),
    "Ken Watanabe": (None, 180, 180),
}
PAST_WEEKDAYS = (1, 3, 4)  # Monday, Wednesday, Thursday
PAST_START = time(18, 0)


async def _past_week(db: AsyncSession, people: DemoPeople, now: datetime) -> None:
    """Last week's Mon/Wed/Thu evening group, ended, with attendance as the room records it."""
    zone = ZoneInfo(people.program.timezone)
    today = now.astimezone(zone).date()
    last_monday = today - timedelta(days=today.weekday() + 7)
    for index, weekday in enumerate(PAST_WEEKDAYS):
        start = datetime.combine(last_monday + timedelta(days=weekday - 1), PAST_START, zone)
        session = await clinic.schedule_session(db, clinic.SessionPlan(
            program_id=people.program.id, title=GROUP_NAME, kind=SessionKind.GROUP,
            timezone=people.program.timezone, duration_minutes=LIVE_SESSION_MINUTES,
            therapist_ids=(people.therapist.id,), group_id=people.group.id), start)
        session.status = SessionStatus.ENDED
        for number, (name, pattern) in enumerate(PAST_WEEK_MINUTES.items()):
            minutes = pattern[index]
            if minutes is None:
                continue
            patient = people.patients[name]
            person, connection = patient_identity(patient.id), f"p-demo-{session.id}-{number}"
            joined = start + timedelta(minutes=LIVE_SESSION_MINUTES - minutes)
            for at, kind, detail in (
                    (joined - timedelta(minutes=2), AttendanceKind.CHECKED_IN,
                     {"location": "home", "address": patient.home_address}),
                    (joined, AttendanceKind.ADMITTED, {}),
                    (joined, AttendanceKind.MEDIA, {"audio": True, "video": True}),
                    (start + timedelta(minutes=LIVE_SESSION_MINUTES), AttendanceKind.LEFT, {})):
                db.add(AttendanceEvent(session_id=session.id, at=at, kind=kind, person=person,
                                       role="patient", connection=connection,
                                       patient_id=patient.id, detail=detail))
        db.add(AttendanceEvent(session_id=session.id, at=session.ends_at,
                               kind=AttendanceKind.SESSION_ENDED, detail={"present": []}))
    await db.flush()


async def demo_links(db: AsyncSession, signer: Signer, base_url: str, timezone: str,
                     now: datetime) -> dict[str, Any]:
    """The demo's ways in. Each call issues fresh personal links for the demo patients."""
    people = await seed(db, timezone, now)
    roster_ids = {p.id for p in await clinic.roster(db, people.group.id, now.date())}
    patients = []
    for patient in people.patients.values():
        token = await clinic.issue_patient_link(db, signer, patient, now)
        patients.append({"name": patient.display_name, "link": f"{base_url}/p/{token}",
                         "on_roster": patient.id in roster_ids})
    day_start = datetime.combine(now.date(), time(0), now.tzinfo)
    sessions = (await db.execute(clinic.sessions_between(
        day_start - timedelta(days=1), now + timedelta(days=2)))).scalars().all()
    return {
        "base_url": base_url,
        "therapist": {"email": THERAPIST["email"], "password": THERAPIST["password"],
                      "login": f"{base_url}/login"},
        "admin": {"email": ADMIN["email"], "password": ADMIN["password"],
                  "login": f"{base_url}/login"},
        "patients": patients,
        "sessions": [{"id": s.id, "title": s.title, "kind": s.kind.value,
                      "starts_at": s.starts_at.isoformat(), "ends_at": s.ends_at.isoformat(),
                      "room": f"{base_url}/sessions/{s.id}/room"}
                     for s in sessions if s.ends_at > now and s.status is not
                     SessionStatus.CANCELLED],
        "family_invites": await _family_invites(db, people, base_url, now),
    }


async def _family_invites(db: AsyncSession, people: DemoPeople, base_url: str,
                          now: datetime) -> list[dict[str, Any]]:
    """A fresh invite for the demo family member to the next family session."""
    session = (await db.execute(select(Session).where(
        Session.kind == SessionKind.FAMILY, Session.patient_id == people.family_member.patient_id,
        Session.status.in_([SessionStatus.SCHEDULED, SessionStatus.OPEN]))
        .order_by(Session.starts_at))).scalars().all()
    upcoming = [s for s in session if s.ends_at > now]
    if not upcoming:
        return []
    token = await family.issue_invite(db, upcoming[0], people.family_member, "demo", now)
    return [{"link": f"{base_url}/i/{token}", "session_id": upcoming[0].id,
             "family_member": people.family_member.name}]
