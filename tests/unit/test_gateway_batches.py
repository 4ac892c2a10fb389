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
