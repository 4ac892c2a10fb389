"""The border gateway process: pull loops over NATS feeding :class:`Border`.

One loop per agency of the country takes its submissions from ``SUBMIT`` (durable
``submit-<agency>``, with that agency's token bucket: ``broker/gateway/fairness.py``), one loop
per peer country takes its messages from ``INBOX`` (durable ``inbox-<peer>``), one loop keeps
the nodes' audit checkpoints. For each fetched batch: decide every message (``Border``), record
the decisions in the audit ledger (one commit, shared with the batches other loops record at
the same time: :class:`GroupRecorder`), publish every output with its ``Nats-Msg-Id``
and wait for the JetStream acks (all publishes of the batch concurrently, written in order on
one connection), then ack each input. A failed publish naks its input for redelivery, so nothing
is dropped; the deterministic ids make the redelivery's outputs duplicates that JetStream
removes. The input's ack is not awaited (no round trip per message): if it is lost, the input is
redelivered after the ack wait and its outputs are, again, duplicates. Stateless apart from
NATS: several gateways of one country can run side by side on the same durables.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError
from prometheus_client import CollectorRegistry

from broker.core import wire as subjects
from broker.core.directory import Directory
from broker.core.envelope import SenderIdentity
from broker.core.header import agency_country
from broker.core.policy import Policy
from broker.core.trust import cert_kid
from broker.errors import CasebridgeError
from broker.federation.directory_cache import directory_cache, startup_directory
from broker.federation.distribution import watcher_for
from broker.federation.streams import ensure_consumer, submit_consumer
from broker.gateway.attachments import ChunkRefusal, run_chunk_lanes
from broker.gateway.audit import GatewayLedger
from broker.gateway.border import Border, CrossingLog, Outcome, Publish
from broker.gateway.crossings import SharedCrossings, open_bucket, wanted
from broker.gateway.fairness import TokenBucket
from broker.gateway.observe import StoreSpaceCollector, gateway_expiries, record_outcome
from broker.gateway.quarantine import (
    GatewayQuarantine,
    Item,
    Setback,
    local_permanent,
    publish_permanent,
    run_retries,
)
from broker.gateway.settings import GatewaySettings
from broker.loaders import load_schema_registry
from broker.logs import FaultLog
from broker.metrics import ExpiryCollector, GatewayMetrics, MetricsServer, build_info
from broker.nats import PUBLISH_TIMEOUT, BatchPublisher, connect, lean_fetch, tls_context
from broker.node.store import store_unavailable
from broker.pki.keyfiles import read_bytes, read_certificate, read_private_key
from broker.policy_store import PolicyStore
from broker.process_memory import release_free_memory
from broker.tracing import TRACEPARENT, from_headers

FETCH_BATCH: Final = 32
FETCH_TIMEOUT: Final = 5.0
DIRECTORY_CHECK_SECONDS: Final = 30.0

log = structlog.get_logger("casebridge.gateway")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Holder:
    """The directory in force, reloaded when its file changes (a new signed directory)."""

    path: Path
    root_pem: Path
    directory: Directory
    mtime: float
    accepted: Callable[[int], None] | None = None  # persists the serial of a new directory

    def refresh(self, now: datetime) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return
        if mtime == self.mtime:
            return
        try:
            # Never an older directory than the one in force (it could undo a revocation).
            self.directory = Directory.load(
                read_bytes(self.path),
                root_cert=read_certificate(self.root_pem),
                now=now,
                min_serial=self.directory.serial,
            )
            self.mtime = mtime
            if self.accepted is not None:
                self.accepted(self.directory.serial)
            log.info("directory_reloaded", serial=self.directory.serial)
        except CasebridgeError as exc:
            log.warning("directory_refused", reason=exc.reason.value, detail=exc.detail)


def local_agencies(directory: Directory, country: str) -> list[str]:
    """The agencies of ``country`` in the directory that submit through this gateway (every
    kind but gateways), in a stable order."""
    return [a.agency_id for a in directory.agencies(country) if a.kind != "gateway"]


def build_border(
    settings: GatewaySettings,
    *,
    now: datetime,
    crossings: CrossingLog,
    registry: CollectorRegistry | None = None,
    min_serial: int = 0,
    accepted: Callable[[int], None] | None = None,
) -> tuple[Border, _Holder, PolicyStore]:
    """The gateway's decision logic from its settings (files are read here); the policy
    gauges go on ``registry`` (none: a private one); ``crossings``: what the border rules read;
    ``min_serial``/``accepted``: the highest directory serial accepted before, and where to
    remember a new one (a directory older than it is refused: DIRECTORY_STALE)."""
    agency = settings.agency
    country = agency_country(agency)
    root = read_certificate(settings.root_cert)
    holder = _Holder(
        path=settings.directory_file,
        root_pem=settings.root_cert,
        directory=Directory.load(
            # The file, or the newer directory accepted from the federation before a restart.
            startup_directory(
                settings.directory_file,
                directory_cache(settings.store_path),
                root_cert=root,
                now=now,
            ),
            root_cert=root,
            now=now,
            min_serial=min_serial,
        ),
        mtime=settings.directory_file.stat().st_mtime,
        accepted=accepted,
    )
    if accepted is not None:
        accepted(holder.directory.serial)
    load_schema_registry()  # fail at start, not at the first message, if schemas are broken
    release_free_memory()  # the compiled schemas just dropped: ~10 MB resident otherwise
    policies = PolicyStore(
        country=country,
        root_cert=root,
        registry=registry if registry is not None else CollectorRegistry(),
    )
    if settings.policy_file is not None:
        ca_cert = (
            read_certificate(settings.policy_ca_cert)
            if settings.policy_ca_cert is not None
            else holder.directory.country_ca(country)
        )
        policies.load_file(settings.policy_file, ca_cert=ca_cert, now=now)

    def policy() -> Policy | None:
        return policies.current

    signing_cert = read_certificate(settings.keys.signing_cert)
    border = Border(
        country=country,
        identity=SenderIdentity(
            agency_id=agency,
            signing_kid=cert_kid(agency, signing_cert),
            signing_key=read_private_key(settings.keys.signing_key),
        ),
        directory=lambda: holder.directory,
        policy=policy,
        crossings=crossings,
    )
    return border, holder, policies


def _log_outcome(direction: str, outcome: Outcome, trace: str | None = None) -> None:
    fields: dict[str, Any] = {
        "direction": direction,
        "message_id": outcome.message_id,
        "type": outcome.message_type,
        "sender": outcome.sender,
        "traceparent": trace,
    }
    if outcome.refused:
        log.warning("message_refused", reason=outcome.refused, detail=outcome.detail, **fields)
        return
    for decision in outcome.decisions:
        log.info(
            "border_decision",
            verdict=decision.verdict.value,
            rule_id=decision.rule_id,
            reason=decision.reason,
            peer=decision.peer,
            recipient=decision.recipient,
            **fields,
        )
    # Per message, at debug: the decisions above are what an operator must see (once each).
    log.debug(
        "message_routed",
        relayed_to=list(outcome.relayed_to),
        rejected_for=list(outcome.rejected_for),
        **fields,
    )


def _headers(p: Publish, trace: str | None) -> dict[str, str]:
    # The input's traceparent goes on every output (the message relayed, and our evidence).
    headers = {"Nats-Msg-Id": p.msg_id}
    if trace is not None:
        headers[TRACEPARENT] = trace
    return headers


def _publication(js: JetStreamContext, p: Publish, trace: str | None) -> Awaitable[object]:
    return js.publish(p.subject, p.data, timeout=PUBLISH_TIMEOUT, headers=_headers(p, trace))


async def _publish_all(
    js: JetStreamContext, publishes: tuple[Publish, ...], trace: str | None = None
) -> None:
    await asyncio.gather(*(_publication(js, p, trace) for p in publishes))


async def _publish_batch(
    js: JetStreamContext,
    outputs: Sequence[tuple[tuple[Publish, ...], str | None]],
    publisher: BatchPublisher | None = None,
) -> list[BaseException | None]:
    """Publish the outputs of every input of a batch concurrently (with a ``publisher``: all
    written, then all acks awaited together; without: one gather, one task per publication);
    per input, the first failure of its publications, or None."""
    owners = [n for n, (publishes, _) in enumerate(outputs) for _ in publishes]
    results: Sequence[object]
    if publisher is not None:
        results = await publisher.publish_all(
            [
                (p.subject, p.data, _headers(p, trace))
                for publishes, trace in outputs
                for p in publishes
            ],
            timeout=PUBLISH_TIMEOUT,
        )
    else:
        results = await asyncio.gather(
            *(_publication(js, p, trace) for publishes, trace in outputs for p in publishes),
            return_exceptions=True,
        )
    failed: list[BaseException | None] = [None] * len(outputs)
    for owner, result in zip(owners, results, strict=True):
        if isinstance(result, BaseException) and failed[owner] is None:
            failed[owner] = result
    return failed


class GroupRecorder:
    """The decisions of the loops that settle a batch at the same time, recorded in ONE commit
    and one worker-thread hop (a group commit): the first caller starts a flush, those that
    arrive meanwhile join the next one; nothing waits to fill a group. Each caller returns
    only once its own decisions are committed. If a group's commit fails, each caller's
    decisions are recorded again on their own, so one loop's fault fails no other loop."""

    def __init__(
        self, record_many: Callable[[Sequence[tuple[str, Sequence[Outcome]]]], None]
    ) -> None:
        self._record_many = record_many
        self._waiting: list[tuple[tuple[str, Sequence[Outcome]], asyncio.Future[None]]] = []
        self._flushing = False
        self._flush: asyncio.Task[None] | None = None  # referenced while it runs

    async def record(self, direction: str, outcomes: Sequence[Outcome]) -> None:
        """Record ``outcomes`` (decided in ``direction``); raises what the ledger raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(((direction, outcomes), done))
        if not self._flushing:
            self._flushing = True
            self._flush = asyncio.get_running_loop().create_task(self._flush_all())
        await done

    async def _flush_all(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    await asyncio.to_thread(self._record_many, [item for item, _ in group])
                except Exception as exc:  # noqa: BLE001 - handed to the caller(s)
                    if len(group) == 1:
                        _answer(group[0][1], exc)
                        continue
                    for item, done in group:  # one by one: whose decisions fail?
                        try:
                            await asyncio.to_thread(self._record_many, [item])
                        except Exception as alone:  # noqa: BLE001 - that caller's answer
                            _answer(done, alone)
                        else:
                            _answer(done, None)
                    continue
                except BaseException:
                    for _, done in group:  # cancelled (the gateway stops): nobody waits
                        done.cancel()
                    raise
                for _, done in group:
                    _answer(done, None)
        finally:
            self._flushing = False


def _answer(done: asyncio.Future[None], error: Exception | None) -> None:
    if done.done():  # the caller went away (cancelled)
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


async def _recorded(
    record: Callable[[str, Sequence[Outcome]], None] | GroupRecorder,
    direction: str,
    outcomes: Sequence[Outcome],
) -> None:
    # In a worker thread: a locked or slow store must not stop the event loop (the other
    # lanes, the metrics endpoint).
    if isinstance(record, GroupRecorder):
        await record.record(direction, outcomes)
    else:
        await asyncio.to_thread(record, direction, outcomes)


async def _pull_loop(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    decide: Callable[[bytes, str], Outcome],
    direction: str,
    stop: asyncio.Event,
    record: Callable[[str, Sequence[Outcome]], None] | GroupRecorder | None = None,
    metrics: GatewayMetrics | None = None,
    bucket: TokenBucket | None = None,
    sender: str | None = None,
    setback: Setback | None = None,
    crossings: SharedCrossings | None = None,
    publisher: BatchPublisher | None = None,
) -> None:
    """Fetch and settle batches from one durable until ``stop``. With a ``bucket`` (fair
    share), take only as many messages as the sender's tokens allow: the rest wait in the
    stream, delayed, never dropped."""
    sub = lean_fetch(await js.pull_subscribe_bind(durable=durable, stream=stream))
    faults = FaultLog(log, "fetch", stream=stream, durable=durable)
    throttle = _Throttle(direction=direction, sender=sender, metrics=metrics)
    while not stop.is_set():
        want = FETCH_BATCH
        if bucket is not None:
            wait = bucket.wait(time.monotonic())
            if wait > 0:
                throttle.held(wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=min(wait, FETCH_TIMEOUT))
                continue
            want = min(FETCH_BATCH, bucket.available(time.monotonic()))
        try:
            batch = await sub.fetch(want, timeout=FETCH_TIMEOUT)
        except TimeoutError:
            throttle.released()
            continue
        except (NatsError, JetStreamError) as exc:
            # Retried forever (the server may be restarting, the consumer being re-created).
            faults.failed(exc)
            await asyncio.sleep(0.5)
            continue
        faults.ok()
        if bucket is not None:
            bucket.take(len(batch), time.monotonic())
            if len(batch) < want:
                throttle.released()  # the sender's backlog is drained: no longer held back
        await _settle_batch(
            js,
            batch,
            stream=stream,
            decide=decide,
            direction=direction,
            record=record,
            metrics=metrics,
            setback=setback,
            crossings=crossings,
            publisher=publisher,
        )


@dataclass(slots=True)
class _Throttle:
    """Says once when a sender starts being held back and once when it no longer is (log
    event naming the sender, counter and gauge without it), not once per wait."""

    direction: str
    sender: str | None
    metrics: GatewayMetrics | None
    holding: bool = False

    def held(self, wait: float) -> None:
        if self.holding:
            return
        self.holding = True
        log.warning(
            "sender_throttled",
            direction=self.direction,
            sender=self.sender,
            wait_seconds=round(wait, 3),
        )
        if self.metrics is not None:
            self.metrics.throttled.labels(direction=self.direction).inc()
            self.metrics.throttled_senders.labels(direction=self.direction).inc()

    def released(self) -> None:
        if not self.holding:
            return
        self.holding = False
        log.info("sender_unthrottled", direction=self.direction, sender=self.sender)
        if self.metrics is not None:
            self.metrics.throttled_senders.labels(direction=self.direction).dec()


@dataclass(frozen=True, slots=True)
class _Lane:
    """One consumer the gateway reads in its own pull loop: whose messages (``sender``: an
    agency on SUBMIT, a peer country on INBOX), and the config to create it when missing."""

    durable: str
    sender: str
    create: ConsumerConfig | None = None


async def _consumers(js: JetStreamContext, stream: str) -> list[ConsumerConfig]:
    try:
        return [info.config for info in await js.consumers_info(stream)]
    except (NatsError, JetStreamError) as exc:
        log.warning("consumers_unlisted", stream=stream, error=repr(exc))
        return []


async def _submit_lanes(js: JetStreamContext, listed: Sequence[str]) -> list[_Lane]:
    """A lane for every agency with a SUBMIT consumer (whatever the directory now says: a
    revoked agency's submissions must still be taken and refused) and for every agency of the
    directory (its consumer is created if it joined later)."""
    prefix = subjects.submit_subject("")
    found = {
        config.filter_subject.removeprefix(prefix)
        for config in await _consumers(js, subjects.SUBMIT_STREAM)
        if (config.durable_name or "").startswith("submit-") and config.filter_subject
    }
    return [
        _Lane(
            durable=subjects.gateway_submit_durable(agency),
            sender=agency,
            create=None if agency in found else submit_consumer(agency),
        )
        for agency in sorted(found | set(listed))
    ]


async def _inbox_lanes(js: JetStreamContext) -> list[_Lane]:
    """A lane for every peer country's INBOX consumer (made by the stream setup), and for the
    single consumer of earlier versions while it still exists."""
    lanes = []
    for config in await _consumers(js, subjects.INBOX_STREAM):
        durable = config.durable_name or ""
        if durable.startswith("inbox-") or durable == subjects.LEGACY_GATEWAY_INBOX_DURABLE:
            lanes.append(_Lane(durable=durable, sender=durable.removeprefix("inbox-").upper()))
    return lanes


async def _run_lanes(
    js: JetStreamContext,
    *,
    stream: str,
    direction: str,
    lanes_now: Callable[[], Awaitable[list[_Lane]]],
    bucket: Callable[[], TokenBucket | None],
    decide: Callable[[bytes, str], Outcome],
    stop: asyncio.Event,
    record: Callable[[str, Sequence[Outcome]], None] | GroupRecorder | None = None,
    metrics: GatewayMetrics | None = None,
    setback: Setback | None = None,
    crossings: SharedCrossings | None = None,
    publisher: BatchPublisher | None = None,
) -> None:
    """One pull loop per lane (consumer) of ``stream``, each with its own token bucket (if
    any), so one sender's backlog or flood never delays another sender. Lanes that appear
    later (an agency joining the directory) start at the next check. A loop that fails ends
    this task with its error (the gateway then fails fast)."""
    running: dict[str, asyncio.Task[None]] = {}
    try:
        while not stop.is_set():
            for lane in await lanes_now():
                if lane.durable in running:
                    continue
                if lane.create is not None:
                    try:
                        await ensure_consumer(js, stream, lane.create)
                    except (NatsError, JetStreamError) as exc:
                        # The server may be restarting: try again at the next check.
                        log.warning("consumer_not_created", sender=lane.sender, error=repr(exc))
                        continue
                running[lane.durable] = asyncio.create_task(
                    _pull_loop(
                        js,
                        stream=stream,
                        durable=lane.durable,
                        decide=decide,
                        direction=direction,
                        stop=stop,
                        record=record,
                        metrics=metrics,
                        bucket=bucket(),
                        sender=lane.sender,
                        setback=setback,
                        crossings=crossings,
                        publisher=publisher,
                    ),
                    name=f"{stream}-{lane.durable}",
                )
            watch = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                {watch, *running.values()},
                timeout=DIRECTORY_CHECK_SECONDS,
                return_when=asyncio.FIRST_COMPLETED,
            )
            watch.cancel()
            for task in done:
                if task is not watch and not stop.is_set():
                    raise task.exception() or RuntimeError(f"lane {task.get_name()} ended")
    finally:
        for task in running.values():
            task.cancel()
        for task in running.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _settle_batch(
    js: JetStreamContext,
    batch: Sequence[Msg],
    *,
    stream: str,
    decide: Callable[[bytes, str], Outcome],
    direction: str,
    record: Callable[[str, Sequence[Outcome]], None] | GroupRecorder | None,
    metrics: GatewayMetrics | None,
    setback: Setback | None = None,
    crossings: SharedCrossings | None = None,
    publisher: BatchPublisher | None = None,
) -> None:
    """Decide every message of one fetch, record the decisions (one audit commit), publish
    all their outputs concurrently, then ack each input whose outputs were all acknowledged.
    Under load a fetch returns many messages, so the audit commit, the publish round trips and
    the event-loop turns are shared; under light load it is one.

    An input that cannot be settled goes to ``setback`` (a nak with a delay growing per
    delivery attempt; after the bound, the quarantine): a decision that raises, an audit record
    that cannot be written for this input (the others of the batch are recorded one by one),
    a publication NATS will never accept. Timeouts and an unavailable store are retried
    without a bound: they are not about one input."""
    setback = setback or Setback(None, clock=utc_now)
    if crossings is not None:
        # What the border rules will ask about (shared by the country's gateway instances).
        try:
            await crossings.prefetch(wanted(msg.data for msg in batch))
        except (NatsError, JetStreamError, TimeoutError) as exc:
            for msg in batch:
                await setback.failed(
                    msg, exc, direction=direction, stream=stream, stage="crossings", permanent=False
                )
            return
    decided: list[tuple[Msg, Outcome, str | None]] = []
    for msg in batch:
        trace = from_headers(msg.headers)
        started = time.perf_counter()
        try:
            outcome = decide(msg.data, msg.subject)
        except Exception as exc:  # noqa: BLE001 - a bug: retried, then quarantined
            await setback.failed(
                msg, exc, direction=direction, stream=stream, stage="decide", permanent=True
            )
            continue
        if metrics is not None:
            record_outcome(metrics, direction, outcome, seconds=time.perf_counter() - started)
            with contextlib.suppress(NatsError, JetStreamError, AttributeError, TypeError):
                if msg.metadata.num_delivered > 1:
                    metrics.redeliveries.labels(kind=stream).inc()
        _log_outcome(direction, outcome, trace)
        decided.append((msg, outcome, trace))
    if not decided:
        return
    if record is not None:
        # Recorded before anything is published: no border crossing without its record.
        # The ledger serialises its own writes; a GroupRecorder shares commits between loops.
        try:
            await _recorded(record, direction, [outcome for _, outcome, _ in decided])
        except Exception as batch_exc:  # noqa: BLE001 - find the input(s) at fault, one each
            if store_unavailable(batch_exc):
                # Not about any one input: all wait and come again, none is blamed.
                for msg, _, _ in decided:
                    await setback.failed(
                        msg,
                        batch_exc,
                        direction=direction,
                        stream=stream,
                        stage="record",
                        permanent=False,
                    )
                return
            kept: list[tuple[Msg, Outcome, str | None]] = []
            for item in decided:
                try:
                    await _recorded(record, direction, [item[1]])
                except Exception as exc:  # noqa: BLE001 - settled by setback
                    await setback.failed(
                        item[0],
                        exc,
                        direction=direction,
                        stream=stream,
                        stage="record",
                        permanent=local_permanent(exc),
                    )
                    continue
                kept.append(item)
            decided = kept
    if not decided:
        return
    if crossings is not None:
        # Written before anything is published, like the audit record.
        try:
            await crossings.record(outcome for _, outcome, _ in decided)
        except (NatsError, JetStreamError, TimeoutError, RuntimeError) as exc:
            for msg, _, _ in decided:
                await setback.failed(
                    msg, exc, direction=direction, stream=stream, stage="crossings", permanent=False
                )
            return
    results = await _publish_batch(
        js, [(outcome.publishes, trace) for _, outcome, trace in decided], publisher
    )
    for (msg, _, _), result in zip(decided, results, strict=True):
        if result is not None:
            if metrics is not None:
                metrics.publish_failures.labels(direction=direction).inc()
            await setback.failed(
                msg,
                result,
                direction=direction,
                stream=stream,
                stage="publish",
                permanent=publish_permanent(result),
            )
            continue
        with contextlib.suppress(NatsError, JetStreamError):
            await msg.ack()


def _retrier(
    js: JetStreamContext,
    ledger: GatewayLedger,
    decide: dict[str, Callable[[bytes, str], Outcome]],
    *,
    record: Callable[[str, Sequence[Outcome]], None],
    directory: Callable[[], Directory],
    clock: Callable[[], datetime],
    crossings: SharedCrossings | None = None,
) -> Callable[[Item], Awaitable[None]]:
    """Settle one quarantined input an operator asked to retry, through the same steps as
    the loops (decide, record, publish; or keep a checkpoint). Raises if it fails again."""
    prefix = subjects.audit_subject("")

    async def settle(item: Item) -> None:
        if item.direction == "audit":
            await asyncio.to_thread(
                ledger.accept_checkpoint,
                item.data.decode("ascii", "replace"),
                subject_agency=item.subject.removeprefix(prefix),
                directory=directory(),
                now=clock(),
            )
            return
        if crossings is not None:
            await crossings.prefetch(wanted([item.data]))
        outcome = decide[item.direction](item.data, item.subject)
        _log_outcome(item.direction, outcome)
        record(item.direction, [outcome])
        if crossings is not None:
            await crossings.record([outcome])
        await _publish_all(js, outcome.publishes)

    return settle


async def run_audit_roots(
    js: JetStreamContext,
    ledger: GatewayLedger,
    *,
    directory: Callable[[], Directory],
    clock: Callable[[], datetime],
    stop: asyncio.Event,
    metrics: GatewayMetrics | None = None,
    setback: Setback | None = None,
) -> None:
    """Keep every verified audit checkpoint the country's nodes publish on ``cb.audit.*``;
    a checkpoint that does not verify is logged and dropped (term), never kept. One that
    raises anything else is retried with backoff and quarantined after the bound (an
    unavailable store is retried without a bound)."""
    setback = setback or Setback(None, clock=clock)
    sub = await js.pull_subscribe_bind(
        durable=subjects.GATEWAY_AUDIT_DURABLE, stream=subjects.AUDIT_STREAM
    )
    prefix = subjects.audit_subject("")
    while not stop.is_set():
        try:
            batch = await sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT)
        except TimeoutError:
            continue
        except (NatsError, JetStreamError):
            await asyncio.sleep(0.5)
            continue
        for msg in batch:
            agency = msg.subject.removeprefix(prefix)
            try:
                checkpoint = await asyncio.to_thread(
                    ledger.accept_checkpoint,
                    msg.data.decode("ascii", "replace"),
                    subject_agency=agency,
                    directory=directory(),
                    now=clock(),
                )
            except Exception as exc:  # noqa: BLE001 - refusal, or retried then quarantined
                if not isinstance(exc, CasebridgeError):
                    # Our fault (e.g. SQLite busy, a bug): retried; never dropped unkept.
                    await setback.failed(
                        msg,
                        exc,
                        direction="audit",
                        stream=subjects.AUDIT_STREAM,
                        stage="checkpoint",
                        permanent=local_permanent(exc),
                    )
                    continue
                if metrics is not None:
                    metrics.audit_checkpoints.labels(result="refused").inc()
                log.warning("audit_checkpoint_refused", node=agency, reason=exc.reason.value)
                with contextlib.suppress(NatsError, JetStreamError):
                    await msg.term()
                continue
            if metrics is not None:
                metrics.audit_checkpoints.labels(result="kept").inc()
            log.info(
                "audit_checkpoint_kept",
                node=agency,
                first_seq=checkpoint.first_seq,
                last_seq=checkpoint.last_seq,
            )
            with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                await msg.ack_sync(timeout=PUBLISH_TIMEOUT)


async def run_gateway(
    settings: GatewaySettings,
    *,
    stop: asyncio.Event | None = None,
    clock: Callable[[], datetime] = utc_now,
    ready: Callable[[], Awaitable[None]] | None = None,
    registry: CollectorRegistry | None = None,
) -> None:
    """Run one border gateway until ``stop`` is set (or forever).

    Serves Prometheus metrics on ``http://<api.host>:<api.port>/metrics`` (``registry``: a new
    one per gateway when None).
    """
    stop = stop or asyncio.Event()
    registry = registry if registry is not None else CollectorRegistry()
    country = agency_country(settings.agency)
    metrics = GatewayMetrics(registry, country=country)
    build_info(registry, component="gateway", country=country)
    ledger = GatewayLedger(settings.store_path, agency=settings.agency)
    # The border reads crossings shared by every gateway of the country (a JetStream bucket,
    # attached once connected); the ledger keeps this instance's audit of them.
    shared = SharedCrossings()
    border, holder, _policies = build_border(
        settings,
        now=clock(),
        crossings=shared,
        registry=registry,
        min_serial=ledger.directory_serial(),
        accepted=ledger.accept_directory_serial,
    )
    own = [("signing", read_certificate(settings.keys.signing_cert))]
    if settings.nats.cert_file is not None:
        own.append(("tls", read_certificate(settings.nats.cert_file)))
    registry.register(StoreSpaceCollector(settings.store_path))
    registry.register(
        ExpiryCollector(
            gateway_expiries(country=country, certificates=own, directory=lambda: holder.directory),
            clock=clock,
        )
    )
    quarantine = GatewayQuarantine(settings.store_path)
    setback = Setback(quarantine, metrics=metrics, clock=clock)

    async def chunk_refused(refusal: ChunkRefusal) -> None:
        try:
            await asyncio.to_thread(ledger.record_chunk_refusal, refusal, now=clock())
        except sqlite3.Error:
            metrics.store_write_failures.inc()  # the chunk is offered again
            raise

    def record_many(batches: Sequence[tuple[str, Sequence[Outcome]]]) -> None:
        try:
            ledger.record_many(batches, now=clock())
        except sqlite3.Error:
            metrics.store_write_failures.inc()  # the inputs are retried (Setback)
            raise

    def record(direction: str, outcomes: Sequence[Outcome]) -> None:
        record_many([(direction, outcomes)])

    # The loops' decisions: concurrent batches of several lanes share a commit.
    recorder = GroupRecorder(record_many)

    nc = await connect(
        settings.nats.url,
        tls=tls_context(
            ca_file=settings.nats.ca_file,
            cert_file=settings.nats.cert_file,
            key_file=settings.nats.key_file,
        ),
        inbox_prefix=subjects.inbox_prefix(settings.agency),
        name=f"gateway {settings.agency}",
    )
    js = nc.jetstream()
    shared.attach(await open_bucket(js))
    # The loops' outputs: a batch's publications written at once, their acks awaited together.
    publisher = BatchPublisher(nc)

    def swap_directory(directory: Directory) -> None:
        if directory.serial <= holder.directory.serial:
            return  # the file reload put a newer one in force meanwhile: never go back
        holder.directory = directory
        if holder.accepted is not None:
            holder.accepted(directory.serial)

    # Directory and policy published over the federation, hot-swapped (distribution.py).
    watcher = watcher_for(
        js,
        country=country,
        root_cert=read_certificate(settings.root_cert),
        directory=holder.directory,
        swap=swap_directory,
        policies=_policies,
        registry=registry,
        clock=clock,
        cache=directory_cache(settings.store_path),
    )
    prefix = "cb.submit."

    def egress(data: bytes, subject: str) -> Outcome:
        agency = subject[len(prefix) :] if subject.startswith(prefix) else ""
        return border.submission(data, subject_agency=agency, now=clock())

    def ingress(data: bytes, _subject: str) -> Outcome:
        return border.inbound(data, now=clock())

    async def refresh() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=DIRECTORY_CHECK_SECONDS)
            holder.refresh(clock())

    def readiness() -> tuple[bool, str]:
        # Ready once connected with the loops running: a gateway cut off from its country
        # server relays nothing, so it should not count as an available replica.
        if stop.is_set():
            return False, "stopping"
        return (True, "nats connected") if nc.is_connected else (False, "nats disconnected")

    metrics_server = MetricsServer(
        registry, host=settings.api.host, port=settings.api.port, ready=readiness
    )
    await metrics_server.__aenter__()
    log.info(
        "gateway_started",
        agency=settings.agency,
        nats=settings.nats.url,
        metrics=f"http://{settings.api.host}:{settings.api.port}/metrics",
    )
    tasks = [
        # Attachment chunks follow their messages (broker/gateway/attachments.py).
        *(
            asyncio.create_task(
                run_chunk_lanes(
                    js,
                    direction=d,
                    code=country,
                    agencies=lambda: local_agencies(holder.directory, country),
                    crossings=shared,
                    stop=stop,
                    clock=clock,
                    refused=chunk_refused,
                    count=metrics.chunk_counter(d),
                )
            )
            for d in ("egress", "ingress")
        ),
        asyncio.create_task(
            _run_lanes(
                js,
                stream=subjects.SUBMIT_STREAM,
                direction="egress",
                lanes_now=lambda: _submit_lanes(js, local_agencies(holder.directory, country)),
                bucket=lambda: TokenBucket(
                    rate=settings.fair_share.sender_rate,
                    burst=settings.fair_share.sender_burst,
                    now=time.monotonic(),
                ),
                decide=egress,
                stop=stop,
                record=recorder,
                metrics=metrics,
                setback=setback,
                crossings=shared,
                publisher=publisher,
            )
        ),
        asyncio.create_task(
            _run_lanes(
                js,
                stream=subjects.INBOX_STREAM,
                direction="ingress",
                lanes_now=lambda: _inbox_lanes(js),
                # Peer countries share the time fairly (one loop each); each peer's own
                # egress buckets already limit every agency behind it.
                bucket=lambda: None,
                decide=ingress,
                stop=stop,
                record=recorder,
                metrics=metrics,
                setback=setback,
                crossings=shared,
                publisher=publisher,
            )
        ),
        asyncio.create_task(
            run_audit_roots(
                js,
                ledger,
                directory=lambda: holder.directory,
                clock=clock,
                stop=stop,
                metrics=metrics,
                setback=setback,
            )
        ),
        asyncio.create_task(refresh()),
        asyncio.create_task(watcher.run(stop)),
        asyncio.create_task(
            run_retries(
                quarantine,
                _retrier(
                    js,
                    ledger,
                    {"egress": egress, "ingress": ingress},
                    record=record,
                    directory=lambda: holder.directory,
                    clock=clock,
                    crossings=shared,
                ),
                stop=stop,
                clock=clock,
            )
        ),
    ]
    if ready is not None:
        await ready()
    stopping = asyncio.create_task(stop.wait())
    try:
        # Fail fast: a loop that dies of an unexpected error ends the process with that
        # error, so the supervisor restarts it and "component down" fires, instead of a
        # gateway that looks alive and relays nothing. (NATS faults do not end a loop: they
        # are retried and logged as fetch_failed.)
        done, _ = await asyncio.wait({stopping, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            # Loops end by themselves once ``stop`` is set: that is the orderly shutdown.
            if task is not stopping and not task.cancelled() and not stop.is_set():
                error = task.exception() or RuntimeError("a gateway loop ended")
                log.error("gateway_loop_failed", agency=settings.agency, error=repr(error))
                raise error
    finally:
        for task in (stopping, *tasks):
            task.cancel()
        for task in (stopping, *tasks):
            # Cancelled now, or already failed (and reported above).
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # close, not drain: nats-py's drain waits for the pull subscriptions' pending queues,
        # which nobody reads once the loops are cancelled, so it hung for drain_timeout (30 s).
        # Unacked inputs are redelivered after the ack wait; the outputs are deduplicated.
        with contextlib.suppress(NatsError, JetStreamError):
            await nc.close()
        ledger.close()
        quarantine.close()
        await metrics_server.__aexit__(None, None, None)
        log.info("gateway_stopped", agency=settings.agency)
