"""A Prometheus exporter for the federation's nats-servers, from their monitoring endpoints.

What it is for
    nats-server's monitoring port serves JSON (``/varz``, ``/connz``, ``/leafz``, ``/jsz``), not
    Prometheus text. :class:`NatsCollector` reads it at scrape time and exposes it under the
    names the standard ``prometheus-nats-exporter`` uses, so stock NATS dashboards and ours
    query the same series: ``gnatsd_varz_<field>`` (every numeric ``/varz`` field),
    ``gnatsd_connz_<field>``, ``gnatsd_leafz_conn_nodes_total`` and ``gnatsd_leafz_conn_*``,
    ``jetstream_server_*``, ``jetstream_stream_*``, ``jetstream_consumer_*``, each with
    ``server_id`` = the server's name in the federation (``hub``, ``DE``...: what the standard
    exporter calls the configured server id). Like the standard exporter, every value is a gauge.

    On top, the backlog of each country's outbox towards each peer (the ``OUT_<PEER>`` stream,
    store-and-forward while the peer is away)::

        casebridge_border_outbox_messages{country, peer}
            OUT_<PEER>'s last sequence on <country> minus the last sequence the peer's INBOX
            has sourced from it (the peer reports it; while the peer is unreachable the last
            value it reported is used)
        casebridge_border_outbox_oldest_age_seconds{country, peer}
            how long that backlog has been non-zero, as seen by this exporter (0 when empty;
            a lower bound after an exporter restart)
        casebridge_nats_monitor_up{server_id}   1 if the server's monitoring port answered

Run as one more process of a local federation (``python -m broker.ops.nats_exporter --config
DIR/settings/nats-exporter.json``; ``broker.federation.processes`` registers it).

What it must never do
    Touch NATS itself (monitoring HTTP only, read-only), or fail a scrape because one server is
    down (that server's series are simply absent, and ``casebridge_nats_monitor_up`` is 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker.errors import ConfigError
from broker.logs import LOG_FORMATS, configure_logging
from broker.metrics import MetricsServer, build_info

FETCH_TIMEOUT: Final = 2.0
OUT_PREFIX: Final = "OUT_"
SERVER_LABELS: Final = (
    "server_id",
    "server_name",
    "cluster",
    "domain",
    "meta_leader",
    "is_meta_leader",
)
STREAM_LABELS: Final = (
    *SERVER_LABELS,
    "account",
    "account_id",
    "stream_name",
    "stream_leader",
    "is_stream_leader",
)
CONSUMER_LABELS: Final = (
    *STREAM_LABELS,
    "consumer_name",
    "consumer_leader",
    "is_consumer_leader",
    "consumer_desc",
    "consumer_created",
)
LEAF_LABELS: Final = ("server_id", "account", "account_id", "ip", "port", "name")
_JS_SERVER: Final = {
    "total_streams": "streams",
    "total_consumers": "consumers",
    "total_messages": "messages",
    "total_message_bytes": "bytes",
}
_JS_STREAM: Final = {
    "total_messages": "messages",
    "total_bytes": "bytes",
    "first_seq": "first_seq",
    "last_seq": "last_seq",
    "consumer_count": "consumer_count",
}
_JS_CONSUMER: Final = ("num_pending", "num_ack_pending", "num_redelivered", "num_waiting")
_LEAF: Final = {
    "conn_in_msgs": "in_msgs",
    "conn_out_msgs": "out_msgs",
    "conn_in_bytes": "in_bytes",
    "conn_out_bytes": "out_bytes",
    "conn_subscriptions_total": "subscriptions",
}

log = structlog.get_logger("casebridge.nats_exporter")
Fetch = Callable[[str], dict[str, Any] | None]


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitoredServer:
    """One nats-server: its name (``hub`` or a country code) and monitoring URL.

    ``domain`` is the JetStream domain of a country server (lower-case code), None for the hub.
    """

    name: str
    url: str
    domain: str | None = None


def fetch_json(url: str) -> dict[str, Any] | None:
    """GET ``url`` and parse a JSON object; None on any network or format problem."""
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as resp:  # noqa: S310 - http:// from our config
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _rtt_seconds(text: object) -> float:
    """Go duration text (``361µs``, ``1.2ms``, ``2s``) in seconds; 0 if unreadable."""
    if not isinstance(text, str):
        return 0.0
    for suffix, scale in (("ns", 1e-9), ("µs", 1e-6), ("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if text.endswith(suffix):
            with contextlib.suppress(ValueError):
                return float(text[: -len(suffix)]) * scale
            return 0.0
    return 0.0


class _Families:
    """Gauge families created on first use, yielded in creation order."""

    def __init__(self) -> None:
        self._by_name: dict[str, GaugeMetricFamily] = {}

    def add(
        self, name: str, text: str, labels: Sequence[str], values: Sequence[str], v: float
    ) -> None:
        family = self._by_name.get(name)
        if family is None:
            family = GaugeMetricFamily(name, text, labels=list(labels))
            self._by_name[name] = family
        family.add_metric(list(values), v)

    def __iter__(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._by_name.values())


@dataclass(slots=True)
class _Backlog:
    sourced_seq: int | None = None  # last sequence the peer reported as sourced
    nonzero_since: float | None = None


class NatsCollector(Collector):
    """Reads every server's monitoring JSON at scrape time (see the module docstring)."""

    def __init__(
        self,
        servers: Sequence[MonitoredServer],
        *,
        fetch: Fetch = fetch_json,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._servers = tuple(servers)
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._backlog: dict[tuple[str, str], _Backlog] = {}

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected at scrape time only

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        out = _Families()
        jsz: dict[str, dict[str, Any]] = {}
        for server in self._servers:
            varz = self._fetch(f"{server.url}/varz")
            out.add(
                "casebridge_nats_monitor_up",
                "1 if the server's monitoring endpoint answered this scrape.",
                ["server_id"],
                [server.name],
                0.0 if varz is None else 1.0,
            )
            if varz is None:
                continue
            self._varz(out, server, varz)
            self._connz(out, server)
            self._leafz(out, server)
            if server.domain is not None:
                found = self._jsz(out, server, varz)
                if found is not None:
                    jsz[server.name] = found
        self._outbox_backlog(out, jsz)
        yield from out

    @staticmethod
    def _varz(out: _Families, server: MonitoredServer, varz: Mapping[str, Any]) -> None:
        for field, value in sorted(varz.items()):
            number = _number(value)
            if number is not None:
                out.add(f"gnatsd_varz_{field}", field, ["server_id"], [server.name], number)

    def _connz(self, out: _Families, server: MonitoredServer) -> None:
        connz = self._fetch(f"{server.url}/connz")
        if connz is None:
            return
        for field, value in sorted(connz.items()):
            number = _number(value)
            if number is not None:
                out.add(f"gnatsd_connz_{field}", field, ["server_id"], [server.name], number)
        pending = sum(
            _number(c.get("pending_bytes")) or 0.0
            for c in connz.get("connections") or ()
            if isinstance(c, dict)
        )
        out.add(
            "gnatsd_connz_pending_bytes", "pending_bytes", ["server_id"], [server.name], pending
        )

    def _leafz(self, out: _Families, server: MonitoredServer) -> None:
        leafz = self._fetch(f"{server.url}/leafz")
        if leafz is None:
            return
        out.add(
            "gnatsd_leafz_conn_nodes_total",
            "nodes_total",
            ["server_id"],
            [server.name],
            _number(leafz.get("leafnodes")) or 0.0,
        )
        for leaf in leafz.get("leafs") or ():
            if not isinstance(leaf, dict):
                continue
            labels = [
                server.name,
                str(leaf.get("account", "")),
                str(leaf.get("account", "")),
                str(leaf.get("ip", "")),
                str(leaf.get("port", "")),
                str(leaf.get("name", "")),
            ]
            out.add("gnatsd_leafz_info", "info", LEAF_LABELS, labels, 1.0)
            out.add(
                "gnatsd_leafz_conn_rtt", "rtt", LEAF_LABELS, labels, _rtt_seconds(leaf.get("rtt"))
            )
            for name, field in _LEAF.items():
                out.add(
                    f"gnatsd_leafz_{name}",
                    field,
                    LEAF_LABELS,
                    labels,
                    _number(leaf.get(field)) or 0.0,
                )

    def _jsz(
        self, out: _Families, server: MonitoredServer, varz: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        jsz = self._fetch(f"{server.url}/jsz?consumers=true&config=true")
        if jsz is None:
            return None
        config = jsz.get("config") or {}
        meta = jsz.get("meta_cluster") or {}
        server_name = str(varz.get("server_name", server.name))
        leader = str(meta.get("leader", ""))
        base = [
            server.name,
            server_name,
            str(meta.get("name", "")),
            str(config.get("domain", "")),
            leader,
            "true" if not leader or leader == server_name else "false",
        ]
        out.add(
            "jetstream_server_jetstream_disabled",
            "JetStream disabled or not",
            SERVER_LABELS,
            base,
            1.0 if jsz.get("disabled") else 0.0,
        )
        out.add(
            "jetstream_server_max_memory",
            "JetStream Max Memory",
            SERVER_LABELS,
            base,
            _number(config.get("max_memory")) or 0.0,
        )
        out.add(
            "jetstream_server_max_storage",
            "JetStream Max Storage",
            SERVER_LABELS,
            base,
            _number(config.get("max_storage")) or 0.0,
        )
        for name, field in _JS_SERVER.items():
            out.add(
                f"jetstream_server_{name}",
                name,
                SERVER_LABELS,
                base,
                _number(jsz.get(field)) or 0.0,
            )
        for account in jsz.get("account_details") or ():
            for stream in account.get("stream_detail") or ():
                labels = [
                    *base,
                    str(account.get("name", "")),
                    str(account.get("id", "")),
                    str(stream.get("name", "")),
                    server_name,
                    "true",
                ]
                state = stream.get("state") or {}
                for name, field in _JS_STREAM.items():
                    out.add(
                        f"jetstream_stream_{name}",
                        name,
                        STREAM_LABELS,
                        labels,
                        _number(state.get(field)) or 0.0,
                    )
                for consumer in stream.get("consumer_detail") or ():
                    c_labels = [
                        *labels,
                        str(consumer.get("name", "")),
                        server_name,
                        "true",
                        str((consumer.get("config") or {}).get("description", "")),
                        str(consumer.get("created", "")),
                    ]
                    for field in _JS_CONSUMER:
                        out.add(
                            f"jetstream_consumer_{field}",
                            field,
                            CONSUMER_LABELS,
                            c_labels,
                            _number(consumer.get(field)) or 0.0,
                        )
                    delivered = consumer.get("delivered") or {}
                    ack_floor = consumer.get("ack_floor") or {}
                    for name, src, field in (
                        ("delivered_stream_seq", delivered, "stream_seq"),
                        ("delivered_consumer_seq", delivered, "consumer_seq"),
                        ("ack_floor_stream_seq", ack_floor, "stream_seq"),
                        ("ack_floor_consumer_seq", ack_floor, "consumer_seq"),
                    ):
                        out.add(
                            f"jetstream_consumer_{name}",
                            name,
                            CONSUMER_LABELS,
                            c_labels,
                            _number(src.get(field)) or 0.0,
                        )
        return jsz

    def _outbox_backlog(self, out: _Families, jsz: Mapping[str, Mapping[str, Any]]) -> None:
        countries = [s for s in self._servers if s.domain is not None]
        by_domain = {s.domain: s.name for s in countries}
        # What each reachable country reports having sourced from each peer's OUT_<it>.
        for name, doc in jsz.items():
            for stream in _streams(doc):
                if stream.get("name") != "INBOX":
                    continue
                for source in stream.get("sources") or ():
                    api = str((source.get("external") or {}).get("api", ""))
                    peer_domain = api.removeprefix("$JS.").removesuffix(".API")
                    origin = by_domain.get(peer_domain)
                    seq = _number(source.get("seq"))
                    if origin is not None and seq is not None:
                        self._backlog.setdefault((origin, name), _Backlog()).sourced_seq = int(seq)
        now = self._clock()
        for name, doc in jsz.items():
            for stream in _streams(doc):
                stream_name = str(stream.get("name", ""))
                if not stream_name.startswith(OUT_PREFIX):
                    continue
                peer = stream_name.removeprefix(OUT_PREFIX)
                state = self._backlog.get((name, peer))
                last = _number((stream.get("state") or {}).get("last_seq"))
                if state is None or state.sourced_seq is None or last is None:
                    continue  # the peer never told us what it has: unknown, not zero
                backlog = max(0.0, last - state.sourced_seq)
                if backlog == 0:
                    state.nonzero_since = None
                elif state.nonzero_since is None:
                    state.nonzero_since = now
                age = 0.0 if state.nonzero_since is None else now - state.nonzero_since
                labels = [name, peer]
                out.add(
                    "casebridge_border_outbox_messages",
                    "Messages in a country's OUT_<PEER> stream the peer has not sourced yet.",
                    ["country", "peer"],
                    labels,
                    backlog,
                )
                out.add(
                    "casebridge_border_outbox_oldest_age_seconds",
                    "How long the OUT_<PEER> backlog has been non-zero (0 when empty).",
                    ["country", "peer"],
                    labels,
                    age,
                )


def _streams(doc: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for account in doc.get("account_details") or ():
        yield from account.get("stream_detail") or ()


# -------------------------------------------------------------------- process ---


@dataclass(frozen=True, kw_only=True, slots=True)
class ExporterConfig:
    """``nats-exporter.json``: where to listen and which servers to read."""

    host: str
    port: int
    servers: tuple[MonitoredServer, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "listen": {"host": self.host, "port": self.port},
            "servers": [{"name": s.name, "url": s.url, "domain": s.domain} for s in self.servers],
        }


def load_config(path: Path) -> ExporterConfig:
    """Read an exporter configuration file (``ConfigError`` if unusable)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return ExporterConfig(
            host=str(raw["listen"]["host"]),
            port=int(raw["listen"]["port"]),
            servers=tuple(
                MonitoredServer(name=str(s["name"]), url=str(s["url"]), domain=s.get("domain"))
                for s in raw["servers"]
            ),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a NATS exporter configuration ({exc!r})") from None


async def serve(config: ExporterConfig, *, stop: asyncio.Event) -> None:
    """Serve ``/metrics`` until ``stop`` is set."""
    registry = CollectorRegistry()
    build_info(registry, component="nats-exporter", country="")
    registry.register(NatsCollector(config.servers))
    async with MetricsServer(registry, host=config.host, port=config.port):
        log.info(
            "nats_exporter_started",
            listen=f"{config.host}:{config.port}",
            servers=len(config.servers),
        )
        await stop.wait()


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``casebridge-nats-exporter`` (``python -m broker.ops.nats_exporter``)."""
    parser = argparse.ArgumentParser(prog="casebridge-nats-exporter", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="nats-exporter.json")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format)
    config = load_config(args.config)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop=stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
