"""The node's seam to the NATS federation, and the in-memory double shipped with it.

A node needs exactly two things from the federation (docs/federation.md): publish its own
sealed messages on ``cb.submit.<agency>`` with ``Nats-Msg-Id`` = message id and learn whether
JetStream acknowledged them, and consume its own two delivery lanes (case messages on
``cb.deliver.<agency>``, evidence on ``cb.deliver.<agency>.evidence``, each with its durable
consumer), acknowledging each message only once it is safely stored.
:class:`Transport` and :class:`Delivery` say precisely that; the real implementation lives in
``broker.node.transport_nats``.

:class:`MemoryBus` / :class:`MemoryTransport` are a **test double**: an in-process bus that hands
every message submitted on ``cb.submit.<a>`` to the delivery queue of each recipient named in
its (unverified) header, on the lane its type calls for. It stands in for the border gateways
but applies **no policy and no verification**; it exists for unit tests and for two in-memory
nodes talking. It must never be used in a deployment.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from broker.core.evidence import is_evidence
from broker.core.peek import unverified_header
from broker.core.wire import audit_subject, submit_subject
from broker.node.errors import TransportUnavailable

MSG_ID_HEADER: Final = "Nats-Msg-Id"
# Subject names are the federation's (docs/federation.md), defined once.


class Delivery(Protocol):
    """One message taken from the node's durable consumer; settle it exactly once."""

    @property
    def data(self) -> bytes:
        """The wire bytes exactly as the gateway forwarded them."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """NATS message headers (``Nats-Msg-Id``, ``traceparent``...). Informational only."""
        ...

    @property
    def sequence(self) -> int:
        """The stream sequence: the same on every redelivery of this stored message, different
        for a new publication of the same bytes. Tells a crash redelivery from a replay."""
        ...

    @property
    def attempts(self) -> int:
        """How many times this stored message has been delivered, this time included (1 on
        the first delivery; JetStream's ``num_delivered``). Bounds the retries of a message
        that keeps failing: the node quarantines it instead of retrying forever."""
        ...

    @property
    def evidence(self) -> bool:
        """The lane it came on: True for the evidence lane, False for case messages."""
        ...

    async def ack(self) -> None:
        """Done: the message is stored (or refused and recorded). It will not come again."""
        ...

    async def nak(self, delay: float) -> None:
        """Not processed: redeliver after ``delay`` seconds."""
        ...

    async def term(self) -> None:
        """Never redeliver (used only for bytes that can never be processed)."""
        ...


class Transport(Protocol):
    """What a node needs from NATS: submit with acknowledgement, and its own deliveries."""

    @property
    def connected(self) -> bool:
        """True while the connection to the country server is up (readiness)."""
        ...

    async def submit(
        self, subject: str, data: bytes, msg_id: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """Publish ``data`` on ``subject`` with ``Nats-Msg-Id: msg_id`` (and ``headers``, e.g.
        ``traceparent``); return once JetStream acknowledged it. Raises
        :class:`~broker.node.errors.TransportUnavailable` otherwise (the caller retries with
        the same bytes and id: the stream de-duplicates)."""
        ...

    def deliveries(self, *, evidence: bool = False) -> AsyncIterator[Delivery]:
        """The deliveries of one lane (case messages, or evidence), in order, until the
        transport is closed. A node consumes both lanes concurrently."""
        ...

    def batches(self, *, evidence: bool = False) -> AsyncIterator[Sequence[Delivery]]:
        """The same deliveries in batches: each batch is whatever is ready now (at least one,
        at most a bound), never held back to fill it. The node settles a batch with one
        commit."""
        ...


# ------------------------------------------------------------------ in-memory double ---


@dataclass(slots=True)
class MemoryDelivery:
    """A delivery from the :class:`MemoryBus`; records how it was settled."""

    data: bytes
    sequence: int
    headers: Mapping[str, str]
    _transport: MemoryTransport
    settled: str | None = None  # "ack", "nak" or "term"
    nak_delays: list[float] = field(default_factory=list)
    evidence: bool = False  # the lane it was delivered on
    attempts: int = 1  # deliveries of this stored message so far, this one included

    async def ack(self) -> None:
        if self._transport.fail_acks > 0:  # the ack could not be sent (server gone)
            self._transport.fail_acks -= 1
            raise TransportUnavailable("ack not delivered")
        if self._transport.die_before_ack > 0:  # the process "died" before the ack went out
            self._transport.die_before_ack -= 1
            return
        self.settled = "ack"
        self._transport._unacked.pop(self.sequence, None)

    async def nak(self, delay: float) -> None:
        self.settled = "nak"
        self.nak_delays.append(delay)
        self._transport._unacked.pop(self.sequence, None)
        self._transport._enqueue(
            self.data,
            self.sequence,
            self.headers,
            evidence=self.evidence,
            attempts=self.attempts + 1,
        )

    async def term(self) -> None:
        self.settled = "term"
        self._transport._unacked.pop(self.sequence, None)


@dataclass(frozen=True, slots=True)
class Submission:
    """One submit attempt seen by the bus (accepted or not)."""

    subject: str
    msg_id: str
    data: bytes
    accepted: bool
    headers: Mapping[str, str] = field(default_factory=dict)


class MemoryBus:
    """The shared in-process "federation": submit subjects in, delivery queues out.

    JetStream's duplicate window is modelled as unlimited (a resubmitted ``msg_id`` is
    acknowledged and not delivered again). ``fail_submits`` / ``lose_acks`` inject faults.
    """

    def __init__(self) -> None:
        self._transports: dict[str, MemoryTransport] = {}
        self._sequence = itertools.count(1)
        self._msg_ids: set[str] = set()
        self.submissions: list[Submission] = []
        self.fail_submits = 0  # next N submits are refused (no ack, nothing stored)
        self.lose_acks = 0  # next N submits are stored but the ack is lost
        self.audit: list[tuple[str, bytes]] = []  # (agency, token) on cb.audit.<agency>

    def attach(self, agency_id: str) -> MemoryTransport:
        """The transport of ``agency_id`` (created on first use, then the same one)."""
        found = self._transports.get(agency_id)
        if found is None:
            found = MemoryTransport(agency_id, self)
            self._transports[agency_id] = found
        return found

    def deliver(
        self,
        agency_id: str,
        data: bytes,
        *,
        msg_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> int:
        """Put ``data`` on ``cb.deliver.<agency_id>`` (or its evidence lane, by the unverified
        header's type) as a gateway would, carrying ``headers`` as gateways carry
        ``traceparent``; return its sequence."""
        sequence = next(self._sequence)
        sent = {**(headers or {}), **({MSG_ID_HEADER: msg_id} if msg_id else {})}
        header = unverified_header(data)
        lane = header is not None and is_evidence(header.type)
        self.attach(agency_id)._enqueue(data, sequence, sent, evidence=lane)
        return sequence

    def _submit(
        self,
        sender: str,
        subject: str,
        data: bytes,
        msg_id: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        extra = dict(headers or {})
        if subject == audit_subject(sender) and not self.fail_submits:
            self.submissions.append(Submission(subject, msg_id, data, accepted=True))
            self.audit.append((sender, data))
            return
        if subject != submit_subject(sender):
            self.submissions.append(Submission(subject, msg_id, data, accepted=False))
            raise TransportUnavailable(f"{sender} may publish only on {submit_subject(sender)}")
        if self.fail_submits > 0:
            self.fail_submits -= 1
            self.submissions.append(Submission(subject, msg_id, data, accepted=False))
            raise TransportUnavailable("no acknowledgement (injected)")
        self.submissions.append(Submission(subject, msg_id, data, accepted=True, headers=extra))
        if msg_id not in self._msg_ids:
            self._msg_ids.add(msg_id)
            header = unverified_header(data)
            for recipient in header.recipients if header is not None else ():
                self.deliver(recipient, data, msg_id=f"{msg_id}:{recipient}", headers=extra)
        if self.lose_acks > 0:
            self.lose_acks -= 1
            raise TransportUnavailable("acknowledgement lost (injected)")


class MemoryTransport:
    """One agency's :class:`Transport` on a :class:`MemoryBus`."""

    def __init__(self, agency_id: str, bus: MemoryBus) -> None:
        self.agency_id = agency_id
        self._bus = bus
        self._queue: deque[MemoryDelivery] = deque()
        self._unacked: dict[int, MemoryDelivery] = {}
        self._wakeups: dict[bool, asyncio.Event] = {}  # per lane (evidence or not)
        self._closed = False
        self.connected = True
        self.die_before_ack = 0  # next N acks are never sent (see crash())
        self.fail_acks = 0  # next N acks raise TransportUnavailable

    def _enqueue(
        self,
        data: bytes,
        sequence: int,
        headers: Mapping[str, str],
        *,
        evidence: bool = False,
        attempts: int = 1,
    ) -> None:
        self._queue.append(
            MemoryDelivery(
                data, sequence, dict(headers), self, evidence=evidence, attempts=attempts
            )
        )
        wakeup = self._wakeups.get(evidence)
        if wakeup is not None:
            wakeup.set()

    async def submit(
        self, subject: str, data: bytes, msg_id: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        if not self.connected:
            raise TransportUnavailable("not connected")
        self._bus._submit(self.agency_id, subject, data, msg_id, headers)

    def take(self, evidence: bool | None = None) -> list[MemoryDelivery]:
        """Every delivery ready now on one lane (None: both), each unacknowledged until
        settled."""

        def wanted(d: MemoryDelivery) -> bool:
            return evidence is None or d.evidence == evidence

        taken = [d for d in self._queue if wanted(d)]
        self._queue = deque(d for d in self._queue if not wanted(d))
        for delivery in taken:
            self._unacked[delivery.sequence] = delivery
        return taken

    def crash(self) -> int:
        """Simulate the consumer dying: every unacknowledged delivery is queued again (same
        sequence, as JetStream redelivers after the ack wait). Returns how many."""
        lost = sorted(self._unacked.values(), key=lambda d: d.sequence)
        self._unacked.clear()
        for delivery in lost:
            self._enqueue(
                delivery.data,
                delivery.sequence,
                delivery.headers,
                evidence=delivery.evidence,
                attempts=delivery.attempts + 1,
            )
        return len(lost)

    def close(self) -> None:
        """End :meth:`deliveries`."""
        self._closed = True
        self.connected = False
        for wakeup in self._wakeups.values():
            wakeup.set()

    async def deliveries(self, *, evidence: bool = False) -> AsyncIterator[MemoryDelivery]:
        async for batch in self.batches(evidence=evidence):
            for delivery in batch:
                yield delivery

    async def batches(
        self, *, evidence: bool = False, limit: int = 64
    ) -> AsyncIterator[list[MemoryDelivery]]:
        wakeup = self._wakeups[evidence] = asyncio.Event()
        while not self._closed:
            ready = self.take(evidence)
            for start in range(0, len(ready), limit):
                yield ready[start : start + limit]
            if not self._closed and not any(d.evidence == evidence for d in self._queue):
                wakeup.clear()
                await wakeup.wait()
