"""The node's NATS transport: JetStream publish with de-duplication, its pull consumers.

:class:`NatsTransport` implements the node's :class:`broker.node.transport.Transport` seam
against a country server (docs/federation.md): submit on ``cb.submit.<agency>`` with
``Nats-Msg-Id``, consume the agency's durables ``node-<agency>`` and ``evidence-<agency>`` on
``DELIVER``. Connections come from the shared edge :mod:`broker.nats`; every NATS failure is
translated into ``TransportUnavailable`` here (:func:`broker.nats.map_exceptions`): nothing
else in the node sees nats-py. Must never decide about a message (that is the node's core).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError

from broker.core import wire as subjects
from broker.logs import FaultLog
from broker.nats import MSG_ID, PUBLISH_TIMEOUT, connect, lean_fetch, map_exceptions, tls_context
from broker.node.errors import TransportUnavailable
from broker.node.settings import Settings

_TS: Final = re.compile(
    r"(?P<base>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?P<frac>\.[0-9]+)?Z"
)

log = structlog.get_logger("casebridge.transport")

FETCH_BATCH: Final = 64
FETCH_TIMEOUT: Final = 5.0


@dataclass(slots=True)
class NatsDelivery:
    """One JetStream message from a pull consumer (implements ``Delivery``)."""

    msg: Msg
    evidence: bool = False

    @property
    def data(self) -> bytes:
        return self.msg.data

    @property
    def headers(self) -> Mapping[str, str]:
        return dict(self.msg.headers or {})

    @property
    def sequence(self) -> int:
        return int(self.msg.metadata.sequence.stream)

    @property
    def attempts(self) -> int:
        return max(1, int(self.msg.metadata.num_delivered or 1))

    async def ack(self) -> None:
        # Not awaited by the server (no round trip per message): the node acks only after its
        # commit, and a lost ack means a redelivery the node recognises by its receipt.
        with map_exceptions("ack failed", into=TransportUnavailable):
            await self.msg.ack()

    async def nak(self, delay: float) -> None:
        with contextlib.suppress(NatsError, JetStreamError):
            await self.msg.nak(delay=delay)

    async def term(self) -> None:
        with contextlib.suppress(NatsError, JetStreamError):
            await self.msg.term()


class NatsTransport:
    """An agency node's connection to its country server."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def _client(self) -> JetStreamContext:
        async with self._lock:
            if self._js is None:
                s = self._settings
                self._nc = await connect(
                    s.nats.url,
                    tls=tls_context(
                        ca_file=s.nats.ca_file, cert_file=s.nats.cert_file, key_file=s.nats.key_file
                    ),
                    inbox_prefix=subjects.inbox_prefix(s.agency),
                    name=f"node {s.agency}",
                    into=TransportUnavailable,
                )
                self._js = self._nc.jetstream()
            return self._js

    async def submit(
        self, subject: str, data: bytes, msg_id: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        js = await self._client()
        with map_exceptions(f"publish on {subject} not acknowledged", into=TransportUnavailable):
            await js.publish(
                subject,
                data,
                timeout=PUBLISH_TIMEOUT,
                headers={**(headers or {}), MSG_ID: msg_id},
            )

    async def deliveries(self, *, evidence: bool = False) -> AsyncIterator[NatsDelivery]:
        async for batch in self.batches(evidence=evidence):
            for delivery in batch:
                yield delivery

    async def batches(self, *, evidence: bool = False) -> AsyncIterator[list[NatsDelivery]]:
        """Batches of whatever is ready, never waiting to fill one: ``fetch(n)`` answers with
        the messages waiting (up to ``n``) at once, and on an idle lane as soon as the first
        one arrives (measured with the bundled nats-server: one message published 0.2 s into
        a ``fetch(32, timeout=1)`` is returned after 0.2 s)."""
        js = await self._client()
        durable = subjects.node_durable(self._settings.agency, evidence=evidence)
        with map_exceptions(f"cannot bind to {durable}", into=TransportUnavailable):
            sub = lean_fetch(
                await js.pull_subscribe_bind(durable=durable, stream=subjects.DELIVER_STREAM)
            )
        faults = FaultLog(log, "fetch", durable=durable)
        while not self._closed:
            try:
                batch = await sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT)
            except TimeoutError:
                continue  # empty fetch raises TimeoutError (DESIGN.md pitfall)
            except (NatsError, JetStreamError) as exc:
                if self._closed:
                    return
                faults.failed(exc)  # retried forever
                await asyncio.sleep(0.5)
                continue
            faults.ok()
            yield [NatsDelivery(msg, evidence=evidence) for msg in batch]

    async def server_time(self) -> datetime | None:
        """The country server's clock: the ``ts`` of a JetStream consumer-info answer on this
        node's own durable (a subject the node may use). None when the server does not say."""
        await self._client()
        assert self._nc is not None  # noqa: S101 - set by _client
        durable = subjects.node_durable(self._settings.agency)
        reply = await self._nc.request(
            f"$JS.API.CONSUMER.INFO.{subjects.DELIVER_STREAM}.{durable}", b"", timeout=5
        )
        stamp = json.loads(reply.data).get("ts")
        if not isinstance(stamp, str):
            return None
        # RFC 3339 with nanoseconds: keep microseconds, as datetime does.
        match = _TS.fullmatch(stamp)
        if match is None:
            return None
        return datetime.fromisoformat(f"{match['base']}{(match['frac'] or '')[:7]}+00:00")

    async def close(self) -> None:
        self._closed = True
        if self._nc is not None:
            # close, not drain: drain waits for the pull subscription's pending queue, which
            # nobody reads once the receiver is cancelled (it hung for drain_timeout, 30 s).
            # An unacked delivery is redelivered and recognised by its receipt.
            with contextlib.suppress(NatsError, JetStreamError):
                await self._nc.close()
            self._nc = None
            self._js = None
