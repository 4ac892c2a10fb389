"""A gateway whose ledger cannot be written relays nothing, says so, and resumes by itself
(issue 11: storage faults are first-class, the gateways' ledgers too), on real nats-server."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any, Final

import pytest

from broker.federation import processes
from tests.integration.e2e_helpers import Running, bulletin, wait_until

pytestmark = pytest.mark.integration

LKA: Final = "de.lka-berlin"
STA: Final = "de.sta-berlin"
DELIVERY: Final = 60.0


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback, ours
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def test_locked_ledger_holds_traffic_counts_and_recovers(nats_binary: Path, tmp_path: Path) -> None:
    """While another process holds DE's ledger locked, the DE gateway records nothing, so
    relays nothing, and counts failed writes; free space is exported; once the lock is gone
    the waiting message is delivered without anyone's help."""
    del nats_binary
    fed = Running.start(tmp_path / "fed", nodes=[LKA, STA])
    try:
        doc: dict[str, Any] = json.loads(
            (fed.fed.base / processes.SETTINGS_DIR / "de.gateway.json").read_text("utf-8")
        )
        url = f"http://127.0.0.1:{doc['api']['port']}/metrics"
        ledger = (fed.fed.base / processes.SETTINGS_DIR / doc["store"]).resolve()
        assert _metric(url, "casebridge_gateway_store_free_bytes") > 0
        assert _metric(url, "casebridge_gateway_store_write_failures_total") == 0

        lock = sqlite3.connect(str(ledger), timeout=1, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            sent: dict[str, Any] = fed.client(LKA).call(
                "POST", "/v1/messages", body=bulletin([STA])
            )
            wait_until(
                lambda: _metric(url, "casebridge_gateway_store_write_failures_total") >= 1,
                DELIVERY,
                what="a failed ledger write counted",
            )
            assert sent["message_id"] not in fed.inbox_ids(STA)  # no crossing without record
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        wait_until(
            lambda: sent["message_id"] in fed.inbox_ids(STA),
            DELIVERY,
            what="delivery once the ledger is writable again",
        )
        quarantined = [
            e for e in fed.log_events("gateway-de") if e.get("event") == "input_quarantined"
        ]
        assert quarantined == []
    finally:
        fed.close()
