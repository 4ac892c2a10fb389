"""Poison handling at the recipient node: bounded retries, the quarantine, lane readiness."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from broker.core.envelope import OpenedMessage
from broker.devpki import DevFederation
from broker.errors import InvalidMessage, Reason
from broker.node import audit_log
from broker.node.errors import JustificationRequired, NotFound
from broker.node.policy import HonestyCheck
from broker.node.progress import LaneProgress
from broker.node.service import RetryPolicy, retried_only

from .node_world import REGISTRY, World, request_draft, world_at


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


class FaultyCheck:
    """The recipient check, raising ``fault`` for the message ids in ``ids`` (fault injection
    through a real seam of the node)."""

    def __init__(self, fault: Exception) -> None:
        self.inner = HonestyCheck(REGISTRY)
        self.ids: set[str] = set()
        self.fault = fault
        self.calls = 0

    def __call__(self, opened: OpenedMessage) -> None:
        self.calls += 1
        if opened.header.id in self.ids:
            raise self.fault
        self.inner(opened)


def failures(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == "delivery_failed"]


class TestBoundedRetries:
    def test_a_failing_message_is_quarantined_after_the_bound_and_others_go_on(
        self, world: World
    ) -> None:
        """A message whose handling raises is nak'ed with growing delays, then set aside after
        max_attempts; a message behind it is delivered; one failure event is logged."""
        check = FaultyCheck(RuntimeError("bug for this message"))
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie", recipient_check=check)

        async def run() -> None:
            bad = await de.send(request_draft())
            check.ids.add(bad.message_id)
            good = await de.send(request_draft())
            transport = world.transport("nl.politie")
            delays: list[float] = []
            with capture_logs() as logs:
                for _ in range(RetryPolicy().max_attempts):
                    for delivery in transport.take(evidence=False):
                        await nl.handle(delivery)
                        if delivery.settled == "nak":
                            delays.extend(delivery.nak_delays)
            assert delays == [2.0, 4.0, 8.0, 16.0]
            assert [m.message_id for m in nl.store.list_inbox()] == [good.message_id]
            (item,) = nl.store.list_quarantine()
            assert item.message_id == bad.message_id
            assert item.sender == "de.lka-berlin"
            assert (item.error, item.detail, item.attempts) == ("RuntimeError", str(check.fault), 5)
            assert item.lane == "messages"
            assert transport.take() == []  # acked: the lane moved on
            assert len(failures(logs)) == 1
            assert [e["event"] for e in logs].count("message_quarantined") == 1
            assert nl.store.list_rejections() == []  # our fault: no evidence to the sender

        asyncio.run(run())

    def test_a_quarantined_delivery_that_comes_again_is_only_acknowledged(
        self, world: World
    ) -> None:
        """A quarantined delivery redelivered (its ack was lost) is acked, not run again."""
        check = FaultyCheck(ValueError("bad"))
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie", recipient_check=check)

        async def run() -> None:
            bad = await de.send(request_draft())
            check.ids.add(bad.message_id)
            await world.pump()
            assert len(nl.store.list_quarantine()) == 1
            calls = check.calls
            world.transport("nl.politie").die_before_ack = 0
            data = nl.store.list_quarantine()[0].wire
            sequence = nl.store.list_quarantine()[0].sequence
            transport = world.transport("nl.politie")
            transport._enqueue(data, sequence, {}, attempts=6)
            (again,) = transport.take()
            await nl.handle(again)
            assert again.settled == "ack"
            assert check.calls == calls
            assert len(nl.store.list_quarantine()) == 1

        asyncio.run(run())

    @pytest.mark.parametrize(
        "fault",
        [
            InvalidMessage(Reason.DIRECTORY_STALE, "directory past next_update"),
            sqlite3.OperationalError("database is locked"),
        ],
    )
    def test_faults_of_ours_that_hit_every_message_are_retried_not_quarantined(
        self, world: World, fault: Exception
    ) -> None:
        """A stale directory or an unavailable store is retried with capped backoff forever."""
        check = FaultyCheck(fault)
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie", recipient_check=check)

        async def run() -> None:
            bad = await de.send(request_draft())
            check.ids.add(bad.message_id)
            transport = world.transport("nl.politie")
            last: list[float] = []
            for _ in range(12):
                (delivery,) = transport.take(evidence=False)
                await nl.handle(delivery)
                assert delivery.settled == "nak"
                last = delivery.nak_delays
            assert last == [60.0]
            assert nl.store.list_quarantine() == []

        asyncio.run(run())

    def test_the_classification_of_retried_only_faults(self) -> None:
        """Only faults that are not about one message are retried without a bound."""
        assert retried_only(InvalidMessage(Reason.DIRECTORY_STALE))
        assert retried_only(sqlite3.OperationalError("disk I/O error"))
        wrapped = audit_log.AuditUnavailable("not written")
        wrapped.__cause__ = sqlite3.OperationalError("database is locked")
        assert retried_only(wrapped)
        assert not retried_only(RuntimeError("bug"))
        assert not retried_only(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates"))
        assert not retried_only(sqlite3.IntegrityError("UNIQUE constraint failed"))


class TestOperatorControl:
    def test_retry_after_the_fault_is_gone_delivers_with_evidence(self, world: World) -> None:
        """retry runs the receive decision again: stored, `delivered` evidence to the sender."""
        check = FaultyCheck(RuntimeError("bug"))
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie", recipient_check=check)

        async def run() -> None:
            bad = await de.send(request_draft())
            check.ids.add(bad.message_id)
            await world.pump()
            (item,) = nl.store.list_quarantine()
            failed = await nl.retry_quarantined(item.id, actor="ops")
            assert failed["outcome"] == "failed"
            assert nl.store.list_quarantine()[0].attempts == 6
            check.ids.clear()
            done = await nl.retry_quarantined(item.id, actor="ops")
            assert done == {"id": item.id, "outcome": "delivered"}
            assert nl.store.list_quarantine() == []
            assert [m.message_id for m in nl.store.list_inbox()] == [bad.message_id]
            await world.pump()
            assert [e.kind.value for e in de.store.evidence_for(bad.message_id)] == ["delivered"]
            with pytest.raises(NotFound):
                await nl.retry_quarantined(item.id, actor="ops")

        asyncio.run(run())

    def test_drop_needs_a_justification_and_is_audited(self, world: World) -> None:
        """drop deletes the item with an erasure audit record naming actor and justification."""
        check = FaultyCheck(RuntimeError("bug"))
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie", recipient_check=check)

        async def run() -> None:
            bad = await de.send(request_draft())
            check.ids.add(bad.message_id)
            await world.pump()
            (item,) = nl.store.list_quarantine()
            with pytest.raises(JustificationRequired):
                await nl.drop_quarantined(item.id, actor="ops", justification=" ")
            await nl.drop_quarantined(item.id, actor="ops", justification="ticket 42: junk")
            assert nl.store.list_quarantine() == []
            records = nl.store.query(lambda db: audit_log.records_about(db, bad.message_id))
            (dropped,) = [r.record.entry for r in records if r.record.entry.operation == "erasure"]
            assert (dropped.actor, dropped.justification) == ("ops", "ticket 42: junk")
            with pytest.raises(NotFound):
                await nl.drop_quarantined(item.id, actor="ops", justification="again")

        asyncio.run(run())

    def test_claimed_fields_with_lone_surrogates_are_stored_escaped(self, world: World) -> None:
        """An error text with a lone surrogate is stored (escaped), never refused by SQLite."""
        check = FaultyCheck(ValueError("bad \ud800 text"))
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie", recipient_check=check)

        async def run() -> None:
            bad = await de.send(request_draft())
            check.ids.add(bad.message_id)
            await world.pump()
            (item,) = nl.store.list_quarantine()
            assert item.detail == "bad \\ud800 text"

        asyncio.run(run())


class TestLaneReadiness:
    def test_a_lane_that_settles_nothing_turns_readiness_red(self, world: World) -> None:
        """Deliveries taken but none settled for stall_seconds: /readyz says which lane."""
        check = FaultyCheck(InvalidMessage(Reason.DIRECTORY_STALE, "stale"))
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie", recipient_check=check)
        ticks = [1000.0]
        nl.lanes["messages"] = LaneProgress(lambda: ticks[0])

        async def run() -> None:
            bad = await de.send(request_draft())
            check.ids.add(bad.message_id)
            (delivery,) = world.transport("nl.politie").take(evidence=False)
            await nl.handle(delivery)
            ticks[0] += 299
            assert nl.ready()[0] is True
            ticks[0] += 2
            ready, why = nl.ready()
            assert ready is False
            assert "lane messages stalled" in why
            check.ids.clear()
            (again,) = world.transport("nl.politie").take(evidence=False)
            await nl.handle(again)
            assert nl.ready() == (True, "ready")

        asyncio.run(run())

    def test_progress_counts_only_settlements(self) -> None:
        """taken starts the wait; settled ends it; a second take does not restart it."""
        ticks = [0.0]
        progress = LaneProgress(lambda: ticks[0])
        assert progress.stalled_for() == 0.0
        progress.taken()
        ticks[0] = 5.0
        progress.taken()
        ticks[0] = 7.0
        assert progress.stalled_for() == 7.0
        progress.settled()
        assert progress.stalled_for() == 0.0
