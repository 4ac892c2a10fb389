"""The node API's edge: undecodable input, oversized and slow requests, unexpected faults.

Requests that an HTTP client library would refuse to send (raw bytes in headers, a false
Content-Length) go through a raw socket to a real server on a loopback port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from broker.node.api import create_app
from broker.node.api_parsing import MAX_BODY
from broker.node.service import Node
from broker.pki.dev import DevFederation

from .node_world import World, request_draft, world_at

TOKEN = "t" * 32
DE, NL = "de.lka-berlin", "nl.politie"


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def draft_json() -> dict[str, Any]:
    draft = request_draft()
    return {
        "to": list(draft.to),
        "type": draft.type,
        "purpose": draft.purpose,
        "handling": draft.handling,
        "legal_basis": draft.legal_basis,
        "body": draft.body,
        "due": draft.due,
    }


class Raw:
    """Raw HTTP/1.1 requests to a served app."""

    def __init__(self, port: int) -> None:
        self.port = port

    def exchange(self, head: bytes, body: bytes = b"", *, timeout: float = 10.0) -> bytes:
        """Send ``head`` (request line + headers, without the blank line) and ``body``; read
        until the server closes the connection."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(
                head + f"\r\nAuthorization: Bearer {TOKEN}\r\nHost: x\r\n\r\n".encode() + body
            )
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    async def send(
        self, head: bytes, body: bytes = b"", *, timeout: float = 10.0
    ) -> tuple[int, dict[str, str], Any]:
        data = await asyncio.to_thread(self.exchange, head, body, timeout=timeout)
        return parse(data)


def parse(data: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body) if body else None


Scenario = Callable[[World, Raw, Raw], Awaitable[None]]


def serve(world: World, scenario: Scenario, *, body_timeout: float = 10.0) -> None:
    """Serve de.lka-berlin and nl.politie on loopback ports and run ``scenario``."""
    de, nl = world.node(DE), world.node(NL)

    def context(node: Node) -> Callable[[], Any]:
        @asynccontextmanager
        async def lifecycle() -> AsyncIterator[Node]:
            yield node

        return lifecycle

    async def run() -> None:
        runners = []
        try:
            for node in (de, nl):
                app = create_app(context(node), token=TOKEN, body_timeout=body_timeout)
                runner = web.AppRunner(app)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", 0).start()
                runners.append(runner)
            ports = [r.addresses[0][1] for r in runners]
            await scenario(world, Raw(ports[0]), Raw(ports[1]))
        finally:
            for runner in runners:
                await runner.cleanup()

    asyncio.run(run())


def post(path: str, body: bytes, *extra: bytes) -> tuple[bytes, bytes]:
    head = b"\r\n".join(
        [
            f"POST {path} HTTP/1.1".encode(),
            b"Content-Type: application/json",
            f"Content-Length: {len(body)}".encode(),
            b"Connection: close",
            *extra,
        ]
    )
    return head, body


def get(path: str, *extra: bytes) -> bytes:
    return b"\r\n".join([f"GET {path} HTTP/1.1".encode(), b"Connection: close", *extra])


async def received_id(world: World, de: Raw) -> str:
    """Send one message de -> nl and deliver it; its id."""
    status, _, sent = await de.send(*post("/v1/messages", json.dumps(draft_json()).encode()))
    assert status == 201
    await world.pump()
    return str(sent["message_id"])


def assert_bad_request(status: int, document: Any) -> None:
    assert status == 400
    assert document["error"]["reason"] == "bad_request"
    assert document["error"]["detail"]


class TestUndecodableInput:
    def test_body_that_is_not_utf8_is_400(self, world: World) -> None:
        """A body with bytes that are not UTF-8 is a JSON 400, and nothing is stored."""

        async def scenario(w: World, de: Raw, nl: Raw) -> None:
            body = json.dumps(draft_json()).encode().replace(b'"investigation"', b'"inv\xff"')
            status, _, document = await de.send(*post("/v1/messages", body))
            assert_bad_request(status, document)
            assert w.nodes[DE].store.list_outbox() == []

        serve(world, scenario)

    @pytest.mark.parametrize("key", [None, "case-1"])
    def test_lone_surrogate_escape_is_400(self, world: World, key: str | None) -> None:
        """A lone surrogate escape anywhere in the JSON is a 400 (with or without an
        Idempotency-Key), never a 500, and nothing is stored."""

        async def scenario(w: World, de: Raw, nl: Raw) -> None:
            body = json.dumps(draft_json()).replace('"investigation"', '"x\\ud800"').encode()
            extra = [f"Idempotency-Key: {key}".encode()] if key else []
            status, _, document = await de.send(*post("/v1/messages", body, *extra))
            assert_bad_request(status, document)
            assert "surrogate" in document["error"]["detail"]
            assert w.nodes[DE].store.list_outbox() == []

        serve(world, scenario)

    @pytest.mark.parametrize(
        "actor",
        [b"J\xc3\xa9r\xc3\xb4me", b"j\xffdoe", b"a\tb", b"x" * 129],
        ids=["non-ascii", "not-utf8", "tab", "too-long"],
    )
    def test_actor_outside_its_syntax_is_400(self, world: World, actor: bytes) -> None:
        """X-Actor must be 1-128 printable ASCII characters: anything else is a JSON 400 and
        nothing is sent."""

        async def scenario(w: World, de: Raw, nl: Raw) -> None:
            body = json.dumps(draft_json()).encode()
            status, _, document = await de.send(*post("/v1/messages", body, b"X-Actor: " + actor))
            assert_bad_request(status, document)
            assert "X-Actor" in document["error"]["detail"]
            assert w.bus.submissions == []

        serve(world, scenario)

    def test_actor_with_inner_spaces_is_accepted(self, world: World) -> None:
        """A name with inner spaces and punctuation is a valid actor."""

        async def scenario(w: World, de: Raw, nl: Raw) -> None:
            body = json.dumps(draft_json()).encode()
            status, _, _ = await de.send(*post("/v1/messages", body, b"X-Actor: Jane Doe (ops)"))
            assert status == 201

        serve(world, scenario)

    @pytest.mark.parametrize(
        ("where", "value"),
        [("query", b"%FF%FEcheck"), ("query", b"%ED%A0%80"), ("header", b"check \xff")],
        ids=["query-bad-bytes", "query-encoded-surrogate", "header-bad-bytes"],
    )
    def test_justification_that_is_not_utf8_is_refused(
        self, world: World, where: str, value: bytes
    ) -> None:
        """A justification that is not UTF-8 is a 400: the message is not opened and no
        consultation with replacement characters is stored."""

        async def scenario(w: World, de: Raw, nl: Raw) -> None:
            message_id = await received_id(w, de)
            if where == "query":
                head = get(f"/v1/messages/{message_id}?justification=", b"X-Actor: alice")
                head = head.replace(b"justification= HTTP", b"justification=" + value + b" HTTP")
            else:
                head = get(f"/v1/messages/{message_id}", b"X-Justification: " + value)
            status, _, document = await nl.send(head)
            assert_bad_request(status, document)
            assert w.nodes[NL].store.consultations(message_id) == []
            inbox = w.nodes[NL].store.inbox_message(message_id)
            assert inbox is not None
            assert inbox.read_at is None

        serve(world, scenario)

    def test_utf8_justification_is_stored_exactly(self, world: World) -> None:
        """A percent-encoded UTF-8 justification is stored as the text it encodes."""

        async def scenario(w: World, de: Raw, nl: Raw) -> None:
            message_id = await received_id(w, de)
            head = get(
                f"/v1/messages/{message_id}?justification=Pr%C3%BCfung%20%E2%84%96%207",
                b"X-Actor: alice",
            )
            status, _, document = await nl.send(head)
            assert status == 200
            assert document["message_id"] == message_id
            assert w.nodes[NL].store.consultations(message_id)[0][:2] == (
                "alice",
                "Prüfung № 7",
            )

        serve(world, scenario)


class TestLimitsAndFaults:
    def test_oversized_body_is_413_json(self, world: World) -> None:
        """A body over the limit is a JSON 413 too_large, answered without reading it."""

        async def scenario(w: World, de: Raw, nl: Raw) -> None:
            head = b"\r\n".join(
                [
                    b"POST /v1/messages HTTP/1.1",
                    b"Content-Type: application/json",
                    f"Content-Length: {MAX_BODY + 1}".encode(),
                ]
            )
            started = time.monotonic()
            status, headers, document = await de.send(head, b"{")
            assert status == 413
            assert headers["content-type"].startswith("application/json")
            assert document["error"]["reason"] == "too_large"
            assert time.monotonic() - started < 5

        serve(world, scenario)

    def test_false_content_length_is_answered_and_closed_within_the_timeout(
        self, world: World
    ) -> None:
        """A client that announces more body than it sends gets a JSON 408 and a closed
        connection once the body timeout passes, not a connection held open."""

        async def scenario(w: World, de: Raw, nl: Raw) -> None:
            head = b"\r\n".join(
                [
                    b"POST /v1/messages HTTP/1.1",
                    b"Content-Type: application/json",
                    b"Content-Length: 5000",
                ]
            )
            started = time.monotonic()
            # The socket stays open on our side: only the server can end this exchange.
            status, _, document = await de.send(head, b'{"to": ', timeout=10)
            elapsed = time.monotonic() - started
            assert status == 408
            assert document["error"]["reason"] == "bad_request"
            assert 0.4 <= elapsed < 3.0

        serve(world, scenario, body_timeout=0.5)

    def test_unexpected_exception_is_a_json_500_with_a_log_event(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A fault nobody anticipated answers 500 internal_error as JSON (never aiohttp's text
        page) and logs api_internal_error with the route template."""

        def broken(draft: object) -> dict[str, Any]:
            raise RuntimeError("synthetic fault")

        async def scenario(w: World, de: Raw, nl: Raw) -> None:
            monkeypatch.setattr(w.nodes[DE], "explain", broken)
            with capture_logs() as logs:
                status, headers, document = await de.send(
                    *post("/v1/explain", json.dumps(draft_json()).encode())
                )
            assert status == 500
            assert headers["content-type"].startswith("application/json")
            assert document["error"]["reason"] == "internal_error"
            assert "synthetic" not in document["error"]["detail"]
            event = next(e for e in logs if e["event"] == "api_internal_error")
            assert (event["route"], event["error"]) == ("/v1/explain", "RuntimeError")

        serve(world, scenario)

    def test_casebridge_errors_keep_their_status(self, world: World) -> None:
        """The error middleware leaves the error tree's statuses alone (404, 401)."""

        async def scenario(w: World, de: Raw, nl: Raw) -> None:
            missing = "00000000-0000-4000-8000-999999999999"
            status, _, document = await de.send(get(f"/v1/messages/{missing}"))
            assert (status, document["error"]["reason"]) == (404, "not_found")
            head = b"GET /v1/inbox HTTP/1.1\r\nConnection: close"
            with socket.create_connection(("127.0.0.1", de.port), timeout=5) as sock:
                sock.sendall(head + b"\r\nHost: x\r\n\r\n")
                data = await asyncio.to_thread(sock.recv, 65536)
            status, _, document = parse(data)
            assert (status, document["error"]["reason"]) == (401, "unauthorized")

        serve(world, scenario)


class TestQueryFlags:
    @pytest.mark.parametrize(
        "query",
        [
            "/v1/inbox?unread=null",
            "/v1/inbox?overdue=2",
            "/v1/inbox?unread=",
            "/v1/outbox?pending=maybe",
            "/v1/outbox?evidence=None",
            "/v1/inbox?conversation=null",
        ],
    )
    def test_invalid_flag_value_is_400(self, world: World, query: str) -> None:
        """A boolean query flag with a value that is not true/false/1/0/yes/no, or a
        conversation that is not a UUID, is a 400 (never silently an empty or full list)."""

        async def scenario(w: World, de: Raw, nl: Raw) -> None:
            status, _, document = await de.send(get(query))
            assert_bad_request(status, document)
            name = query.partition("?")[2].partition("=")[0]
            assert name in document["error"]["detail"]

        serve(world, scenario)

    def test_valid_flag_values_filter(self, world: World) -> None:
        """unread=true lists the unread message, unread=0 and an absent flag list it too."""

        async def scenario(w: World, de: Raw, nl: Raw) -> None:
            message_id = await received_id(w, de)
            for query in ("/v1/inbox?unread=true", "/v1/inbox?unread=0", "/v1/inbox"):
                status, _, document = await nl.send(get(query))
                assert status == 200, query
                assert [m["message_id"] for m in document["messages"]] == [message_id]

        serve(world, scenario)
