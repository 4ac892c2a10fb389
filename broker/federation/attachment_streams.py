"""JetStream streams and consumers of the attachment chunk path (docs/federation.md,
"Attachments"); called from :func:`broker.federation.streams.ensure_country_streams`.

Chunks get streams of their own rather than extra subjects on the message streams: stream
sourcing across the hub is ordered per stream, so 200 MB of chunks in ``OUT_<P>`` would stand
in front of every message behind them; separate streams also carry their own limits. The shape
is the messages' one (docs/federation.md): a work queue in, one outbox per peer sourced by the
peer's inbox through ``$JS.<cc>.API``, a work queue out with one consumer per agency; unlike the
messages' INBOX, the chunk inbox is a work queue too (see :func:`att_inbox_config`). The
gateway reads them as it reads messages: one consumer per agency in, one per peer country from
abroad, so one sender's chunks waiting for their message (or junk) never fill another's window.

Idempotent like the message streams. Never creates anything outside these streams.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Final

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    ExternalStream,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)
from nats.js.errors import APIError, NotFoundError

from broker.core import attachment_wire as aw
from broker.core import wire as s
from broker.errors import ConfigError

DAY: Final = 24 * 3600.0
MAX_AGE_SECONDS: Final = 90 * DAY  # as the message streams: a file lives as long as its message
DUPLICATE_WINDOW_SECONDS: Final = 1 * DAY
# Counted per subject (per agency in, per peer abroad, per agency out). At 512 KiB a chunk
# (the node's default), 200,000 chunks are 100 GiB: the server's max_file_store is the real
# bound of a country.
CHUNKS_PER_SUBJECT: Final = 200_000
# Short: a chunk whose relay failed while a server was away (the nak could not be sent) is
# offered again this soon; relaying one chunk takes milliseconds.
ACK_WAIT_SECONDS: Final = 15.0
# Per lane (one agency, one peer country). Chunks the gateway is relaying are at most two
# fetch batches per instance; the rest of a lane's pending chunks are waiting for their message
# (nak with a delay up to 30 s, then offered again). Beyond this window a lane's further chunks
# simply stay in the stream until its waiting ones move, so a large window buys nothing but
# churn: a lane flooded with chunks whose message never comes (junk, or a hostile peer's)
# costs at most this many redeliveries per 30 s, and only its own lane waits.
GATEWAY_MAX_ACK_PENDING: Final = 1024
# Not a memory bound (a node fetches 8 at a time): chunks that arrived ahead of a missing one
# wait un-acked, and must never fill the window that the missing one needs to get through.
NODE_MAX_ACK_PENDING: Final = 20_000


def _work_queue(name: str, subjects: str, description: str) -> StreamConfig:
    return StreamConfig(
        name=name,
        description=description,
        subjects=[subjects],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        max_msgs_per_subject=CHUNKS_PER_SUBJECT,
        max_age=MAX_AGE_SECONDS,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        deny_delete=True,
        deny_purge=True,
    )


def att_submit_config() -> StreamConfig:
    return _work_queue(
        aw.ATT_SUBMIT_STREAM, aw.ATT_SUBMIT_SUBJECTS, "attachment chunks of agency submissions"
    )


def att_deliver_config() -> StreamConfig:
    return _work_queue(
        aw.ATT_DELIVER_STREAM, aw.ATT_DELIVER_SUBJECTS, "attachment chunks for local agencies"
    )


def att_out_config(code: str, peer: str) -> StreamConfig:
    return StreamConfig(
        name=aw.att_out_stream(peer),
        description=f"attachment chunks {code.upper()} -> {peer.upper()}",
        subjects=[aw.att_out_subject(code, peer)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msgs_per_subject=CHUNKS_PER_SUBJECT,
        max_age=MAX_AGE_SECONDS,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        deny_delete=True,
        deny_purge=True,
    )


def att_inbox_config(code: str, peers: Sequence[str]) -> StreamConfig:
    """A work queue: a chunk is removed once the ingress gateway relayed it, so its file-store
    block is freed instead of staying cached (nats-server keeps a block's buffer 10 s after its
    last use, so a limits inbox holds 10 s of the traffic in memory). The position in each
    peer's outbox survives the queue being emptied and a restart (nats-server keeps the
    sources' state; checked with the bundled server, clean stop and kill -9)."""
    sources = [
        StreamSource(
            name=aw.att_out_stream(code),
            external=ExternalStream(
                api=s.domain_api(peer), deliver=aw.att_cross_delivery_prefix(peer, code)
            ),
        )
        for peer in sorted(peers)
    ]
    return StreamConfig(
        name=aw.ATT_INBOX_STREAM,
        description=f"attachment chunks from abroad for {code.upper()}",
        sources=sources,
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        max_msgs_per_subject=CHUNKS_PER_SUBJECT,
        max_age=MAX_AGE_SECONDS,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        deny_delete=True,
        deny_purge=True,
    )


def _pull(
    durable: str,
    filter_subject: str | None,
    description: str,
    pending: int,
    *,
    start_seq: int | None = None,
) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable,
        description=description,
        filter_subject=filter_subject,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_SECONDS,
        max_deliver=-1,
        max_ack_pending=pending,
        deliver_policy=DeliverPolicy.ALL if start_seq is None else DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq,
    )


def att_node_consumer(agency_id: str) -> ConsumerConfig:
    return _pull(
        aw.att_node_durable(agency_id),
        aw.att_deliver_subject(agency_id),
        f"adapter node of {agency_id}: attachment chunks",
        NODE_MAX_ACK_PENDING,
    )


def att_egress_consumer(agency_id: str) -> ConsumerConfig:
    """The gateway's consumer of one agency's chunks: its own window of pending chunks."""
    return _pull(
        aw.att_egress_durable(agency_id),
        aw.att_submit_subject(agency_id),
        f"border gateway: chunks out of {agency_id}",
        GATEWAY_MAX_ACK_PENDING,
    )


def att_ingress_consumer(code: str, peer: str, *, start_seq: int | None = None) -> ConsumerConfig:
    """The gateway's consumer of the chunks peer country ``peer`` sends to ``code`` (sourced
    chunks keep the subject they were published on in the peer's outbox)."""
    return _pull(
        aw.att_ingress_durable(peer),
        aw.att_out_subject(peer, code),
        f"border gateway: chunks in from {peer.upper()}",
        GATEWAY_MAX_ACK_PENDING,
        start_seq=start_seq,
    )


def attachment_stream_configs(code: str, peers: Sequence[str]) -> list[StreamConfig]:
    ordered = sorted(p.upper() for p in peers)
    return [
        att_submit_config(),
        *(att_out_config(code, p) for p in ordered),
        att_inbox_config(code, ordered),
        att_deliver_config(),
    ]


def attachment_consumer_configs(
    code: str, peers: Sequence[str], agencies: Sequence[str]
) -> list[tuple[str, ConsumerConfig]]:
    wanted = [(aw.ATT_SUBMIT_STREAM, att_egress_consumer(a)) for a in sorted(agencies)]
    wanted += [(aw.ATT_INBOX_STREAM, att_ingress_consumer(code, p)) for p in sorted(peers)]
    wanted += [(aw.ATT_DELIVER_STREAM, att_node_consumer(a)) for a in sorted(agencies)]
    return wanted


async def _replace_legacy_consumers(
    js: JetStreamContext, *, code: str, peers: Sequence[str]
) -> None:
    """Replace the single unfiltered gateway consumers of earlier versions by the per-lane
    ones (a work-queue stream refuses overlapping consumers). Nothing is lost: on a work queue
    a chunk leaves only when acknowledged, so what the old consumer held unacknowledged goes to
    the new ones; an ``ATT_INBOX`` still on limits retention keeps what was relayed, so its
    per-peer consumers start just after the old consumer's ack floor (the few acknowledged out
    of order above it are relayed again: duplicates downstream, same ids)."""
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(aw.ATT_SUBMIT_STREAM, aw.LEGACY_EGRESS_DURABLE)
    try:
        legacy = await js.consumer_info(aw.ATT_INBOX_STREAM, aw.LEGACY_INGRESS_DURABLE)
    except NotFoundError:
        return
    inbox = await js.stream_info(aw.ATT_INBOX_STREAM)
    start = None  # a work queue: consumers must deliver all (what is left is unrelayed)
    if inbox.config.retention != RetentionPolicy.WORK_QUEUE:
        start = int(legacy.ack_floor.stream_seq if legacy.ack_floor else 0) + 1
    await js.delete_consumer(aw.ATT_INBOX_STREAM, aw.LEGACY_INGRESS_DURABLE)
    for peer in sorted(peers):
        config = att_ingress_consumer(code, peer, start_seq=start)
        try:
            await js.consumer_info(aw.ATT_INBOX_STREAM, config.durable_name or "")
        except NotFoundError:
            await js.add_consumer(aw.ATT_INBOX_STREAM, config)


async def ensure_attachment_streams(
    js: JetStreamContext,
    *,
    code: str,
    peers: Sequence[str],
    agencies: Sequence[str],
    replicas: int = 1,
) -> None:
    """Create or update the chunk streams of country ``code`` and their missing consumers
    (``replicas``: as the country's message streams, 3 on a clustered country)."""
    for config in attachment_stream_configs(code, peers):
        config.num_replicas = replicas
        try:
            info = await js.stream_info(config.name or "")
        except NotFoundError:
            await js.add_stream(config)
            continue
        if info.config.retention != config.retention:
            # Retention cannot change in place (nats-server refuses it), and recreating a
            # sourcing stream would source every peer's outbox again from its start. An
            # ATT_INBOX made before it became a work queue keeps limits retention: still
            # correct, its server only holds more memory (docs/federation.md, "Attachments").
            config.retention = info.config.retention
        try:
            await js.update_stream(config)
        except APIError as exc:
            raise ConfigError(
                f"stream {config.name} cannot be updated in place: {exc.description}"
            ) from None
    await _replace_legacy_consumers(js, code=code, peers=peers)
    for stream, consumer in attachment_consumer_configs(code, peers, agencies):
        try:
            await js.consumer_info(stream, consumer.durable_name or "")
        except NotFoundError:
            await js.add_consumer(stream, consumer)
