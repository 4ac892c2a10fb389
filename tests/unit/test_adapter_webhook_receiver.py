"""The reference webhook receiver: verification, replay refusal, de-duplication, body fetch.

Webhooks are signed with the node's own signer (:func:`broker.node.webhooks.sign`); bodies
are fetched from a real node API (in-memory federation behind loopback HTTP).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from adapters.common import NodeAccess
from adapters.webhook_receiver import ReceiverSettings, create_app
from broker.errors import ConfigError
from broker.node.webhooks import new_secret, sign
from broker.pki.dev import DevFederation
from broker.sdk import NO_RETRIES, NodeClient

from .node_world import world_at
from .test_sdk import Served, request_draft

POLITIE = "nl.politie"


class Receiver:
    """The receiver app served on a loopback port in the Served world's event loop."""

    def __init__(self, served: Served, tmp: Path, *, node_url: str | None = None) -> None:
        self.secret = new_secret()
        self.database = tmp / "case-system.sqlite"
        url = node_url or served.urls[POLITIE]
        # The case system's own API client (read scope): fetching a body is a transfer to it.
        token = served.client(POLITIE).call(
            "POST",
            "/v1/clients",
            body={
                "client_id": f"case-system-{tmp.name[-8:].lower().replace('_', '-')}",
                "system": "Synthetic case system",
                "purpose": "import received messages into the case file",
                "scopes": ["read"],
            },
        )["token"]
        self.settings = ReceiverSettings(
            secret=self.secret, node=NodeAccess(url=url, token=token), database=self.database
        )
        client = NodeClient(url, token, timeout=5, retries=NO_RETRIES)
        self.served = served
        self.runner = web.AppRunner(create_app(self.settings, client=client))

        async def start() -> int:
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return int(self.runner.addresses[0][1])

        self.port = asyncio.run_coroutine_threadsafe(start(), served.loop).result(timeout=10)

    def post(
        self, body: bytes, headers: dict[str, str], *, path: str = "/casebridge/webhooks"
    ) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def deliver(
        self, event: dict[str, Any], *, secret: str | None = None, at: datetime | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST ``event`` as the node would (its payload shape and signer)."""
        body = json.dumps(
            {"type": event["type"], "timestamp": event["at"], "data": event},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        webhook_id = f"evt_feed1_{event['seq']}"
        headers = sign(
            secret or self.secret,
            msg_id=webhook_id,
            timestamp=at or datetime.now(UTC),
            body=body,
        )
        return self.post(body, headers)

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.database)
        try:
            return list(con.execute(f"SELECT * FROM {table}"))  # noqa: S608 - test's own names
        finally:
            con.close()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.served.loop).result(timeout=10)


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


@pytest.fixture
def receiver(served: Served, tmp_path: Path) -> Iterator[Receiver]:
    """The receiver for nl.politie's node."""
    running = Receiver(served, tmp_path)
    try:
        yield running
    finally:
        running.stop()


def _received(served: Served) -> dict[str, Any]:
    """A message LKA sent and Politie received, as its message.received event."""
    sent = served.client("de.lka-berlin").send(request_draft())
    served.pump()
    return {
        "seq": 7,
        "type": "message.received",
        "at": "2026-11-28T12:00:00Z",
        "message_id": sent["message_id"],
        "data": {"message_id": sent["message_id"], "type": "request.assistance"},
    }


class TestVerifiedDelivery:
    def test_message_received_fetches_and_stores_the_body(
        self, served: Served, receiver: Receiver
    ) -> None:
        """A verified message.received event is stored with the message fetched from the
        node (header and body) in the case system."""
        event = _received(served)
        status, answer = receiver.deliver(event)
        assert (status, answer["duplicate"]) == (200, False)
        (stored,) = receiver.rows("messages")
        assert stored[0] == event["message_id"]
        assert json.loads(stored[5]) == request_draft()["body"]
        assert [r[0] for r in receiver.rows("events")] == ["evt_feed1_7"]

    def test_redelivery_is_deduplicated_by_webhook_id(
        self, served: Served, receiver: Receiver
    ) -> None:
        """The node's retry of an event (same webhook-id, new timestamp and signature) is
        answered 200 and stored once."""
        event = _received(served)
        receiver.deliver(event)
        status, answer = receiver.deliver(event, at=datetime.now(UTC) + timedelta(seconds=5))
        assert (status, answer["duplicate"]) == (200, True)
        assert len(receiver.rows("events")) == 1
        assert len(receiver.rows("messages")) == 1

    def test_node_down_means_not_acknowledged(self, served: Served, tmp_path: Path) -> None:
        """When the body cannot be fetched the receiver answers 503 and stores nothing, so the
        node delivers the event again."""
        event = _received(served)
        down = Receiver(served, tmp_path, node_url="http://127.0.0.1:9")
        try:
            status, _ = down.deliver(event)
            assert status == 503
            assert down.rows("events") == []
        finally:
            down.stop()


class TestRefusals:
    def test_forged_requests_are_refused(self, served: Served, receiver: Receiver) -> None:
        """Another secret, a changed body, missing headers or a garbled signature: 401, and
        nothing is stored or fetched."""
        event = _received(served)
        assert receiver.deliver(event, secret=new_secret())[0] == 401
        body = json.dumps({"type": "message.received", "data": event}).encode()
        headers = sign(
            receiver.secret, msg_id="evt_feed1_7", timestamp=datetime.now(UTC), body=body
        )
        assert receiver.post(body.replace(b"received", b"rejected"), headers)[0] == 401
        assert receiver.post(body, {**headers, "webhook-id": "evt_feed1_8"})[0] == 401
        assert receiver.post(body, {"content-type": "application/json"})[0] == 401
        for garbled in ("v1", "v1,!!!", "v2," + headers["webhook-signature"][3:], ""):
            status, answer = receiver.post(body, {**headers, "webhook-signature": garbled})
            assert status == 401, garbled
            assert answer["error"]["reason"] == "unauthorized"
        assert receiver.rows("events") == []
        assert receiver.rows("messages") == []

    def test_replayed_requests_are_refused(self, served: Served, receiver: Receiver) -> None:
        """A correctly signed request with a timestamp beyond the tolerance (an old capture
        replayed, or one from the future) is refused with 401."""
        event = _received(served)
        old = datetime.now(UTC) - timedelta(minutes=6)
        status, answer = receiver.deliver(event, at=old)
        assert status == 401
        assert "too old" in answer["error"]["detail"]
        assert receiver.deliver(event, at=datetime.now(UTC) + timedelta(minutes=6))[0] == 401
        assert receiver.rows("events") == []


class TestSettings:
    def test_settings_are_checked_at_start(self, tmp_path: Path) -> None:
        """A tolerance beyond five minutes or a secret that is not whsec_ base64 is refused."""
        (tmp_path / "secret").write_text(new_secret())
        path = tmp_path / "receiver.yaml"
        path.write_text("secret_file: secret\ndatabase: cases.sqlite\ntolerance_seconds: 600\n")
        with pytest.raises(ConfigError, match="tolerance_seconds"):
            ReceiverSettings.load(path)
        path.write_text("secret_file: secret\ndatabase: cases.sqlite\n")
        settings = ReceiverSettings.load(path)
        assert settings.database == tmp_path / "cases.sqlite"
        assert settings.secret not in repr(settings)
        (tmp_path / "secret").write_text("whsec_@@@")
        with pytest.raises(ConfigError, match="whsec_"):
            ReceiverSettings.load(path)
