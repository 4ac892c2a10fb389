"""What a running node follows without restart: the directory, its country's policy, and every
peer country's published policy (docs/federation.md, "Directory and policy distribution").

:class:`NodeLive` is what ``broker.node.runtime`` builds the node around: the directory in
force (the node's resolver is replaced when a newer one is accepted), the country's
:class:`~broker.policy_store.PolicyStore`, and the peers' policies that pre-flight uses to show
what the destination will do. :func:`run_updates` is the loop: its own NATS connection (read
only: direct gets on ``PUBLISHED``) and the publication watcher
(:mod:`broker.federation.distribution`, imported on first use like the NATS transport).

What it must never do: put in force anything the core did not accept (an older or foreign
directory, a policy not signed by its country), or stop the node because NATS is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import structlog
from cryptography import x509
from prometheus_client import CollectorRegistry

from broker.core import wire as subjects
from broker.core.directory import Directory
from broker.core.policy import Policy
from broker.errors import CasebridgeError
from broker.federation.directory_cache import directory_cache
from broker.node.settings import Settings
from broker.node.store import Store
from broker.policy_store import PolicyStore

RECONNECT_SECONDS: Final = 2.0

log = structlog.get_logger("casebridge.node.live")


@dataclass(kw_only=True, slots=True)
class NodeLive:
    """The node's trust material in force; replaced in place by :func:`run_updates`."""

    directory: Directory
    policies: PolicyStore | None
    peer_policies: dict[str, Policy] = field(default_factory=dict)
    swapped: list[Callable[[Directory], None]] = field(default_factory=list)

    def swap(self, directory: Directory) -> bool:
        """Put ``directory`` in force if it is newer than the one in force (never older, even
        if some other path loaded a newer one meanwhile)."""
        if directory.serial <= self.directory.serial:
            return False
        self.directory = directory
        for callback in self.swapped:
            callback(directory)
        return True


async def run_updates(
    settings: Settings,
    live: NodeLive,
    *,
    store: Store,
    root_cert: x509.Certificate,
    registry: CollectorRegistry | None,
    clock: Callable[[], datetime],
) -> None:
    """Follow the country's ``PUBLISHED`` stream until cancelled (reconnecting as needed)."""
    # Imported on first use: the node runs without NATS in the in-memory tests.
    nats_edge: Any = importlib.import_module("broker.nats")
    distribution: Any = importlib.import_module("broker.federation.distribution")

    def swap(directory: Directory) -> None:
        if live.swap(directory):
            # Remembered at once: a restart with the old file is refused (DIRECTORY_STALE).
            store.accept_directory_serial(directory.serial)

    while True:
        try:
            nc = await nats_edge.connect(
                settings.nats.url,
                tls=nats_edge.tls_context(
                    ca_file=settings.nats.ca_file,
                    cert_file=settings.nats.cert_file,
                    key_file=settings.nats.key_file,
                ),
                inbox_prefix=subjects.inbox_prefix(settings.agency),
                name=f"node {settings.agency} (publications)",
            )
        except CasebridgeError as exc:
            log.info("publications_unavailable", error=exc.detail)
            await asyncio.sleep(RECONNECT_SECONDS)
            continue
        break
    watcher = distribution.watcher_for(
        nc.jetstream(),
        country=settings.agency.split(".", 1)[0],
        root_cert=root_cert,
        directory=live.directory,
        swap=swap,
        policies=live.policies,
        registry=registry,
        clock=clock,
        cache=directory_cache(settings.store_path),
    )
    # The peers' policies accepted by the watcher are the ones pre-flight reads.
    watcher.published.policies = live.peer_policies
    try:
        await watcher.run(asyncio.Event())
    finally:
        with contextlib.suppress(Exception):  # closing a connection that is gone anyway
            await nc.close()
