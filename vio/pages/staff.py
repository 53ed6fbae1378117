"""Staff pages: today's sessions, patients, groups and rosters, sessions and series, audit.

Every page asks ``vio.policy`` what the viewer may see and do, and lists only that: an admin
their whole program, a therapist the groups and sessions they are assigned to and those
groups' and sessions' patients. A record outside that answers 404, an action the role may not
take 403. Every view of a patient's record or a roster is audited.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from vio import audit_chain, clinic, identity
from vio.attendance import records
from vio.attendance.intervals import Presence
from vio.attendance.records import SessionAttendance, SessionOutcome, person_names
from vio.identity import EndReason, parse_identity
from vio.models import (
    AgeGroup,
    AuditEvent,
    EnrollmentStatus,
    Group,
    GroupTherapist,
    LevelOfCare,
    Patient,
    Program,
    RosterMembership,
    Session,
    SessionKind,
    StaffUser,
    WaitingRoomPolicy,
    default_room_name,
)
from vio.pages import forms
from vio.pages.common import (
    Viewer,
    ViewerRole,
    checked_form,
    forbidden,
    local_time,
    not_found,
    recheck_rooms,
    render,
    staff_page,
    state,
)
from vio.pages.forms import FormProblem
from vio.policy import (
    Action,
    Scope,
    group_where,
    may,
    may_name_therapists,
    patient_where,
    staff_where,
)

AUDIT_PAGE_ROWS = 500
NOT_FOR_YOUR_ROLE = "Only a program admin can do that."
PAST_SESSION_DAYS = 28  # the Sessions page lists sessions this far back
UPCOMING_SESSION_DAYS = 28


def _program_day_bounds(program: Program, day: date) -> tuple[datetime, datetime]:
    zone = ZoneInfo(program.timezone)
    start = datetime.combine(day, time(0), zone)
    return start, datetime.combine(day + timedelta(days=1), time(0), zone)


async def program_of(db: AsyncSession, viewer: Viewer) -> Program:
    assert viewer.staff is not None
    program = await db.get(Program, viewer.staff.program_id)
    assert program is not None
    return program


async def viewed(request: Request, db: AsyncSession, viewer: Viewer, action: str,
                 target: str, **detail: object) -> None:
    """Audit one view of protected health information, committed now."""
    await audit_chain.audit(db, state(request).clock.now(), viewer.actor, action, target, **detail)
    await db.commit()


@staff_page()
async def today(request: Request, db: AsyncSession, viewer: Viewer, scope: Scope) -> Response:
    """A therapist's sessions today (an admin sees the whole program's)."""
    program = await program_of(db, viewer)
    now = state(request).clock.now()
    local_day = now.astimezone(ZoneInfo(program.timezone)).date()
    start, end = _program_day_bounds(program, local_day)
    assert viewer.staff is not None
    sessions = await clinic.sessions_for_staff(db, scope, start, end)
    # From the attendance log in the shared database: right whichever node holds the room.
    found = await records.session_attendance(db, sessions, program.present_threshold_percent,
                                             now)
    # Patients who said they can't make it (``vio.attendance.notices``), by name.
    names = await person_names(db, [p.person for r in found for p in r.patients if p.notice])
    return render(request, "staff/today.html", program=program, rows=found, now=now,
                  day=local_day, outcome=SessionOutcome, presence=Presence, names=names)


# --- patients ----------------------------------------------------------------------------

def _fill_patient(patient: Patient, form: FormData) -> None:
    patient.legal_name = forms.text(form, "legal_name", "Legal name")
    patient.room_name = forms.text(form, "room_name", "Room name", required=False) or None
    patient.level_of_care = forms.choice(form, "level_of_care", LevelOfCare, "Level of care")
    patient.age_group = forms.choice(form, "age_group", AgeGroup, "Age group")
    raw_target = form.get("weekly_target_override", "")
    target = raw_target.strip() if isinstance(raw_target, str) else ""
    if target:
        try:
            hours = float(target) if len(target) <= 8 and target.isascii() else -1.0
        except ValueError:
            hours = -1.0
        if not 0 <= hours <= 80:
            raise FormProblem("Weekly target must be a number of hours between 0 and 80.")
        patient.weekly_target_override = hours
    else:
        patient.weekly_target_override = None
    patient.enrolled_on = forms.day(form, "enrolled_on", "Enrollment start")
    patient.enrollment_ends_on = forms.day(form, "enrollment_ends_on", "Enrollment end")
    if patient.enrollment_ends_on < patient.enrolled_on:
        raise FormProblem("Enrollment must end after it starts.")
    patient.status = forms.choice(form, "status", EnrollmentStatus, "Status")
    patient.emergency_contact_name = forms.text(form, "emergency_contact_name",
                                                "Emergency contact", required=False)
    patient.emergency_contact_phone = forms.text(form, "emergency_contact_phone", "Phone",
                                                 required=False)
    patient.home_address = forms.text(form, "home_address", "Home address", required=False)
    patient.phone = forms.text(form, "phone", "Patient phone", required=False)
    patient.email = forms.email(form, "Email")
    patient.usual_location = forms.text(form, "usual_location", "Usual location",
                                        required=False)


@staff_page()
async def patients(request: Request, db: AsyncSession, viewer: Viewer,
                   scope: Scope) -> Response:
    program = await program_of(db, viewer)
    rows = (await db.execute(select(Patient).where(patient_where(scope))
                             .order_by(Patient.legal_name))).scalars().all()
    await viewed(request, db, viewer, "patient-list-view", f"program:{program.id}",
                 count=len(rows))
    return render(request, "staff/patients.html", patients=rows, program=program,
                  may_create=may(scope, Action.CREATE, program))


async def end_patient_sign_ins(request: Request, db: AsyncSession, patient_id: int,
                               reason: EndReason) -> None:
    """End every sign-in of the patient and take their connections out of live rooms."""
    await identity.end_sign_ins(db, state(request).clock.now(), reason, patient_id=patient_id)
    await db.commit()
    await recheck_rooms(request)


@staff_page()
async def patient_edit(request: Request, db: AsyncSession, viewer: Viewer,
                       scope: Scope) -> Response:
    """Create (``/staff/patients/new``) or edit a patient; issue or revoke their link."""
    program = await program_of(db, viewer)
    app = state(request)
    patient_id = request.path_params.get("patient_id")
    patient: Patient | None
    if patient_id is None:
        if not may(scope, Action.CREATE, program):
            return forbidden(request, NOT_FOR_YOUR_ROLE)
        today_ = app.clock.now().date()
        patient = Patient(program_id=program.id, level_of_care=LevelOfCare.IOP,
                          age_group=AgeGroup.ADULT, status=EnrollmentStatus.ACTIVE,
                          enrolled_on=today_, enrollment_ends_on=today_ + timedelta(weeks=8),
                          legal_name="")
    else:
        patient = await db.get(Patient, patient_id)
        if not may(scope, Action.VIEW, patient):
            return not_found(request, "There is no such patient.")
        assert patient is not None
    link = None
    error = None
    status_code = 200
    if request.method == "POST":
        form = await checked_form(request)
        action = form.get("action", "save")
        if action in ("issue-link", "revoke-links") and patient.id is not None:
            if not may(scope, Action.ISSUE_LINK, patient):
                return forbidden(request, NOT_FOR_YOUR_ROLE)
            if action == "issue-link":
                token = await clinic.issue_patient_link(db, app.signer, patient,
                                                        app.clock.now())
                link = f"{app.settings.public_base_url}/p/{token}"
                await audit_chain.audit(db, app.clock.now(), viewer.actor, "patient-link-issued",
                                        f"patient:{patient.id}")
                await db.commit()
            elif form.get("confirm") != "yes":
                error, status_code = ("Tick the box to confirm turning off every link; "
                                      "nothing was changed."), 400
            else:
                count = await clinic.revoke_patient_links(db, patient.id, app.clock.now())
                await audit_chain.audit(db, app.clock.now(), viewer.actor, "patient-links-revoked",
                                        f"patient:{patient.id}", count=count)
                await db.commit()
                await end_patient_sign_ins(request, db, patient.id, EndReason.LINKS_REVOKED)
        elif action == "save":
            if patient.id is not None and not may(scope, Action.EDIT, patient):
                return forbidden(request, "Only the patient's therapists and admins can "
                                          "change this record.")
            try:
                _fill_patient(patient, form)
            except FormProblem as problem:
                error, status_code = str(problem), 400  # nothing flushed; nothing kept
            else:
                if patient.id is None:
                    db.add(patient)
                await db.flush()
                await audit_chain.audit(db, app.clock.now(), viewer.actor, "patient-saved",
                                        f"patient:{patient.id}")
                await db.commit()
                return RedirectResponse(f"/staff/patients/{patient.id}", status_code=303)
        else:
            error, status_code = "Unknown action.", 400
    if patient.id is not None and request.method == "GET":
        await viewed(request, db, viewer, "patient-record-view", f"patient:{patient.id}")
    target = (patient.weekly_target_override if patient.weekly_target_override is not None
              else program.weekly_target_hours(patient.level_of_care, patient.age_group))
    return render(request, "staff/patient.html", status_code=status_code,
                  patient=patient, error=error, link=link, program=program,
                  levels=list(LevelOfCare), age_groups=list(AgeGroup),
                  statuses=list(EnrollmentStatus), target=target,
                  may_issue_links=patient.id is not None
                  and may(scope, Action.ISSUE_LINK, patient),
                  may_edit=patient.id is None or may(scope, Action.EDIT, patient),
                  default_room_name=default_room_name(patient.legal_name or ""))


# --- groups and rosters --------------------------------------------------------------------

@staff_page()
async def groups(request: Request, db: AsyncSession, viewer: Viewer, scope: Scope) -> Response:
    program = await program_of(db, viewer)
    error = None
    if request.method == "POST":
        form = await checked_form(request)
        if not may(scope, Action.CREATE, program):
            return forbidden(request, NOT_FOR_YOUR_ROLE)
        try:
            name = forms.text(form, "name", "A group's name")
        except FormProblem as problem:
            error = str(problem)
        else:
            group = Group(program_id=program.id, name=name)
            db.add(group)
            await db.flush()
            await audit_chain.audit(db, state(request).clock.now(), viewer.actor, "group-created",
                                    f"group:{group.id}")
            await db.commit()
            return RedirectResponse(f"/staff/groups/{group.id}", status_code=303)
    rows = (await db.execute(select(Group).where(group_where(scope)).order_by(Group.name))
            ).scalars().all()
    return render(request, "staff/groups.html", groups=rows, error=error,
                  may_create=may(scope, Action.CREATE, program),
                  status_code=400 if error else 200)


async def _group_change(db: AsyncSession, program: Program, group: Group, action: object,
                        form: FormData) -> None:
    if action == "add-patient":
        patient = await db.get(Patient, forms.record_id(form, "patient_id") or 0)
        if patient is None or patient.program_id != program.id:
            raise FormProblem("Choose a patient.")
        db.add(RosterMembership(group_id=group.id, patient_id=patient.id,
                                joined_on=forms.day(form, "joined_on", "Start date")))
    elif action == "end-membership":
        membership = await db.get(RosterMembership, forms.record_id(form, "membership_id") or 0)
        if membership is None or membership.group_id != group.id:
            raise FormProblem("There is no such roster entry.")
        if form.get("confirm") != "yes":
            raise FormProblem("Tick the box to confirm ending the membership.")
        left_on = forms.day(form, "left_on", "Leave date")
        if left_on < membership.joined_on:
            raise FormProblem("A patient can't leave before joining.")
        membership.left_on = left_on
    elif action == "add-therapist":
        staff = await db.get(StaffUser, forms.record_id(form, "staff_id") or 0)
        if staff is None or staff.program_id != program.id:
            raise FormProblem("Choose a therapist.")
        if await db.get(GroupTherapist, (group.id, staff.id)) is None:
            db.add(GroupTherapist(group_id=group.id, staff_id=staff.id))
    else:
        raise FormProblem("Unknown action.")


@staff_page()
async def group_detail(request: Request, db: AsyncSession, viewer: Viewer,
                       scope: Scope) -> Response:
    """A group's therapists and roster; admins add or end memberships and assign staff."""
    program = await program_of(db, viewer)
    group = await db.get(Group, request.path_params["group_id"])
    if not may(scope, Action.VIEW, group):
        return not_found(request, "There is no such group.")
    assert group is not None
    app = state(request)
    error = None
    if request.method == "POST":
        form = await checked_form(request)
        if not may(scope, Action.ASSIGN, group):
            return forbidden(request, NOT_FOR_YOUR_ROLE)
        action = form.get("action")
        try:
            await _group_change(db, program, group, action, form)
        except FormProblem as problem:
            error = str(problem)  # refused before anything was written
        else:
            await audit_chain.audit(db, app.clock.now(), viewer.actor, f"group-{action}",
                                    f"group:{group.id}")
            await db.commit()
            return RedirectResponse(f"/staff/groups/{group.id}", status_code=303)
    memberships = (await db.execute(
        select(RosterMembership, Patient).join(Patient, Patient.id == RosterMembership.patient_id)
        .where(RosterMembership.group_id == group.id)
        .order_by(Patient.legal_name))).all()
    therapist_ids = await clinic.group_therapist_ids(db, group.id)
    all_staff = (await db.execute(select(StaffUser).where(staff_where(scope))
                                  .order_by(StaffUser.name))).scalars().all()
    all_patients = (await db.execute(select(Patient).where(Patient.program_id == program.id)
                                     .order_by(Patient.legal_name))).scalars().all() \
        if may(scope, Action.ASSIGN, group) else []
    if request.method == "GET":
        await viewed(request, db, viewer, "roster-view", f"group:{group.id}")
    return render(request, "staff/group.html", status_code=400 if error else 200, group=group,
                  memberships=memberships, staff=all_staff, therapist_ids=therapist_ids,
                  patients=all_patients, error=error, today=app.clock.now().date(),
                  may_assign=may(scope, Action.ASSIGN, group))


# --- sessions -----------------------------------------------------------------------------

async def _plan_from_form(db: AsyncSession, program: Program, scope: Scope,
                          form: FormData) -> clinic.SessionPlan:
    kind = forms.choice(form, "kind", SessionKind, "Session kind")
    duration = forms.whole(form.get("duration_minutes"), 5, 8 * 60)
    if duration is None:
        raise FormProblem("Duration must be whole minutes, from 5 to 480.")
    group_id = forms.record_id(form, "group_id")
    patient_id = forms.record_id(form, "patient_id")
    therapist_ids = tuple(dict.fromkeys(
        i for i in (forms.whole(v if isinstance(v, str) else None)
                    for v in form.getlist("therapist_ids")) if i is not None))
    group = await db.get(Group, group_id) if group_id is not None else None
    patient = await db.get(Patient, patient_id) if patient_id is not None else None
    if (group_id is not None and not may(scope, Action.SCHEDULE, group)) or (
            patient_id is not None and not may(scope, Action.SCHEDULE, patient)):
        raise FormProblem("Choose a group or patient you work with.")
    for staff_id in therapist_ids:
        staff = await db.get(StaffUser, staff_id)
        if staff is None or staff.program_id != program.id:
            raise FormProblem("Choose therapists from this program.")
    assigned = await clinic.group_therapist_ids(db, group.id) if group is not None else []
    if not may(scope, Action.SCHEDULE, program) and not may_name_therapists(
            scope, therapist_ids, assigned):
        raise FormProblem("Name yourself, and only therapists of this group; an admin "
                          "assigns others.")
    try:
        waiting_room = WaitingRoomPolicy(
            forms.text(form, "waiting_room", "Entering the room", required=False)
            or "therapist-admits")
    except ValueError as exc:
        raise FormProblem("Choose how people enter the room.") from exc
    plan = clinic.SessionPlan(
        waiting_room=waiting_room,
        program_id=program.id, title=forms.text(form, "title", "Title"), kind=kind,
        timezone=program.timezone, duration_minutes=duration, therapist_ids=therapist_ids,
        group_id=group_id, patient_id=patient_id)
    try:
        plan.check()
    except ValueError as exc:
        raise FormProblem(str(exc)) from exc
    return plan


@staff_page()
async def sessions(request: Request, db: AsyncSession, viewer: Viewer,
                   scope: Scope) -> Response:
    """Upcoming sessions, the past four weeks' with how each went, and forms for a one-off
    session or a weekly series."""
    program = await program_of(db, viewer)
    app = state(request)
    error = None
    if request.method == "POST":
        form = await checked_form(request)
        try:
            plan = await _plan_from_form(db, program, scope, form)
            first_day = forms.day(form, "first_day", "Date")
            local_start = forms.clock_time(form, "local_start", "Start time")
            if form.get("repeat") == "weekly":
                weeks = forms.whole(form.get("weeks"), 1, 52)
                if weeks is None:
                    raise FormProblem("A series runs from 1 to 52 weeks.")
                weekdays = [v for v in form.getlist("weekdays")
                            if isinstance(v, str) and forms.whole(v, 1, 7) is not None]
                try:
                    created = await clinic.schedule_series(
                        db, plan, first_day, weeks, ",".join(weekdays), local_start)
                except ValueError as exc:
                    raise FormProblem(str(exc)) from exc
            else:
                start = datetime.combine(first_day, local_start, ZoneInfo(program.timezone))
                created = [await clinic.schedule_session(db, plan, start)]
        except FormProblem as problem:
            error = str(problem)  # refused before anything was written
        else:
            await audit_chain.audit(db, app.clock.now(), viewer.actor, "sessions-scheduled",
                                    f"session:{created[0].id}", count=len(created))
            await db.commit()
            return RedirectResponse("/staff/sessions", status_code=303)
    now = app.clock.now()
    assert viewer.staff is not None
    listed = await clinic.sessions_for_staff(db, scope, now - timedelta(days=PAST_SESSION_DAYS),
                                             now + timedelta(days=UPCOMING_SESSION_DAYS))
    started = await records.session_attendance(
        db, [s for s in listed if s.starts_at <= now], program.present_threshold_percent)
    past: list[SessionAttendance] = [r for r in started if r.is_over(now)]
    over = {r.session.id for r in past}
    upcoming = [s for s in listed if s.id not in over]
    group_rows = (await db.execute(select(Group).where(group_where(scope))
                                   .order_by(Group.name))).scalars().all()
    patient_rows = (await db.execute(select(Patient).where(patient_where(scope))
                                     .order_by(Patient.legal_name))).scalars().all()
    staff_query = select(StaffUser).where(staff_where(scope), StaffUser.active.is_(True))
    if not scope.is_admin:
        staff_query = staff_query.where(or_(StaffUser.id == viewer.staff.id, StaffUser.id.in_(
            select(GroupTherapist.staff_id).where(GroupTherapist.group_id.in_(
                scope.group_ids)))))
    staff = (await db.execute(staff_query.order_by(StaffUser.name))).scalars().all()
    return render(request, "staff/sessions.html", status_code=400 if error else 200,
                  sessions=upcoming, past=list(reversed(past)), now=now,
                  past_days=PAST_SESSION_DAYS, groups=group_rows, patients=patient_rows,
                  staff=staff, kinds=list(SessionKind), error=error, program=program,
                  weekdays=[(1, "Mon"), (2, "Tue"), (3, "Wed"), (4, "Thu"), (5, "Fri"),
                            (6, "Sat"), (7, "Sun")])


# --- audit --------------------------------------------------------------------------------

@staff_page(ViewerRole.ADMIN)
async def audit_log(request: Request, db: AsyncSession, viewer: Viewer,
                    scope: Scope) -> Response:
    """The program's audit log, newest first, with names, in program time; filter by person,
    action and days."""
    program = await program_of(db, viewer)
    if not may(scope, Action.VIEW_AUDIT, program):
        return forbidden(request, NOT_FOR_YOUR_ROLE)
    zone = ZoneInfo(program.timezone)
    params = request.query_params
    query = select(AuditEvent).where(AuditEvent.program_id == program.id)
    person = params.get("person", "")
    if person and parse_identity(person) is not None:
        query = query.where(or_(AuditEvent.actor == person, AuditEvent.target == person))
    actions = list((await db.execute(select(AuditEvent.action).distinct().where(
        AuditEvent.program_id == program.id).order_by(AuditEvent.action))).scalars())
    action = params.get("action", "")
    if action in actions:
        query = query.where(AuditEvent.action == action)
    first, last = forms.parse_day(params.get("from")), forms.parse_day(params.get("to"))
    if first is not None:
        query = query.where(AuditEvent.at >= datetime.combine(first, time(0), zone))
    if last is not None:
        query = query.where(AuditEvent.at < datetime.combine(last + timedelta(days=1),
                                                              time(0), zone))
    events = (await db.execute(query.order_by(AuditEvent.seq.desc()).limit(AUDIT_PAGE_ROWS))
              ).scalars().all()
    people = (await db.execute(select(StaffUser.id, StaffUser.name).where(
        StaffUser.program_id == program.id).order_by(StaffUser.name))).all()
    patients_ = (await db.execute(select(Patient.id, Patient.legal_name).where(
        Patient.program_id == program.id).order_by(Patient.legal_name))).all()
    choices = [(f"staff:{i}", n) for i, n in people] + [(f"patient:{i}", n) for i, n in patients_]
    names = await _audit_names(db, program, events, dict(choices))
    await audit_chain.audit(db, state(request).clock.now(), viewer.actor, "audit-log-view",
                            f"program:{program.id}", person_filter=person, action_filter=action)
    await db.commit()
    return render(request, "staff/audit.html", events=events, names=names, zone=zone,
                  program=program, choices=choices, actions=actions, person=person,
                  action=action, first=first or "", last=last or "", limit=AUDIT_PAGE_ROWS,
                  detail=lambda d: readable_detail(d, names))


async def _audit_names(db: AsyncSession, program: Program, events: Sequence[AuditEvent],
                       people: dict[str, str]) -> dict[str, str]:
    """Names for the identities and records the events mention, only this program's (an
    admin sees their whole program; anything else stays an id)."""
    names = dict(people)
    mentioned = {e.target for e in events} | {
        v for e in events for v in e.detail.values() if isinstance(v, str)}
    session_ids = sorted({int(m.partition(":")[2]) for m in mentioned
                          if m.startswith("session:") and m.partition(":")[2].isdigit()}
                         | {e.detail["session"] for e in events
                            if isinstance(e.detail.get("session"), int)})
    zone = ZoneInfo(program.timezone)
    if session_ids:
        for sid, title, starts_at in await db.execute(
                select(Session.id, Session.title, Session.starts_at).where(
                    Session.program_id == program.id, Session.id.in_(session_ids[:1000]))):
            names[f"session:{sid}"] = f"{title}, {local_time(starts_at, zone, 'datetime')}"
    for gid, name in await db.execute(select(Group.id, Group.name).where(
            Group.program_id == program.id)):
        names[f"group:{gid}"] = f"group {name}"
    names[f"program:{program.id}"] = program.name
    names.update({k: v for k, v in (await person_names(db, [
        m for m in mentioned if m.startswith("family-invite:")])).items()})
    return names


def _readable(value: object, names: dict[str, str]) -> str:
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_readable(v, names) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{_readable(k, names)}: {_readable(v, names)}"
                         for k, v in value.items())
    return str(value)


def readable_detail(detail: dict[str, object], names: dict[str, str]) -> list[tuple[str, str]]:
    """An audit event's detail as (label, text) pairs, identities and ids named."""
    pairs = []
    for key, value in detail.items():
        if key == "session" and isinstance(value, int):
            value = f"session:{value}"
        pairs.append((key.replace("_", " "), _readable(value, names)))
    return pairs


async def session_for_staff(db: AsyncSession, scope: Scope, session_id: int) -> Session | None:
    """The session if this staff member may run it (``vio.policy``: assigned, or an admin of
    its program)."""
    session = await db.get(Session, session_id)
    return session if may(scope, Action.RUN_SESSION, session) else None


routes = [
    Route("/staff", today),
    Route("/staff/patients", patients),
    Route("/staff/patients/new", patient_edit, methods=["GET", "POST"]),
    Route("/staff/patients/{patient_id:id}", patient_edit, methods=["GET", "POST"]),
    Route("/staff/groups", groups, methods=["GET", "POST"]),
    Route("/staff/groups/{group_id:id}", group_detail, methods=["GET", "POST"]),
    Route("/staff/sessions", sessions, methods=["GET", "POST"]),
    Route("/staff/audit", audit_log),
]
