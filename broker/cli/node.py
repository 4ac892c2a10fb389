"""``casebridge node --settings FILE``: run one agency's adapter node (API + NATS loops);
``casebridge node quarantine list|retry|drop``: an operator's control of the deliveries the
running node set aside (through its API, like the focal-point commands).

Settings format: ``docs/node-api.md``. The node runs until SIGINT/SIGTERM, then stops its
loops and closes its store cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import signal
import sys
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from broker.cli.focal import _client, _common, _guard, table
from broker.logs import LOG_FORMATS, configure_logging
from broker.node.api import SERVER_OPTIONS, create_app
from broker.node.runtime import TransportFactory, nats_transport, node_metrics, running_node
from broker.node.settings import Settings, load_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "node",
        help="run an agency's adapter node (HTTP API on loopback, NATS delivery loop)",
        description="Run the adapter node described by a settings file (docs/node-api.md).",
    )
    parser.add_argument("--settings", type=Path, help="settings JSON file (required to run)")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="json",
        help="structured log lines on stdout: json (default) or console (for humans)",
    )
    parser.set_defaults(func=_run)
    commands = parser.add_subparsers(dest="node_command", metavar="COMMAND")
    quarantine = commands.add_parser(
        "quarantine",
        help="deliveries the node set aside after repeated local failures",
        description="List, retry or drop quarantined deliveries through the node's API "
        "(docs/node-api.md#quarantine).",
    )
    actions = quarantine.add_subparsers(dest="quarantine_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list quarantined deliveries, oldest first")
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(func=_guard(_quarantine_list))
    retry = actions.add_parser("retry", help="run the receive decision again on one")
    retry.add_argument("id", type=int)
    retry.add_argument("--actor", help="who retries it (default: your user name)")
    retry.set_defaults(func=_guard(_quarantine_retry))
    drop = actions.add_parser("drop", help="delete one for good (audited)")
    drop.add_argument("id", type=int)
    drop.add_argument("--why", required=True, help="justification (kept in the audit log)")
    drop.add_argument("--actor", help="who drops it (default: your user name)")
    drop.set_defaults(func=_guard(_quarantine_drop))
    for sub_parser in (listing, retry, drop):
        _common(sub_parser)


def _quarantine_list(args: argparse.Namespace) -> int:
    document = _client(args).call("GET", "/v1/quarantine", query={"limit": str(args.limit)})
    columns = ("id", "lane", "claimed_message_id", "claimed_sender", "error", "attempts", "last_at")
    print(json.dumps(document, indent=2) if args.json else table(document["quarantine"], columns))
    return 0


def _quarantine_retry(args: argparse.Namespace) -> int:
    result = _client(args).call(
        "POST",
        f"/v1/quarantine/{args.id}/retry",
        headers={"X-Actor": args.actor or getpass.getuser()},
    )
    text = f"{args.id}: {result['outcome']}"
    if result["outcome"] == "failed":
        text += f" ({result['error']}: {result['detail']})"
    print(json.dumps(result, indent=2) if args.json else text)
    return 1 if result["outcome"] == "failed" else 0


def _quarantine_drop(args: argparse.Namespace) -> int:
    result = _client(args).call(
        "DELETE",
        f"/v1/quarantine/{args.id}",
        headers={"X-Actor": args.actor or getpass.getuser()},
        query={"justification": args.why},
    )
    print(json.dumps(result, indent=2) if args.json else f"{args.id}: dropped")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.settings is None:
        print("error [bad_request]: give --settings FILE to run the node", file=sys.stderr)
        return 2
    configure_logging(args.log_format)
    settings = load_settings(args.settings)
    asyncio.run(serve(settings))
    return 0


async def serve(settings: Settings, transport_factory: TransportFactory = nats_transport) -> None:
    """Serve the API (with ``/metrics``) and run the node until SIGINT or SIGTERM."""
    registry = CollectorRegistry()
    metrics = node_metrics(registry, settings)
    app = create_app(
        lambda: running_node(settings, transport_factory, registry=registry, metrics=metrics),
        token=settings.api.token,
        registry=registry,
        metrics=metrics,
    )
    if settings.lookup_file is not None:
        from broker.node.lookup_api import add_lookups  # noqa: PLC0415 - only when configured

        add_lookups(app, settings.lookup_file, store_path=settings.store_path)
    runner = web.AppRunner(app, **SERVER_OPTIONS)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, settings.api.host, settings.api.port).start()
        structlog.get_logger("casebridge.node").info(
            "node_started",
            agency=settings.agency,
            api=f"http://{settings.api.host}:{settings.api.port}",
            metrics=f"http://{settings.api.host}:{settings.api.port}/metrics",
        )
        await stop.wait()
    finally:
        await runner.cleanup()
