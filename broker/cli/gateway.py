"""``casebridge gateway``: run a country's border gateway."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "gateway",
        help="run a border gateway (egress and ingress policy enforcement point)",
        description="Consume the country's SUBMIT and INBOX streams, verify each message's outer "
        "layer, apply the country's signed policy, route it on, and emit signed evidence. "
        "The settings file has the node settings format (docs/node-api.md) with agency "
        "<cc>.gateway and a policy file.",
    )
    parser.add_argument("--settings", type=Path, required=True, help="gateway settings JSON")
    parser.add_argument(
        "--log-format",
        choices=("json", "console"),
        default="json",
        help="structured log lines on stdout: json (default) or console (for humans)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from broker.gateway.runner import run_gateway  # noqa: PLC0415 - lazy: fast CLI start
    from broker.logs import configure_logging  # noqa: PLC0415
    from broker.node.settings import load_settings  # noqa: PLC0415

    configure_logging(args.log_format)
    settings = load_settings(args.settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await run_gateway(settings, stop=stop)

    asyncio.run(main())
    return 0
