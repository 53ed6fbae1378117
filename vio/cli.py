"""The ``vio`` command: serve, doctor, migrate, staff accounts, demo links, and a headless bot
participant."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

from vio.settings import Settings, SettingsError


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"vio: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def _migrate(settings: Settings) -> list[str]:
    from vio.db import create_engine, migrate

    engine = create_engine(settings.database_url)
    try:
        return await migrate(engine, settings.keys)
    finally:
        await engine.dispose()


def _migrations_line(applied: list[str]) -> str:
    if not applied:
        return "database is up to date: no migration to apply"
    return (f"applied {len(applied)} migration{'s' * (len(applied) != 1)}: "
            f"{', '.join(applied)}; the database is now at {applied[-1]}")


def _print(args: argparse.Namespace, data: object, lines: Sequence[str]) -> None:
    """``--json``: ``data`` as JSON for a script; otherwise ``lines`` for a person."""
    if getattr(args, "json", False):
        print(json.dumps(data, default=str), flush=True)  # one line: scripts read lines
    else:
        for line in lines:
            print(line, flush=True)


async def _seed_demo(settings: Settings) -> None:
    from vio import demo
    from vio.clock import SystemClock
    from vio.db import opened

    async with opened(settings.database_url, settings.keys) as db:
        await demo.seed(db, settings.timezone, SystemClock().now())
        await db.commit()


async def _demo_links(settings: Settings) -> dict[str, object]:
    from vio import demo
    from vio.clock import SystemClock
    from vio.db import opened
    from vio.security import Signer

    async with opened(settings.database_url, settings.keys) as db:
        links = await demo.demo_links(db, Signer(settings.secret_key),
                                      settings.public_base_url, settings.timezone,
                                      SystemClock().now())
        await db.commit()
        return links


INSECURE_PUBLIC_URL = (
    "vio: VIO_PUBLIC_BASE_URL={url} is plain http:// on an address other than this machine's "
    "loopback, and browsers give the camera and microphone only to https:// pages. Set "
    "VIO_PUBLIC_BASE_URL to the https:// address people use (docs/deploy.md), or pass "
    "--insecure-http to serve plain HTTP anyway.")


def cmd_serve(args: argparse.Namespace) -> int:
    from vio.doctor import tls_problem
    from vio.pages.https import is_secure_origin

    settings = _settings()
    if "VIO_PUBLIC_BASE_URL" not in os.environ:
        scheme = "https" if settings.tls_cert_file else "http"
        settings = dataclasses.replace(
            settings, public_base_url=f"{scheme}://{args.host}:{args.port}")
    if not (args.insecure_http or is_secure_origin(settings.public_base_url)):
        print(INSECURE_PUBLIC_URL.format(url=settings.public_base_url), file=sys.stderr)
        return 2
    problem = tls_problem(settings)
    if problem is not None:
        print(f"vio: {problem}", file=sys.stderr)
        return 2

    import uvicorn

    from vio.app import create_app
    from vio.listen import listening_socket
    from vio.nodes.serving import NodeServer, run_workers

    if args.workers > 1 and not settings.redis_url:
        print("vio serve: --workers needs VIO_REDIS_URL (the workers share rooms through it)",
              file=sys.stderr)
        return 2
    if settings.redis_url and not args.worker:
        from vio.nodes.connection import reach

        reached = asyncio.run(reach(settings))
        if reached.refused:  # the settings are wrong: say what, and do not start
            print(f"vio: {reached.message}", file=sys.stderr)
            return 2
        if not reached.ok:  # Redis may come later; the nodes keep trying
            print(f"vio: warning: {reached.message}; serving anyway", file=sys.stderr)
    if args.demo:
        settings = dataclasses.replace(settings, demo=True)
    if args.worker:
        pass  # the parent migrated (and seeded) already
    elif args.demo:
        asyncio.run(_seed_demo(settings))
        print(f"vio demo is ready: open {settings.public_base_url}/ "
              f"(therapist sign-in: therapist@demo.vio / demo-therapist; "
              f"patient links: `vio demo-links --json`)", flush=True)
    else:
        applied = asyncio.run(_migrate(settings))
        if applied:
            print(f"vio: {_migrations_line(applied)}", flush=True)
        print(f"vio is serving {settings.public_base_url}/", flush=True)
    if args.workers > 1:
        return run_workers(["serve", "--worker", "--host", args.host, "--port", str(args.port),
                            *(["--insecure-http"] if args.insecure_http else []),
                            *(["--demo"] if args.demo else [])],
                           args.workers, settings)
    several = bool(settings.redis_url)
    sockets = [listening_socket(args.host, args.port, settings.ws_send_buffer_bytes,
                                reuse_port=several)]
    if args.node_port:
        sockets.append(listening_socket(args.host, args.node_port, settings.ws_send_buffer_bytes))
    app = create_app(settings)
    config = uvicorn.Config(app, log_level="info",
                            ws_max_size=settings.ws_frame_cap_bytes,
                            proxy_headers=True,
                            forwarded_allow_ips=list(settings.trusted_proxies),
                            ssl_certfile=settings.tls_cert_file or None,
                            ssl_keyfile=settings.tls_key_file or None)
    node = app.state.node
    NodeServer(config, node.drain if node is not None else None).run(sockets=sockets)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from vio.doctor import diagnose, report

    checks = asyncio.run(diagnose(os.environ))
    _print(args, [{"status": check.status.value, "part": check.part, "message": check.message}
                  for check in checks], report(checks))
    return 1 if any(check.is_problem for check in checks) else 0


def cmd_migrate(args: argparse.Namespace) -> int:
    applied = asyncio.run(_migrate(_settings()))
    _print(args, {"applied": applied}, [_migrations_line(applied)])
    return 0


def cmd_demo_links(args: argparse.Namespace) -> int:
    settings = _settings()
    links = asyncio.run(_demo_links(settings))
    if args.json:
        print(json.dumps(links, indent=2))
    else:
        for role in ("therapist", "admin"):
            person: dict[str, str] = links[role]  # type: ignore[assignment]
            print(f"{role.capitalize():<12} sign in at {person['login']} as {person['email']} "
                  f"/ {person['password']}")
        for patient in links["patients"]:  # type: ignore[attr-defined]
            roster = "" if patient["on_roster"] else "  (not on the group's roster)"
            print(f"{patient['name']:<12} {patient['link']}{roster}")
        for invite in links["family_invites"]:  # type: ignore[attr-defined]
            print(f"{'Family':<12} {invite['link']}")
    return 0


def cmd_bot(args: argparse.Namespace) -> int:
    from vio.bot import SignInFailed, run_bot
    from vio.media import announce_host_addresses
    from vio.settings import parse_list

    env_addresses = os.environ.get("VIO_ICE_ANNOUNCE_ADDRESSES", "")
    addresses = args.ice_address or list(parse_list(env_addresses))
    if addresses:
        announce_host_addresses(addresses)
    try:
        result = asyncio.run(run_bot(
            args.link, seconds=args.seconds, email=args.email, password=args.password,
            session_id=args.session, camera=not args.no_camera, mic=not args.no_mic,
            admit_all=args.admit_all, name=args.name, reconnect=not args.no_reconnect))
    except SignInFailed as exc:
        print(f"vio bot: {exc}", file=sys.stderr)
        return 2
    summary = result.summary()
    _print(args, summary, _bot_lines(summary))
    return 0


def _bot_lines(summary: dict[str, object]) -> list[str]:
    if not summary["admitted"]:
        return [f"not admitted: {summary['refusal'] or 'the room did not let the bot in'}"]
    lines = [f"admitted; reconnected {summary['reconnects']} time(s)"]
    for remote in summary["remote"]:  # type: ignore[attr-defined]
        lines.append(f"  from {remote['name']} ({remote['role']}): {remote['video_frames']} "
                     f"video frames, {remote['audio_frames']} audio frames, "
                     f"{remote['decode_errors']} decode errors")
    paused: list[str] = summary["video_paused"]  # type: ignore[assignment]
    if paused:
        lines.append(f"  video held back for a weak link: {', '.join(paused)}")
    return lines


async def _invite(settings: Settings, session_id: int, member_id: int) -> str:
    from vio import family
    from vio.clock import SystemClock
    from vio.db import opened
    from vio.models import FamilyMember, Session

    async with opened(settings.database_url, settings.keys) as db:
        session = await db.get(Session, session_id)
        member = await db.get(FamilyMember, member_id)
        if session is None or member is None:
            raise family.InviteRefused("No such session or family member.")
        token = await family.issue_invite(db, session, member, "command-line",
                                          SystemClock().now())
        await db.commit()
        return f"{settings.public_base_url}/i/{token}"


def cmd_invite_create(args: argparse.Namespace) -> int:
    from vio.family import InviteRefused

    settings = _settings()
    try:
        print(asyncio.run(_invite(settings, args.session, args.family_member)))
    except InviteRefused as refused:
        print(f"vio invite: {refused.message}", file=sys.stderr)
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="vio", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate the database and serve vio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--demo", action="store_true", help="seed the demo program")
    serve.add_argument("--workers", type=int, default=1,
                       help="node processes sharing the port (needs VIO_REDIS_URL)")
    serve.add_argument("--node-port", type=int, default=0,
                       help="also listen on this port, which only this process serves")
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--insecure-http", action="store_true",
                       help="serve even though VIO_PUBLIC_BASE_URL is http:// on a "
                            "non-loopback address (no camera for browsers there)")
    serve.set_defaults(run=cmd_serve)

    doctor = commands.add_parser(
        "doctor", help="check a deployment: settings, database, public URL, ICE, TURN")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(run=cmd_doctor)

    migrate = commands.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--json", action="store_true")
    migrate.set_defaults(run=cmd_migrate)

    from vio.audit_cli import register as register_audit

    register_audit(commands)

    links = commands.add_parser("demo-links", help="print the demo's ways in")
    links.add_argument("--json", action="store_true")
    links.set_defaults(run=cmd_demo_links)

    from vio.attendance.cli import register as register_attendance

    register_attendance(commands)

    invite = commands.add_parser("invite", help="family invitations")
    invite_commands = invite.add_subparsers(dest="invite_command", required=True)
    create = invite_commands.add_parser("create", help="issue an invite link")
    create.add_argument("--session", type=int, required=True)
    create.add_argument("--family-member", type=int, required=True)
    create.set_defaults(run=cmd_invite_create)

    from vio.staff_cli import register as register_staff

    register_staff(commands)

    bot = commands.add_parser("bot", help="join a session as a headless participant")
    bot.add_argument("--link", required=True,
                     help="a patient's personal link, or the sign-in page URL/login for staff")
    bot.add_argument("--email")
    bot.add_argument("--password")
    bot.add_argument("--session", type=int, help="session id (default: the one open now)")
    bot.add_argument("--seconds", type=float, default=10.0)
    bot.add_argument("--no-camera", action="store_true")
    bot.add_argument("--no-mic", action="store_true")
    bot.add_argument("--admit-all", action="store_true",
                     help="as a therapist, admit everyone who waits")
    bot.add_argument("--name", help="display name (family invites)")
    bot.add_argument("--no-reconnect", action="store_true",
                     help="end at the first drop instead of reconnecting (1006, 1011, 1012)")
    bot.add_argument("--ice-address", action="append",
                     help="host address to offer as ICE candidate (repeatable; default: "
                          "VIO_ICE_ANNOUNCE_ADDRESSES)")
    bot.add_argument("--json", action="store_true",
                     help="print the summary as JSON (for scripts and tests)")
    bot.set_defaults(run=cmd_bot)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
