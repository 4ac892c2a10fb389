"""A border gateway's metrics: one :class:`~broker.gateway.border.Outcome` in, counters out.

Pure bookkeeping next to the runner: :func:`record_outcome` turns what ``Border`` decided into
``casebridge_border_decisions_total`` (per rule), ``casebridge_messages_relayed_total`` (per
country pair and type) and ``casebridge_border_refusals_total`` (per reason code);
:func:`gateway_expiries` lists what the gateway's certificates and directory expire at.
Must never use a message id, an agency name or a person as a label.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography import x509
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker.core.directory import Directory
from broker.errors import Reason
from broker.gateway.border import Outcome
from broker.metrics import (
    Expiry,
    GatewayMetrics,
    agency_country_label,
    country_label,
    type_label,
)
from broker.node.observe import certificate_expiries, directory_expiries


def record_outcome(
    metrics: GatewayMetrics, direction: str, outcome: Outcome, *, seconds: float
) -> None:
    """Count one decision of the gateway of ``metrics.country``."""
    country = metrics.country
    metrics.decision_seconds.labels(direction=direction).observe(seconds)
    if outcome.refused is not None:
        metrics.refused.labels(country=country, direction=direction, reason=outcome.refused).inc()
        return
    for decision in outcome.decisions:
        metrics.decisions.labels(
            country=country,
            direction=direction,
            peer=country_label(decision.peer) if decision.peer else "",
            verdict=decision.verdict.value,
            rule_id=decision.rule_id,
        ).inc()
    origin = agency_country_label(outcome.sender)
    kind = type_label(outcome.message_type)
    for target in outcome.relayed_to:
        # Egress names peer countries (or our own, for domestic traffic); ingress names agencies.
        to = country_label(target) if direction == "egress" else agency_country_label(target)
        metrics.relayed.labels(
            country=country, direction=direction, from_country=origin, to_country=to, type=kind
        ).inc()
    for _ in outcome.rejected_for:
        metrics.refused.labels(
            country=country, direction=direction, reason=Reason.POLICY_DENIED.value
        ).inc()


def gateway_expiries(
    *,
    country: str,
    certificates: list[tuple[str, x509.Certificate]],
    directory: Callable[[], Directory],
) -> Callable[[], list[Expiry]]:
    """The expiry items of a gateway: its own certificates and the directory it holds now."""

    def items() -> list[Expiry]:
        return [
            *certificate_expiries(certificates, country=country),
            *directory_expiries(directory()),
        ]

    return items


class StoreSpaceCollector(Collector):
    """``casebridge_gateway_store_free_bytes``: free bytes (for unprivileged users) on the
    filesystem holding the gateway's ledger, measured at scrape time."""

    def __init__(self, store_path: Path) -> None:
        self._directory = Path(store_path).parent

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        free = GaugeMetricFamily(
            "casebridge_gateway_store_free_bytes",
            "Free bytes (for unprivileged users) on the filesystem holding the gateway's ledger.",
        )
        try:
            free.add_metric([], shutil.disk_usage(self._directory).free)
        except OSError:
            return  # no sample rather than a wrong one
        yield free
