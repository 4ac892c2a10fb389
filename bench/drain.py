"""Backlog drain after a destination outage: how fast the queue empties once the country is back.

Starts a DE + UA federation (hub, both servers and gateways, the UA police node) in a temporary
directory, stops UA (server, gateway, node), seals and submits ``--messages`` bulletins
DE (StA Berlin) -> UA (National Police) with the sender's real keys (they wait in DE's
``OUT_UA``; the DE gateway's fair share is raised for this one sender, so the backlog builds at
the machine's speed), starts UA again and measures, from the moment every UA process is ready:
the time to the first delivery, the time until the last queued message is in the node's inbox
(time to empty), and the drain rate (messages delivered / time to empty). Prints a table, never
asserts; the chaos suite (tests/chaos, ``test_destination_outage_with_a_backlog``) checks the
outcome. Run: ``.venv/bin/python bench/drain.py [--messages N]`` (default 9,000).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.chaos.harness import BACKLOG_SETTINGS, NPU, outage
from tests.integration.e2e_helpers import Running


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=9_000, help="backlog size (9,000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="casebridge-drain-") as tmp:
        fed = Running.start(Path(tmp) / "fed", nodes=[NPU], settings=BACKLOG_SETTINGS)
        try:
            drain, acked = outage(fed, args.messages, timeout=120 + args.messages / 5)
            inbox = fed.inbox_ids(NPU)
        finally:
            fed.close()
    rows = [
        ("queued (acknowledged while UA was down)", f"{drain.queued}"),
        ("queueing time (s)", f"{drain.queue_seconds:.1f}"),
        ("UA started -> every UA process ready (s)", f"{drain.ready_seconds:.1f}"),
        ("first delivery after UA is back (s)", f"{drain.first_seconds:.1f}"),
        ("time to empty (s)", f"{drain.drain_seconds:.1f}"),
        ("drain rate (messages/s)", f"{drain.rate:.1f}"),
        ("delivered once each", "yes" if sorted(inbox) == sorted(set(acked)) else "NO"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'backlog drain':<{width}} | value")
    print(f"{'-' * width}-|------")
    for name, value in rows:
        print(f"{name:<{width}} | {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
