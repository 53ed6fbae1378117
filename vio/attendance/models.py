"""The therapist's review of a session's attendance: status overrides and the sign-off.

Rows are appended, never changed. An override row names a person, the status they are given and
why; the latest override for a person wins. A sign-off row names no person; once a session has
one, its attendance is locked and further overrides are refused.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Enum, ForeignKey, String
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
