"""The real NATS edge: mTLS connections, JetStream publish with de-duplication, pull consumers.

:class:`NatsTransport` implements the node's :class:`broker.node.transport.Transport` seam
against a country server (docs/federation.md): submit on ``cb.submit.<agency>`` with
``Nats-Msg-Id``, consume the agency's durable ``node-<agency>`` on ``DELIVER``. Every NATS
failure is translated into ``TransportUnavailable`` here; nothing else in the node sees nats-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError

from broker.federation import subjects
from broker.logs import FaultLog
from broker.node.errors import TransportUnavailable
from broker.node.settings import Settings

_TS: Final = re.compile(
    r"(?P<base>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?P<frac>\.[0-9]+)?Z"
)

log = structlog.get_logger("casebridge.transport")

FETCH_BATCH: Final = 64
FETCH_TIMEOUT: Final = 1.0
PUBLISH_TIMEOUT: Final = 5.0
MSG_ID: Final = "Nats-Msg-Id"


def tls_context(
    *, ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext:
    """Client mTLS context trusting ``ca_file`` (the country CA) as the anchor."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The country CA is the trust anchor even though it chains to the root (see certs/README).
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file))
    return context


class _NatsTlsEofFilter(logging.Filter):
    """Drops asyncio's "returning true from eof_received() has no effect when using ssl".

    nats-py's TLS transport never tells its stream protocol that it runs over TLS, so every
    orderly close of a TLS connection logs this warning (nats-io/nats.py#574); it is harmless
    and drowned real warnings in the demo and benchmark output. Only this message is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


_EOF_FILTER: Final = _NatsTlsEofFilter()


def quiet_tls_eof_warning() -> None:
    """Install the filter on asyncio's logger (idempotent)."""
    asyncio_log = logging.getLogger("asyncio")
    if _EOF_FILTER not in asyncio_log.filters:
        asyncio_log.addFilter(_EOF_FILTER)


async def connect(
    url: str,
    *,
    tls: ssl.SSLContext,
    inbox_prefix: str,
    name: str,
    **options: Any,
) -> NatsClient:
    """Connect with reconnects forever (a country server restart must not end the process)."""
    quiet_tls_eof_warning()

    async def _quiet(_exc: Exception) -> None:
        # Connection errors are visible through ``is_connected`` / readiness; no log spam.
        return None

    try:
        return await nats.connect(
            # A clustered country: several comma-separated URLs (docs/federation.md).
            servers=url.split(","),
            tls=tls,
            inbox_prefix=inbox_prefix,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            error_cb=_quiet,
            allow_reconnect=True,
            **options,
        )
    except (NatsError, OSError, TimeoutError) as exc:
        raise TransportUnavailable(f"cannot connect to {url}: {exc}") from exc


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
        try:
            await self.msg.ack()
        except (NatsError, JetStreamError) as exc:
            raise TransportUnavailable(f"ack failed: {exc}") from exc

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
                )
                self._js = self._nc.jetstream()
            return self._js

    async def submit(
        self, subject: str, data: bytes, msg_id: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        js = await self._client()
        try:
            await js.publish(
                subject,
                data,
                timeout=PUBLISH_TIMEOUT,
                headers={**(headers or {}), MSG_ID: msg_id},
            )
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise TransportUnavailable(f"publish on {subject} not acknowledged: {exc}") from exc

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
        try:
            sub = await js.pull_subscribe_bind(durable=durable, stream=subjects.DELIVER_STREAM)
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise TransportUnavailable(f"cannot bind to {durable}: {exc}") from exc
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
