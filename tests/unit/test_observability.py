"""Observability: traceparent propagation, node/gateway metrics, the NATS exporter, logs, API."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from broker import tracing
from broker.core.envelope import seal
from broker.core.peek import unverified_header
from broker.core.policy import Decision, Point, Verdict
from broker.errors import PolicyDenied
from broker.gateway.border import Outcome
from broker.gateway.observe import record_outcome
from broker.logs import FaultLog, configure_logging
from broker.metrics import GatewayMetrics, NodeMetrics, country_label, type_label
from broker.node.api import create_app
from broker.node.observe import NodeObserver, OutboxCollector
from broker.node.service import Node
from broker.node.transport import MSG_ID_HEADER
from broker.ops.nats_exporter import MonitoredServer, NatsCollector
from broker.pki.dev import DevFederation

from .node_world import World, request_draft, world_at

TOKEN = "t" * 32


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def observed(world: World, agency_id: str) -> tuple[Node, CollectorRegistry]:
    """A node of ``world`` reporting to its own registry."""
    node = world.node(agency_id)
    registry = CollectorRegistry()
    node.observe = NodeObserver(NodeMetrics(registry, country=agency_id[:2]))
    return node, registry


def value(registry: CollectorRegistry, metric: str, **labels: str) -> float | None:
    return registry.get_sample_value(metric, labels)


class TestTraceparent:
    def test_new_traceparent_is_valid_w3c(self) -> None:
        """A new traceparent has version 00, 32+16 hex ids and the sampled flag."""
        parent = tracing.parse(tracing.new_traceparent())
        assert parent is not None
        assert len(parent.trace_id) == 32
        assert len(parent.span_id) == 16
        assert parent.flags == "01"

    def test_child_keeps_the_trace_and_changes_the_span(self) -> None:
        """A child span belongs to the same trace under a new span id."""
        first = tracing.new_traceparent()
        child = tracing.parse(tracing.child(first))
        parent = tracing.parse(first)
        assert child is not None
        assert parent is not None
        assert child.trace_id == parent.trace_id
        assert child.span_id != parent.span_id

    @pytest.mark.parametrize(
        "bad",
        [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        ],
    )
    def test_invalid_values_are_not_followed(self, bad: str) -> None:
        """Invalid traceparents parse to None and a child of one starts a new trace."""
        assert tracing.parse(bad) is None
        assert tracing.parse(tracing.child(bad)) is not None

    def test_header_lookup_is_case_insensitive(self) -> None:
        """NATS header names are matched without regard to case."""
        value_ = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        assert tracing.from_headers({"TraceParent": value_}) == value_
        assert tracing.from_headers({"Nats-Msg-Id": "x"}) is None


class TestTracePropagation:
    def test_trace_goes_from_sender_to_recipient_and_back_in_evidence(self, world: World) -> None:
        """The submit carries a traceparent; the delivered evidence continues the same trace."""
        de, _ = observed(world, "de.lka-berlin")
        observed(world, "nl.politie")

        async def run() -> None:
            sent = await de.send(request_draft())
            await world.pump()
            by_id = {s.msg_id: s for s in world.bus.submissions if s.accepted}
            original = tracing.parse(by_id[sent.message_id].headers.get(tracing.TRACEPARENT))
            assert original is not None
            evidence = [
                s
                for s in world.bus.submissions
                if s.accepted and s.subject == "cb.submit.nl.politie"
            ]
            assert len(evidence) == 1
            back = tracing.parse(evidence[0].headers.get(tracing.TRACEPARENT))
            assert back is not None
            assert back.trace_id == original.trace_id
            assert back.span_id != original.span_id

        asyncio.run(run())

    def test_delivery_headers_keep_the_message_id_header(self, world: World) -> None:
        """Carrying traceparent does not replace the Nats-Msg-Id of a delivery."""
        de = world.node("de.lka-berlin")

        async def run() -> None:
            sent = await de.send(request_draft())
            (delivery,) = world.transport("nl.politie").take()
            assert delivery.headers[MSG_ID_HEADER] == f"{sent.message_id}:nl.politie"
            assert tracing.from_headers(delivery.headers) is not None

        asyncio.run(run())


class TestNodeMetrics:
    def test_send_and_delivery_are_counted_per_country_pair(self, world: World) -> None:
        """Submitted, sent, delivered, evidence and latency metrics move with one message."""
        de, de_reg = observed(world, "de.lka-berlin")
        _, nl_reg = observed(world, "nl.politie")

        async def run() -> None:
            await de.send(request_draft())
            await world.pump()

        asyncio.run(run())
        pair = {"from_country": "DE", "to_country": "NL"}
        assert (
            value(de_reg, "casebridge_messages_submitted_total", **pair, type="request.assistance")
            == 1
        )
        assert (
            value(
                de_reg,
                "casebridge_messages_sent_total",
                from_country="DE",
                type="request.assistance",
            )
            == 1
        )
        assert (
            value(nl_reg, "casebridge_messages_delivered_total", **pair, type="request.assistance")
            == 1
        )
        assert value(de_reg, "casebridge_evidence_received_total", kind="delivered") == 1
        assert value(de_reg, "casebridge_delivery_latency_seconds_count", **pair) == 1
        assert value(de_reg, "casebridge_seal_duration_seconds_count") == 1
        assert value(nl_reg, "casebridge_open_duration_seconds_count", outcome="accepted") == 1

    def test_replay_is_counted_as_rejection_and_replay_attempt(self, world: World) -> None:
        """A copy of the same bytes counts as a duplicate (no alarm); the id sealed again
        (other bytes) increments the replay counter and the rejection by reason."""
        de, _ = observed(world, "de.lka-berlin")
        nl, nl_reg = observed(world, "nl.politie")

        async def run() -> None:
            await de.send(request_draft())
            (delivery,) = world.transport("nl.politie").take()
            await nl.handle(delivery)
            world.bus.deliver("nl.politie", delivery.data)
            await world.pump()
            assert value(nl_reg, "casebridge_redeliveries_total", kind="duplicate") == 1
            assert not value(nl_reg, "casebridge_replay_attempts_total", from_country="DE")
            header = unverified_header(delivery.data)
            assert header is not None
            again = seal(
                header=header,
                body=request_draft().body,
                sender=de._sender,
                resolver=de.resolver,
                now=world.clock(),
                salt=b"\x02" * 16,
            )
            world.bus.deliver("nl.politie", again)
            await world.pump()

        asyncio.run(run())
        assert value(nl_reg, "casebridge_replay_attempts_total", from_country="DE") == 1
        assert (
            value(
                nl_reg,
                "casebridge_messages_rejected_total",
                from_country="DE",
                to_country="NL",
                reason="replay",
                rule_id="",
            )
            == 1
        )

    def test_preflight_refusal_is_counted_by_rule(self, world: World) -> None:
        """A policy refusal before sealing counts under its rule id, and nothing is sent."""

        def deny(header: Any, body: Any) -> Any:
            raise PolicyDenied("de.out.test-rule", "denied for the test")

        de = world.node("de.lka-berlin", preflight=deny)
        registry = CollectorRegistry()
        de.observe = NodeObserver(NodeMetrics(registry, country="DE"))

        async def run() -> None:
            with pytest.raises(PolicyDenied):
                await de.send(request_draft())

        asyncio.run(run())
        assert (
            value(
                registry,
                "casebridge_preflight_refusals_total",
                from_country="DE",
                rule_id="de.out.test-rule",
            )
            == 1
        )
        assert (
            value(
                registry,
                "casebridge_messages_submitted_total",
                from_country="DE",
                to_country="NL",
                type="request.assistance",
            )
            is None
        )

    def test_outbox_backlog_per_destination(self, world: World, fixed_now: datetime) -> None:
        """An unacknowledged message shows as depth 1 and its age for its destination only."""
        de = world.node("de.lka-berlin")
        registry = CollectorRegistry()
        registry.register(
            OutboxCollector(
                de.store,
                destinations=lambda: ["DE", "NL", "UA"],
                clock=(fixed_now + timedelta(seconds=120)).timestamp,
            )
        )
        world.bus.fail_submits = 10

        async def run() -> None:
            await de.send(request_draft())

        asyncio.run(run())
        assert value(registry, "casebridge_outbox_messages", destination="NL") == 1
        assert value(registry, "casebridge_outbox_messages", destination="UA") == 0
        assert value(registry, "casebridge_outbox_oldest_age_seconds", destination="NL") == 120
        assert value(registry, "casebridge_outbox_oldest_age_seconds", destination="UA") == 0


class TestLabels:
    def test_labels_stay_bounded(self) -> None:
        """Country and type labels fold anything unexpected into `other`."""
        assert country_label("de") == "DE"
        assert country_label("Germany") == "other"
        assert country_label(None) == "other"
        assert type_label("request.assistance") == "request.assistance"
        assert type_label("9b2f0c1e-1111-4000-8000-000000000000") == "other"


class TestGatewayMetrics:
    def test_outcome_counts_decisions_relays_and_refusals(self) -> None:
        """Border decisions count by rule and verdict; relays by pair; denials as refusals."""
        registry = CollectorRegistry()
        metrics = GatewayMetrics(registry, country="DE")
        outcome = Outcome(
            decisions=(
                Decision(
                    verdict=Verdict.ALLOW,
                    rule_id="de.out.eu",
                    reason="ok",
                    point=Point.EGRESS,
                    peer="NL",
                ),
                Decision(
                    verdict=Verdict.DENY,
                    rule_id="de.out.partner",
                    reason="no",
                    point=Point.EGRESS,
                    peer="UA",
                ),
            ),
            message_id="9b2f0c1e-1111-4000-8000-000000000000",
            message_type="request.assistance",
            sender="de.lka-berlin",
            relayed_to=("NL",),
            rejected_for=("UA",),
        )
        record_outcome(metrics, "egress", outcome, seconds=0.01)
        record_outcome(metrics, "ingress", Outcome(refused="bad_signature"), seconds=0.01)
        assert (
            value(
                registry,
                "casebridge_border_decisions_total",
                country="DE",
                direction="egress",
                peer="UA",
                verdict="deny",
                rule_id="de.out.partner",
            )
            == 1
        )
        assert (
            value(
                registry,
                "casebridge_messages_relayed_total",
                country="DE",
                direction="egress",
                from_country="DE",
                to_country="NL",
                type="request.assistance",
            )
            == 1
        )
        assert (
            value(
                registry,
                "casebridge_border_refusals_total",
                country="DE",
                direction="egress",
                reason="policy_denied",
            )
            == 1
        )
        assert (
            value(
                registry,
                "casebridge_border_refusals_total",
                country="DE",
                direction="ingress",
                reason="bad_signature",
            )
            == 1
        )
        assert (
            value(
                registry, "casebridge_border_decision_duration_seconds_count", direction="ingress"
            )
            == 1
        )


def _jsz(domain: str, streams: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "config": {"domain": domain, "max_memory": 1, "max_storage": 2},
        "streams": len(streams),
        "consumers": 0,
        "messages": 0,
        "bytes": 0,
        "account_details": [{"name": "CB", "id": "CB", "stream_detail": streams}],
    }


class FakeMonitor:
    """Canned monitoring JSON by URL; ``down`` servers answer nothing."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.de_last_seq = 10
        self.ua_sourced = 7

    def __call__(self, url: str) -> dict[str, Any] | None:
        server, _, path = url.removeprefix("http://").partition("/")
        if server in self.down:
            return None
        if path == "varz":
            return {
                "server_name": f"cb-{server}",
                "connections": 4,
                "in_msgs": 100,
                "mem": 1e6,
                "cpu": 0.5,
                "now": "x",
            }
        if path == "connz":
            return {"num_connections": 4, "total": 4, "connections": [{"pending_bytes": 3}]}
        if path == "leafz":
            return {
                "leafnodes": 1,
                "leafs": [
                    {
                        "name": "cb-hub",
                        "account": "CB",
                        "ip": "127.0.0.1",
                        "port": 1,
                        "rtt": "2ms",
                        "in_msgs": 5,
                    }
                ],
            }
        if server == "de":
            return _jsz(
                "de", [{"name": "OUT_UA", "state": {"messages": 10, "last_seq": self.de_last_seq}}]
            )
        return _jsz(
            "ua",
            [
                {
                    "name": "INBOX",
                    "state": {"messages": 7, "last_seq": 7},
                    "sources": [
                        {
                            "name": "OUT_UA",
                            "external": {"api": "$JS.de.API"},
                            "seq": self.ua_sourced,
                        }
                    ],
                    "consumer_detail": [
                        {"name": "gateway-in", "num_pending": 2, "delivered": {"stream_seq": 5}}
                    ],
                }
            ],
        )


class TestNatsCollector:
    def servers(self) -> list[MonitoredServer]:
        return [
            MonitoredServer(name="DE", url="http://de", domain="de"),
            MonitoredServer(name="UA", url="http://ua", domain="ua"),
        ]

    def test_exports_standard_exporter_names(self) -> None:
        """varz, connz, leafz and jsz values appear under prometheus-nats-exporter names."""
        registry = CollectorRegistry()
        registry.register(NatsCollector(self.servers(), fetch=FakeMonitor(), clock=lambda: 0.0))
        assert value(registry, "gnatsd_varz_connections", server_id="DE") == 4
        assert value(registry, "gnatsd_varz_cpu", server_id="UA") == 0.5
        assert value(registry, "gnatsd_connz_pending_bytes", server_id="DE") == 3
        assert value(registry, "gnatsd_leafz_conn_nodes_total", server_id="DE") == 1
        assert (
            value(
                registry,
                "gnatsd_leafz_conn_rtt",
                server_id="DE",
                account="CB",
                account_id="CB",
                ip="127.0.0.1",
                port="1",
                name="cb-hub",
            )
            == 0.002
        )
        labels = {
            "server_id": "UA",
            "server_name": "cb-ua",
            "cluster": "",
            "domain": "ua",
            "meta_leader": "",
            "is_meta_leader": "true",
            "account": "CB",
            "account_id": "CB",
            "stream_name": "INBOX",
            "stream_leader": "cb-ua",
            "is_stream_leader": "true",
        }
        assert value(registry, "jetstream_stream_total_messages", **labels) == 7
        assert (
            value(
                registry,
                "jetstream_consumer_num_pending",
                **labels,
                consumer_name="gateway-in",
                consumer_leader="cb-ua",
                is_consumer_leader="true",
                consumer_desc="",
                consumer_created="",
            )
            == 2
        )

    def test_border_backlog_and_its_age_survive_the_peer_going_down(self) -> None:
        """Backlog = OUT last seq - peer's sourced seq; its last report holds while it is down."""
        monitor = FakeMonitor()
        now = [1000.0]
        registry = CollectorRegistry()
        registry.register(NatsCollector(self.servers(), fetch=monitor, clock=lambda: now[0]))
        backlog = {"country": "DE", "peer": "UA"}
        assert value(registry, "casebridge_border_outbox_messages", **backlog) == 3
        assert value(registry, "casebridge_border_outbox_oldest_age_seconds", **backlog) == 0
        monitor.down.add("ua")
        monitor.de_last_seq = 12
        now[0] = 1060.0
        assert value(registry, "casebridge_border_outbox_messages", **backlog) == 5
        assert value(registry, "casebridge_border_outbox_oldest_age_seconds", **backlog) == 60
        assert value(registry, "casebridge_nats_monitor_up", server_id="UA") == 0
        monitor.down.clear()
        monitor.ua_sourced = 12
        assert value(registry, "casebridge_border_outbox_messages", **backlog) == 0
        assert value(registry, "casebridge_border_outbox_oldest_age_seconds", **backlog) == 0


class TestLogs:
    def test_json_lines_carry_event_level_time_and_fields(self) -> None:
        """The JSON format writes one parseable object per event with the bound fields."""
        import structlog

        out = io.StringIO()
        configure_logging("json", stream=out, cache=False)
        try:
            structlog.get_logger("t").info("border_decision", message_id="m", rule_id="r")
        finally:
            structlog.reset_defaults()
        line = json.loads(out.getvalue().strip())
        assert line["event"] == "border_decision"
        assert line["level"] == "info"
        assert line["rule_id"] == "r"
        assert "timestamp" in line

    def test_console_format_is_not_json(self) -> None:
        """The console format is for humans: the event name, not a JSON object."""
        import structlog

        out = io.StringIO()
        configure_logging("console", stream=out, cache=False)
        try:
            structlog.get_logger("t").info("message_routed", message_id="m")
        finally:
            structlog.reset_defaults()
        text = out.getvalue()
        assert "message_routed" in text
        assert not text.lstrip().startswith("{")


class TestApiMetrics:
    def test_metrics_route_needs_no_token_and_counts_routes(self, world: World) -> None:
        """/metrics is open; requests are counted by route template, never by path."""
        de = world.node("de.lka-berlin")
        registry = CollectorRegistry()
        metrics = NodeMetrics(registry, country="DE")

        @asynccontextmanager
        async def lifecycle() -> AsyncIterator[Node]:
            yield de

        async def run() -> str:
            app = create_app(lifecycle, token=TOKEN, registry=registry, metrics=metrics)
            async with TestClient(TestServer(app)) as client:
                missing = "/v1/messages/00000000-0000-4000-8000-000000000999"
                response = await client.get(missing, headers={"Authorization": f"Bearer {TOKEN}"})
                assert response.status == 404
                scraped = await client.get("/metrics")
                assert scraped.status == 200
                return await scraped.text()

        text = asyncio.run(run())
        assert 'route="/v1/messages/{id}"' in text
        assert "00000000-0000-4000-8000-000000000999" not in text
        assert (
            value(
                registry,
                "casebridge_http_requests_total",
                route="/v1/messages/{id}",
                method="GET",
                status="404",
            )
            == 1
        )


def test_fault_log_reports_each_distinct_error_once_and_the_recovery_once() -> None:
    """A consumer that cannot be read for minutes is one warning, not one per retry."""
    with structlog.testing.capture_logs() as events:
        faults = FaultLog(structlog.get_logger(), "fetch", durable="node-nl_politie")
        faults.ok()  # nothing to recover from: silent
        for _ in range(50):
            faults.failed(TimeoutError("no responders"))
        faults.failed(ConnectionError("reset"))
        faults.ok()
        faults.ok()
    assert [(e["event"], e.get("error")) for e in events] == [
        ("fetch_failed", "TimeoutError('no responders')"),
        ("fetch_failed", "ConnectionError('reset')"),
        ("fetch_recovered", None),
    ]
    assert all(e["durable"] == "node-nl_politie" for e in events)
