"""The node service: two and three in-memory nodes of the dev federation on a MemoryBus."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.core.directory import Directory
from broker.core.envelope import OpenedMessage, seal
from broker.core.evidence import EvidenceKind
from broker.core.header import Header
from broker.core.peek import unverified_header
from broker.errors import PolicyDenied
from broker.node.errors import JustificationRequired, NotFound
from broker.node.model import (
    OutboxState,
)
from broker.node.policy import Clearance
from broker.node.runtime import watch_loops
from broker.node.service import Node
from broker.pki.dev import DevFederation

from .node_world import World, request_draft, world_at


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def kinds(node: Node, message_id: str) -> list[str]:
    return [e.kind.value for e in node.store.evidence_for(message_id)]


def evidence_out(node: Node) -> list[str]:
    return [m.type for m in node.store.list_outbox(include_evidence=True) if "evidence" in m.type]


def tamper(wire: bytes) -> bytes:
    # Flip one character inside the JWE ciphertext part of the wire: the outer digest breaks.
    index = wire.index(b'"ciphertext\\":\\"') + 20
    flipped = b"A" if wire[index : index + 1] != b"A" else b"B"
    return wire[:index] + flipped + wire[index + 1 :]


class TestSend:
    def test_delivered_evidence_reaches_the_sender(self, world: World) -> None:
        """A sent request is stored once at the recipient and `delivered` evidence comes back."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

        async def run() -> None:
            result = await de.send(request_draft())
            assert result.state is OutboxState.ACKNOWLEDGED
            await world.pump()
            inbox = nl.store.list_inbox()
            assert [m.message_id for m in inbox] == [result.message_id]
            assert inbox[0].digest == result.digest
            trail = de.store.evidence_for(result.message_id)
            assert [(e.kind, e.actor, e.direction) for e in trail] == [
                (EvidenceKind.DELIVERED, "nl.politie", "received")
            ]
            assert trail[0].digest_matches is True
            assert kinds(nl, result.message_id) == ["delivered"]

        asyncio.run(run())

    def test_retries_reuse_the_same_bytes_and_id(self, world: World) -> None:
        """A refused submit and a lost ack are retried with identical bytes and Nats-Msg-Id."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")
        world.bus.fail_submits = 1
        world.bus.lose_acks = 1

        async def run() -> None:
            result = await de.send(request_draft())
            assert result.state is OutboxState.ACKNOWLEDGED
            attempts = [s for s in world.bus.submissions if s.msg_id == result.message_id]
            assert len(attempts) == 3
            assert len({(s.data, s.msg_id) for s in attempts}) == 1
            assert world.sleeps == [0.2, 0.4]
            await world.pump()
            assert len(nl.store.list_inbox()) == 1
            assert de.store.outbox_message(result.message_id).attempts == 3  # type: ignore[union-attr]

        asyncio.run(run())

    def test_unacknowledged_message_stays_queued_and_is_flushed_later(self, world: World) -> None:
        """With the federation down, send returns `queued`; the outbox flush delivers it."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")
        world.bus.fail_submits = 3

        async def run() -> None:
            result = await de.send(request_draft())
            assert result.state is OutboxState.QUEUED
            assert nl.store.list_inbox() == []
            assert await de.flush_outbox() == 0
            await world.pump()
            assert len(nl.store.list_inbox()) == 1

        asyncio.run(run())

    def test_preflight_refusal_stores_and_sends_nothing(self, world: World) -> None:
        """A pre-flight denial raises PolicyDenied with its rule id; nothing is stored or sent."""

        def deny(header: Header, body: Mapping[str, Any]) -> Clearance:
            raise PolicyDenied("de.no-requests", "requests need a prosecutor")

        de = world.node("de.lka-berlin", preflight=deny)
        with pytest.raises(PolicyDenied) as caught:
            asyncio.run(de.send(request_draft()))
        assert caught.value.rule_id == "de.no-requests"
        assert de.store.list_outbox(include_evidence=True) == []
        assert world.bus.submissions == []

    def test_preflight_result_is_what_gets_sealed(self, world: World) -> None:
        """The body and categories pre-flight returns are what the recipient receives."""

        def redact(header: Header, body: Mapping[str, Any]) -> Clearance:
            kept = {k: v for k, v in body.items() if k != "suspects"}
            return Clearance(
                body=kept,
                categories=("case_facts",),
                rule_id="de.redact-suspects",
                reason="test",
                redactions=("drop /suspects [de.redact-suspects]",),
            )

        de, nl = world.node("de.lka-berlin", preflight=redact), world.node("nl.politie")

        async def run() -> None:
            result = await de.send(request_draft())
            assert result.redactions == ("drop /suspects [de.redact-suspects]",)
            await world.pump()
            received = nl.store.list_inbox()[0]
            assert "suspects" not in received.body
            assert received.header["categories"] == ["case_facts"]

        asyncio.run(run())


class TestThreads:
    def test_reply_joins_the_conversation_and_goes_to_the_sender(self, world: World) -> None:
        """A reply inherits the conversation and legal basis and is addressed to the sender."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

        async def run() -> None:
            sent = await de.send(request_draft())
            await world.pump()
            reply = await nl.send(
                replace(
                    request_draft(),
                    to=(),
                    legal_basis=None,
                    due=None,
                    in_reply_to=sent.message_id,
                )
            )
            await world.pump()
            assert reply.conversation == sent.conversation
            received = de.store.inbox_message(reply.message_id)
            assert received is not None
            assert received.in_reply_to == sent.message_id
            assert received.header["legal_basis"] == request_draft().legal_basis
            inbox, outbox = de.store.thread(sent.conversation)
            assert [m.message_id for m in outbox] == [sent.message_id]
            assert [m.message_id for m in inbox] == [reply.message_id]

        asyncio.run(run())

    def test_reply_to_an_unknown_message_is_refused(self, world: World) -> None:
        """Replying to an id the node does not hold raises NotFound."""
        de = world.node("de.lka-berlin")
        unknown = "00000000-0000-4000-8000-999999999999"
        with pytest.raises(NotFound):
            asyncio.run(de.send(replace(request_draft(), in_reply_to=unknown)))

    def test_request_past_its_due_date_is_overdue_until_answered(self, world: World) -> None:
        """An unanswered request is overdue after its due date; a reply clears it."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

        async def run() -> None:
            sent = await de.send(request_draft(due="2026-11-30"))
            await world.pump()
            assert nl.store.list_inbox(overdue_before="2026-11-30") == []
            overdue = nl.store.list_inbox(overdue_before="2026-12-01")
            assert [m.message_id for m in overdue] == [sent.message_id]
            assert overdue[0].overdue("2026-12-01")
            await nl.send(replace(request_draft(), to=(), due=None, in_reply_to=sent.message_id))
            assert nl.store.list_inbox(overdue_before="2026-12-01") == []

        asyncio.run(run())


class TestExactlyOnce:
    def test_crash_between_commit_and_ack_stores_one_copy(self, world: World) -> None:
        """A delivery committed but not acked (crash) is redelivered, acked, not stored twice."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

        async def run() -> None:
            sent = await de.send(request_draft())
            (delivery,) = world.transport("nl.politie").take()
            world.transport("nl.politie").die_before_ack = 1
            await nl.handle(delivery)
            assert delivery.settled is None
            assert world.transport("nl.politie").crash() == 1
            (again,) = world.transport("nl.politie").take()
            assert again.sequence == delivery.sequence
            await nl.handle(again)
            assert again.settled == "ack"
            assert [m.message_id for m in nl.store.list_inbox()] == [sent.message_id]
            assert evidence_out(nl) == ["evidence.delivered"]
            assert nl.store.list_rejections() == []

        asyncio.run(run())

    def test_failure_before_commit_naks_and_loses_nothing(self, world: World) -> None:
        """An unexpected fault while storing naks the delivery; the redelivery is stored once."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")
        original = nl.store.commit_delivery
        calls: list[int] = []

        def fail_once(**kwargs: Any) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise OSError("disk full")
            original(**kwargs)

        nl.store.commit_delivery = fail_once  # type: ignore[method-assign]

        async def run() -> None:
            sent = await de.send(request_draft())
            (delivery,) = world.transport("nl.politie").take()
            await nl.handle(delivery)
            assert delivery.settled == "nak"
            assert nl.store.list_inbox() == []
            await world.pump()
            assert [m.message_id for m in nl.store.list_inbox()] == [sent.message_id]
            assert kinds(de, sent.message_id) == ["delivered"]

        asyncio.run(run())

    def test_receiver_loop_processes_until_closed(self, world: World) -> None:
        """run_receiver handles deliveries as they arrive and ends when the transport closes."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

        async def run() -> None:
            task = asyncio.create_task(nl.run_receiver())
            sent = await de.send(request_draft())
            for _ in range(100):
                if nl.store.list_inbox():
                    break
                await asyncio.sleep(0.01)
            world.transport("nl.politie").close()
            await asyncio.wait_for(task, timeout=5)
            assert [m.message_id for m in nl.store.list_inbox()] == [sent.message_id]

        asyncio.run(run())

    def test_evidence_arrives_on_its_own_lane_and_both_lanes_are_consumed(
        self, world: World
    ) -> None:
        """Evidence about what a node sent waits on the evidence lane, not in front of the
        case messages addressed to it; run_receiver consumes both lanes."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

        async def run() -> None:
            sent = await de.send(request_draft())
            for delivery in world.transport("nl.politie").take(evidence=False):
                await nl.handle(delivery)  # nl stores it and emits `delivered` back to de
            reply = await nl.send(request_draft(to=("de.lka-berlin",)))
            transport = world.transport("de.lka-berlin")
            lanes = {(d.evidence, d.data) for d in transport._queue}
            assert {evidence for evidence, _ in lanes} == {True, False}
            task = asyncio.create_task(de.run_receiver())
            for _ in range(200):
                if de.store.list_inbox() and kinds(de, sent.message_id):
                    break
                await asyncio.sleep(0.01)
            transport.close()
            await asyncio.wait_for(task, timeout=5)
            assert [m.message_id for m in de.store.list_inbox()] == [reply.message_id]
            assert kinds(de, sent.message_id) == ["delivered"]

        asyncio.run(run())

    def test_a_stopped_background_loop_makes_the_node_not_ready(self, world: World) -> None:
        """A loop that ends or fails is logged and /readyz turns 503; cancelling is shutdown."""
        nl = world.node("nl.politie")

        async def boom() -> None:
            raise RuntimeError("disk gone")

        async def run() -> None:
            assert nl.ready() == (True, "ready")
            cancelled = asyncio.create_task(asyncio.sleep(10), name="outbox")
            failing = asyncio.create_task(boom(), name="retention")
            receiver = asyncio.create_task(nl.run_receiver(), name="receiver")
            watch_loops(nl, [cancelled, failing, receiver])
            cancelled.cancel()
            world.transport("nl.politie").close()  # the receiver ends with its transport
            await asyncio.gather(cancelled, failing, receiver, return_exceptions=True)
            await asyncio.sleep(0)  # done callbacks run on the next loop turn
            ready, why = nl.ready()
            assert not ready
            assert why == "retention stopped (RuntimeError: disk gone); receiver stopped (ended)"

        asyncio.run(run())

    def test_failed_ack_does_not_stop_the_receiver(self, world: World) -> None:
        """An ack that fails (server restarting) is logged; the loop goes on, nothing is lost."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

        async def run() -> None:
            world.transport("nl.politie").fail_acks = 1
            task = asyncio.create_task(nl.run_receiver())
            first = await de.send(request_draft())
            second = await de.send(request_draft())
            for _ in range(200):
                if len(nl.store.list_inbox()) == 2:
                    break
                await asyncio.sleep(0.01)
            assert not task.done()
            world.transport("nl.politie").close()
            await asyncio.wait_for(task, timeout=5)
            stored = sorted(m.message_id for m in nl.store.list_inbox())
            assert stored == sorted([first.message_id, second.message_id])

        asyncio.run(run())


class TestRefusals:
    def test_tampered_message_is_rejected_with_evidence(self, world: World) -> None:
        """Tampered bytes are refused: nothing stored, `rejected` evidence names the reason."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

        async def run() -> None:
            sent = await de.send(request_draft())
            (delivery,) = world.transport("nl.politie").take()
            await delivery.ack()
            world.bus.deliver("nl.politie", tamper(delivery.data))
            await world.pump()
            assert nl.store.list_inbox() == []
            (rejection,) = nl.store.list_rejections()
            assert rejection.reason == "digest_mismatch"
            assert rejection.message_id == sent.message_id
            (evidence,) = de.store.evidence_for(sent.message_id)
            assert (evidence.kind, evidence.reason) == (EvidenceKind.REJECTED, "digest_mismatch")
            assert evidence.digest_matches is False

        asyncio.run(run())

    def test_copy_of_an_accepted_message_is_acknowledged_not_refused(self, world: World) -> None:
        """The same bytes stored again under a new stream sequence (JetStream lost its
        duplicate window in a server restart) are acked: no rejection, no evidence."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

        async def run() -> None:
            sent = await de.send(request_draft())
            (delivery,) = world.transport("nl.politie").take()
            await nl.handle(delivery)
            world.clock.advance(timedelta(minutes=5))
            world.bus.deliver("nl.politie", delivery.data)
            await world.pump()
            assert len(nl.store.list_inbox()) == 1
            assert nl.store.list_rejections() == []
            assert kinds(de, sent.message_id) == ["delivered"]
            assert world.transport("nl.politie").take() == []

        asyncio.run(run())

    def test_replay_with_other_bytes_is_refused(self, world: World) -> None:
        """The id of an accepted message sealed again (other bytes): refused as `replay`,
        with `rejected` evidence to its authenticated sender."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

        async def run() -> None:
            sent = await de.send(request_draft())
            (delivery,) = world.transport("nl.politie").take()
            await nl.handle(delivery)
            header = unverified_header(delivery.data)
            assert header is not None
            again = seal(
                header=header,
                body=request_draft().body,
                sender=de._sender,
                resolver=de.resolver,
                now=world.clock(),
                salt=b"\x01" * 16,
            )
            assert again != delivery.data
            world.bus.deliver("nl.politie", again)
            await world.pump()
            assert len(nl.store.list_inbox()) == 1
            assert [r.reason for r in nl.store.list_rejections()] == ["replay"]
            assert kinds(de, sent.message_id) == ["delivered", "rejected"]
            assert de.store.evidence_for(sent.message_id)[1].reason == "replay"

        asyncio.run(run())

    def test_junk_naming_a_sender_gets_no_evidence(self, world: World) -> None:
        """A message whose signature does not verify is refused and recorded, but no signed
        evidence goes to the agency it names (no reflection)."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

        async def run() -> None:
            sent = await de.send(request_draft())
            (delivery,) = world.transport("nl.politie").take()
            await delivery.ack()
            outer_end = delivery.data.index(b'","v"')
            forged = delivery.data[: outer_end - 2] + b"AA" + delivery.data[outer_end:]
            world.bus.deliver("nl.politie", forged)
            await world.pump()
            assert [r.reason for r in nl.store.list_rejections()] == ["bad_signature"]
            (record,) = nl.store.evidence_for(sent.message_id)
            assert record.evidence_id is None
            assert "did not verify" in (record.detail or "")
            assert evidence_out(nl) == []
            assert kinds(de, sent.message_id) == []

        asyncio.run(run())

    def test_revoked_sender_is_refused_and_nothing_is_stored(
        self, world: World, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A message signed by a revoked agency is refused `sender_revoked`; no sealed
        evidence can go to a revoked agency, so the record says so."""
        revoked = Directory.load(
            dev_federation.sign_directory(now=fixed_now, revoked=["de.sta-berlin"], serial=3),
            root_cert=dev_federation.root.cert,
            now=fixed_now,
        )
        sta, nl = world.node("de.sta-berlin"), world.node("nl.politie", directory=revoked)

        async def run() -> None:
            sent = await sta.send(request_draft())
            await world.pump()
            assert nl.store.list_inbox() == []
            assert [r.reason for r in nl.store.list_rejections()] == ["sender_revoked"]
            (record,) = nl.store.evidence_for(sent.message_id)
            assert record.kind is EvidenceKind.REJECTED
            assert record.evidence_id is None
            assert "evidence not sent" in (record.detail or "")
            assert evidence_out(nl) == []

        asyncio.run(run())

    def test_recipient_policy_denial_names_its_rule(self, world: World) -> None:
        """A recipient-policy refusal is recorded and reported with its rule id."""

        def refuse(opened: OpenedMessage) -> None:
            raise PolicyDenied("nl.no-h2-requests", "not accepted here")

        de = world.node("de.lka-berlin")
        nl = world.node("nl.politie", recipient_check=refuse)

        async def run() -> None:
            sent = await de.send(request_draft())
            await world.pump()
            assert nl.store.list_inbox() == []
            (evidence,) = de.store.evidence_for(sent.message_id)
            assert (evidence.reason, evidence.rule_id) == ("policy_denied", "nl.no-h2-requests")

        asyncio.run(run())

    def test_dishonest_categories_are_refused_by_default(self, world: World) -> None:
        """Without a policy, a body holding undeclared categories is refused (honesty,
        reason category_undeclared)."""

        def lie(header: Header, body: Mapping[str, Any]) -> Clearance:
            return Clearance(body=body, categories=(), rule_id="lie", reason="test")

        de, nl = world.node("de.lka-berlin", preflight=lie), world.node("nl.politie")

        async def run() -> None:
            sent = await de.send(request_draft())
            await world.pump()
            assert nl.store.list_inbox() == []
            (evidence,) = de.store.evidence_for(sent.message_id)
            assert (evidence.reason, evidence.rule_id) == ("category_undeclared", "builtin.honesty")

        asyncio.run(run())

    def test_evidence_never_produces_evidence(self, world: World) -> None:
        """Neither accepted nor refused evidence messages are answered with evidence."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

        async def run() -> None:
            await de.send(request_draft())
            (delivery,) = world.transport("nl.politie").take()
            await nl.handle(delivery)
            (evidence,) = world.transport("de.lka-berlin").take()
            world.bus.deliver("de.lka-berlin", tamper(evidence.data))
            await de.handle(evidence)
            await world.pump()
            assert evidence_out(de) == []
            assert [r.reason for r in de.store.list_rejections()] == ["digest_mismatch"]
            assert evidence_out(nl) == ["evidence.delivered"]

        asyncio.run(run())


class TestRead:
    def test_opening_needs_a_justification(self, world: World) -> None:
        """Reading without a justification is refused and leaves the message unread."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

        async def run() -> None:
            sent = await de.send(request_draft())
            await world.pump()
            with pytest.raises(JustificationRequired):
                await nl.read(sent.message_id, actor="jan", justification="  ")
            assert nl.store.list_inbox(unread=True)[0].message_id == sent.message_id

        asyncio.run(run())

    def test_first_opening_sends_read_evidence_once(self, world: World) -> None:
        """Every opening is logged; only the first sends `read` evidence to the sender."""
        de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

        async def run() -> None:
            sent = await de.send(request_draft())
            await world.pump()
            opened = await nl.read(sent.message_id, actor="jan", justification="case 17")
            assert opened.read_by == "jan"
            await nl.read(sent.message_id, actor="eva", justification="review")
            await world.pump()
            assert kinds(de, sent.message_id) == ["delivered", "read"]
            assert [c[:2] for c in nl.store.consultations(sent.message_id)] == [
                ("jan", "case 17"),
                ("eva", "review"),
            ]
            assert nl.store.list_inbox(unread=True) == []

        asyncio.run(run())
