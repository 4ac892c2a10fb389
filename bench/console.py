"""Console page times with a large store: the inbox with 10,000 messages, a 200-message thread.

Seals ONE real request.assistance (DE -> NL, in-memory nodes of the dev federation), delivers
it, then stores 10,000 copies of its header and body under new ids in NL's store through the
store's own ``commit_delivery`` (the console reads lists and headers only, so copies cost what
real messages cost; sealing 10,000 would only time the crypto), 200 of them in one
conversation. Then an officer signs in to NL's console (aiohttp test server on loopback) and
each page is fetched ``--rounds`` times: server time from the ``Server-Timing`` header the
console sets (handler + template), p50/p99 in milliseconds. Prints a table; never asserts.

Run: ``PYTHONPATH=. .venv/bin/python bench/console.py [--messages N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.console.accounts import Accounts, Role
from broker.console.app import create_console_app
from broker.console.settings import ConsoleSettings
from broker.node.model import Receipt
from broker.node.store import Store
from broker.pki.dev import build_dev_federation
from tests.unit.node_world import request_draft, world_at

# The console's password check is not what is measured: small argon2id parameters.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def fill(
    store: Store,
    header: dict[str, Any],
    body: dict[str, Any],
    *,
    n: int,
    thread: int,
    now: datetime,
) -> str:
    conversation = str(uuid.uuid4())
    for i in range(n):
        h = dict(header)
        h["id"] = str(uuid.uuid4())
        h["conversation"] = conversation if i < thread else str(uuid.uuid4())
        h["due"] = (now + timedelta(days=(i % 40) - 20)).date().isoformat()
        store.commit_delivery(
            header=h,
            body=body,
            receipt=Receipt(digest=f"bench{i}", sequence=i + 10),
            replay_expires_at=int((now + timedelta(days=30)).timestamp()),
            now=now + timedelta(seconds=i),
            evidence=None,
            sealed=None,
        )
    return conversation


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def measure(args: argparse.Namespace) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    fed = build_dev_federation(now=now)
    with tempfile.TemporaryDirectory() as tmp:
        for world in world_at(fed, Path(tmp), now):
            de, nl = world.node("de.lka-berlin"), world.node("nl.politie")
            await de.send(request_draft())
            await world.pump()
            first = nl.store.list_inbox()[0]
            started = time.perf_counter()
            conversation = fill(
                nl.store, dict(first.header), dict(first.body), n=args.messages, thread=200, now=now
            )
            print(f"stored {args.messages} messages in {time.perf_counter() - started:.1f} s")
            accounts = Accounts(
                nl.store,
                agency="nl.politie",
                clock=world.clock,
                hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
            )
            accounts.add(
                "olga", display_name="Olga", role=Role.OFFICER, password="p" * 12, by="bench"
            )
            app = create_console_app(
                nl,
                ConsoleSettings(),
                hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
            )
            async with TestClient(TestServer(app)) as client:
                page = await (await client.get("/login")).text()
                token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
                await client.post(
                    "/login", data={"csrf": token, "username": "olga", "password": "p" * 12}
                )
                pages = {
                    "inbox page 1": "/inbox",
                    "inbox page 100": "/inbox?page=100",
                    "inbox overdue filter": "/inbox?overdue=1",
                    "inbox search": "/inbox?q=nothing-matches-this",
                    "thread of 200": f"/threads/{conversation}",
                    "message (purpose form)": f"/messages/{first.message_id}",
                    "scorecard (90 days)": "/scorecard",
                    "events (counts)": "/events",
                }
                print(f"{'page':28} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
                for name, path in pages.items():
                    times = []
                    for _ in range(args.rounds):
                        response = await client.get(path)
                        assert response.status == 200, (path, response.status)
                        await response.read()
                        times.append(float(response.headers["Server-Timing"].split("dur=")[1]))
                    p50, p99 = statistics.median(times), pct(times, 99)
                    print(f"{name:28} {p50:8.1f} {p99:8.1f} {max(times):8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=100)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
