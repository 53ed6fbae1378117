"""Dosage alerts set aside for one week, each with a staff member's note.

A dismissal does not change the alert: ``vio.attendance.dosage`` still computes it (and exports
still carry the hours). It only takes that alert off the dashboard for that ISO week, and the
patient's dosage page says who set it aside, when, and why. Each dismissal is audited. Only an
alert the patient actually has that week can be dismissed, once, and only with a note.
Functions leave committing to the caller.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vio import audit_chain
from vio.attendance.dosage import DosageAlert, IsoWeek, WeeklyDosage
from vio.attendance.models import REASON_MAX_CHARS
from vio.identity import staff_identity
from vio.models import AlertDismissal, Patient, StaffUser

NOTE_MAX_CHARS = REASON_MAX_CHARS


class DismissalRefused(ValueError):
    """A dismissal that cannot be made; ``code`` says why, the message in words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_alert(value: object) -> DosageAlert:
    try:
        return DosageAlert(str(value))
    except ValueError:
        raise DismissalRefused("bad-alert", "Choose one of the patient's alerts.") from None


def parse_week(value: object) -> IsoWeek:
    try:
        return IsoWeek.parse(str(value))
    except ValueError:
        raise DismissalRefused("bad-week", "Give the week as 2026-W48.") from None


def checked_note(value: object) -> str:
    note = value.strip() if isinstance(value, str) else ""
    if not note:
        raise DismissalRefused("note-required",
                               "Write a note saying why the alert can be set aside.")
    if len(note) > NOTE_MAX_CHARS:
        raise DismissalRefused("note-too-long",
                               f"Keep the note under {NOTE_MAX_CHARS} characters.")
    return note


async def dismissals_for(db: AsyncSession, patient_ids: Collection[int],
                         weeks: Iterable[IsoWeek] | None = None,
                         ) -> dict[tuple[int, IsoWeek, DosageAlert], AlertDismissal]:
    """The dismissals of these patients' alerts (in ``weeks``, or every week)."""
    if not patient_ids:
        return {}
    query = select(AlertDismissal).where(AlertDismissal.patient_id.in_(sorted(patient_ids)))
    if weeks is not None:
        query = query.where(AlertDismissal.week_start.in_([w.monday for w in weeks]))
    found: dict[tuple[int, IsoWeek, DosageAlert], AlertDismissal] = {}
    for row in (await db.execute(query)).scalars():
        try:
            alert = DosageAlert(row.alert)
        except ValueError:
            continue  # an alert this version no longer raises
        found[(row.patient_id, IsoWeek.of_day(row.week_start), alert)] = row
    return found


def open_alerts(dosage: WeeklyDosage,
                dismissed: Collection[tuple[int, IsoWeek, DosageAlert]],
                ) -> list[tuple[DosageAlert, str]]:
    """The week's alerts, each with its reason, that no one has set aside."""
    reasons = list(dosage.reasons) + [""] * (len(dosage.alerts) - len(dosage.reasons))
    return [(alert, reason) for alert, reason in zip(dosage.alerts, reasons, strict=True)
            if (dosage.patient_id, dosage.week, alert) not in dismissed]


async def dismiss(db: AsyncSession, patient: Patient, dosage: WeeklyDosage, alert: DosageAlert,
                  note: object, staff: StaffUser, now: datetime) -> AlertDismissal:
    """Set ``alert`` aside for the week of ``dosage`` with a note; audited."""
    text = checked_note(note)
    if alert not in dosage.alerts:
        raise DismissalRefused("no-such-alert",
                               f"{patient.legal_name} has no such alert in {dosage.week}.")
    existing = await dismissals_for(db, [patient.id], [dosage.week])
    if (patient.id, dosage.week, alert) in existing:
        raise DismissalRefused("already-dismissed", "That alert is already dismissed.")
    row = AlertDismissal(patient_id=patient.id, week_start=dosage.week.monday,
                         alert=alert.value, note=text, dismissed_by=staff.id, dismissed_at=now)
    db.add(row)
    await audit_chain.audit(db, now, staff_identity(staff.id), "alert-dismissed",
                            f"patient:{patient.id}", week=str(dosage.week), alert=alert.value,
                            note=text)
    await db.flush()
    return row
