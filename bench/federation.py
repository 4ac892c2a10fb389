"""End-to-end federation throughput and latency, next to its floors, measured in the same run.

Starts the example federation (hub; DE, NL, UA; gateways; nine nodes) in a temporary directory,
then sends ``--messages`` request.assistance messages across borders (DE->NL, NL->UA, UA->DE)
through the node APIs (:class:`broker.sdk.NodeClient`), first as fast as ``--concurrency``
clients can, then at each offered ``--rate`` (default: the 200/s of the target, and 20/s to show
the latency below saturation on a small machine). A message counts as delivered when its recipient
node emits the ``delivered`` evidence (seen on the recipient country's ``cb.submit.>`` as the
gateway, header only) and, at the end, it is really in the recipient's inbox. Latency is from
the sender's submit call to that evidence. Floors: bare JetStream publish (async acks) on one
country server, and bare jwcrypto seal (2 x ES256 + JWE) + open. Prints tables, never asserts.
Also prints the CPU time each process used per delivered message in the unpaced run, so the
cost of every part (nodes, gateways, NATS servers) is visible.
Run: ``.venv/bin/python bench/federation.py [--messages N] [--rate R ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwe, jwk, jws
from nats.aio.msg import Msg

from broker.federation.launcher import Federation
from broker.federation.processes import endpoints, prepare
from broker.federation.spec import load_description
from broker.node.peek import unverified_header
from broker.sdk import Draft, NodeClient, NodeError

ROOT = Path(__file__).resolve().parents[1]
BODY = json.loads((ROOT / "schemas" / "examples" / "request.assistance.json").read_text())
PAIRS = (("de.lka-berlin", "nl.politie"), ("nl.politie", "ua.npu"), ("ua.npu", "de.lka-berlin"))


def _draft(recipient: str) -> Draft:
    return {
        "to": [recipient],
        "type": "request.assistance",
        "purpose": "investigation",
        "handling": "H2",
        "tlp": "AMBER",
        "legal_basis": "Council Framework Decision 2006/960/JHA",
        "due": "2030-12-31",
        "body": BODY,
    }


class Watcher:
    """Sees every ``evidence.delivered`` a recipient node submits (as each country's gateway)."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self.delivered: dict[str, float] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._clients: list[Any] = []

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._subscribe(), self._loop).result(timeout=20)

    async def _subscribe(self) -> None:
        for code in self.fed.settings.countries:
            nc = await self.fed.connect_gateway(code)
            await nc.subscribe("cb.submit.>", cb=self._on_message)
            self._clients.append(nc)

    async def _on_message(self, msg: Msg) -> None:
        header = unverified_header(msg.data)  # measurement only: never a decision
        if header is not None and header.type == "evidence.delivered" and header.in_reply_to:
            with self._lock:
                self.delivered.setdefault(header.in_reply_to, time.monotonic())

    def wait_quiescent(self, timeout: float) -> bool:
        """Wait until no consumer of any country has pending or unacknowledged messages
        (all evidence of a run processed), so the next run does not queue behind it."""
        return asyncio.run_coroutine_threadsafe(self._quiescent(timeout), self._loop).result(
            timeout=timeout + 10
        )

    async def _quiescent(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        idle_polls = 0
        while time.monotonic() < deadline:
            busy = 0
            for nc in self._clients:
                js = nc.jetstream()
                for stream in ("SUBMIT", "INBOX", "DELIVER"):
                    for info in await js.consumers_info(stream):
                        busy += (info.num_pending or 0) + (info.num_ack_pending or 0)
            idle_polls = idle_polls + 1 if busy == 0 else 0
            if idle_polls >= 3:
                return True
            await asyncio.sleep(0.2)
        return False

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def close() -> None:
            for nc in self._clients:
                await nc.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def cpu_seconds(fed: Federation) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each process of the federation and by us."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for row in fed.status():
        if row.pid is None:
            continue
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{row.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[row.name] = (int(fields[11]) + int(fields[12])) / tick
    usage = os.times()
    out["bench (load generator)"] = usage.user + usage.system
    return out


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_load(
    clients: dict[str, NodeClient],
    watcher: Watcher,
    *,
    messages: int,
    concurrency: int,
    rate: float | None,
    timeout: float,
) -> dict[str, float]:
    """Send ``messages`` (open loop at ``rate`` per second, or as fast as possible)."""
    submitted: dict[str, tuple[float, str]] = {}
    lock = threading.Lock()
    errors = 0

    def one(i: int) -> None:
        nonlocal errors
        sender, recipient = PAIRS[i % len(PAIRS)]
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        t0 = time.monotonic()
        try:
            result = clients[sender].send(_draft(recipient))
        except Exception:  # noqa: BLE001 - counted, the benchmark goes on
            with lock:
                errors += 1
            return
        with lock:
            submitted[result["message_id"]] = (t0, recipient)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(messages)))
    submit_done = time.monotonic()
    deadline = submit_done + timeout
    while time.monotonic() < deadline and not all(m in watcher.delivered for m in submitted):
        time.sleep(0.05)
    latencies = [
        watcher.delivered[m] - t0 for m, (t0, _) in submitted.items() if m in watcher.delivered
    ]
    ends = [watcher.delivered[m] for m in submitted if m in watcher.delivered]
    if not watcher.wait_quiescent(timeout):
        print("warning: the federation did not become idle after the run", file=sys.stderr)
    # Count only what really is in the recipients' inboxes.
    in_inbox = 0
    for recipient in {r for _, r in submitted.values()}:
        ids = {e["message_id"] for e in clients[recipient].inbox(limit=1000)}
        in_inbox += sum(1 for m, (_, r) in submitted.items() if r == recipient and m in ids)
    elapsed = (max(ends) if ends else time.monotonic()) - start
    return {
        "offered": rate or 0.0,
        "submitted": len(submitted),
        "errors": errors,
        "delivered": len(latencies),
        "in_inbox": in_inbox,
        "submit_rate": len(submitted) / (submit_done - start),
        "delivered_rate": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50": _percentile(latencies, 50) * 1000,
        "p95": _percentile(latencies, 95) * 1000,
        "p99": _percentile(latencies, 99) * 1000,
    }


# ------------------------------------------------------------------- floors ---


def floor_jetstream(fed: Federation, messages: int) -> float:
    """Bare JetStream publishes per second (async acks) on the DE server, one client."""

    async def run() -> float:
        nc = await fed.connect_gateway("DE")
        js = nc.jetstream()
        await js.add_stream(name="BENCH_FLOOR", subjects=["bench.floor"])
        payload = b"x" * 6000  # about the size of a sealed request
        try:
            t0 = time.perf_counter()
            acks = [await js.publish_async("bench.floor", payload) for _ in range(messages)]
            await asyncio.gather(*acks)
            return messages / (time.perf_counter() - t0)
        finally:
            await js.delete_stream("BENCH_FLOOR")
            await nc.close()

    return asyncio.run(run())


def floor_jwcrypto(rounds: int) -> float:
    """Milliseconds per bare seal (2 x ES256 sign + JWE to one recipient) + open (reverse)."""
    signer = jwk.JWK.from_pyca(ec.generate_private_key(ec.SECP256R1()))
    agree = jwk.JWK.from_pyca(ec.generate_private_key(ec.SECP256R1()))
    payload = json.dumps(BODY).encode()

    def once() -> None:
        inner = jws.JWS(payload)
        inner.add_signature(signer, alg="ES256", protected={"alg": "ES256"})
        token = jwe.JWE(
            inner.serialize(compact=True).encode(),
            protected={"alg": "ECDH-ES+A256KW", "enc": "A256GCM"},
        )
        token.add_recipient(agree.public())
        wire = token.serialize(compact=True)
        outer = jws.JWS(wire.encode())
        outer.add_signature(signer, alg="ES256", protected={"alg": "ES256"})
        sealed = outer.serialize(compact=True)
        check = jws.JWS()
        check.deserialize(sealed)
        check.verify(signer.public(), alg="ES256")
        opened = jwe.JWE()
        opened.deserialize(check.payload.decode())
        opened.decrypt(agree)
        last = jws.JWS()
        last.deserialize(opened.payload.decode())
        last.verify(signer.public(), alg="ES256")

    return _best_ms(once, rounds)


def _best_ms(fn: Callable[[], None], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


# --------------------------------------------------------------------- main ---


def _wait_ready(client: NodeClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(NodeError):  # still starting
            if client.ready()["status"] == "ready":
                return
        time.sleep(0.1)
    raise SystemExit(f"{client!r} not ready after {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[200.0, 20.0],
        help="offered loads (messages/s) of the paced runs",
    )
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cb-bench-") as tmp:
        fed = Federation.init(
            load_description(ROOT / "docs" / "federation.example.yaml"),
            Path(tmp) / "fed",
            now=datetime.now(UTC),
        )
        prepare(fed, policy_dir=ROOT / "docs" / "policies")
        watcher = Watcher(fed)
        try:
            fed.up()
            clients = {e.agency_id: NodeClient(e.url, e.token) for e in endpoints(fed)}
            for client in clients.values():
                _wait_ready(client)
            watcher.start()
            run_load(clients, watcher, messages=30, concurrency=3, rate=None, timeout=30)  # warm

            def load(rate: float | None) -> dict[str, float]:
                return run_load(
                    clients,
                    watcher,
                    messages=args.messages,
                    concurrency=args.concurrency,
                    rate=rate,
                    timeout=args.timeout,
                )

            cpu_before = cpu_seconds(fed)
            burst = load(None)  # as fast as the clients can
            cpu_after = cpu_seconds(fed)
            paced = [load(rate) for rate in args.rate]
            js_rate = floor_jetstream(fed, 5000)
            crypto_ms = floor_jwcrypto(200)
        finally:
            try:
                watcher.stop()
            finally:
                fed.close()  # whatever happened: leave no process behind

    print(f"Federation end to end ({len(PAIRS)} cross-border pairs, request.assistance):")
    print(
        f"{'offered/s':>10} {'sent':>6} {'errors':>6} {'delivered':>9} {'in inbox':>8} "
        f"{'submit/s':>9} {'delivered/s':>11} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    )
    for r in (burst, *paced):
        offered = "max" if not r["offered"] else f"{r['offered']:.0f}"
        print(
            f"{offered:>10} {r['submitted']:>6.0f} {r['errors']:>6.0f} {r['delivered']:>9.0f} "
            f"{r['in_inbox']:>8.0f} {r['submit_rate']:>9.1f} {r['delivered_rate']:>11.1f} "
            f"{r['p50']:>8.1f} {r['p95']:>8.1f} {r['p99']:>8.1f}"
        )
    delivered = burst["delivered"] or 1
    print(f"\nCPU per delivered message in the max run, by process ({delivered:.0f} delivered):")
    total = 0.0
    for name in sorted(cpu_after, key=lambda n: cpu_before.get(n, 0.0) - cpu_after[n]):
        used = cpu_after[name] - cpu_before.get(name, 0.0)
        total += used
        print(f"  {name:<36} {used * 1000 / delivered:8.2f} ms")
    print(f"  {'total':<36} {total * 1000 / delivered:8.2f} ms")
    e2e_ms = 1000 / burst["delivered_rate"] if burst["delivered_rate"] else float("nan")
    print("\nFloors (same run, same machine):")
    print(f"  bare JetStream publish, async acks, 6 kB:  {js_rate:9.0f} msg/s")
    print(f"  bare jwcrypto seal + open (one recipient): {crypto_ms:9.2f} ms/msg")
    print(
        f"  end to end / JetStream floor: {burst['delivered_rate'] / js_rate:.3f}; "
        f"ms per delivered message {e2e_ms:.1f} = {e2e_ms / crypto_ms:.1f} x the crypto floor"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
