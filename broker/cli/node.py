"""``casebridge node --settings FILE``: run one agency's adapter node (API + NATS loops).

Settings format: ``docs/node-api.md``. The node runs until SIGINT/SIGTERM, then stops its
loops and closes its store cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

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
    parser.add_argument("--settings", type=Path, required=True, help="settings JSON file")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="json",
        help="structured log lines on stdout: json (default) or console (for humans)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
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
