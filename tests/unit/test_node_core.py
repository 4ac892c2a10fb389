"""The node's decisions (broker/node/core.py) without its loops: bytes and ``now`` in, a
Settlement out, nothing written, nothing emitted."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from broker.node.core import (
    Delivered,
    Outcome,
    Refused,
    StoreDelivery,
    StoreRejection,
    wire_digest,
)
from broker.node.model import Receipt
from broker.node.transport import MemoryDelivery
from broker.pki.dev import DevFederation

from .node_world import World, request_draft, world_at

DE, NL = "de.lka-berlin", "nl.politie"


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def one_delivery(world: World) -> tuple[str, MemoryDelivery]:
    """DE sends NL one request; NL's delivery, taken from the bus and not handled."""
    de = world.node(DE)
    world.node(NL)
    message_id = asyncio.run(de.send(request_draft())).message_id
    (delivery,) = world.transport(NL).take(evidence=False)
    return message_id, delivery


def receipt_of(delivery: MemoryDelivery) -> Receipt:
    return Receipt(digest=wire_digest(delivery.data), sequence=delivery.sequence)


class TestOnDelivery:
    def test_a_delivery_is_decided_without_writing_anything(self, world: World) -> None:
        """The core answers DELIVERED with the one write that settles it and the sealed
        ``delivered`` evidence for DE, while the store is untouched."""
        message_id, delivery = one_delivery(world)
        nl = world.nodes[NL]
        commits = nl.store.commits
        settlement = nl.core.on_delivery(delivery.data, receipt_of(delivery), world.clock())
        assert settlement.outcome is Outcome.DELIVERED
        assert isinstance(settlement.write, StoreDelivery)
        assert settlement.write.header["id"] == message_id
        assert settlement.sealed is not None
        assert settlement.sealed.header["type"] == "evidence.delivered"
        assert settlement.sealed.header["recipients"] == [DE]
        assert [type(e) for e in settlement.events] == [Delivered]
        assert nl.store.commits == commits
        assert nl.store.list_inbox() == []

    def test_deciding_holds_no_state_until_the_shell_writes(self, world: World) -> None:
        """Decided twice, the same delivery is delivered twice (the core remembers nothing);
        once the shell wrote the settlement, the same receipt is settled before."""
        _, delivery = one_delivery(world)
        nl = world.nodes[NL]
        receipt = receipt_of(delivery)
        first = nl.core.on_delivery(delivery.data, receipt, world.clock())
        again = nl.core.on_delivery(delivery.data, receipt, world.clock())
        assert first.outcome is again.outcome is Outcome.DELIVERED
        assert first.write is not None
        nl._write(first.write)  # the shell's write, as its loop does after deciding
        settled = nl.core.on_delivery(delivery.data, receipt, world.clock())
        assert settled.outcome is Outcome.SETTLED_BEFORE
        assert settled.write is None
        assert settled.sealed is None

    def test_junk_is_refused_with_no_evidence_to_send(self, world: World) -> None:
        """Bytes that are no sealed message: a refusal to record, no evidence to anyone."""
        world.node(NL)
        nl = world.nodes[NL]
        data = b'{"outer": "not.a.jws", "jwe": "{}"}'
        settlement = nl.core.on_delivery(
            data, Receipt(digest=wire_digest(data), sequence=1), world.clock()
        )
        assert settlement.outcome is Outcome.REJECTED
        assert isinstance(settlement.write, StoreRejection)
        assert settlement.sealed is None
        (event,) = settlement.events
        assert isinstance(event, Refused)
        assert event.reason == settlement.write.rejection.reason


class TestPrepare:
    def test_a_draft_is_cleared_and_sealed_without_storing(self, world: World) -> None:
        """prepare() returns the cleared header and the sealed bytes; the outbox stays empty
        and every id came from the injected source."""
        de = world.node(DE)
        ids_before = world.ids.counter
        header, clearance, sealed = de.core.prepare(request_draft(), world.clock())
        assert header.sender == DE
        assert header.recipients == (NL,)
        assert clearance.categories == header.categories
        assert sealed.digest == wire_digest(sealed.wire)
        assert sealed.message_id == header.id
        assert world.ids.counter == ids_before + 2  # the conversation and the message id
        assert de.store.list_outbox(include_evidence=True) == []


def test_node_core_imports_no_io_framework() -> None:
    """Importing broker.node.core loads no asyncio, nats, aiohttp or sqlite3 module, and
    neither the store nor the service."""
    code = "import sys, json, broker.node.core; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = json.loads(done.stdout)
    assert [m for m in loaded if m.split(".")[0] in ("asyncio", "nats", "aiohttp", "sqlite3")] == []
    assert "broker.node.store" not in loaded
    assert "broker.node.service" not in loaded
