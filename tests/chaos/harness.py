"""The chaos suite's machinery: traffic through a node's API, faults, invariants, the table.

A *run* sends ``messages`` bulletins from the DE police node (LKA) to the UA police node (NPU)
through LKA's HTTP API, the way a careful client does (one Idempotency-Key per logical send,
retried with the same key while the node is unreachable or answers 503), and injects one fault
at a random point (a seeded RNG picks how many deliveries to wait for). After the run it checks
what the issue promises (:meth:`RunResult.violations`):

* acknowledged ids == delivered ids: every id the API answered (``acknowledged`` or
  ``queued``: stored, the node's promise) is in NPU's inbox, and nothing else of the run is;
* no id delivered twice: NPU logged ``message_delivered`` at most once per id (the inbox's
  primary key makes a second inbox row impossible; the log shows a second acceptance);
* no ``rejected`` or ``relay_rejected`` evidence at LKA, no refusal at NPU, for a delivered id;
  and every delivered id has its ``delivered`` evidence back at LKA;
* every process of the federation alive and ready again, without anything done by hand.

Must never: mock NATS, sleep a fixed time to wait for an outcome (deadlines poll), or read a
node's store other than read-only.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import sqlite3
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from broker.core import wire as s
from broker.federation.launcher import HUB
from broker.sdk import NO_RETRIES, NodeClient, NodeError, new_idempotency_key
from tests.integration.conftest import run
from tests.integration.e2e_helpers import Running, Sealed, bulletin, example, wait_until

LKA: Final = "de.lka-berlin"
NPU: Final = "ua.npu"
READY_TIMEOUT: Final = 120.0
# Deliveries resume within ~40 s of the hub's return (nats-server re-creates a stalled stream
# source), a killed gateway's fetched messages come back after the 30 s ack wait.
SETTLE_TIMEOUT: Final = 300.0
SEND_DEADLINE: Final = 300.0  # one logical send keeps retrying this long (node down, 503)
WORKERS: Final = 4

# The parts killed with kill -9 (process names of the launcher, "hub" is the hub server).
PARTS: Final = {
    "hub": HUB,
    "server DE": "DE",
    "server UA": "UA",
    "gateway": "gateway-*",  # each run: the origin's (DE) or the destination's (UA), at random
    "sending node": f"node-{LKA}",
    "receiving node": f"node-{NPU}",
}


def poll(predicate: Callable[[], object], timeout: float, *, what: str, every: float) -> None:
    """:func:`wait_until` for expensive probes (a NATS connection, a 10,000-row read): polled
    every ``every`` seconds, so the probe does not compete with the federation for the CPU."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


# ----------------------------------------------------------------------- traffic ---


class Traffic:
    """``count`` logical sends LKA -> NPU on ``WORKERS`` threads; ``acked`` maps each
    Idempotency-Key to the message id the API answered (the sender's promise)."""

    def __init__(self, client: NodeClient, count: int, *, tag: str) -> None:
        self.client = NodeClient(client.base_url, client.token, timeout=10, retries=NO_RETRIES)
        self.count, self.tag = count, tag
        self.acked: dict[str, str] = {}
        self.acked_at: dict[str, float] = {}  # message id -> when the API answered (monotonic)
        self.refused: list[str] = []
        self.retried: Counter[str] = Counter()  # answers retried with the same key, by reason
        self.probes: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="chaos-traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the senders did not finish"

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="chaos-send") as pool:
            list(pool.map(self._send_one, range(self.count)))

    def _send_one(self, n: int) -> None:
        key = new_idempotency_key()
        draft = bulletin([NPU], legal_basis=f"Directive 2011/36/EU chaos {self.tag} #{n}")
        deadline = time.monotonic() + SEND_DEADLINE
        while True:
            try:
                result = self.client.send(draft, idempotency_key=key)
            except NodeError as exc:
                if exc.retryable and time.monotonic() < deadline:
                    with self._lock:
                        self.retried[exc.reason] += 1
                    time.sleep(0.2)
                    continue
                with self._lock:
                    self.refused.append(f"{exc.reason}: {exc.detail}")
                return
            with self._lock:
                self.acked[key] = str(result["message_id"])
                self.acked_at[str(result["message_id"])] = time.monotonic()
            return

    def probe(self) -> str | None:
        """One more logical send, tried once now (the disk may be full): its reason if it was
        refused retryably, None if it was acknowledged. A refused probe is sent again, with its
        key, by :meth:`finish_probes` (a 503 whose outcome is unknown may still be stored)."""
        n = self.count + len(self.probes)
        key = new_idempotency_key()
        draft = bulletin([NPU], legal_basis=f"Directive 2011/36/EU chaos {self.tag} probe #{n}")
        self.probes.append((key, draft))
        try:
            result = self.client.send(draft, idempotency_key=key)
        except NodeError as exc:
            with self._lock:
                self.retried[exc.reason] += 1
            return exc.reason
        with self._lock:
            self.acked[key] = str(result["message_id"])
            self.acked_at[str(result["message_id"])] = time.monotonic()
        return None

    def finish_probes(self) -> None:
        """Send every probe not yet acknowledged again with its key until it is."""
        for key, draft in self.probes:
            deadline = time.monotonic() + SEND_DEADLINE
            while key not in self.acked:
                try:
                    result = self.client.send(draft, idempotency_key=key)
                except NodeError as exc:
                    if not exc.retryable or time.monotonic() > deadline:
                        with self._lock:
                            self.refused.append(f"{exc.reason}: {exc.detail}")
                        break
                    time.sleep(0.2)
                    continue
                with self._lock:
                    self.acked[key] = str(result["message_id"])
                    self.acked_at[str(result["message_id"])] = time.monotonic()

    def acked_since(self, since: float) -> set[str]:
        with self._lock:
            return {i for i, at in self.acked_at.items() if at >= since}


# -------------------------------------------------------------------- faults ---


def process_of(part: str, rng: random.Random) -> str:
    """The process to kill for ``part`` in this run."""
    name = PARTS[part]
    return name.replace("*", rng.choice(["de", "ua"]))


def kill(fed: Running, name: str) -> None:
    """``kill -9`` of one process (launcher name; ``hub``, ``DE`` and ``UA`` are servers)."""
    if name == HUB:
        fed.fed.stop_hub(kill=True)
    elif name in ("DE", "UA"):
        fed.fed.stop_country(name, kill=True)
    else:
        fed.fed.stop(name, kill=True)


def restart(fed: Running, name: str) -> None:
    """Start the process again as a supervisor would (nothing else is touched)."""
    if name == HUB:
        fed.fed.start_hub()
    elif name in ("DE", "UA"):
        fed.fed.start_country(name)
    else:
        fed.restart(name, country=_country(name))


def _country(process: str) -> str:
    """``gateway-de`` and ``node-de.lka-berlin`` belong to DE."""
    return process.split("-", 1)[1][:2].upper()


def _node_ready(client: NodeClient) -> bool:
    try:
        return client.ready().get("status") == "ready"
    except NodeError:
        return False


def not_ready(fed: Running) -> list[str]:
    """The processes of the federation that are not running and ready (empty: all are)."""
    missing = [row.name for row in fed.fed.status() if not row.alive]
    missing += [f"leaf {cc}" for cc in ("DE", "UA") if not fed.fed.leaf_connected(cc)]
    probe = NodeClient  # the e2e clients retry; readiness is asked once per poll
    missing += [
        f"node-{agency}"
        for agency, client in fed.clients.items()
        if not _node_ready(probe(client.base_url, client.token, timeout=5, retries=NO_RETRIES))
    ]
    return missing


def wait_ready(fed: Running, timeout: float = READY_TIMEOUT) -> float:
    """Wait until every process is ready; the seconds it took."""
    started = time.monotonic()
    wait_until(lambda: not not_ready(fed), timeout, what="every process ready")
    return time.monotonic() - started


# ----------------------------------------------------------------- invariants ---


def _rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    if not path.exists():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return list(con.execute(sql))
    finally:
        con.close()


def evidence_kinds(fed: Running) -> dict[str, set[str]]:
    """Kinds of evidence LKA received, per message id."""
    kinds: dict[str, set[str]] = {}
    for subject, kind in _rows(
        fed.store_path(LKA), "SELECT subject_id, kind FROM evidence WHERE direction = 'received'"
    ):
        kinds.setdefault(str(subject), set()).add(str(kind))
    return kinds


def refused_at_recipient(fed: Running) -> set[str]:
    """Message ids NPU refused (its rejections table)."""
    return {
        str(r[0])
        for r in _rows(fed.store_path(NPU), "SELECT message_id FROM rejections")
        if r[0] is not None
    }


@dataclass
class RunResult:
    """What one run showed; :meth:`violations` lists what broke a promise."""

    part: str
    messages: int
    acknowledged: set[str]
    delivered: set[str]
    twice: set[str]
    rejected_for_delivered: set[str]
    missing_evidence: set[str]
    refused_sends: list[str]
    recovery: float
    resume: float
    seconds: float = 0.0  # the whole run, first send to settled
    not_ready: list[str] = field(default_factory=list)

    @property
    def lost(self) -> set[str]:
        return self.acknowledged - self.delivered

    @property
    def duplicated(self) -> set[str]:
        # A second acceptance of an id, or a delivery nobody was told about (a copy under a
        # new id, as a retry without an idempotency key makes).
        return self.twice | (self.delivered - self.acknowledged)

    def violations(self) -> list[str]:
        found = []
        if len(self.acknowledged) != self.messages or self.refused_sends:
            found.append(f"{self.messages - len(self.acknowledged)} sends not acknowledged")
        for what, ids in (
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("rejected evidence for delivered", self.rejected_for_delivered),
            ("no delivered evidence", self.missing_evidence),
        ):
            if ids:
                found.append(f"{what}: {sorted(ids)[:5]} ({len(ids)})")
        if self.not_ready:
            found.append(f"not ready: {self.not_ready}")
        return found


def settle(
    fed: Running,
    traffic: Traffic,
    *,
    before: set[str],
    part: str,
    recovery: float,
    resume: float,
    started: float,
    timeout: float = SETTLE_TIMEOUT,
) -> RunResult:
    """Wait (at most ``timeout`` per step) for the run to finish and settle, then measure it
    (never asserts)."""
    traffic.join(SEND_DEADLINE + 60)
    acked = set(traffic.acked.values())
    try:
        wait_until(lambda: acked <= set(fed.inbox_ids(NPU)), timeout, what="every message at NPU")
        wait_until(
            lambda: all("delivered" in evidence_kinds(fed).get(i, ()) for i in acked),
            timeout,
            what="delivered evidence at LKA",
        )
    except AssertionError:
        pass  # measured below: the result says what is missing
    inbox = fed.inbox_ids(NPU)
    delivered = set(inbox) - before
    counts = fed.delivered_log_count(NPU)
    kinds = evidence_kinds(fed)
    refused = refused_at_recipient(fed)
    bad = {"rejected", "relay_rejected"}
    return RunResult(
        part=part,
        messages=traffic.count + len(traffic.probes),
        acknowledged=acked,
        delivered=delivered,
        twice={i for i, n in Counter(inbox).items() if n > 1 or (i in delivered and counts[i] > 1)},
        rejected_for_delivered={i for i in delivered if kinds.get(i, set()) & bad or i in refused},
        missing_evidence={i for i in delivered if "delivered" not in kinds.get(i, ())},
        refused_sends=list(traffic.refused),
        recovery=recovery,
        resume=resume,
        seconds=time.monotonic() - started,
        not_ready=not_ready(fed),
    )


# ---------------------------------------------------------------------- runs ---


def delivered_since(fed: Running, before: set[str]) -> int:
    return len(set(fed.inbox_ids(NPU)) - before)


def kill_run(fed: Running, part: str, *, messages: int, rng: random.Random, tag: str) -> RunResult:
    """One run: ``messages`` sends; ``kill -9`` of ``part`` after a random number of
    deliveries (10-70 % of the run), down for a random 0-2 s, then started again."""
    started = time.monotonic()
    before = set(fed.inbox_ids(NPU))
    threshold = rng.randint(max(1, messages // 10), max(1, messages * 7 // 10))
    downtime = rng.uniform(0.0, 2.0)
    process = process_of(part, rng)
    traffic = Traffic(fed.client(LKA), messages, tag=tag).start()
    wait_until(
        lambda: delivered_since(fed, before) >= threshold,
        SETTLE_TIMEOUT,
        what=f"{threshold} deliveries before killing {process}",
    )
    killed_at = time.monotonic()
    kill(fed, process)
    time.sleep(downtime)  # the fault itself: the part is down this long
    restart(fed, process)
    wait_ready(fed)
    ready_at = time.monotonic()
    recovery = ready_at - killed_at
    resume = resumed(fed, traffic, ready_at) - killed_at
    return settle(
        fed, traffic, before=before, part=process, recovery=recovery, resume=resume, started=started
    )


def plain_run(fed: Running, *, messages: int, tag: str, timeout: float) -> RunResult:
    """One run without a kill (the fault is elsewhere: a skewed clock); settles within
    ``timeout`` or is measured as it stands."""
    started = time.monotonic()
    before = set(fed.inbox_ids(NPU))
    traffic = Traffic(fed.client(LKA), messages, tag=tag).start()
    return settle(
        fed,
        traffic,
        before=before,
        part=tag,
        recovery=0.0,
        resume=0.0,
        started=started,
        timeout=timeout,
    )


def resumed(fed: Running, traffic: Traffic, ready_at: float) -> float:
    """When a message acknowledged after ``ready_at`` reached NPU (the whole path works
    again); when the senders were already done, when nothing of LKA's is left in transit."""

    def through() -> bool:
        fresh = traffic.acked_since(ready_at)
        if fresh:
            return bool(fresh & set(fed.inbox_ids(NPU)))
        return traffic.done and not pending(fed)

    wait_until(through, SETTLE_TIMEOUT, what="deliveries resumed")
    return time.monotonic()


def pending(fed: Running) -> list[str]:
    """LKA's messages not yet at NPU (a resumption check that also ends when none is left)."""
    inbox = set(fed.inbox_ids(NPU))
    return [i for i in fed.outbox_states(LKA) if i not in inbox]


# ---------------------------------------------------------------------- table ---

COLUMNS: Final = (
    "part",
    "runs",
    "messages",
    "acknowledged",
    "delivered",
    "lost",
    "duplicated",
    "rejected-for-delivered",
    "recovery p50/max (s)",
    "resume p50/max (s)",
)


def row(part: str, results: Sequence[RunResult]) -> dict[str, str]:
    """One line of the table for ``results`` of ``part``."""

    def spread(values: Iterable[float]) -> str:
        seen = list(values)
        return f"{statistics.median(seen):.1f} / {max(seen):.1f}" if seen else "-"

    return {
        "part": part,
        "runs": str(len(results)),
        "messages": str(sum(r.messages for r in results)),
        "acknowledged": str(sum(len(r.acknowledged) for r in results)),
        "delivered": str(sum(len(r.delivered) for r in results)),
        "lost": str(sum(len(r.lost) for r in results)),
        "duplicated": str(sum(len(r.duplicated) for r in results)),
        "rejected-for-delivered": str(sum(len(r.rejected_for_delivered) for r in results)),
        "recovery p50/max (s)": spread(r.recovery for r in results),
        "resume p50/max (s)": spread(r.resume for r in results),
    }


def table(rows: Sequence[dict[str, str]]) -> str:
    """A Markdown table (the operations guide quotes it as printed)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


TABLE: list[dict[str, str]] = []  # filled by the tests, printed by the conftest at the end


# -------------------------------------------------------------------- backlog ---

STA: Final = "de.sta-berlin"
# The DE gateway takes at most 20 messages/s per sending agency from SUBMIT by default (fair
# share, docs/federation.md): a 10,000-message backlog from one agency would take 500 s to
# build. The backlog runs let that one sender go as fast as the machine can (the drain on the
# UA side, which is what they measure, has no such limit).
BACKLOG_SETTINGS: Final = {
    "de.gateway": {"fair_share": {"sender_rate": 1000, "sender_burst": 1000}}
}


class Publisher:
    """Seals ``count`` bulletins STA -> NPU with STA's real keys and submits them as STA's node
    would (same bytes, same Nats-Msg-Id, retried until JetStream acks): the fastest honest
    sender there is, to build a large backlog in little time. ``acked``: what STA was told."""

    def __init__(self, fed: Running, count: int, *, chunk: int = 100) -> None:
        self.fed, self.count, self.chunk = fed, count, chunk
        self.acked: list[str] = []

    def run(self) -> list[str]:
        asyncio.run(self._main())
        return self.acked

    async def _main(self) -> None:
        body = example("bulletin")
        nc = await self.fed.fed.connect_as(STA)
        try:
            js = nc.jetstream()
            for start in range(0, self.count, self.chunk):
                batch = [
                    self.fed.seal_as(STA, [NPU], body)
                    for _ in range(min(self.chunk, self.count - start))
                ]
                await asyncio.gather(*(self._submit(js, m) for m in batch))
        finally:
            await nc.close()

    async def _submit(self, js: Any, message: Sealed) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                await js.publish(
                    s.submit_subject(STA),
                    message.wire,
                    headers={"Nats-Msg-Id": message.message_id},
                    timeout=10,
                )
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            self.acked.append(message.message_id)
            return


@dataclass(frozen=True, kw_only=True, slots=True)
class Drain:
    """A destination outage with a backlog, and how it drained."""

    queued: int  # acknowledged to the sender while the destination was down
    queue_seconds: float  # sealing and submitting the backlog (the outage lasted this long+)
    ready_seconds: float  # UA started again -> every UA process ready
    drain_seconds: float  # destination back (every process ready) -> last message delivered
    first_seconds: float  # destination back -> first message delivered
    delivered: int

    @property
    def rate(self) -> float:
        return self.delivered / self.drain_seconds if self.drain_seconds else 0.0


def held_in(fed: Running, country: str, stream: str) -> int:
    """How many messages a stream holds (stream info, not a read of every message)."""

    async def count() -> int:
        nc = await fed.fed.connect_gateway(country, allow_reconnect=False)
        try:
            return int((await nc.jetstream().stream_info(stream)).state.messages)
        finally:
            await nc.close()

    return run(count())


def outage(fed: Running, count: int, *, timeout: float) -> tuple[Drain, list[str]]:
    """UA (server, gateway, node) down while ``count`` messages are sent to NPU; UA back;
    waits until every acknowledged message is in NPU's inbox. (drain figures, acked ids)"""
    before = set(fed.inbox_ids(NPU))
    out = s.out_stream("UA")
    held = held_in(fed, "DE", out)
    fed.fed.down(only=["UA"])
    started = time.monotonic()
    acked = Publisher(fed, count).run()
    poll(
        lambda: held_in(fed, "DE", out) >= held + len(acked),
        timeout,
        what=f"{len(acked)} messages queued in DE's {out}",
        every=1.0,
    )
    queued = time.monotonic() - started
    restarting = time.monotonic()
    fed.fed.up(only=["UA"])
    fed.wait_started()
    back = time.monotonic()
    wait_until(lambda: delivered_since(fed, before) > 0, timeout, what="the first delivery")
    first = time.monotonic() - back
    wanted = set(acked)
    poll(
        lambda: wanted <= set(fed.inbox_ids(NPU)), timeout, what="the backlog delivered", every=0.5
    )
    drained = time.monotonic() - back
    return (
        Drain(
            queued=len(acked),
            queue_seconds=queued,
            ready_seconds=back - restarting,
            drain_seconds=drained,
            first_seconds=first,
            delivered=delivered_since(fed, before),
        ),
        acked,
    )


# ---------------------------------------------------------------- full disk ---


class SmallDisk:
    """A real small filesystem (tmpfs of ``size_mb``) mounted at ``path``: a ballast file
    fills it to the last byte (ENOSPC, SQLite's SQLITE_FULL), deleting it frees the space."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path, self.size_mb = path, size_mb
        self.ballast = path / "ballast"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                *_as_root(),
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={self.size_mb}m",
                "tmpfs",
                self.path,
            ],
            check=True,
            capture_output=True,
        )

    def unmount(self) -> None:
        subprocess.run([*_as_root(), "umount", "-l", self.path], check=False, capture_output=True)

    def fill(self) -> None:
        """Write the ballast until the filesystem refuses even one more byte."""
        with self.ballast.open("ab", buffering=0) as handle:
            for size in (1 << 20, 1 << 12, 1):
                try:
                    while True:
                        handle.write(b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)


def _as_root() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def can_mount(base: Path) -> str | None:
    """None if a tmpfs can be mounted here, else why not."""
    probe = SmallDisk(base / "mount-probe", 1)
    try:
        probe.mount()
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = (
            exc.stderr.decode(errors="replace")
            if isinstance(exc, subprocess.CalledProcessError)
            else str(exc)
        )
        return f"cannot mount a tmpfs (root or passwordless sudo needed): {detail.strip()}"
    probe.unmount()
    return None


def disk_full_run(
    fed: Running, disk: SmallDisk, *, messages: int, rng: random.Random, tag: str
) -> tuple[RunResult, dict[str, int]]:
    """One run with the store disk (both nodes' stores and both gateways' ledgers) filled to
    the last byte at a random point, until the fault shows (a 503 or a readiness of
    ``storage_unavailable``) and 2-5 s more, then freed. (result, what showed the fault)"""
    started = time.monotonic()
    before = set(fed.inbox_ids(NPU))
    threshold = rng.randint(max(1, messages // 10), max(1, messages * 5 // 10))
    extra = rng.uniform(2.0, 5.0)
    traffic = Traffic(fed.client(LKA), messages, tag=tag).start()
    wait_until(
        lambda: delivered_since(fed, before) >= threshold,
        SETTLE_TIMEOUT,
        what=f"{threshold} deliveries before the disk fills",
    )
    seen: Counter[str] = Counter()
    disk.fill()
    try:

        def showed() -> bool:
            for agency, client in fed.clients.items():
                probe = NodeClient(client.base_url, client.token, timeout=5, retries=NO_RETRIES)
                try:
                    doc = probe.ready()
                except NodeError:
                    continue
                if "storage_unavailable" in str(doc.get("detail", "")):
                    seen[f"{agency} not ready"] += 1
            if seen or traffic.retried["storage_unavailable"] > 0:
                return True
            if traffic.done:
                # The rest of the run fitted in space SQLite had already allocated (its WAL):
                # keep writing, one probe send at a time, until the full disk shows.
                traffic.probe()
            return bool(seen) or traffic.retried["storage_unavailable"] > 0

        wait_until(showed, 60.0, what="the full disk to show")
        until = time.monotonic() + extra
        while time.monotonic() < until:
            showed()
            time.sleep(0.2)
    finally:
        disk.free()
    freed_at = time.monotonic()
    traffic.finish_probes()
    wait_ready(fed)
    ready_at = time.monotonic()
    resume = resumed(fed, traffic, ready_at) - freed_at
    result = settle(
        fed,
        traffic,
        before=before,
        part="full disk",
        recovery=ready_at - freed_at,
        resume=resume,
        started=started,
    )
    seen["503 storage_unavailable"] = traffic.retried["storage_unavailable"]
    return result, dict(seen)
