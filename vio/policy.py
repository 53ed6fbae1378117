"""Who may do what to which record: one answer for every page, API, export and room.

Every decision takes three steps, in this order:

1. **program, always**: a record of another program does not exist for the viewer (pages
   answer 404, not 403, so not even its existence shows);
2. **role**: anonymous, patient, family member, therapist, admin;
3. **assignment** (minimum necessary): a therapist sees the patients of the groups and
   sessions they are assigned to, and runs only the sessions they are assigned to.

=================  =====================  ==============================  =========  ======
action             admin (own program)    therapist                       patient    family
=================  =====================  ==============================  =========  ======
view               every record           assigned groups, sessions and   own        —
                                          their patients; colleagues
edit (patient)     yes                    assigned patients               —          —
add-family         yes                    assigned patients               —          —
schedule           yes                    for assigned groups/patients,   —          —
                                          naming only assigned therapists
run-session        yes                    assigned sessions               —          —
export             whole program          their own sessions              —          —
create             yes                    —                               —          —
issue-link         yes                    —                               —          —
manage-consent     yes                    —                               —          —
assign             yes                    —                               —          —
manage-staff       yes                    —                               —          —
view-audit         yes                    —                               —          —
=================  =====================  ==============================  =========  ======

Issuing or revoking patient links, recording or revoking consents, assigning staff to groups
and patients to rosters, and turning staff accounts off are admin actions.

``Scope`` is what these checks need to know about one viewer, loaded once per request
(``scope_for``); ``may(scope, action, record)`` then answers without I/O, and the ``*_where``
functions give the same answers as query conditions, so every list is scoped the same way.
The rooms ask ``runs_session`` (pure) when staff join (``vio.rooms.admission``); who else
belongs in a room (roster, consents, invites) is the admission rules' own business.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from dataclasses import dataclass

from sqlalchemy import ColumnElement, false, select
from sqlalchemy.ext.asyncio import AsyncSession

from vio.identity import Viewer, ViewerRole
from vio.models import (
    AuditEvent,
    Group,
    GroupTherapist,
    Patient,
    Program,
    RosterMembership,
    Session,
    SessionTherapist,
    StaffUser,
)


class Action(enum.StrEnum):
    VIEW = "view"
    EDIT = "edit"
    ADD_FAMILY = "add-family"
    SCHEDULE = "schedule"
    RUN_SESSION = "run-session"
    EXPORT = "export"
    CREATE = "create"
    ISSUE_LINK = "issue-link"
    MANAGE_CONSENT = "manage-consent"
    ASSIGN = "assign"
    MANAGE_STAFF = "manage-staff"
    VIEW_AUDIT = "view-audit"


Record = Program | Patient | Group | Session | StaffUser


@dataclass(frozen=True)
class Scope:
    """What the rules need to know about one viewer."""

    role: ViewerRole
    program_id: int | None = None
    staff_id: int | None = None
    patient_id: int | None = None
    group_ids: frozenset[int] = frozenset()  # a therapist's assigned groups
    session_ids: frozenset[int] = frozenset()  # a therapist's assigned sessions
    patient_ids: frozenset[int] = frozenset()  # patients of those groups and sessions

    @property
    def is_admin(self) -> bool:
        return self.role is ViewerRole.ADMIN

    @property
    def is_staff(self) -> bool:
        return self.role in (ViewerRole.ADMIN, ViewerRole.THERAPIST)


NOBODY = Scope(ViewerRole.ANONYMOUS)


async def scope_for(db: AsyncSession, viewer: Viewer) -> Scope:
    """The viewer's scope: for a therapist, their assignments as the records say now."""
    if viewer.staff is not None:
        staff = viewer.staff
        if viewer.role is ViewerRole.ADMIN:
            return Scope(ViewerRole.ADMIN, staff.program_id, staff_id=staff.id)
        groups = frozenset((await db.execute(
            select(GroupTherapist.group_id).join(Group, Group.id == GroupTherapist.group_id)
            .where(GroupTherapist.staff_id == staff.id,
                   Group.program_id == staff.program_id))).scalars())
        sessions = (await db.execute(
            select(Session.id, Session.group_id, Session.patient_id)
            .join(SessionTherapist, SessionTherapist.session_id == Session.id)
            .where(SessionTherapist.staff_id == staff.id,
                   Session.program_id == staff.program_id))).all()
        group_ids = groups | {g for _, g, _ in sessions if g is not None}
        members = set((await db.execute(
            select(RosterMembership.patient_id)
            .join(Patient, Patient.id == RosterMembership.patient_id)
            .where(RosterMembership.group_id.in_(group_ids),
                   Patient.program_id == staff.program_id))).scalars()) if group_ids else set()
        own = {p for _, _, p in sessions if p is not None}
        return Scope(ViewerRole.THERAPIST, staff.program_id, staff_id=staff.id,
                     group_ids=groups, session_ids=frozenset(s for s, _, _ in sessions),
                     patient_ids=frozenset(members | own))
    if viewer.patient is not None:
        return Scope(ViewerRole.PATIENT, viewer.patient.program_id,
                     patient_id=viewer.patient.id)
    if viewer.role is ViewerRole.FAMILY:
        return Scope(ViewerRole.FAMILY)
    return NOBODY


# --- one record --------------------------------------------------------------------------

def _program_of(record: Record) -> int:
    return record.id if isinstance(record, Program) else record.program_id


def _assigned(scope: Scope, record: Record) -> bool:
    """Assigned to it (a therapist), or an admin."""
    if scope.is_admin:
        return True
    if scope.role is not ViewerRole.THERAPIST:
        return False
    if isinstance(record, Patient):
        return record.id in scope.patient_ids
    if isinstance(record, Group):
        return record.id in scope.group_ids
    if isinstance(record, Session):
        return record.id in scope.session_ids
    return isinstance(record, StaffUser | Program)  # colleagues, and the program itself


def _view(scope: Scope, record: Record) -> bool:
    if scope.role is ViewerRole.PATIENT:
        return isinstance(record, Patient) and record.id == scope.patient_id
    return _assigned(scope, record)


def _edit(scope: Scope, record: Record) -> bool:
    return isinstance(record, Patient) and _assigned(scope, record)


def _schedule(scope: Scope, record: Record) -> bool:
    return isinstance(record, Group | Patient | Program) and (
        scope.is_admin or (not isinstance(record, Program) and _assigned(scope, record)))


def _run_session(scope: Scope, record: Record) -> bool:
    return isinstance(record, Session) and (
        scope.is_admin or (scope.role is ViewerRole.THERAPIST
                           and record.id in scope.session_ids))


def _export(scope: Scope, record: Record) -> bool:
    return isinstance(record, Program) and scope.is_staff


def _admin_only(scope: Scope, record: Record) -> bool:
    return scope.is_admin


RULES: dict[Action, Callable[[Scope, Record], bool]] = {
    Action.VIEW: _view,
    Action.EDIT: _edit,
    Action.ADD_FAMILY: _edit,
    Action.SCHEDULE: _schedule,
    Action.RUN_SESSION: _run_session,
    Action.EXPORT: _export,
    Action.CREATE: _admin_only,
    Action.ISSUE_LINK: _admin_only,
    Action.MANAGE_CONSENT: _admin_only,
    Action.ASSIGN: _admin_only,
    Action.MANAGE_STAFF: _admin_only,
    Action.VIEW_AUDIT: _admin_only,
}


def may(scope: Scope, action: Action, record: Record | None) -> bool:
    """May this viewer do ``action`` to ``record``? Program first, then role and assignment."""
    if record is None or scope.program_id is None or _program_of(record) != scope.program_id:
        return False
    return RULES[action](scope, record)


def may_name_therapists(scope: Scope, therapist_ids: Collection[int],
                        assigned_to_record: Collection[int]) -> bool:
    """Scheduling names therapists: an admin any of the program's, a therapist themselves and
    those already assigned to the group (assigning others is an admin action)."""
    if scope.is_admin:
        return True
    return (scope.staff_id in therapist_ids
            and set(therapist_ids) <= {scope.staff_id, *assigned_to_record})


def runs_session(*, is_admin: bool, staff_program_id: int | None, staff_id: int | None,
                 session_program_id: int, therapist_ids: Collection[int]) -> bool:
    """A staff member runs a session's room: one of its therapists, or an admin of its
    program."""
    if staff_id is not None and staff_id in therapist_ids:
        return True
    return is_admin and staff_program_id is not None and staff_program_id == session_program_id


# --- lists ------------------------------------------------------------------------------------

def patient_where(scope: Scope) -> ColumnElement[bool]:
    """Patients this viewer may see, as a query condition."""
    if scope.program_id is None:
        return false()
    in_program = Patient.program_id == scope.program_id
    if scope.is_admin:
        return in_program
    if scope.role is ViewerRole.THERAPIST:
        return in_program & Patient.id.in_(scope.patient_ids)
    if scope.role is ViewerRole.PATIENT:
        return in_program & (Patient.id == scope.patient_id)
    return false()


def group_where(scope: Scope) -> ColumnElement[bool]:
    if scope.program_id is None or not scope.is_staff:
        return false()
    in_program = Group.program_id == scope.program_id
    return in_program if scope.is_admin else in_program & Group.id.in_(scope.group_ids)


def session_where(scope: Scope) -> ColumnElement[bool]:
    if scope.program_id is None or not scope.is_staff:
        return false()
    in_program = Session.program_id == scope.program_id
    return in_program if scope.is_admin else in_program & Session.id.in_(scope.session_ids)


def staff_where(scope: Scope) -> ColumnElement[bool]:
    if scope.program_id is None or not scope.is_staff:
        return false()
    return StaffUser.program_id == scope.program_id


def audit_where(scope: Scope) -> ColumnElement[bool]:
    if not scope.is_admin or scope.program_id is None:
        return false()
    return AuditEvent.program_id == scope.program_id
