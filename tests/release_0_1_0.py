"""A clinic's records as vio 0.1.0 kept them: the schema of migrations 0001 to 0007, every
table filled.

``ROWS`` is plain data: table -> rows, each row naming every column of that table at 0.1.0, in
an order the foreign keys allow. ``fill`` writes them through the schema reflected from the
database itself, so nothing here leans on ``vio.models`` (which describe the newer schema).
Moments are naive UTC, as 0.1.0 stored them.

The audit log is chained exactly as 0.1.0 chained it (``digest_0_1_0``: plain SHA-256 over the
row's canonical form and the hash before it, from ``GENESIS``), with its head in ``audit_chain``.
One therapist has an authenticator set up, its base32 seed stored in the clear as 0.1.0 did.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection

REVISION = "0007"
GENESIS = "0" * 64
# Kept by alembic itself: its one row names the revision, which an upgrade changes by design.
ALEMBIC_TABLE = "alembic_version"

THERAPIST_ID = 1
THERAPIST_EMAIL = "siobhan.oconnor@lakeside.example"
THERAPIST_PASSWORD = "evening-group-therapist"
THERAPIST_SEED = "EQJ6OOEVLUKJ5GJBUXC6TUI5QJ3GTK74"
THERAPIST_LAST_STEP = 59848559  # the 30-second step of her last sign-in, 2026-11-23 17:59:30
FORMER_STAFF_SEED = "CP2Q6HPIGVIRSE6UHZAAMXMYZNX4SNJ3"


def digest_0_1_0(seq: int, at: datetime, program_id: int | None, actor: str, action: str,
                 target: str, detail: Any, prev_hash: str) -> str:
    """0.1.0's audit digest; ``at`` is naive UTC, as stored."""
    body = json.dumps([seq, at.replace(tzinfo=UTC).isoformat(timespec="microseconds"),
                       program_id, actor, action, target, detail, prev_hash],
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def _chained(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows, prev = [], GENESIS
    for seq, event in enumerate(events, start=1):
        digest = digest_0_1_0(seq, event["at"], event["program_id"], event["actor"],
                              event["action"], event["target"], event["detail"], prev)
        rows.append({"id": seq, "seq": seq, **event, "prev_hash": prev, "hash": digest})
        prev = digest
    return rows


_STAFF_HASH = {
    "evening-group-therapist": "$argon2id$v=19$m=65536,t=3,p=4$psLJBv8Jlk3ROlJkVMMzQQ$"
                               "T78sAJvMSmkwmbCQ/lrkN0V/DdjxbzS8VN5Ormu6/pY",
    "admin-of-the-lakeside": "$argon2id$v=19$m=65536,t=3,p=4$IMZkzH81cq7nl7J83aIROA$"
                             "UhapmIP2K6C7D+jLU/p6HjUNGc0uZPSFdkNtKi+pOtA",
    "former-staff-member": "$argon2id$v=19$m=65536,t=3,p=4$VRp/YsdYjfgUoFa2h9t9AQ$"
                           "WMfdBU9d5LYwIOhGnRi97FWdgp3ADhaekyJhqet2mJg",
}

AUDIT_EVENTS = _chained([
    {"at": datetime(2026, 10, 5, 14, 2, 11, 1), "program_id": 1, "actor": "command-line",
     "action": "staff-added", "target": "staff:1", "detail": {"role": "therapist"}},
    {"at": datetime(2026, 10, 5, 14, 3, 45, 250000), "program_id": 1, "actor": "command-line",
     "action": "staff-added", "target": "staff:2", "detail": {"role": "admin"}},
    {"at": datetime(2026, 11, 23, 17, 58, 1, 123456), "program_id": None,
     "actor": "address:203.0.113.7", "action": "sign-in-failed",
     "target": "email:siobhan.oconnor@lakeside.example", "detail": {"reason": "password"}},
    {"at": datetime(2026, 11, 23, 17, 59, 30, 654321), "program_id": 1, "actor": "staff:1",
     "action": "sign-in", "target": "staff:1",
     "detail": {"via": "password+totp", "second_factor_set_up": False}},
    {"at": datetime(2026, 11, 23, 18, 5, 12, 450), "program_id": 1, "actor": "staff:1",
     "action": "patient-record-view", "target": "patient:1",
     "detail": {"fields": ["location", "emergency_contact"], "session": 1, "reason": None,
                "note": "Zoë — crisis check ✓ «urgent»"}},
    {"at": datetime(2026, 11, 24, 9, 15, 0, 999999), "program_id": 2, "actor": "staff:3",
     "action": "alert-dismissed", "target": "patient:3",
     "detail": {"week": "2026-W47", "alert": "below-target-last-week", "hours": 7.5,
                "checked": {"called": True, "ids": [3, 1, 2]}}},
    {"at": datetime(2026, 11, 24, 10, 0, 0, 0), "program_id": 1, "actor": "staff:2",
     "action": "second-factor-rule", "target": "program:1", "detail": {"required": True}},
    {"at": datetime(2026, 11, 24, 10, 0, 0, 1), "program_id": None, "actor": "command-line",
     "action": "maintenance", "target": "system", "detail": {}},
])

ROWS: dict[str, list[dict[str, Any]]] = {
    "programs": [
        {"id": 1, "name": "Lakeside Evening IOP — Zoë's program", "timezone": "America/Chicago",
         "emergency_number": "911", "target_hours_iop_adult": 9.0,
         "target_hours_iop_adolescent": 6.5, "target_hours_php": 20.0,
         "target_hours_outpatient": 3.25, "present_threshold_percent": 75,
         "absences_before_outreach": 2, "admins_need_second_factor": True},
        {"id": 2, "name": "Programa Ñandú 日本語グループ", "timezone": "Europe/Madrid",
         "emergency_number": "112", "target_hours_iop_adult": 12.5,
         "target_hours_iop_adolescent": 8.0, "target_hours_php": 21.75,
         "target_hours_outpatient": 4.0, "present_threshold_percent": 80,
         "absences_before_outreach": 3, "admins_need_second_factor": False},
    ],
    "groups": [
        {"id": 1, "program_id": 1, "name": "Evening group — Mon/Wed/Thu"},
        {"id": 2, "program_id": 1, "name": "Adolescent group ☀"},
        {"id": 3, "program_id": 2, "name": "Grupo de mañana"},
    ],
    "staff_users": [
        {"id": 1, "program_id": 1, "name": "Siobhán O'Connor-Nguyễn", "email": THERAPIST_EMAIL,
         "role": "therapist", "password_hash": _STAFF_HASH["evening-group-therapist"],
         "active": True, "totp_secret": THERAPIST_SEED, "totp_last_step": THERAPIST_LAST_STEP},
        {"id": 2, "program_id": 1, "name": "Ana María Muñoz", "email": "ana.munoz@lakeside.example",
         "role": "admin", "password_hash": _STAFF_HASH["admin-of-the-lakeside"], "active": True,
         "totp_secret": None, "totp_last_step": None},
        {"id": 3, "program_id": 2, "name": "Jürgen Þórsson", "email": "jurgen@nandu.example",
         "role": "therapist", "password_hash": _STAFF_HASH["former-staff-member"],
         "active": False, "totp_secret": FORMER_STAFF_SEED, "totp_last_step": None},
    ],
    "patients": [
        {"id": 1, "program_id": 1, "legal_name": "Dana Reyes-Ó Súilleabháin",
         "room_name": "Dana R.", "level_of_care": "2.1", "age_group": "adult",
         "weekly_target_override": None, "enrolled_on": date(2026, 10, 5),
         "enrollment_ends_on": date(2026, 12, 28), "status": "active",
         "emergency_contact_name": "Marisol Reyes", "emergency_contact_phone": "+1 312 555 0147",
         "usual_location": "home", "home_address": "1200 W Lake St, Apt 4B, Chicago IL 60607",
         "phone": "+1 312 555 0199"},
        {"id": 2, "program_id": 1, "legal_name": "Łukasz Żółć", "room_name": None,
         "level_of_care": "2.5", "age_group": "adolescent", "weekly_target_override": 19.5,
         "enrolled_on": date(2026, 9, 1), "enrollment_ends_on": date(2027, 1, 15),
         "status": "on-hold", "emergency_contact_name": "Zofia Żółć",
         "emergency_contact_phone": "+48 22 555 01 23", "usual_location": "dorm room",
         "home_address": "ul. Świętokrzyska 12, 00-916 Warszawa", "phone": ""},
        {"id": 3, "program_id": 2, "legal_name": "李小龍", "room_name": "Lee",
         "level_of_care": "1", "age_group": "adult", "weekly_target_override": None,
         "enrolled_on": date(2026, 8, 17), "enrollment_ends_on": date(2026, 11, 9),
         "status": "discharged", "emergency_contact_name": "", "emergency_contact_phone": "",
         "usual_location": "", "home_address": "", "phone": ""},
    ],
    "family_members": [
        {"id": 1, "patient_id": 1, "name": "Marisol Reyes", "relationship_to_patient": "mother",
         "contact": "marisol@example.org"},
        {"id": 2, "patient_id": 2, "name": "Zofia Żółć", "relationship_to_patient": "sister",
         "contact": "+48 22 555 01 23"},
    ],
    "group_therapists": [
        {"group_id": 1, "staff_id": 1},
        {"group_id": 2, "staff_id": 1},
        {"group_id": 3, "staff_id": 3},
    ],
    "patient_links": [
        {"id": 1, "patient_id": 1, "secret_hash": "5" * 40 + "a1b2c3d4e5f6a7b8c9d0e1f2",
         "created_at": datetime(2026, 10, 5, 14, 10, 0, 123), "expires_at":
         datetime(2026, 12, 28, 23, 59, 59, 999999), "revoked_at": None},
        {"id": 2, "patient_id": 2, "secret_hash": "f0" * 32,
         "created_at": datetime(2026, 9, 1, 8, 0, 0, 500000),
         "expires_at": datetime(2027, 1, 15, 0, 0),
         "revoked_at": datetime(2026, 11, 2, 16, 45, 3, 7)},
    ],
    "roster_memberships": [
        {"id": 1, "group_id": 1, "patient_id": 1, "joined_on": date(2026, 10, 5),
         "left_on": None},
        {"id": 2, "group_id": 2, "patient_id": 2, "joined_on": date(2026, 9, 1),
         "left_on": date(2026, 11, 2)},
        {"id": 3, "group_id": 3, "patient_id": 3, "joined_on": date(2026, 8, 17),
         "left_on": date(2026, 11, 9)},
    ],
    "session_series": [
        {"id": 1, "program_id": 1, "title": "Evening process group", "kind": "group",
         "group_id": 1, "patient_id": None, "weekdays": "1,3,4", "local_start": time(18, 0),
         "duration_minutes": 180, "timezone": "America/Chicago", "first_day": date(2026, 10, 5),
         "weeks": 12},
        {"id": 2, "program_id": 1, "title": "Individual check-in — Łukasz", "kind": "individual",
         "group_id": None, "patient_id": 2, "weekdays": "2", "local_start": time(16, 30, 15),
         "duration_minutes": 50, "timezone": "America/Chicago", "first_day": date(2026, 9, 1),
         "weeks": 8},
    ],
    "sessions": [
        {"id": 1, "program_id": 1, "series_id": 1, "title": "Evening process group",
         "kind": "group", "group_id": 1, "patient_id": None,
         "starts_at": datetime(2026, 11, 24, 0, 0), "duration_minutes": 180,
         "extended_minutes": 15, "timezone": "America/Chicago", "status": "ended",
         "billing_code": "90853", "waiting_room": "therapist-admits"},
        {"id": 2, "program_id": 1, "series_id": None, "title": "Family session — Dana",
         "kind": "family", "group_id": None, "patient_id": 1,
         "starts_at": datetime(2026, 11, 26, 23, 30, 0, 250000), "duration_minutes": 50,
         "extended_minutes": 0, "timezone": "America/Chicago", "status": "scheduled",
         "billing_code": "90847", "waiting_room": "auto-with-therapist"},
        {"id": 3, "program_id": 2, "series_id": None, "title": "Sesión de grupo",
         "kind": "multi-family", "group_id": 3, "patient_id": None,
         "starts_at": datetime(2026, 11, 10, 9, 0), "duration_minutes": 90,
         "extended_minutes": 0, "timezone": "Europe/Madrid", "status": "cancelled",
         "billing_code": "90849", "waiting_room": "open"},
    ],
    "session_therapists": [
        {"session_id": 1, "staff_id": 1},
        {"session_id": 2, "staff_id": 1},
        {"session_id": 3, "staff_id": 3},
    ],
    "consents": [
        {"id": 1, "patient_id": 1, "kind": "telehealth", "family_member_id": None,
         "scope": "video sessions with the program", "granted_at": datetime(2026, 10, 5, 14, 5),
         "expires_at": None, "revoked_at": None},
        {"id": 2, "patient_id": 1, "kind": "family-disclosure", "family_member_id": 1,
         "scope": "42 CFR Part 2: attendance and the family session with Marisol Reyes",
         "granted_at": datetime(2026, 11, 20, 17, 0, 0, 1),
         "expires_at": datetime(2027, 2, 20, 17, 0), "revoked_at": None},
        {"id": 3, "patient_id": 2, "kind": "group-participation", "family_member_id": None,
         "scope": "the adolescent group", "granted_at": datetime(2026, 9, 1, 8, 30, 0, 777),
         "expires_at": None, "revoked_at": datetime(2026, 11, 2, 16, 45, 3, 7)},
    ],
    "attendance_events": [
        {"id": 1, "session_id": 1, "at": datetime(2026, 11, 23, 23, 55, 2, 314159),
         "kind": "checked-in", "person": "patient:1", "role": "patient", "connection": "c-7f3a",
         "patient_id": 1, "detail": {"location": "home", "address": "1200 W Lake St",
                                     "city": "Chicago", "state": "IL"}},
        {"id": 2, "session_id": 1, "at": datetime(2026, 11, 24, 0, 0, 5, 1),
         "kind": "admitted", "person": "patient:1", "role": "patient", "connection": "c-7f3a",
         "patient_id": 1, "detail": {"by": "staff:1"}},
        {"id": 3, "session_id": 1, "at": datetime(2026, 11, 24, 0, 0, 6, 0), "kind": "media",
         "person": "patient:1", "role": "patient", "connection": "c-7f3a", "patient_id": 1,
         "detail": {"audio": True, "video": False, "reason": "caméra en panne"}},
        {"id": 4, "session_id": 1, "at": datetime(2026, 11, 24, 3, 15, 0, 999999),
         "kind": "session-ended", "person": None, "role": None, "connection": None,
         "patient_id": None, "detail": {"present": ["patient:1", "staff:1"], "ended_by": None}},
    ],
    "attendance_reviews": [
        {"id": 1, "session_id": 1, "person": "patient:1", "status": "present",
         "reason": "Camera failed; audio-only for the whole session, reason recorded.",
         "by_staff_id": 1, "at": datetime(2026, 11, 24, 4, 0, 0, 10),
         "signed_off_at": datetime(2026, 11, 24, 15, 30), "signed_off_by": 2},
        {"id": 2, "session_id": 3, "person": None, "status": None,
         "reason": "Sesión cancelada por el terapeuta — sin cargo", "by_staff_id": 3,
         "at": datetime(2026, 11, 10, 8, 0), "signed_off_at": None, "signed_off_by": None},
    ],
    "family_invites": [
        {"id": 1, "session_id": 2, "family_member_id": 1, "secret_hash": "ab" * 32,
         "created_at": datetime(2026, 11, 20, 17, 5, 0, 42), "created_by": "staff:1",
         "expires_at": datetime(2026, 11, 27, 1, 0), "revoked_at": None},
        {"id": 2, "session_id": 1, "family_member_id": 2, "secret_hash": "cd" * 32,
         "created_at": datetime(2026, 11, 1, 9, 0), "created_by": "command-line",
         "expires_at": datetime(2026, 11, 24, 3, 0),
         "revoked_at": datetime(2026, 11, 2, 16, 45, 3, 7)},
    ],
    "room_states": [
        {"session_id": 1, "state": {
            "version": 1, "seated": ["patient:1", "staff:1"],
            "dropped": {"patient:1": "2026-11-24T01:02:03.000004+00:00"}, "removed": [],
            "locked": True, "ends_at": "2026-11-24T03:15:00+00:00", "pending_warnings": [5],
            "holds": {"patient:1": {"held": ["video"], "mic_locked": False}},
            "spaces": {"breakout ①": ["patient:1"]}, "ended": True},
         "saved_at": datetime(2026, 11, 24, 3, 15, 0, 999999)},
        {"session_id": 2, "state": {
            "version": 1, "seated": [], "dropped": {}, "removed": ["family-invite:2"],
            "locked": False, "ends_at": "2026-11-27T00:20:00.250000+00:00",
            "pending_warnings": [], "holds": {}, "spaces": {}, "ended": False},
         "saved_at": datetime(2026, 11, 26, 23, 31, 0, 5)},
    ],
    "sign_in_sessions": [
        {"id": 1, "token_hash": "01" * 32, "kind": "staff", "staff_id": 1, "patient_id": None,
         "family_invite_id": None, "family_member_id": None, "family_name": None,
         "device": None, "created_at": datetime(2026, 11, 23, 17, 59, 30, 654321),
         "last_seen_at": datetime(2026, 11, 24, 3, 20, 0, 1),
         "expires_at": datetime(2026, 11, 24, 5, 59, 30, 654321),
         "ended_at": datetime(2026, 11, 24, 3, 21), "end_reason": "signed-out",
         "second_factor_pending": False},
        {"id": 2, "token_hash": "02" * 32, "kind": "patient", "staff_id": None, "patient_id": 1,
         "family_invite_id": None, "family_member_id": None, "family_name": None,
         "device": None, "created_at": datetime(2026, 11, 23, 23, 50),
         "last_seen_at": datetime(2026, 11, 24, 3, 15, 0, 999999),
         "expires_at": datetime(2026, 12, 7, 23, 50), "ended_at": None, "end_reason": None,
         "second_factor_pending": False},
        {"id": 3, "token_hash": "03" * 32, "kind": "family", "staff_id": None,
         "patient_id": None, "family_invite_id": 1, "family_member_id": 1,
         "family_name": "Marisol (mamá)", "device": "d-9c1e", "created_at":
         datetime(2026, 11, 26, 23, 25, 0, 3), "last_seen_at": datetime(2026, 11, 26, 23, 26),
         "expires_at": datetime(2026, 11, 27, 1, 0), "ended_at": None, "end_reason": None,
         "second_factor_pending": True},
    ],
    "sign_in_attempts": [
        {"key_hash": "9e" * 32, "window_started_at": datetime(2026, 11, 23, 17, 58, 1, 123456),
         "attempts": 1},
        {"key_hash": "7a" * 32, "window_started_at": datetime(2026, 11, 22, 8, 0), "attempts": 5},
    ],
    "alert_dismissals": [
        {"id": 1, "patient_id": 3, "week_start": date(2026, 11, 16),
         "alert": "below-target-last-week",
         "note": "Called him; he was travelling — «de vacaciones».\nRe-check next week.",
         "dismissed_by": 3, "dismissed_at": datetime(2026, 11, 24, 9, 15, 0, 999999)},
        {"id": 2, "patient_id": 1, "week_start": date(2026, 11, 23),
         "alert": "consecutive-absences", "note": "", "dismissed_by": 2,
         "dismissed_at": datetime(2026, 11, 25, 12, 0)},
    ],
    "audit_events": AUDIT_EVENTS,
    "audit_chain": [
        {"id": 1, "length": len(AUDIT_EVENTS), "last_hash": AUDIT_EVENTS[-1]["hash"]},
    ],
}


def schema(conn: Connection) -> dict[str, set[str]]:
    """Every table of the connected database (but alembic's own) and its columns."""
    inspector = inspect(conn)
    return {table: {column["name"] for column in inspector.get_columns(table)}
            for table in inspector.get_table_names() if table != ALEMBIC_TABLE}


def primary_key(conn: Connection, table: str) -> list[str]:
    return list(inspect(conn).get_pk_constraint(table)["constrained_columns"])


def fill(conn: Connection) -> None:
    """Write ``ROWS`` into a database at revision ``REVISION``, as 0.1.0 would have left it
    (on PostgreSQL, each id sequence continues after the rows written)."""
    metadata = MetaData()
    metadata.reflect(conn)
    for name, rows in ROWS.items():
        table = metadata.tables[name]
        if name == "audit_chain":  # 0006 made the head row; 0.1.0 moved it with every append
            [head] = rows
            updated = conn.execute(table.update().where(table.c.id == head["id"])
                                   .values(length=head["length"], last_hash=head["last_hash"]))
            assert updated.rowcount == 1, "migration 0006 left no audit chain head row"
        else:
            conn.execute(table.insert(), rows)
    if conn.dialect.name == "postgresql":
        for name in ROWS:
            if "id" in metadata.tables[name].c:
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                                  f"(SELECT max(id) FROM {name}))"))
