"""Case systems on a real federation (issue 15): change feed, signed webhooks, API clients.

DE police (``de.lka-berlin``) sends bulletins to UA police (``ua.npu``) across both border
gateways; UA's node feeds a case system: a webhook receiver (a small aiohttp server in the
test, verifying every signature) and a feed reader resuming from its cursor.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import web

from broker.sdk import NodeClient, NodeError, WebhookVerificationError, verify_webhook
from tests.integration.e2e_helpers import Running, bulletin, wait_until

pytestmark = pytest.mark.integration

LKA: Final = "de.lka-berlin"
NPU: Final = "ua.npu"
DELIVERY: Final = 60.0
# Fast retries for the tests (the defaults back off up to 10 minutes).
FAST_WEBHOOKS: Final = {"backoff_base_seconds": 0.2, "backoff_max_seconds": 2.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Receiver:
    """A case system's webhook endpoint on its own thread: verifies each delivery with the
    subscription's secret, de-duplicates by ``webhook-id``, answers ``plan`` statuses first
    (500, 302...), then 200. Can be stopped and started again on the same port."""

    port: int
    secret: str = ""
    plan: list[int] = field(default_factory=list)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # webhook-id -> event
    forged: int = 0
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            self.attempts += 1
            if self.plan:
                status = self.plan.pop(0)
                if 300 <= status < 400:
                    raise web.HTTPFound(location=f"http://127.0.0.1:{self.port}/moved")
                return web.Response(status=status)
            try:
                event = verify_webhook(self.secret, body, request.headers)
            except WebhookVerificationError:
                self.forged += 1
                return web.Response(status=400)
            self.events.setdefault(request.headers["webhook-id"], dict(event))
        return web.Response(status=204)

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/hook", self._handle)
            app.router.add_post("/moved", self._handle)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(timeout=10)

    def stop(self) -> None:
        if self._loop is None or self._runner is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._runner = self._thread = None

    def message_ids(self) -> list[str]:
        with self.lock:
            return [str(e["message_id"]) for e in self.events.values()]


@pytest.fixture(scope="module")
def running(nats_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """DE police and UA police nodes with both border gateways; UA retries webhooks fast."""
    fed = Running.start(
        tmp_path_factory.mktemp("integrations") / "fed",
        nodes=[LKA, NPU],
        settings={NPU: {"webhooks": FAST_WEBHOOKS}},
    )
    try:
        yield fed
    finally:
        for client in fed.clients.values():
            client.close()  # kept-alive connections of this module's long-lived clients
        fed.close()


def send_bulletins(fed: Running, count: int) -> list[str]:
    lka = fed.client(LKA)
    return [str(lka.send(bulletin([NPU]))["message_id"]) for _ in range(count)]


def received(fed: Running, ids: list[str]) -> None:
    wait_until(
        lambda: set(ids) <= set(fed.inbox_ids(NPU)), DELIVERY, what="bulletins received by UA"
    )


def audit_refusals(fed: Running) -> list[tuple[str, str]]:
    con = sqlite3.connect(f"file:{fed.store_path(NPU)}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute(
            "SELECT actor, detail FROM audit WHERE operation = 'refusal' ORDER BY seq"
        ).fetchall()
    finally:
        con.close()
    return [(str(a), str(d)) for a, d in rows]


def test_feed_resumed_from_a_cursor_returns_every_event_once_in_order(running: Running) -> None:
    """A reader that stops mid-way and resumes from its cursor (also across a kill -9 and
    restart of the node) gets every event exactly once, numbered without a gap."""
    npu = running.client(NPU)
    start = npu.events()["last"]
    first = send_bulletins(running, 6)
    received(running, first)
    seen: list[dict[str, Any]] = []
    page = npu.events(after=start, limit=4)
    seen += page["events"]
    cursor = page["next"]
    running.fed.stop(f"node-{NPU}", kill=True)
    second = send_bulletins(running, 4)  # wait in UA's stream while the node is down
    running.restart(f"node-{NPU}", country="UA")
    received(running, second)
    while True:
        page = npu.events(after=cursor, limit=3)
        if not page["events"]:
            break
        seen += page["events"]
        cursor = page["next"]
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(start + 1, start + 1 + len(seqs)))
    got = [e["message_id"] for e in seen if e["type"] == "message.received"]
    assert sorted(got) == sorted(first + second)
    assert len(got) == len(set(got))


def test_webhook_endpoint_down_500_and_redirect_are_retried(running: Running) -> None:
    """Deliveries to an endpoint that is down, then answers 500 and a redirect, are retried
    until each event arrives signed; the redirect is never followed and nothing is lost."""
    npu = running.client(NPU)
    receiver = Receiver(port=free_port(), plan=[500, 302, 500, 302])
    created = npu.add_webhook(receiver.url, system="CMS UA", event_types=["message.received"])
    receiver.secret = created["secret"]
    ids = send_bulletins(running, 5)
    received(running, ids)
    time.sleep(1.0)  # the endpoint is down: the first attempts fail to connect
    receiver.start()
    try:
        wait_until(
            lambda: set(ids) <= set(receiver.message_ids()), DELIVERY, what="webhooks delivered"
        )
    finally:
        receiver.stop()
    assert receiver.forged == 0
    assert sorted(receiver.message_ids()) == sorted(ids)
    (sub,) = [s for s in npu.webhooks() if s["subscription_id"] == created["subscription_id"]]
    assert sub["deliveries"]["failed"] == 0
    npu.remove_webhook(created["subscription_id"])


def test_out_of_scope_and_revoked_clients_are_refused_and_audited(running: Running) -> None:
    """A feed-only client gets 403 on the inbox, a revoked one 401; both are audited, and a
    case system's body fetch sends no read evidence."""
    npu = running.client(NPU)
    base = npu.base_url
    before = len(audit_refusals(running))
    bi = npu.add_client("bi", system="BI", purpose="stats", scopes=["events"])
    cms_token = npu.add_client("cms", system="CMS UA", purpose="import", scopes=["read"])["token"]
    with NodeClient(base, bi["token"]) as feed, NodeClient(base, cms_token) as cms:
        assert feed.events(limit=1)["events"] is not None
        with pytest.raises(NodeError) as forbidden:
            feed.inbox()
        assert forbidden.value.status == 403
        (message_id,) = send_bulletins(running, 1)
        received(running, [message_id])
        assert cms.show(message_id)["body"]
        npu.revoke_client("cms")
        with pytest.raises(NodeError) as revoked:
            cms.inbox()
        assert revoked.value.status == 401
    refusals = audit_refusals(running)[before:]
    assert [a for a, _ in refusals] == ["client:bi", f"secret:{cms_token.split('_')[1]}"]
    assert "client cms is revoked" in refusals[1][1]
    kinds = [e["kind"] for e in running.client(LKA).evidence(message_id)["evidence"]]
    assert "read" not in kinds


@pytest.mark.slow
def test_receiver_stopped_for_30_s_gets_every_event_once(running: Running) -> None:
    """A webhook receiver stopped for 30 s in the middle of a run gets every
    message.received event once per message id, each with a valid signature."""
    npu = running.client(NPU)
    receiver = Receiver(port=free_port())
    created = npu.add_webhook(receiver.url, system="CMS UA", event_types=["message.received"])
    receiver.secret = created["secret"]
    receiver.start()
    ids = send_bulletins(running, 10)
    wait_until(lambda: len(receiver.message_ids()) >= 5, DELIVERY, what="first deliveries")
    receiver.stop()
    stopped = time.monotonic()
    ids += send_bulletins(running, 10)
    received(running, ids)
    time.sleep(max(0.0, 30.0 - (time.monotonic() - stopped)))
    receiver.start()
    ids += send_bulletins(running, 10)
    try:
        wait_until(lambda: set(ids) <= set(receiver.message_ids()), DELIVERY, what="all delivered")
    finally:
        receiver.stop()
    got = receiver.message_ids()
    assert sorted(got) == sorted(ids)  # once per id: one webhook-id per message
    assert receiver.forged == 0
    npu.remove_webhook(created["subscription_id"])
