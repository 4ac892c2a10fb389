"""A node whose country server is down: keyed requests are answered at once, in parallel,
and the outbox sends them when the server is back (real nats-server processes)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from broker.sdk import NO_RETRIES, NodeClient, SendResult
from tests.integration.e2e_helpers import Running, bulletin, wait_until

LKA: Final = "de.lka-berlin"
NPU: Final = "ua.npu"


class TestCountryServerDown:
    def test_three_keyed_requests_answer_within_a_second_and_are_sent_later(
        self, nats_binary: Path, tmp_path: Path
    ) -> None:
        """With DE's nats-server stopped, three concurrent keyed sends each answer 202
        queued within 1 s; after the restart the outbox submits all three and they arrive."""
        del nats_binary
        fed = Running.start(tmp_path / "fed", nodes=[LKA, NPU])
        try:
            base = fed.client(LKA)
            client = NodeClient(base.base_url, base.token, timeout=10, retries=NO_RETRIES)
            fed.fed.stop_country("DE")
            wait_until(
                lambda: "transport not connected" in client.ready()["detail"],
                15,
                what="the node to see its server gone",
            )

            def send(key: str) -> tuple[float, SendResult]:
                started = time.monotonic()
                result = client.send(bulletin([NPU]), idempotency_key=key)
                return time.monotonic() - started, result

            with ThreadPoolExecutor(max_workers=3) as pool:
                outcomes = list(pool.map(send, ["k-1", "k-2", "k-3"]))
            assert [r["state"] for _, r in outcomes] == ["queued"] * 3
            assert max(elapsed for elapsed, _ in outcomes) < 1.0, outcomes

            fed.fed.start_country("DE")
            ids = {r["message_id"] for _, r in outcomes}

            def delivered() -> set[str]:
                return {m["message_id"] for m in fed.client(NPU).inbox()} & ids

            assert wait_until(lambda: delivered() == ids, 90, what="all three delivered")
            outbox = {m["message_id"]: m["state"] for m in fed.client(LKA).outbox()}
            assert {outbox[i] for i in ids} == {"acknowledged"}
        finally:
            fed.close()
