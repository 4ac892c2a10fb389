"""The gateway's settle step for one fetched batch: record first, publish, then ack or nak.

The NATS side is a recording double here (this is the ordering logic of ``runner.py`` only);
the same loop runs against real nats-server processes in tests/integration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext

from broker.gateway import runner
from broker.gateway.border import Outcome, Publish


@dataclass
class FakeMsg:
    data: bytes
    subject: str = "cb.submit.de.lka-berlin"
    headers: dict[str, str] | None = None
    settled: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")


@dataclass
class FakeJetStream:
    events: list[str]
    failing: set[str] = field(default_factory=set)

    async def publish(self, subject: str, data: bytes, **_: Any) -> None:
        await asyncio.sleep(0)
        if data.decode() in self.failing:
            raise NatsTimeout
        self.events.append(f"publish {data.decode()}")


def outcome(name: str) -> Outcome:
    return Outcome(
        message_id=name,
        publishes=(Publish(subject="cb.out.de.ua", msg_id=name, data=name.encode()),),
    )


def settle(msgs: Sequence[FakeMsg], js: FakeJetStream, *, fail_record: bool = False) -> list[str]:
    def decide(data: bytes, _subject: str) -> Outcome:
        if data == b"boom":
            raise ValueError("decision bug")
        return outcome(data.decode())

    def record(direction: str, outcomes: Sequence[Outcome]) -> None:
        if fail_record:
            raise OSError("disk full")
        js.events.append(f"record {direction} {[o.message_id for o in outcomes]}")

    asyncio.run(
        runner._settle_batch(
            cast(JetStreamContext, js),
            cast(Any, msgs),
            stream="SUBMIT",
            decide=decide,
            direction="egress",
            record=record,
            metrics=None,
        )
    )
    return js.events


def test_batch_is_recorded_once_before_any_publish_then_acked() -> None:
    msgs = [FakeMsg(b"m1"), FakeMsg(b"m2"), FakeMsg(b"m3")]
    events = settle(msgs, FakeJetStream([]))
    assert events[0] == "record egress ['m1', 'm2', 'm3']"
    assert sorted(events[1:]) == ["publish m1", "publish m2", "publish m3"]
    assert [m.settled for m in msgs] == [["ack"], ["ack"], ["ack"]]


def test_failed_publish_naks_only_its_input() -> None:
    msgs = [FakeMsg(b"m1"), FakeMsg(b"m2")]
    settle(msgs, FakeJetStream([], failing={"m2"}))
    assert [m.settled for m in msgs] == [["ack"], ["nak"]]


def test_failed_audit_record_publishes_nothing_and_naks_all() -> None:
    msgs = [FakeMsg(b"m1"), FakeMsg(b"m2")]
    events = settle(msgs, FakeJetStream([]), fail_record=True)
    assert events == []
    assert [m.settled for m in msgs] == [["nak"], ["nak"]]


def test_a_decision_bug_naks_that_message_and_the_rest_go_on() -> None:
    msgs = [FakeMsg(b"boom"), FakeMsg(b"m2")]
    events = settle(msgs, FakeJetStream([]))
    assert events == ["record egress ['m2']", "publish m2"]
    assert [m.settled for m in msgs] == [["nak"], ["ack"]]


class TestGroupRecorder:
    """Batches that several loops settle at the same time share the ledger's commit."""

    def test_concurrent_records_share_one_commit_and_each_returns_after_it(self) -> None:
        """Three loops record at once: one commit holds the decisions of all three, and no
        caller returns before it."""
        commits: list[list[tuple[str, list[str | None]]]] = []

        def record_many(batches: Sequence[tuple[str, Sequence[Outcome]]]) -> None:
            commits.append([(d, [o.message_id for o in outcomes]) for d, outcomes in batches])

        recorder = runner.GroupRecorder(record_many)

        async def scenario() -> tuple[int, int, int]:
            async def loop(direction: str, name: str) -> int:
                await recorder.record(direction, [outcome(name)])
                return len(commits)  # commits made when this caller returned

            return await asyncio.gather(
                loop("egress", "m1"), loop("ingress", "m2"), loop("egress", "m3")
            )

        assert list(asyncio.run(scenario())) == [1, 1, 1]
        assert commits == [[("egress", ["m1"]), ("ingress", ["m2"]), ("egress", ["m3"])]]

    def test_a_failing_group_is_recorded_again_caller_by_caller(self) -> None:
        """One loop's decisions cannot be written: the group's commit fails, then each
        caller's decisions are recorded alone; only that loop sees the error."""
        kept: list[str] = []

        def record_many(batches: Sequence[tuple[str, Sequence[Outcome]]]) -> None:
            names = [o.message_id for _, outcomes in batches for o in outcomes]
            if "bad" in names:
                raise OSError("disk hiccup")  # the whole transaction is rolled back
            kept.extend(str(n) for n in names)

        recorder = runner.GroupRecorder(record_many)

        async def scenario() -> tuple[BaseException | None, ...]:
            return await asyncio.gather(
                recorder.record("egress", [outcome("m1")]),
                recorder.record("egress", [outcome("bad")]),
                recorder.record("ingress", [outcome("m2")]),
                return_exceptions=True,
            )

        first, failed, third = asyncio.run(scenario())
        assert first is None
        assert third is None
        assert isinstance(failed, OSError)
        assert kept == ["m1", "m2"]
