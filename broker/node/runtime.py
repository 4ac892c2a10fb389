"""Assembling a node from :class:`~broker.node.settings.Settings` and running it.

Reads the key, certificate, directory and policy files named in the settings (and only
those), builds the :class:`~broker.node.service.Node`, and runs its receiver and outbox loops
next to the HTTP API. The NATS transport is injected (``transport_factory``); the default
imports ``broker.node.transport_nats.NatsTransport`` lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from prometheus_client import CollectorRegistry

from broker.core.directory import Directory
from broker.core.envelope import RecipientIdentity, RetiredAgreementKey, SenderIdentity
from broker.core.header import Onward, agency_country, parse_header
from broker.core.policy import Federation
from broker.core.trust import cert_kid
from broker.errors import CasebridgeError, ConfigError
from broker.federation.directory_cache import directory_cache, startup_directory
from broker.loaders import load_schema_registry
from broker.metrics import Expiry, ExpiryCollector, NodeMetrics, build_info
from broker.node import lawful_jobs
from broker.node.attachment_transfer import (
    NatsChunkFeed,
    NodeAttachments,
    run_chunk_feed,
    run_hold_sweeps,
    run_scans,
    run_uploads,
)
from broker.node.attachments import AttachmentSpool
from broker.node.clock import system_clock
from broker.node.clock_check import (
    ClockCollector,
    ClockDiscipline,
    measure_once,
    run_clock_check,
)
from broker.node.live import NodeLive, run_updates
from broker.node.observe import (
    LaneCollector,
    NodeObserver,
    OutboxCollector,
    StoreCollector,
    certificate_expiries,
    directory_expiries,
    run_audit_verification,
)
from broker.node.policy import Preflight, RecipientCheck
from broker.node.policy_engine import EnginePolicy
from broker.node.service import Node
from broker.node.settings import Settings
from broker.node.store import Store
from broker.node.transport import Transport
from broker.node.webhooks import Deliverer, WebhookCollector
from broker.pki.keyfiles import read_certificate, read_private_key
from broker.policy_store import PolicyStore

TransportFactory = Callable[[Settings], Transport]


def nats_transport(settings: Settings) -> Transport:
    """The real transport (:class:`broker.node.transport_nats.NatsTransport`), imported on
    first use: a node built on another transport (tests, the offline demo) never loads nats-py."""
    from broker.node.transport_nats import NatsTransport  # noqa: PLC0415 - lazy, see above

    return NatsTransport(settings)


def _onward_lookup(store: Store) -> Callable[[str], Onward | None]:
    def lookup(message_id: str) -> Onward | None:
        found = store.inbox_message(message_id)
        return parse_header(found.header).onward if found is not None else None

    return lookup


def build_node(
    settings: Settings,
    *,
    transport: Transport,
    now: datetime,
    store: Store,
    metrics: NodeMetrics | None = None,
    registry: CollectorRegistry | None = None,
    clock: ClockDiscipline | None = None,
) -> Node:
    """The node described by ``settings`` (files read here), on ``transport`` and ``store``.

    ``registry``/``metrics``: where the policy gauges and the node's metrics go (none: a
    private registry nobody scrapes)."""
    node, _live = build_live_node(
        settings,
        transport=transport,
        now=now,
        store=store,
        metrics=metrics,
        registry=registry,
        clock=clock,
    )
    return node


def build_live_node(
    settings: Settings,
    *,
    transport: Transport,
    now: datetime,
    store: Store,
    metrics: NodeMetrics | None = None,
    registry: CollectorRegistry | None = None,
    clock: ClockDiscipline | None = None,
) -> tuple[Node, NodeLive]:
    """:func:`build_node`, and the :class:`NodeLive` that hot-swaps its directory and policies
    (published over the federation: broker/node/live.py)."""
    clock = clock or ClockDiscipline(_offset_clock(settings.clock_offset_seconds))
    root = read_certificate(settings.root_cert)
    # Never an older directory than one accepted before (a revocation must not be undone by
    # restarting with an old file): DIRECTORY_STALE, the node does not start.
    directory = Directory.load(
        startup_directory(
            settings.directory_file,
            directory_cache(settings.store_path),
            root_cert=root,
            now=now,
        ),
        root_cert=root,
        now=now,
        min_serial=store.directory_serial(),
    )
    store.accept_directory_serial(directory.serial)
    schemas = load_schema_registry()
    agency = settings.agency
    preflight: Preflight | None = None
    recipient_check: RecipientCheck | None = None
    live = NodeLive(directory=directory, policies=None)
    if settings.policy_file is not None and settings.policy_ca_cert is not None:
        policies = PolicyStore(
            country=agency_country(agency),
            root_cert=root,
            registry=registry if registry is not None else CollectorRegistry(),
        )
        if not policies.load_file(
            settings.policy_file, ca_cert=read_certificate(settings.policy_ca_cert), now=now
        ):
            raise ConfigError(f"{settings.policy_file}: policy refused (see the log)")
        live.policies = policies
        engine = EnginePolicy(
            policy=lambda: policies.current,
            # The directory and the peers' policies in force now (hot-swapped).
            federation=lambda: Federation.from_directory(live.directory),
            schemas=schemas,
            original_onward=_onward_lookup(store),
            peer_policies=lambda: live.peer_policies,
        )
        preflight, recipient_check = engine.preflight, engine.recipient_check
    signing_cert = read_certificate(settings.keys.signing_cert)
    agreement_cert = read_certificate(settings.keys.agreement_cert)
    # Files sealed at rest next to the store (broker/node/attachments.py).
    files = NodeAttachments(
        store,
        AttachmentSpool(settings.store_path.with_suffix(".attachments")),
        max_size=settings.attachments.max_size,
        scanner=settings.attachments.scanner,
        scan_timeout=settings.attachments.scan_timeout_seconds,
        staged_ttl=timedelta(hours=settings.attachments.staged_hours),
    )
    if metrics is not None:
        files.on_file = metrics.file_count
    node = Node(
        sender=SenderIdentity(
            agency_id=agency,
            signing_kid=cert_kid(agency, signing_cert),
            signing_key=read_private_key(settings.keys.signing_key),
        ),
        recipient=RecipientIdentity(
            agency_id=agency,
            agreement_kid=cert_kid(agency, agreement_cert),
            agreement_key=read_private_key(settings.keys.agreement_key),
            previous=previous_agreement_keys(settings, agreement_cert),
        ),
        resolver=directory,
        schemas=schemas,
        store=store,
        transport=transport,
        preflight=preflight,
        recipient_check=recipient_check,
        lifetime=timedelta(days=settings.message_lifetime_days),
        observer=NodeObserver(metrics),
        clock=clock.now,
        time_problem=clock.problem,
        attachments=files,
    )

    def resolve_with(new: Directory) -> None:
        node.resolver = new  # the node looks every key up through its resolver

    live.swapped.append(resolve_with)
    return node, live


def previous_agreement_keys(
    settings: Settings, current: x509.Certificate
) -> tuple[RetiredAgreementKey, ...]:
    """The replaced agreement keys of the ring, each kept for the grace period after the
    current certificate's notBefore (ConfigError if a key does not match its certificate)."""
    until = current.not_valid_before_utc + settings.keys.agreement_grace
    ring = []
    for entry in settings.keys.previous_agreement:
        cert = read_certificate(entry.cert)
        key = read_private_key(entry.key)
        if key.public_key() != cert.public_key():
            raise ConfigError(f"{entry.key}: not the key of {entry.cert}")
        ring.append(RetiredAgreementKey(kid=cert_kid(settings.agency, cert), key=key, until=until))
    return tuple(ring)


def _offset_clock(seconds: float) -> Callable[[], datetime]:
    """The wall clock, shifted by ``clock_offset_seconds`` (fault tests; 0 in production)."""
    if not seconds:
        return system_clock
    offset = timedelta(seconds=seconds)
    return lambda: system_clock() + offset


def node_metrics(registry: CollectorRegistry, settings: Settings) -> NodeMetrics:
    """Register the node's metrics (and ``casebridge_build_info``) on ``registry``."""
    country = agency_country(settings.agency)
    build_info(registry, component="node", country=country)
    return NodeMetrics(registry, country=country)


def _register_collectors(
    registry: CollectorRegistry, settings: Settings, node: Node, store: Store
) -> None:
    """Scrape-time metrics: outbox backlog per destination, the store's failed writes and free
    disk space, certificate and CRL expiry."""
    country = agency_country(settings.agency)

    def current() -> Directory | None:
        # Read at every scrape: the directory may have been replaced (broker/node/live.py).
        return node.resolver if isinstance(node.resolver, Directory) else None

    def destinations() -> list[str]:
        directory = current()
        return [c.code for c in directory.countries()] if directory is not None else []

    own = [
        ("signing", read_certificate(settings.keys.signing_cert)),
        ("agreement", read_certificate(settings.keys.agreement_cert)),
    ]
    if settings.nats.cert_file is not None:
        own.append(("tls", read_certificate(settings.nats.cert_file)))

    def expiries() -> list[Expiry]:
        items = certificate_expiries(own, country=country)
        directory = current()
        if directory is not None:
            items.extend(directory_expiries(directory))
        return items

    registry.register(OutboxCollector(store, destinations=destinations))
    registry.register(LaneCollector(store, lambda: node.lanes))
    registry.register(StoreCollector(store))
    registry.register(WebhookCollector(store))
    registry.register(ExpiryCollector(expiries, clock=lambda: datetime.now(UTC)))


def watch_loops(node: Node, tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Make a loop that ends (or fails) visible: logged, and ``/readyz`` answers 503 from
    then on, so an orchestrator restarts the node instead of it silently receiving nothing.
    A cancelled loop (orderly shutdown) is not reported."""

    def stopped(task: asyncio.Task[Any]) -> None:
        if not task.cancelled():
            node.loop_stopped(task.get_name(), task.exception())

    for task in tasks:
        task.add_done_callback(stopped)


@contextlib.asynccontextmanager
async def running_node(
    settings: Settings,
    transport_factory: TransportFactory = nats_transport,
    *,
    registry: CollectorRegistry | None = None,
    metrics: NodeMetrics | None = None,
) -> AsyncIterator[Node]:
    """A node with its receiver and outbox loops running; stopped and closed on exit.

    With a ``registry`` every node metric is registered on it (``docs/operations.md``);
    ``metrics`` are the :class:`NodeMetrics` already on it (made here when None).
    """
    transport = transport_factory(settings)
    store = Store(settings.store_path)
    if registry is not None and metrics is None:
        metrics = node_metrics(registry, settings)
    try:
        clock = ClockDiscipline(_offset_clock(settings.clock_offset_seconds))
        node, live = build_live_node(
            settings,
            transport=transport,
            now=datetime.now(UTC),
            store=store,
            metrics=metrics,
            registry=registry,
            clock=clock,
        )
        server_time = getattr(transport, "server_time", None)
        if server_time is not None:
            # Before anything is received or sealed: never act on a clock known to be wrong.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(measure_once(clock, server_time), timeout=10)
        # The focal-point console, on its own listener, only when the settings ask for it
        # (started before the loops: a listener that cannot open leaves nothing running).
        console = contextlib.AsyncExitStack()
        if settings.console is not None:
            from broker.console.app import serving_console  # noqa: PLC0415 - jinja2 on demand

            await console.enter_async_context(
                serving_console(node, settings.console, peer_policies=lambda: live.peer_policies)
            )
        tasks = [
            asyncio.create_task(node.run_receiver(), name="receiver"),
            asyncio.create_task(node.run_outbox(), name="outbox"),
            asyncio.create_task(
                lawful_jobs.run_checkpoints(node, interval=settings.checkpoint_seconds),
                name="audit-checkpoints",
            ),
            asyncio.create_task(
                lawful_jobs.run_retention(node, settings.retention), name="retention"
            ),
            # Webhooks: a loop of its own, never in the receive path (broker.node.webhooks).
            asyncio.create_task(
                Deliverer(
                    store,
                    settings.webhooks,
                    clock=clock.now,
                    retention_days=settings.events_retention_days,
                    metrics=metrics,
                ).run(),
                name="webhooks",
            ),
        ]
        if server_time is not None:
            tasks.append(
                asyncio.create_task(run_clock_check(clock, server_time), name="clock-check")
            )
        if server_time is not None and settings.nats.cert_file is not None:
            # A node on NATS follows the published directory and policies (live.py).
            tasks.append(
                asyncio.create_task(
                    run_updates(
                        settings,
                        live,
                        store=store,
                        root_cert=read_certificate(settings.root_cert),
                        registry=registry,
                        clock=clock.now,
                    ),
                    name="publications",
                )
            )
        files = node.attachments
        if isinstance(files, NodeAttachments) and transport_factory is nats_transport:
            feed = NatsChunkFeed(settings)
            tasks += [
                asyncio.create_task(run_uploads(node, files), name="attachments-out"),
                asyncio.create_task(run_chunk_feed(node, files, feed), name="attachments-in"),
                asyncio.create_task(run_hold_sweeps(node, files), name="attachments-holds"),
            ]
            if files.scanner:
                tasks.append(asyncio.create_task(run_scans(files), name="attachments-scan"))
        watch_loops(node, tasks)
        if registry is not None:
            registry.register(ClockCollector(clock))
        if registry is not None and metrics is not None:
            _register_collectors(registry, settings, node, store)
            if isinstance(node.resolver, Directory):
                tasks.append(
                    asyncio.create_task(
                        run_audit_verification(
                            store,
                            metrics,
                            agency=settings.agency,
                            directory=lambda: live.directory,
                        ),
                        name="audit-verification",
                    )
                )
        try:
            yield node
        finally:
            await console.aclose()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, CasebridgeError):
                    await task
            # The records since the last checkpoint go to the gateway before we stop.
            await lawful_jobs.final_checkpoint(node)
    finally:
        close = getattr(transport, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result
        store.close()
