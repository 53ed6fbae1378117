"""Attendance records besides the room's log: the therapist's review (status overrides and
the sign-off), patients' notices that they can't make it, and outreach after absences.

Review rows are appended, never changed. An override row names a person, the status they are
given and why; the latest override for a person wins. A sign-off row names no person; once a
session has one, its attendance is locked and further overrides are refused.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Enum, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from vio.attendance.intervals import AttendanceStatus
from vio.models import Base

REASON_MAX_CHARS = 500


class AttendanceReview(Base):
    __tablename__ = "attendance_reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    person: Mapped[str | None] = mapped_column(String(80))
    status: Mapped[AttendanceStatus | None] = mapped_column(Enum(
        AttendanceStatus, native_enum=False, length=32,
        values_callable=lambda e: [m.value for m in e]))
    reason: Mapped[str] = mapped_column(String(REASON_MAX_CHARS), default="")
    by_staff_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"))
    at: Mapped[datetime]
    signed_off_at: Mapped[datetime | None]
    signed_off_by: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id"))

    @property
    def is_sign_off(self) -> bool:
        return self.signed_off_at is not None


class AbsenceNotice(Base):
    """A patient's word, ahead of a session, that they can't make it ("I can't make it" in a
    reminder, ``vio.attendance.notices``).

    It makes an absence from that session excused: attendance, dosage and the outreach rule
    read it. Coming after all ends it: attended time is what was measured. A therapist's
    override still has the last word. One per patient and session; a second is refused.
    """

    __tablename__ = "absence_notices"
    __table_args__ = (UniqueConstraint("session_id", "patient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    reason: Mapped[str] = mapped_column(String(REASON_MAX_CHARS), default="")
    at: Mapped[datetime]
    # The message whose link the patient followed.
    outbox_message_id: Mapped[int | None]


class OutreachContact(Base):
    """A staff member reached out to a patient after absences in a row
    (``vio.attendance.outreach``); only absences after it count toward the next streak."""

    __tablename__ = "outreach_contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    recorded_by: Mapped[int] = mapped_column(ForeignKey("staff_users.id"))
    at: Mapped[datetime]
    note: Mapped[str] = mapped_column(Text)
    # The sessions of the streak that put the patient on the outreach list.
    sessions: Mapped[list[int]] = mapped_column(JSON, default=list)
