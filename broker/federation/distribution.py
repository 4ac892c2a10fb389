"""Directory and policy distribution over the federation: streams, publishing, watching.

What it is for (docs/federation.md, "Directory and policy distribution"):

- the secretariat publishes each signed directory on ``cb.pub.directory`` into the stream
  ``DIRECTORY`` on the hub (JetStream domain ``hub``; the hub stores nothing else);
- each country publishes its signed policy on ``cb.pub.policy.<cc>`` into its own stream
  ``PUBLISHED``, which also *sources* the hub's ``DIRECTORY`` and every peer's policy subject
  through the peers' domain APIs (as ``INBOX`` sources ``OUT_<CC>``): store-and-forward, so a
  country cut off catches up when it is back;
- gateways and nodes read their own country's ``PUBLISHED`` with direct gets (no consumer:
  agencies may not create one), feed every new document to
  :class:`broker.core.publication.Published` and hot-swap what it accepts.

:class:`PublicationWatcher` is the loop; what a swap means is the caller's (``apply``):
the gateway replaces its directory and policy, the node its resolver, policy and the peers'
policies. A refused document leaves everything in force, is logged (``directory_refused`` /
``policy_refused`` with the reason) and counted (:class:`DirectoryMetrics`, and the policy
load metrics of :mod:`broker.policy_store` for the country's own policy).

What it must never do: decide trust itself (the core does), block the event loop, or stop
because a document is bad or NATS is away (it logs, waits and polls again).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Final

import structlog
from cryptography import x509
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    ExternalStream,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter, Gauge

from broker.core import publication as pub
from broker.core import wire as s
from broker.core.directory import Directory
from broker.core.policy import parse_policy
from broker.core.policy.signing import verify_policy_payload
from broker.errors import CasebridgeError, PolicyError
from broker.federation.directory_cache import write_cache
from broker.policy_store import PolicyStore

POLL_SECONDS: Final = 1.0
# Publications kept per subject: enough history for an audit of recent changes; a watcher
# that was away longer than that many publications catches up from the newest ones.
HISTORY_PER_SUBJECT: Final = 16
PUBLISH_TIMEOUT: Final = 10.0
MAX_DOCUMENT_BYTES: Final = 1 << 20

log = structlog.get_logger("casebridge.distribution")


# ------------------------------------------------------------------ streams ---


def _external(source: str, destination: str) -> ExternalStream:
    api = f"$JS.{pub.HUB_DOMAIN}.API" if source == pub.HUB_DOMAIN else s.domain_api(source)
    return ExternalStream(api=api, deliver=pub.publication_delivery_prefix(source, destination))


def hub_directory_config(*, replicas: int = 1) -> StreamConfig:
    """The hub's ``DIRECTORY`` stream: signed directories, a short history, never deleted."""
    return StreamConfig(
        name=pub.HUB_DIRECTORY_STREAM,
        description="signed federation directories published by the secretariat",
        subjects=[pub.DIRECTORY_SUBJECT],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_msgs_per_subject=HISTORY_PER_SUBJECT,
        max_msg_size=MAX_DOCUMENT_BYTES,
        num_replicas=replicas,
        deny_delete=True,
        deny_purge=True,
        allow_direct=True,
    )


def published_config(code: str, peers: Sequence[str], *, replicas: int = 1) -> StreamConfig:
    """Country ``code``'s ``PUBLISHED``: its own policy subject, plus the hub's directory and
    each peer's policy subject sourced through their domain APIs."""
    sources = [
        StreamSource(name=pub.HUB_DIRECTORY_STREAM, external=_external(pub.HUB_DOMAIN, code))
    ]
    sources += [
        StreamSource(
            name=pub.PUBLISHED_STREAM,
            # Only the peer's own policy: its PUBLISHED also holds what it sourced (our own
            # policy among it), which must not come back as if the peer had published it.
            filter_subject=pub.policy_subject(peer),
            external=_external(peer, code),
        )
        for peer in sorted(p.lower() for p in peers)
    ]
    return StreamConfig(
        name=pub.PUBLISHED_STREAM,
        description=f"directory and policies in force for {code.upper()} (public material)",
        subjects=[pub.policy_subject(code)],
        sources=sources,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_msgs_per_subject=HISTORY_PER_SUBJECT,
        max_msg_size=MAX_DOCUMENT_BYTES,
        num_replicas=replicas,
        deny_delete=True,
        deny_purge=True,
        allow_direct=True,
    )


async def _ensure(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        await js.add_stream(config)
        return
    await js.update_stream(config)


async def ensure_hub_stream(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create or update the hub's ``DIRECTORY`` stream (as the secretariat)."""
    await _ensure(js, hub_directory_config(replicas=replicas))


async def ensure_published_stream(
    js: JetStreamContext, code: str, peers: Sequence[str], *, replicas: int = 1
) -> None:
    """Create or update country ``code``'s ``PUBLISHED`` stream (as its gateway)."""
    await _ensure(js, published_config(code, peers, replicas=replicas))


# ---------------------------------------------------------------- publishing ---


async def publish_document(js: JetStreamContext, subject: str, signed: bytes) -> int:
    """Publish a signed document; returns its stream sequence. ``Nats-Msg-Id`` is the
    document's digest, so publishing the same document twice stores it once."""
    ack = await js.publish(
        subject,
        signed.strip(),
        timeout=PUBLISH_TIMEOUT,
        headers={"Nats-Msg-Id": pub.content_id(signed)},
    )
    return int(ack.seq)


# ------------------------------------------------------------------- metrics ---


class DirectoryMetrics:
    """Load metrics of the directory (the counterpart of the policy load metrics)::

    casebridge_directory_serial_loaded        gauge    serial in force
    casebridge_directory_last_load_ok         gauge    1 if the last published directory was
                                                       accepted, 0 if refused
    casebridge_directory_load_failures_total  counter  by reason (broker.core.publication.Refusal)
    casebridge_peer_policy_load_failures_total counter by reason (peers' published policies)
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.serial = Gauge(
            "casebridge_directory_serial_loaded",
            "Serial of the directory in force.",
            registry=registry,
        )
        self.last_ok = Gauge(
            "casebridge_directory_last_load_ok",
            "1 if the last published directory was accepted, 0 if it was refused.",
            registry=registry,
        )
        self.failures = Counter(
            "casebridge_directory_load_failures",
            "Published directories refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self.peer_failures = Counter(
            "casebridge_peer_policy_load_failures",
            "Peers' published policies refused, by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in pub.Refusal:
            self.failures.labels(reason=reason.value)
            self.peer_failures.labels(reason=reason.value)
        self.last_ok.set(1)


# ------------------------------------------------------------------ watching ---

# (directory now in force, its signed bytes)
ApplyDirectory = Callable[[Directory, bytes], Awaitable[None]]
# (signed policy, directory in force, initial catch-up) -> whether it is in force now
ApplyOwnPolicy = Callable[[bytes, Directory, bool], Awaitable[bool]]


def own_policy_loader(
    policies: PolicyStore,
    *,
    country: str,
    root_cert: x509.Certificate,
    clock: Callable[[], datetime],
) -> ApplyOwnPolicy:
    """Feed the country's own published policy to ``policies`` (which verifies it against the
    country CA of the directory in force, counts and logs a refusal, keeps the last good one).

    During the initial catch-up a policy not newer than the one in force is history (it was
    in force before), not an update: skipped without a refusal."""

    async def load(signed: bytes, directory: Directory, initial: bool) -> bool:
        now = clock()
        failure: str | None = None
        try:
            ca_cert = directory.country_ca(country.upper())
        except CasebridgeError as exc:
            failure = exc.detail
        if failure is not None:
            log.error("policy_refused", reason="country", detail=failure)
            return False
        current = policies.current
        if initial and current is not None:
            try:
                _signer, payload = verify_policy_payload(
                    signed, ca_cert=ca_cert, root_cert=root_cert, now=now
                )
                version = parse_policy(payload).version
            except PolicyError:
                version = None  # a bad document: let the store refuse and count it
            if version is not None and version <= current.version:
                return False
        return policies.load_bytes(signed, ca_cert=ca_cert, now=now, source="published")

    return load


class PublicationWatcher:
    """Polls a country's ``PUBLISHED`` stream and hot-swaps what the core accepts.

    ``own_country``: the country whose policy goes to ``own_policy`` (the process's
    :class:`~broker.policy_store.PolicyStore`, which verifies, counts and logs it itself);
    every other policy is a peer's (kept in :attr:`published`). ``directory``: called with a
    directory that replaces the one in force.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        published: pub.Published,
        own_country: str,
        directory: ApplyDirectory,
        own_policy: ApplyOwnPolicy | None,
        metrics: DirectoryMetrics | None,
        clock: Callable[[], datetime],
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._js = js
        self.published = published
        self._own = own_country.upper()
        self._apply_directory = directory
        self._own_policy = own_policy
        self._metrics = metrics
        self._clock = clock
        self._poll = poll_seconds
        self._next_seq = 1
        self._latest_policy: dict[str, bytes] = {}
        self._caught_up = False
        if metrics is not None:
            metrics.serial.set(published.directory.serial)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; NATS faults are logged and retried at the next poll."""
        while not stop.is_set():
            try:
                await self.poll_once()
            except (NatsError, JetStreamError, TimeoutError, OSError) as exc:
                log.info("publications_unavailable", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._poll)

    async def poll_once(self) -> int:
        """Read and offer every publication after the last one seen; returns how many."""
        seen = 0
        while True:
            try:
                raw = await self._js.get_msg(
                    pub.PUBLISHED_STREAM,
                    seq=self._next_seq,
                    subject=pub.PUBLISHED_SUBJECTS,
                    next=True,
                    direct=True,
                )
            except NotFoundError:
                break
            seq = int(raw.seq or self._next_seq)
            self._next_seq = seq + 1
            seen += 1
            await self._offer(str(raw.subject or ""), bytes(raw.data or b""))
        # Everything already in the stream when the watcher started is history: documents
        # older than the ones in force there are not updates and are not counted as refused.
        self._caught_up = True
        return seen

    async def _offer(self, subject: str, data: bytes) -> None:
        now = self._clock()
        country = pub.policy_country(subject)
        if country is not None:
            self._latest_policy[country] = data
        if country is not None and country == self._own:
            if self._own_policy is not None:
                await self._own_policy(data, self.published.directory, not self._caught_up)
            return
        try:
            change = self.published.offer(subject, data, now=now)
        except pub.PublicationRefused as exc:
            self._refused(exc, country)
            return
        if change is None:
            return
        if change.directory is not None:
            await self._apply_directory(change.directory, change.signed)
            if self._metrics is not None:
                self._metrics.serial.set(change.directory.serial)
                self._metrics.last_ok.set(1)
            log.info("directory_reloaded", serial=change.directory.serial, source="federation")
            await self._reoffer_policies()
        elif change.policy is not None:
            log.info(
                "peer_policy_loaded",
                country=change.country,
                version=change.policy.version,
                digest=change.policy.digest,
            )

    async def _reoffer_policies(self) -> None:
        # A policy refused because its country's CA was not (yet) in the directory in force
        # may be good under the new one: offer the newest policy of every country again.
        for country, data in sorted(self._latest_policy.items()):
            await self._offer(pub.policy_subject(country), data)

    def _refused(self, exc: pub.PublicationRefused, country: str | None) -> None:
        history = not self._caught_up and exc.refusal is pub.Refusal.ROLLBACK
        if history:
            log.debug("publication_skipped", what=exc.what, detail=exc.detail)
            return
        event = "directory_refused" if country is None else "peer_policy_refused"
        log.error(
            event,
            what=exc.what,
            reason=exc.refusal.value,
            detail=exc.detail,
            keeping_serial=self.published.directory.serial,
        )
        if self._metrics is None:
            return
        if country is None:
            self._metrics.failures.labels(reason=exc.refusal.value).inc()
            self._metrics.last_ok.set(0)
        else:
            self._metrics.peer_failures.labels(reason=exc.refusal.value).inc()


def watcher_for(
    js: JetStreamContext,
    *,
    country: str,
    root_cert: x509.Certificate,
    directory: Directory,
    swap: Callable[[Directory], None],
    policies: PolicyStore | None,
    registry: CollectorRegistry | None,
    clock: Callable[[], datetime],
    cache: Path | None = None,
    poll_seconds: float = POLL_SECONDS,
) -> PublicationWatcher:
    """The watcher of a gateway or node of ``country``: ``directory`` is the one in force,
    ``swap`` puts a newer one in force (and remembers its serial), ``policies`` holds the
    country's own policy (None: the process runs without one); ``cache``: where the signed
    directory in force is kept for the next start (:func:`startup_directory`)."""

    async def apply(new: Directory, signed: bytes) -> None:
        swap(new)
        if cache is not None:
            await asyncio.to_thread(write_cache, cache, signed)

    return PublicationWatcher(
        js,
        published=pub.Published(root_cert=root_cert, directory=directory),
        own_country=country,
        directory=apply,
        own_policy=None
        if policies is None
        else own_policy_loader(policies, country=country, root_cert=root_cert, clock=clock),
        metrics=DirectoryMetrics(registry) if registry is not None else None,
        clock=clock,
        poll_seconds=poll_seconds,
    )
