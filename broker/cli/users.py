"""``casebridge users add|disable|enable|reset|role|list``: the people who may use a node's console.

Works on the node's store directly (``--node-settings FILE``), so the first supervisor can be
created before anybody can sign in. Passwords are read from the terminal (or, for scripts,
from ``--password-file``), never from the command line. Every change is an audit record under
``--by`` (default: the operating-system user running the command).

What it must never do: print a password or its hash, or change an account without a record.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from broker.console.accounts import LANGUAGES, Accounts, Role
from broker.node.settings import load_settings
from broker.node.store import Store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "users",
        help="console accounts of a node: add, disable, enable, reset, role, list",
        description="Manage the people who may sign in to a node's console (docs/console.md).",
    )
    commands = parser.add_subparsers(dest="users_command", metavar="COMMAND", required=True)
    add = commands.add_parser("add", help="create an account")
    add.add_argument("username")
    add.add_argument("--name", required=True, help="display name")
    add.add_argument("--role", choices=[r.value for r in Role], required=True)
    add.add_argument("--totp", action="store_true", help="require an authenticator app code")
    add.add_argument("--time-zone", default="UTC")
    add.add_argument("--language", choices=LANGUAGES, default="en")
    add.add_argument("--email", help="address for notices of new messages (no content)")
    add.set_defaults(func=_add)
    disable = commands.add_parser("disable", help="stop an account from signing in")
    disable.add_argument("username")
    disable.set_defaults(func=_disable)
    enable = commands.add_parser("enable", help="allow a disabled or locked account again")
    enable.add_argument("username")
    enable.set_defaults(func=_enable)
    reset = commands.add_parser("reset", help="set a new password (unlocks the account)")
    reset.add_argument("username")
    second = reset.add_mutually_exclusive_group()
    second.add_argument("--totp", dest="totp", action="store_true", default=None)
    second.add_argument("--no-totp", dest="totp", action="store_false")
    reset.set_defaults(func=_reset)
    role = commands.add_parser("role", help="change a person's role")
    role.add_argument("username")
    role.add_argument("role", choices=[r.value for r in Role])
    role.set_defaults(func=_role)
    listing = commands.add_parser("list", help="list accounts")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_list)
    for p in (add, disable, enable, reset, role, listing):
        p.add_argument("--node-settings", type=Path, required=True, help="the node's settings")
        p.add_argument("--by", default=None, help="who makes the change (audit; default: you)")
    for p in (add, reset):
        p.add_argument("--password-file", type=Path, help="read the password from this file")


def _accounts(args: argparse.Namespace) -> tuple[Accounts, Store]:
    settings = load_settings(args.node_settings)
    store = Store(settings.store_path)
    console = settings.console
    return (
        Accounts(
            store,
            agency=settings.agency,
            clock=lambda: datetime.now(UTC),
            lockout_attempts=console.lockout_attempts if console else 5,
            lockout_minutes=console.lockout_minutes if console else 15,
        ),
        store,
    )


def _by(args: argparse.Namespace) -> str:
    return str(args.by or f"cli:{getpass.getuser()}")


def _password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        path: Path = args.password_file
        return path.read_text(encoding="utf-8").strip()
    first = getpass.getpass("New password: ")
    if getpass.getpass("Repeat it: ") != first:
        print("error: the two passwords differ", file=sys.stderr)
        raise SystemExit(2)
    return first


def _secret_note(username: str, secret: str | None, accounts: Accounts) -> None:
    if secret is not None:
        print(f"authenticator secret for {username}: {secret}")
        print(accounts.totp_uri(username, secret, "Casebridge"))


def _add(args: argparse.Namespace) -> int:
    accounts, store = _accounts(args)
    with store:
        secret = accounts.add(
            args.username,
            display_name=args.name,
            role=Role(args.role),
            password=_password(args),
            totp=args.totp,
            time_zone=args.time_zone,
            language=args.language,
            email=args.email,
            by=_by(args),
        )
        print(f"{args.username}: added as {args.role}")
        _secret_note(args.username, secret, accounts)
    return 0


def _disable(args: argparse.Namespace) -> int:
    accounts, store = _accounts(args)
    with store:
        accounts.disable(args.username, by=_by(args))
    print(f"{args.username}: disabled (signed out at the next request)")
    return 0


def _enable(args: argparse.Namespace) -> int:
    accounts, store = _accounts(args)
    with store:
        accounts.enable(args.username, by=_by(args))
    print(f"{args.username}: enabled")
    return 0


def _reset(args: argparse.Namespace) -> int:
    accounts, store = _accounts(args)
    with store:
        secret = accounts.reset(
            args.username, password=_password(args), totp=args.totp, by=_by(args)
        )
        print(f"{args.username}: password reset")
        _secret_note(args.username, secret, accounts)
    return 0


def _role(args: argparse.Namespace) -> int:
    accounts, store = _accounts(args)
    with store:
        accounts.set_role(args.username, Role(args.role), by=_by(args))
    print(f"{args.username}: role {args.role}")
    return 0


def _list(args: argparse.Namespace) -> int:
    accounts, store = _accounts(args)
    with store:
        users = accounts.all()
    if args.json:
        print(json.dumps([u.to_json() for u in users], indent=2))
        return 0
    for u in users:
        state = "disabled" if u.disabled else ("locked" if u.locked_until else "active")
        totp = "totp" if u.totp else "password"
        print(f"{u.username:20} {u.role.value:11} {state:9} {totp:9} {u.display_name}")
    return 0
