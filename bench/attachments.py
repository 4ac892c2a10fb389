"""Attachment throughput across a border (DE -> NL), next to the raw JetStream floor.

Starts a DE + NL federation (hub, both servers and gateways, one node each; policies letting
files cross) in a temporary directory and, for each ``--sizes`` (MB, default 10 and 500):

- writes a synthetic random file, uploads it to the DE node (streamed, sealed into its spool);
- sends a message with it to NL and measures send -> delivered at NL (the NL node verified
  every chunk and the whole-file digest): the **end-to-end** rate;
- the **floor**: in the same run, the same bytes in chunks of the same size published with
  acknowledgement (as many in flight as the node has) into a scratch stream on the DE server
  and read back with a pull consumer fetching batches of the node's size (one store and one
  read: what any JetStream design must do).

Prints a table, the CPU-seconds each process spent during each transfer and its peak resident
memory (both from /proc); never asserts. Targets (issue 18): >= 30 MB/s end to end and >= 1/3
of the floor. On a shared machine the figures move with the load: report them with it. The
processes get the launcher's memory settings unless the environment sets them (e.g.
``GOMEMLIMIT=off`` shows the country servers without their 64 MiB heap goal: faster, and
several times the memory; docs/federation.md, "Attachments").
Run: ``PYTHONPATH=$PWD .venv/bin/python bench/attachments.py [--sizes 10 500]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

from nats.js.api import StorageType, StreamConfig

from broker.core.attachments import CHUNK_OVERHEAD, DEFAULT_CHUNK_SIZE
from broker.node.attachment_transfer import FEED_BATCH, upload_window
from tests.integration.e2e_helpers import Running, bulletin, wait_until
from tests.integration.test_attachments_e2e import DE, DESCRIPTION, NL, MemoryWatch, _policies

MB = 1_000_000


def _write(path: Path, size: int) -> None:
    piece = os.urandom(1 << 20)
    with path.open("wb") as f:
        left = size
        while left > 0:
            f.write(piece[: min(left, len(piece))])
            left -= len(piece)


async def _floor(fed: Running, size: int) -> float:
    """Seconds to store ``size`` bytes as sealed-chunk-sized messages and read them back."""
    nc = await fed.fed.connect_gateway("DE")
    js = nc.jetstream()
    name = "BENCH_FLOOR"
    await js.add_stream(StreamConfig(name=name, subjects=["bench.floor"], storage=StorageType.FILE))
    try:
        payload = os.urandom(DEFAULT_CHUNK_SIZE + CHUNK_OVERHEAD)
        count = -(-size // DEFAULT_CHUNK_SIZE)
        started = time.perf_counter()
        window = upload_window(DEFAULT_CHUNK_SIZE)
        for at in range(0, count, window):
            n = min(window, count - at)
            await asyncio.gather(*(js.publish("bench.floor", payload) for _ in range(n)))
        sub = await js.pull_subscribe("bench.floor", durable="floor", stream=name)
        got = 0
        while got < count:
            for msg in await sub.fetch(FEED_BATCH, timeout=10):
                await msg.ack()
                got += 1
        return time.perf_counter() - started
    finally:
        await js.delete_stream(name)
        await nc.close()


def _cpu_seconds(fed: Running) -> dict[str, float]:
    """User + system CPU seconds of every federation process so far (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for row in fed.fed.status():
        if row.pid is None:
            continue
        try:
            fields = Path(f"/proc/{row.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        found[row.name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return found


def _delivered(fed: Running, message_id: str) -> bool:
    return message_id in fed.inbox_ids(NL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 500], help="MB each")
    args = parser.parse_args()
    rows = []
    cpu: list[tuple[int, dict[str, float]]] = []
    peaks: list[tuple[int, dict[str, int]]] = []
    with tempfile.TemporaryDirectory(prefix="casebridge-att-bench-") as tmp:
        base = Path(tmp)
        fed = Running.start(
            base / "fed",
            nodes=[DE, NL],
            description=DESCRIPTION,
            policy_dir=_policies(base, max_size=1 << 32),
        )
        try:
            for mb in args.sizes:
                size = mb * MB
                path = base / f"file-{mb}"
                _write(path, size)
                t0 = time.perf_counter()
                handle = fed.client(DE).upload_attachment(path, media_type="application/pdf")
                upload = time.perf_counter() - t0
                path.unlink()
                cpu0 = _cpu_seconds(fed)
                t1 = time.perf_counter()
                with MemoryWatch(fed) as watch:
                    sent = fed.client(DE).send(bulletin([NL], attachments=[handle["attachment"]]))
                    message_id = str(sent["message_id"])
                    wait_until(
                        functools.partial(_delivered, fed, message_id),
                        120 + size / (2 * MB),
                        what="delivery",
                    )
                transfer = time.perf_counter() - t1
                peaks.append((mb, dict(watch.peak)))
                cpu1 = _cpu_seconds(fed)
                cpu.append(
                    (mb, {n: cpu1[n] - cpu0.get(n, 0.0) for n in cpu1 if cpu1[n] > cpu0.get(n, 0)})
                )
                floor = asyncio.run(_floor(fed, size))
                rows.append((mb, upload, transfer, floor))
        finally:
            for client in fed.clients.values():
                client.close()
            fed.close()
    print("size MB | upload s | send->delivered s | end-to-end MB/s | floor MB/s | ratio")
    print("--------|----------|-------------------|-----------------|------------|------")
    for mb, upload, transfer, floor in rows:
        e2e, raw = mb / transfer, mb / floor
        print(
            f"{mb:7d} | {upload:8.1f} | {transfer:17.1f} | {e2e:15.1f} | {raw:10.1f} | "
            f"{e2e / raw:5.2f}"
        )
    print("\nCPU seconds per process during send->delivered (from /proc, user + system):")
    for mb, used in cpu:
        busiest = sorted(used.items(), key=lambda kv: -kv[1])
        print(f"{mb:5d} MB: " + ", ".join(f"{name} {sec:.1f}" for name, sec in busiest))
    print("\nPeak resident memory during send->delivered, MiB (from /proc, sampled every 0.1 s):")
    for mb, peak in peaks:
        print(
            f"{mb:5d} MB: " + ", ".join(f"{n} {b / (1 << 20):.0f}" for n, b in sorted(peak.items()))
        )
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
