"""Staff accounts over the years: adding one, changing one's own password, an admin's reset of
someone's password (and second factor), and turning accounts off and on again.

The team and sign-in pages and the ``vio staff`` commands all come here; who may ask (an admin
of the same program, the person themselves) is the caller's to decide. Every change

- checks a new password against ``vio.password_policy`` (a refusal is ``AccountRefused``,
  with a sentence for the person, and changes nothing);
- writes one audit row (``vio.audit_chain.audit``; never a password, never a name or email);
- ends the sign-ins it must and returns their ids, so that the caller, after committing, takes
  those connections out of live rooms (``vio.pages.common.disconnect_sign_ins``).

A reset leaves a temporary password and ``must_change_password``: the next sign-in goes no
further than choosing a new one (``vio.pages.auth``). A reset of the second factor clears the
authenticator seed, so the person sets one up again (at the next sign-in where the program
requires it, else from their sign-in page). Callers commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from vio import audit_chain, clinic, identity
from vio.identity import EndReason, staff_identity
from vio.models import Program, SignInSession, StaffRole, StaffUser
from vio.password_policy import REFUSAL_TEXT, password_refusal, temporary_password
from vio.security import hash_password_off_loop, verify_password_off_loop

NO_SUCH_ACCOUNT = "There is no staff account with that email address."
ALREADY_TAKEN = "That email address already has a staff account."
WRONG_CURRENT = "That isn't your current password; nothing was changed."
PASSWORDS_DIFFER = "The two new passwords differ; nothing was changed."
SAME_AS_BEFORE = "The new password must differ from the one it replaces."
OWN_ACCOUNT = "You can't turn off your own account."
LAST_ADMIN = ("This is the program's last active admin account; turn on or add another admin "
              "first.")
ALREADY = {True: "That account is already on.", False: "That account is already off."}


class AccountRefused(Exception):
    """The change can't be made; ``message`` says why, for the person who asked."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Reset:
    """A reset just made: the temporary password (to hand over once) and the sign-ins ended."""

    temporary_password: str
    second_factor_cleared: bool
    ended_sign_ins: list[int]


@dataclass(frozen=True)
class AccountLine:
    """One account as ``vio staff list`` shows it."""

    program: str
    name: str
    email: str
    role: str
    active: bool
    second_factor: bool
    must_change_password: bool

    def summary(self) -> dict[str, object]:
        return {"program": self.program, "name": self.name, "email": self.email,
                "role": self.role, "active": self.active, "second_factor": self.second_factor,
                "must_change_password": self.must_change_password}


def check_password(password: str, name: str, email: str) -> None:
    """Raise ``AccountRefused`` unless ``password`` may be this account's."""
    refusal = password_refusal(password, name=name, email=email)
    if refusal is not None:
        raise AccountRefused(REFUSAL_TEXT[refusal])


async def account_for_email(db: AsyncSession, email: str) -> StaffUser:
    staff = await clinic.staff_by_email(db, email)
    if staff is None:
        raise AccountRefused(NO_SUCH_ACCOUNT)
    return staff


async def _end_sign_ins(db: AsyncSession, staff_id: int, now: datetime, reason: EndReason,
                        keep: int | None = None) -> list[int]:
    if keep is None:
        return await identity.end_sign_ins(db, now, reason, staff_id=staff_id)
    rows = (await db.execute(select(SignInSession).where(
        SignInSession.staff_id == staff_id, SignInSession.ended_at.is_(None),
        SignInSession.id != keep))).scalars().all()
    for row in rows:
        row.ended_at, row.end_reason = now, reason.value
    return [row.id for row in rows]


async def add_account(db: AsyncSession, program_name: str, name: str, email: str,
                      role: StaffRole, password: str, timezone: str, now: datetime,
                      actor: str) -> StaffUser:
    """A new account in the named program (the program is made with its first account)."""
    email = email.strip().lower()
    if await clinic.staff_by_email(db, email) is not None:
        raise AccountRefused(ALREADY_TAKEN)
    check_password(password, name, email)
    program = (await db.execute(select(Program).where(Program.name == program_name))
               ).scalar_one_or_none()
    if program is None:
        program = Program(name=program_name, timezone=timezone)
        db.add(program)
        await db.flush()
    staff = StaffUser(program_id=program.id, name=name, email=email, role=role,
                      password_hash=await hash_password_off_loop(password))
    db.add(staff)
    await db.flush()
    await audit_chain.audit(db, now, actor, "staff-added", staff_identity(staff.id),
                            role=role.value)
    return staff


async def change_password(db: AsyncSession, staff: StaffUser, new_password: str,
                          now: datetime, actor: str, *, current_password: str | None,
                          keep_sign_in: int | None = None, at_sign_in: bool = False
                          ) -> list[int]:
    """Set the person's own new password. ``current_password`` must be right unless None
    (the command line, or the sign-in that just checked the temporary one). Every other
    sign-in of theirs ends; ``keep_sign_in`` is the one asking."""
    if current_password is not None and not await verify_password_off_loop(
            staff.password_hash, current_password):
        raise AccountRefused(WRONG_CURRENT)
    check_password(new_password, staff.name, staff.email)
    if await verify_password_off_loop(staff.password_hash, new_password):
        raise AccountRefused(SAME_AS_BEFORE)
    staff.password_hash = await hash_password_off_loop(new_password)
    staff.must_change_password = False
    ended = await _end_sign_ins(db, staff.id, now, EndReason.SIGNED_OUT, keep_sign_in)
    await audit_chain.audit(db, now, actor, "staff-password-changed", staff_identity(staff.id),
                            at_sign_in=at_sign_in, sign_ins_ended=len(ended))
    return ended


async def reset_sign_in(db: AsyncSession, staff: StaffUser, now: datetime, actor: str, *,
                        temporary: str | None = None, second_factor: bool = False) -> Reset:
    """An admin's reset: a temporary password (``temporary``, or a random one), a new
    password due at the next sign-in, and with ``second_factor`` the authenticator seed
    cleared. Every sign-in of the person ends."""
    if temporary is None:
        temporary = temporary_password(name=staff.name, email=staff.email)
    else:
        check_password(temporary, staff.name, staff.email)
    staff.password_hash = await hash_password_off_loop(temporary)
    staff.must_change_password = True
    if second_factor:
        staff.totp_secret = None
        staff.totp_last_step = None
    ended = await _end_sign_ins(db, staff.id, now, EndReason.SIGNED_OUT)
    await audit_chain.audit(db, now, actor, "staff-password-reset", staff_identity(staff.id),
                            second_factor_cleared=second_factor, sign_ins_ended=len(ended))
    return Reset(temporary, second_factor, ended)


async def _other_active_admins(db: AsyncSession, staff: StaffUser) -> int:
    return int((await db.execute(select(func.count()).select_from(StaffUser).where(
        StaffUser.program_id == staff.program_id, StaffUser.role == StaffRole.ADMIN,
        StaffUser.active.is_(True), StaffUser.id != staff.id))).scalar_one())


async def set_active(db: AsyncSession, staff: StaffUser, active: bool, now: datetime,
                     actor: str, *, asked_by: int | None = None) -> list[int]:
    """Turn the account on or off; off ends every sign-in of theirs. Nobody turns off their
    own account (``asked_by``) or a program's last active admin."""
    if staff.active is active:
        raise AccountRefused(ALREADY[active])
    if not active:
        if asked_by == staff.id:
            raise AccountRefused(OWN_ACCOUNT)
        if staff.role is StaffRole.ADMIN and await _other_active_admins(db, staff) == 0:
            raise AccountRefused(LAST_ADMIN)
    staff.active = active
    ended = [] if active else await _end_sign_ins(db, staff.id, now, EndReason.DEACTIVATED)
    await audit_chain.audit(db, now, actor, "staff-activated" if active else "staff-deactivated",
                            staff_identity(staff.id), sign_ins_ended=len(ended))
    return ended


async def account_lines(db: AsyncSession, program_id: int | None = None
                        ) -> Sequence[AccountLine]:
    """Every account (of one program, if given), by program and name."""
    query = (select(StaffUser, Program).join(Program, Program.id == StaffUser.program_id)
             .order_by(Program.name, StaffUser.name, StaffUser.id))
    if program_id is not None:
        query = query.where(StaffUser.program_id == program_id)
    return [AccountLine(program.name, staff.name, staff.email, staff.role.value, staff.active,
                        staff.totp_secret is not None, staff.must_change_password)
            for staff, program in (await db.execute(query)).all()]
