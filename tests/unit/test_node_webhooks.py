"""Webhook delivery: a real aiohttp receiver on loopback, the node store, the delivery loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from broker.errors import ConfigError
from broker.node import webhooks
from broker.node.errors import BadRequest, NotFound
from broker.node.store import Store
from broker.node.webhooks import Deliverer, WebhookSettings

FAST = WebhookSettings(backoff_base_seconds=0.02, backoff_max_seconds=0.1, max_attempts=30)


@dataclass
class Receiver:
    """A case system's endpoint: answers with ``status()`` and keeps what it was sent."""

    status: Callable[[], int] = lambda: 200
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""
    followed: int = 0  # requests that came through a redirect

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.path.endswith("elsewhere"):
            self.followed += 1
        code = self.status()
        if code == 200:
            self.got.append((dict(request.headers), body))
        if 300 <= code < 400:
            raise web.HTTPFound(location=self.url + "elsewhere")
        return web.Response(status=code)


@contextlib.asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    app.router.add_post("/hookelsewhere", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield receiver.url
    finally:
        await runner.cleanup()


def mark(store: Store, n: int, *, start: int = 0) -> None:
    """``n`` changes that each make an event (a correction mark applied)."""
    with store.transaction() as db:
        for i in range(start, start + n):
            db.execute(
                "INSERT INTO message_marks (message_id, mark, by_message_id, reason, at) "
                "VALUES (?, 'corrected', ?, 'typo', '2026-11-28T12:00:00Z')",
                (f"m{i}", f"c{i}"),
            )


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def verified_seqs(secret: str, got: list[tuple[dict[str, str], bytes]]) -> list[int]:
    hook = Webhook(secret)
    seqs = []
    for headers, body in got:
        document = hook.verify(body, headers)
        assert headers["webhook-id"].endswith(f"_{document['data']['seq']}")
        seqs.append(int(document["data"]["seq"]))
    return seqs


NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


class TestDelivery:
    def test_failures_and_redirects_are_retried_until_delivered(self, tmp_path: Path) -> None:
        """500s, a redirect and a refused connection are retried; every event arrives signed,
        redirects never followed, nothing lost."""
        answers = iter([500, 302, 500, 503])
        receiver = Receiver(status=lambda: next(answers, 200))

        async def run() -> None:
            with Store(tmp_path / "s.sqlite") as store:
                async with serving(receiver) as url:
                    sub = webhooks.add(
                        store, system="cms", url=url, event_types=[], after=None, now=NOW
                    )
                    mark(store, 20)
                    task = asyncio.create_task(Deliverer(store, FAST).run())
                    await until(lambda: len({h["webhook-id"] for h, _ in receiver.got}) == 20)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                assert sorted(set(verified_seqs(sub["secret"], receiver.got))) == list(range(1, 21))
                assert receiver.followed == 0
                listed = store.list_subscriptions()[0]["deliveries"]
                assert listed["failed"] == 0

        asyncio.run(run())

    def test_parked_after_max_attempts_then_replayed(self, tmp_path: Path) -> None:
        """An endpoint that always fails parks deliveries as failed (visible); a replay after
        it recovers delivers them with the same webhook-id."""
        state = {"status": 500}
        receiver = Receiver(status=lambda: state["status"])
        settings = WebhookSettings(
            backoff_base_seconds=0.01, backoff_max_seconds=0.02, max_attempts=3
        )

        async def run() -> None:
            with Store(tmp_path / "s.sqlite") as store:
                async with serving(receiver) as url:
                    sub = webhooks.add(
                        store,
                        system="cms",
                        url=url,
                        event_types=["message.withdrawn"],
                        after=None,
                        now=NOW,
                    )
                    mark(store, 2)  # corrections: filtered out
                    with store.transaction() as db:
                        db.execute(
                            "INSERT INTO message_marks (message_id, mark, by_message_id, reason,"
                            " at) VALUES ('w', 'withdrawn', 'x', 'r', '2026-11-28T12:00:00Z')"
                        )
                    task = asyncio.create_task(Deliverer(store, settings).run())
                    key = sub["subscription_id"]
                    await until(lambda: store.list_subscriptions()[0]["deliveries"]["failed"] == 1)
                    (parked,) = store.list_deliveries(key, state="failed", limit=10)
                    assert parked["attempts"] == 3
                    assert parked["last_error"] == "HTTP 500"
                    state["status"] = 200
                    assert webhooks.replay(store, key, after=None, now=NOW) == 1
                    await until(lambda: len(receiver.got) == 1)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                assert verified_seqs(sub["secret"], receiver.got) == [3]

        asyncio.run(run())

    def test_queue_survives_a_restart(self, tmp_path: Path) -> None:
        """Deliveries queued before a stop are delivered by the next loop on the same store."""
        state = {"status": 500}
        receiver = Receiver(status=lambda: state["status"])

        async def run() -> None:
            path = tmp_path / "s.sqlite"
            async with serving(receiver) as url:
                with Store(path) as store:
                    sub = webhooks.add(
                        store, system="cms", url=url, event_types=[], after=None, now=NOW
                    )
                    mark(store, 5)
                    task = asyncio.create_task(Deliverer(store, FAST).run())
                    await until(lambda: store.list_subscriptions()[0]["deliveries"]["pending"] == 5)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                state["status"] = 200
                with Store(path) as store:
                    task = asyncio.create_task(Deliverer(store, FAST).run())
                    await until(lambda: len(receiver.got) >= 5)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            assert sorted(set(verified_seqs(sub["secret"], receiver.got))) == [1, 2, 3, 4, 5]

        asyncio.run(run())


class TestSigning:
    def test_forged_or_stale_signature_fails_verification(self) -> None:
        """The Standard Webhooks headers verify; another secret or an altered body do not."""
        secret = webhooks.new_secret()
        body = json.dumps({"type": "message.received"}).encode()
        headers = webhooks.sign(secret, msg_id="evt_x_1", timestamp=datetime.now(UTC), body=body)
        assert Webhook(secret).verify(body, headers) == {"type": "message.received"}
        with pytest.raises(WebhookVerificationError):
            Webhook(webhooks.new_secret()).verify(body, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(body + b" ", headers)

    def test_backoff_grows_with_jitter_and_caps(self) -> None:
        """Retry delays double per attempt up to the cap, scaled by the random share."""
        settings = WebhookSettings(backoff_base_seconds=1.0, backoff_max_seconds=60.0)
        assert settings.delay(1, rand=lambda: 1.0) == 1.0
        assert settings.delay(4, rand=lambda: 1.0) == 8.0
        assert settings.delay(30, rand=lambda: 1.0) == 60.0
        assert settings.delay(4, rand=lambda: 0.5) == 4.0


class TestSubscriptions:
    def test_bad_subscriptions_are_refused(self, tmp_path: Path) -> None:
        """Plain http off loopback, credentials in the URL, unknown types: 400; unknown id: 404."""
        with Store(tmp_path / "s.sqlite") as store:
            for url, types in (
                ("http://cms.example/hook", []),
                ("https://user:pw@cms.example/hook", []),
                ("ftp://cms.example/hook", []),
                ("https://cms.example/hook", ["message.eaten"]),
            ):
                with pytest.raises(BadRequest):
                    webhooks.add(
                        store, system="cms", url=url, event_types=types, after=None, now=NOW
                    )
            with pytest.raises(NotFound):
                webhooks.remove(store, "whk_nothing")
            with pytest.raises(NotFound):
                webhooks.replay(store, "whk_nothing", after=None, now=NOW)

    def test_settings_are_checked(self) -> None:
        """Webhook settings outside their bounds or unknown members are configuration errors."""
        assert WebhookSettings.from_json({"max_attempts": 5}).max_attempts == 5
        bad: tuple[object, ...] = (
            {"max_attempts": 0},
            {"retries": 3},
            {"timeout_seconds": "1"},
            [],
        )
        for raw in bad:
            with pytest.raises(ConfigError):
                WebhookSettings.from_json(raw)


class TestRetention:
    def test_purge_keeps_what_deliveries_need(self, tmp_path: Path) -> None:
        """Old events are purged except those a pending delivery needs; old delivered
        records go with them."""
        with Store(tmp_path / "s.sqlite") as store:
            sub = webhooks.add(
                store,
                system="cms",
                url="https://cms.example/h",
                event_types=[],
                after=None,
                now=NOW,
            )
            mark(store, 3)
            store.fan_out(limit=10, now=0.0, at="2026-11-28T12:00:00Z")
            (first, *_rest) = sorted(
                d["id"] for d in store.list_deliveries(sub["subscription_id"], state=None, limit=9)
            )
            store.record_deliveries([(first, None, None)], at="2026-11-28T12:00:00Z")
            dropped = store.purge_events(before="2027-01-01T00:00:00Z")
            assert dropped == 1  # event 1 (delivered); 2 and 3 are still pending
            assert [e.seq for e in store.events_after(0, limit=10)] == [2, 3]
            remaining = store.list_deliveries(sub["subscription_id"], state=None, limit=9)
            assert sorted(d["seq"] for d in remaining) == [2, 3]


class TestMetrics:
    def test_outcomes_queue_gauges_and_lag_are_measured(self, tmp_path: Path) -> None:
        """Attempts are counted by outcome (retried, parked, delivered), the queue's pending
        and parked deliveries are gauges at scrape time, and the lag runs from the change."""
        from datetime import timedelta

        from prometheus_client import CollectorRegistry

        from broker.metrics import NodeMetrics

        state = {"status": 500}
        receiver = Receiver(status=lambda: state["status"])
        settings = WebhookSettings(
            backoff_base_seconds=0.01, backoff_max_seconds=0.02, max_attempts=2
        )
        registry = CollectorRegistry()
        metrics = NodeMetrics(registry, country="NL")

        def sample(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        async def run() -> None:
            with Store(tmp_path / "s.sqlite") as store:
                registry.register(webhooks.WebhookCollector(store))
                async with serving(receiver) as url:
                    sub = webhooks.add(
                        store, system="cms", url=url, event_types=[], after=None, now=NOW
                    )
                    mark(store, 1)  # its change is at NOW
                    deliverer = Deliverer(
                        store, settings, clock=lambda: NOW + timedelta(seconds=2), metrics=metrics
                    )
                    task = asyncio.create_task(deliverer.run())
                    await until(lambda: sample("casebridge_webhook_deliveries_parked") == 1)
                    assert sample("casebridge_webhook_deliveries_pending") == 0
                    assert sample("casebridge_webhook_deliveries_total", outcome="retried") == 1
                    assert sample("casebridge_webhook_deliveries_total", outcome="parked") == 1
                    state["status"] = 200
                    webhooks.replay(store, sub["subscription_id"], after=None, now=NOW)
                    await until(lambda: len(receiver.got) == 1)
                    await until(lambda: sample("casebridge_webhook_deliveries_parked") == 0)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                assert sample("casebridge_webhook_deliveries_total", outcome="delivered") == 1
                assert sample("casebridge_webhook_delivery_lag_seconds_count") == 1
                assert sample("casebridge_webhook_delivery_lag_seconds_sum") == 2.0

        asyncio.run(run())
