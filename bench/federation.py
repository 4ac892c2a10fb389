"""End-to-end federation throughput and latency, next to its floors, measured in the same run.

Starts the example federation (hub; DE, NL, UA; gateways; nine nodes) in a temporary directory,
then sends ``--messages`` request.assistance messages across borders (DE->NL, NL->UA, UA->DE)
through the node APIs (:class:`broker.sdk.NodeClient`), first as fast as ``--concurrency``
clients can, then at each offered ``--rate`` (default: the 200/s of the target, and 20/s to show
the latency below saturation on a small machine). A message counts as delivered when its recipient
node emits the ``delivered`` evidence (seen on the recipient country's ``cb.submit.>`` as the
gateway, header only) and, at the end, it is really in the recipient's inbox. Latency is from
the sender's submit call to that evidence. The SDK clients keep their connections alive.

The gateways' per-sender fair share is raised (``fair_share.sender_rate`` 100000/s) for the
run: with the default (20 msgs/s per sender, burst 200) the three senders' rate limit, not the
federation, would decide the throughput.

In the same run, next to it: the hand-rolled point-to-point HTTPS peer (``bench/peer.py``: the
same sealing, aiohttp, jsonschema-rs, one commit per side, a signed receipt) and Casebridge's
CPU per delivered message as a ratio to it; the NATS floor (the country servers driven by a
bare client that batches: per delivered message the publishes and batched fetches the
federation makes, no Python work); the crypto floor (the protocol's operations per delivered
message with ``cryptography``). Prints tables, never asserts.
``--commits`` also counts every node's and gateway's SQLite write commits per delivered message;
``--profile DIR`` profiles them (both change the CPU figures a little: measure without).
Run: ``.venv/bin/python bench/federation.py [--messages N] [--rate R ...] [--commits]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap
from nats.aio.msg import Msg

from broker.core.peek import unverified_header
from broker.federation.launcher import Federation
from broker.federation.processes import endpoints, prepare
from broker.federation.spec import load_description
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


def cpu_seconds(fed: Federation, *, system_only: bool = False) -> dict[str, float]:
    """CPU seconds (user + system, or system only) used so far by each process of the
    federation and by us."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for row in fed.status():
        if row.pid is None:
            continue
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{row.pid}/stat").read_text().rsplit(")", 1)[1].split()
            user = 0 if system_only else int(fields[11])
            out[row.name] = (user + int(fields[12])) / tick
    usage = os.times()
    out["bench (load generator)"] = usage.system + (0 if system_only else usage.user)
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


# The protocol's operations per delivered message (docs/protocol.md; the message, its three
# pieces of evidence, each sealed once and verified at both borders and at the end).
CRYPTO_OPS = {"sign": 8, "verify": 13, "wrap": 4, "unwrap": 4}
# What the federation asks of its clients' NATS traffic per delivered message, each a publish
# and a fetch + ack: the message 3 (submit, outbox, delivery), the origin border's
# relay_accepted 1 (delivery), the destination border's 2 (outbox, delivery), the recipient's
# delivered 3 (submit, outbox, delivery). The servers' own sourcing across the border (INBOX
# from the peer's OUT) is not driven: the floor is lower than the federation's real floor.
NATS_PUBLISHES_PER_MESSAGE = 9


def floor_nats(fed: Federation, messages: int) -> tuple[float, float]:
    """The country servers driven by a bare client that batches: for every delivered message
    the publishes of the federation (async, acks awaited in a window) and their fetches in
    batches of 64 with acks, spread over the countries' servers. (ms of CPU per delivered
    message summed over the NATS servers and the client, delivered messages/s)."""
    countries = sorted(fed.settings.countries)

    async def run() -> float:
        clients = {c: await fed.connect_gateway(c) for c in countries}
        payload = b"x" * 6000  # about the size of a sealed request
        try:
            for nc in clients.values():
                js = nc.jetstream()
                await js.add_stream(name="BENCH_FLOOR", subjects=["bench.floor"])
            t0 = time.perf_counter()
            total = messages * NATS_PUBLISHES_PER_MESSAGE

            async def country(nc: Any, share: int) -> None:
                js = nc.jetstream()
                window = 256
                for first in range(0, share, window):
                    acks = [
                        await js.publish_async("bench.floor", payload)
                        for _ in range(min(window, share - first))
                    ]
                    await asyncio.gather(*acks)
                sub = await js.pull_subscribe("bench.floor", durable="floor")
                taken = 0
                while taken < share:
                    batch = await sub.fetch(64, timeout=5)
                    for msg in batch:
                        await msg.ack()
                    taken += len(batch)

            share = total // len(clients)
            await asyncio.gather(*(country(nc, share) for nc in clients.values()))
            return messages / (time.perf_counter() - t0)
        finally:
            for nc in clients.values():
                with contextlib.suppress(Exception):
                    await nc.jetstream().delete_stream("BENCH_FLOOR")
                await nc.close()

    before = _nats_cpu(fed)
    own = os.times()
    rate = asyncio.run(run())
    after = _nats_cpu(fed)
    used = after - before + os.times().user + os.times().system - own.user - own.system
    return used * 1000 / messages, rate


def _nats_cpu(fed: Federation) -> float:
    return sum(
        seconds
        for name, seconds in cpu_seconds(fed).items()
        if name == "hub" or name in fed.settings.countries
    )


def floor_crypto(rounds: int) -> float:
    """ms of CPU for the protocol's operations per delivered message (:data:`CRYPTO_OPS`)
    done with ``cryptography`` directly (ES256, ECDH-ES + Concat KDF + AES key wrap)."""
    signer = ec.generate_private_key(ec.SECP256R1())
    agree = ec.generate_private_key(ec.SECP256R1())
    payload = json.dumps(BODY).encode()
    signature = signer.sign(payload, ec.ECDSA(hashes.SHA256()))
    cek = secrets.token_bytes(32)

    def kek(private: ec.EllipticCurvePrivateKey, public: ec.EllipticCurvePublicKey) -> bytes:
        kdf = ConcatKDFHash(algorithm=hashes.SHA256(), length=32, otherinfo=b"bench")
        return kdf.derive(private.exchange(ec.ECDH(), public))

    ephemeral = ec.generate_private_key(ec.SECP256R1())
    wrapped = aes_key_wrap(kek(ephemeral, agree.public_key()), cek)

    def wrap() -> None:
        e = ec.generate_private_key(ec.SECP256R1())
        aes_key_wrap(kek(e, agree.public_key()), cek)

    ops: dict[str, Callable[[], object]] = {
        "sign": lambda: signer.sign(payload, ec.ECDSA(hashes.SHA256())),
        "verify": lambda: signer.public_key().verify(signature, payload, ec.ECDSA(hashes.SHA256())),
        "wrap": wrap,
        "unwrap": lambda: aes_key_unwrap(kek(agree, ephemeral.public_key()), wrapped),
    }
    return sum(_best_ms(ops[name], rounds) * count for name, count in CRYPTO_OPS.items())


# ---------------------------------------------------------------------- peer ---


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_peer(
    directory: Path, *, messages: int, concurrency: int, rates: list[float]
) -> dict[str, Any]:
    """The point-to-point peer (bench/peer.py): a max run (CPU per delivered message of both
    sides, delivered/s) and paced runs (latency)."""
    python, script = sys.executable, str(ROOT / "bench" / "peer.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([python, script, "keys", str(directory)], check=True, env=env)  # noqa: S603
    port = _free_port()
    server = subprocess.Popen(  # noqa: S603 - our own script
        [python, script, "serve", str(directory), str(port)], env=env
    )
    url = f"https://localhost:{port}/messages"

    def send(count: int, rate: float | None) -> dict[str, Any]:
        argv = [python, script, "send", str(directory), url, "--messages", str(count)]
        argv += ["--concurrency", str(concurrency)]
        if rate:
            argv += ["--rate", str(rate)]
        out = subprocess.run(argv, check=True, env=env, capture_output=True, text=True)  # noqa: S603
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        send(30, None)  # warm
        before = _proc_cpu(server.pid)
        burst = send(messages, None)
        server_cpu = _proc_cpu(server.pid) - before
        paced = {rate: send(messages, rate) for rate in rates}
    finally:
        server.terminate()
        server.wait(timeout=10)
    delivered = burst["delivered"] or 1
    return {
        "burst": burst,
        "paced": paced,
        "cpu_ms": (burst["cpu"] + server_cpu) * 1000 / delivered,
        "sender_ms": burst["cpu"] * 1000 / delivered,
        "recipient_ms": server_cpu * 1000 / delivered,
    }


def _best_ms(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


# --------------------------------------------------------------------- main ---


# Installed as ``sitecustomize`` (``--profile``): every node and gateway process profiles
# each of its threads with cProfile on that thread's CPU clock (waiting costs nothing) and
# writes the merged stats when it exits.
_PROFILE_HOOK = """
import atexit, cProfile, os, pstats, sys, threading, time
_argv = " ".join(getattr(sys, "orig_argv", sys.argv))
_out = os.environ.get("CASEBRIDGE_BENCH_PROFILE")
if _out and "broker.cli" in _argv and ("node" in _argv or "gateway" in _argv):
    _done = []
    _run = threading.Thread.run
    def _profiled_run(self):
        profile = cProfile.Profile(time.thread_time)
        profile.enable()
        try:
            _run(self)
        finally:
            profile.disable()
            _done.append(profile)
    threading.Thread.run = _profiled_run
    _main = cProfile.Profile(time.thread_time)
    _main.enable()
    def _dump():
        _main.disable()
        stats = pstats.Stats(_main)
        for profile in list(_done):
            stats.add(profile)
        name = _argv.split("--settings")[-1].strip().rsplit("/", 1)[-1].removesuffix(".json")
        stats.dump_stats(os.path.join(_out, name + ".prof"))
    atexit.register(_dump)
"""


# Installed as ``sitecustomize`` (``--commits``): every node and gateway process counts the
# SQLite transactions it commits that wrote something (a COMMIT after an INSERT, UPDATE,
# DELETE or REPLACE on that connection), whatever module opened the connection, and keeps the
# count in a file (replaced atomically at each commit, so the bench reads it between runs).
_COMMITS_HOOK = """
import os, sqlite3, sys, threading
_argv = " ".join(getattr(sys, "orig_argv", sys.argv))
_commits_out = os.environ.get("CASEBRIDGE_BENCH_COMMITS")
if _commits_out and "broker.cli" in _argv and ("node" in _argv or "gateway" in _argv):
    _commits = [0]
    _commits_lock = threading.Lock()
    _commits_name = os.path.join(
        _commits_out,
        _argv.split("--settings")[-1].strip().rsplit("/", 1)[-1].removesuffix(".json"),
    )
    _connect = sqlite3.connect
    _WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
    def _counted():
        with _commits_lock:
            _commits[0] += 1
            with open(_commits_name + ".tmp", "w") as f:
                f.write(str(_commits[0]))
            os.replace(_commits_name + ".tmp", _commits_name + ".commits")
    def _counting_connect(*args, **kwargs):
        db = _connect(*args, **kwargs)
        wrote = [False]
        def trace(statement):
            verb = statement.lstrip()[:7].upper()
            if verb.startswith(_WRITES):
                wrote[0] = True
            elif verb.startswith(("COMMIT", "END")):
                if wrote[0]:
                    _counted()
                wrote[0] = False
            elif verb.startswith("ROLLBAC"):
                wrote[0] = False
        db.set_trace_callback(trace)
        return db
    sqlite3.connect = _counting_connect
"""


def _install_hooks(hook: Path, *, profile: Path | None, commits: Path | None) -> None:
    """Make the federation's Python processes profile themselves into ``profile`` and/or
    count their write commits into ``commits``."""
    hook.mkdir(parents=True, exist_ok=True)
    code = ""
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        os.environ["CASEBRIDGE_BENCH_PROFILE"] = str(profile)
        code += _PROFILE_HOOK
    if commits is not None:
        commits.mkdir(parents=True, exist_ok=True)
        os.environ["CASEBRIDGE_BENCH_COMMITS"] = str(commits)
        code += _COMMITS_HOOK
    (hook / "sitecustomize.py").write_text(code)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p
    )


def _commit_counts(directory: Path) -> dict[str, int]:
    return {path.stem: int(path.read_text() or 0) for path in sorted(directory.glob("*.commits"))}


def _commit_table(
    before: dict[str, int], after: dict[str, int], delivered: float, what: str
) -> str:
    """Write commits per delivered message between two readings, by process and summed."""
    used = {name: count - before.get(name, 0) for name, count in after.items()}
    if not delivered:
        return f"\nno delivered message in {what}: no commit figure"
    lines = [f"\nSQLite write commits per delivered message, {what} ({delivered:.0f} delivered):"]
    for name, count in sorted(used.items(), key=lambda item: -item[1]):
        if count:
            lines.append(f"  {name:<36} {count / delivered:8.2f}")
    lines.append(f"  {'total (federation)':<36} {sum(used.values()) / delivered:8.2f}")
    return "\n".join(lines)


def _print_profiles(directory: Path, top: int) -> None:
    import pstats  # noqa: PLC0415 - only with --profile

    for path in sorted(directory.glob("*.prof")):
        if not any(k in path.name for k in ("de.lka-berlin", "gateway")):
            continue  # one node and the gateways are enough to see where the time goes
        print(f"\n--- profile of {path.stem} (whole process life, all threads) ---")
        pstats.Stats(str(path)).sort_stats("tottime").print_stats(top)


def _raise_fair_share(fed: Federation) -> None:
    """Lift every gateway's per-sender rate limit (see the module docstring)."""
    for gateway in fed.settings.gateways.values():
        path = fed.settings.base / "settings" / f"{gateway.agency_id}.json"
        doc = json.loads(path.read_text())
        doc["fair_share"] = {"sender_rate": 100000, "sender_burst": 1000000}
        path.write_text(json.dumps(doc, indent=2) + "\n")


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
        default=[60.0],
        help="offered loads (messages/s) of the paced runs",
    )
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="cProfile every node and gateway into this directory and print the top",
    )
    parser.add_argument(
        "--commits",
        action="store_true",
        help="count every node's and gateway's SQLite write commits (per delivered message)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cb-bench-") as tmp:
        commits_dir = Path(tmp) / "commits" if args.commits else None
        if args.profile is not None or commits_dir is not None:
            _install_hooks(Path(tmp) / "hook", profile=args.profile, commits=commits_dir)
        fed = Federation.init(
            load_description(ROOT / "docs" / "federation.example.yaml"),
            Path(tmp) / "fed",
            now=datetime.now(UTC),
        )
        prepare(fed, policy_dir=ROOT / "docs" / "policies")
        _raise_fair_share(fed)
        watcher = Watcher(fed)
        clients: dict[str, NodeClient] = {}
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

            load_before = os.getloadavg()
            commits_before = _commit_counts(commits_dir) if commits_dir else {}
            cpu_before = cpu_seconds(fed)
            sys_before = cpu_seconds(fed, system_only=True)
            burst = load(None)  # as fast as the clients can
            cpu_after = cpu_seconds(fed)
            sys_after = cpu_seconds(fed, system_only=True)
            commits_burst = _commit_counts(commits_dir) if commits_dir else {}
            paced = [load(rate) for rate in args.rate]
            commits_paced = _commit_counts(commits_dir) if commits_dir else {}
            load_after = os.getloadavg()
            nats_ms, nats_rate = floor_nats(fed, 2000)
            crypto_ms = floor_crypto(200)
        finally:
            for client in clients.values():
                client.close()
            try:
                watcher.stop()
            finally:
                fed.close()  # whatever happened: leave no process behind
        peer = run_peer(
            Path(tmp) / "peer",
            messages=args.messages,
            concurrency=args.concurrency,
            rates=args.rate,
        )

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
    bench_ms = 0.0
    for name in sorted(cpu_after, key=lambda n: cpu_before.get(n, 0.0) - cpu_after[n]):
        used = (cpu_after[name] - cpu_before.get(name, 0.0)) * 1000 / delivered
        if name.startswith("bench"):
            bench_ms = used
        else:
            total += used
        print(f"  {name:<36} {used:8.2f} ms")
    print(f"  {'total (federation, without the bench)':<36} {total:8.2f} ms")
    kernel = sum(
        sys_after[n] - sys_before.get(n, 0.0) for n in sys_after if not n.startswith("bench")
    )
    print(f"  {'of which in the kernel (system time)':<36} {kernel * 1000 / delivered:8.2f} ms")
    peer_burst = peer["burst"]
    p99_60: dict[float, float] = {r["offered"]: r["p99"] for r in paced}
    peer_p99 = {rate: run["p99"] for rate, run in peer["paced"].items()}
    print("\nSide by side (same run, same machine):")
    print(f"{'':<44} {'CPU ms/msg':>10} {'msgs/s':>8} {'p99 ms @ paced':>15} {'ratio':>6}")
    first_rate: float = args.rate[0] if args.rate else 0.0
    print(
        f"{'Casebridge (nodes, gateways, NATS)':<44} {total:>10.2f} "
        f"{burst['delivered_rate']:>8.1f} {p99_60.get(first_rate, float('nan')):>15.1f} "
        f"{total / peer['cpu_ms']:>6.2f}"
    )
    print(
        f"{'peer: point-to-point HTTPS (both sides)':<44} {peer['cpu_ms']:>10.2f} "
        f"{peer_burst['rate']:>8.1f} {peer_p99.get(first_rate, float('nan')):>15.1f} "
        f"{1.0:>6.2f}"
    )
    print(
        f"{'NATS floor (bare batching client)':<44} {nats_ms:>10.2f} {nats_rate:>8.0f} "
        f"{'':>15} {nats_ms / peer['cpu_ms']:>6.2f}"
    )
    print(
        f"{'crypto floor (ops per message, pyca)':<44} {crypto_ms:>10.2f} {'':>8} {'':>15} "
        f"{crypto_ms / peer['cpu_ms']:>6.2f}"
    )
    print(
        f"\n  peer: sender {peer['sender_ms']:.2f} ms + recipient {peer['recipient_ms']:.2f} ms; "
        f"{peer_burst['delivered']} delivered, {peer_burst['failures']} failed"
    )
    print(f"  load generator (bench: SDK clients, watcher): {bench_ms:.2f} ms/msg, not counted")
    print(
        "  load average before / after the Casebridge runs: "
        + " / ".join(" ".join(f"{x:.2f}" for x in load) for load in (load_before, load_after))
    )
    if commits_dir is not None:
        print(_commit_table(commits_before, commits_burst, burst["delivered"], "max run"))
        print(
            _commit_table(
                commits_burst,
                commits_paced,
                sum(r["delivered"] for r in paced),
                "paced run(s) at " + ", ".join(f"{r:.0f}/s" for r in args.rate),
            )
        )
    if args.profile is not None:
        _print_profiles(args.profile, 25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
