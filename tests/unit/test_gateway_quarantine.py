"""Poison handling in the gateway's loops: bounded retries, the quarantine, operator control.

The NATS side is a recording double carrying JetStream's delivery count (as in
test_gateway_batches.py); the real loop runs against nats-server in tests/integration.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from nats.errors import BadSubjectError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext
from structlog.testing import capture_logs

from broker.cli import main
from broker.gateway import runner
from broker.gateway.audit import GatewayLedger
from broker.gateway.border import Outcome, Publish
from broker.gateway.quarantine import (
    GatewayQuarantine,
    GatewayRetry,
    Item,
    Setback,
    publish_permanent,
    run_retries,
)
from broker.node import audit_log
from broker.node.errors import JustificationRequired, NotFound

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@dataclass
class Sequences:
    stream: int


@dataclass
class Metadata:
    num_delivered: int
    sequence: Sequences


@dataclass
class FakeMsg:
    """A JetStream message as the loop sees it; ``nak`` redelivers (attempt + 1)."""

    data: bytes
    seq: int
    subject: str = "cb.submit.de.lka-berlin"
    headers: dict[str, str] | None = None
    attempt: int = 1
    settled: list[str] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)

    @property
    def metadata(self) -> Metadata:
        return Metadata(num_delivered=self.attempt, sequence=Sequences(stream=self.seq))

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")
        self.delays.append(delay or 0.0)

    async def term(self) -> None:
        self.settled.append("term")


@dataclass
class FakeJetStream:
    events: list[str] = field(default_factory=list)
    failing: dict[str, BaseException] = field(default_factory=dict)

    async def publish(self, subject: str, data: bytes, **_: Any) -> None:
        await asyncio.sleep(0)
        fault = self.failing.get(data.decode())
        if fault is not None:
            raise fault
        self.events.append(f"publish {data.decode()}")


def outcome(name: str) -> Outcome:
    return Outcome(
        message_id=name,
        message_type="bulletin",
        publishes=(Publish(subject="cb.out.de.ua", msg_id=name, data=name.encode()),),
    )


@pytest.fixture
def quarantine(tmp_path: Path) -> Any:
    ledger = GatewayLedger(tmp_path / "gateway.sqlite", agency="de.gateway")
    store = GatewayQuarantine(tmp_path / "gateway.sqlite")
    yield store
    store.close()
    ledger.close()


def settle_until_settled(
    msgs: Sequence[FakeMsg],
    js: FakeJetStream,
    setback: Setback,
    *,
    record: Callable[[str, Sequence[Outcome]], None] | None = None,
    rounds: int = 5,
) -> None:
    """Run the batch settle step ``rounds`` times, redelivering every nak'ed message."""

    def decide(data: bytes, _subject: str) -> Outcome:
        if data.startswith(b"boom"):
            raise ValueError("decision bug")
        return outcome(data.decode())

    def recorder(direction: str, outcomes: Sequence[Outcome]) -> None:
        js.events.append(f"record {[o.message_id for o in outcomes]}")

    pending = list(msgs)
    for _ in range(rounds):
        if not pending:
            return
        asyncio.run(
            runner._settle_batch(
                cast(JetStreamContext, js),
                cast(Any, pending),
                stream="SUBMIT",
                decide=decide,
                direction="egress",
                record=record or recorder,
                metrics=None,
                setback=setback,
            )
        )
        for msg in pending:
            if msg.settled[-1] == "nak":
                msg.attempt += 1
        pending = [m for m in pending if m.settled[-1] == "nak"]


class TestSettleBatch:
    def test_a_decision_bug_is_quarantined_after_the_bound_and_the_lane_moves(
        self, quarantine: GatewayQuarantine
    ) -> None:
        """Growing nak delays, then the input is stored and terminated; one log event."""
        bad, good = FakeMsg(b"boom-1", seq=7), FakeMsg(b"m2", seq=8)
        js = FakeJetStream()
        with capture_logs() as logs:
            settle_until_settled([bad, good], js, Setback(quarantine, clock=lambda: NOW))
        assert bad.settled == ["nak", "nak", "nak", "nak", "term"]
        assert bad.delays == [1.0, 2.0, 4.0, 8.0]
        assert good.settled == ["ack"]
        (item,) = quarantine.items()
        assert (item.direction, item.stream, item.subject, item.stream_seq) == (
            "egress",
            "SUBMIT",
            "cb.submit.de.lka-berlin",
            7,
        )
        assert (item.data, item.error, item.attempts) == (b"boom-1", "ValueError", 5)
        assert item.detail == "decide: decision bug"
        assert [e["event"] for e in logs].count("input_failed") == 1
        assert [e["event"] for e in logs].count("input_quarantined") == 1

    def test_a_publication_nats_refuses_is_quarantined_a_timeout_is_retried(
        self, quarantine: GatewayQuarantine
    ) -> None:
        """BadSubjectError ends in the quarantine; a timeout keeps being retried."""
        refused, slow, good = FakeMsg(b"nl", seq=1), FakeMsg(b"slow", seq=2), FakeMsg(b"ok", seq=3)
        js = FakeJetStream(failing={"nl": BadSubjectError(), "slow": NatsTimeout()})
        settle_until_settled(
            [refused, slow, good], js, Setback(quarantine, clock=lambda: NOW), rounds=8
        )
        assert refused.settled[-1] == "term"
        assert slow.settled == ["nak"] * 8
        assert slow.delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
        assert good.settled == ["ack"]
        assert [i.stream_seq for i in quarantine.items()] == [1]

    def test_an_audit_record_failing_for_one_input_does_not_hold_the_batch(
        self, quarantine: GatewayQuarantine
    ) -> None:
        """The batch is recorded one by one; the input whose record fails is quarantined."""
        js = FakeJetStream()

        def record(direction: str, outcomes: Sequence[Outcome]) -> None:
            if any(o.message_id == "bad" for o in outcomes):
                raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
            js.events.append(f"record {[o.message_id for o in outcomes]}")

        bad, good = FakeMsg(b"bad", seq=1), FakeMsg(b"good", seq=2)
        settle_until_settled([bad, good], js, Setback(quarantine, clock=lambda: NOW), record=record)
        assert good.settled == ["ack"]
        assert "publish bad" not in js.events
        assert bad.settled[-1] == "term"
        assert quarantine.items()[0].detail.startswith("record: ")

    def test_an_unavailable_store_is_retried_without_a_bound(
        self, quarantine: GatewayQuarantine
    ) -> None:
        """sqlite3.OperationalError (locked, disk) while recording is never quarantined."""

        def record(direction: str, outcomes: Sequence[Outcome]) -> None:
            raise sqlite3.OperationalError("database is locked")

        msg = FakeMsg(b"m1", seq=1)
        settle_until_settled(
            [msg], FakeJetStream(), Setback(quarantine, clock=lambda: NOW), record=record, rounds=7
        )
        assert msg.settled == ["nak"] * 7
        assert quarantine.items() == []

    def test_the_classification_of_publish_failures(self) -> None:
        """Only failures NATS will repeat (subject, payload, headers) or bugs are permanent."""
        assert publish_permanent(BadSubjectError())
        assert publish_permanent(RuntimeError("bug"))
        assert not publish_permanent(NatsTimeout())
        assert not publish_permanent(TimeoutError())

    def test_a_custom_retry_bound(self, quarantine: GatewayQuarantine) -> None:
        """max_attempts=2: the second failed delivery is the last."""
        bad = FakeMsg(b"boom", seq=3)
        setback = Setback(quarantine, retry=GatewayRetry(max_attempts=2), clock=lambda: NOW)
        settle_until_settled([bad], FakeJetStream(), setback)
        assert bad.settled == ["nak", "term"]


class TestOperatorControl:
    def test_marked_items_are_settled_by_the_running_gateway(
        self, quarantine: GatewayQuarantine
    ) -> None:
        """run_retries releases an item whose retry succeeds and keeps one that fails."""
        ok_id = quarantine.add(**_item_fields(1, b"fixed"), now=NOW)
        bad_id = quarantine.add(**_item_fields(2, b"still broken"), now=NOW)
        quarantine.add(**_item_fields(3, b"not asked"), now=NOW)
        quarantine.request_retry(ok_id)
        quarantine.request_retry(bad_id)
        settled: list[bytes] = []
        stop = asyncio.Event()

        async def settle(item: Item) -> None:
            if item.data == b"still broken":
                raise RuntimeError("still failing")
            settled.append(item.data)
            stop.set()

        asyncio.run(run_retries(quarantine, settle, stop=stop, clock=lambda: NOW, interval=0))
        assert settled == [b"fixed"]
        left = {i.id: i for i in quarantine.items()}
        assert ok_id not in left
        assert (left[bad_id].attempts, left[bad_id].retry_requested) == (6, False)
        assert left[bad_id].error == "RuntimeError"
        with pytest.raises(NotFound):
            quarantine.request_retry(999)

    def test_drop_is_audited_in_the_gateway_log(
        self, quarantine: GatewayQuarantine, tmp_path: Path
    ) -> None:
        """drop deletes the item with an erasure record (actor, justification)."""
        item_id = quarantine.add(**_item_fields(1, b"junk"), now=NOW)
        with pytest.raises(JustificationRequired):
            quarantine.drop(item_id, agency="de.gateway", actor="ops", justification="", now=NOW)
        quarantine.drop(item_id, agency="de.gateway", actor="ops", justification="junk", now=NOW)
        assert quarantine.items() == []
        db = sqlite3.connect(tmp_path / "gateway.sqlite")
        try:
            (record,) = audit_log.records(db)
        finally:
            db.close()
        assert record.record.entry.operation == "erasure"
        assert (record.record.entry.actor, record.record.entry.justification) == ("ops", "junk")
        with pytest.raises(NotFound):
            quarantine.drop(item_id, agency="de.gateway", actor="ops", justification="x", now=NOW)

    def test_cli_lists_marks_and_drops_offline(
        self, quarantine: GatewayQuarantine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """casebridge gateway quarantine list|retry|drop work on the store file."""
        store = str(tmp_path / "gateway.sqlite")
        item_id = quarantine.add(**_item_fields(5, b"x"), now=NOW)
        assert main(["gateway", "quarantine", "list", "--store", store]) == 0
        assert "ValueError" in capsys.readouterr().out
        assert main(["gateway", "quarantine", "retry", str(item_id), "--store", store]) == 0
        assert quarantine.items()[0].retry_requested is True
        args = ["gateway", "quarantine", "drop", str(item_id), "--store", store]
        assert main([*args, "--justification", "test", "--agency", "de.gateway"]) == 0
        assert quarantine.items() == []
        assert main(["gateway", "quarantine", "retry", str(item_id), "--store", store]) == 2
        missing = str(tmp_path / "nothing.sqlite")
        assert main(["gateway", "quarantine", "list", "--store", missing]) == 2


def _item_fields(seq: int, data: bytes) -> dict[str, Any]:
    return {
        "direction": "egress",
        "stream": "SUBMIT",
        "subject": "cb.submit.de.lka-berlin",
        "stream_seq": seq,
        "msg_id": f"id-{seq}",
        "data": data,
        "error": "ValueError",
        "detail": "decide: bug",
        "attempts": 5,
    }
