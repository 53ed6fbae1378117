"""Staff pages for attendance and dosage, and the patient's week summary.

- ``/staff/sessions/{id}/attendance``: each person's time on a timeline, minutes by modality,
  status, the therapist's overrides (with a reason) and the sign-off that locks the record.
- ``/staff/patients/{id}/dosage``: weekly hours against the target across the enrollment.
- ``/staff/dashboard``: this week's dosage for every active patient, alerts first; each alert
  can be dismissed for the week with a note (``POST /staff/patients/{id}/alerts``); the
  outreach list (``vio.pages.outreach``).
- ``/staff/exports/attendance.csv`` and ``.fhir.json`` (``?from=&to=``): audited downloads.

Charts are SVG drawn on the server from the geometry computed here; each has a table beside it
that says the same in text.

Who sees what is ``vio.policy``'s: a session's record its therapists and the program's admins,
a patient's dosage their therapists and admins, the dashboard each staff member's own patients
(an admin's whole program), exports a therapist's own sessions. Every view and export is
audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from vio.attendance import dismissals, records
from vio.attendance.dismissals import DismissalRefused
from vio.attendance.dosage import DosageAlert, IsoWeek, WeeklyDosage
from vio.attendance.export import ExportFormat, export_attendance, held_note, modifier_for
from vio.attendance.intervals import AttendanceStatus, Modality, Presence
from vio.attendance.models import AttendanceReview
from vio.attendance.records import ReviewRefused, SessionAttendance
from vio.identity import Viewer
from vio.models import Patient, Program, Session, SessionStatus
from vio.pages import forms
from vio.pages.common import (
    bad_request,
    checked_form,
    local_time,
    not_found,
    render,
    staff_page,
    state,
)
from vio.pages.outreach import outreach_list
from vio.pages.staff import session_for_staff, viewed
from vio.policy import Action, Scope, may

TIMELINE_WIDTH = 640
TIMELINE_ROW = 30
TIMELINE_BAR = 18
TIMELINE_AXIS = 22
TIMELINE_LABEL = 180  # room for names left of the bars
TIMELINE_RIGHT = 24  # room for the last time label
MINUTES_PER_TICK = 30
CHART_WIDTH = 640
CHART_HEIGHT = 220
CHART_MARGIN = 36
CHART_HEADROOM = 1.2  # the tallest of bars and target sits below the top
HOUR_TICK_STEPS = (1, 2, 3, 5, 10)
MAX_HOUR_TICKS = 6
EXPORT_MAX_DAYS = 366
SIGN_OFF_LOOKBACK_DAYS = 14
ALERT_LABELS = {DosageAlert.BELOW_TARGET_LAST_WEEK: "below target last week",
                DosageAlert.CANNOT_REACH_TARGET: "can't reach target this week",
                DosageAlert.CONSECUTIVE_ABSENCES: "absences in a row"}
MODALITY_LABELS = {Modality.AUDIO_VIDEO: "audio and video", Modality.AUDIO_ONLY: "audio only",
                   Modality.HELD_BY_THERAPIST: "audio and video, held by the therapist",
                   Modality.NO_MEDIA: "in the room, no media"}
PRESENCE_LABELS = {Presence.IN_ROOM: "in the room now", Presence.WAITING: "waiting",
                   Presence.NOT_HERE: "not here yet", Presence.LEFT: "left for now"}


# --- chart geometry ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str
    label: str


@dataclass(frozen=True)
class Tick:
    at: float
    label: str


def _x(moment: datetime, start: datetime, end: datetime) -> float:
    span = (end - start).total_seconds() or 1.0
    return round((moment - start).total_seconds() / span * TIMELINE_WIDTH, 1)


def timeline_bars(record: SessionAttendance, zone: ZoneInfo) -> list[list[Bar]]:
    """For each person in order, a bar for each stretch of attended time, by modality."""
    start, end = record.window.starts_at, record.window.ends_at
    rows = []
    for index, person in enumerate(record.people):
        y = TIMELINE_AXIS + index * TIMELINE_ROW
        rows.append([Bar(x=_x(span.start, start, end), y=y,
                         width=max(_x(span.end, start, end) - _x(span.start, start, end), 1),
                         height=TIMELINE_BAR, kind=span.modality.value,
                         label=(f"{local_time(span.start, zone, 'clock')} to "
                                f"{local_time(span.end, zone, 'time')}, "
                                f"{MODALITY_LABELS[span.modality]}"))
                     for span in person.attendance.spans])
    return rows


def timeline_ticks(record: SessionAttendance, zone: ZoneInfo) -> list[Tick]:
    start, end = record.window.starts_at, record.window.ends_at
    ticks, at = [], start
    while at <= end:
        ticks.append(Tick(_x(at, start, end), f"{at.astimezone(zone):%-I:%M}"))
        at += timedelta(minutes=MINUTES_PER_TICK)
    return ticks


def _hour_step(top: float) -> int:
    return next((s for s in HOUR_TICK_STEPS if top / s <= MAX_HOUR_TICKS), HOUR_TICK_STEPS[-1])


@dataclass(frozen=True)
class DosageChart:
    bars: list[Bar]
    target_y: float
    ticks: list[Tick]
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT
    margin: int = CHART_MARGIN


def dosage_chart(weeks: list[WeeklyDosage]) -> DosageChart:
    """Weekly attended hours as bars, and the target as a line, on one hour scale."""
    plot_height = CHART_HEIGHT - 2 * CHART_MARGIN
    plot_width = CHART_WIDTH - 2 * CHART_MARGIN
    target = max((w.target_hours for w in weeks), default=0.0)
    top = max([target, *(w.attended_hours for w in weeks), 1.0]) * CHART_HEADROOM

    def y(hours: float) -> float:
        return round(CHART_MARGIN + plot_height * (1 - hours / top), 1)

    slot = plot_width / max(len(weeks), 1)
    bars = [Bar(x=round(CHART_MARGIN + i * slot + slot * 0.15, 1), y=y(w.attended_hours),
                width=round(slot * 0.7, 1), height=round(y(0) - y(w.attended_hours), 1),
                kind="met" if w.met_target else "short",
                label=f"{w.week}: {w.attended_hours:.1f} of {w.target_hours:g} hours")
            for i, w in enumerate(weeks)]
    step = _hour_step(top)
    ticks = [Tick(y(h), str(h)) for h in range(0, int(top) + 1, step)]
    return DosageChart(bars=bars, target_y=y(target), ticks=ticks)


# --- pages --------------------------------------------------------------------------------------

async def _program(db: AsyncSession, viewer: Viewer) -> Program:
    assert viewer.staff is not None
    program = await db.get(Program, viewer.staff.program_id)
    assert program is not None
    return program


@staff_page()
async def session_attendance_page(request: Request, db: AsyncSession, viewer: Viewer,
                                  scope: Scope) -> Response:
    """One session's attendance: review it, override a status with a reason, sign it off."""
    session = await session_for_staff(db, scope, request.path_params["session_id"])
    if session is None:
        return not_found(request, "There is no such session.")
    program = await _program(db, viewer)
    now = state(request).clock.now()
    record = await records.session_record(db, session, program, now)
    error, status_code = None, 200
    if request.method == "POST":
        form = await checked_form(request)
        assert viewer.staff is not None
        try:
            action = form.get("action")
            if action == "override":
                try:
                    status = AttendanceStatus(str(form.get("status", "")))
                except ValueError:
                    raise ReviewRefused("bad-status", "Choose a status.") from None
                try:
                    person = forms.text(form, "person", "Person")
                    reason = forms.text(form, "reason", "Reason", required=False)
                except forms.FormProblem as problem:
                    raise ReviewRefused("bad-field", str(problem)) from None
                await records.override_status(db, record, person, status, reason,
                                              viewer.staff, now)
            elif action == "sign-off":
                if record.is_over(now) and not record.locked and form.get("confirm") != "yes":
                    raise ReviewRefused("confirm-required", "Tick the box to confirm that "
                                        "every status is reviewed; signing off locks them.")
                await records.sign_off(db, record, viewer.staff, now)
            else:
                raise ReviewRefused("unknown-action", "Unknown action.")
        except ReviewRefused as refusal:  # refused before anything was written
            error = str(refusal)
            status_code = 409 if refusal.code == "signed-off" else 400
        else:
            await db.commit()
            return RedirectResponse(request.url.path, status_code=303)
    zone = ZoneInfo(program.timezone)
    if request.method == "GET":
        await viewed(request, db, viewer, "attendance-view", f"session:{session.id}")
    overrides = await _override_history(db, session.id)
    names = await records.person_names(db, [p.person for p in record.people] + [
        f"staff:{r.by_staff_id}" for r in overrides])
    return render(
        request, "attendance/session.html", status_code=status_code, session=session,
        record=record, zone=zone, names=names, error=error, statuses=list(AttendanceStatus),
        rows=list(zip(record.people, timeline_bars(record, zone), strict=True)),
        ticks=timeline_ticks(record, zone), width=TIMELINE_WIDTH, label_width=TIMELINE_LABEL,
        right_margin=TIMELINE_RIGHT,
        height=TIMELINE_AXIS + TIMELINE_ROW * max(len(record.people), 1),
        row_height=TIMELINE_ROW, modifier_for=modifier_for, overrides=overrides,
        modality_labels=MODALITY_LABELS, now=now, live=record.is_live(now),
        over=record.is_over(now), presence_labels=PRESENCE_LABELS, held_note=held_note,
        program=program)


async def _override_history(db: AsyncSession, session_id: int) -> list[AttendanceReview]:
    return list((await db.execute(select(AttendanceReview).where(
        AttendanceReview.session_id == session_id).order_by(AttendanceReview.at,
                                                            AttendanceReview.id))).scalars())


@staff_page()
async def patient_dosage_page(request: Request, db: AsyncSession, viewer: Viewer,
                              scope: Scope) -> Response:
    """A patient's weekly hours against their target across the enrollment."""
    program = await _program(db, viewer)
    patient = await db.get(Patient, request.path_params["patient_id"])
    if not may(scope, Action.VIEW, patient):
        return not_found(request, "There is no such patient.")
    assert patient is not None
    await viewed(request, db, viewer, "dosage-view", f"patient:{patient.id}")
    now = state(request).clock.now()
    weeks = await records.patient_dosage(db, patient, program, now)
    dismissed = await dismissals.dismissals_for(db, [patient.id])
    names = await records.person_names(db, [f"staff:{d.dismissed_by}"
                                            for d in dismissed.values()])
    return render(request, "attendance/dosage.html", patient=patient, weeks=weeks,
                  chart=dosage_chart(weeks), program=program, alert_labels=ALERT_LABELS,
                  this_week=IsoWeek.containing(now, program.timezone), dismissed=dismissed,
                  names=names)


async def _awaiting_sign_off(db: AsyncSession, program: Program, viewer: Viewer,
                             now: datetime) -> list[Session]:
    sessions = await records.program_sessions(
        db, program.id, now - timedelta(days=SIGN_OFF_LOOKBACK_DAYS), now, viewer.staff)
    signed = set((await db.execute(select(AttendanceReview.session_id).where(
        AttendanceReview.session_id.in_([s.id for s in sessions]),
        AttendanceReview.signed_off_at.is_not(None)))).scalars())
    return [s for s in sessions
            if (s.ends_at <= now or s.status is SessionStatus.ENDED) and s.id not in signed
            and s.status is not SessionStatus.CANCELLED]


@staff_page()
async def dashboard(request: Request, db: AsyncSession, viewer: Viewer,
                    scope: Scope) -> Response:
    """This week's dosage for every active patient the viewer may see, alerts first."""
    program = await _program(db, viewer)
    now = state(request).clock.now()
    week = IsoWeek.containing(now, program.timezone)
    report = [(p, d) for p, d in await records.program_week_dosage(db, program, week, now)
              if may(scope, Action.VIEW, p)]
    await viewed(request, db, viewer, "dashboard-view", f"program:{program.id}",
                 patients=len(report))
    dismissed = await dismissals.dismissals_for(db, [p.id for p, _ in report], [week])
    flagged = [(p, d, open_) for p, d in report
               if (open_ := dismissals.open_alerts(d, dismissed))]
    today = now.astimezone(ZoneInfo(program.timezone)).date()
    export_from, export_to = last_month(today)
    return render(request, "attendance/dashboard.html", program=program, week=week,
                  report=report, flagged=flagged, alert_labels=ALERT_LABELS,
                  dismissed_count=len(dismissed),
                  awaiting=await _awaiting_sign_off(db, program, viewer, now),
                  outreach=await outreach_list(request, db, program, [p for p, _ in report],
                                               now),
                  zone=ZoneInfo(program.timezone), export_from=export_from,
                  export_to=export_to, note_max=dismissals.NOTE_MAX_CHARS)


def last_month(today: date) -> tuple[date, date]:
    """The last complete calendar month before ``today``: what a billing person exports."""
    first_of_this = today.replace(day=1)
    last = first_of_this - timedelta(days=1)
    return last.replace(day=1), last


@staff_page()
async def dismiss_alert(request: Request, db: AsyncSession, viewer: Viewer,
                        scope: Scope) -> Response:
    """Set one of a patient's alerts aside for a week, with a note; audited."""
    program = await _program(db, viewer)
    patient = await db.get(Patient, request.path_params["patient_id"])
    if not may(scope, Action.VIEW, patient):
        return not_found(request, "There is no such patient.")
    assert patient is not None and viewer.staff is not None
    form = await checked_form(request)
    now = state(request).clock.now()
    try:
        alert = dismissals.parse_alert(form.get("alert"))
        week = dismissals.parse_week(form.get("week"))
        if week > IsoWeek.containing(now, program.timezone):
            raise DismissalRefused("future-week", "Alerts of weeks to come can't be dismissed.")
        dosage = await records.patient_week_dosage(db, patient, program, week, now)
        await dismissals.dismiss(db, patient, dosage, alert, form.get("note"), viewer.staff,
                                 now)
    except DismissalRefused as refusal:  # refused before anything was written
        return bad_request(request, str(refusal))
    await db.commit()
    back = form.get("next")
    return RedirectResponse(back if back in ("/staff/dashboard",
                                             f"/staff/patients/{patient.id}/dosage")
                            else "/staff/dashboard", status_code=303)


class ExportRequestProblem(ValueError):
    pass


def _export_days(request: Request) -> tuple[date, date]:
    first = forms.parse_day(request.query_params.get("from"))
    last = forms.parse_day(request.query_params.get("to"))
    if first is None or last is None:
        raise ExportRequestProblem("Give the days to export as from=YYYY-MM-DD&to=YYYY-MM-DD.")
    if last < first:
        raise ExportRequestProblem("The export must end on or after the day it starts.")
    if (last - first).days >= EXPORT_MAX_DAYS:
        raise ExportRequestProblem(f"Export at most {EXPORT_MAX_DAYS} days at a time.")
    return first, last


async def _download(request: Request, db: AsyncSession, viewer: Viewer, scope: Scope,
                    export_format: ExportFormat) -> Response:
    program = await _program(db, viewer)
    if not may(scope, Action.EXPORT, program):
        return not_found(request, "There is nothing to export.")
    try:
        first, last = _export_days(request)
    except ExportRequestProblem as problem:
        return render(request, "message.html", status_code=400, title="Not possible",
                      message=str(problem))
    export = await export_attendance(db, program, first, last, export_format, viewer.actor,
                                     state(request).clock.now(), staff=viewer.staff)
    await db.commit()
    return Response(export.content, media_type=export.media_type, headers={
        "Content-Disposition": f'attachment; filename="{export.filename}"',
        "Cache-Control": "no-store"})


@staff_page()
async def export_csv(request: Request, db: AsyncSession, viewer: Viewer,
                     scope: Scope) -> Response:
    return await _download(request, db, viewer, scope, ExportFormat.CSV)


@staff_page()
async def export_fhir(request: Request, db: AsyncSession, viewer: Viewer,
                      scope: Scope) -> Response:
    return await _download(request, db, viewer, scope, ExportFormat.FHIR)


async def patient_week_summary(db: AsyncSession, patient: Patient, program: Program,
                               now: datetime) -> dict[str, Any]:
    """The patient's hours this week against their target, for their home page."""
    week = IsoWeek.containing(now, program.timezone)
    dosage = await records.patient_week_dosage(db, patient, program, week, now)
    return dosage.summary()


routes = [
    Route("/staff/sessions/{session_id:id}/attendance", session_attendance_page,
          methods=["GET", "POST"]),
    Route("/staff/patients/{patient_id:id}/dosage", patient_dosage_page),
    Route("/staff/dashboard", dashboard),
    Route("/staff/patients/{patient_id:id}/alerts", dismiss_alert, methods=["POST"]),
    Route("/staff/exports/attendance.csv", export_csv),
    Route("/staff/exports/attendance.fhir.json", export_fhir),
]
