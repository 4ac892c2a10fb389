"""What a node tells operators: metrics, trace context, and the scrape-time collectors.

What it is for
    :class:`NodeObserver` is the one object :class:`~broker.node.service.Node` reports events to
    (queued, acknowledged, delivered, rejected, evidence received...). It updates
    :class:`~broker.metrics.NodeMetrics` when it has them, and keeps the W3C ``traceparent`` of
    each message in flight: a new trace for what we submit, the sender's trace for the evidence
    we send back about a delivery (``broker.tracing``). :class:`OutboxCollector` reports the
    outbox backlog per destination country from the store at scrape time;
    :class:`StoreCollector` the store's failed writes and the free space of its filesystem;
    :func:`node_expiries` lists the certificates and CRLs the node depends on;
    :func:`run_audit_verification` keeps ``casebridge_audit_chain_ok`` current.

What it must never do
    Raise into the node (observing never changes what the node does), keep unbounded state
    (the trace and timing maps are capped), or use a message id or a name as a label.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog
from cryptography import x509
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker import tracing
from broker.core import audit
from broker.core.directory import Directory
from broker.core.header import agency_country
from broker.metrics import Expiry, NodeMetrics, agency_country_label, country_label, type_label
from broker.node import audit_log
from broker.node.errors import StorageUnavailable
from broker.node.progress import LaneProgress
from broker.node.store import Store

MAX_TRACKED: Final = 10_000
AUDIT_VERIFY_SECONDS: Final = 60.0

log = structlog.get_logger("casebridge.node")


class _Capped(OrderedDict[str, Any]):
    """A dict that forgets its oldest entries beyond ``MAX_TRACKED``."""

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MAX_TRACKED:
            self.popitem(last=False)


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class NodeObserver:
    """Metrics and trace context of one node (metrics optional: tests pass none)."""

    def __init__(
        self,
        metrics: NodeMetrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
        random: tracing.Random = secrets.token_bytes,
    ) -> None:
        self.metrics = metrics
        self._clock = clock
        self._random = random
        self._traces = _Capped()
        self._queued_at = _Capped()

    # ----------------------------------------------------------------- trace ---

    def start_trace(self, message_id: str) -> str:
        """A new trace for a message we are about to submit."""
        value = tracing.new_traceparent(self._random)
        self._traces.put(message_id, value)
        return value

    def follow_trace(self, message_id: str, parent: str | None) -> str:
        """The trace of ``parent`` (a delivery's header) for a message we send in response."""
        value = tracing.child(parent, self._random)
        self._traces.put(message_id, value)
        return value

    def trace(self, message_id: str) -> str | None:
        """The ``traceparent`` to publish ``message_id`` with (None: not known any more)."""
        found = self._traces.get(message_id)
        return None if found is None else str(found)

    # ---------------------------------------------------------------- events ---

    def queued(
        self, *, message_id: str, sender: str, recipients: Iterable[str], type_: str
    ) -> None:
        self._queued_at.put(message_id, self._clock())
        if self.metrics is None:
            return
        origin = agency_country_label(sender)
        for country in sorted({agency_country_label(r) for r in recipients}):
            self.metrics.submitted.labels(
                from_country=origin, to_country=country, type=type_label(type_)
            ).inc()

    def preflight_refused(self, *, sender: str, rule_id: str) -> None:
        if self.metrics is not None:
            self.metrics.preflight_refusals.labels(
                from_country=agency_country_label(sender), rule_id=rule_id
            ).inc()

    def acknowledged(self, *, message_id: str, sender: str, type_: str) -> None:
        if self.metrics is not None:
            self.metrics.sent.labels(
                from_country=agency_country_label(sender), type=type_label(type_)
            ).inc()

    def submit_failed(self) -> None:
        if self.metrics is not None:
            self.metrics.submit_failures.inc()

    def quarantined(self, lane: str) -> None:
        if self.metrics is not None:
            self.metrics.quarantined.labels(lane=lane).inc()

    def redelivered(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.redeliveries.labels(kind=kind).inc()

    def delivered(self, *, sender: str, recipient: str, type_: str) -> None:
        if self.metrics is not None:
            self.metrics.delivered.labels(
                from_country=agency_country_label(sender),
                to_country=agency_country_label(recipient),
                type=type_label(type_),
            ).inc()

    def rejected(
        self, *, claimed_sender: str | None, recipient: str, reason: str, rule_id: str | None
    ) -> None:
        if self.metrics is None:
            return
        origin = agency_country_label(claimed_sender)
        self.metrics.rejected.labels(
            from_country=origin,
            to_country=agency_country_label(recipient),
            reason=reason,
            rule_id=rule_id or "",
        ).inc()
        if reason == "replay":
            self.metrics.replay_attempts.labels(from_country=origin).inc()

    def evidence(
        self,
        *,
        kind: str,
        subject_id: str,
        subject_created_at: str,
        sender: str,
        actor: str,
        at: str | None,
    ) -> None:
        """Evidence about a message we sent arrived (``at``: when the producer attests)."""
        if self.metrics is None:
            return
        now = self._clock()
        self.metrics.evidence_received.labels(kind=kind).inc()
        attested = _parse_time(at)
        if attested is not None:
            self.metrics.evidence_lag.labels(kind=kind).observe(max(0.0, now - attested))
        if kind == "delivered":
            started = self._queued_at.get(subject_id) or _parse_time(subject_created_at)
            if started is not None:
                self.metrics.delivery_latency.labels(
                    from_country=agency_country_label(sender),
                    to_country=agency_country_label(actor),
                ).observe(max(0.0, now - float(started)))

    def timer(self) -> Callable[[], float]:
        """Start a stopwatch; calling the result returns the seconds since (monotonic)."""
        started = time.perf_counter()
        return lambda: time.perf_counter() - started


# ------------------------------------------------------------ scrape time ---


class LaneCollector(Collector):
    """``casebridge_node_quarantine_messages{lane}`` (deliveries held in the quarantine) and
    ``casebridge_node_lane_stalled_seconds{lane}`` (how long a lane has taken deliveries without
    settling any: 0 while it moves), at scrape time."""

    def __init__(self, store: Store, lanes: Callable[[], Mapping[str, LaneProgress]]) -> None:
        self._store = store
        self._lanes = lanes

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "casebridge_node_quarantine_messages",
            "Deliveries held in this node's quarantine (waiting for an operator), by lane.",
            labels=["lane"],
        )
        stalled = GaugeMetricFamily(
            "casebridge_node_lane_stalled_seconds",
            "Seconds a receive lane has taken deliveries without settling any (0: moving).",
            labels=["lane"],
        )
        try:
            sizes = self._store.quarantine_size()
        except sqlite3.Error:
            sizes = {}
        lanes = self._lanes()
        for lane in sorted(set(lanes) | set(sizes)):
            held.add_metric([lane], sizes.get(lane, 0))
            progress = lanes.get(lane)
            stalled.add_metric([lane], progress.stalled_for() if progress is not None else 0.0)
        yield held
        yield stalled


def _pending_by_destination(db: sqlite3.Connection) -> list[tuple[str, str]]:
    rows = db.execute(
        "SELECT header, created_at FROM outbox WHERE state != 'acknowledged'"
    ).fetchall()
    found = []
    for header_text, created_at in rows:
        try:
            recipients = json.loads(header_text).get("recipients") or []
        except ValueError:
            continue
        for country in sorted({agency_country(str(r)) for r in recipients}):
            found.append((country, str(created_at)))
    return found


class OutboxCollector(Collector):
    """``casebridge_outbox_messages`` / ``..._oldest_age_seconds`` per destination country.

    ``destinations`` are reported even when empty (0), so that alert expressions and panels
    have series before anything backs up.
    """

    def __init__(
        self,
        store: Store,
        *,
        destinations: Callable[[], Iterable[str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._destinations = destinations
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "casebridge_outbox_messages",
            "Messages in this node's outbox not yet acknowledged by JetStream, per destination.",
            labels=["destination"],
        )
        age = GaugeMetricFamily(
            "casebridge_outbox_oldest_age_seconds",
            "Age of the oldest unacknowledged outbox message, per destination (0 when none).",
            labels=["destination"],
        )
        counts: dict[str, int] = {country_label(c): 0 for c in self._destinations()}
        oldest: dict[str, float] = {}
        now = self._clock()
        try:
            pending = self._store.query(_pending_by_destination)
        except (sqlite3.Error, StorageUnavailable):
            pending = []
        for country, created_at in pending:
            label = country_label(country)
            counts[label] = counts.get(label, 0) + 1
            created = _parse_time(created_at)
            if created is not None:
                oldest[label] = max(oldest.get(label, 0.0), now - created)
        for label, count in sorted(counts.items()):
            depth.add_metric([label], count)
            age.add_metric([label], oldest.get(label, 0.0))
        yield depth
        yield age


class StoreCollector(Collector):
    """``casebridge_node_store_write_failures_total`` (write transactions the store could not
    commit) and ``casebridge_node_store_free_bytes`` (free space, for unprivileged users, of
    the filesystem holding the store; measured at scrape time)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "casebridge_node_store_write_failures",
            "Write transactions of the node's store that failed on a storage fault "
            "(disk full, I/O error, locked): nothing of them was stored.",
        )
        failures.add_metric([], self._store.write_failures)
        yield failures
        free = GaugeMetricFamily(
            "casebridge_node_store_free_bytes",
            "Free bytes (for unprivileged users) on the filesystem holding the node's store.",
        )
        try:
            free.add_metric([], shutil.disk_usage(Path(self._store.path).parent).free)
        except OSError:
            return  # no sample rather than a wrong one
        yield free


def certificate_expiries(
    certificates: Iterable[tuple[str, x509.Certificate]], *, country: str
) -> list[Expiry]:
    """``casebridge_certificate_expiry_seconds`` items for named certificates."""
    return [
        Expiry(
            metric="certificate",
            labels=(("certificate", name), ("country", country_label(country))),
            not_after=cert.not_valid_after_utc,
        )
        for name, cert in certificates
    ]


def directory_expiries(directory: Directory) -> list[Expiry]:
    """The directory's own ``next_update`` and every country CRL's, as expiry items."""
    items = [Expiry(metric="directory", labels=(), not_after=directory.next_update)]
    for code, when in sorted(directory.crl_next_updates().items()):
        items.append(
            Expiry(metric="crl", labels=(("country", country_label(code)),), not_after=when)
        )
    for info in directory.countries():
        items.append(
            Expiry(
                metric="certificate",
                labels=(("certificate", "country_ca"), ("country", country_label(info.code))),
                not_after=directory.country_ca(info.code).not_valid_after_utc,
            )
        )
    items.append(
        Expiry(
            metric="certificate",
            labels=(("certificate", "root"), ("country", "")),
            not_after=directory.root_cert.not_valid_after_utc,
        )
    )
    return items


def verify_audit(
    store: Store, *, agency: str, directory: Directory, now: datetime
) -> tuple[bool, int]:
    """Whether the node's audit chain and its own checkpoints verify, and how many records."""

    def read(db: sqlite3.Connection) -> tuple[list[audit.StoredRecord], list[str]]:
        return audit_log.records(db), audit_log.checkpoint_tokens(db)

    stored, tokens = store.query(read)
    checkpoints = []
    for token in tokens:
        keys = directory.signing_key(audit.checkpoint_kid(token), now=now)
        checkpoints.append(audit.open_checkpoint(token, keys.signing_key, node=agency))
    return audit.verify(stored, checkpoints).ok, len(stored)


async def run_audit_verification(
    store: Store,
    metrics: NodeMetrics,
    *,
    agency: str,
    directory: Callable[[], Directory],
    interval: float = AUDIT_VERIFY_SECONDS,
) -> None:
    """Verify the audit log now and every ``interval`` seconds; a failure sets the gauge to 0."""
    while True:
        now = datetime.now(UTC)
        try:
            ok, records = await asyncio.to_thread(
                verify_audit, store, agency=agency, directory=directory(), now=now
            )
        except Exception:
            log.exception("audit_verification_failed", agency=agency)
            ok, records = False, -1
        metrics.audit_ok.set(1 if ok else 0)
        metrics.audit_checked.set(now.timestamp())
        if records >= 0:
            metrics.audit_records.set(records)
        if not ok:
            log.error("audit_chain_broken", agency=agency)
        await asyncio.sleep(interval)
