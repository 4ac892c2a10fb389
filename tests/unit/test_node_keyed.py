"""Idempotency-keyed requests in parallel, and one submission at a time per outbox message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.node.model import OutboxState
from broker.node.service import KeyedLocks
from broker.pki.dev import DevFederation

from .node_world import World, request_draft, world_at

DE = "de.lka-berlin"


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def keyed(key: str, due: str = "2026-12-15") -> tuple[str, str]:
    return key, f"hash-of-{key}-{due}"


class Gate:
    """Wraps a transport's submit: every call waits until the gate opens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, world: World) -> None:
        self.transport = world.transport(DE)
        self.inner = self.transport.submit
        self.open = asyncio.Event()
        self.waiting = 0
        monkeypatch.setattr(self.transport, "submit", self.submit)

    async def submit(
        self, subject: str, data: bytes, msg_id: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        self.waiting += 1
        try:
            await self.open.wait()
        finally:
            self.waiting -= 1
        await self.inner(subject, data, msg_id, headers=headers)


class TestKeyedRequests:
    def test_three_keyed_requests_with_the_server_down_answer_at_once(self, world: World) -> None:
        """With the transport down, three concurrent keyed requests are each answered
        'queued' within 1 s (stored, left to the outbox loop)."""
        de = world.node(DE, sleep=asyncio.sleep)
        world.transport(DE).connected = False

        async def one(key: str) -> tuple[float, OutboxState]:
            started = time.monotonic()
            result = await de.send(request_draft(), idempotency=keyed(key))
            return time.monotonic() - started, result.state

        async def scenario() -> list[tuple[float, OutboxState]]:
            return list(await asyncio.gather(one("k-1"), one("k-2"), one("k-3")))

        outcomes = asyncio.run(scenario())
        assert [state for _, state in outcomes] == [OutboxState.QUEUED] * 3
        assert max(elapsed for elapsed, _ in outcomes) < 1.0
        assert len(de.store.list_outbox(pending_only=True)) == 3

    def test_keyed_requests_submit_concurrently(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Requests with different keys never wait for each other's submission: all three
        are inside the transport at the same time."""
        de = world.node(DE)
        gate = Gate(monkeypatch, world)

        async def scenario() -> None:
            sends = [
                asyncio.create_task(de.send(request_draft(), idempotency=keyed(f"k-{n}")))
                for n in range(3)
            ]
            deadline = time.monotonic() + 5
            while gate.waiting < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert gate.waiting == 3
            gate.open.set()
            results = await asyncio.gather(*sends)
            assert {r.state for r in results} == {OutboxState.ACKNOWLEDGED}

        asyncio.run(scenario())
        assert len(de._idempotency) == 0  # every per-key lock was dropped

    def test_same_key_while_the_first_is_submitting_returns_the_stored_message(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A repeat of a keyed request during the first one's submission answers with the
        stored message at once (one message, one submission)."""
        de = world.node(DE)
        gate = Gate(monkeypatch, world)

        async def scenario() -> None:
            first = asyncio.create_task(de.send(request_draft(), idempotency=keyed("k")))
            while gate.waiting < 1:
                await asyncio.sleep(0.01)
            again = await asyncio.wait_for(
                de.send(request_draft(), idempotency=keyed("k")), timeout=1
            )
            assert again.state is OutboxState.SUBMITTED
            gate.open.set()
            done = await first
            assert done.message_id == again.message_id
            assert done.state is OutboxState.ACKNOWLEDGED

        asyncio.run(scenario())
        assert len([s for s in world.bus.submissions if s.accepted]) == 1


class TestKeyedLocks:
    def test_same_key_is_serialised_and_locks_are_dropped(self) -> None:
        """Holders of one key run one after the other; other keys do not wait; no lock is
        left behind."""
        locks = KeyedLocks()
        order: list[str] = []

        async def hold(key: str, name: str, pause: float) -> None:
            async with locks.hold(key):
                order.append(f"{name}+")
                await asyncio.sleep(pause)
                order.append(f"{name}-")

        async def scenario() -> None:
            await asyncio.gather(hold("a", "a1", 0.05), hold("a", "a2", 0), hold("b", "b1", 0))

        asyncio.run(scenario())
        assert order.index("a1-") < order.index("a2+")
        assert order.index("b1-") < order.index("a1-")
        assert len(locks) == 0


class TestOneSubmissionAtATime:
    def test_outbox_loop_leaves_a_message_the_request_is_submitting(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While a request is still submitting its message, an outbox flush does not submit
        it again: one submission, one message_acknowledged event."""
        de = world.node(DE)
        gate = Gate(monkeypatch, world)

        async def scenario() -> None:
            sending = asyncio.create_task(de.send(request_draft()))
            while gate.waiting < 1:
                await asyncio.sleep(0.01)
            # Pending, but left to the request (a flush that submitted it would wait here).
            assert await asyncio.wait_for(de.flush_outbox(), timeout=2) == 1
            assert gate.waiting == 1
            gate.open.set()
            assert (await sending).state is OutboxState.ACKNOWLEDGED
            assert await de.flush_outbox() == 0

        with capture_logs() as logs:
            asyncio.run(scenario())
        assert len(world.bus.submissions) == 1
        assert [e["event"] for e in logs].count("message_acknowledged") == 1

    def test_outbox_loop_that_lists_a_message_before_its_submission_leaves_it(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A message is in flight from its commit on: a flush that runs between the commit
        and the request's first attempt does not submit it."""
        de = world.node(DE)
        left: list[int] = []
        add_outbox = de.store.add_outbox

        async def scenario() -> None:
            loop = asyncio.get_running_loop()

            def add_then_flush(*args: object, **kwargs: object) -> None:
                add_outbox(*args, **kwargs)  # type: ignore[arg-type]
                # The outbox loop runs now, between the commit and the request's attempt.
                flush = asyncio.run_coroutine_threadsafe(de.flush_outbox(), loop)
                left.append(flush.result(timeout=5))

            monkeypatch.setattr(de.store, "add_outbox", add_then_flush)
            assert (await de.send(request_draft())).state is OutboxState.ACKNOWLEDGED

        with capture_logs() as logs:
            asyncio.run(scenario())
        assert left == [1]  # the flush saw it pending and left it alone
        assert len(world.bus.submissions) == 1
        assert [e["event"] for e in logs].count("message_acknowledged") == 1
