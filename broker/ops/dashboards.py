"""The Grafana dashboards, as code: a small typed builder and the four Casebridge dashboards.

What it is for
    ``python -m broker.ops.dashboards`` writes ``ops/grafana/dashboards/<uid>.json`` from the
    definitions below (``--check`` fails if the committed files differ; a unit test does the
    same). Every panel queries the data source chosen in the ``datasource`` variable
    (``${datasource}``); uids are fixed so links and provisioning stay stable. Panels marked
    ``traffic=True`` must return data whenever messages flow: the observability integration
    test checks exactly that against a real Prometheus scraping a running federation.

How
    The dashboards are built with Grafana's own builder library, ``grafana-foundation-sdk``
    (``Dashboard(...).uid(...).with_panel(timeseries.Panel().with_target(prometheus.Dataquery()
    .expr(...)))``, serialised with its ``JSONEncoder``). The definitions below are plain data
    (:class:`Dashboard`, :class:`Panel`, :class:`Query`) because the observability test walks
    them (which panels must show traffic); :func:`build` turns one into the SDK's builders.
    The committed JSON is also what ``helm/casebridge-country`` ships to the Grafana sidecar.

What it must never do
    Query a metric nobody exports (the test evaluates every expression), or hard-code a data
    source uid.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models

ROOT: Final = Path(__file__).resolve().parents[2]
OUT_DIR: Final = ROOT / "ops" / "grafana" / "dashboards"
DATASOURCE_VARIABLE: Final = "datasource"
# Every panel and query reads the data source picked in the variable, never a fixed uid.
DATASOURCE: Final = dashboard_models.DataSourceRef(
    type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}"
)
RATE: Final = "$__rate_interval"
PANEL_WIDTH: Final = 12
PANEL_HEIGHT: Final = 8

PanelKind = Literal["timeseries", "stat"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Query:
    """One PromQL query of a panel and its legend."""

    expr: str
    legend: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Panel:
    """A panel: title, description (what an operator reads it for), queries, unit."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: PanelKind = "timeseries"
    traffic: bool = False  # must return data while messages flow (tested)
    width: int = PANEL_WIDTH


@dataclass(frozen=True, kw_only=True, slots=True)
class Dashboard:
    """A dashboard with a fixed uid."""

    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    tags: tuple[str, ...] = ("casebridge",)
    refresh: str = "30s"
    extra_links: tuple[str, ...] = field(default_factory=tuple)

    def expressions(self) -> list[tuple[Panel, Query]]:
        """Every (panel, query) pair, in order."""
        return [(p, q) for p in self.panels for q in p.queries]


def _target(query: Query, ref_id: str) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(query.expr)
        .legend_format(query.legend or "__auto")
        .ref_id(ref_id)
        .datasource(DATASOURCE)
    )


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> timeseries.Panel | stat.Panel:
    built: timeseries.Panel | stat.Panel
    if panel.kind == "stat":
        built = (
            stat.Panel()
            .reduce_options(
                common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)
            )
            .color_mode(common_models.BigValueColorMode.VALUE)
            .graph_mode(common_models.BigValueGraphMode.NONE)
        )
    else:
        built = timeseries.Panel().legend(
            common.VizLegendOptions()
            .show_legend(True)
            .display_mode(common_models.LegendDisplayMode.LIST)
            .placement(common_models.LegendPlacement.BOTTOM)
        )
    built = (
        built.id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .datasource(DATASOURCE)
        .unit(panel.unit)
        .grid_pos(dashboard_models.GridPos(h=PANEL_HEIGHT, w=panel.width, x=x, y=y))
    )
    for i, query in enumerate(panel.queries):
        built = built.with_target(_target(query, chr(ord("A") + i)))
    return built


def build(definition: Dashboard) -> dashboard.Dashboard:
    """The grafana-foundation-sdk builder of ``definition``: fixed uid, datasource variable."""
    board = (
        dashboard.Dashboard(definition.title)
        .uid(definition.uid)
        .description(definition.description)
        .tags(list(definition.tags))
        .timezone("utc")
        .refresh(definition.refresh)
        .time("now-6h", "now")
        .editable()
        .with_variable(
            dashboard.DatasourceVariable(DATASOURCE_VARIABLE)
            .label("Data source")
            .type("prometheus")
        )
    )
    x = y = 0
    for number, panel in enumerate(definition.panels, start=1):
        if x + panel.width > 24:
            x, y = 0, y + PANEL_HEIGHT
        board = board.with_panel(_panel(panel, number, x, y))
        x += panel.width
    return board


def render(definition: Dashboard) -> dict[str, Any]:
    """The Grafana dashboard JSON model of ``definition`` (as the SDK encodes it)."""
    document: dict[str, Any] = json.loads(json.dumps(build(definition).build(), cls=JSONEncoder))
    return document


def _rate(metric: str, by: str, selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{selector}[{RATE}]))"


def _p(quantile: float, metric: str, by: str) -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({quantile}, sum by ({group}) (rate({metric}_bucket[{RATE}])))"


OVERVIEW: Final = Dashboard(
    uid="casebridge-overview",
    title="Casebridge / Federation overview",
    description="What flows between countries, how fast it is delivered, what is refused and "
    "what waits. Start here.",
    panels=(
        Panel(
            title="Delivered per country pair",
            description="Messages opened and stored by recipient nodes, per sender and "
            "recipient country (messages/s).",
            queries=(
                Query(
                    expr=_rate("casebridge_messages_delivered_total", "from_country, to_country"),
                    legend="{{from_country}} -> {{to_country}}",
                ),
            ),
            unit="reqps",
            traffic=True,
        ),
        Panel(
            title="Submitted per country pair",
            description="Messages case workers submitted, per destination country (messages/s).",
            queries=(
                Query(
                    expr=_rate("casebridge_messages_submitted_total", "from_country, to_country"),
                    legend="{{from_country}} -> {{to_country}}",
                ),
            ),
            unit="reqps",
            traffic=True,
        ),
        Panel(
            title="Relayed across borders",
            description="Messages the sending country's gateway let out, per country pair.",
            queries=(
                Query(
                    expr=_rate(
                        "casebridge_messages_relayed_total",
                        "from_country, to_country",
                        '{direction="egress"}',
                    ),
                    legend="{{from_country}} -> {{to_country}}",
                ),
            ),
            unit="reqps",
            traffic=True,
        ),
        Panel(
            title="Delivery latency (submit to delivered evidence)",
            description="p50 and p95 of the time from submission until the sender holds the "
            "recipient's 'delivered' evidence, per country pair. SLO: 99% within 60 s.",
            queries=(
                Query(
                    expr=_p(0.5, "casebridge_delivery_latency_seconds", "from_country, to_country"),
                    legend="p50 {{from_country}} -> {{to_country}}",
                ),
                Query(
                    expr=_p(
                        0.95, "casebridge_delivery_latency_seconds", "from_country, to_country"
                    ),
                    legend="p95 {{from_country}} -> {{to_country}}",
                ),
            ),
            unit="s",
            traffic=True,
        ),
        Panel(
            title="Refusals by reason",
            description="Pre-flight refusals at the sender (by rule), border refusals (by "
            "reason code) and recipient rejections (by reason code).",
            queries=(
                Query(
                    expr=_rate("casebridge_preflight_refusals_total", "rule_id"),
                    legend="pre-flight {{rule_id}}",
                ),
                Query(
                    expr=_rate("casebridge_border_refusals_total", "country, reason"),
                    legend="border {{country}} {{reason}}",
                ),
                Query(
                    expr=_rate("casebridge_messages_rejected_total", "to_country, reason"),
                    legend="recipient {{to_country}} {{reason}}",
                ),
            ),
            unit="reqps",
            traffic=True,
        ),
        Panel(
            title="Waiting: border outboxes and node outboxes",
            description="Messages in OUT_<PEER> not yet taken by the peer (per country pair) and "
            "messages in node outboxes not yet acknowledged (per destination).",
            queries=(
                Query(
                    expr="sum by (country, peer) (casebridge_border_outbox_messages)",
                    legend="border {{country}} -> {{peer}}",
                ),
                Query(
                    expr="sum by (destination) (casebridge_outbox_messages)",
                    legend="nodes -> {{destination}}",
                ),
            ),
        ),
        Panel(
            title="Oldest waiting message",
            description="How long the oldest message has been waiting, per border outbox and "
            "per node outbox destination. Alerts: CasebridgeBorderOutboxBacklog, "
            "CasebridgeNodeOutboxBacklog.",
            queries=(
                Query(
                    expr="max by (country, peer) (casebridge_border_outbox_oldest_age_seconds)",
                    legend="border {{country}} -> {{peer}}",
                ),
                Query(
                    expr="max by (destination) (casebridge_outbox_oldest_age_seconds)",
                    legend="nodes -> {{destination}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            title="Components up",
            description="1 per node, gateway and exporter Prometheus can scrape.",
            queries=(Query(expr='sum by (job) (up{job=~"casebridge-.*"})', legend="{{job}}"),),
            kind="stat",
        ),
    ),
)

BORDER: Final = Dashboard(
    uid="casebridge-border",
    title="Casebridge / Border control",
    description="Border gateways: decisions by rule and country, refusals, decision time, the "
    "policy in force.",
    panels=(
        Panel(
            title="Decisions by rule",
            description="Every border policy decision, by deciding rule and verdict.",
            queries=(
                Query(
                    expr=_rate("casebridge_border_decisions_total", "rule_id, verdict"),
                    legend="{{rule_id}} {{verdict}}",
                ),
            ),
            unit="reqps",
            traffic=True,
        ),
        Panel(
            title="Decisions per country and direction",
            description="Decisions per gateway country, direction (egress/ingress) and verdict.",
            queries=(
                Query(
                    expr=_rate("casebridge_border_decisions_total", "country, direction, verdict"),
                    legend="{{country}} {{direction}} {{verdict}}",
                ),
            ),
            unit="reqps",
            traffic=True,
        ),
        Panel(
            title="Denials by rule",
            description="Units denied by a border rule, per gateway country and rule.",
            queries=(
                Query(
                    expr=_rate(
                        "casebridge_border_decisions_total", "country, rule_id", '{verdict="deny"}'
                    ),
                    legend="{{country}} {{rule_id}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            title="Border refusals by reason",
            description="Messages a gateway refused: verification failures by reason code, and "
            "policy denials (policy_denied).",
            queries=(
                Query(
                    expr=_rate("casebridge_border_refusals_total", "country, direction, reason"),
                    legend="{{country}} {{direction}} {{reason}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            title="Relayed per country pair and type",
            description="Messages let through, per direction, country pair and message type.",
            queries=(
                Query(
                    expr=_rate(
                        "casebridge_messages_relayed_total",
                        "direction, from_country, to_country, type",
                    ),
                    legend="{{direction}} {{from_country}} -> {{to_country}} {{type}}",
                ),
            ),
            unit="reqps",
            traffic=True,
        ),
        Panel(
            title="Attachment chunks by outcome",
            description="Chunks of files the gateways settled: relayed, waiting (their message "
            "has not crossed yet), dropped (no message of theirs crossed), refused (beyond "
            "what their message declared). Which sender waits: jetstream_consumer_num_pending "
            "of the att-egress-* and att-ingress-* consumers.",
            queries=(
                Query(
                    expr=_rate("casebridge_gateway_chunks_total", "name, direction, outcome"),
                    legend="{{name}} {{direction}} {{outcome}}",
                ),
            ),
            unit="reqps",
            traffic=True,
        ),
        Panel(
            title="Attachment bytes relayed",
            description="Bytes of file chunks the gateways relayed (sealed), per direction.",
            queries=(
                Query(
                    expr=_rate("casebridge_gateway_chunk_bytes_total", "name, direction"),
                    legend="{{name}} {{direction}}",
                ),
            ),
            unit="Bps",
            traffic=True,
        ),
        Panel(
            title="Decision time p95",
            description="Outer-layer verification plus policy evaluation per message.",
            queries=(
                Query(
                    expr=_p(0.95, "casebridge_border_decision_duration_seconds", "direction"),
                    legend="p95 {{direction}}",
                ),
            ),
            unit="s",
            traffic=True,
        ),
        Panel(
            title="Policy version in force",
            description="Version of the signed country policy each gateway and node runs, and "
            "whether its last load succeeded.",
            queries=(
                Query(
                    expr="max by (job, name) (casebridge_policy_version_loaded)",
                    legend="{{name}}",
                ),
                Query(
                    expr="min by (job, name) (casebridge_policy_last_load_ok)",
                    legend="last load ok {{name}}",
                ),
            ),
            kind="stat",
        ),
        Panel(
            title="Redeliveries and publish failures",
            description="Inputs JetStream delivered again, and decisions whose outputs were "
            "not acknowledged (input nak'ed and retried).",
            queries=(
                Query(
                    expr=_rate(
                        "casebridge_redeliveries_total", "name, kind", '{job="casebridge-gateway"}'
                    ),
                    legend="{{name}} {{kind}}",
                ),
                Query(
                    expr=_rate("casebridge_gateway_publish_failures_total", "name, direction"),
                    legend="publish failed {{name}} {{direction}}",
                ),
            ),
            unit="reqps",
        ),
    ),
)

NODE: Final = Dashboard(
    uid="casebridge-node",
    title="Casebridge / Node health",
    description="Agency nodes: API, outbox, redeliveries, crypto timings, certificates, audit.",
    panels=(
        Panel(
            title="API requests by route and status",
            description="Node HTTP API requests per route template and status code.",
            queries=(
                Query(
                    expr=_rate("casebridge_http_requests_total", "route, status"),
                    legend="{{route}} {{status}}",
                ),
            ),
            unit="reqps",
            traffic=True,
        ),
        Panel(
            title="API latency p95",
            description="95th percentile of API request duration per route.",
            queries=(
                Query(
                    expr=_p(0.95, "casebridge_http_request_duration_seconds", "route"),
                    legend="{{route}}",
                ),
            ),
            unit="s",
            traffic=True,
        ),
        Panel(
            title="Outbox depth per destination",
            description="Messages each node holds that JetStream has not acknowledged yet.",
            queries=(
                Query(
                    expr="sum by (name, destination) (casebridge_outbox_messages)",
                    legend="{{name}} -> {{destination}}",
                ),
            ),
        ),
        Panel(
            title="Oldest outbox message",
            description="Age of the oldest unacknowledged outbox message per node and destination.",
            queries=(
                Query(
                    expr="max by (name, destination) (casebridge_outbox_oldest_age_seconds)",
                    legend="{{name}} -> {{destination}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            title="Sent, delivered, submit failures",
            description="Messages acknowledged by JetStream, stored by recipients, and "
            "submission attempts that failed (retried).",
            queries=(
                Query(expr=_rate("casebridge_messages_sent_total", "name"), legend="sent {{name}}"),
                Query(
                    expr=_rate("casebridge_messages_delivered_total", "name"),
                    legend="delivered {{name}}",
                ),
                Query(
                    expr="sum by (name) (rate(casebridge_submit_failures_total[$__rate_interval]))",
                    legend="submit failed {{name}}",
                ),
            ),
            unit="reqps",
            traffic=True,
        ),
        Panel(
            title="Files sent, verified, refused",
            description="Files of messages: sent (every chunk acknowledged), verified (every "
            "chunk and the whole-file digest), refused (a bad chunk, or incomplete when the "
            "message expired).",
            queries=(
                Query(
                    expr=_rate("casebridge_node_files_total", "name, direction, outcome"),
                    legend="{{name}} {{direction}} {{outcome}}",
                ),
            ),
            unit="reqps",
            traffic=True,
        ),
        Panel(
            title="Redeliveries and replay attempts",
            description="Deliveries seen again (settled: already stored; nak: retried after a "
            "local fault) and replays refused.",
            queries=(
                Query(
                    expr=_rate(
                        "casebridge_redeliveries_total", "name, kind", '{job="casebridge-node"}'
                    ),
                    legend="{{name}} {{kind}}",
                ),
                Query(
                    expr=_rate("casebridge_replay_attempts_total", "name, from_country"),
                    legend="replay {{name}} from {{from_country}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            title="Seal, open and validation time p95",
            description="Crypto and pre-flight cost per message.",
            queries=(
                Query(expr=_p(0.95, "casebridge_seal_duration_seconds", ""), legend="seal"),
                Query(
                    expr=_p(0.95, "casebridge_open_duration_seconds", "outcome"),
                    legend="open {{outcome}}",
                ),
                Query(
                    expr=_p(0.95, "casebridge_validation_duration_seconds", ""),
                    legend="pre-flight",
                ),
            ),
            unit="s",
            traffic=True,
        ),
        Panel(
            title="Evidence lag p95",
            description="From the instant evidence attests to its arrival at the sender, by kind.",
            queries=(
                Query(expr=_p(0.95, "casebridge_evidence_lag_seconds", "kind"), legend="{{kind}}"),
            ),
            unit="s",
            traffic=True,
        ),
        Panel(
            title="Certificates: days left",
            description="Days until each certificate a node or gateway relies on expires "
            "(alert below 14).",
            queries=(
                Query(
                    expr="min by (certificate, country) "
                    "(casebridge_certificate_expiry_seconds) / 86400",
                    legend="{{certificate}} {{country}}",
                ),
            ),
            unit="d",
        ),
        Panel(
            title="CRLs and directory: days left",
            description="Days until each country's CRL and the signed directory pass their "
            "next_update (then traffic from that country stops: directory_stale).",
            queries=(
                Query(
                    expr="min by (country) (casebridge_crl_expiry_seconds) / 86400",
                    legend="CRL {{country}}",
                ),
                Query(expr="min(casebridge_directory_expiry_seconds) / 86400", legend="directory"),
            ),
            unit="d",
        ),
        Panel(
            title="Audit chain",
            description="1 when the node's audit hash chain and checkpoints verified at the "
            "last check (every minute), 0 when broken.",
            queries=(Query(expr="min by (name) (casebridge_audit_chain_ok)", legend="{{name}}"),),
            kind="stat",
        ),
        Panel(
            title="Up",
            description="Scrape status of every node and gateway.",
            queries=(
                Query(
                    expr='up{job=~"casebridge-node|casebridge-gateway"}',
                    legend="{{name}}",
                ),
            ),
            kind="stat",
        ),
    ),
)

NATS: Final = Dashboard(
    uid="casebridge-nats",
    title="Casebridge / NATS",
    description="The hub and country nats-servers, from their monitoring endpoints under the "
    "standard prometheus-nats-exporter names (broker.ops.nats_exporter).",
    tags=("casebridge", "nats"),
    panels=(
        Panel(
            title="Connections",
            description="Client connections per server (nodes and gateways on country servers).",
            queries=(Query(expr="gnatsd_varz_connections", legend="{{server_id}}"),),
        ),
        Panel(
            title="Messages in / out",
            description="Messages per second each server received and sent.",
            queries=(
                Query(expr=f"rate(gnatsd_varz_in_msgs[{RATE}])", legend="in {{server_id}}"),
                Query(expr=f"rate(gnatsd_varz_out_msgs[{RATE}])", legend="out {{server_id}}"),
            ),
            unit="reqps",
            traffic=True,
        ),
        Panel(
            title="Bytes in / out",
            description="Bytes per second each server received and sent.",
            queries=(
                Query(expr=f"rate(gnatsd_varz_in_bytes[{RATE}])", legend="in {{server_id}}"),
                Query(expr=f"rate(gnatsd_varz_out_bytes[{RATE}])", legend="out {{server_id}}"),
            ),
            unit="Bps",
            traffic=True,
        ),
        Panel(
            title="Memory and CPU",
            description="Resident memory (bytes) and CPU (percent) per server.",
            queries=(
                Query(expr="gnatsd_varz_mem", legend="mem {{server_id}}"),
                Query(expr="gnatsd_varz_cpu", legend="cpu % {{server_id}}"),
            ),
            unit="bytes",
        ),
        Panel(
            title="Slow consumers",
            description="Clients the server had to drop messages for.",
            queries=(Query(expr="gnatsd_varz_slow_consumers", legend="{{server_id}}"),),
        ),
        Panel(
            title="Leaf connections and RTT",
            description="Leaf-node connections (hub: one per country) and their round-trip "
            "time in seconds.",
            queries=(
                Query(expr="gnatsd_leafz_conn_nodes_total", legend="leafs {{server_id}}"),
                Query(
                    expr="max by (server_id, name) (gnatsd_leafz_conn_rtt)",
                    legend="rtt {{server_id}} {{name}}",
                ),
            ),
        ),
        Panel(
            title="JetStream stream messages",
            description="Messages stored per stream (OUT_<PEER> keeps history: limits retention).",
            queries=(
                Query(
                    expr="sum by (server_id, stream_name) (jetstream_stream_total_messages)",
                    legend="{{server_id}} {{stream_name}}",
                ),
            ),
        ),
        Panel(
            title="JetStream consumers: pending and unacknowledged",
            description="Messages waiting for each pull consumer (gateways, nodes) and "
            "delivered but not yet acknowledged.",
            queries=(
                Query(
                    expr="sum by (server_id, consumer_name) (jetstream_consumer_num_pending)",
                    legend="pending {{server_id}} {{consumer_name}}",
                ),
                Query(
                    expr="sum by (server_id, consumer_name) (jetstream_consumer_num_ack_pending)",
                    legend="ack pending {{server_id}} {{consumer_name}}",
                ),
            ),
        ),
        Panel(
            title="Border outbox backlog",
            description="Messages in each country's OUT_<PEER> the peer has not sourced yet.",
            queries=(
                Query(expr="casebridge_border_outbox_messages", legend="{{country}} -> {{peer}}"),
            ),
        ),
        Panel(
            title="Monitoring endpoints up",
            description="1 when the server's monitoring port answered the exporter.",
            queries=(Query(expr="casebridge_nats_monitor_up", legend="{{server_id}}"),),
            kind="stat",
        ),
    ),
)

DASHBOARDS: Final = (OVERVIEW, BORDER, NODE, NATS)


def rendered() -> dict[str, str]:
    """File name -> JSON text of every dashboard (what is committed)."""
    return {
        f"{d.uid}.json": json.dumps(render(d), indent=2, sort_keys=False) + "\n" for d in DASHBOARDS
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.ops.dashboards")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--check", action="store_true", help="fail if the files differ")
    args = parser.parse_args(argv)
    stale = []
    for name, text in rendered().items():
        target = args.out / name
        if args.check:
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                stale.append(str(target))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run python -m broker.ops.dashboards):", *stale, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
