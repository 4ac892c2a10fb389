"""The node's HTTP API through aiohttp's test client (two in-memory nodes behind it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.node import api
from broker.node.api import create_app
from broker.node.service import Node
from broker.pki.dev import DevFederation

from .node_world import World, example, world_at

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def draft(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "to": ["nl.politie"],
        "type": "request.assistance",
        "purpose": "investigation",
        "handling": "H2",
        "tlp": "AMBER",
        "legal_basis": "Council Framework Decision 2006/960/JHA",
        "body": example("request.assistance"),
        "due": "2026-12-15",
    }
    value.update(overrides)
    return value


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


Scenario = Callable[[World, TestClient[Any, Any], TestClient[Any, Any]], Awaitable[None]]


def serve(world: World, scenario: Scenario) -> None:
    """Run ``scenario`` with API clients for de.lka-berlin and nl.politie."""
    de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

    def context(node: Node) -> Callable[[], Any]:
        @asynccontextmanager
        async def lifecycle() -> AsyncIterator[Node]:
            yield node

        return lifecycle

    async def run() -> None:
        async with (
            TestClient(TestServer(create_app(context(de), token=TOKEN))) as de_client,
            TestClient(TestServer(create_app(context(nl), token=TOKEN))) as nl_client,
        ):
            await scenario(world, de_client, nl_client)

    asyncio.run(run())


class TestSubmit:
    def test_submit_then_inbox_and_evidence(self, world: World) -> None:
        """A submitted draft shows in the recipient's inbox and its evidence at the sender."""

        async def scenario(w: World, de: TestClient[Any, Any], nl: TestClient[Any, Any]) -> None:
            response = await de.post("/v1/messages", json=draft(), headers=AUTH)
            assert response.status == 201
            sent = await response.json()
            await w.pump()
            inbox = await (await nl.get("/v1/inbox", headers=AUTH)).json()
            assert [m["message_id"] for m in inbox["messages"]] == [sent["message_id"]]
            assert "body" not in inbox["messages"][0]
            trail = await (
                await de.get(f"/v1/messages/{sent['message_id']}/evidence", headers=AUTH)
            ).json()
            assert trail["state"] == "acknowledged"
            assert [e["kind"] for e in trail["evidence"]] == ["delivered"]
            outbox = await (await de.get("/v1/outbox", headers=AUTH)).json()
            assert [m["message_id"] for m in outbox["messages"]] == [sent["message_id"]]

        serve(world, scenario)

    def test_idempotency_key_sends_once(self, world: World) -> None:
        """The same Idempotency-Key and request return the first result; another request with
        it is a 409 conflict."""

        async def scenario(w: World, de: TestClient[Any, Any], nl: TestClient[Any, Any]) -> None:
            headers = {**AUTH, "Idempotency-Key": "case-17-req-1"}
            first = await (await de.post("/v1/messages", json=draft(), headers=headers)).json()
            again = await de.post("/v1/messages", json=draft(), headers=headers)
            assert (await again.json())["message_id"] == first["message_id"]
            other = await de.post("/v1/messages", json=draft(due="2026-12-20"), headers=headers)
            assert other.status == 409
            assert (await other.json())["error"]["reason"] == "idempotency_conflict"
            assert len(w.bus.submissions) == 1

        serve(world, scenario)

    def test_schema_error_has_the_error_shape(self, world: World) -> None:
        """An invalid body is a 422 with reason, detail and the schema error paths."""

        async def scenario(w: World, de: TestClient[Any, Any], nl: TestClient[Any, Any]) -> None:
            response = await de.post("/v1/messages", json=draft(body={"x": 1}), headers=AUTH)
            assert response.status == 422
            error = (await response.json())["error"]
            assert error["reason"] == "schema_invalid"
            assert error["detail"]
            assert error["errors"]

        serve(world, scenario)

    def test_malformed_request_and_missing_token(self, world: World) -> None:
        """Bad JSON is a 400, a missing token a 401, both as error JSON; health is public."""

        async def scenario(w: World, de: TestClient[Any, Any], nl: TestClient[Any, Any]) -> None:
            bad = await de.post("/v1/messages", data=b"{", headers=AUTH)
            assert bad.status == 400
            assert (await bad.json())["error"]["reason"] == "bad_request"
            anonymous = await de.get("/v1/inbox")
            assert anonymous.status == 401
            assert (await anonymous.json())["error"]["reason"] == "unauthorized"
            wrong = await de.get("/v1/inbox", headers={"Authorization": "Bearer wrong"})
            assert wrong.status == 401
            assert (await de.get("/healthz")).status == 200
            ready = await de.get("/readyz")
            assert (ready.status, (await ready.json())["status"]) == (200, "ready")

        serve(world, scenario)

    def test_explain_reports_the_decision(self, world: World) -> None:
        """POST /v1/explain returns what pre-flight decides, without sending."""

        async def scenario(w: World, de: TestClient[Any, Any], nl: TestClient[Any, Any]) -> None:
            response = await de.post("/v1/explain", json=draft(), headers=AUTH)
            explained = await response.json()
            assert explained["allowed"] is True
            assert "suspect_identity" in explained["categories"]
            assert w.bus.submissions == []

        serve(world, scenario)


class TestOpen:
    def test_opening_requires_a_justification(self, world: World) -> None:
        """GET of a received message without a justification is a 428; with one it returns
        the body, marks it read and sends `read` evidence."""

        async def scenario(w: World, de: TestClient[Any, Any], nl: TestClient[Any, Any]) -> None:
            sent = await (await de.post("/v1/messages", json=draft(), headers=AUTH)).json()
            await w.pump()
            url = f"/v1/messages/{sent['message_id']}"
            refused = await nl.get(url, headers=AUTH)
            assert refused.status == 428
            assert (await refused.json())["error"]["reason"] == "justification_required"
            opened = await nl.get(
                url, headers={**AUTH, "X-Justification": "case 17", "X-Actor": "jan"}
            )
            message = await opened.json()
            assert message["body"]["case_ref"] == "LKA 42-2026/0117"
            assert message["read_at"] is not None
            await w.pump()
            trail = await (await de.get(f"{url}/evidence", headers=AUTH)).json()
            assert [e["kind"] for e in trail["evidence"]] == ["delivered", "read"]

        serve(world, scenario)

    def test_thread_and_unknown_ids(self, world: World) -> None:
        """A conversation lists sent and received messages; unknown ids are 404 error JSON."""

        async def scenario(w: World, de: TestClient[Any, Any], nl: TestClient[Any, Any]) -> None:
            sent = await (await de.post("/v1/messages", json=draft(), headers=AUTH)).json()
            await w.pump()
            reply = draft(to=[], legal_basis=None, due=None, in_reply_to=sent["message_id"])
            answered = await (await nl.post("/v1/messages", json=reply, headers=AUTH)).json()
            await w.pump()
            thread = await (
                await de.get(f"/v1/threads/{sent['conversation']}", headers=AUTH)
            ).json()
            assert [(m["direction"], m["message_id"]) for m in thread["messages"]] == [
                ("sent", sent["message_id"]),
                ("received", answered["message_id"]),
            ]
            missing = await de.get(
                "/v1/messages/00000000-0000-4000-8000-999999999999", headers=AUTH
            )
            assert missing.status == 404
            assert (await missing.json())["error"]["reason"] == "not_found"

        serve(world, scenario)


def test_thread_order_puts_a_reply_after_its_message_within_one_second() -> None:
    """Times have second resolution: the reply chain, not the random id, breaks the tie."""
    at = "2026-11-28T12:00:00Z"
    items: list[dict[str, Any]] = [
        {"message_id": "f-original", "at": at, "in_reply_to": None},
        {"message_id": "0-reply", "at": at, "in_reply_to": "f-original"},
        {"message_id": "a-reply-to-reply", "at": at, "in_reply_to": "0-reply"},
        {"message_id": "b-earlier", "at": "2026-11-28T11:59:59Z", "in_reply_to": None},
        {"message_id": "c-cycle", "at": at, "in_reply_to": "c-cycle"},
    ]
    assert [i["message_id"] for i in api.thread_order(items)] == [
        "b-earlier",
        "f-original",
        "0-reply",
        "c-cycle",  # a (forged) self-reference ends the walk: depth 1, no endless loop
        "a-reply-to-reply",
    ]
