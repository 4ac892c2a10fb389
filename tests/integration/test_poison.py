"""A message whose handling raises at the recipient, on real nats-server processes: it ends in
the quarantine after the retry bound while honest messages to the same agency keep arriving,
the node logs one failure event for it, and the API's retry delivers it once the fault is gone.

The federation (hub, DE and UA servers, both gateways) runs as processes; ua.npu's node runs in
this process on the real NATS transport, with a fault injected into its recipient check (a
seam of the node) for one message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from broker.core import wire as s
from broker.core.envelope import OpenedMessage
from broker.federation import processes
from broker.node.api import create_app
from broker.node.policy import RecipientCheck
from broker.node.runtime import build_node
from broker.node.service import Node, RetryPolicy
from broker.node.settings import Settings, load_settings
from broker.node.store import Store
from broker.node.transport_nats import NatsTransport
from tests.integration.conftest import run
from tests.integration.e2e_helpers import Running, Sealed, example

RECIPIENT = "ua.npu"
SENDER = "de.lka-berlin"
TOKEN = "p" * 32
HONEST = 6


class FaultyCheck:
    """The node's recipient check, raising RuntimeError for the message ids in ``ids``."""

    def __init__(self, inner: RecipientCheck) -> None:
        self.inner = inner
        self.ids: set[str] = set()

    def __call__(self, opened: OpenedMessage) -> None:
        if opened.header.id in self.ids:
            raise RuntimeError(f"injected fault for {opened.header.id}")
        self.inner(opened)


def test_poison_is_quarantined_honest_traffic_flows_and_retry_delivers(
    nats_binary: Path, tmp_path: Path
) -> None:
    """One failing message: quarantined after the bound, one log event, honest ones delivered
    meanwhile (latency printed), and the API's retry delivers it once the fault is gone."""
    del nats_binary
    running = Running.start(tmp_path / "fed", nodes=[])
    try:
        poison = running.seal_as(SENDER, [RECIPIENT], example("bulletin"))
        honest = [running.seal_as(SENDER, [RECIPIENT], example("bulletin")) for _ in range(HONEST)]
        settings = load_settings(running.fed.base / processes.SETTINGS_DIR / f"{RECIPIENT}.json")
        run(_scenario(running, settings, poison, honest))
    finally:
        running.close()


async def _scenario(
    running: Running, settings: Settings, poison: Sealed, honest: list[Sealed]
) -> None:
    store = Store(settings.store_path)
    transport = NatsTransport(settings)
    with capture_logs() as logs:
        node = build_node(settings, transport=transport, now=datetime.now(UTC), store=store)
        # Fault injection through the node's recipient-check seam, and a short retry bound
        # (0.5 s, 1 s, 2 s, then quarantine) so the test does not wait the default 30 s.
        faulty = FaultyCheck(node.core.recipient_check)  # test seam
        faulty.ids.add(poison.message_id)
        node.core.recipient_check = faulty  # test seam
        node._retry = RetryPolicy(nak_delay=0.5, max_attempts=4)  # test seam
        receiver = asyncio.create_task(node.run_receiver())
        publisher = await running.fed.connect_as(SENDER, allow_reconnect=False)
        try:
            js = publisher.jetstream()
            subject = s.submit_subject(SENDER)
            await js.publish(subject, poison.wire, headers={"Nats-Msg-Id": poison.message_id})
            sent_at: dict[str, float] = {}
            latency: dict[str, float] = {}

            async def watch() -> None:
                # Arrival times measured while publishing: polls the store every 20 ms.
                while len(latency) < len(honest) or not store.list_quarantine():
                    for message_id, started in list(sent_at.items()):
                        if message_id not in latency and store.inbox_message(message_id):
                            latency[message_id] = time.monotonic() - started
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            for message in honest:
                sent_at[message.message_id] = time.monotonic()
                await js.publish(subject, message.wire, headers={"Nats-Msg-Id": message.message_id})
                await asyncio.sleep(0.5)
            await asyncio.wait_for(watcher, timeout=60)
            print(
                "honest message latency while the poison was retried (s):",
                sorted(round(v, 2) for v in latency.values()),
            )
            assert len(latency) == len(honest), "honest messages stalled behind the poison"
            assert max(latency.values()) < 10.0
            (item,) = store.list_quarantine()
            assert item.message_id == poison.message_id
            assert (item.error, item.attempts, item.lane) == ("RuntimeError", 4, "messages")
            assert store.inbox_message(poison.message_id) is None
            failed = [e for e in logs if e["event"] == "delivery_failed"]
            assert len(failed) == 1, failed
            assert [e["event"] for e in logs].count("message_quarantined") == 1
            assert node.ready() == (True, "ready")

            faulty.ids.clear()
            async with _api(node) as client:
                listed = await (
                    await client.get("/v1/quarantine", headers={"Authorization": f"Bearer {TOKEN}"})
                ).json()
                assert [i["claimed_message_id"] for i in listed["quarantine"]] == [
                    poison.message_id
                ]
                answer = await client.post(
                    f"/v1/quarantine/{item.id}/retry",
                    headers={"Authorization": f"Bearer {TOKEN}", "X-Actor": "ops"},
                )
                assert answer.status == 200
                assert await answer.json() == {"id": item.id, "outcome": "delivered"}
            assert store.inbox_message(poison.message_id) is not None
            assert store.list_quarantine() == []
        finally:
            await publisher.close()
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
            await transport.close()
            store.close()


@asynccontextmanager
async def _api(node: Node) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    @asynccontextmanager
    async def lifecycle() -> AsyncIterator[Node]:
        yield node

    async with TestClient(TestServer(create_app(lifecycle, token=TOKEN))) as client:
        yield client
