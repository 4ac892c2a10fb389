"""The border gateway's relay of attachment chunks (docs/federation.md, "Attachments").

What it is for
    A chunk crosses a border only behind its message: the gateway relays it when the
    country's ``CROSSINGS`` bucket shows that this border let the chunk's message through
    (egress: submitted by the agency the chunk's subject names; ingress: sent from the country
    the chunk came from), and only towards where that message went (the peer countries of its
    recipients, or the local recipient agencies). The policy decision on the files (count,
    sizes, declared types: docs/policy.md section 13) was taken on the message's signed header;
    a chunk of a refused message never crosses. :func:`plan_chunk` decides (pure), the loop
    around it fetches, publishes and settles.

    A chunk whose message is not (yet) recorded waits (nak with a growing delay); it is dropped
    when its message can no longer be waiting: on egress when the agency's submission lane is
    idle (its node publishes chunks only after the message was acknowledged, so the message
    was decided already), and in any case after :data:`ORPHAN_SECONDS`.

    Chunks are read through one consumer per lane (an agency on egress, a peer country on
    ingress), each in its own loop: a chunk waiting for its message stays pending on its own
    lane's consumer, so one sender's waiting chunks (or a flood of junk ones) can fill only its
    own window, never the one every other sender's files need (:func:`run_chunk_lanes`).

What it must never do
    Read or hold content (chunks are AES-GCM ciphertext under keys it never has), relay a
    chunk whose message it did not let through or that its message did not declare (file,
    index, exact size: :func:`count_chunk`), or hold more than two fetch batches in memory per
    lane moving chunks (one relayed, the next being fetched; an idle lane holds none).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeAlias

import structlog
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError

from broker.core import attachment_wire as aw
from broker.core import wire as subjects
from broker.core.attachments import CHUNK_OVERHEAD, CHUNK_SIZES
from broker.core.header import agency_country
from broker.core.ids import is_uuid, is_uuid4
from broker.errors import Reason
from broker.federation.attachment_streams import att_egress_consumer
from broker.gateway.border import Crossing
from broker.gateway.crossings import SharedCrossings

log = structlog.get_logger("casebridge.gateway.attachments")

# x 512 KiB at most; the next batch is fetched while one is relayed, so 4 MiB at most is the
# most chunk bytes the relay holds at once.
FETCH_BATCH: Final = 4
FETCH_TIMEOUT: Final = 1.0
PUBLISH_TIMEOUT: Final = 10.0
MAX_CHUNK_BYTES: Final = max(CHUNK_SIZES) + CHUNK_OVERHEAD
ORPHAN_SECONDS: Final = 3600.0
MAX_WAIT_SECONDS: Final = 30.0
HOLD_SECONDS: Final = 2.0


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkPlan:
    """What to do with one chunk: publish to ``to`` (then ack), wait ``delay`` s, or drop.

    A dropped chunk that contradicts what its message declared also carries ``refused``, the
    reason code of the refusal (logged in the gateway's audit log, once per file and reason).
    """

    to: tuple[str, ...] = ()
    delay: float | None = None
    drop: str | None = None  # why, for the log
    refused: Reason | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkRefusal:
    """A chunk refused for contradicting its message's declared files (for the audit log).

    ``peer``: the sending agency (egress) or the country the chunk came from (ingress);
    ``exp``: the message's expiry where the border knows it (how long to remember the
    refusal, so that the same file's other bad chunks are logged once)."""

    direction: str
    message_id: str
    attachment_id: str
    index: int
    reason: Reason
    detail: str
    peer: str
    exp: int | None


# Records a refusal in the gateway's audit log (broker/gateway/audit.py).
Refused: TypeAlias = Callable[[ChunkRefusal], Awaitable[None]]
# Counts a settled chunk: (outcome, bytes) — the gateway's metrics.
ChunkCount: TypeAlias = Callable[[str, int], None]


def count_chunk(
    crossings: Sequence[Crossing], attachment_id: str, index: int, size: int
) -> tuple[Reason, str] | None:
    """Check one chunk against the files its message's signed header declared (what the
    border can see: ids, sizes, chunk counts); the refusal ``(reason, why)``, or None.

    Counting needs no state: every chunk of a file has an index below the declared count and
    exactly the sealed length the descriptor gives that index, and one ``Nats-Msg-Id`` per
    index (a chunk offered again is a duplicate downstream, not one more). So no more chunks
    and no more bytes than declared can cross, whichever gateway instance relays them.
    Records that do not know the descriptors (``attachments`` None) are not counted.
    """
    known = [c.attachments for c in crossings if c.attachments is not None]
    if not known:
        return None
    declared = {d.id: d for files in known for d in files}
    d = declared.get(attachment_id)
    if d is None:
        return Reason.ATTACHMENT_CHUNK_INVALID, f"attachment {attachment_id} is not declared"
    if index >= d.chunks:
        return (
            Reason.ATTACHMENT_SIZE_MISMATCH,
            f"attachment {attachment_id}: chunk {index} beyond the {d.chunks} declared",
        )
    want = d.chunk_plain_size(index) + CHUNK_OVERHEAD
    if size != want:
        return (
            Reason.ATTACHMENT_SIZE_MISMATCH,
            f"attachment {attachment_id}: chunk {index} has {size} bytes, {want} declared",
        )
    return None


def _routing(headers: Mapping[str, str]) -> tuple[str, str, int] | None:
    message_id = headers.get(aw.MESSAGE_HEADER, "")
    attachment_id = headers.get(aw.ATTACHMENT_HEADER, "")
    index = headers.get(aw.INDEX_HEADER, "")
    if not (is_uuid(message_id) and is_uuid4(attachment_id) and index.isdigit()):
        return None
    return message_id, attachment_id, int(index)


def plan_chunk(
    *,
    direction: str,
    code: str,
    subject: str,
    headers: Mapping[str, str],
    size: int,
    crossings: Sequence[Crossing],
    age_seconds: float,
    deliveries: int,
    lane_idle: bool,
) -> ChunkPlan:
    """Decide one chunk. ``crossings``: the records of its message; ``lane_idle``: (egress)
    the sending agency's submission lane has nothing pending."""
    routing = _routing(headers)
    if routing is None:
        return ChunkPlan(drop="chunk headers missing or malformed")
    if size > MAX_CHUNK_BYTES:
        return ChunkPlan(
            drop=f"chunk of {size} bytes is over {MAX_CHUNK_BYTES}",
            refused=Reason.ATTACHMENT_SIZE_MISMATCH,
        )
    message_id, attachment_id, index = routing
    me = code.upper()
    if direction == "egress":
        sender = subject.removeprefix(aw.att_submit_subject(""))
        found = [c for c in crossings if c.direction == "egress" and c.sender == sender]
        to = sorted(
            {aw.att_out_subject(me, agency_country(r)) for c in found for r in c.recipients}
            - {aw.att_out_subject(me, me)}
        )
    else:
        parts = subject.split(".")  # cb.att.out.<from>.<to>
        origin = parts[3].upper() if len(parts) == 5 else ""
        found = [
            c for c in crossings if c.direction == "ingress" and agency_country(c.sender) == origin
        ]
        to = sorted(
            {
                aw.att_deliver_subject(r)
                for c in found
                for r in c.recipients
                if agency_country(r) == me
            }
        )
    if found and to:
        refusal = count_chunk(found, attachment_id, index, size)
        if refusal is not None:
            return ChunkPlan(drop=refusal[1], refused=refusal[0])
        return ChunkPlan(to=tuple(to))
    if found:
        return ChunkPlan(drop=f"message {message_id} went nowhere chunks can follow")
    if age_seconds > ORPHAN_SECONDS or (direction == "egress" and lane_idle):
        return ChunkPlan(drop=f"message {message_id} did not cross this border")
    return ChunkPlan(delay=wait_delay(deliveries))


def wait_delay(deliveries: int) -> float:
    """How long a chunk whose message is not recorded yet waits before it is offered again:
    the message is usually a few hundred milliseconds ahead, so start short and back off."""
    return float(min(0.25 * 2.0 ** min(max(deliveries, 1) - 1, 8), MAX_WAIT_SECONDS))


async def _lane_idle(js: JetStreamContext, agency: str) -> bool:
    try:
        info = await js.consumer_info(
            subjects.SUBMIT_STREAM, subjects.gateway_submit_durable(agency)
        )
    except NotFoundError:
        return True
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def _settle(
    js: JetStreamContext,
    msg: Msg,
    *,
    direction: str,
    code: str,
    crossings: SharedCrossings,
    now: datetime,
    idle: dict[str, bool],
    relays: list[Coroutine[Any, Any, None]],
    refused: Refused | None = None,
    count: ChunkCount | None = None,
) -> str:
    """Decide one chunk; a relayed one is queued in ``relays`` (published in order, then
    acknowledged, by the caller: a batch's publishes are in flight together). The outcome:
    ``relayed``, ``waiting``, ``dropped`` or ``refused`` (beyond what its message declared)."""
    headers = dict(msg.headers or {})
    meta = msg.metadata
    routing = _routing(headers)
    found: Sequence[Crossing] = crossings.crossings(routing[0]) if routing else ()
    lane_idle = False
    if direction == "egress" and routing is not None and not found:
        agency = msg.subject.removeprefix(aw.att_submit_subject(""))
        if agency not in idle:
            idle[agency] = await _lane_idle(js, agency)
        lane_idle = idle[agency]
        if lane_idle:
            # The lane may have settled the message since the batch's crossings were read:
            # read them again before concluding that the message did not cross.
            await crossings.prefetch([routing[0]])
            found = crossings.crossings(routing[0])
    plan = plan_chunk(
        direction=direction,
        code=code,
        subject=msg.subject,
        headers=headers,
        size=len(msg.data),
        crossings=found,
        age_seconds=(now - meta.timestamp).total_seconds(),
        deliveries=meta.num_delivered or 1,
        lane_idle=lane_idle,
    )
    if plan.drop is not None:
        if plan.refused is not None and routing is not None and refused is not None:
            # Logged before the chunk is let go: if the log cannot be written, the chunk is
            # offered again (nak by the caller) rather than refused unlogged.
            await refused(
                ChunkRefusal(
                    direction=direction,
                    message_id=routing[0],
                    attachment_id=routing[1],
                    index=routing[2],
                    reason=plan.refused,
                    detail=plan.drop,
                    peer=_peer(direction, msg.subject),
                    exp=max((c.exp for c in found), default=None),
                )
            )
        log.warning(
            "chunk_dropped",
            direction=direction,
            why=plan.drop,
            reason=plan.refused.value if plan.refused is not None else None,
            subject=msg.subject,
        )
        await msg.term()
        return "refused" if plan.refused is not None else "dropped"
    if plan.delay is not None:
        await msg.nak(delay=plan.delay)
        return "waiting"
    assert routing is not None  # noqa: S101 - a relayed plan has valid routing
    forward = {k: headers[k] for k in (aw.MESSAGE_HEADER, aw.ATTACHMENT_HEADER, aw.INDEX_HEADER)}
    msg_id = aw.chunk_msg_id(routing[1], routing[2])
    relays.append(_relay(js, msg, plan.to, {**forward, "Nats-Msg-Id": msg_id}, count))
    return "relayed"


def _peer(direction: str, subject: str) -> str:
    """Who a chunk came from: the agency of its submission subject (egress) or the country
    of its outbox subject ``cb.att.out.<from>.<to>`` (ingress)."""
    if direction == "egress":
        return subject.removeprefix(aw.att_submit_subject(""))
    parts = subject.split(".")
    return parts[3].upper() if len(parts) == 5 else subject


async def _relay(
    js: JetStreamContext,
    msg: Msg,
    to: Sequence[str],
    headers: Mapping[str, str],
    count: ChunkCount | None = None,
) -> None:
    try:
        await asyncio.gather(
            *(
                js.publish(subject, msg.data, timeout=PUBLISH_TIMEOUT, headers=dict(headers))
                for subject in to
            )
        )
        await msg.ack()
        if count is not None:
            count("relayed", len(msg.data))
    except (NatsError, JetStreamError, TimeoutError) as exc:
        # Offered again soon (not after ack_wait): the recipient is waiting for it.
        log.warning("chunk_relay_fault", error=repr(exc))
        await _nak(msg, 1.0)


async def _nak(msg: Msg, delay: float) -> None:
    with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
        await msg.nak(delay=delay)


async def run_chunk_relay(
    js: JetStreamContext,
    *,
    direction: str,
    code: str,
    crossings: SharedCrossings,
    stop: asyncio.Event,
    clock: Callable[[], datetime],
    refused: Refused | None = None,
    durable: str | None = None,
    count: ChunkCount | None = None,
) -> None:
    """Relay chunks of one lane (``durable``; default: the single consumer of earlier
    versions) in one direction until ``stop`` (egress: ATT_SUBMIT -> ATT_OUT_*; ingress:
    ATT_INBOX -> ATT_DELIVER). NATS faults are retried; nothing is acked unrelayed."""
    if direction == "egress":
        stream, durable = aw.ATT_SUBMIT_STREAM, durable or aw.LEGACY_EGRESS_DURABLE
    else:
        stream, durable = aw.ATT_INBOX_STREAM, durable or aw.LEGACY_INGRESS_DURABLE
    sub = None
    # Files with a chunk waiting: (first waiting index, until, its delay). Later chunks of the
    # file wait as long as it does, across batches, so that the file keeps its order (the
    # recipient copes with reordering, at a cost) without every later chunk of a large file
    # coming back each second while its message is held up.
    held: dict[str, tuple[int, float, float]] = {}
    # The next batch is fetched while this one is relayed: at most two batches held.
    ahead: asyncio.Task[list[Msg]] | None = None
    while not stop.is_set():
        try:
            if sub is None:
                sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
            if ahead is None:
                ahead = asyncio.ensure_future(sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT))
            try:
                batch = await ahead
            except TimeoutError:
                ahead = None
                continue
            ahead = asyncio.ensure_future(sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT))
            ids = {r[0] for m in batch if (r := _routing(dict(m.headers or {}))) is not None}
            await crossings.prefetch(ids)
            idle: dict[str, bool] = {}
            now = time.monotonic()
            for attachment in [a for a, (_, until, _d) in held.items() if until < now]:
                del held[attachment]
            relays: list[Coroutine[Any, Any, None]] = []
            for msg in batch:
                headers = dict(msg.headers or {})
                attachment = headers.get(aw.ATTACHMENT_HEADER, "")
                index_text = headers.get(aw.INDEX_HEADER, "")
                index = int(index_text) if index_text.isdigit() else -1
                first, _until, waited = held.get(attachment, (-1, 0.0, 0.0))
                if 0 <= first < index:
                    # An earlier chunk of this file waits: this one waits as long, so that the
                    # file keeps its order (the recipient also copes with reordering).
                    await _nak(msg, waited)
                    if count is not None:
                        count("waiting", len(msg.data))
                    continue
                delay = 1.0
                try:
                    outcome = await _settle(
                        js,
                        msg,
                        direction=direction,
                        code=code,
                        crossings=crossings,
                        now=clock(),
                        idle=idle,
                        relays=relays,
                        refused=refused,
                        count=count,
                    )
                    delay = wait_delay(_deliveries(msg))
                except (NatsError, JetStreamError, TimeoutError, sqlite3.Error) as exc:
                    # Offered again soon (not after ack_wait): the recipient is waiting for it.
                    log.warning("chunk_relay_fault", direction=direction, error=repr(exc))
                    outcome = "waiting"
                    await _nak(msg, delay)
                if count is not None and outcome != "relayed":  # relayed: counted once acked
                    count(outcome, len(msg.data))
                if outcome == "waiting" and index >= 0:
                    earliest = min(index, held.get(attachment, (index, 0.0, 0.0))[0])
                    until = time.monotonic() + max(HOLD_SECONDS, delay)
                    held[attachment] = (earliest, until, delay)
                elif outcome == "relayed" and held.get(attachment, (-1, 0.0, 0.0))[0] == index:
                    del held[attachment]  # the chunk the file waited for is on its way
            # Tasks start in creation order: the chunks are published in the order fetched.
            await asyncio.gather(*(asyncio.ensure_future(r) for r in relays))
        except (NatsError, JetStreamError, RuntimeError) as exc:
            # Unsettled chunks come back after ack_wait; nothing is lost.
            log.warning("chunk_relay_fault", direction=direction, error=repr(exc))
            _cancel(ahead)
            ahead = None
            if await _consumer_gone(js, stream, durable):
                # Replaced by the stream setup (the single consumer of earlier versions) or
                # removed by an operator: this lane ends; the lanes are listed again.
                log.info("chunk_lane_gone", direction=direction, lane=durable)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    _cancel(ahead)


async def _consumer_gone(js: JetStreamContext, stream: str, durable: str) -> bool:
    """Whether the lane's consumer no longer exists (False when that cannot be told)."""
    try:
        await js.consumer_info(stream, durable)
    except NotFoundError:
        return True
    except (NatsError, JetStreamError, TimeoutError):
        return False
    return False


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered or 1)
    except (ValueError, TypeError, AttributeError):
        return 1


# How often the lanes are listed again (an agency that joined the directory gets its lane).
LANE_CHECK_SECONDS: Final = 30.0


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkLane:
    """One consumer of chunks read in its own loop, and its config when it must be created."""

    durable: str
    create: ConsumerConfig | None = None


async def chunk_lanes(
    js: JetStreamContext, *, direction: str, agencies: Sequence[str]
) -> list[ChunkLane]:
    """The lanes of one direction: every per-lane consumer found (a revoked agency's chunks
    must still be taken and dropped), one for every local agency of the directory on egress
    (created if it joined later), and the unfiltered consumer of earlier versions while it
    still exists (the stream setup replaces it)."""
    stream = aw.ATT_SUBMIT_STREAM if direction == "egress" else aw.ATT_INBOX_STREAM
    prefix = aw.EGRESS_DURABLE_PREFIX if direction == "egress" else aw.INGRESS_DURABLE_PREFIX
    legacy = aw.LEGACY_EGRESS_DURABLE if direction == "egress" else aw.LEGACY_INGRESS_DURABLE
    try:
        found = {info.config.durable_name or "" for info in await js.consumers_info(stream)}
    except (NatsError, JetStreamError) as exc:
        log.warning("consumers_unlisted", stream=stream, error=repr(exc))
        return []
    lanes = [ChunkLane(durable=d) for d in sorted(found) if d.startswith(prefix) or d == legacy]
    if direction == "egress" and legacy not in found:
        lanes += [
            ChunkLane(durable=aw.att_egress_durable(a), create=att_egress_consumer(a))
            for a in sorted(agencies)
            if aw.att_egress_durable(a) not in found
        ]
    return lanes


async def run_chunk_lanes(
    js: JetStreamContext,
    *,
    direction: str,
    code: str,
    agencies: Callable[[], Sequence[str]],
    crossings: SharedCrossings,
    stop: asyncio.Event,
    clock: Callable[[], datetime],
    refused: Refused | None = None,
    count: ChunkCount | None = None,
) -> None:
    """One :func:`run_chunk_relay` loop per lane of ``direction``, started as lanes appear
    (``agencies``: the local agencies the directory lists now). A loop that fails ends this
    task with its error (the gateway then fails fast)."""
    running: dict[str, asyncio.Task[None]] = {}
    try:
        while not stop.is_set():
            for lane in await chunk_lanes(js, direction=direction, agencies=agencies()):
                if lane.durable in running:
                    continue
                if lane.create is not None:
                    try:
                        await js.add_consumer(aw.ATT_SUBMIT_STREAM, lane.create)
                    except (NatsError, JetStreamError) as exc:
                        # The server may be restarting: try again at the next check.
                        log.warning("consumer_not_created", lane=lane.durable, error=repr(exc))
                        continue
                running[lane.durable] = asyncio.create_task(
                    run_chunk_relay(
                        js,
                        direction=direction,
                        code=code,
                        crossings=crossings,
                        stop=stop,
                        clock=clock,
                        refused=refused,
                        durable=lane.durable,
                        count=count,
                    ),
                    name=f"chunks-{lane.durable}",
                )
            watch = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                {watch, *running.values()},
                timeout=LANE_CHECK_SECONDS,
                return_when=asyncio.FIRST_COMPLETED,
            )
            watch.cancel()
            for task in done:
                if task is watch or stop.is_set():
                    continue
                error = task.exception()
                if error is not None:
                    raise error
                # Its consumer is gone (replaced or removed): listed again at the next check.
                running = {d: t for d, t in running.items() if t is not task}
    finally:
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)


def _cancel(task: asyncio.Task[Any] | None) -> None:
    """Drop a fetch in flight (its chunks, if any, come back after ack_wait)."""
    if task is not None:
        task.cancel()
        # Its outcome is not wanted; retrieving it keeps asyncio from logging it.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
