"""The ``vio`` command: serve, migrate, demo links, and a headless bot participant."""

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


async def _migrate(settings: Settings) -> None:
    from vio.db import opened

    async with opened(settings.database_url):
        pass


async def _seed_demo(settings: Settings) -> None:
    from vio import demo
    from vio.clock import SystemClock
    from vio.db import opened

    async with opened(settings.database_url) as db:
        await demo.seed(db, settings.timezone, SystemClock().now())
        await db.commit()


async def _demo_links(settings: Settings) -> dict[str, object]:
    from vio import demo
    from vio.clock import SystemClock
    from vio.db import opened
    from vio.security import Signer

    async with opened(settings.database_url) as db:
        links = await demo.demo_links(db, Signer(settings.secret_key),
                                      settings.public_base_url, settings.timezone,
                                      SystemClock().now())
        await db.commit()
        return links


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from vio.app import create_app
    from vio.listen import listening_socket

    settings = _settings()
    if "VIO_PUBLIC_BASE_URL" not in os.environ:
        settings = dataclasses.replace(
            settings, public_base_url=f"http://{args.host}:{args.port}")
    if args.demo:
        asyncio.run(_seed_demo(settings))
    else:
        asyncio.run(_migrate(settings))
        print(f"vio demo is ready: open {settings.public_base_url}/ "
              f"(therapist sign-in: therapist@demo.vio / demo-therapist; "
              f"patient links: `vio demo-links --json`)", flush=True)
    sock = listening_socket(args.host, args.port, settings.ws_send_buffer_bytes)
    config = uvicorn.Config(create_app(settings), log_level="info",
                            ws_max_size=settings.ws_frame_cap_bytes)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    asyncio.run(_migrate(_settings()))
    print("database is up to date")
    return 0


def cmd_demo_links(args: argparse.Namespace) -> int:
    settings = _settings()
    links = asyncio.run(_demo_links(settings))
    if args.json:
        print(json.dumps(links, indent=2))
    else:
        print(f"Therapist: {links['therapist']}\nAdmin: {links['admin']}")
        for patient in links["patients"]:  # type: ignore[attr-defined]
            print(f"{patient['name']:<12} {patient['link']}")
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
            admit_all=args.admit_all, name=args.name))
    except SignInFailed as exc:
        print(f"vio bot: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.summary()))
    return 0


async def _invite(settings: Settings, session_id: int, member_id: int) -> str:
    from vio import family
    from vio.clock import SystemClock
    from vio.db import opened
    from vio.models import FamilyMember, Session

    async with opened(settings.database_url) as db:
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
    serve.set_defaults(run=cmd_serve)

    migrate = commands.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(run=cmd_migrate)

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
    bot.add_argument("--ice-address", action="append",
                     help="host address to offer as ICE candidate (repeatable; default: "
                          "VIO_ICE_ANNOUNCE_ADDRESSES)")
    bot.set_defaults(run=cmd_bot)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
