"""``vio export attendance`` and ``vio dosage``: attendance records from the command line.

Both read settings from the environment, bring the database up to date first, and work on one
program (``--program``, needed only when the database holds several). Exports are audited with
the operating-system user as the actor, carry the 42 CFR § 2.32 notice, and a file written with
``--out`` is readable by its owner only (mode 0600).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Coroutine
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vio.attendance.dosage import IsoWeek
from vio.attendance.export import ExportFormat, export_attendance
from vio.attendance.records import program_week_dosage
from vio.clock import SystemClock
from vio.db import opened, write_private
from vio.models import Program
from vio.settings import Settings, SettingsError

EXIT_USAGE = 2


class CommandProblem(Exception):
    """Something the person at the terminal can fix; printed without a traceback."""


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-23") from None


def _week(text: str) -> IsoWeek:
    try:
        return IsoWeek.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export attendance`` and ``dosage`` to the ``vio`` command."""
    export = commands.add_parser("export", help="export records")
    what = export.add_subparsers(dest="export_what", required=True)
    attendance = what.add_parser(
        "attendance", help="attendance per person per session, as CSV or a FHIR Bundle")
    attendance.add_argument("--from", dest="first_day", type=_day, required=True,
                            help="first local day, YYYY-MM-DD")
    attendance.add_argument("--to", dest="last_day", type=_day, required=True,
                            help="last local day (inclusive), YYYY-MM-DD")
    attendance.add_argument("--format", choices=[f.value for f in ExportFormat],
                            default=ExportFormat.CSV.value)
    attendance.add_argument("--out", type=Path, help="write here instead of standard output")
    attendance.add_argument("--program", type=int, help="program id")
    attendance.set_defaults(run=cmd_export_attendance)

    dosage = commands.add_parser("dosage", help="weekly dosage and alerts for every patient")
    dosage.add_argument("--week", type=_week, help="ISO week, YYYY-Www (default: this week)")
    dosage.add_argument("--json", action="store_true")
    dosage.add_argument("--program", type=int, help="program id")
    dosage.set_defaults(run=cmd_dosage)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise CommandProblem(f"bad setting: {exc}") from None


async def _program(db: AsyncSession, program_id: int | None) -> Program:
    if program_id is not None:
        program = await db.get(Program, program_id)
        if program is None:
            raise CommandProblem(f"there is no program {program_id}")
        return program
    programs = list((await db.execute(select(Program).order_by(Program.id))).scalars())
    if len(programs) != 1:
        raise CommandProblem("choose a program with --program "
                             f"(this database has {len(programs)})")
    return programs[0]


def _run(command: str, work: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(work)
    except CommandProblem as problem:
        print(f"vio {command}: {problem}", file=sys.stderr)
        return EXIT_USAGE


async def _export(args: argparse.Namespace) -> int:
    settings = _settings()
    async with opened(settings.database_url, settings.keys) as db:
        program = await _program(db, args.program)
        try:
            export = await export_attendance(
                db, program, args.first_day, args.last_day, ExportFormat(args.format),
                f"cli:{getpass.getuser()}", SystemClock().now())
        except ValueError as exc:
            raise CommandProblem(str(exc)) from None
        if args.out is None:
            sys.stdout.write(export.content)
        else:
            write_private(args.out, export.content)  # mode 0600: it holds PHI
        await db.commit()
    where = args.out or "standard output"
    print(f"{export.count} {'rows' if args.format == 'csv' else 'encounters'} to {where}",
          file=sys.stderr)
    return 0


def cmd_export_attendance(args: argparse.Namespace) -> int:
    return _run("export attendance", _export(args))


def _table(rows: list[dict[str, object]]) -> str:
    header = (f"{'patient':<28} {'target':>6} {'hours':>6} {'3h days':>7} {'sched':>5} "
              f"{'came':>4} {'missed':>6} {'streak':>6}  alerts")
    lines = [header]
    for row in rows:
        alerts = row["alerts"]
        lines.append(
            f"{str(row['name'])[:28]:<28} {row['target_hours']:>6} {row['attended_hours']:>6} "
            f"{row['days_with_three_hours']:>7} {row['sessions_scheduled']:>5} "
            f"{row['sessions_attended']:>4} {row['sessions_missed']:>6} "
            f"{row['consecutive_absences']:>6}  "
            f"{', '.join(alerts) if isinstance(alerts, list) else ''}")
    return "\n".join(lines)


async def _dosage(args: argparse.Namespace) -> int:
    settings = _settings()
    now = SystemClock().now()
    async with opened(settings.database_url, settings.keys) as db:
        program = await _program(db, args.program)
        week = args.week or IsoWeek.containing(now, program.timezone)
        report = await program_week_dosage(db, program, week, now)
    rows = [{"name": patient.legal_name, **dosage.summary()} for patient, dosage in report]
    if args.json:
        print(json.dumps({"program": program.name, "week": str(week), "patients": rows},
                         indent=2))
    else:
        print(f"{program.name}, week {week}")
        print(_table(rows))
    return 0


def cmd_dosage(args: argparse.Namespace) -> int:
    return _run("dosage", _dosage(args))
