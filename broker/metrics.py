"""Prometheus metrics of nodes and border gateways (``casebridge_`` prefix, base units).

What it is for
    :class:`NodeMetrics` and :class:`GatewayMetrics` register every metric of one process on a
    ``CollectorRegistry`` the caller passes in (one per process; never the global default
    registry), and give the code paths one small method per event. :class:`ExpiryCollector`
    reports seconds left on certificates, CRLs and the directory at scrape time.
    :func:`metrics_app` serves ``/metrics`` for processes without an HTTP API (gateways, the
    NATS exporter); the node serves the same handler on its API. The full list, with labels,
    is in ``docs/operations.md``.

What it must never do
    Use an unbounded label. Labels are country codes (:func:`country_label`), message types
    (the schema registry's, or ``other``), verdicts, reason codes, rule ids, directions and
    fixed names; never message ids, agency names or people.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker import __version__

_COUNTRY_RE: Final = re.compile(r"[A-Z]{2}\Z")
_TYPE_RE: Final = re.compile(r"[a-z][a-z_]*(\.[a-z][a-z_]*){0,3}\Z")
OTHER: Final = "other"
# Seconds; from a loopback federation (well under a second) to a peer that was away for hours.
LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600)
CRYPTO_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
# What a gateway does with an attachment chunk (casebridge_gateway_chunks_total).
CHUNK_OUTCOMES: Final = ("relayed", "waiting", "dropped", "refused")
# How a node's file ends (casebridge_node_files_total).
FILE_OUTCOMES: Final = (("out", "sent"), ("in", "verified"), ("in", "refused"))


def country_label(value: str | None) -> str:
    """An ISO country code as a label (upper case), ``other`` for anything that is not one."""
    code = (value or "").upper()
    return code if _COUNTRY_RE.fullmatch(code) else OTHER


def agency_country_label(agency_id: str | None) -> str:
    """The country label of an agency id (``de.lka-berlin`` -> ``DE``)."""
    return country_label((agency_id or "").partition(".")[0])


def type_label(value: str | None) -> str:
    """A message type as a label (``request.assistance``); ``other`` if it is not type-shaped.

    Types of verified messages come from the schema registry (a fixed set); this guard keeps a
    refused message's claimed type from adding series.
    """
    text = value or ""
    return text if len(text) <= 64 and _TYPE_RE.fullmatch(text) else OTHER


def build_info(registry: CollectorRegistry, *, component: str, country: str) -> None:
    """``casebridge_build_info{component, country, version} 1`` (``up`` joins on it)."""
    Gauge(
        "casebridge_build_info",
        "Always 1: the component, its country and the Casebridge version.",
        ["component", "country", "version"],
        registry=registry,
    ).labels(component=component, country=country_label(country), version=__version__).set(1)


class NodeMetrics:
    """Every metric an agency node updates itself (the store-backed ones are collectors)."""

    def __init__(self, registry: CollectorRegistry, *, country: str) -> None:
        self.country = country_label(country)
        pair = ["from_country", "to_country"]
        self.submitted = Counter(
            "casebridge_messages_submitted",
            "Messages accepted from case workers into the outbox, per destination country.",
            [*pair, "type"],
            registry=registry,
        )
        self.sent = Counter(
            "casebridge_messages_sent",
            "Sealed messages acknowledged by the country's JetStream (incl. evidence).",
            ["from_country", "type"],
            registry=registry,
        )
        self.submit_failures = Counter(
            "casebridge_submit_failures",
            "Submission attempts JetStream did not acknowledge (retried from the outbox).",
            registry=registry,
        )
        self.delivered = Counter(
            "casebridge_messages_delivered",
            "Messages opened, checked and stored by this recipient node.",
            [*pair, "type"],
            registry=registry,
        )
        self.rejected = Counter(
            "casebridge_messages_rejected",
            "Deliveries this node refused, by reason code and deciding rule ('' if none).",
            [*pair, "reason", "rule_id"],
            registry=registry,
        )
        self.preflight_refusals = Counter(
            "casebridge_preflight_refusals",
            "Drafts refused by this country's policy before sealing, by rule.",
            ["from_country", "rule_id"],
            registry=registry,
        )
        self.replay_attempts = Counter(
            "casebridge_replay_attempts",
            "Deliveries refused as replays (a message id seen before), by claimed sender country.",
            ["from_country"],
            registry=registry,
        )
        self.redeliveries = Counter(
            "casebridge_redeliveries",
            "Deliveries seen again: 'settled' (already stored, acked again) or 'nak' (retried).",
            ["kind"],
            registry=registry,
        )
        self.evidence_received = Counter(
            "casebridge_evidence_received",
            "Evidence about messages this node sent, by kind.",
            ["kind"],
            registry=registry,
        )
        self.seal_seconds = Histogram(
            "casebridge_seal_duration_seconds",
            "Time to seal one message (sign, encrypt, sign).",
            buckets=CRYPTO_BUCKETS,
            registry=registry,
        )
        self.open_seconds = Histogram(
            "casebridge_open_duration_seconds",
            "Time to verify, decrypt and check one delivery, by outcome.",
            ["outcome"],
            buckets=CRYPTO_BUCKETS,
            registry=registry,
        )
        self.validation_seconds = Histogram(
            "casebridge_validation_duration_seconds",
            "Time of pre-flight (schema and policy) for one draft.",
            buckets=CRYPTO_BUCKETS,
            registry=registry,
        )
        self.delivery_latency = Histogram(
            "casebridge_delivery_latency_seconds",
            "Submit-to-delivered latency: outbox time to the recipient's 'delivered' evidence.",
            pair,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.evidence_lag = Histogram(
            "casebridge_evidence_lag_seconds",
            "From the instant evidence attests to the instant it reached the sender, by kind.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.http_requests = Counter(
            "casebridge_http_requests",
            "Node API requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_seconds = Histogram(
            "casebridge_http_request_duration_seconds",
            "Node API request duration by route template.",
            ["route"],
            registry=registry,
        )
        self.quarantined = Counter(
            "casebridge_node_quarantined",
            "Deliveries set aside in the quarantine after repeated local failures, by lane.",
            ["lane"],
            registry=registry,
        )
        for lane in ("messages", "evidence"):
            self.quarantined.labels(lane=lane)
        # Files of messages (broker/node/attachment_transfer.py): no file or agency label.
        self.files = Counter(
            "casebridge_node_files",
            "Files of messages that ended here, by direction and outcome: out sent (every "
            "chunk acknowledged), in verified (every chunk and the whole-file digest) or refused.",
            ["direction", "outcome"],
            registry=registry,
        )
        self.file_bytes = Counter(
            "casebridge_node_file_bytes",
            "Plaintext bytes of the files sent (out) and verified (in).",
            ["direction"],
            registry=registry,
        )
        for direction, outcome in FILE_OUTCOMES:
            self.files.labels(direction, outcome)
        self.audit_ok = Gauge(
            "casebridge_audit_chain_ok",
            "1 if the last verification of the audit hash chain and checkpoints passed, else 0.",
            registry=registry,
        )
        self.audit_checked = Gauge(
            "casebridge_audit_chain_verified_timestamp_seconds",
            "Unix time of the last audit chain verification.",
            registry=registry,
        )
        self.audit_records = Gauge(
            "casebridge_audit_records",
            "Records in the audit log at the last verification.",
            registry=registry,
        )
        # Webhooks (broker.node.webhooks); pending and parked counts are scrape-time gauges
        # (broker.node.webhooks.WebhookCollector).
        self.webhook_deliveries = Counter(
            "casebridge_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered (2xx), retried (failed, due "
            "again later) or parked (failed after the last attempt: replayable).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("delivered", "retried", "parked"):
            self.webhook_deliveries.labels(outcome=outcome)
        self.webhook_lag = Histogram(
            "casebridge_webhook_delivery_lag_seconds",
            "From an event's change (commit) to the 2xx of its webhook delivery.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.api_refusals_suppressed = Counter(
            "casebridge_api_refusals_suppressed",
            "401 refusals not audited one by one (per-source rate limit of the refusal audit; "
            "each interval's are summarised in one audit entry).",
            registry=registry,
        )

    def file_count(self, direction: str, outcome: str, size: int) -> None:
        """Count a file that ended (NodeAttachments.on_file)."""
        self.files.labels(direction, outcome).inc()
        if outcome != "refused":
            self.file_bytes.labels(direction).inc(size)


class GatewayMetrics:
    """Every metric a border gateway updates."""

    def __init__(self, registry: CollectorRegistry, *, country: str) -> None:
        self.country = country_label(country)
        self.decisions = Counter(
            "casebridge_border_decisions",
            "Border policy decisions, by direction, peer country, verdict and rule.",
            ["country", "direction", "peer", "verdict", "rule_id"],
            registry=registry,
        )
        self.relayed = Counter(
            "casebridge_messages_relayed",
            "Messages a gateway let through (egress: per peer country; ingress: per agency).",
            ["country", "direction", "from_country", "to_country", "type"],
            registry=registry,
        )
        self.refused = Counter(
            "casebridge_border_refusals",
            "Messages (or units) a gateway refused, by reason code.",
            ["country", "direction", "reason"],
            registry=registry,
        )
        self.decision_seconds = Histogram(
            "casebridge_border_decision_duration_seconds",
            "Time to verify the outer layer and apply the policy to one message.",
            ["direction"],
            buckets=CRYPTO_BUCKETS,
            registry=registry,
        )
        self.redeliveries = Counter(
            "casebridge_redeliveries",
            "Inputs JetStream delivered more than once (kind = stream).",
            ["kind"],
            registry=registry,
        )
        self.publish_failures = Counter(
            "casebridge_gateway_publish_failures",
            "Decisions whose publications were not acknowledged (input nak'ed, retried).",
            ["direction"],
            registry=registry,
        )
        self.audit_checkpoints = Counter(
            "casebridge_gateway_audit_checkpoints",
            "Node audit checkpoints received, by result (kept or refused).",
            ["result"],
            registry=registry,
        )
        # Attachment chunks (broker/gateway/attachments.py): no agency or file label.
        self.chunks = Counter(
            "casebridge_gateway_chunks",
            "Attachment chunks a gateway settled, by direction and outcome: relayed, waiting "
            "(its message has not crossed yet: offered again later), dropped (no message of "
            "it crossed here, or malformed), refused (beyond what its message declared).",
            ["direction", "outcome"],
            registry=registry,
        )
        self.chunk_bytes = Counter(
            "casebridge_gateway_chunk_bytes",
            "Bytes of attachment chunks a gateway relayed (sealed: ciphertext and tags).",
            ["direction"],
            registry=registry,
        )
        # Fair share (broker/gateway/fairness.py): no agency label (bounded labels); the
        # ``sender_throttled`` log event names the agency.
        self.throttled = Counter(
            "casebridge_gateway_throttle_events",
            "Times a sender's submissions were held back for exceeding its fair share.",
            ["direction"],
            registry=registry,
        )
        self.throttled_senders = Gauge(
            "casebridge_gateway_throttled_senders",
            "Senders whose submissions are being held back right now (over their rate).",
            ["direction"],
            registry=registry,
        )
        self.store_write_failures = Counter(
            "casebridge_gateway_store_write_failures",
            "Ledger writes of the gateway that failed (disk full, I/O error, locked): the "
            "inputs were nak'ed and are retried.",
            registry=registry,
        )
        self.quarantined = Counter(
            "casebridge_gateway_quarantined",
            "Inputs set aside in the gateway quarantine after repeated failures, by direction.",
            ["direction"],
            registry=registry,
        )
        for direction in ("egress", "ingress"):
            self.publish_failures.labels(direction=direction)
            self.throttled.labels(direction=direction)
            self.throttled_senders.labels(direction=direction)
        for direction in ("egress", "ingress", "audit"):
            self.quarantined.labels(direction=direction)
        for result in ("kept", "refused"):
            self.audit_checkpoints.labels(result=result)

    def chunk_counter(self, direction: str) -> Callable[[str, int], None]:
        """Counts the chunks one direction settles: (outcome, bytes)."""
        chunks = {o: self.chunks.labels(direction, o) for o in CHUNK_OUTCOMES}
        relayed_bytes = self.chunk_bytes.labels(direction)

        def count(outcome: str, size: int) -> None:
            chunks[outcome].inc()
            if outcome == "relayed":
                relayed_bytes.inc(size)

        return count


# ------------------------------------------------------------------ expiry ---


@dataclass(frozen=True, kw_only=True, slots=True)
class Expiry:
    """One thing that expires: which metric, its labels, and when."""

    metric: str  # "certificate" or "crl" or "directory"
    labels: tuple[tuple[str, str], ...]
    not_after: datetime


_EXPIRY_HELP: Final = {
    "certificate": (
        "casebridge_certificate_expiry_seconds",
        "Seconds until a certificate this process relies on expires (negative: expired).",
        ("certificate", "country"),
    ),
    "crl": (
        "casebridge_crl_expiry_seconds",
        "Seconds until a country's CRL in the directory passes its next_update.",
        ("country",),
    ),
    "directory": (
        "casebridge_directory_expiry_seconds",
        "Seconds until the loaded directory passes its next_update.",
        (),
    ),
}


class ExpiryCollector(Collector):
    """Seconds left on each :class:`Expiry` that ``items`` returns, computed at scrape time."""

    def __init__(
        self, items: Callable[[], Iterable[Expiry]], *, clock: Callable[[], datetime]
    ) -> None:
        self._items = items
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        families = {
            kind: GaugeMetricFamily(name, text, labels=list(labels))
            for kind, (name, text, labels) in _EXPIRY_HELP.items()
        }
        now = self._clock()
        for item in self._items():
            family = families[item.metric]
            family.add_metric(
                [value for _, value in item.labels], (item.not_after - now).total_seconds()
            )
        yield from families.values()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected at scrape time only; registration must not call items()


# -------------------------------------------------------------------- HTTP ---


async def metrics_response(registry: CollectorRegistry) -> web.Response:
    """The Prometheus text exposition of ``registry`` (collected off the event loop)."""
    body = await asyncio.to_thread(generate_latest, registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


REGISTRY_KEY: Final = web.AppKey("metrics_registry", CollectorRegistry)


async def _metrics(request: web.Request) -> web.Response:
    return await metrics_response(request.app[REGISTRY_KEY])


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


# Readiness of a process without an API of its own: (ready, why), asked at each GET /readyz.
Readiness = Callable[[], tuple[bool, str]]
READINESS_KEY: Final[web.AppKey[Readiness]] = web.AppKey("readiness")


def _always_ready() -> tuple[bool, str]:
    return True, "serving"


async def _readyz(request: web.Request) -> web.Response:
    ready, why = request.app[READINESS_KEY]()
    document = {"status": "ready" if ready else "not_ready", "detail": why}
    return web.json_response(document, status=200 if ready else 503)


def metrics_app(registry: CollectorRegistry, ready: Readiness | None = None) -> web.Application:
    """A tiny app serving ``GET /metrics``, ``GET /healthz`` and ``GET /readyz`` (gateways,
    NATS exporter; ``ready``: the process's readiness, always ready when None)."""
    app = web.Application()
    app[REGISTRY_KEY] = registry
    app[READINESS_KEY] = ready or _always_ready
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


class MetricsServer:
    """``async with MetricsServer(registry, host, port):`` serves :func:`metrics_app`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str,
        port: int,
        ready: Readiness | None = None,
    ) -> None:
        self._runner = web.AppRunner(metrics_app(registry, ready), access_log=None)
        self._host = host
        self._port = port

    async def __aenter__(self) -> MetricsServer:
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()
