"""Change feed and webhooks: delivery lag from commit to receiver, and feed read throughput.

Webhook lag: a node store (SQLite, WAL, ``synchronous=FULL`` as in production) gets changes
committed at a steady rate (``--rates``, default 50 and 200 per second, one transaction per
change from a worker thread, as the node commits), each making one event through the store's
trigger; the node's delivery loop (:class:`broker.node.webhooks.Deliverer`, default settings)
signs and POSTs every event to a receiver on loopback (aiohttp, in the same process), which
verifies nothing but records when each event arrived. Lag = arrival - commit returned. Prints
p50, p99 and the worst lag per rate (target: p99 under 1 s at 200 events/s).

Feed throughput: ``--events`` events (default 20,000) are committed, then read back with
:func:`broker.node.events.read_page` pages of 1,000 (what ``GET /v1/events`` runs before it
encodes JSON), and encoded as the API would; events per second.

NATS, the gateways and the HTTP API in front of the feed are outside this measurement (see
bench/federation.py for the message path). Run: ``.venv/bin/python bench/events.py``. Prints
a table, never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from broker.node import events, webhooks
from broker.node.store import Store
from broker.node.webhooks import Deliverer, WebhookSettings


def _change(store: Store, index: int) -> float:
    """Commit one change (a correction mark: one event); when the commit returned."""
    with store.transaction() as db:
        db.execute(
            "INSERT INTO message_marks (message_id, mark, by_message_id, reason, at) "
            "VALUES (?, 'corrected', ?, 'bench', '2026-12-02T12:00:00Z')",
            (f"bench-{index}", f"by-{index}"),
        )
    return time.perf_counter()


async def _lag_run(path: Path, rate: float, seconds: float) -> list[float]:
    arrived: dict[str, float] = {}

    async def receive(request: web.Request) -> web.Response:
        document = json.loads(await request.read())
        arrived.setdefault(document["data"]["message_id"], time.perf_counter())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    committed: dict[str, float] = {}
    with Store(path) as store:
        webhooks.add(
            store,
            system="bench",
            url=url,
            event_types=[],
            after=None,
            now=datetime.now(UTC),
        )
        loop_task = asyncio.create_task(Deliverer(store, WebhookSettings()).run())
        count = int(rate * seconds)
        start = time.perf_counter()
        for index in range(count):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            committed[f"bench-{index}"] = await asyncio.to_thread(_change, store, index)
        deadline = time.perf_counter() + 60
        while len(arrived) < count and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
    await runner.cleanup()
    missing = count - len(arrived)
    if missing:
        print(f"  {missing} events not delivered within 60 s", file=sys.stderr)
    return sorted(arrived[k] - committed[k] for k in arrived if k in committed)


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(share * len(values)))]


def _feed_throughput(path: Path, total: int) -> tuple[float, float]:
    """(events per second read with read_page, the same with JSON encoding)."""
    with Store(path) as store:
        with store.transaction() as db:
            db.executemany(
                "INSERT INTO message_marks (message_id, mark, by_message_id, reason, at) "
                "VALUES (?, 'corrected', ?, 'bench', '2026-12-02T12:00:00Z')",
                [(f"feed-{i}", f"by-{i}") for i in range(total)],
            )
        rates = []
        for encode in (False, True):
            after, read = 0, 0
            start = time.perf_counter()
            while True:
                page = events.read_page(store, after=after, limit=1000)
                if not page.events:
                    break
                if encode:
                    json.dumps(page.to_json())
                read += len(page.events)
                after = page.next
            rates.append(read / (time.perf_counter() - start))
    return rates[0], rates[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per rate (15)")
    parser.add_argument("--events", type=int, default=20_000, help="feed size (20,000)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="casebridge-events-") as tmp:
        for number, rate in enumerate(args.rates):
            lags = asyncio.run(_lag_run(Path(tmp) / f"lag-{number}.sqlite", rate, args.seconds))
            rows.append(
                (
                    f"webhook lag at {rate:g} events/s ({len(lags)} events)",
                    f"p50 {_percentile(lags, 0.50) * 1000:.0f} ms, "
                    f"p99 {_percentile(lags, 0.99) * 1000:.0f} ms, "
                    f"max {max(lags, default=float('nan')) * 1000:.0f} ms"
                    + (f", mean {statistics.fmean(lags) * 1000:.0f} ms" if lags else ""),
                )
            )
        raw, encoded = _feed_throughput(Path(tmp) / "feed.sqlite", args.events)
        rows.append((f"feed read, pages of 1000 ({args.events} events)", f"{raw:,.0f} events/s"))
        rows.append(("feed read + JSON encoding", f"{encoded:,.0f} events/s"))
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
