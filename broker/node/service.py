"""The node's thin shell around :class:`~broker.node.core.NodeCore`: loops, writes, acks.

What it is for
    :class:`Node` runs the loops around the node's decisions (``broker/node/core.py``): it
    turns a case worker's :class:`~broker.node.model.Draft` into a message the core cleared
    and sealed, commits it to the outbox and submits it until JetStream acknowledges it; and
    hands each :class:`~broker.node.transport.Delivery` to the core, writes the
    :class:`~broker.node.core.Settlement` it returns (exactly one stored message, or one
    recorded refusal, with evidence back to the sender) and acknowledges only after the
    commit. NATS is behind :class:`~broker.node.transport.Transport`, SQLite behind
    :class:`~broker.node.store.Store`; the HTTP API (``broker/node/api.py``) calls this class.

Receiving, per delivery (steps 1-4: :meth:`broker.node.core.NodeCore.on_delivery`)
    1. Same bytes and same stream sequence already settled (a crash between commit and ack)?
       ack, nothing else.
    2. :func:`~broker.core.envelope.open_message` with the SQLite replay store (through a
       pending wrapper: the id is written in the commit, not before) and the recipient policy
       seam as ``admit`` (not applied to evidence, which carries no case data).
    3. Application message: store + remember id + receipt + ``delivered`` evidence (sealed into
       the outbox) in one transaction. Evidence message: update the subject's trail.
    4. ``CasebridgeError`` from a peer's message: record the refusal and ``rejected`` evidence
       (reason code, and rule id when a policy decided) to the claimed sender, unless the
       message is itself evidence (no cascades) or that sender cannot be addressed (unknown,
       revoked: the record stays local).
    5. ack; then submit the evidence (the outbox loop retries it if that fails).

Receiving in batches
    The transport hands over whatever is ready on a lane (never waiting to fill a batch). One
    worker-thread hop per batch: every delivery is decided first (steps 1-4, crypto outside
    the store lock), each a Settlement naming its write; then the writes run in ONE transaction,
    each delivery in its own savepoint (a delivery that fails spoils no other; a copy of an id
    accepted earlier in the same batch is decided again inside the transaction and seen as a
    copy). Decision logs and metrics are emitted after that commit. If the commit fails, each
    delivery is settled again with its own commit. Then step 5 for the batch: acks, and the
    evidence published concurrently (a bounded window) with one commit of the outcomes.

Sending in groups
    A request's draft is pre-flighted, sealed and committed to the outbox on the worker
    thread together with the drafts of the requests that arrived meanwhile, and with the
    submission outcomes waiting to be recorded (JetStream's acknowledgements of requests, the
    outcomes of published evidence): one thread hop and one commit per group
    (each draft in its own savepoint), nothing held back to fill a group. Each request then
    submits its own message and answers only after its commit.

When handling fails (poison handling, docs/node-api.md#quarantine)
    Our own faults and anything unexpected (a bug) never reach the peer as evidence. The
    delivery is nak'ed with a delay growing with its attempt count (``RetryPolicy``), so the
    lane moves on meanwhile. Faults that are not about one message (stale directory, store
    unavailable: :func:`retried_only`) are retried for as long as they last. Any other failure
    is per message: after ``RetryPolicy.max_attempts`` deliveries the bytes are committed to the
    store's quarantine, and only then acknowledged, so nothing accepted is lost and no lane
    waits behind one message. An operator retries or drops them (API, CLI). Each distinct
    failure is logged once (``delivery_failed``), not once per retry.

What it must never do
    Acknowledge before the commit; deliver a message twice to the application; answer
    evidence with evidence; read the clock or make ids except through the injected sources.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import structlog

from broker.core.attachments import Descriptor, Manifest
from broker.core.audit import ActorKind, AuditEntry, Checkpoint, Operation, sign_checkpoint
from broker.core.envelope import (
    DEFAULT_LIMITS,
    Limits,
    OpenedMessage,
    RecipientIdentity,
    SenderIdentity,
)
from broker.core.evidence import EvidenceKind, Subject
from broker.core.header import Header
from broker.core.peek import unverified_header
from broker.core.trust import KeyResolver
from broker.core.wire import submit_subject
from broker.errors import CasebridgeError, InvalidMessage, LocalError, PolicyDenied, Reason
from broker.logs import DistinctFaults, FaultLog
from broker.node import audit_log, corrections
from broker.node.clock import Clock, IdSource, SaltSource, random_id, random_salt, system_clock
from broker.node.core import (
    TRANSIENT_REASONS,
    Delivered,
    Event,
    EvidenceDropped,
    EvidenceNotSealed,
    EvidenceReceived,
    FilesView,
    HoldDelivery,
    NodeCore,
    Outcome,
    Refused,
    Schemas,
    Settlement,
    StoreDelivery,
    StoreEvidence,
    Write,
    wire_digest,
)
from broker.node.errors import (
    BadRequest,
    IdempotencyConflict,
    JustificationRequired,
    NotFound,
    StorageUnavailable,
    TransportUnavailable,
)
from broker.node.model import (
    Draft,
    EvidenceRecord,
    InboxMessage,
    OutboxMessage,
    OutboxState,
    Quarantined,
    Receipt,
    SealedRecord,
    SendResult,
    iso,
)
from broker.node.observe import NodeObserver
from broker.node.policy import (
    Clearance,
    Preflight,
    PreflightDenied,
    RecipientCheck,
    SchemaOnlyPreflight,
)
from broker.node.progress import LANES, LaneProgress, lane_name
from broker.node.store import Store, store_unavailable
from broker.node.transport import Delivery, Transport
from broker.tracing import TRACEPARENT, from_headers

MAX_FAILING_TRACKED: Final = 10_000  # first-failure times of deliveries being retried
SUBMIT_WINDOW: Final = 64  # publishes awaiting JetStream's acknowledgement at once
SEND_GROUP: Final = 32  # drafts prepared and committed together at most (the send path)


def retried_only(exc: BaseException) -> bool:
    """Faults of ours that are not about one message (our directory is stale, the store is
    unavailable): every message would fail the same way, so they are retried with backoff for
    as long as they last and never quarantine a message. The lane's readiness turns red."""
    if isinstance(exc, CasebridgeError) and exc.reason in TRANSIENT_REASONS:
        return True
    return isinstance(exc, TransportUnavailable) or store_unavailable(exc)


def _text(value: object, limit: int = 2000) -> str:
    """Any value as storable text: lone surrogates escaped (SQLite would refuse them), capped."""
    return str(value)[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def _maybe_text(value: object) -> str | None:
    return None if value is None else _text(value, 300)


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """Submission retries (exponential backoff) and the redelivery delay after a local fault."""

    inline_attempts: int = 3  # tried before send() returns (then the outbox loop keeps going)
    initial_delay: float = 0.2
    factor: float = 2.0
    max_delay: float = 30.0
    nak_delay: float = 2.0  # redelivery delay after the first failed delivery, then doubled
    max_nak_delay: float = 60.0
    max_attempts: int = 5  # deliveries of one message before it is quarantined
    stall_seconds: float = 300.0  # a lane that settled nothing for this long is not ready

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_delay, self.initial_delay * self.factor ** (attempt - 1)))

    def redelivery_delay(self, attempt: int) -> float:
        """The nak delay after failed delivery number ``attempt`` (1-based) of one message."""
        exponent = min(max(attempt, 1) - 1, 32)
        return float(min(self.max_nak_delay, self.nak_delay * self.factor**exponent))


class KeyedLocks:
    """One :class:`asyncio.Lock` per key, made on first use and dropped when nobody holds or
    waits for it: requests with the same Idempotency-Key are serialised, others never wait."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class AttachmentFiles(FilesView, Protocol):
    """The node's files of messages as the shell uses them
    (:class:`broker.node.attachment_transfer.NodeAttachments`)."""

    def staged_manifests(self, handles: Sequence[str]) -> tuple[Manifest, ...]: ...

    def manifests_for(self, header: Header) -> tuple[Manifest, ...]: ...

    def bind_within(
        self, db: sqlite3.Connection, message_id: str, manifests: Sequence[Manifest]
    ) -> None: ...

    def bound(self) -> None: ...

    def hold(self, opened: OpenedMessage, receipt: Receipt, wire: bytes, now: datetime) -> None: ...


# What preparing a draft comes to: the message stored earlier under its Idempotency-Key, or
# its header, pre-flight clearance, sealed record and whether it was stored as submitted.
Prepared = tuple[Header, Clearance, SealedRecord, bool] | OutboxMessage


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcomes:
    """Submission outcomes to record: ``(message_id, error)`` rows (None: acknowledged, else
    back to queued with the error); ``attempted``: count the attempt when recording."""

    rows: tuple[tuple[str, str | None], ...]
    attempted: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class _Staged:
    """A draft cleared and sealed on the worker thread, its outbox row not yet committed."""

    header: Header
    clearance: Clearance
    sealed: SealedRecord
    disclosed: tuple[AuditEntry, ...]
    now: datetime
    idempotency: tuple[str, str] | None
    submitting: bool
    files: tuple[Manifest, ...] = ()


def _prepared(result: _Staged | OutboxMessage | Exception) -> Prepared | Exception:
    if isinstance(result, _Staged):
        return result.header, result.clearance, result.sealed, result.submitting
    return result


@dataclass(frozen=True, slots=True)
class _Settled:
    """What one delivery of a batch came to (decided on the worker thread)."""

    redelivery: bool = False  # settled before (a lost ack): acknowledge only
    sealed: SealedRecord | None = None  # evidence we produced, to submit after the ack
    error: Exception | None = None  # not settled: retried later or quarantined
    events: tuple[Event, ...] = ()  # emitted after the commit

    @classmethod
    def of(cls, settlement: Settlement) -> _Settled:
        return cls(
            redelivery=settlement.outcome is Outcome.SETTLED_BEFORE,
            sealed=settlement.sealed,
            events=settlement.events,
        )


class Node:
    """One agency's node logic. Every collaborator is injected; see the module docstring."""

    def __init__(
        self,
        *,
        sender: SenderIdentity,
        recipient: RecipientIdentity,
        resolver: KeyResolver,
        schemas: Schemas,
        store: Store,
        transport: Transport,
        preflight: Preflight | None = None,
        recipient_check: RecipientCheck | None = None,
        time_problem: Callable[[], str | None] | None = None,
        clock: Clock = system_clock,
        new_id: IdSource = random_id,
        salt: SaltSource = random_salt,
        lifetime: timedelta = timedelta(days=30),
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        limits: Limits = DEFAULT_LIMITS,
        logger: Any = None,
        observer: NodeObserver | None = None,
        monotonic: Callable[[], float] | None = None,
        attachments: AttachmentFiles | None = None,
    ) -> None:
        # The decisions; this class only carries them out (module docstring).
        self.core = NodeCore(
            sender=sender,
            recipient=recipient,
            resolver=resolver,
            schemas=schemas,
            view=store,
            preflight=preflight or SchemaOnlyPreflight(schemas),
            recipient_check=recipient_check,
            new_id=new_id,
            salt=salt,
            lifetime=lifetime,
            limits=limits,
            files=attachments,
        )
        self.agency_id = sender.agency_id
        self._sender = sender
        self.store = store
        self.transport = transport
        # Files of messages (broker/node/attachment_transfer.py); None: attachments refused.
        self.attachments = attachments
        self._clock = clock
        self._time_problem = time_problem
        self._retry = retry
        self._sleep = sleep
        self._idempotency = KeyedLocks()
        # Outbox ids some coroutine is submitting now (or the API is about to): the outbox
        # loop and evidence submission skip them instead of submitting them a second time.
        self._in_flight: set[str] = set()
        self._log = (logger or structlog.get_logger("casebridge.node")).bind(agency=self.agency_id)
        self._stopped_loops: dict[str, str] = {}
        self._store_faults = FaultLog(self._log, "outbox_store", agency=self.agency_id)
        self.observe = observer or NodeObserver()
        self.lanes = {
            lane: LaneProgress(monotonic) if monotonic else LaneProgress() for lane in LANES
        }
        self._faults = DistinctFaults(self._log, "delivery_failed")
        self._failing: OrderedDict[tuple[str, int], str] = OrderedDict()  # first failure time
        # The send path's group commit (_flush_sends): drafts waiting to be prepared and
        # submission outcomes waiting to be recorded, each with the future its caller awaits.
        self._to_prepare: list[
            tuple[tuple[Draft, tuple[str, str] | None, str | None], asyncio.Future[Prepared]]
        ] = []
        self._outcomes_to_record: list[tuple[Outcomes, asyncio.Future[None]]] = []
        self._flushing_sends = False
        self._send_flush: asyncio.Task[None] | None = None  # referenced while it runs

    @property
    def resolver(self) -> KeyResolver:
        """The directory every key is looked up in (the core's: one source of truth)."""
        return self.core.resolver

    @resolver.setter
    def resolver(self, new: KeyResolver) -> None:
        # A directory swapped in while running (broker/node/live.py) must reach the core,
        # which opens and seals with it.
        self.core.resolver = new

    # --------------------------------------------------------------- readiness

    def loop_stopped(self, name: str, error: BaseException | None) -> None:
        """A background loop (receiver, outbox...) ended: the node is no longer ready."""
        self._stopped_loops[name] = "ended" if error is None else f"{type(error).__name__}: {error}"
        self._log.error("background_loop_stopped", loop=name, error=self._stopped_loops[name])

    def ready(self) -> tuple[bool, str]:
        """Ready when the store can write, every background loop runs, the transport is
        connected and the directory vouches for us now. Blocking (the store may probe)."""
        writable, why = self.store.writable()
        if not writable:
            return False, f"{Reason.STORAGE_UNAVAILABLE.value}: {why}"
        if self._stopped_loops:
            return False, "; ".join(f"{n} stopped ({e})" for n, e in self._stopped_loops.items())
        if not self.transport.connected:
            return False, "transport not connected"
        for lane, progress in self.lanes.items():
            waiting = progress.stalled_for()
            if waiting > self._retry.stall_seconds:
                return False, (
                    f"lane {lane} stalled: deliveries taken but none settled for {waiting:.0f} s"
                )
        problem = self._time_problem() if self._time_problem is not None else None
        if problem is not None:
            return False, problem
        try:
            self.resolver.agency(self.agency_id, now=self._clock())
        except CasebridgeError as exc:
            return False, f"directory: {exc.reason.value}"
        return True, "ready"

    # -------------------------------------------------------------------- send

    def _seal(
        self, header: Header, body: Mapping[str, Any], now: datetime
    ) -> tuple[SealedRecord, tuple[Manifest, ...]]:
        """Seal a cleared message with its files (bound to it later, in its outbox commit)."""
        elapsed = self.observe.timer()
        files = tuple(self.attachments.manifests_for(header)) if self.attachments else ()
        sealed = self.core.seal(header, body, now, attachments=files)
        if self.observe.metrics is not None:
            self.observe.metrics.seal_seconds.observe(elapsed())
        return sealed, files

    def clear(self, draft: Draft) -> tuple[Header, Clearance]:
        """Build the header of a draft and run pre-flight on it (raises ``PolicyDenied``)."""
        return self.core.clear(draft, self._clock(), files=self._draft_files(draft))

    def _draft_files(self, draft: Draft) -> tuple[Descriptor, ...]:
        """The descriptors of the files a draft names (uploaded here, not yet sent)."""
        if not draft.attachments:
            return ()
        if self.attachments is None:
            raise BadRequest("this node does not carry attachments")
        return tuple(m.descriptor for m in self.attachments.staged_manifests(draft.attachments))

    def explain(self, draft: Draft) -> dict[str, Any]:
        """What pre-flight would decide about ``draft``, without sealing or storing anything."""
        try:
            header, clearance = self.clear(draft)
        except PolicyDenied as exc:
            found = {"allowed": False, "rule_id": exc.rule_id, "reason": exc.detail}
            if isinstance(exc, PreflightDenied):  # every unit: ours and the destination's
                found["decisions"] = [dict(d) for d in exc.details]
            return found
        return {
            "allowed": True,
            "rule_id": clearance.rule_id,
            "reason": clearance.reason,
            "categories": list(header.categories),
            "redactions": list(clearance.redactions),
            "decisions": [dict(d) for d in clearance.details],
            "recipients": list(header.recipients),
        }

    async def send(
        self,
        draft: Draft,
        *,
        idempotency: tuple[str, str] | None = None,
        actor: str | None = None,
    ) -> SendResult:
        """Validate, pre-flight, seal, store and submit ``draft``.

        ``idempotency`` is ``(key, request_hash)``: the same key and hash return the first
        result without sending again; the same key with another hash is a conflict. ``actor``
        (the person sending; None: the system) goes into the disclosure records. Raises
        ``PolicyDenied``/``SchemaInvalid``/``InvalidMessage`` before anything is stored.
        """
        if idempotency is None:
            staged = await self._stage(draft, None, actor)
        else:
            # Only the check-and-commit is serialised, per key; submission happens after the
            # lock is released (a request never waits on another request's retries).
            async with self._idempotency.hold(idempotency[0]):
                staged = await self._stage(draft, idempotency, actor)
        if isinstance(staged, OutboxMessage):  # sent before under this Idempotency-Key
            return _result(staged, rule_id="", redactions=())
        header, clearance, sealed, recorded = staged
        try:
            state = await self._submit(
                sealed.message_id,
                attempts=self._retry.inline_attempts,
                wire=sealed.wire,
                message_type=header.type,
                inline=True,
                first_recorded=recorded,
            )
        finally:
            self._in_flight.discard(sealed.message_id)
        return SendResult(
            message_id=header.id,
            conversation=header.conversation,
            state=state,
            digest=sealed.digest,
            categories=header.categories,
            rule_id=clearance.rule_id,
            redactions=clearance.redactions,
        )

    async def _stage(
        self, draft: Draft, idempotency: tuple[str, str] | None, actor: str | None
    ) -> tuple[Header, Clearance, SealedRecord, bool] | OutboxMessage:
        """Pre-flight, seal and commit to the outbox; the id stays in flight for the caller
        (which submits it, then discards it). The flag: stored as ``submitted`` with its
        first attempt counted already. With ``idempotency``: the message stored earlier under
        that key instead, if there is one (looked up in the same thread hop)."""
        try:
            # Pre-flight, seal and the outbox commit (with its disclosure records) belong
            # together and are all blocking work: done on the worker thread, together with
            # those of the requests that arrived meanwhile (a group commit, module docstring).
            prepared = await self._prepare_grouped(draft, idempotency, actor)
        except PolicyDenied as exc:
            self.observe.preflight_refused(sender=self.agency_id, rule_id=exc.rule_id)
            self._log.info("preflight_refused", rule_id=exc.rule_id, reason=exc.reason.value)
            raise
        if isinstance(prepared, OutboxMessage):
            return prepared
        header, clearance, sealed, recorded = prepared
        trace = self.observe.start_trace(header.id)
        self.observe.queued(
            message_id=header.id,
            sender=self.agency_id,
            recipients=header.recipients,
            type_=header.type,
        )
        self._log.info("message_queued", message_id=header.id, type=header.type, traceparent=trace)
        return header, clearance, sealed, recorded

    async def _prepare_grouped(
        self, draft: Draft, idempotency: tuple[str, str] | None, actor: str | None
    ) -> Prepared:
        """:meth:`_prepare_group` for this draft and those of the requests that arrived
        while the previous group was being prepared: one worker-thread hop and one commit for
        all of them (and for the submission outcomes waiting to be recorded). An idle node
        prepares a lone request at once: a group never waits to fill."""
        done: asyncio.Future[Prepared] = asyncio.get_running_loop().create_future()
        self._to_prepare.append(((draft, idempotency, actor), done))
        self._start_send_flush()
        return await done

    def _start_send_flush(self) -> None:
        if not self._flushing_sends:
            self._flushing_sends = True
            self._send_flush = asyncio.get_running_loop().create_task(self._flush_sends())

    async def _flush_sends(self) -> None:
        """Prepare the waiting drafts and record the waiting submission outcomes, group by group,
        until none is left. Each request's future gets its own result or error."""
        try:
            while self._to_prepare or self._outcomes_to_record:
                drafts = self._to_prepare[:SEND_GROUP]
                del self._to_prepare[:SEND_GROUP]
                acks, self._outcomes_to_record = self._outcomes_to_record, []
                try:
                    results, ack_error = await asyncio.to_thread(
                        self._prepare_group,
                        [args for args, _ in drafts],
                        [outcomes for outcomes, _ in acks],
                    )
                except BaseException:
                    # Cancelled (the node stops), or a bug: nobody may wait forever.
                    for _, draft_waiting in drafts:
                        draft_waiting.cancel()
                    for _, ack_waiting in acks:
                        ack_waiting.cancel()
                    raise
                for (_, waiting), result in zip(drafts, results, strict=True):
                    if waiting.done():
                        # The request went away (cancelled): the stored message is the
                        # outbox loop's to submit, not held in flight by nobody.
                        if isinstance(result, tuple):
                            self._in_flight.discard(result[2].message_id)
                    elif isinstance(result, BaseException):
                        waiting.set_exception(result)
                    else:
                        waiting.set_result(result)
                for _, recorded in acks:
                    if recorded.done():
                        continue
                    if ack_error is None:
                        recorded.set_result(None)
                    else:
                        recorded.set_exception(ack_error)
        finally:
            self._flushing_sends = False

    def _prepare_group(
        self,
        drafts: Sequence[tuple[Draft, tuple[str, str] | None, str | None]],
        submitted: Sequence[Outcomes],
    ) -> tuple[list[Prepared | Exception], Exception | None]:
        """On the worker thread: pre-flight and seal every draft (no store lock held), then
        commit their outbox rows, each in its own savepoint (one that fails spoils no other),
        and record the ``submitted`` outcomes, in ONE transaction. Returns each draft's
        outcome (or error) and the outcomes' error (None: recorded).
        If the commit itself fails, nothing of the group is stored: every draft and the
        outcomes get that error, as each would have with a commit of its own."""
        results: list[_Staged | OutboxMessage | Exception] = []
        for draft, idempotency, actor in drafts:
            try:
                results.append(self._seal_draft(draft, idempotency, actor))
            except Exception as exc:  # noqa: BLE001 - that request's answer
                results.append(exc)
        staged = [
            (index, result) for index, result in enumerate(results) if isinstance(result, _Staged)
        ]
        ack_error: Exception | None = None
        if not staged and not submitted:
            return [_prepared(r) for r in results], None
        if not staged or (len(staged) == 1 and not submitted):
            # A lone draft, or outcomes only (an idle node): their own transaction.
            for index, item in staged:
                try:
                    self._store_staged(item)
                except Exception as exc:  # noqa: BLE001 - that request's answer
                    self._in_flight.discard(item.sealed.message_id)
                    results[index] = exc
                else:
                    self._files_bound([item])
            try:
                self._record_outcomes(submitted)
            except Exception as exc:  # noqa: BLE001 - the waiting submitters see it
                ack_error = exc
            return [_prepared(r) for r in results], ack_error
        try:
            with self.store.batch() as scope:
                for index, item in staged:
                    try:
                        with scope():
                            self._store_staged(item)
                    except Exception as exc:  # noqa: BLE001 - that request's answer
                        self._in_flight.discard(item.sealed.message_id)
                        results[index] = exc
                if submitted:
                    try:
                        with scope():
                            self._record_outcomes(submitted)
                    except Exception as exc:  # noqa: BLE001 - the waiting submitters see it
                        ack_error = exc
        except Exception as exc:  # noqa: BLE001 - the commit failed: nothing was stored
            for index, item in staged:
                if results[index] is item:
                    self._in_flight.discard(item.sealed.message_id)
                    results[index] = exc
            return [_prepared(r) for r in results], exc
        self._files_bound([item for index, item in staged if results[index] is item])
        return [_prepared(r) for r in results], ack_error

    def _record_outcomes(self, submitted: Sequence[Outcomes]) -> None:
        """Record submission outcomes (in the caller's transaction, if any): one statement
        batch for those whose attempt is counted here, one for those counted already."""
        for attempted in (False, True):
            rows = [
                row
                for outcomes in submitted
                if outcomes.attempted is attempted
                for row in outcomes.rows
            ]
            if rows:
                self.store.mark_outbox_many(rows, now=self._clock(), attempted=attempted)

    def _store_staged(self, item: _Staged) -> None:
        """Commit a sealed draft's outbox row, its disclosure records and the binding of its
        files together (a failed commit leaves the uploads staged, to be sent again), unless
        the caller's batch commits it (then :meth:`_files_bound` after that commit)."""
        disclose = audit_log.log(item.disclosed, now=item.now)
        files, attachments = item.files, self.attachments

        def within(db: sqlite3.Connection) -> None:
            disclose(db)
            if files and attachments is not None:
                attachments.bind_within(db, item.sealed.message_id, files)

        self.store.add_outbox(
            item.sealed,
            now=item.now,
            idempotency=item.idempotency,
            within=within,
            submitting=item.submitting,
        )

    def _files_bound(self, items: Sequence[_Staged]) -> None:
        """After the commit that stored ``items``: wake the upload loop if any had files."""
        if self.attachments is not None and any(item.files for item in items):
            self.attachments.bound()

    def _seal_draft(
        self, draft: Draft, idempotency: tuple[str, str] | None, actor: str | None
    ) -> _Staged | OutboxMessage:
        """Pre-flight and seal one draft (nothing stored yet); with ``idempotency``: the
        message stored earlier under that key instead, if there is one. The sealed message
        is in flight from here: the outbox loop may list its row as soon as it is committed,
        and must leave it to the request that is about to submit it."""
        if idempotency is not None:
            found = self.store.idempotent(idempotency[0])
            if found is not None:
                request_hash, message_id = found
                if request_hash != idempotency[1]:
                    raise IdempotencyConflict("this Idempotency-Key was used for another request")
                stored = self.store.outbox_message(message_id)
                if stored is None:  # pragma: no cover - key and message share a commit
                    raise NotFound(f"message {message_id} of this Idempotency-Key is gone")
                return stored
        elapsed = self.observe.timer()
        try:
            header, clearance = self.clear(draft)
        finally:
            if self.observe.metrics is not None:
                self.observe.metrics.validation_seconds.observe(elapsed())
        now = self._clock()
        sealed, files = self._seal(header, clearance.body, now)
        staged = _Staged(
            header=header,
            clearance=clearance,
            sealed=sealed,
            disclosed=tuple(
                audit_log.disclosures(
                    sealed.header, sealed.digest, actor=actor, agency=self.agency_id
                )
            ),
            now=now,
            idempotency=idempotency,
            # Connected: the request submits it at once, so the row is stored as submitted
            # with that attempt counted (no separate commit before the publish).
            submitting=self.transport.connected,
            files=files,
        )
        self._in_flight.add(sealed.message_id)  # last: no in-flight id left behind by a fault
        return staged

    async def submit(
        self, message_id: str, *, attempts: int | None, sealed: SealedRecord | None = None
    ) -> OutboxState:
        """Submit an outbox message until acknowledged, at most ``attempts`` times (None:
        forever), backing off between attempts. Every attempt sends the same bytes and id.

        ``sealed``: the message the caller has just committed to the outbox (saves reading it
        back); otherwise it is read from the outbox. A message another coroutine is
        submitting is left to it: one submission at a time. A store that cannot record an
        attempt never makes this raise: nothing is sent and the message stays queued."""
        if message_id in self._in_flight:
            return OutboxState.SUBMITTED
        self._in_flight.add(message_id)
        try:
            if sealed is not None:
                wire, message_type = sealed.wire, str(sealed.header["type"])
            else:
                message = await asyncio.to_thread(self.store.outbox_message, message_id)
                if message is None:
                    raise NotFound(f"no outbox message {message_id}")
                if message.state is OutboxState.ACKNOWLEDGED:
                    return OutboxState.ACKNOWLEDGED
                wire, message_type = message.wire, message.type
            return await self._submit(
                message_id, attempts=attempts, wire=wire, message_type=message_type
            )
        finally:
            self._in_flight.discard(message_id)

    async def _submit(
        self,
        message_id: str,
        *,
        attempts: int | None,
        wire: bytes,
        message_type: str,
        inline: bool = False,
        first_recorded: bool = False,
    ) -> OutboxState:
        """The attempts of :meth:`submit`, for a message the caller holds in flight.

        ``inline`` (a request is waiting): never wait on an unreachable server: answer
        ``queued`` at once (the outbox loop submits it later). Never raises for the store: the
        message is committed already, and an answer must not contradict that.
        ``first_recorded``: the first attempt is already recorded (stored as submitted)."""
        attempt = 0
        while True:
            if inline and not self.transport.connected:
                self._log.info("submit_deferred", message_id=message_id, why="not connected")
                return OutboxState.QUEUED
            attempt += 1
            if attempt > 1 or not first_recorded:
                try:
                    await asyncio.to_thread(
                        self.store.mark_outbox,
                        message_id,
                        OutboxState.SUBMITTED,
                        now=self._clock(),
                        attempted=True,
                    )
                except StorageUnavailable as exc:
                    self._store_faults.failed(exc)  # nothing sent: it stays queued
                    return OutboxState.QUEUED
                self._store_faults.ok()
            try:
                trace = self.observe.trace(message_id)
                await self.transport.submit(
                    submit_subject(self.agency_id),
                    wire,
                    message_id,
                    headers={TRACEPARENT: trace} if trace is not None else None,
                )
            except TransportUnavailable as exc:
                self.observe.submit_failed()
                self._log.warning("submit_failed", message_id=message_id, attempt=attempt)
                try:
                    await asyncio.to_thread(
                        self.store.mark_outbox,
                        message_id,
                        OutboxState.QUEUED,
                        now=self._clock(),
                        error=exc.detail,
                    )
                except StorageUnavailable as store_exc:
                    # Stored as 'submitted': the outbox loop resubmits it all the same.
                    self._store_faults.failed(store_exc)
                    return OutboxState.QUEUED
                if attempts is not None and attempt >= attempts:
                    return OutboxState.QUEUED
                await self._sleep(self._retry.delay(attempt))
                continue
            self.observe.acknowledged(
                message_id=message_id, sender=self.agency_id, type_=message_type
            )
            self._log.debug("message_acknowledged", message_id=message_id, attempt=attempt)
            try:
                await self._record_acknowledged(message_id)
            except StorageUnavailable as exc:
                # JetStream holds it; the store still says 'submitted', so the outbox loop
                # submits it again later with the same id (JetStream's window de-duplicates).
                self._store_faults.failed(exc)
            else:
                self._store_faults.ok()
            return OutboxState.ACKNOWLEDGED

    async def _record_acknowledged(self, message_id: str) -> None:
        """Record that JetStream acknowledged ``message_id``. Requests finishing at the same
        time share one commit and one thread hop (a group commit, with the drafts being
        prepared meanwhile): the first starts a flush, the others join the next one. Raises
        what the store raised."""
        await self._record_submitted(Outcomes(rows=((message_id, None),), attempted=False))

    async def _record_submitted(self, outcomes: Outcomes) -> None:
        """Record submission outcomes in the send path's next group commit (with the drafts
        being prepared and the other outcomes waiting meanwhile). Raises what the store
        raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outcomes_to_record.append((outcomes, done))
        self._start_send_flush()
        await done

    async def flush_outbox(self) -> int:
        """One attempt for every unacknowledged outbox message (oldest first). Returns how
        many are still pending. Run at start-up (resubmits what a crash left) and periodically.
        Publishes concurrently (a bounded window); the attempts are recorded before, and the
        outcomes after, in one commit each."""
        pending = await asyncio.to_thread(
            self.store.list_outbox, include_evidence=True, pending_only=True, limit=1000
        )
        mine = [m for m in pending if m.message_id not in self._in_flight]
        if not mine:
            return len(pending)
        ids = [m.message_id for m in mine]
        self._in_flight.update(ids)
        try:
            try:
                await asyncio.to_thread(self.store.mark_submitting, ids, now=self._clock())
            except StorageUnavailable as exc:
                # The store cannot record attempts: nothing sent, back off, come back.
                self._store_faults.failed(exc)
                return len(pending)
            self._store_faults.ok()
            errors = await self._publish_many(
                [(m.message_id, m.wire, m.type) for m in mine], attempted=False
            )
        finally:
            self._in_flight.difference_update(ids)
        return len(pending) - len(mine) + sum(e is not None for e in errors)

    async def submit_many(self, messages: Sequence[tuple[SealedRecord, str | None]]) -> None:
        """Submit sealed outbox messages (the evidence of a received batch), each once, with at
        most :data:`SUBMIT_WINDOW` publishes in flight; the outcomes are recorded in one commit.
        What fails stays queued for the outbox loop. ``(sealed, traceparent)`` pairs."""
        mine = [(s, t) for s, t in messages if s.message_id not in self._in_flight]
        ids = [s.message_id for s, _ in mine]
        self._in_flight.update(ids)
        try:
            for sealed, trace in mine:
                self.observe.follow_trace(sealed.message_id, trace)
            await self._publish_many(
                [(s.message_id, s.wire, str(s.header["type"])) for s, _ in mine], attempted=True
            )
        finally:
            self._in_flight.difference_update(ids)

    async def _publish_many(
        self, messages: Sequence[tuple[str, bytes, str]], *, attempted: bool
    ) -> list[str | None]:
        """Publish ``(message_id, wire, type)`` concurrently (bounded window), then record
        every outcome in one commit; the error of each (None: acknowledged)."""
        window = asyncio.Semaphore(SUBMIT_WINDOW)
        subject = submit_subject(self.agency_id)

        async def one(message_id: str, wire: bytes) -> str | None:
            async with window:
                trace = self.observe.trace(message_id)
                try:
                    await self.transport.submit(
                        subject,
                        wire,
                        message_id,
                        headers={TRACEPARENT: trace} if trace is not None else None,
                    )
                except TransportUnavailable as exc:
                    return exc.detail
                return None

        errors = await asyncio.gather(*(one(m, w) for m, w, _ in messages))
        for (message_id, _, message_type), error in zip(messages, errors, strict=True):
            if error is None:
                self.observe.acknowledged(
                    message_id=message_id, sender=self.agency_id, type_=message_type
                )
                self._log.debug("message_acknowledged", message_id=message_id)
            else:
                self.observe.submit_failed()
                self._log.warning("submit_failed", message_id=message_id, error=error)
        try:
            await self._record_submitted(
                Outcomes(
                    rows=tuple(zip((m for m, _, _ in messages), errors, strict=True)),
                    attempted=attempted,
                )
            )
        except StorageUnavailable as exc:
            # JetStream holds what it acknowledged; the store still says pending, so the
            # outbox loop submits it again later with the same id (de-duplicated).
            self._store_faults.failed(exc)
        else:
            self._store_faults.ok()
        return list(errors)

    async def run_outbox(self, *, interval: float = 5.0) -> None:
        """Flush the outbox forever, backing off while the federation is unreachable or the
        store cannot write (logged once per distinct fault; resumes by itself)."""
        failures = 0
        faults = FaultLog(self._log, "outbox_flush", agency=self.agency_id)
        while True:
            try:
                left = await self.flush_outbox()
            except StorageUnavailable as exc:
                faults.failed(exc)
                left = 1
            else:
                faults.ok()
            failures = failures + 1 if left else 0
            await self._sleep(self._retry.delay(failures) if failures else interval)

    # ----------------------------------------------------------------- receive

    async def run_receiver(self) -> None:
        """Handle every delivery of both lanes (case messages, evidence) until the transport
        closes: one loop per lane, each in order, so case messages never wait behind evidence.

        Transport faults never end a loop: a failed ack is logged and the message comes
        again (it is then recognised as processed and acked); a broken subscription is
        re-established after a pause.
        """
        # A TaskGroup: if one lane fails unexpectedly, the other is cancelled too and the
        # failure surfaces (never half a receiver running unnoticed).
        async with asyncio.TaskGroup() as lanes:
            lanes.create_task(self._receive_lane(evidence=False), name="lane-messages")
            lanes.create_task(self._receive_lane(evidence=True), name="lane-evidence")

    async def _receive_lane(self, *, evidence: bool) -> None:
        while True:
            try:
                async for batch in self.transport.batches(evidence=evidence):
                    await self.handle_batch(batch)
            except TransportUnavailable as exc:
                self._log.warning("deliveries_interrupted", error=str(exc))
                await self._sleep(1.0)
            else:
                return

    async def handle(self, delivery: Delivery) -> None:
        """Settle one delivery (see the module docstring)."""
        await self.handle_batch((delivery,))

    async def handle_batch(self, deliveries: Sequence[Delivery]) -> None:
        """Settle a batch of deliveries of one lane: decide each, commit them all in ONE
        transaction (each message in its own savepoint, so one that fails spoils no other),
        acknowledge each only after that commit, then submit the evidence they produced
        concurrently. One worker-thread hop for the whole batch. If the batch commit itself
        fails, every delivery is settled again on its own (its own commit)."""
        if not deliveries:
            return
        items = [
            (d, Receipt(digest=wire_digest(d.data), sequence=d.sequence), from_headers(d.headers))
            for d in deliveries
        ]
        for delivery in deliveries:
            self.lanes[lane_name(evidence=delivery.evidence)].taken()
        work = [(d.data, receipt, trace) for d, receipt, trace in items]
        try:
            outcomes = await asyncio.to_thread(self._settle_batch, work)
        except Exception as exc:  # noqa: BLE001 - the batch commit failed: one by one
            self._log.debug("batch_commit_failed", size=len(work), error=str(exc))
            outcomes = await asyncio.to_thread(lambda: [self._settle_alone(*w) for w in work])
        evidence: list[tuple[SealedRecord, str | None]] = []
        for (delivery, receipt, trace), outcome in zip(items, outcomes, strict=True):
            lane = lane_name(evidence=delivery.evidence)
            if outcome.error is not None:
                await self._failed(delivery, receipt, lane, outcome.error)
                continue
            self._failing.pop((receipt.digest, receipt.sequence), None)
            self.lanes[lane].settled()
            if outcome.redelivery:
                self.observe.redelivered("settled")
                self._log.info("redelivery_acknowledged", sequence=receipt.sequence)
            try:
                await delivery.ack()
            except TransportUnavailable as exc:
                # Committed: the redelivery is recognised by its receipt and acknowledged.
                self._log.warning("settle_failed", sequence=receipt.sequence, error=str(exc))
            if outcome.sealed is not None:
                evidence.append((outcome.sealed, trace))
        if evidence:
            await self.submit_many(evidence)

    def _settle_batch(self, work: Sequence[tuple[bytes, Receipt, str | None]]) -> list[_Settled]:
        """Settle a batch on the worker thread, in two phases. First the core decides every
        delivery (crypto, checks, evidence sealed): a :class:`~broker.node.core.Settlement`
        naming its write, nothing written yet, so the store stays free for the API meanwhile.
        Then the writes of all of them run in ONE transaction, each delivery in its own
        savepoint. A delivery whose write finds its id accepted meanwhile (a second copy in the
        same batch) is decided again inside the transaction, where it sees the first. Logs and
        metrics of each decision are emitted only after the commit (dropped if it fails)."""
        decided: list[Settlement | Exception] = []
        for data, receipt, trace in work:
            try:
                decided.append(self._decide(data, receipt, trace))
            except Exception as exc:  # noqa: BLE001 - settled later by _failed
                decided.append(exc)
        outcomes = [
            _Settled(error=d) if isinstance(d, Exception) else _Settled.of(d) for d in decided
        ]
        with self.store.batch() as scope:
            for index, (item, settlement) in enumerate(zip(work, decided, strict=True)):
                if isinstance(settlement, Exception) or settlement.write is None:
                    continue
                try:
                    with scope():
                        self._write(settlement.write)
                except InvalidMessage as exc:
                    if exc.reason is not Reason.REPLAY:
                        outcomes[index] = _Settled(error=exc)
                        continue
                    outcomes[index] = self._settle_within(scope, *item)
                except Exception as exc:  # noqa: BLE001 - settled later by _failed
                    outcomes[index] = _Settled(error=exc)
        self._emit_all(outcomes)
        return outcomes

    def _settle_within(
        self,
        scope: Callable[[], AbstractContextManager[object]],
        data: bytes,
        receipt: Receipt,
        trace: str | None,
    ) -> _Settled:
        """Decide and write one delivery inside the batch's transaction (its own savepoint)."""
        try:
            with scope():
                settlement = self._decide(data, receipt, trace)
                if settlement.write is not None:
                    self._write(settlement.write)
        except Exception as exc:  # noqa: BLE001 - settled later by _failed
            return _Settled(error=exc)
        return _Settled.of(settlement)

    def _settle_alone(self, data: bytes, receipt: Receipt, trace: str | None) -> _Settled:
        """One delivery with its own commit (the fallback when a batch commit failed)."""
        try:
            settlement = self._decide(data, receipt, trace)
            if settlement.write is not None:
                self._write(settlement.write)
        except Exception as exc:  # noqa: BLE001 - settled later by _failed
            return _Settled(error=exc)
        outcome = _Settled.of(settlement)
        self._emit_all([outcome])
        return outcome

    def _emit_all(self, outcomes: Sequence[_Settled]) -> None:
        for outcome in outcomes:
            for event in outcome.events:
                self._emit(event)

    def _decide(
        self, data: bytes, receipt: Receipt, trace: str | None, *, retry: bool = False
    ) -> Settlement:
        """The core's decision about one delivery, timed for the ``open`` metric."""
        elapsed = self.observe.timer()
        label: str | None = "refused"
        try:
            settlement = self.core.on_delivery(
                data, receipt, self._clock(), trace=trace, retry=retry
            )
        except CasebridgeError as exc:
            if isinstance(exc, LocalError) or exc.reason in TRANSIENT_REASONS:
                label = "retried"
            raise
        else:
            label = settlement.opened
            return settlement
        finally:
            if label is not None and self.observe.metrics is not None:
                self.observe.metrics.open_seconds.labels(outcome=label).observe(elapsed())

    def _write(self, write: Write) -> None:
        """Carry out the store write a settlement names (in the caller's transaction)."""
        if isinstance(write, StoreDelivery):
            self.store.commit_delivery(
                header=write.header,
                body=write.body,
                receipt=write.receipt,
                replay_expires_at=write.replay_expires_at,
                now=write.now,
                evidence=write.evidence,
                sealed=write.sealed,
                within=corrections.on_delivery(
                    write.header,
                    write.body,
                    write.receipt.digest,
                    agency=self.agency_id,
                    now=write.now,
                ),
                wire=write.wire,
            )
        elif isinstance(write, StoreEvidence):
            self.store.commit_evidence_received(
                message_id=write.message_id,
                receipt=write.receipt,
                replay_expires_at=write.replay_expires_at,
                now=write.now,
                evidence=write.evidence,
                wire=write.wire,
            )
        elif isinstance(write, HoldDelivery):
            if self.attachments is None:  # pragma: no cover - the core holds only with files
                raise BadRequest("this node does not carry attachments")
            self.attachments.hold(write.opened, write.receipt, write.wire, write.now)
        else:
            self.store.commit_rejection(
                write.rejection, now=write.now, evidence=write.evidence, sealed=write.sealed
            )

    def _emit(self, event: Event) -> None:
        """A decision's log line and metric (after its commit)."""
        if isinstance(event, Delivered):
            self.observe.delivered(sender=event.sender, recipient=self.agency_id, type_=event.type)
            self._log.info(
                "message_delivered",
                message_id=event.message_id,
                sender=event.sender,
                type=event.type,
                traceparent=event.trace,
            )
        elif isinstance(event, Refused):
            self.observe.rejected(
                claimed_sender=event.claimed_sender,
                recipient=self.agency_id,
                reason=event.reason,
                rule_id=event.rule_id,
            )
            self._log.warning(
                "message_rejected",
                claimed_message_id=event.claimed_message_id,
                claimed_sender=event.claimed_sender,
                reason=event.reason,
                rule_id=event.rule_id,
                traceparent=event.trace,
            )
        elif isinstance(event, EvidenceReceived):
            self.observe.evidence(
                kind=event.kind,
                subject_id=event.subject_id,
                subject_created_at=event.subject_created_at,
                sender=self.agency_id,
                actor=event.actor,
                at=event.at,
            )
        elif isinstance(event, EvidenceDropped):
            self._log.warning("evidence_dropped", subject=event.subject_id, why=event.why)
        elif isinstance(event, EvidenceNotSealed):
            self._log.warning("evidence_not_sealed", subject=event.subject_id, reason=event.reason)
        else:
            self.observe.redelivered("duplicate")
            self._log.info(
                "duplicate_acknowledged",
                message_id=event.claimed_message_id,
                sequence=event.sequence,
            )

    async def _failed(
        self, delivery: Delivery, receipt: Receipt, lane: str, exc: Exception
    ) -> None:
        """A delivery could not be settled: retry it later, or set it aside after the bound."""
        now = self._clock()
        key = (receipt.digest, receipt.sequence)
        first_at = self._failing.setdefault(key, iso(now))
        self._failing.move_to_end(key)
        while len(self._failing) > MAX_FAILING_TRACKED:
            self._failing.popitem(last=False)
        attempts = delivery.attempts
        self._faults.failed(exc, sequence=receipt.sequence, lane=lane, attempt=attempts)
        if not retried_only(exc) and attempts >= self._retry.max_attempts:
            try:
                await asyncio.to_thread(
                    self._quarantine,
                    delivery.data,
                    receipt,
                    lane,
                    exc,
                    attempts=attempts,
                    first_at=first_at,
                    now=now,
                )
            except Exception as failed:  # noqa: BLE001 - cannot set it aside: keep retrying
                self._faults.failed(failed, sequence=receipt.sequence, lane=lane)
            else:
                self._failing.pop(key, None)
                self.lanes[lane].settled()
                self.observe.quarantined(lane)
                await delivery.ack()
                return
        self.observe.redelivered("nak")
        await delivery.nak(self._retry.redelivery_delay(attempts))

    def _quarantine(
        self,
        data: bytes,
        receipt: Receipt,
        lane: str,
        exc: Exception,
        *,
        attempts: int,
        first_at: str,
        now: datetime,
    ) -> int:
        claimed = unverified_header(data)
        item_id = self.store.quarantine(
            receipt=receipt,
            lane=lane,
            wire=data,
            message_id=_maybe_text(claimed.id) if claimed is not None else None,
            sender=_maybe_text(claimed.sender) if claimed is not None else None,
            type_=_maybe_text(claimed.type) if claimed is not None else None,
            error=type(exc).__name__,
            detail=_text(exc),
            attempts=attempts,
            first_at=first_at,
            now=now,
        )
        self._log.warning(
            "message_quarantined",
            quarantine_id=item_id,
            sequence=receipt.sequence,
            lane=lane,
            attempts=attempts,
            error=type(exc).__name__,
            claimed_message_id=_maybe_text(claimed.id) if claimed is not None else None,
        )
        return item_id

    # -------------------------------------------------------------- quarantine

    async def retry_quarantined(self, item_id: int, *, actor: str) -> dict[str, Any]:
        """Run the receive decision again on a quarantined delivery's bytes (an operator's
        ``retry``): stored as if delivered now, or refused with evidence; on another failure the
        item stays (attempts counted). ``{"id", "outcome", ...}``; outcome is ``delivered``,
        ``evidence``, ``rejected`` or ``failed``."""
        item = await asyncio.to_thread(self.store.quarantined_item, item_id)
        if item is None:
            raise NotFound(f"no quarantined delivery {item_id}")
        receipt = Receipt(digest=item.digest, sequence=item.sequence)
        try:
            evidence_id = await asyncio.to_thread(self._retry_item, item, receipt)
        except Exception as exc:  # noqa: BLE001 - reported to the operator, item kept
            self._faults.failed(exc, sequence=item.sequence, lane=item.lane, quarantine_id=item_id)
            await asyncio.to_thread(
                self.store.quarantine_failed_again,
                item_id,
                error=type(exc).__name__,
                detail=_text(exc),
                now=self._clock(),
            )
            self._log.warning("quarantine_retry_failed", quarantine_id=item_id, actor=actor)
            return {
                "id": item_id,
                "outcome": "failed",
                "error": type(exc).__name__,
                "detail": _text(exc),
            }
        outcome = await asyncio.to_thread(self.store.receipt_outcome, receipt)
        await asyncio.to_thread(self.store.release_quarantined, item_id)
        self._log.info("quarantine_retried", quarantine_id=item_id, actor=actor, outcome=outcome)
        if evidence_id is not None:
            await self.submit(evidence_id, attempts=1)
        return {"id": item_id, "outcome": outcome or "delivered"}

    def _retry_item(self, item: Quarantined, receipt: Receipt) -> str | None:
        # Settled before: by an earlier retry that crashed before releasing the item.
        sealed = self._receive(item.wire, receipt, None)
        return sealed.message_id if sealed is not None else None

    async def drop_quarantined(self, item_id: int, *, actor: str, justification: str) -> None:
        """Delete a quarantined delivery for good (an operator's ``drop``), with an audit record
        (actor, justification) in the same transaction. No evidence goes to the sender: the
        failure was ours."""
        if not justification.strip():
            raise JustificationRequired("state why you drop this delivery (justification)")
        item = await asyncio.to_thread(self.store.quarantined_item, item_id)
        if item is None:
            raise NotFound(f"no quarantined delivery {item_id}")
        entry = AuditEntry(
            operation=Operation.ERASURE,
            actor=actor,
            actor_kind=ActorKind.PERSON,
            agency=self.agency_id,
            justification=_text(justification),
            message_id=item.message_id,
            message_type=item.type,
            peer=item.sender,
            digest=item.digest,
            detail=f"quarantined delivery dropped (sequence {item.sequence}, {item.error})",
        )
        removed = await asyncio.to_thread(
            self.store.release_quarantined,
            item_id,
            within=audit_log.log([entry], now=self._clock()),
        )
        if not removed:
            raise NotFound(f"no quarantined delivery {item_id}")
        self._log.info("quarantine_dropped", quarantine_id=item_id, actor=actor)

    def _receive(
        self, data: bytes, receipt: Receipt, trace: str | None = None
    ) -> SealedRecord | None:
        """Decide and settle one delivery now, with its own commit (an operator's retry of a
        quarantined delivery): the evidence to submit, if any. Its quarantine entry does not
        count as settled; an earlier settlement does."""
        settlement = self._decide(data, receipt, trace, retry=True)
        if settlement.write is not None:
            self._write(settlement.write)
        for event in settlement.events:
            self._emit(event)
        return settlement.sealed

    def _evidence(
        self,
        kind: EvidenceKind,
        subject: Subject,
        now: datetime,
        *,
        reason: str | None = None,
        rule_id: str | None = None,
        detail: str | None = None,
    ) -> tuple[EvidenceRecord, SealedRecord | None]:
        """Evidence we produce (:meth:`NodeCore.evidence`), its events emitted."""
        produced = self.core.evidence(
            kind, subject, now, reason=reason, rule_id=rule_id, detail=detail
        )
        for event in produced.events:
            self._emit(event)
        return produced.record, produced.sealed

    # -------------------------------------------------------------------- read

    async def read(self, message_id: str, *, actor: str, justification: str) -> InboxMessage:
        """Open a received message for a person: logs the consultation (actor, justification,
        time); the first opening marks it read and sends ``read`` evidence."""
        if not justification.strip():
            raise JustificationRequired("state why you open this message (justification)")
        message = await asyncio.to_thread(self.store.inbox_message, message_id)
        if message is None:
            raise NotFound(f"no received message {message_id}")
        now = self._clock()
        record: EvidenceRecord | None = None
        sealed: SealedRecord | None = None
        if message.read_at is None:
            subject = Subject(
                message_id=message.message_id,
                conversation=message.conversation,
                sender=message.sender,
                digest=message.digest,
            )
            record, sealed = await asyncio.to_thread(
                self._evidence, EvidenceKind.READ, subject, now
            )
        first = await asyncio.to_thread(
            self.store.mark_read,
            message_id,
            actor=actor,
            justification=justification,
            now=now,
            evidence=record,
            sealed=sealed,
            within=audit_log.log(
                [
                    audit_log.consultation(
                        message_id=message_id,
                        message_type=message.type,
                        sender=message.sender,
                        digest=message.digest,
                        actor=actor,
                        justification=justification,
                        agency=self.agency_id,
                    )
                ],
                now=now,
            ),
        )
        self._log.info("message_consulted", message_id=message_id, first=first)
        if first and sealed is not None:
            await self.submit(sealed.message_id, attempts=1)
        opened = await asyncio.to_thread(self.store.inbox_message, message_id)
        assert opened is not None  # noqa: S101 - inbox rows are never deleted here
        return opened

    def now(self) -> datetime:
        """The node's clock (the audit checkpoint and retention jobs run on it)."""
        return self._clock()

    def sign_audit_checkpoint(self, checkpoint: Checkpoint) -> str:
        """Sign an audit checkpoint with this agency's signing key (the key stays here)."""
        return sign_checkpoint(checkpoint, self._sender.signing_key, kid=self._sender.signing_kid)

    def today(self) -> str:
        """Today's date (``YYYY-MM-DD``, UTC) by the node's clock: the overdue cut-off."""
        return self._clock().date().isoformat()


def _result(stored: OutboxMessage, *, rule_id: str, redactions: tuple[str, ...]) -> SendResult:
    return SendResult(
        message_id=stored.message_id,
        conversation=str(stored.header["conversation"]),
        state=stored.state,
        digest=stored.digest,
        categories=tuple(stored.header["categories"]),
        rule_id=rule_id,
        redactions=redactions,
    )
