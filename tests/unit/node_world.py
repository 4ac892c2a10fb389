"""Shared helpers for the node tests: in-memory nodes of the dev federation on a MemoryBus."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from broker.core.directory import Directory
from broker.core.envelope import RecipientIdentity, SenderIdentity
from broker.loaders import load_schema_registry
from broker.node.attachment_transfer import NodeAttachments
from broker.node.model import Draft
from broker.node.policy import Preflight, RecipientCheck
from broker.node.service import Node, RetryPolicy
from broker.node.store import Store
from broker.node.transport import MemoryBus, MemoryTransport
from broker.pki.dev import DevFederation

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
REGISTRY = load_schema_registry()


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return loaded


@dataclass
class ManualClock:
    """A clock the test moves by hand."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Ids:
    """Deterministic message ids."""

    counter: int = 0

    def __call__(self) -> str:
        self.counter += 1
        return f"00000000-0000-4000-8000-{self.counter:012d}"


@dataclass
class World:
    """Nodes of one federation on one in-memory bus, sharing a clock."""

    fed: DevFederation
    tmp: Path
    clock: ManualClock
    bus: MemoryBus = field(default_factory=MemoryBus)
    ids: Ids = field(default_factory=Ids)
    nodes: dict[str, Node] = field(default_factory=dict)
    sleeps: list[float] = field(default_factory=list)

    async def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def node(
        self,
        agency_id: str,
        *,
        directory: Directory | None = None,
        preflight: Preflight | None = None,
        recipient_check: RecipientCheck | None = None,
        store: Store | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        attachments: NodeAttachments | None = None,
    ) -> Node:
        agency = self.fed.agency(agency_id)
        node = Node(
            sender=SenderIdentity(
                agency_id=agency_id,
                signing_kid=agency.signing_kid,
                signing_key=agency.signing.key,
            ),
            recipient=RecipientIdentity(
                agency_id=agency_id,
                agreement_kid=agency.agreement_kid,
                agreement_key=agency.agreement.key,
            ),
            resolver=directory or self.fed.directory,
            schemas=REGISTRY,
            store=store or Store(self.tmp / f"{agency_id}.sqlite"),
            transport=self.bus.attach(agency_id),
            preflight=preflight,
            recipient_check=recipient_check,
            clock=self.clock,
            new_id=self.ids,
            retry=RetryPolicy(inline_attempts=3),
            sleep=sleep or self._sleep,
            attachments=attachments,
        )
        self.nodes[agency_id] = node
        return node

    def transport(self, agency_id: str) -> MemoryTransport:
        return self.bus.attach(agency_id)

    async def pump(self) -> int:
        """Hand every queued delivery to its node until the bus is quiet; count them."""
        handled = 0
        while True:
            batch = [
                (n, d) for n in self.nodes.values() for d in self.transport(n.agency_id).take()
            ]
            if not batch:
                return handled
            for node, delivery in batch:
                await node.handle(delivery)
                handled += 1

    def close(self) -> None:
        for node in self.nodes.values():
            node.store.close()


def world_at(fed: DevFederation, tmp: Path, now: datetime) -> Iterator[World]:
    world = World(fed=fed, tmp=tmp, clock=ManualClock(now))
    try:
        yield world
    finally:
        world.close()


def request_draft(**overrides: Any) -> Draft:
    values: dict[str, Any] = {
        "type": "request.assistance",
        "body": example("request.assistance"),
        "purpose": "investigation",
        "handling": "H2",
        "tlp": "AMBER",
        "legal_basis": "Council Framework Decision 2006/960/JHA",
        "to": ("nl.politie",),
        "due": "2026-12-15",
    }
    values.update(overrides)
    return Draft(**values)
