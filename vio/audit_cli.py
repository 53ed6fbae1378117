"""``vio audit``: check the sealed audit chain, print its head, seal it again under a new secret.

- ``verify [--expect SEQ:HASH] [--json]`` checks every row's seal up to the chain's head and
  names the first row altered or deleted. ``--expect`` takes a head printed earlier by
  ``vio audit head`` and kept off this machine: that row must still be there with that hash,
  which catches the newest rows deleted and the database's own head row set back to match.
- ``head [--json]`` checks the chain the same way and prints its head as one line,
  ``audit head SEQ:HASH``, which ``--expect`` takes back whole (``deploy/vio-audit-head.timer``
  writes it to the system journal every day).
- ``reseal`` after ``VIO_SECRET_KEY`` changed: the old secret is read from the terminal or
  standard input; a chain that holds under it is sealed under the new one (docs/audit.md).

Exit status: 0 the chain holds, 1 it does not (the first problem is named on standard error),
2 bad input or a bad setting. ``--json`` prints one object on standard output for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys

from vio.audit_chain import AuditHead, ChainReport, reseal_audit_chain, verify_audit_chain
from vio.clock import SystemClock
from vio.db import opened
from vio.keys import InstallKeys
from vio.settings import Settings, SettingsError

EXIT_BROKEN = 1
EXIT_USAGE = 2


def _head(text: str) -> AuditHead:
    try:
        return AuditHead.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit verify``, ``audit head`` and ``audit reseal`` to the ``vio`` command."""
    audit = commands.add_parser("audit", help="the sealed audit log: verify it, print its head")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify", help="check every audit row's seal up to the head; name the first row "
                       "altered or deleted")
    verify.add_argument("--expect", type=_head, metavar="SEQ:HASH",
                        help="a head printed by `vio audit head` and kept off this machine: "
                             "it must still be on the chain, unchanged")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=cmd_audit_verify)

    head = audit_commands.add_parser(
        "head", help="check the chain and print its head, SEQ:HASH, to keep elsewhere")
    head.add_argument("--json", action="store_true")
    head.set_defaults(run=cmd_audit_head)

    reseal = audit_commands.add_parser(
        "reseal", help="after VIO_SECRET_KEY changed: check the chain under the old secret "
                       "(read from the terminal or standard input) and seal it under the new")
    reseal.set_defaults(run=cmd_audit_reseal)


def _settings(command: str) -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"vio audit {command}: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


async def _verify(settings: Settings, expect: AuditHead | None) -> ChainReport:
    async with opened(settings.database_url, settings.keys) as db:
        return await verify_audit_chain(db, expect)


def _as_json(report: ChainReport, expect: AuditHead | None) -> str:
    broken = report.broken
    return json.dumps({
        "intact": broken is None,
        "rows": report.rows,
        "head": str(report.head) if broken is None else None,
        "holds_through": str(report.head),
        "expected": None if expect is None else str(expect),
        "problem": None if broken is None else {
            "kind": str(broken.problem), "seq": broken.seq, "audit_id": broken.audit_id,
            "message": str(broken)},
    })


def _holding(rows: int) -> str:
    if rows <= 1:
        return "row 1 holds" if rows else "no row before it holds"
    return f"rows 1 to {rows} hold"


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the chain (and the head kept elsewhere); name the first problem."""
    report = asyncio.run(_verify(_settings("verify"), args.expect))
    if args.json:
        print(_as_json(report, args.expect))
    elif report.broken is None:
        through = "" if args.expect is None else f"; the expected head {args.expect} is on it"
        print(f"audit chain intact: {report.rows} rows, head {report.head}{through}")
    if report.broken is not None:
        print(f"vio audit verify: {report.broken} ({_holding(report.rows)})", file=sys.stderr)
        return EXIT_BROKEN
    return 0


def cmd_audit_head(args: argparse.Namespace) -> int:
    """Print the head of a chain that holds, for keeping off this machine."""
    report = asyncio.run(_verify(_settings("head"), None))
    if args.json:
        print(_as_json(report, None))
    elif report.broken is None:
        print(f"audit head {report.head}")
    if report.broken is not None:
        print(f"vio audit head: the audit chain does not hold, so it has no head to keep: "
              f"{report.broken} ({_holding(report.rows)})", file=sys.stderr)
        return EXIT_BROKEN
    return 0


async def _reseal(settings: Settings, old_keys: InstallKeys) -> tuple[ChainReport, int]:
    """Re-seal the chain and the second-factor seeds in one transaction: both or neither."""
    from vio.security import reseal_totp_seeds

    async with opened(settings.database_url, settings.keys) as db:
        before = await reseal_audit_chain(db, old_keys.audit, SystemClock().now(),
                                          f"cli:{getpass.getuser()}")
        if before.broken is not None:
            await db.rollback()
            return before, 0
        seeds = await reseal_totp_seeds(db, old_keys)
        await db.commit()
        return before, seeds


def cmd_audit_reseal(args: argparse.Namespace) -> int:
    """Seal the chain under the new secret, if it holds under the old one."""
    settings = _settings("reseal")
    if sys.stdin.isatty():
        old_secret = getpass.getpass("The old VIO_SECRET_KEY: ")
    else:
        old_secret = sys.stdin.readline().rstrip("\n")
    if not old_secret:
        print("vio audit reseal: give the old secret on standard input", file=sys.stderr)
        return EXIT_USAGE
    if old_secret == settings.secret_key:
        print("vio audit reseal: that is the secret in use now; give the one it replaced",
              file=sys.stderr)
        return EXIT_USAGE
    from vio.security import SeedUnreadable

    try:
        before, seeds = asyncio.run(_reseal(settings, InstallKeys.derive(old_secret)))
    except SeedUnreadable as unreadable:
        print(f"vio audit reseal: nothing changed: {unreadable}", file=sys.stderr)
        return EXIT_BROKEN
    if before.broken is not None:
        print(f"vio audit reseal: nothing changed: under the old secret {before.broken} "
              f"({_holding(before.rows)})", file=sys.stderr)
        return EXIT_BROKEN
    print(f"audit chain resealed: {before.rows} rows held under the old secret up to head "
          f"{before.head}; keep the new head (`vio audit head`) elsewhere")
    print(f"second-factor seeds resealed under the new secret: {seeds}")
    return 0
