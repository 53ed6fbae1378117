"""Who is asking: nobody, a staff member, a patient, or a family member with an invite."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vio.models import Patient, StaffUser


class ViewerRole(enum.StrEnum):
    ANONYMOUS = "anonymous"
    PATIENT = "patient"
    FAMILY = "family"
    THERAPIST = "therapist"
    ADMIN = "admin"


@dataclass(frozen=True)
class Viewer:
    """Who is asking: nobody, a staff member, a patient, or a family member with an invite."""

    role: ViewerRole
    staff: StaffUser | None = None
    patient: Patient | None = None
    family_invite_id: int | None = None
    family_name: str | None = None  # the name a family member chose for the room
    device: str | None = None  # a family member's browser, so one invite serves one device

    @property
    def is_staff(self) -> bool:
        return self.staff is not None

    @property
    def actor(self) -> str:
        if self.staff is not None:
            return f"staff:{self.staff.id}"
        if self.patient is not None:
            return f"patient:{self.patient.id}"
        if self.family_invite_id is not None:
            return f"family-invite:{self.family_invite_id}"
        return "anonymous"


ANONYMOUS = Viewer(ViewerRole.ANONYMOUS)
