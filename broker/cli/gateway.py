"""``casebridge gateway``: run a country's border gateway; ``casebridge gateway quarantine``:
list, retry or drop the inputs it set aside (offline, on its SQLite store file)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import signal
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.gateway.quarantine import GatewayQuarantine


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "gateway",
        help="run a border gateway (egress and ingress policy enforcement point)",
        description="Consume the country's SUBMIT and INBOX streams, verify each message's outer "
        "layer, apply the country's signed policy, route it on, and emit signed evidence. "
        "The settings file has the node settings format (docs/node-api.md) with agency "
        "<cc>.gateway and a policy file, and without a key-agreement key or API token "
        "(broker/gateway/settings.py).",
    )
    parser.add_argument("--settings", type=Path, help="gateway settings JSON (required to run)")
    parser.add_argument(
        "--log-format",
        choices=("json", "console"),
        default="json",
        help="structured log lines on stdout: json (default) or console (for humans)",
    )
    parser.set_defaults(func=_run)
    commands = parser.add_subparsers(dest="gateway_command", metavar="COMMAND")
    quarantine = commands.add_parser(
        "quarantine",
        help="inputs the gateway set aside after repeated failures (docs/operations.md)",
        description="List, retry or drop quarantined inputs, offline on the gateway's store "
        "file. retry marks an item; the running gateway settles it within seconds.",
    )
    actions = quarantine.add_subparsers(dest="quarantine_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list quarantined inputs, oldest first")
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(func=_quarantine_list)
    retry = actions.add_parser("retry", help="ask the running gateway to settle an item again")
    retry.add_argument("id", type=int)
    retry.set_defaults(func=_quarantine_retry)
    drop = actions.add_parser("drop", help="delete an item for good (audited)")
    drop.add_argument("id", type=int)
    drop.add_argument("--justification", required=True, help="why (kept in the audit log)")
    drop.add_argument("--actor", help="who drops it (default: your user name)")
    drop.add_argument("--agency", help="the gateway's agency id (default: from its audit log)")
    drop.set_defaults(func=_quarantine_drop)
    for sub_parser in (listing, retry, drop):
        sub_parser.add_argument("--store", type=Path, required=True, help="gateway store file")
        sub_parser.add_argument("--json", action="store_true", help="print JSON")


def _open(args: argparse.Namespace) -> GatewayQuarantine:
    from broker.errors import ConfigError  # noqa: PLC0415
    from broker.gateway.quarantine import GatewayQuarantine  # noqa: PLC0415 - lazy: fast start

    if not args.store.is_file():
        raise ConfigError(f"{args.store}: no such gateway store file")
    return GatewayQuarantine(args.store)


def _quarantine_list(args: argparse.Namespace) -> int:
    from broker.cli.focal import table  # noqa: PLC0415

    store = _open(args)
    try:
        rows = [i.to_json() for i in store.items(limit=args.limit)]
    finally:
        store.close()
    columns = ("id", "direction", "stream", "stream_seq", "msg_id", "error", "attempts", "last_at")
    print(json.dumps({"quarantine": rows}, indent=2) if args.json else table(rows, columns))
    return 0


def _quarantine_retry(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        store.request_retry(args.id)
    finally:
        store.close()
    print(f"quarantined input {args.id} marked for retry by the running gateway")
    return 0


def _gateway_agency(path: Path) -> str | None:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT agency FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        row = None
    finally:
        db.close()
    return str(row[0]) if row is not None else None


def _quarantine_drop(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime  # noqa: PLC0415

    from broker.errors import ConfigError  # noqa: PLC0415

    agency = args.agency or _gateway_agency(args.store)
    if not agency:
        raise ConfigError("give --agency (the store's audit log names no gateway yet)")
    store = _open(args)
    try:
        store.drop(
            args.id,
            agency=agency,
            actor=args.actor or getpass.getuser(),
            justification=args.justification,
            now=datetime.now(UTC),
        )
    finally:
        store.close()
    print(f"quarantined input {args.id} dropped")
    return 0


def _run(args: argparse.Namespace) -> int:
    from broker.gateway.runner import run_gateway  # noqa: PLC0415 - lazy: fast CLI start
    from broker.gateway.settings import load_gateway_settings  # noqa: PLC0415
    from broker.logs import configure_logging  # noqa: PLC0415

    if args.settings is None:
        print("error [bad_request]: give --settings FILE to run the gateway", file=sys.stderr)
        return 2
    configure_logging(args.log_format)
    settings = load_gateway_settings(args.settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await run_gateway(settings, stop=stop)

    asyncio.run(main())
    return 0
