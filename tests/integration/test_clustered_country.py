"""A country on a 3-server NATS cluster (R3 streams), its gateway and nodes on the server list.

Germany runs ``servers: 3`` (docs/federation.md, "Clustered country servers"), Ukraine one
server. The smoke test sends a few tens of messages through the cluster; the slow test kills
one German server with SIGKILL in the middle of a 2,000-message run and checks, by message id,
that everything the sender's node accepted arrives exactly once.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from broker.cli.focal import NodeCallError
from broker.core import wire as s
from tests.integration.conftest import run
from tests.integration.e2e_helpers import DESCRIPTION, Running, bulletin, wait_until

LKA: Final = "de.lka-berlin"
NPU: Final = "ua.npu"


def _clustered() -> dict[str, Any]:
    countries = [dict(c) for c in DESCRIPTION["countries"]]
    countries[0]["servers"] = 3
    countries[0]["agencies"] = [a for a in countries[0]["agencies"] if a["id"] == LKA]
    return {**DESCRIPTION, "federation": "clustered", "countries": countries}


@pytest.fixture
def clustered(nats_binary: Path, tmp_path: Path) -> Iterator[Running]:
    """DE on three servers, UA on one; both gateways, the LKA and NPU nodes."""
    del nats_binary
    running = Running.start(tmp_path / "fed", nodes=[LKA, NPU], description=_clustered())
    try:
        yield running
    finally:
        running.close()


def _send_many(fed: Running, count: int, *, tag: str) -> tuple[list[str], list[str]]:
    """Send ``count`` bulletins LKA -> NPU; (ids the node accepted, API errors)."""
    accepted: list[str] = []
    errors: list[str] = []
    for i in range(count):
        draft = bulletin([NPU], legal_basis=f"Directive 2011/36/EU #{tag}-{i}")
        try:
            result = fed.client(LKA).call("POST", "/v1/messages", body=draft)
        except NodeCallError as exc:
            errors.append(str(exc))
            continue
        accepted.append(str(result["message_id"]))
    return accepted, errors


def _arrived_once(fed: Running, ids: list[str], timeout: float) -> None:
    wait_until(lambda: set(ids) <= set(fed.inbox_ids(NPU)), timeout, what="every message at NPU")
    inbox = fed.inbox_ids(NPU)
    assert len(inbox) == len(set(inbox))
    counts = fed.delivered_log_count(NPU)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)


class TestClusteredCountry:
    """Streams replicated on three servers; messages flow as with one server."""

    def test_smoke(self, clustered: Running) -> None:
        """R3 streams in DE; 30 messages through the cluster arrive once each."""

        async def replicas() -> dict[str, int]:
            nc = await clustered.fed.connect_gateway("DE", allow_reconnect=False)
            try:
                js = nc.jetstream()
                names = (s.SUBMIT_STREAM, s.out_stream("UA"), s.DELIVER_STREAM, "PUBLISHED")
                return {n: int((await js.stream_info(n)).config.num_replicas or 0) for n in names}
            finally:
                await nc.close()

        assert set(run(replicas()).values()) == {3}
        for server in clustered.fed.settings.country("DE").cluster:
            # Every route is mutual TLS, verified and mapped; each server routes to the others.
            with urllib.request.urlopen(f"{server.monitor_url}/varz", timeout=5) as answer:  # noqa: S310 - loopback
                cluster = json.loads(answer.read())["cluster"]
            assert (cluster["tls_required"], cluster["tls_verify"]) == (True, True)
            with urllib.request.urlopen(f"{server.monitor_url}/routez", timeout=5) as answer:  # noqa: S310 - loopback
                assert json.loads(answer.read())["num_routes"] >= 2
        ids, errors = _send_many(clustered, 30, tag="smoke")
        assert errors == []
        _arrived_once(clustered, ids, 60.0)

    @pytest.mark.slow
    def test_kill_one_server_mid_run(self, clustered: Running) -> None:
        """kill -9 of one DE server during 2,000 sends: nothing accepted lost, none twice."""
        total = 2_000
        progress: list[str] = []
        killed = threading.Event()

        def killer() -> None:
            wait_until(lambda: len(progress) >= total // 2, 600.0, what="half the run sent")
            clustered.fed.stop("DE-2", kill=True)
            killed.set()

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        accepted: list[str] = []
        errors: list[str] = []
        for i in range(total):
            ids, failed = _send_many(clustered, 1, tag=f"kill-{i}")
            accepted += ids
            errors += failed
            progress.append("x")
        thread.join(timeout=60)
        assert killed.is_set()
        assert not clustered.fed.is_running("DE-2")
        # The node keeps what it accepted and submits it until JetStream acknowledges it.
        assert len(accepted) >= total - len(errors)
        _arrived_once(clustered, accepted, 600.0)
