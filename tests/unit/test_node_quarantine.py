"""Poison handling at the recipient node: bounded retries, the quarantine, lane readiness."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from broker.cli import main
from broker.core.envelope import OpenedMessage
from broker.errors import InvalidMessage, Reason
from broker.node import audit_log
from broker.node.api import create_app
from broker.node.errors import JustificationRequired, NotFound
from broker.node.policy import HonestyCheck
from broker.node.progress import LaneProgress
from broker.node.service import Node, RetryPolicy, retried_only
from broker.pki.dev import DevFederation

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


TOKEN = "q" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _api(node: Node) -> TestClient[Any, Any]:
    @asynccontextmanager
    async def lifecycle() -> AsyncIterator[Node]:
        yield node

    return TestClient(TestServer(create_app(lifecycle, token=TOKEN)))


class TestApiAndCli:
    def test_list_retry_and_drop_through_the_api(self, world: World) -> None:
        """GET lists without bytes; POST retry delivers once fixed; DELETE needs a reason."""
        check = FaultyCheck(RuntimeError("bug"))
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie", recipient_check=check)

        async def run() -> None:
            first = await de.send(request_draft())
            second = await de.send(request_draft())
            check.ids.update({first.message_id, second.message_id})
            await world.pump()
            async with _api(nl) as client:
                listed = await (await client.get("/v1/quarantine", headers=AUTH)).json()
                items = listed["quarantine"]
                assert [i["claimed_message_id"] for i in items] == [
                    first.message_id,
                    second.message_id,
                ]
                assert items[0]["reason"] == "quarantined"
                assert "wire" not in items[0]
                still = await client.post(f"/v1/quarantine/{items[0]['id']}/retry", headers=AUTH)
                assert (await still.json())["outcome"] == "failed"
                check.ids.clear()
                done = await client.post(f"/v1/quarantine/{items[0]['id']}/retry", headers=AUTH)
                assert (await done.json())["outcome"] == "delivered"
                refused = await client.delete(f"/v1/quarantine/{items[1]['id']}", headers=AUTH)
                assert refused.status == 428
                assert (await refused.json())["error"]["reason"] == "justification_required"
                dropped = await client.delete(
                    f"/v1/quarantine/{items[1]['id']}",
                    headers={**AUTH, "X-Actor": "ops", "X-Justification": "duplicate"},
                )
                assert dropped.status == 200
                missing = await client.post("/v1/quarantine/abc/retry", headers=AUTH)
                assert missing.status == 404
                assert (await (await client.get("/v1/quarantine", headers=AUTH)).json()) == {
                    "quarantine": []
                }
            assert [m.message_id for m in nl.store.list_inbox()] == [first.message_id]

        asyncio.run(run())

    def test_cli_lists_retries_and_drops(
        self, world: World, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """casebridge node quarantine list|retry|drop talk to the node's API."""
        check = FaultyCheck(RuntimeError("bug"))
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie", recipient_check=check)

        async def prepare() -> list[str]:
            sent = [await de.send(request_draft()) for _ in range(2)]
            check.ids.update(s.message_id for s in sent)
            await world.pump()
            return [s.message_id for s in sent]

        ids = asyncio.run(prepare())
        items = nl.store.list_quarantine()
        with served(nl) as url:
            common = ["--node", url, "--token", TOKEN]
            assert main(["node", "quarantine", "list", *common]) == 0
            out = capsys.readouterr().out
            assert ids[0] in out
            assert ids[1] in out
            assert main(["node", "quarantine", "retry", str(items[0].id), *common]) == 1
            check.ids.clear()
            assert main(["node", "quarantine", "retry", str(items[0].id), *common]) == 0
            drop = ["node", "quarantine", "drop", str(items[1].id), "--why", "test", *common]
            assert main(drop) == 0
            assert main(drop) == 2  # gone: not_found
        assert nl.store.list_quarantine() == []


@contextmanager
def served(node: Node) -> Iterator[str]:
    """The node's API on a free loopback port, served from a background thread."""
    loop = asyncio.new_event_loop()
    port: list[int] = []

    @asynccontextmanager
    async def lifecycle() -> AsyncIterator[Node]:
        yield node

    runner = web.AppRunner(create_app(lifecycle, token=TOKEN))

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port.append(runner.addresses[0][1])

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield f"http://127.0.0.1:{port[0]}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
