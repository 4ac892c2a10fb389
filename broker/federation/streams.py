"""Create or update a country's JetStream streams and pre-created consumers (idempotent).

Per country (account ``CB``, docs/federation.md):

- ``SUBMIT``   ``cb.submit.>``, work queue, read by the gateway through one durable per agency
  (``submit-<agency>``, filtered on ``cb.submit.<agency>``: fair sharing, see
  ``broker/gateway/fairness.py``); at most :data:`SUBMIT_PER_AGENCY` messages waiting per
  agency (``discard_new_per_subject``: a flooding agency's own publishes are refused, nobody
  else's);
- ``OUT_<P>``  ``cb.out.<cc>.<p>`` per peer ``P``: the outbox, kept while ``P`` is away;
- ``INBOX``    sources every peer's ``OUT_<CC>`` through ``$JS.<p>.API`` with deliver prefix
  ``cb.xd.<p>.<cc>``; read by the gateway through one durable per peer (``inbox-<p>``, filtered
  on the sourced subject ``cb.out.<p>.<cc>``);
- ``DELIVER``  ``cb.deliver.>``, work queue, two pull consumers per agency, each filtered on its
  own subject: ``node-<agency>`` (case messages, ``cb.deliver.<agency>``) and
  ``evidence-<agency>`` (``cb.deliver.<agency>.evidence``); created here (agencies may not
  create consumers); at most :data:`DELIVER_PER_LANE` messages waiting per lane, refused per
  subject (the gateway keeps the input and retries, so nothing is lost: the sender's backlog
  waits in ``SUBMIT``/``INBOX`` instead). Only subjects of agencies in the directory are
  ever published (gateways refuse unknown recipients).
- ``CROSSINGS`` key-value bucket: what crossed the border, shared by the gateways.
- ``AUDIT``    ``cb.audit.>``, signed audit checkpoints of the nodes, read by the gateway
  (durable ``gateway-audit``), kept without age limit (small; docs/data-protection.md).

Safe to run at every ``up``: streams are added or updated to the wanted configuration,
consumers are created only when missing (an existing consumer is left as its user set it up).
Run as the country's gateway identity, which has the whole account.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    ExternalStream,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError

from broker.core import wire as s
from broker.errors import ConfigError
from broker.federation.attachment_streams import ensure_attachment_streams

DAY: Final = 24 * 3600.0
# No message lives longer than 90 days (protocol: maximum lifetime), so no stream keeps one longer.
MAX_AGE_SECONDS: Final = 90 * DAY
# A node or gateway retries a publish with the same Nats-Msg-Id until it is acked; a day covers
# any outage we expect to ride out without the receiving node's replay store.
DUPLICATE_WINDOW_SECONDS: Final = 1 * DAY
ACK_WAIT_SECONDS: Final = 30.0
MAX_ACK_PENDING: Final = 1000
# Storage bounds (docs/federation.md, "Limits"): counted per subject, so that no one agency can
# exhaust a country's storage or stop another agency's traffic. Bytes follow from the counts
# and the server's max_payload (1 MiB, the protocol's cap). No stream-level byte cap: JetStream
# reserves a stream's max_bytes against the server's store up front, which would make the
# reservation, not the traffic, the limit; the server's max_file_store bounds the whole.
SUBMIT_PER_AGENCY: Final = 50_000
DELIVER_PER_LANE: Final = 50_000
OUT_MAX_MESSAGES: Final = 2_000_000
# INBOX keeps what each peer sent (one subject per peer) for 90 days: a peer whose own limits
# are gone (a compromised country) can fill its own share and no more; sourcing from it then
# waits, in its own OUT stream. AUDIT: a checkpoint every 5 minutes is ~105,000 a year.
INBOX_PER_PEER: Final = 2_000_000
AUDIT_PER_AGENCY: Final = 1_000_000


# Copies of each stream: 1 on a single server, 3 on a clustered country (R3).
CLUSTER_REPLICAS: Final = (1, 3)


@dataclass(frozen=True, kw_only=True, slots=True)
class CountryStreams:
    """What to set up in one country: its code, its peers and its agencies (gateway excluded)."""

    code: str
    peers: Sequence[str]
    agencies: Sequence[str]
    # 3 on a clustered country (R3 streams: docs/federation.md, "Clustered country servers").
    replicas: int = 1


def submit_config() -> StreamConfig:
    return StreamConfig(
        name=s.SUBMIT_STREAM,
        description="agency submissions, read by the border gateway",
        subjects=[s.SUBMIT_SUBJECTS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        max_msgs_per_subject=SUBMIT_PER_AGENCY,
        max_age=MAX_AGE_SECONDS,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        deny_delete=True,
        deny_purge=True,
    )


def out_config(code: str, peer: str) -> StreamConfig:
    return StreamConfig(
        name=s.out_stream(peer),
        description=f"outbox {code.upper()} -> {peer.upper()}, sourced by {peer.upper()}'s INBOX",
        subjects=[s.out_subject(code, peer)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msgs=OUT_MAX_MESSAGES,
        max_age=MAX_AGE_SECONDS,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        deny_delete=True,
        deny_purge=True,
    )


def inbox_config(code: str, peers: Sequence[str]) -> StreamConfig:
    sources = [
        StreamSource(
            name=s.out_stream(code),
            external=ExternalStream(
                api=s.domain_api(peer), deliver=s.cross_delivery_prefix(peer, code)
            ),
        )
        for peer in sorted(peers)
    ]
    return StreamConfig(
        name=s.INBOX_STREAM,
        description=f"messages from abroad for {code.upper()}, read by the border gateway",
        sources=sources,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        max_msgs_per_subject=INBOX_PER_PEER,
        max_age=MAX_AGE_SECONDS,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        deny_delete=True,
        deny_purge=True,
    )


def deliver_config() -> StreamConfig:
    return StreamConfig(
        name=s.DELIVER_STREAM,
        description="messages for local agencies, one subject and one consumer per agency",
        subjects=[s.DELIVER_SUBJECTS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        max_msgs_per_subject=DELIVER_PER_LANE,
        max_age=MAX_AGE_SECONDS,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        deny_delete=True,
        deny_purge=True,
    )


def audit_config() -> StreamConfig:
    return StreamConfig(
        name=s.AUDIT_STREAM,
        description="signed audit checkpoints of the country's nodes, kept by the gateway",
        subjects=[s.AUDIT_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        max_msgs_per_subject=AUDIT_PER_AGENCY,
        # No age limit: a checkpoint is the proof a node cannot rewrite its log; it must
        # outlive the node's audit retention, and it holds no personal data.
        max_age=0,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        deny_delete=True,
        deny_purge=True,
    )


def crossings_config() -> KeyValueConfig:
    """The ``CROSSINGS`` bucket (broker/gateway/crossings.py): file storage, one value per
    key, records kept for the longest message lifetime plus a day."""
    return KeyValueConfig(
        bucket=s.CROSSINGS_BUCKET,
        description="what crossed this country's border (gateways only; never content)",
        history=1,
        ttl=MAX_AGE_SECONDS + DAY,
        storage=StorageType.FILE,
        max_value_size=64 * 1024,
    )


async def ensure_crossings_bucket(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the ``CROSSINGS`` bucket unless it exists."""
    try:
        await js.key_value(s.CROSSINGS_BUCKET)
    except BucketNotFoundError:
        config = crossings_config()
        config.replicas = replicas
        await js.create_key_value(config)


def _pull(durable: str, filter_subject: str | None, description: str) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable,
        description=description,
        filter_subject=filter_subject,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_SECONDS,
        max_deliver=-1,
        max_ack_pending=MAX_ACK_PENDING,
    )


def submit_consumer(agency_id: str) -> ConsumerConfig:
    """The gateway's consumer of one agency's submissions (created here and by the gateway
    itself for an agency that joined later)."""
    return _pull(
        s.gateway_submit_durable(agency_id),
        s.submit_subject(agency_id),
        f"border gateway: submissions of {agency_id}",
    )


def inbox_consumer(code: str, peer: str, *, start_seq: int | None = None) -> ConsumerConfig:
    """The gateway's consumer of what ``peer`` sends to ``code`` (sourced into INBOX with its
    original subject ``cb.out.<peer>.<code>``); ``start_seq``: where to start (a migration
    from the single consumer of earlier versions), else from the first message kept."""
    config = _pull(
        s.gateway_inbox_durable(peer),
        s.out_subject(peer, code),
        f"border gateway: from {peer.upper()}",
    )
    if start_seq is not None:
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = start_seq
    return config


def consumer_configs(country: CountryStreams) -> list[tuple[str, ConsumerConfig]]:
    """(stream, consumer) pairs that must exist: gateway consumers and one per agency node."""
    wanted = [(s.SUBMIT_STREAM, submit_consumer(a)) for a in sorted(country.agencies)]
    wanted += [(s.INBOX_STREAM, inbox_consumer(country.code, p)) for p in sorted(country.peers)]
    wanted += [
        (s.AUDIT_STREAM, _pull(s.GATEWAY_AUDIT_DURABLE, None, "border gateway: audit roots")),
    ]
    wanted += [
        (
            s.DELIVER_STREAM,
            _pull(
                s.node_durable(a, evidence=evidence),
                s.deliver_subject(a, evidence=evidence),
                f"adapter node of {a}: {'evidence' if evidence else 'case messages'}",
            ),
        )
        for a in sorted(country.agencies)
        for evidence in (False, True)
    ]
    return wanted


def stream_configs(country: CountryStreams) -> list[StreamConfig]:
    """Every stream a country needs, in creation order."""
    peers = sorted(p.upper() for p in country.peers)
    return [
        submit_config(),
        *(out_config(country.code, p) for p in peers),
        inbox_config(country.code, peers),
        deliver_config(),
        audit_config(),
    ]


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    name = config.name or ""
    try:
        await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(config)
        return
    try:
        await js.update_stream(config)
    except APIError as exc:
        raise ConfigError(f"stream {name} cannot be updated in place: {exc.description}") from None


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Create ``config`` on ``stream`` unless a consumer of that name exists (left as is)."""
    durable = config.durable_name or ""
    try:
        await js.consumer_info(stream, durable)
    except NotFoundError:
        await js.add_consumer(stream, config)


async def _drop_legacy_submit_consumer(js: JetStreamContext) -> None:
    # The one unfiltered consumer of earlier versions overlaps the per-agency ones, which a
    # work-queue stream refuses. Deleting it loses nothing: messages leave a work queue only
    # when acknowledged, so whatever it held unacknowledged goes to the new consumers.
    try:
        await js.delete_consumer(s.SUBMIT_STREAM, s.LEGACY_GATEWAY_SUBMIT_DURABLE)
    except NotFoundError:
        return


async def _replace_legacy_inbox_consumer(js: JetStreamContext, country: CountryStreams) -> None:
    # INBOX keeps messages (limits retention), so a new consumer would start from the first
    # message kept and decide again everything already relayed. The per-peer consumers start
    # just after the old consumer's ack floor instead; the few acked out of order above it are
    # decided again and their outputs are JetStream duplicates (same ids, within the window).
    try:
        legacy = await js.consumer_info(s.INBOX_STREAM, s.LEGACY_GATEWAY_INBOX_DURABLE)
    except NotFoundError:
        return
    start = int(legacy.ack_floor.stream_seq if legacy.ack_floor else 0) + 1
    for peer in sorted(country.peers):
        await ensure_consumer(
            js, s.INBOX_STREAM, inbox_consumer(country.code, peer, start_seq=start)
        )
    await js.delete_consumer(s.INBOX_STREAM, s.LEGACY_GATEWAY_INBOX_DURABLE)


async def ensure_country_streams(js: JetStreamContext, country: CountryStreams) -> None:
    """Create or update every stream of ``country`` and create its missing consumers."""
    for config in stream_configs(country):
        config.num_replicas = country.replicas
        await _ensure_stream(js, config)
    await _drop_legacy_submit_consumer(js)
    await _replace_legacy_inbox_consumer(js, country)
    await ensure_crossings_bucket(js, replicas=country.replicas)
    for stream, consumer in consumer_configs(country):
        await ensure_consumer(js, stream, consumer)
    # Attachment chunks: streams of their own, same shape (attachment_streams.py).
    await ensure_attachment_streams(
        js,
        code=country.code,
        peers=country.peers,
        agencies=country.agencies,
        replicas=country.replicas,
    )
