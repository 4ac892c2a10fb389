"""Where a local federation's metrics are: the NATS exporter process and the scrape targets.

``exporter_process(fed)`` writes ``DIR/settings/nats-exporter.json`` (a free port, every
server's monitoring URL) and returns the process spec that ``prepare`` registers, so ``federation
up`` runs ``python -m broker.ops.nats_exporter`` next to the gateways and nodes.
``metrics_targets(fed)`` lists every ``/metrics`` endpoint by Prometheus job (nodes: their API
port; gateways: their ``api.port``; the exporter), and ``prometheus_config`` renders a
Prometheus configuration scraping them (the demo prints it, the observability test runs it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from broker.federation.launcher import LOOPBACK, Federation, ProcessSpec, free_port
from broker.ops.nats_exporter import ExporterConfig, MonitoredServer, load_config

EXPORTER_NAME: Final = "nats-exporter"
EXPORTER_FILE: Final = "settings/nats-exporter.json"
JOB_NODE: Final = "casebridge-node"
JOB_GATEWAY: Final = "casebridge-gateway"
JOB_NATS: Final = "casebridge-nats"


@dataclass(frozen=True, kw_only=True, slots=True)
class Target:
    """One scrape target: its job, ``host:port``, and a readable name (agency or ``nats``)."""

    job: str
    address: str
    name: str

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"


def exporter_config(fed: Federation, *, port: int | None = None) -> ExporterConfig:
    """The exporter configuration of ``fed`` (every server; a new free port unless given)."""
    settings = fed.settings
    servers = [MonitoredServer(name="hub", url=settings.hub.monitor_url)]
    servers += [
        MonitoredServer(name=code, url=server.monitor_url, domain=code.lower())
        for code, server in sorted(settings.countries.items())
    ]
    return ExporterConfig(
        host=LOOPBACK, port=port if port is not None else free_port(), servers=tuple(servers)
    )


def exporter_process(fed: Federation) -> ProcessSpec:
    """Write the exporter's configuration file and return its process spec."""
    path = fed.base / EXPORTER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(exporter_config(fed).to_json(), indent=2) + "\n", encoding="utf-8")
    return ProcessSpec(
        name=EXPORTER_NAME,
        argv=("{python}", "-m", "broker.ops.nats_exporter", "--config", str(path)),
    )


def metrics_targets(fed: Federation) -> list[Target]:
    """Every metrics endpoint of ``fed``: nodes, gateways, and the exporter if configured."""
    settings = fed.settings
    targets = [
        Target(job=JOB_NODE, address=f"{LOOPBACK}:{node.http_port}", name=agency)
        for agency, node in sorted(settings.nodes.items())
    ]
    targets += [
        Target(job=JOB_GATEWAY, address=f"{LOOPBACK}:{gw.http_port}", name=gw.agency_id)
        for _, gw in sorted(settings.gateways.items())
    ]
    path = fed.base / EXPORTER_FILE
    if path.exists():
        config = load_config(path)
        targets.append(
            Target(job=JOB_NATS, address=f"{config.host}:{config.port}", name=EXPORTER_NAME)
        )
    return targets


def prometheus_config(
    targets: Sequence[Target],
    *,
    scrape_interval: str = "15s",
    rule_files: Sequence[Path] = (),
    external_labels: Mapping[str, str] | None = None,
) -> str:
    """A Prometheus configuration (YAML) scraping ``targets``, one job each kind."""
    jobs: dict[str, list[Target]] = {}
    for target in targets:
        jobs.setdefault(target.job, []).append(target)
    doc: dict[str, object] = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": scrape_interval,
            **({"external_labels": dict(external_labels)} if external_labels else {}),
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "static_configs": [
                    {"targets": [t.address], "labels": {"name": t.name}} for t in members
                ],
            }
            for job, members in sorted(jobs.items())
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)
