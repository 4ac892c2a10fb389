"""The node settles a fetched batch with one commit, acks only after it, and one bad message
spoils no other; the evidence of a batch is published concurrently with one outcome commit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from broker.errors import CasebridgeError
from broker.node.core import wire_digest
from broker.node.errors import StorageUnavailable
from broker.node.model import OutboxState, Receipt, SendResult
from broker.node.service import Node
from broker.node.transport import MemoryDelivery
from broker.pki.dev import DevFederation

from .node_world import World, request_draft, world_at

DE, NL = "de.lka-berlin", "nl.politie"


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def sent(world: World, count: int) -> tuple[Node, Node, list[str], list[MemoryDelivery]]:
    """``count`` messages DE -> NL submitted; NL's deliveries taken (not yet handled)."""
    de, nl = world.node(DE), world.node(NL)

    async def run() -> list[str]:
        return [(await de.send(request_draft())).message_id for _ in range(count)]

    ids = asyncio.run(run())
    return de, nl, ids, world.transport(NL).take(evidence=False)


def delivered_events(logs: list[MutableMapping[str, Any]]) -> list[str]:
    return [str(e["message_id"]) for e in logs if e["event"] == "message_delivered"]


class TestOneCommitPerBatch:
    def test_a_batch_is_settled_with_one_commit_and_acked_after_it(self, world: World) -> None:
        """Eight deliveries: one receive commit, one commit of the evidence outcomes; every
        ack comes after the delivery is committed."""
        _, nl, ids, batch = sent(world, 8)
        acked_committed: list[bool] = []

        class Watched:
            """A delivery that notes, when acked, whether its receipt was committed."""

            def __init__(self, inner: MemoryDelivery) -> None:
                self.inner = inner
                self.data, self.headers = inner.data, inner.headers
                self.sequence, self.attempts = inner.sequence, inner.attempts
                self.evidence = inner.evidence

            async def ack(self) -> None:
                receipt = Receipt(digest=wire_digest(self.data), sequence=self.sequence)
                acked_committed.append(nl.store.processed(receipt))
                await self.inner.ack()

            async def nak(self, delay: float) -> None:
                await self.inner.nak(delay)

            async def term(self) -> None:
                await self.inner.term()

        before = nl.store.commits
        asyncio.run(nl.handle_batch([Watched(d) for d in batch]))
        assert nl.store.commits - before == 2
        assert acked_committed == [True] * 8
        assert sorted(m.message_id for m in nl.store.list_inbox()) == sorted(ids)
        evidence = nl.store.list_outbox(include_evidence=True, pending_only=True)
        assert evidence == []  # all eight published and recorded acknowledged
        delivered = [s for s in world.bus.submissions if s.subject == "cb.submit.nl.politie"]
        assert len(delivered) == 8

    def test_two_copies_of_one_message_in_one_batch_store_it_once(self, world: World) -> None:
        """The same bytes twice in one batch (a republication after a lost duplicate window):
        one inbox row, the copy acknowledged as a duplicate, no rejection, one evidence."""
        de, nl, ids, batch = sent(world, 1)
        world.bus.deliver(NL, batch[0].data)
        batch += world.transport(NL).take(evidence=False)
        assert len(batch) == 2
        with capture_logs() as logs:
            asyncio.run(nl.handle_batch(batch))
        assert [d.settled for d in batch] == ["ack", "ack"]
        assert [m.message_id for m in nl.store.list_inbox()] == ids
        assert nl.store.list_rejections() == []
        assert delivered_events(logs) == ids
        assert [e["event"] for e in logs].count("duplicate_acknowledged") == 1
        asyncio.run(world.pump())
        assert [e.kind.value for e in de.store.evidence_for(ids[0])] == ["delivered"]


class TestFailuresInABatch:
    def test_one_failing_message_spoils_no_other(self, world: World) -> None:
        """A local fault on one message of a batch: it is nak'ed (nothing of it stored), the
        others are stored and acked in the same commit; its redelivery is stored later."""
        _, nl, ids, batch = sent(world, 4)
        original = nl.store.commit_delivery
        failed: list[str] = []

        def fail_third(**kwargs: Any) -> None:
            if kwargs["header"]["id"] == ids[2] and not failed:
                original(**kwargs)  # its writes happen, then the fault: all of it undone
                failed.append(ids[2])
                raise OSError("disk hiccup")
            original(**kwargs)

        nl.store.commit_delivery = fail_third  # type: ignore[method-assign]
        asyncio.run(nl.handle_batch(batch))
        assert [d.settled for d in batch] == ["ack", "ack", "nak", "ack"]
        stored = {m.message_id for m in nl.store.list_inbox()}
        assert stored == {ids[0], ids[1], ids[3]}
        asyncio.run(world.pump())
        assert {m.message_id for m in nl.store.list_inbox()} == set(ids)

    def test_a_failed_batch_commit_settles_each_message_on_its_own(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The batch commit fails (store full): nothing of it stays; each delivery is settled
        again with its own commit, and each decision is logged once, not twice."""
        _, nl, ids, batch = sent(world, 3)
        original = nl.store.batch

        @contextmanager
        def failing_batch() -> Iterator[Any]:
            with original() as scope:
                yield scope
                raise StorageUnavailable("database or disk is full", outcome="not_stored")

        monkeypatch.setattr(nl.store, "batch", failing_batch)
        with capture_logs() as logs:
            asyncio.run(nl.handle_batch(batch))
        assert [d.settled for d in batch] == ["ack", "ack", "ack"]
        assert sorted(m.message_id for m in nl.store.list_inbox()) == sorted(ids)
        assert sorted(delivered_events(logs)) == sorted(ids)

    def test_quarantine_bound_holds_for_a_message_failing_in_batches(self, world: World) -> None:
        """A message that fails every time is quarantined after the bound while the messages
        batched with it are delivered at once."""
        _, nl, ids, batch = sent(world, 3)
        original = nl.store.commit_delivery

        def always_fail_first(**kwargs: Any) -> None:
            if kwargs["header"]["id"] == ids[0]:
                raise RuntimeError("bug")
            original(**kwargs)

        nl.store.commit_delivery = always_fail_first  # type: ignore[method-assign]
        asyncio.run(nl.handle_batch(batch))
        assert {m.message_id for m in nl.store.list_inbox()} == {ids[1], ids[2]}
        for _ in range(10):
            asyncio.run(world.pump())
        (held,) = nl.store.list_quarantine()
        assert held.message_id == ids[0]
        assert held.attempts == nl._retry.max_attempts


class TestSendCommits:
    def test_a_send_costs_two_commits_and_concurrent_sends_share_them(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One send: the outbox row (with its first attempt) and the acknowledgement, two
        commits. Five sends at once: their five rows in ONE commit (a group), their five
        acknowledgements in ONE more."""
        de = world.node(DE)
        world.node(NL)
        before = de.store.commits
        single = asyncio.run(de.send(request_draft()))
        assert single.state is OutboxState.ACKNOWLEDGED
        assert de.store.commits - before == 2
        stored = de.store.outbox_message(single.message_id)
        assert stored is not None
        assert (stored.state, stored.attempts) == (OutboxState.ACKNOWLEDGED, 1)

        transport = world.transport(DE)
        inner = transport.submit
        gate = asyncio.Event()
        waiting: list[str] = []

        async def gated(subject: str, data: bytes, msg_id: str, **kwargs: Any) -> None:
            waiting.append(msg_id)
            await gate.wait()
            await inner(subject, data, msg_id, **kwargs)

        monkeypatch.setattr(transport, "submit", gated)

        async def scenario() -> list[OutboxState]:
            sends = [asyncio.create_task(de.send(request_draft())) for _ in range(5)]
            while len(waiting) < 5:
                await asyncio.sleep(0.01)
            gate.set()
            return [r.state for r in await asyncio.gather(*sends)]

        before = de.store.commits
        assert asyncio.run(scenario()) == [OutboxState.ACKNOWLEDGED] * 5
        assert de.store.commits - before == 2
        assert de.store.list_outbox(pending_only=True) == []

    def test_a_refused_draft_spoils_no_other_of_its_group(self, world: World) -> None:
        """Three sends at once, the middle one's body invalid: it is refused with nothing
        stored for it, the other two are stored in the group's one commit and acknowledged."""
        de = world.node(DE)
        world.node(NL)

        async def scenario() -> list[object]:
            drafts = [request_draft(), request_draft(body={}), request_draft()]
            sends = [asyncio.create_task(de.send(d)) for d in drafts]
            return await asyncio.gather(*sends, return_exceptions=True)

        before = de.store.commits
        first, refused, third = asyncio.run(scenario())
        assert isinstance(refused, CasebridgeError)
        assert isinstance(first, SendResult)
        assert isinstance(third, SendResult)
        assert de.store.commits - before == 2
        stored = {m.message_id for m in de.store.list_outbox()}
        assert stored == {first.message_id, third.message_id}
        assert de.store.list_outbox(pending_only=True) == []

    def test_a_failed_group_commit_fails_every_send_of_it(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The group's commit fails (store full): every send of the group answers the
        storage fault, nothing of it is stored or held in flight, and the next send works."""
        de = world.node(DE)
        world.node(NL)
        original = de.store.batch

        @contextmanager
        def failing_batch() -> Iterator[Any]:
            with original() as scope:
                yield scope
                raise StorageUnavailable("database or disk is full", outcome="not_stored")

        monkeypatch.setattr(de.store, "batch", failing_batch)

        async def scenario() -> list[object]:
            sends = [asyncio.create_task(de.send(request_draft())) for _ in range(3)]
            return await asyncio.gather(*sends, return_exceptions=True)

        outcomes = asyncio.run(scenario())
        assert all(isinstance(o, StorageUnavailable) for o in outcomes)
        assert de.store.list_outbox(include_evidence=True) == []
        assert de._in_flight == set()
        assert world.bus.submissions == []
        monkeypatch.setattr(de.store, "batch", original)
        assert asyncio.run(de.send(request_draft())).state is OutboxState.ACKNOWLEDGED
