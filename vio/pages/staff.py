"""Staff pages: today's sessions, patients, groups and rosters, sessions and series."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from vio import clinic
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
    StaffRole,
    StaffUser,
    WaitingRoomPolicy,
    default_room_name,
)
from vio.pages.common import (
    Viewer,
    ViewerRole,
    checked_form,
    not_found,
    render,
    staff_page,
    state,
)


def _program_day_bounds(program: Program, day: date) -> tuple[datetime, datetime]:
    zone = ZoneInfo(program.timezone)
    start = datetime.combine(day, time(0), zone)
    return start, datetime.combine(day + timedelta(days=1), time(0), zone)


async def _program(db: AsyncSession, viewer: Viewer) -> Program:
    assert viewer.staff is not None
    program = await db.get(Program, viewer.staff.program_id)
    assert program is not None
    return program


@staff_page()
async def today(request: Request, db: AsyncSession, viewer: Viewer) -> Response:
    """A therapist's sessions today (an admin sees the whole program's)."""
    program = await _program(db, viewer)
    now = state(request).clock.now()
    local_day = now.astimezone(ZoneInfo(program.timezone)).date()
    start, end = _program_day_bounds(program, local_day)
    assert viewer.staff is not None
    sessions = await clinic.sessions_for_staff(db, viewer.staff, start, end)
    return render(request, "staff/today.html", program=program, sessions=sessions, now=now,
                  day=local_day)


# --- patients ----------------------------------------------------------------------------

class FormProblem(ValueError):
    pass


def _text(form: FormData, name: str, label: str, required: bool = True) -> str:
    value = str(form.get(name, "")).strip()
    if required and not value:
        raise FormProblem(f"{label} is required.")
    return value


def _date(form: FormData, name: str, label: str) -> date:
    try:
        return date.fromisoformat(_text(form, name, label))
    except ValueError as exc:
        raise FormProblem(f"{label} must be a date (YYYY-MM-DD).") from exc


E = TypeVar("E", LevelOfCare, AgeGroup, EnrollmentStatus, SessionKind)


def _choice(form: FormData, name: str, enum_type: type[E], label: str) -> E:
    try:
        return enum_type(_text(form, name, label))
    except ValueError as exc:
        raise FormProblem(f"Choose a {label.lower()}.") from exc


def _fill_patient(patient: Patient, form: FormData) -> None:
    patient.legal_name = _text(form, "legal_name", "Legal name")
    patient.room_name = _text(form, "room_name", "Room name", required=False) or None
    patient.level_of_care = _choice(form, "level_of_care", LevelOfCare, "Level of care")
    patient.age_group = _choice(form, "age_group", AgeGroup, "Age group")
    target = _text(form, "weekly_target_override", "Weekly target", required=False)
    try:
        patient.weekly_target_override = float(target) if target else None
    except ValueError as exc:
        raise FormProblem("Weekly target must be a number of hours.") from exc
    patient.enrolled_on = _date(form, "enrolled_on", "Enrollment start")
    patient.enrollment_ends_on = _date(form, "enrollment_ends_on", "Enrollment end")
    if patient.enrollment_ends_on < patient.enrolled_on:
        raise FormProblem("Enrollment must end after it starts.")
    patient.status = _choice(form, "status", EnrollmentStatus, "Status")
    patient.emergency_contact_name = _text(form, "emergency_contact_name", "Emergency contact",
                                           required=False)
    patient.emergency_contact_phone = _text(form, "emergency_contact_phone", "Phone",
                                            required=False)
    patient.usual_location = _text(form, "usual_location", "Usual location", required=False)


@staff_page()
async def patients(request: Request, db: AsyncSession, viewer: Viewer) -> Response:
    program = await _program(db, viewer)
    rows = (await db.execute(select(Patient).where(Patient.program_id == program.id)
                             .order_by(Patient.legal_name))).scalars().all()
    return render(request, "staff/patients.html", patients=rows, program=program)


@staff_page()
async def patient_edit(request: Request, db: AsyncSession, viewer: Viewer) -> Response:
    """Create (``/staff/patients/new``) or edit a patient; issue or revoke their link."""
    program = await _program(db, viewer)
    app = state(request)
    patient_id = request.path_params.get("patient_id")
    patient: Patient | None
    if patient_id is None:
        today_ = app.clock.now().date()
        patient = Patient(program_id=program.id, level_of_care=LevelOfCare.IOP,
                          age_group=AgeGroup.ADULT, status=EnrollmentStatus.ACTIVE,
                          enrolled_on=today_, enrollment_ends_on=today_ + timedelta(weeks=8),
                          legal_name="")
    else:
        patient = await db.get(Patient, patient_id)
        if patient is None or patient.program_id != program.id:
            return not_found(request, "There is no such patient.")
    link = None
    error = None
    if request.method == "POST":
        form = await checked_form(request)
        action = form.get("action", "save")
        if action == "issue-link" and patient.id is not None:
            token = await clinic.issue_patient_link(db, app.signer, patient, app.clock.now())
            link = f"{app.settings.public_base_url}/p/{token}"
            await clinic.audit(db, app.clock.now(), viewer.actor, "patient-link-issued",
                               f"patient:{patient.id}")
            await db.commit()
        elif action == "revoke-links" and patient.id is not None:
            count = await clinic.revoke_patient_links(db, patient.id, app.clock.now())
            await clinic.audit(db, app.clock.now(), viewer.actor, "patient-links-revoked",
                               f"patient:{patient.id}", count=count)
            await db.commit()
        else:
            try:
                _fill_patient(patient, form)
            except FormProblem as problem:
                error = str(problem)
            else:
                if patient.id is None:
                    db.add(patient)
                await db.flush()
                await clinic.audit(db, app.clock.now(), viewer.actor, "patient-saved",
                                   f"patient:{patient.id}")
                await db.commit()
                return RedirectResponse(f"/staff/patients/{patient.id}", status_code=303)
    target = (patient.weekly_target_override if patient.weekly_target_override is not None
              else program.weekly_target_hours(patient.level_of_care, patient.age_group))
    return render(request, "staff/patient.html", status_code=400 if error else 200,
                  patient=patient, error=error, link=link, program=program,
                  levels=list(LevelOfCare), age_groups=list(AgeGroup),
                  statuses=list(EnrollmentStatus), target=target,
                  default_room_name=default_room_name(patient.legal_name or ""))


# --- groups and rosters --------------------------------------------------------------------

@staff_page()
async def groups(request: Request, db: AsyncSession, viewer: Viewer) -> Response:
    program = await _program(db, viewer)
    error = None
    if request.method == "POST":
        form = await checked_form(request)
        name = str(form.get("name", "")).strip()
        if not name:
            error = "A group needs a name."
        else:
            group = Group(program_id=program.id, name=name)
            db.add(group)
            await db.flush()
            await clinic.audit(db, state(request).clock.now(), viewer.actor, "group-created",
                               f"group:{group.id}")
            await db.commit()
            return RedirectResponse(f"/staff/groups/{group.id}", status_code=303)
    rows = (await db.execute(select(Group).where(Group.program_id == program.id)
                             .order_by(Group.name))).scalars().all()
    return render(request, "staff/groups.html", groups=rows, error=error,
                  status_code=400 if error else 200)


@staff_page()
async def group_detail(request: Request, db: AsyncSession, viewer: Viewer) -> Response:
    """A group's therapists and roster; add or end memberships."""
    program = await _program(db, viewer)
    group = await db.get(Group, request.path_params["group_id"])
    if group is None or group.program_id != program.id:
        return not_found(request, "There is no such group.")
    app = state(request)
    error = None
    if request.method == "POST":
        form = await checked_form(request)
        action = form.get("action")
        try:
            if action == "add-patient":
                patient = await db.get(Patient, int(str(form.get("patient_id", "0"))))
                if patient is None or patient.program_id != program.id:
                    raise FormProblem("Choose a patient.")
                db.add(RosterMembership(group_id=group.id, patient_id=patient.id,
                                        joined_on=_date(form, "joined_on", "Start date")))
            elif action == "end-membership":
                membership = await db.get(RosterMembership,
                                          int(str(form.get("membership_id", "0"))))
                if membership is None or membership.group_id != group.id:
                    raise FormProblem("There is no such roster entry.")
                left_on = _date(form, "left_on", "Leave date")
                if left_on < membership.joined_on:
                    raise FormProblem("A patient can't leave before joining.")
                membership.left_on = left_on
            elif action == "add-therapist":
                staff = await db.get(StaffUser, int(str(form.get("staff_id", "0"))))
                if staff is None or staff.program_id != program.id:
                    raise FormProblem("Choose a therapist.")
                if await db.get(GroupTherapist, (group.id, staff.id)) is None:
                    db.add(GroupTherapist(group_id=group.id, staff_id=staff.id))
            else:
                raise FormProblem("Unknown action.")
        except FormProblem as problem:
            error = str(problem)
        else:
            await clinic.audit(db, app.clock.now(), viewer.actor, f"group-{action}",
                               f"group:{group.id}")
            await db.commit()
            return RedirectResponse(f"/staff/groups/{group.id}", status_code=303)
    memberships = (await db.execute(
        select(RosterMembership, Patient).join(Patient, Patient.id == RosterMembership.patient_id)
        .where(RosterMembership.group_id == group.id)
        .order_by(Patient.legal_name))).all()
    therapist_ids = await clinic.group_therapist_ids(db, group.id)
    all_staff = (await db.execute(select(StaffUser).where(StaffUser.program_id == program.id)
                                  .order_by(StaffUser.name))).scalars().all()
    all_patients = (await db.execute(select(Patient).where(Patient.program_id == program.id)
                                     .order_by(Patient.legal_name))).scalars().all()
    return render(request, "staff/group.html", status_code=400 if error else 200, group=group,
                  memberships=memberships, staff=all_staff, therapist_ids=therapist_ids,
                  patients=all_patients, error=error, today=app.clock.now().date())


# --- sessions -----------------------------------------------------------------------------

async def _plan_from_form(db: AsyncSession, program: Program, form: FormData) -> clinic.SessionPlan:
    kind = _choice(form, "kind", SessionKind, "Session kind")
    try:
        duration = int(_text(form, "duration_minutes", "Duration"))
    except ValueError as exc:
        raise FormProblem("Duration must be whole minutes.") from exc
    group_id = _text(form, "group_id", "Group", required=False)
    patient_id = _text(form, "patient_id", "Patient", required=False)
    therapist_ids = tuple(int(str(v)) for v in form.getlist("therapist_ids") if str(v).isdigit())
    for staff_id in therapist_ids:
        staff = await db.get(StaffUser, staff_id)
        if staff is None or staff.program_id != program.id:
            raise FormProblem("Choose therapists from this program.")
    try:
        waiting_room = WaitingRoomPolicy(str(form.get("waiting_room") or "therapist-admits"))
    except ValueError as exc:
        raise FormProblem("Choose how people enter the room.") from exc
    plan = clinic.SessionPlan(
        waiting_room=waiting_room,
        program_id=program.id, title=_text(form, "title", "Title"), kind=kind,
        timezone=program.timezone, duration_minutes=duration, therapist_ids=therapist_ids,
        group_id=int(group_id) if group_id.isdigit() else None,
        patient_id=int(patient_id) if patient_id.isdigit() else None)
    try:
        plan.check()
    except ValueError as exc:
        raise FormProblem(str(exc)) from exc
    return plan


def _local_time(form: FormData) -> time:
    try:
        return time.fromisoformat(_text(form, "local_start", "Start time"))
    except ValueError as exc:
        raise FormProblem("Start time must look like 18:00.") from exc


@staff_page()
async def sessions(request: Request, db: AsyncSession, viewer: Viewer) -> Response:
    """Upcoming sessions, and forms for a one-off session or a weekly series."""
    program = await _program(db, viewer)
    app = state(request)
    error = None
    if request.method == "POST":
        form = await checked_form(request)
        try:
            plan = await _plan_from_form(db, program, form)
            first_day = _date(form, "first_day", "Date")
            local_start = _local_time(form)
            if form.get("repeat") == "weekly":
                try:
                    weeks = int(_text(form, "weeks", "Weeks"))
                    created = await clinic.schedule_series(
                        db, plan, first_day, weeks, ",".join(
                            str(v) for v in form.getlist("weekdays")), local_start)
                except ValueError as exc:
                    raise FormProblem(str(exc)) from exc
            else:
                start = datetime.combine(first_day, local_start, ZoneInfo(program.timezone))
                created = [await clinic.schedule_session(db, plan, start)]
        except FormProblem as problem:
            error = str(problem)
        else:
            await clinic.audit(db, app.clock.now(), viewer.actor, "sessions-scheduled",
                               f"session:{created[0].id}", count=len(created))
            await db.commit()
            return RedirectResponse("/staff/sessions", status_code=303)
    now = app.clock.now()
    assert viewer.staff is not None
    upcoming = await clinic.sessions_for_staff(db, viewer.staff, now - timedelta(days=1),
                                               now + timedelta(days=28))
    group_rows = (await db.execute(select(Group).where(Group.program_id == program.id))).scalars()
    patient_rows = (await db.execute(select(Patient).where(Patient.program_id == program.id)
                                     .order_by(Patient.legal_name))).scalars()
    staff = (await db.execute(select(StaffUser).where(StaffUser.program_id == program.id)
                              .order_by(StaffUser.name))).scalars().all()
    return render(request, "staff/sessions.html", status_code=400 if error else 200,
                  sessions=upcoming, groups=list(group_rows), patients=list(patient_rows),
                  staff=staff, kinds=list(SessionKind), error=error, program=program,
                  weekdays=[(1, "Mon"), (2, "Tue"), (3, "Wed"), (4, "Thu"), (5, "Fri"),
                            (6, "Sat"), (7, "Sun")])


@staff_page(ViewerRole.ADMIN)
async def audit_log(request: Request, db: AsyncSession, viewer: Viewer) -> Response:
    events = (await db.execute(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(500))
              ).scalars().all()
    return render(request, "staff/audit.html", events=events)


async def session_for_staff(db: AsyncSession, viewer: Viewer, session_id: int) -> Session | None:
    """The session if this staff member may run it: assigned therapist, or admin."""
    session = await db.get(Session, session_id)
    if session is None or viewer.staff is None or session.program_id != viewer.staff.program_id:
        return None
    if viewer.staff.role is StaffRole.ADMIN:
        return session
    return session if viewer.staff.id in await clinic.session_therapist_ids(db, session_id) \
        else None


routes = [
    Route("/staff", today),
    Route("/staff/patients", patients),
    Route("/staff/patients/new", patient_edit, methods=["GET", "POST"]),
    Route("/staff/patients/{patient_id:int}", patient_edit, methods=["GET", "POST"]),
    Route("/staff/groups", groups, methods=["GET", "POST"]),
    Route("/staff/groups/{group_id:int}", group_detail, methods=["GET", "POST"]),
    Route("/staff/sessions", sessions, methods=["GET", "POST"]),
    Route("/staff/audit", audit_log),
]
