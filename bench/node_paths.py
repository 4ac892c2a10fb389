"""The node's hot paths in one process: CPU and SQL statements per message, path by path.

Two real nodes of the dev federation (DE sends, NL receives), each with its SQLite store in a
temporary directory, on the in-memory bus (no NATS, no gateways, no HTTP): what is left is the
node's own work. For each path it prints the CPU time per message (this process, all threads,
best of ``--rounds``) and the statements the node hands SQLite per message (each ``execute``
or ``executemany`` call, and the statements SQLite runs for them, triggers included):

* send: pre-flight, seal, the outbox commit with its audit records, submit, the ack recorded;
* receive: a batch of case messages opened, stored, acked, its ``delivered`` evidence sealed
  and submitted (the recipient);
* evidence: that batch of evidence received and recorded (the sender).

On a loaded machine the CPU figures move with the load; the statement counts do not. Compare
runs taken back to back. The statements are counted in a first pass of their own (SQLite's
trace callback into Python costs CPU); the CPU figures are of the passes without it.
Prints a table, never asserts. Must never write outside its temporary directory.
Run: ``PYTHONPATH=. .venv/bin/python bench/node_paths.py [--messages N] [--batch B]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from broker.core.envelope import RecipientIdentity, SenderIdentity
from broker.loaders import load_schema_registry
from broker.logs import configure_logging
from broker.node.model import Draft
from broker.node.service import Node, RetryPolicy
from broker.node.store import Store
from broker.node.transport import MemoryBus
from broker.pki.dev import DEMO_SPEC, DevFederation, build_dev_federation

ROOT = Path(__file__).resolve().parents[1]
BODY = json.loads((ROOT / "schemas" / "examples" / "request.assistance.json").read_text())
DE, NL = "de.lka-berlin", "nl.politie"


class Counted:
    """A SQLite connection that counts the statements handed to it (and those SQLite ran)
    while ``counting`` is on. Off, it only forwards: no trace callback into Python, so the
    CPU measured then is the node's own."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.calls = 0
        self.run = 0  # statements started inside SQLite, trigger programs included
        self._counting = False

    @property
    def counting(self) -> bool:
        return self._counting

    @counting.setter
    def counting(self, on: bool) -> None:
        self._counting = on
        self._db.set_trace_callback(self._traced if on else None)

    def _traced(self, _statement: str) -> None:
        self.run += 1

    def execute(self, *args: Any) -> sqlite3.Cursor:
        if self._counting:
            self.calls += 1
        return self._db.execute(*args)

    def executemany(self, *args: Any) -> sqlite3.Cursor:
        if self._counting:
            self.calls += 1
        return self._db.executemany(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


async def _no_sleep(_seconds: float) -> None:
    return None


def _node(fed: DevFederation, agency_id: str, tmp: Path, now: datetime) -> tuple[Node, Counted]:
    agency = fed.agency(agency_id)
    store = Store(tmp / f"{agency_id}.sqlite")
    counted = Counted(store._db)  # a bench looks inside the store
    store._db = counted  # type: ignore[assignment]
    node = Node(
        sender=SenderIdentity(
            agency_id=agency_id, signing_kid=agency.signing_kid, signing_key=agency.signing.key
        ),
        recipient=RecipientIdentity(
            agency_id=agency_id,
            agreement_kid=agency.agreement_kid,
            agreement_key=agency.agreement.key,
        ),
        resolver=fed.directory,
        schemas=load_schema_registry(),
        store=store,
        transport=BUS.attach(agency_id),
        clock=lambda: now,
        new_id=lambda: str(uuid.uuid4()),
        retry=RetryPolicy(inline_attempts=3),
        sleep=_no_sleep,
    )
    return node, counted


BUS = MemoryBus()


def _draft() -> Draft:
    return Draft(
        type="request.assistance",
        body=BODY,
        purpose="investigation",
        handling="H2",
        tlp="AMBER",
        legal_basis="Council Framework Decision 2006/960/JHA",
        to=(NL,),
        due="2030-12-31",
    )


def _measure(counted: Counted, work: Callable[[], None], *, count: bool) -> tuple[float, int, int]:
    """CPU of ``work`` (this process, all threads) and, with ``count``, the statements it
    handed SQLite. Statements are counted in a pass of their own: the trace callback that
    counts them costs CPU the node does not spend."""
    counted.counting = count
    calls, run = counted.calls, counted.run
    started = time.process_time()
    try:
        work()
    finally:
        counted.counting = False
    return time.process_time() - started, counted.calls - calls, counted.run - run


def _profile_threads() -> list[cProfile.Profile]:
    """Profile the main thread and every thread started from now on (on each thread's CPU
    clock: waiting costs nothing); the profiles are complete once the threads ended."""
    profiles: list[cProfile.Profile] = []
    run = threading.Thread.run

    def profiled(self: threading.Thread) -> None:
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()
        try:
            run(self)
        finally:
            profile.disable()

    threading.Thread.run = profiled  # type: ignore[method-assign]
    main = cProfile.Profile(time.thread_time)
    profiles.append(main)
    main.enable()
    return profiles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--profile", type=Path, default=None, help="cProfile every thread into this file"
    )
    args = parser.parse_args()
    profiles = _profile_threads() if args.profile is not None else []
    # As a node logs (JSON lines at info), into nothing: rendering counts, the terminal not.
    devnull = open(os.devnull, "w")  # noqa: SIM115 - open for the whole run
    configure_logging("json", stream=devnull)
    now = datetime.now(UTC).replace(microsecond=0)
    fed = build_dev_federation(DEMO_SPEC, now=now - timedelta(minutes=1))
    best: dict[str, tuple[float, int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="cb-node-paths-") as tmp:
        de, de_db = _node(fed, DE, Path(tmp), now)
        nl, nl_db = _node(fed, NL, Path(tmp), now)

        async def send_all() -> None:
            for _ in range(args.messages):
                await de.send(_draft())

        async def settle(node: Node, *, evidence: bool) -> None:
            taken = BUS.attach(node.agency_id).take(evidence=evidence)
            for start in range(0, len(taken), args.batch):
                await node.handle_batch(taken[start : start + args.batch])

        paths = (
            ("send", de_db, lambda: asyncio.run(send_all())),
            ("receive", nl_db, lambda: asyncio.run(settle(nl, evidence=False))),
            ("evidence", de_db, lambda: asyncio.run(settle(de, evidence=True))),
        )
        statements: dict[str, tuple[int, int]] = {}
        # Round 0 counts statements (its CPU is not kept); the others measure CPU.
        for round_ in range(args.rounds + 1):
            for name, counted, work in paths:
                cpu, calls, run = _measure(counted, work, count=round_ == 0)
                if round_ == 0:
                    statements[name] = (calls, run)
                elif name not in best or cpu < best[name][0]:
                    best[name] = (cpu, *statements[name])
        de.store.close()
        nl.store.close()
    if args.profile is not None:
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.dump_stats(args.profile)
    n = args.messages
    print(f"Node hot paths ({n} messages per round, batches of {args.batch}, best of rounds):")
    print(f"{'path':<10} {'CPU ms/msg':>10} {'statements/msg':>15} {'run by SQLite/msg':>18}")
    for name, (cpu, calls, run) in best.items():
        print(f"{name:<10} {cpu * 1000 / n:>10.3f} {calls / n:>15.2f} {run / n:>18.2f}")
    total = sum(cpu for cpu, _, _ in best.values())
    print(f"{'total':<10} {total * 1000 / n:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
