"""The Python SDK (`broker.sdk.NodeClient`) against real node APIs served on loopback ports."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from broker.node.api import create_app
from broker.node.attachment_transfer import NodeAttachments
from broker.node.attachments import AttachmentSpool
from broker.node.service import Node
from broker.node.store import Store
from broker.pki.dev import DevFederation
from broker.sdk import NO_RETRIES, Draft, NodeClient, NodeError, Retries

from .lossy_proxy import LossyProxy
from .node_world import World, example, world_at

TOKEN = "s" * 32


class Served:
    """Two nodes (de.lka-berlin, nl.politie) on one in-memory bus, each behind its HTTP API."""

    def __init__(self, world: World, *, files: bool = False, max_file: int = 1 << 32) -> None:
        self.world = world
        self.files = files  # nodes that carry attachments (spool next to each store)
        self.max_file = max_file
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runners: list[web.AppRunner] = []
        self.urls: dict[str, str] = {}

    def start(self) -> None:
        self.thread.start()
        for agency in ("de.lka-berlin", "nl.politie"):
            if self.files:
                store = Store(self.world.tmp / f"{agency}.sqlite")
                spool = AttachmentSpool(self.world.tmp / f"{agency}.attachments")
                node = self.world.node(
                    agency,
                    store=store,
                    attachments=NodeAttachments(store, spool, max_size=self.max_file),
                )
            else:
                node = self.world.node(agency)
            self.urls[agency] = self._run(self._serve(node))

    def _run(self, coro: Coroutine[Any, Any, str]) -> str:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _serve(self, node: Node) -> str:
        @asynccontextmanager
        async def lifecycle() -> AsyncIterator[Node]:
            yield node

        runner = web.AppRunner(create_app(lifecycle, token=TOKEN))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    def pump(self) -> None:
        """Deliver everything queued on the bus (deliveries, then the evidence they cause)."""
        asyncio.run_coroutine_threadsafe(self.world.pump(), self.loop).result(timeout=10)

    def client(self, agency: str, token: str = TOKEN) -> NodeClient:
        return NodeClient(self.urls[agency], token, timeout=5)

    def stop(self) -> None:
        for runner in self.runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def served(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[Served]:
    """de.lka-berlin and nl.politie behind their APIs; stopped after the test."""
    for world in world_at(dev_federation, tmp_path, fixed_now):
        running = Served(world)
        running.start()
        try:
            yield running
        finally:
            running.stop()


def request_draft(**overrides: Any) -> Draft:
    draft: Draft = {
        "to": ["nl.politie"],
        "type": "request.assistance",
        "purpose": "investigation",
        "handling": "H2",
        "tlp": "AMBER",
        "legal_basis": "Council Framework Decision 2006/960/JHA",
        "due": "2026-12-15",
        "body": example("request.assistance"),
    }
    draft.update(overrides)  # type: ignore[typeddict-item]
    return draft


class TestSending:
    def test_send_returns_the_typed_result(self, served: Served) -> None:
        """`send` answers with the message id, state and declared categories."""
        result = served.client("de.lka-berlin").send(request_draft())
        assert result["state"] == "acknowledged"
        assert "suspect_identity" in result["categories"]
        outbox = served.client("de.lka-berlin").outbox()
        assert [m["message_id"] for m in outbox] == [result["message_id"]]

    def test_requests_share_one_kept_alive_connection(self, served: Served) -> None:
        """Consecutive requests of one thread reuse one TCP connection (HTTP keep-alive); a
        connection the node closed meanwhile is replaced without an error."""
        with served.client("de.lka-berlin") as client:
            client.send(request_draft())
            first = client._local.connection.sock.getsockname()
            client.outbox()
            assert client._local.connection.sock.getsockname() == first
            # The node drops the idle connection (as its keep-alive timeout would).
            client._local.connection.sock.shutdown(socket.SHUT_RDWR)
            assert len(client.outbox()) == 1
            assert client._local.connection.sock.getsockname() != first

    def test_explain_sends_nothing(self, served: Served) -> None:
        """`explain` gives the pre-flight decision and leaves the outbox empty."""
        client = served.client("de.lka-berlin")
        decision = client.explain(request_draft())
        assert decision["allowed"] is True
        assert decision.get("recipients") == ["nl.politie"]
        assert client.outbox() == []

    def test_schema_errors_carry_status_and_pointers(self, served: Served) -> None:
        """An invalid body raises NodeError with HTTP 422 and the schema errors."""
        with pytest.raises(NodeError) as caught:
            served.client("de.lka-berlin").send(request_draft(body={"nonsense": True}))
        assert caught.value.status == 422
        assert caught.value.reason == "schema_invalid"
        assert caught.value.errors

    def test_idempotency_key_conflict(self, served: Served) -> None:
        """The same Idempotency-Key with another draft is a 409 idempotency_conflict."""
        client = served.client("de.lka-berlin")
        first = client.send(request_draft(), idempotency_key="k-1")
        assert (
            client.send(request_draft(), idempotency_key="k-1")["message_id"] == first["message_id"]
        )
        with pytest.raises(NodeError) as caught:
            client.send(request_draft(tlp="GREEN"), idempotency_key="k-1")
        assert (caught.value.status, caught.value.reason) == (409, "idempotency_conflict")


class TestReceiving:
    def test_inbox_show_evidence_thread(self, served: Served) -> None:
        """A delivered message is listed, opened with a justification, and evidenced."""
        sent = served.client("de.lka-berlin").send(request_draft())
        served.pump()
        receiver = served.client("nl.politie")
        inbox = receiver.inbox(unread=True)
        assert [m["message_id"] for m in inbox] == [sent["message_id"]]
        assert receiver.inbox(conversation=sent["conversation"])[0]["sender"] == "de.lka-berlin"
        opened = receiver.show(sent["message_id"], justification="case 42", actor="tester")
        assert opened["body"] == example("request.assistance")
        assert receiver.inbox(unread=True) == []
        served.pump()
        trail = served.client("de.lka-berlin").evidence(sent["message_id"])
        assert [e["kind"] for e in trail["evidence"]] == ["delivered", "read"]
        thread = served.client("de.lka-berlin").thread(sent["conversation"])
        assert [m["message_id"] for m in thread["messages"]] == [sent["message_id"]]
        assert receiver.rejections() == []

    def test_opening_without_justification_is_428(self, served: Served) -> None:
        """Opening a received message without a justification raises justification_required."""
        sent = served.client("de.lka-berlin").send(request_draft())
        served.pump()
        with pytest.raises(NodeError) as caught:
            served.client("nl.politie").show(sent["message_id"])
        assert (caught.value.status, caught.value.reason) == (428, "justification_required")


class TestErrorsAndHealth:
    def test_wrong_token_is_401(self, served: Served) -> None:
        """A wrong token raises NodeError unauthorized with status 401."""
        with pytest.raises(NodeError) as caught:
            served.client("de.lka-berlin", token="x" * 32).inbox()
        assert (caught.value.status, caught.value.reason) == (401, "unauthorized")

    def test_unknown_message_is_404(self, served: Served) -> None:
        """An unknown id raises not_found."""
        with pytest.raises(NodeError) as caught:
            served.client("de.lka-berlin").evidence("00000000-0000-4000-8000-999999999999")
        assert (caught.value.status, caught.value.reason) == (404, "not_found")

    def test_health_and_ready_need_no_token(self, served: Served) -> None:
        """`health` and `ready` work without a valid token and report the node's state."""
        client = served.client("de.lka-berlin", "x" * 32)
        assert client.health() is True
        assert client.ready()["status"] in ("ready", "not_ready")

    def test_unreachable_node(self) -> None:
        """Nothing listening: NodeError node_unreachable without an HTTP status."""
        client = NodeClient("http://127.0.0.1:9", TOKEN, timeout=2, retries=NO_RETRIES)
        with pytest.raises(NodeError) as caught:
            client.outbox()
        assert (caught.value.reason, caught.value.status) == ("node_unreachable", None)
        assert client.health() is False

    def test_only_http_urls(self) -> None:
        """A non-HTTP base URL is refused before any request."""
        with pytest.raises(NodeError, match="bad_request"):
            NodeClient("file:///etc/passwd", TOKEN)

    def test_repr_hides_the_token(self) -> None:
        """The client's repr never shows the token."""
        assert TOKEN not in repr(NodeClient("http://127.0.0.1:1", TOKEN))


class TestSafeRetries:
    def test_a_lost_answer_is_retried_with_the_same_key_and_stored_once(
        self, served: Served
    ) -> None:
        """The node stored the message but its answer was lost: the client retries with the
        Idempotency-Key it made for this send and gets the same message, not a second one."""
        waits: list[float] = []
        with LossyProxy(int(served.urls["de.lka-berlin"].rsplit(":", 1)[1])) as proxy:
            client = NodeClient(proxy.url, TOKEN, timeout=5, sleep=waits.append)
            result = client.send(request_draft())
        keys = {_header(head, b"idempotency-key") for head in proxy.requests}
        assert len(proxy.requests) == 2
        assert len(keys) == 1
        assert None not in keys
        assert waits == [Retries().delay(1)]
        outbox = served.client("de.lka-berlin").outbox()
        assert [m["message_id"] for m in outbox] == [result["message_id"]]

    def test_each_logical_send_has_its_own_key(self, served: Served) -> None:
        """Two sends of the same draft are two messages: keys are per send, not per content."""
        client = served.client("de.lka-berlin")
        first = client.send(request_draft())
        second = client.send(request_draft())
        assert first["message_id"] != second["message_id"]

    def test_503_is_retried_after_its_retry_after(self, served: Served) -> None:
        """A 503 (the store is full) is retried with backoff honouring Retry-After; the send
        succeeds once space returns, with one message stored."""
        store = served.world.nodes["de.lka-berlin"].store
        pages = store.query(lambda db: int(db.execute("PRAGMA page_count").fetchone()[0]))
        store.query(lambda db: db.execute(f"PRAGMA max_page_count = {pages}").fetchone())
        waits: list[float] = []

        def wait(seconds: float) -> None:
            waits.append(seconds)
            store.query(lambda db: db.execute("PRAGMA max_page_count = 1073741823").fetchone())

        client = NodeClient(
            served.urls["de.lka-berlin"],
            TOKEN,
            retries=Retries(attempts=3, initial_delay=0.1, max_delay=30),
            sleep=wait,
        )
        result = client.send(request_draft())
        assert result["state"] == "acknowledged"
        assert waits == [10.0]  # the node's Retry-After, above the 0.1 s backoff
        assert len(served.client("de.lka-berlin").outbox()) == 1

    def test_refusals_are_not_retried(self, served: Served) -> None:
        """A 4xx refusal is final: raised at once, no wait."""
        waits: list[float] = []
        client = NodeClient(served.urls["de.lka-berlin"], TOKEN, sleep=waits.append)
        with pytest.raises(NodeError) as caught:
            client.send(request_draft(body={"nonsense": True}))
        assert caught.value.status == 422
        assert waits == []

    def test_unreachable_node_is_retried_then_raised(self) -> None:
        """Nothing listening: every attempt is made, with growing waits, then node_unreachable."""
        waits: list[float] = []
        client = NodeClient("http://127.0.0.1:9", TOKEN, timeout=2, sleep=waits.append)
        with pytest.raises(NodeError) as caught:
            client.send(request_draft())
        assert caught.value.reason == "node_unreachable"
        assert waits == [Retries().delay(n) for n in (1, 2, 3)]
        assert waits == sorted(waits)


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None
