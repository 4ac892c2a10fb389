"""Operators' view, proved: a real Prometheus scrapes a running federation with traffic.

One module-scoped run: the demo federation (hub, DE/NL/UA, 3 gateways, 9 nodes, the NATS
exporter) is started with the demo's own code, a handful of scripted messages go through the
node APIs (including a pre-flight refusal and a reply), then Debian's ``prometheus`` scrapes
every ``/metrics`` target every second with ``ops/prometheus/alerts.yml`` loaded. The tests
then evaluate every dashboard panel expression and every alert expression over the HTTP API.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.demo import federation as demo
from broker.federation.launcher import free_port
from broker.federation.observability import metrics_targets, prometheus_config
from broker.ops import dashboards
from tests.promtools import require

pytestmark = pytest.mark.integration

ALERTS = Path(__file__).resolve().parents[2] / "ops" / "prometheus" / "alerts.yml"
STEPS = ("info", "request", "response", "bulletin", "refused", "task-force")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SCRAPE_WAIT = 60.0


@dataclass
class Running:
    """The federation under test, its demo driver and the Prometheus scraping it."""

    run: demo.Demo
    url: str
    targets: int

    def query(self, expr: str) -> dict[str, Any]:
        """Evaluate ``expr`` now; the raw API answer (``status``, ``data``/``error``)."""
        query = urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=10) as resp:  # noqa: S310
                answer: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry the error document
            answer = json.loads(exc.read())
        return answer

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as resp:  # noqa: S310
            answer: dict[str, Any] = json.loads(resp.read())
        return answer


def _wait(check: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def _for_prometheus(expr: str) -> str:
    """A panel expression as Grafana would send it (range variables resolved)."""
    return expr.replace("$__rate_interval", "1m")


@pytest.fixture(scope="module")
def running(nats_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The demo federation with traffic, scraped by a real Prometheus (1 s interval)."""
    del nats_binary
    prometheus = require("prometheus")
    base = tmp_path_factory.mktemp("observability")
    run = demo.Demo(base / "fed", out=io.StringIO(), now=lambda: datetime.now(UTC))
    process: subprocess.Popen[bytes] | None = None
    try:
        fed = run.start()
        steps = {s.key: s for s in demo.SCRIPT}
        for number, key in enumerate(STEPS, start=1):
            run.send(steps[key], number)
        assert run.wait(list(run.outcomes.values()), timeout=demo.DELIVERY_TIMEOUT)
        targets = metrics_targets(fed)
        config = base / "prometheus.yml"
        config.write_text(
            prometheus_config(targets, scrape_interval="1s", rule_files=[ALERTS]),
            encoding="utf-8",
        )
        port = free_port()
        with (base / "prometheus.log").open("wb") as log:
            process = subprocess.Popen(
                [
                    str(prometheus),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={base / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        state = Running(run=run, url=f"http://127.0.0.1:{port}", targets=len(targets))

        def all_up_for_a_while() -> bool:
            try:
                answer = state.query("min_over_time(up[1m]) == 1")
            except OSError:
                return False
            return (
                answer.get("status") == "success"
                and len(answer["data"]["result"]) == len(targets)
                and _samples(state) >= 4
            )

        _wait(all_up_for_a_while, timeout=SCRAPE_WAIT, what="every target scraped 4 times")
        yield state
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        run.stop()


def _samples(state: Running) -> int:
    answer = state.query("min(count_over_time(up[1m]))")
    result = answer.get("data", {}).get("result", [])
    return int(float(result[0]["value"][1])) if result else 0


class TestScraping:
    def test_every_node_gateway_and_exporter_is_scraped(self, running: Running) -> None:
        """Prometheus sees 9 nodes, 3 gateways and the NATS exporter, all up."""
        answer = running.query("count by (job) (up == 1)")
        jobs = {r["metric"]["job"]: int(r["value"][1]) for r in answer["data"]["result"]}
        assert jobs == {"casebridge-node": 9, "casebridge-gateway": 3, "casebridge-nats": 1}

    def test_traffic_shows_per_country_pair(self, running: Running) -> None:
        """NL -> DE deliveries and the DE pre-flight refusal are counted with their labels."""
        delivered = running.query(
            'sum(casebridge_messages_delivered_total{from_country="NL",to_country="DE"})'
        )
        assert float(delivered["data"]["result"][0]["value"][1]) >= 1
        refused = running.query(
            'sum(casebridge_preflight_refusals_total{rule_id="de.out.ngo-no-police-abroad"})'
        )
        assert float(refused["data"]["result"][0]["value"][1]) == 1

    def test_no_label_value_is_a_message_id(self, running: Running) -> None:
        """Across every casebridge_ series, no label carries a UUID (bounded cardinality)."""
        answer = running.query('{__name__=~"casebridge_.+"}')
        series = answer["data"]["result"]
        assert len(series) > 100
        leaks = [
            s["metric"] for s in series if any(UUID_RE.search(v) for v in s["metric"].values())
        ]
        assert leaks == []


class TestDashboardQueries:
    @pytest.mark.parametrize("board", dashboards.DASHBOARDS, ids=lambda d: d.uid)
    def test_every_panel_evaluates_and_traffic_panels_have_data(
        self, running: Running, board: dashboards.Dashboard
    ) -> None:
        """Each panel expression runs without error; panels marked traffic return series."""
        errors: list[str] = []
        empty: list[str] = []
        for panel in board.panels:
            results = 0
            for query in panel.queries:
                answer = running.query(_for_prometheus(query.expr))
                if answer.get("status") != "success":
                    errors.append(f"{panel.title}: {query.expr}: {answer.get('error')}")
                    continue
                results += len(answer["data"]["result"])
            if panel.traffic and results == 0:
                empty.append(panel.title)
        assert errors == []
        assert empty == []


class TestAlertQueries:
    def test_every_alert_expression_evaluates(self, running: Running) -> None:
        """Each alert rule's expression runs without error against the live data."""
        rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
        failed = [
            f"{r['alert']}: {answer.get('error')}"
            for r in rules
            if (answer := running.query(r["expr"])).get("status") != "success"
        ]
        assert failed == []

    def test_prometheus_loaded_and_evaluated_every_rule_healthy(self, running: Running) -> None:
        """The rule file loads in Prometheus and every rule evaluates with health ok."""

        def evaluated() -> bool:
            groups = running.get("/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return bool(rules) and all(r.get("health") == "ok" for r in rules)

        _wait(evaluated, timeout=30, what="every rule evaluated")
        groups = running.get("/api/v1/rules")["data"]["groups"]
        names = {r["name"] for g in groups for r in g["rules"]}
        expected = {
            r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
        }
        assert names == expected

    def test_no_audit_or_availability_alert_fires_on_a_healthy_federation(
        self, running: Running
    ) -> None:
        """Audit chains verify and every component is up, so those alert expressions are empty."""
        for expr in (
            "min by (name) (casebridge_audit_chain_ok) == 0",
            'up{job=~"casebridge-.*"} == 0',
        ):
            assert running.query(expr)["data"]["result"] == []
        assert len(running.query("casebridge_audit_chain_ok == 1")["data"]["result"]) == 9


class TestTraceparent:
    def test_trace_id_follows_a_message_across_borders_and_back(self, running: Running) -> None:
        """The sender's trace id appears at both gateways, the recipient, and on its evidence."""
        fed = running.run.fed
        assert fed is not None
        message_id = running.run.outcomes["info"].message_id  # nl.politie -> de.lka-berlin
        assert message_id is not None
        events = {
            name: [
                json.loads(line)
                for line in fed.log_file(name).read_text().splitlines()
                if line.startswith("{")
            ]
            for name in ("node-nl.politie", "node-de.lka-berlin", "gateway-nl", "gateway-de")
        }
        queued = [
            e
            for e in events["node-nl.politie"]
            if e["event"] == "message_queued" and e["message_id"] == message_id
        ]
        assert len(queued) == 1
        trace_id = queued[0]["traceparent"].split("-")[1]

        def traced(name: str, event: str, **match: str) -> list[dict[str, Any]]:
            return [
                e
                for e in events[name]
                if e["event"] == event
                and all(e.get(k) == v for k, v in match.items())
                and (e.get("traceparent") or "").split("-")[1:2] == [trace_id]
            ]

        assert traced("gateway-nl", "border_decision", message_id=message_id, direction="egress")
        assert traced("gateway-de", "border_decision", message_id=message_id, direction="ingress")
        assert traced("node-de.lka-berlin", "message_delivered", message_id=message_id)
        # The `delivered` evidence travels back under the same trace (a child span). Gateways
        # log each decision at info; `message_routed` (one per message) is at debug.
        assert traced(
            "gateway-de", "border_decision", type="evidence.delivered", direction="egress"
        )
        assert traced(
            "gateway-nl", "border_decision", type="evidence.delivered", direction="ingress"
        )
