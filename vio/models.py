"""The clinic's records: program, staff, patients, groups and rosters, sessions, consents, audit,
and the server's side of signing in (sign-in sessions, the failed-attempt counters).

Times are stored in UTC and come back timezone-aware; a session's local wall-clock time is
derived from its ``timezone``. Schema changes go through Alembic (``vio/migrations``).

Text columns carry their length cap (``String(n)``); the forms that fill them check the same
caps before anything is written (``vio.pages.forms``).
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    Time,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """A moment in time: stored as naive UTC, always returned timezone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; attach a time zone")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


# Room for a sealed second-factor seed: "v1:" and base64 of nonce, seed and tag (83 characters
# for the 32-character seeds vio makes).
SEALED_SEED_LENGTH = 200

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class StaffRole(enum.StrEnum):
    THERAPIST = "therapist"
    ADMIN = "admin"


class LevelOfCare(enum.StrEnum):
    """ASAM levels of care a program runs (DESIGN.md, weekly hours)."""

    OUTPATIENT = "1"
    IOP = "2.1"
    PARTIAL_HOSPITALIZATION = "2.5"


class AgeGroup(enum.StrEnum):
    ADULT = "adult"
    ADOLESCENT = "adolescent"


class EnrollmentStatus(enum.StrEnum):
    ACTIVE = "active"
    ON_HOLD = "on-hold"
    DISCHARGED = "discharged"


class SessionKind(enum.StrEnum):
    GROUP = "group"
    INDIVIDUAL = "individual"
    FAMILY = "family"
    MULTI_FAMILY = "multi-family"


class SessionStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    OPEN = "open"
    ENDED = "ended"
    CANCELLED = "cancelled"


class WaitingRoomPolicy(enum.StrEnum):
    """Who lets rostered patients in. Family members always wait for a therapist."""

    THERAPIST_ADMITS = "therapist-admits"
    AUTO_WITH_THERAPIST = "auto-with-therapist"  # patients enter once a therapist is in
    OPEN = "open"  # patients enter directly


class ConsentKind(enum.StrEnum):
    TELEHEALTH = "telehealth"
    GROUP_PARTICIPATION = "group-participation"
    FAMILY_DISCLOSURE = "family-disclosure"
    EMAIL_CONTACT = "email-contact"  # reminders and changes by email (``vio.mail``)


# Billing-code hints by session kind (DESIGN.md "Session kinds and their billing hints").
DEFAULT_BILLING_CODE = {
    SessionKind.GROUP: "90853",
    SessionKind.INDIVIDUAL: "90837",
    SessionKind.FAMILY: "90847",
    SessionKind.MULTI_FAMILY: "90849",
}
BILLING_CODES = ("90853", "90832", "90834", "90837", "90846", "90847", "90849")


class Program(Base):
    __tablename__ = "programs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    emergency_number: Mapped[str] = mapped_column(String(32), default="911")
    # Weekly hour targets by level of care (DESIGN.md: 2.1 adult 9 h, adolescent 6 h; 2.5 20 h).
    target_hours_iop_adult: Mapped[float] = mapped_column(default=9.0)
    target_hours_iop_adolescent: Mapped[float] = mapped_column(default=6.0)
    target_hours_php: Mapped[float] = mapped_column(default=20.0)
    target_hours_outpatient: Mapped[float] = mapped_column(default=3.0)
    present_threshold_percent: Mapped[int] = mapped_column(default=75)
    absences_before_outreach: Mapped[int] = mapped_column(default=2)
    # Admins of this program must sign in with a second factor (TOTP).
    admins_need_second_factor: Mapped[bool] = mapped_column(Boolean, default=False)

    def weekly_target_hours(self, level: LevelOfCare, age_group: AgeGroup) -> float:
        if level is LevelOfCare.PARTIAL_HOSPITALIZATION:
            return self.target_hours_php
        if level is LevelOfCare.OUTPATIENT:
            return self.target_hours_outpatient
        if age_group is AgeGroup.ADOLESCENT:
            return self.target_hours_iop_adolescent
        return self.target_hours_iop_adult


class StaffUser(Base):
    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    program_id: Mapped[int] = mapped_column(ForeignKey("programs.id"))
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    role: Mapped[StaffRole] = mapped_column(_enum(StaffRole))
    password_hash: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Set by an admin's reset: the password is a temporary one, and the next sign-in goes no
    # further than choosing a new one (``vio.staff_accounts``).
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    # The TOTP seed of the staff member's authenticator app, once they set one up, sealed under
    # the install's at-rest key (``vio.security.seal_totp_seed``), and the last time step a code
    # was accepted for (a code is good once).
    totp_secret: Mapped[str | None] = mapped_column(String(SEALED_SEED_LENGTH))
    totp_last_step: Mapped[int | None]


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    program_id: Mapped[int] = mapped_column(ForeignKey("programs.id"))
    legal_name: Mapped[str] = mapped_column(String(200))
    room_name: Mapped[str | None] = mapped_column(String(80))
    level_of_care: Mapped[LevelOfCare] = mapped_column(_enum(LevelOfCare))
    age_group: Mapped[AgeGroup] = mapped_column(_enum(AgeGroup))
    weekly_target_override: Mapped[float | None]
    enrolled_on: Mapped[date] = mapped_column(Date)
    enrollment_ends_on: Mapped[date] = mapped_column(Date)
    status: Mapped[EnrollmentStatus] = mapped_column(
        _enum(EnrollmentStatus), default=EnrollmentStatus.ACTIVE)
    emergency_contact_name: Mapped[str] = mapped_column(String(200), default="")
    emergency_contact_phone: Mapped[str] = mapped_column(String(40), default="")
    usual_location: Mapped[str] = mapped_column(String(300), default="")
    # Where the patient lives and how to reach them: the safety card's first lines in a crisis.
    home_address: Mapped[str] = mapped_column(String(300), default="")
    phone: Mapped[str] = mapped_column(String(40), default="")
    # Where reminders go, with an active email-contact consent (``vio.mail``).
    email: Mapped[str] = mapped_column(String(320), default="")

    program: Mapped[Program] = relationship(lazy="raise")

    @property
    def display_name(self) -> str:
        """The name the group sees: chosen, or first name and last initial."""
        if self.room_name:
            return self.room_name
        return default_room_name(self.legal_name)

    def is_enrolled_on(self, day: date) -> bool:
        return (self.status is EnrollmentStatus.ACTIVE
                and self.enrolled_on <= day <= self.enrollment_ends_on)


def default_room_name(legal_name: str) -> str:
    parts = legal_name.split()
    if len(parts) < 2:
        return legal_name
    return f"{parts[0]} {parts[-1][0]}."


class PatientLink(Base):
    """A patient's personal sign-in link; only a hash of its secret part is kept."""

    __tablename__ = "patient_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    program_id: Mapped[int] = mapped_column(ForeignKey("programs.id"))
    name: Mapped[str] = mapped_column(String(200))


class GroupTherapist(Base):
    __tablename__ = "group_therapists"

    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"), primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"), primary_key=True)


class RosterMembership(Base):
    """A patient's place on a group's roster from ``joined_on`` until ``left_on`` (inclusive)."""

    __tablename__ = "roster_memberships"

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    joined_on: Mapped[date] = mapped_column(Date)
    left_on: Mapped[date | None] = mapped_column(Date)

    def covers(self, day: date) -> bool:
        return self.joined_on <= day and (self.left_on is None or day <= self.left_on)


class SessionSeries(Base):
    """A weekly recurring schedule: the same local time on chosen weekdays for some weeks."""

    __tablename__ = "session_series"

    id: Mapped[int] = mapped_column(primary_key=True)
    program_id: Mapped[int] = mapped_column(ForeignKey("programs.id"))
    title: Mapped[str] = mapped_column(String(200))
    kind: Mapped[SessionKind] = mapped_column(_enum(SessionKind))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id"))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    weekdays: Mapped[str] = mapped_column(String(20))  # ISO weekdays, "1,3,4" = Mon, Wed, Thu
    local_start: Mapped[time] = mapped_column(Time)
    duration_minutes: Mapped[int] = mapped_column(Integer)
    timezone: Mapped[str] = mapped_column(String(64))
    first_day: Mapped[date] = mapped_column(Date)
    weeks: Mapped[int] = mapped_column(Integer)


class Session(Base):
    """One scheduled therapy session: a room that opens, runs and ends on schedule."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    program_id: Mapped[int] = mapped_column(ForeignKey("programs.id"))
    series_id: Mapped[int | None] = mapped_column(ForeignKey("session_series.id"))
    title: Mapped[str] = mapped_column(String(200))
    kind: Mapped[SessionKind] = mapped_column(_enum(SessionKind))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id"))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    starts_at: Mapped[datetime] = mapped_column(index=True)
    duration_minutes: Mapped[int] = mapped_column(Integer)
    extended_minutes: Mapped[int] = mapped_column(Integer, default=0)
    timezone: Mapped[str] = mapped_column(String(64))
    status: Mapped[SessionStatus] = mapped_column(
        _enum(SessionStatus), default=SessionStatus.SCHEDULED)
    billing_code: Mapped[str] = mapped_column(String(10))
    waiting_room: Mapped[WaitingRoomPolicy] = mapped_column(
        _enum(WaitingRoomPolicy), default=WaitingRoomPolicy.THERAPIST_ADMITS)
    # The calendar entry's SEQUENCE (RFC 5545): one more at each move or cancellation, and
    # when it last moved (reminders due before that are covered by the change's message).
    calendar_sequence: Mapped[int] = mapped_column(Integer, default=0)
    rescheduled_at: Mapped[datetime | None]

    @property
    def ends_at(self) -> datetime:
        return self.starts_at + timedelta(minutes=self.duration_minutes + self.extended_minutes)


class SessionTherapist(Base):
    __tablename__ = "session_therapists"

    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"), primary_key=True)


class FamilyMember(Base):
    __tablename__ = "family_members"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    relationship_to_patient: Mapped[str] = mapped_column(String(80))
    contact: Mapped[str] = mapped_column(String(200), default="")
    # Where an invite is emailed; set aside for good by the message's unsubscribe link.
    email: Mapped[str] = mapped_column(String(320), default="")
    email_unsubscribed_at: Mapped[datetime | None]


class Consent(Base):
    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    kind: Mapped[ConsentKind] = mapped_column(_enum(ConsentKind))
    family_member_id: Mapped[int | None] = mapped_column(ForeignKey("family_members.id"))
    scope: Mapped[str] = mapped_column(String(200), default="")
    granted_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    def active_at(self, moment: datetime) -> bool:
        return (self.granted_at <= moment
                and (self.expires_at is None or moment < self.expires_at)
                and (self.revoked_at is None or moment < self.revoked_at))


class FamilyInvite(Base):
    """One family member's way into one family session; only a hash of its secret is kept."""

    __tablename__ = "family_invites"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    family_member_id: Mapped[int] = mapped_column(ForeignKey("family_members.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(80))
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class AttendanceKind(enum.StrEnum):
    """What the room saw happen to one participant (or to the session)."""

    CHECKED_IN = "checked-in"  # detail: location, address, city, state
    WAITING = "waiting"  # entered the waiting room
    ADMITTED = "admitted"  # entered the room (straight in, or admitted by a therapist)
    LEFT = "left"  # left by choice
    DROPPED = "dropped"  # connection lost
    REMOVED = "removed"  # removed by a therapist; detail: reason
    DENIED = "denied"  # turned away from the waiting room
    REFUSED = "refused"  # tried to join and was kept out; detail: code (room-locked, …)
    MEDIA = "media"  # detail: audio, video (what actually reaches the server)
    HEARTBEAT = "heartbeat"  # the room is alive; detail: present (connection ids)
    SESSION_EXTENDED = "session-extended"  # detail: minutes, ends_at
    SESSION_ENDED = "session-ended"


class AttendanceEvent(Base):
    """Append-only log of what happened in a session's room, committed before it is acknowledged.

    ``connection`` is the participant id of one connection (``p-…``); ``person`` the stable
    identity (``patient:3``, ``staff:1``, ``family-invite:7``). Session-wide events have neither.
    """

    __tablename__ = "attendance_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    at: Mapped[datetime] = mapped_column(index=True)
    kind: Mapped[AttendanceKind] = mapped_column(_enum(AttendanceKind))
    person: Mapped[str | None] = mapped_column(String(80), index=True)
    role: Mapped[str | None] = mapped_column(String(20))
    connection: Mapped[str | None] = mapped_column(String(40))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The epoch of the room that wrote it (``vio.rooms.fences``); None with one process.
    epoch: Mapped[int | None] = mapped_column(BigInteger)


class AuditEvent(Base):
    """Append-only record of who did what to whom, and when, in one sealed chain.

    ``seq`` numbers the rows 1, 2, 3 … without gaps; ``hash`` is the HMAC-SHA256, under the
    install's audit key (``vio.keys``, never stored here), of the row's content and
    ``prev_hash`` (the hash of row ``seq - 1``). Changing or deleting any row breaks the chain
    from there on (``vio audit verify``), and without the key nobody can seal it again.
    ``program_id`` scopes the row to the program it concerns (None: not about any one program,
    such as a failed sign-in).
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    at: Mapped[datetime] = mapped_column(index=True)
    program_id: Mapped[int | None] = mapped_column(ForeignKey("programs.id"), index=True)
    actor: Mapped[str] = mapped_column(String(80), index=True)
    action: Mapped[str] = mapped_column(String(80))
    target: Mapped[str] = mapped_column(String(120), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChain(Base):
    """The head of the audit chain: one row (id 1) with the chain's length and last hash.

    Every audit write updates this row first, so writers take their turn (the row lock, or
    SQLite's write lock) and each new row links to the one written before it. It also lets
    ``vio audit verify`` notice that the newest rows were deleted, unless this row was set
    back to match: only a head kept off the machine (``vio audit head``, then ``verify
    --expect``) catches that.
    """

    __tablename__ = "audit_chain"

    id: Mapped[int] = mapped_column(primary_key=True)
    length: Mapped[int] = mapped_column(Integer, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))


class SignInKind(enum.StrEnum):
    STAFF = "staff"
    PATIENT = "patient"
    FAMILY = "family"


class SignInSession(Base):
    """One browser's sign-in, kept on the server: the cookie holds only an opaque token.

    Only the token's SHA-256 is stored. A session ends (``ended_at``) on sign-out, when the
    person's links or consent are revoked or their account is turned off, after
    ``VIO_IDLE_LOGOFF_MINUTES`` without a request (a live room connection counts), and at
    ``expires_at`` in any case. ``second_factor_pending``: the password was right, the TOTP
    code is still to come; such a session signs no one in.
    """

    __tablename__ = "sign_in_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[SignInKind] = mapped_column(_enum(SignInKind))
    staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id"), index=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    family_invite_id: Mapped[int | None] = mapped_column(ForeignKey("family_invites.id"),
                                                         index=True)
    family_member_id: Mapped[int | None] = mapped_column(ForeignKey("family_members.id"),
                                                         index=True)
    family_name: Mapped[str | None] = mapped_column(String(60))
    device: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(40))
    second_factor_pending: Mapped[bool] = mapped_column(Boolean, default=False)


class SignInAttempts(Base):
    """Sign-in attempts counted for one key (address and email, hashed) in a fixed window.

    Checked and counted in one statement before a password is looked at, so concurrent
    guesses from any number of processes get exactly the allowed number of tries.
    """

    __tablename__ = "sign_in_attempts"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_started_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)


__all__ = [
    "AgeGroup", "AttendanceEvent", "AttendanceKind", "AuditChain", "AuditEvent", "Base",
    "Consent",
    "ConsentKind", "EnrollmentStatus", "FamilyInvite", "FamilyMember",
    "Group", "GroupTherapist", "LevelOfCare", "Patient", "PatientLink", "Program",
    "RosterMembership", "Session", "SessionKind", "SessionSeries", "SessionStatus",
    "SessionTherapist", "SignInAttempts", "SignInKind", "SignInSession", "StaffRole",
    "StaffUser", "WaitingRoomPolicy",
]


class AlertDismissal(Base):
    """A dosage alert a staff member looked into and set aside for one week, with why.

    The alert stays computed (and in exports); a dismissal only takes it off the dashboard
    for that week, and is itself audited.
    """

    __tablename__ = "alert_dismissals"
    __table_args__ = (UniqueConstraint("patient_id", "week_start", "alert"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    week_start: Mapped[date] = mapped_column(Date)  # the Monday of the ISO week the alert is about
    alert: Mapped[str] = mapped_column(String(40))  # a DosageAlert value
    note: Mapped[str] = mapped_column(Text)
    dismissed_by: Mapped[int] = mapped_column(ForeignKey("staff_users.id"))
    dismissed_at: Mapped[datetime]
