"""Webhooks: the change feed pushed to case systems, signed, queued in SQLite, retried.

What it is for
    A subscription names a case system, an HTTPS (or loopback HTTP) URL, the event types it
    wants (none: all) and gets a secret (``whsec_...``, Standard Webhooks). The delivery loop
    (:class:`Deliverer`, a task of the node runtime, separate from receiving) queues one
    delivery per (subscription, event) in the node's store -- so a restart loses none -- and
    POSTs the event with the Standard Webhooks headers ``webhook-id`` (``evt_<feed>_<seq>``,
    the same on every retry: receivers de-duplicate on it), ``webhook-timestamp`` and
    ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``, the ``standardwebhooks`` package).

Delivery semantics
    At least once. Any 2xx is success; anything else -- a connection failure, a timeout, a 3xx
    (redirects are never followed: a moved endpoint must be re-registered, never guessed), a
    4xx or 5xx -- is a failure, retried with exponential backoff and full jitter, and after
    ``max_attempts`` parked as ``failed``: visible in the list, replayable. Deliveries run
    concurrently (bounded), each with its own timeout, so one slow endpoint never holds up the
    others; nothing here ever runs inside, or waits for, the receipt of a message.

Metrics
    ``casebridge_webhook_deliveries_total{outcome=delivered|retried|parked}`` and
    ``casebridge_webhook_delivery_lag_seconds`` (event commit to 2xx) when the node has
    metrics; :class:`WebhookCollector` adds the scrape-time gauges
    ``casebridge_webhook_deliveries_pending`` and ``casebridge_webhook_deliveries_parked``.

What it must never do
    Put a message body in a payload (events carry ids and header fields), follow a redirect,
    log a secret, or block the receive path.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from standardwebhooks.webhooks import Webhook

from broker.errors import ConfigError
from broker.metrics import NodeMetrics
from broker.node import events
from broker.node.errors import BadRequest, NotFound, StorageUnavailable
from broker.node.model import iso
from broker.node.store import Store, StoredEvent

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a format prefix, not a secret
MAX_URL: Final = 2000
log = structlog.get_logger("casebridge.node.webhooks")


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookSettings:
    """Delivery limits (settings ``webhooks``; docs/node-api.md)."""

    max_attempts: int = 12
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 600.0
    timeout_seconds: float = 10.0
    concurrency: int = 16
    batch: int = 200

    @classmethod
    def from_json(cls, raw: object) -> WebhookSettings:
        """Settings ``webhooks`` (every member optional; docs/node-api.md)."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError("settings: webhooks must be an object")
        limits = {
            "max_attempts": (1, 100),
            "backoff_base_seconds": (0.01, 3600),
            "backoff_max_seconds": (0.01, 86400),
            "timeout_seconds": (0.1, 300),
            "concurrency": (1, 256),
        }
        unknown = sorted(set(raw) - set(limits))
        if unknown:
            raise ConfigError(f"settings: unknown members {unknown} in webhooks")
        values: dict[str, Any] = {}
        for name, (low, high) in limits.items():
            if name not in raw:
                continue
            value = raw[name]
            integral = name in ("max_attempts", "concurrency")
            kinds = (int,) if integral else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
                raise ConfigError(f"settings: webhooks.{name} must be {low}-{high}")
            values[name] = value if integral else float(value)
        return cls(**values)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds before retry number ``attempt`` (1-based): exponential, capped, with full
        jitter (a random share of it), so endpoints coming back are not hit in lockstep."""
        ceiling = min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempt - 1))
        return max(0.05, float(ceiling * rand()))


def new_secret() -> str:
    """A fresh Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def check_url(url: str) -> str:
    """An absolute https URL, or http to a loopback host (a receiver on the same machine)."""
    if len(url) > MAX_URL:
        raise BadRequest(f"url must be at most {MAX_URL} characters")
    parts = urllib.parse.urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise BadRequest("url must be an absolute http(s) URL")
    if parts.scheme == "http" and not loopback:
        raise BadRequest("url must use https (plain http only to a loopback address)")
    if parts.username or parts.password:
        raise BadRequest("url must not carry credentials")
    return url


def webhook_id(feed: str, seq: int) -> str:
    """The Standard Webhooks ``webhook-id`` of an event: the same on every retry."""
    return f"evt_{feed}_{seq}"


def payload(event: StoredEvent) -> bytes:
    """The body POSTed for an event (Standard Webhooks shape: type, timestamp, data)."""
    document = {
        "type": event.type,
        "timestamp": event.at,
        "data": events.event_json(event),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sign(secret: str, *, msg_id: str, timestamp: datetime, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``."""
    signature = Webhook(secret).sign(msg_id, timestamp, body.decode("utf-8"))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def add(
    store: Store,
    *,
    system: str,
    url: str,
    event_types: Sequence[str],
    after: int | None,
    now: datetime,
) -> dict[str, Any]:
    """Subscribe ``url`` (blocking). The answer holds the secret: shown this once."""
    if not system.strip() or len(system) > 200 or not system.isprintable():
        raise BadRequest("system must be 1-200 printable characters")
    check_url(url)
    types = events.check_types(event_types)
    subscription_id = "whk_" + secrets.token_hex(8)
    secret = new_secret()
    cursor = store.add_subscription(
        subscription_id=subscription_id,
        system=system,
        url=url,
        secret=secret,
        event_types=types,
        after=after,
        now=iso(now),
    )
    return {
        "subscription_id": subscription_id,
        "system": system,
        "url": url,
        "event_types": list(types),
        "cursor": cursor,
        "secret": secret,
    }


def remove(store: Store, subscription_id: str) -> None:
    if not store.remove_subscription(subscription_id):
        raise NotFound(f"no webhook subscription {subscription_id}")


def replay(store: Store, subscription_id: str, *, after: int | None, now: datetime) -> int:
    """Queue again the failed deliveries (or every retained event after ``after``)."""
    count = store.replay_deliveries(subscription_id, after=after, now=time.time(), at=iso(now))
    if count is None:
        raise NotFound(f"no webhook subscription {subscription_id}")
    return count


Post = Callable[[str, bytes, dict[str, str]], Awaitable[int]]


class Deliverer:
    """The delivery loop: fan events out to subscriptions, POST what is due, record outcomes.

    ``clock``: wall time (signatures, records); ``post``: an HTTP POST returning the status
    (tests may pass another sender; the default uses aiohttp without following redirects)."""

    def __init__(
        self,
        store: Store,
        settings: WebhookSettings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        post: Post | None = None,
        retention_days: int = events.DEFAULT_RETENTION_DAYS,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        self._post = post
        self._retention_days = retention_days
        self._signal = events.EventSignal()
        self._in_flight: set[int] = set()
        self._outcomes: list[tuple[int, str | None, float | None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._feed = ""
        self.delivered = 0  # since start (metrics, the benchmark)
        self.failures = 0

    async def run(self) -> None:
        """Forever: deliver, then sleep until something changes or a retry falls due."""
        self._signal.attach(self._store)
        self._feed = (await asyncio.to_thread(self._store.event_bounds))[0]
        purged_at = 0.0
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_seconds)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                post = self._post or _aiohttp_post(session)
                while True:
                    idle = 0.0
                    try:
                        idle = await self.step(post)
                    except StorageUnavailable as exc:
                        # Nothing lost: what was not recorded is due again. Back off.
                        log.warning("webhook_store_unavailable", error=exc.detail)
                        await asyncio.sleep(1.0)
                    if time.monotonic() - purged_at > 3600:
                        purged_at = time.monotonic()
                        await asyncio.to_thread(
                            events.purge,
                            self._store,
                            now=self._clock(),
                            retention_days=self._retention_days,
                        )
                    await self._signal.wait(idle)
        finally:
            self._signal.detach()
            for task in self._tasks:
                task.cancel()

    async def step(self, post: Post) -> float:
        """One round: record finished attempts, fan out new events, start what is due. The
        store work of a round is one worker-thread hop (the loop wakes after every commit of
        the node: a hop per query would cost more than the queries). Returns how long to idle
        at most before the next round."""
        done, self._outcomes = self._outcomes, []
        finished = {d for d, _, _ in done}
        # What stays in flight once this round's outcomes are recorded.
        skip = tuple(self._in_flight - finished)
        try:
            due, next_at = await asyncio.to_thread(self._store_round, done, skip)
        finally:
            # Only now (recorded, or not: then due again) may they be picked up again.
            self._in_flight.difference_update(finished)
        for item in due:
            self._in_flight.add(item["delivery_id"])
            task = asyncio.get_running_loop().create_task(self._deliver(post, item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._outcomes:
            return 0.0
        if next_at is None:
            return 5.0
        return min(5.0, max(0.0, next_at - time.time()))

    def _store_round(
        self, done: Sequence[tuple[int, str | None, float | None]], skip: tuple[int, ...]
    ) -> tuple[list[dict[str, Any]], float | None]:
        """On the worker thread: one commit for the finished attempts and the new events'
        deliveries, then what is due now (room permitting) and when the next one falls due."""
        self._store.fan_out(
            limit=self._settings.batch, now=time.time(), at=iso(self._clock()), outcomes=done
        )
        room = self._settings.concurrency - len(skip)
        due = self._store.due_deliveries(now=time.time(), limit=room, skip=skip) if room > 0 else []
        return due, self._store.next_delivery_at()

    async def _deliver(self, post: Post, item: dict[str, Any]) -> None:
        event: StoredEvent = item["event"]
        body = payload(event)
        headers = sign(
            item["secret"],
            msg_id=webhook_id(self._feed, event.seq),
            timestamp=self._clock(),
            body=body,
        )
        error: str | None = None
        try:
            status = await post(item["url"], body, headers)
            if not 200 <= status < 300:
                error = f"HTTP {status}" + (" (redirects are not followed)" if status < 400 else "")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        attempt = int(item["attempts"]) + 1
        retry_at: float | None = None
        if error is None:
            self.delivered += 1
            outcome = "delivered"
        else:
            self.failures += 1
            if attempt < self._settings.max_attempts:
                retry_at = time.time() + self._settings.delay(attempt)
            outcome = "parked" if retry_at is None else "retried"
        if self._metrics is not None:
            self._metrics.webhook_deliveries.labels(outcome=outcome).inc()
            if error is None:
                self._metrics.webhook_lag.observe(max(0.0, _lag(event.at, self._clock())))
        if error is not None:
            log.info(
                "webhook_failed",
                subscription=item["subscription_id"],
                seq=event.seq,
                attempt=attempt,
                error=error,
                parked=retry_at is None,
            )
        self._outcomes.append((int(item["delivery_id"]), error, retry_at))
        self._signal.wake()


def _lag(at: str, now: datetime) -> float:
    """Seconds from an event's time (RFC 3339) to ``now``; 0 if the time is unreadable."""
    try:
        return (now - datetime.fromisoformat(at.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return 0.0


class WebhookCollector(Collector):
    """Scrape-time gauges of the delivery queue: ``casebridge_webhook_deliveries_pending``
    (queued, not yet delivered) and ``casebridge_webhook_deliveries_parked`` (failed after
    the last attempt, waiting for a replay)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        counts = dict(
            self._store.query(
                lambda db: db.execute(
                    "SELECT state, COUNT(*) FROM webhook_deliveries "
                    "WHERE state != 'delivered' GROUP BY state"
                ).fetchall()
            )
        )
        for state, name, text in (
            ("pending", "pending", "Webhook deliveries queued and not yet delivered."),
            ("failed", "parked", "Webhook deliveries parked as failed after the last attempt."),
        ):
            gauge = GaugeMetricFamily(f"casebridge_webhook_deliveries_{name}", text)
            gauge.add_metric([], int(counts.get(state, 0)))
            yield gauge


def _aiohttp_post(session: aiohttp.ClientSession) -> Post:
    async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            await resp.read()
            return resp.status

    return post
