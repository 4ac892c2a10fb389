"""Connecting to a country's NATS server and translating nats-py's exceptions.

Shared by the node (``broker/node/transport_nats.py``) and the border gateway
(``broker/gateway/runner.py``). Must never decide anything about a message: it only opens
connections and maps exceptions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError
from nats.js.errors import Error as JetStreamError

from broker.errors import TransportError

PUBLISH_TIMEOUT: Final = 5.0
CONNECT_TIMEOUT: Final = 5
RECONNECT_WAIT: Final = 0.5
MSG_ID: Final = "Nats-Msg-Id"
# What nats-py raises when a server is unreachable, a request times out or JetStream refuses.
NATS_ERRORS: Final = (NatsError, JetStreamError, TimeoutError)


@contextmanager
def map_exceptions(
    what: str, *, into: Callable[[str], Exception] = TransportError
) -> Iterator[None]:
    """Turn a nats-py failure inside the block into ``into(f"{what}: {exc}")`` (chained).

    ``into``: the caller's error type (the node's ``TransportUnavailable``, which its API maps
    to 503); the shared :class:`~broker.errors.TransportError` by default."""
    try:
        yield
    except NATS_ERRORS as exc:
        raise into(f"{what}: {exc}") from exc


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
    into: Callable[[str], Exception] = TransportError,
    **options: Any,
) -> NatsClient:
    """Connect with reconnects forever (a country server restart must not end the process).
    An unreachable server raises ``into`` (see :func:`map_exceptions`)."""
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
            reconnect_time_wait=RECONNECT_WAIT,
            connect_timeout=CONNECT_TIMEOUT,
            error_cb=_quiet,
            allow_reconnect=True,
            **options,
        )
    except (*NATS_ERRORS, OSError) as exc:
        raise into(f"cannot connect to {url}: {exc}") from exc


def lean_fetch(sub: JetStreamContext.PullSubscription) -> JetStreamContext.PullSubscription:
    """Make ``sub.fetch`` take the messages already received without a task each.

    nats-py's fetch reads every message of a batch through ``Subscription.next_msg``, which
    starts two tasks, a timer and a ``uuid4()`` per call even when the message is already in
    the subscription's queue (measured against the bundled nats-server: 61 us of client CPU
    per message in a batch of 64, 20 us with this). Here ``next_msg`` hands over a queued
    message at once, with the same bookkeeping nats-py does (pending bytes, ``task_done``);
    when the queue is empty, or the connection closed, nats-py's own ``next_msg`` runs
    (timeouts, cancellation on close and every status message are its, unchanged). Written
    against nats-py 2.16's ``Subscription``; a subscription without that queue is left as it
    is. Returns ``sub``."""
    inner = getattr(sub, "_sub", None)
    queue = getattr(inner, "_pending_queue", None)
    if inner is None or queue is None or not hasattr(inner, "_pending_size"):
        return sub
    original = inner.next_msg

    async def next_msg(timeout: float | None = 1.0) -> Msg:
        if queue.empty() or inner._conn.is_closed:
            waited: Msg = await original(timeout)
            return waited
        msg: Msg = queue.get_nowait()
        inner._pending_size -= len(msg.data)
        queue.task_done()
        return msg

    inner.next_msg = next_msg
    return sub


_NO_RESPONDERS: Final = "503"  # the status a publication to no stream is answered with


class BatchPublisher:
    """Publish a batch to JetStream and wait for all its acks together, on one connection.

    ``js.publish`` waits for each ack on its own: a task (under ``gather``), a timer and an
    ack parsed into a ``PubAck`` object per publication. Here one reply subscription (made
    on first use, under the connection's inbox prefix, which the server permissions allow)
    receives every ack, a publication costs one future, and a batch one timer. The outcome
    of each publication is what ``js.publish`` raises: ``None`` when JetStream stored it (a
    duplicate too), :class:`nats.js.errors.NoStreamResponseError` when no stream takes the
    subject, the :class:`nats.js.errors.APIError` JetStream answered, the error publishing
    raised, or :class:`nats.errors.TimeoutError` when no ack came in time."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix: str | None = None
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._counter = 0

    async def _reply_prefix(self) -> str:
        if self._prefix is None:
            prefix = self._nc.new_inbox() + "."
            await self._nc.subscribe(prefix + "*", cb=self._acked)
            self._prefix = prefix
        return self._prefix

    async def _acked(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix or "") :], None)
        if future is None or future.done():
            return  # late (timed out already) or not ours
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            future.set_exception(NoStreamResponseError())
            return
        try:
            answer = json.loads(msg.data)
            if isinstance(answer, dict) and "error" in answer:
                APIError.from_error(answer["error"])  # raises the matching APIError
        except (APIError, ValueError, TypeError, KeyError) as exc:
            future.set_exception(
                exc if isinstance(exc, APIError) else APIError(description=str(exc))
            )
            return
        future.set_result(None)

    async def publish_all(
        self,
        items: Sequence[tuple[str, bytes, Mapping[str, str]]],
        *,
        timeout: float,
    ) -> list[BaseException | None]:
        """Publish every ``(subject, data, headers)`` in order, then wait at most ``timeout``
        seconds for all the acks; the outcome of each (see the class docstring)."""
        prefix = await self._reply_prefix()
        loop = asyncio.get_running_loop()
        mine: list[tuple[str, asyncio.Future[None]]] = []
        try:
            for subject, data, headers in items:
                self._counter += 1
                token = str(self._counter)
                future: asyncio.Future[None] = loop.create_future()
                self._waiting[token] = future
                mine.append((token, future))
                try:
                    await self._nc.publish(
                        subject, data, reply=prefix + token, headers=dict(headers)
                    )
                except Exception as exc:  # noqa: BLE001 - that publication's outcome
                    self._waiting.pop(token, None)
                    future.set_exception(exc)
            pending = [f for _, f in mine if not f.done()]
            if pending:
                await asyncio.wait(pending, timeout=timeout)
            outcomes: list[BaseException | None] = []
            for _, future in mine:
                if future.done() and not future.cancelled():
                    outcomes.append(future.exception())
                else:
                    outcomes.append(NatsTimeoutError())
            return outcomes
        finally:
            for token, future in mine:
                self._waiting.pop(token, None)
                if not future.done():
                    future.cancel()
