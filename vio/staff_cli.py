"""``vio staff``: staff accounts from the command line.

- ``add --program NAME --role admin|therapist --name NAME --email EMAIL``: a new account (the
  program is made with its first account).
- ``passwd --email EMAIL``: a new password for the account.
- ``reset --email EMAIL [--second-factor]``: a temporary password, replaced by the person at
  their next sign-in; ``--second-factor`` clears their authenticator app too.
- ``deactivate --email EMAIL`` and ``reactivate --email EMAIL``: turn an account off (its
  sign-ins end) or on again. A program's last active admin stays on.
- ``list [--program NAME]``: every account, its role, whether it is on, has a second factor
  and owes a new password.

Passwords are read from the terminal (twice) or as one line of standard input, and must pass
``vio.password_policy``. Each command reads its settings from the environment, brings the
database up to date first, and audits what it changed with ``command-line`` as the actor
(``vio.staff_accounts``). Sign-ins ended here are over at the person's next request.

Exit status: 0 done, 1 refused (the reason on standard error), 2 a bad setting. ``--json``
prints one JSON value on standard output for scripts; otherwise lines for people.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vio.clock import SystemClock
from vio.db import opened
from vio.models import Program, StaffRole
from vio.settings import Settings, SettingsError
from vio.staff_accounts import (
    AccountRefused,
    account_for_email,
    account_lines,
    add_account,
    change_password,
    reset_sign_in,
    set_active,
)

ACTOR = "command-line"
EXIT_REFUSED = 1
EXIT_USAGE = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``staff add|passwd|reset|deactivate|reactivate|list`` to the ``vio`` command."""
    staff = commands.add_parser("staff", help="staff accounts")
    staff_commands = staff.add_subparsers(dest="staff_command", required=True)

    def command(name: str, help_text: str, run: Callable[[argparse.Namespace], int],
                email: bool = True) -> argparse.ArgumentParser:
        parser = staff_commands.add_parser(name, help=help_text)
        if email:
            parser.add_argument("--email", required=True)
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.set_defaults(run=run)
        return parser

    add = command("add", "add a staff account (the password is read from the terminal or "
                         "stdin); the program is created with the first account", cmd_add)
    add.add_argument("--program", required=True, help="the program's name")
    add.add_argument("--role", choices=[role.value for role in StaffRole], required=True)
    add.add_argument("--name", required=True)
    command("passwd", "set a new password for the account (read from the terminal or stdin)",
            cmd_passwd)
    reset = command("reset", "set a temporary password (read from the terminal or stdin) "
                             "that must be replaced at the next sign-in", cmd_reset)
    reset.add_argument("--second-factor", action="store_true",
                       help="also clear the authenticator app, to be set up again")
    command("deactivate", "turn the account off and end its sign-ins", cmd_deactivate)
    command("reactivate", "turn the account on again", cmd_reactivate)
    listing = command("list", "every staff account", cmd_list, email=False)
    listing.add_argument("--program", help="only this program's (its name)")


class CommandProblem(Exception):
    """Something the person at the terminal can fix; printed without a traceback."""


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"vio staff: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _read_password(prompt: str) -> str:
    if sys.stdin.isatty():
        password = getpass.getpass(f"{prompt}: ")
        if getpass.getpass("Again: ") != password:
            raise CommandProblem("the two passwords differ; nothing was changed")
        return password
    return sys.stdin.readline().rstrip("\r\n")


def _print(args: argparse.Namespace, data: object, lines: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2), flush=True)
    else:
        for line in lines:
            print(line, flush=True)


Report = tuple[object, list[str]]  # what a command prints: JSON for scripts, lines for people


def _run(args: argparse.Namespace,
         work: Callable[[Settings, AsyncSession], Coroutine[Any, Any, Report]]) -> int:
    """Run one command against the database in one transaction; report once it is committed."""
    settings = _settings()

    async def run() -> Report:
        async with opened(settings.database_url, settings.keys) as db:
            report = await work(settings, db)
            await db.commit()
            return report

    try:
        data, lines = asyncio.run(run())
    except (AccountRefused, CommandProblem) as refused:
        print(f"vio staff {args.staff_command}: {refused}", file=sys.stderr)
        return EXIT_REFUSED
    _print(args, data, lines)
    return 0


def _ended(count: int) -> str:
    return f"{count} sign-in{'s' * (count != 1)} ended"


def cmd_add(args: argparse.Namespace) -> int:
    try:
        password = _read_password("Password")
    except CommandProblem as problem:
        print(f"vio staff add: {problem}", file=sys.stderr)
        return EXIT_REFUSED

    async def work(settings: Settings, db: AsyncSession) -> Report:
        staff = await add_account(db, args.program, args.name, args.email, StaffRole(args.role),
                                  password, settings.timezone, SystemClock().now(), ACTOR)
        login = f"{settings.public_base_url}/login"
        return ({"staff_id": staff.id, "program": args.program, "email": staff.email,
                 "role": staff.role.value, "sign_in_at": login},
                [f"{staff.role.value} {staff.email} added (staff id {staff.id}); sign in at "
                 f"{login}"])

    return _run(args, work)


def cmd_passwd(args: argparse.Namespace) -> int:
    try:
        password = _read_password("New password")
    except CommandProblem as problem:
        print(f"vio staff passwd: {problem}", file=sys.stderr)
        return EXIT_REFUSED

    async def work(settings: Settings, db: AsyncSession) -> Report:
        staff = await account_for_email(db, args.email)
        ended = await change_password(db, staff, password, SystemClock().now(), ACTOR,
                                      current_password=None)
        return ({"email": staff.email, "password_changed": True, "sign_ins_ended": len(ended)},
                [f"{staff.email}: password changed; {_ended(len(ended))}"])

    return _run(args, work)


def cmd_reset(args: argparse.Namespace) -> int:
    try:
        password = _read_password("Temporary password")
    except CommandProblem as problem:
        print(f"vio staff reset: {problem}", file=sys.stderr)
        return EXIT_REFUSED

    async def work(settings: Settings, db: AsyncSession) -> Report:
        staff = await account_for_email(db, args.email)
        reset = await reset_sign_in(db, staff, SystemClock().now(), ACTOR, temporary=password,
                                    second_factor=args.second_factor)
        cleared = "; authenticator app cleared" if reset.second_factor_cleared else ""
        return ({"email": staff.email, "must_change_password": True,
                 "second_factor_cleared": reset.second_factor_cleared,
                 "sign_ins_ended": len(reset.ended_sign_ins)},
                [f"{staff.email}: temporary password set, a new one is due at the next "
                 f"sign-in{cleared}; {_ended(len(reset.ended_sign_ins))}"])

    return _run(args, work)


def _set_active(args: argparse.Namespace, active: bool) -> int:
    async def work(settings: Settings, db: AsyncSession) -> Report:
        staff = await account_for_email(db, args.email)
        ended = await set_active(db, staff, active, SystemClock().now(), ACTOR)
        return ({"email": staff.email, "active": active, "sign_ins_ended": len(ended)},
                [f"{staff.email}: account turned {'on' if active else 'off'}"
                 + ("" if active else f"; {_ended(len(ended))}")])

    return _run(args, work)


def cmd_deactivate(args: argparse.Namespace) -> int:
    return _set_active(args, False)


def cmd_reactivate(args: argparse.Namespace) -> int:
    return _set_active(args, True)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def cmd_list(args: argparse.Namespace) -> int:
    async def work(settings: Settings, db: AsyncSession) -> Report:
        program_id = None
        if args.program is not None:
            program = (await db.execute(select(Program).where(Program.name == args.program))
                       ).scalars().first()
            if program is None:
                raise CommandProblem(f"there is no program named {args.program!r}")
            program_id = program.id
        lines = await account_lines(db, program_id)
        table = [f"{'program':<20} {'name':<24} {'email':<32} {'role':<9} {'active':<6} "
                 f"{'second factor':<13} new password due"]
        table += [f"{line.program:<20} {line.name:<24} {line.email:<32} {line.role:<9} "
                  f"{_yes(line.active):<6} {_yes(line.second_factor):<13} "
                  f"{_yes(line.must_change_password)}" for line in lines]
        return [line.summary() for line in lines], table

    return _run(args, work)
