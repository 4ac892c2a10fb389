"""Border gateway decisions (the real Border logic, real policies and PKI; no NATS)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broker.core.directory import Directory
from broker.core.envelope import OpenedMessage, open_message
from broker.core.peek import unverified_header
from broker.core.replay import MemoryReplayStore
from broker.gateway.border import Border, MemoryCrossings
from broker.loaders import load_schema_registry
from broker.pki.dev import DevFederation

from .gateway_world import GatewayWorld, build, policies, recipient, sender

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
POLICE = {"purpose": "investigation", "handling": "H2", "tlp": "AMBER"}


@pytest.fixture(scope="module")
def dev() -> DevFederation:
    return build(NOW)


@pytest.fixture
def world(dev: DevFederation) -> GatewayWorld:
    return GatewayWorld(dev, NOW, policies())


def open_all(world: GatewayWorld, agency: str) -> list[OpenedMessage]:
    registry = load_schema_registry()
    store = MemoryReplayStore()
    return [
        open_message(
            wire,
            recipient=recipient(world.dev, agency),
            resolver=world.dev.directory,
            replay=store,
            validator=registry,
            now=NOW,
        )
        for wire in world.delivered[agency]
    ]


def evidence_of(
    world: GatewayWorld, agency: str, message_id: str
) -> list[tuple[str, dict[str, Any]]]:
    return [
        (m.header.type, dict(m.body))
        for m in open_all(world, agency)
        if m.header.in_reply_to == message_id
    ]


class TestEgressAndIngress:
    def test_allowed_cross_border_message_is_delivered_once(self, world: GatewayWorld) -> None:
        """A message both policies allow reaches its recipient exactly once, unchanged."""
        header, wire = world.seal("de.lka-berlin", ("ua.npu",), "bulletin")
        world.submit("de.lka-berlin", wire)
        assert world.delivered["ua.npu"] == [wire]
        assert open_all(world, "ua.npu")[0].header == header

    def test_sender_gets_relay_evidence_from_both_borders(self, world: GatewayWorld) -> None:
        """relay_accepted comes back from the egress and the ingress gateway, both signed."""
        header, wire = world.seal("de.lka-berlin", ("ua.npu",), "bulletin")
        world.submit("de.lka-berlin", wire)
        evidence = evidence_of(world, "de.lka-berlin", header.id)
        actors = sorted(
            body["actor"] for kind, body in evidence if kind == "evidence.relay_accepted"
        )
        assert actors == ["de.gateway", "ua.gateway"]
        assert all(body["subject_digest"] for _, body in evidence)

    def test_case_messages_and_evidence_take_separate_delivery_lanes(
        self, world: GatewayWorld
    ) -> None:
        """Case messages go to cb.deliver.<agency>, evidence to cb.deliver.<agency>.evidence,
        so a node's incoming messages never queue behind the evidence about what it sent."""
        _, wire = world.seal("de.lka-berlin", ("ua.npu",), "bulletin")
        world.submit("de.lka-berlin", wire)
        lanes: dict[str, set[str]] = {}
        for _, _, outcome in world.outcomes:
            for p in outcome.publishes:
                if p.subject.startswith("cb.deliver."):
                    header = unverified_header(p.data)
                    assert header is not None
                    lanes.setdefault(p.subject, set()).add(header.type)
        assert lanes["cb.deliver.ua.npu"] == {"bulletin"}
        assert lanes["cb.deliver.de.lka-berlin.evidence"] == {"evidence.relay_accepted"}
        assert "cb.deliver.de.lka-berlin" not in lanes

    def test_policy_denied_message_never_leaves(self, world: GatewayWorld) -> None:
        """An egress denial publishes nothing towards the peer and tells the sender the rule."""
        header, wire = world.seal(
            "de.fbs-berlin",
            ("ua.npu",),
            "referral.victim",
            purpose="victim_support",
            handling="H2",
            tlp="AMBER",
        )
        world.submit("de.fbs-berlin", wire)
        assert world.delivered["ua.npu"] == []
        assert not any(d == "ingress" for _, d, _o in world.outcomes)
        ((kind, body),) = evidence_of(world, "de.fbs-berlin", header.id)
        assert kind == "evidence.relay_rejected"
        assert body["rule_id"] == "de.out.ngo-no-police-abroad"
        assert body["reason"] == "policy_denied"

    def test_multi_country_message_is_relayed_per_peer(self, world: GatewayWorld) -> None:
        """One message to NL and UA crosses both borders under each peer's own rule."""
        header, wire = world.seal(
            "de.lka-berlin", ("nl.politie", "ua.npu"), "request.assistance", **POLICE
        )
        world.submit("de.lka-berlin", wire)
        assert world.delivered["nl.politie"] == [wire]
        assert world.delivered["ua.npu"] == [wire]
        egress = next(
            o for cc, d, o in world.outcomes if d == "egress" and o.message_id == header.id
        )
        assert sorted({x.rule_id for x in egress.decisions}) == [
            "de.out.eu-police",
            "de.out.partner-police",
        ]

    def test_domestic_message_skips_border_policy(self, world: GatewayWorld) -> None:
        """A message between two agencies of one country goes straight to delivery."""
        _, wire = world.seal("de.lka-berlin", ("de.sta-berlin",), "request.assistance", **POLICE)
        world.submit("de.lka-berlin", wire)
        assert world.delivered["de.sta-berlin"] == [wire]
        assert world.outcomes[0][2].decisions == ()

    def test_resubmission_is_deduplicated(self, world: GatewayWorld) -> None:
        """The same message submitted twice (a node retry) is delivered and evidenced once."""
        header, wire = world.seal("de.lka-berlin", ("ua.npu",), "bulletin")
        world.submit("de.lka-berlin", wire)
        world.submit("de.lka-berlin", wire)
        assert world.delivered["ua.npu"] == [wire]
        assert len(evidence_of(world, "de.lka-berlin", header.id)) == 2

    def test_store_and_forward_when_destination_is_down(self, world: GatewayWorld) -> None:
        """While UA is down the message waits; when UA returns it is delivered once."""
        world.down.add("UA")
        _, wire = world.seal("de.lka-berlin", ("ua.npu",), "bulletin")
        world.submit("de.lka-berlin", wire)
        assert world.delivered["ua.npu"] == []
        world.bring_up("UA")
        assert world.delivered["ua.npu"] == [wire]

    def test_evidence_never_produces_evidence(self, world: GatewayWorld) -> None:
        """Evidence crossing borders is routed but no gateway emits evidence about it."""
        _, wire = world.seal("de.lka-berlin", ("ua.npu",), "bulletin")
        world.submit("de.lka-berlin", wire)
        for _, _, outcome in world.outcomes:
            if outcome.message_type and outcome.message_type.startswith("evidence."):
                assert outcome.evidence == ()


class TestRefusals:
    def test_submitting_someone_elses_message(self, world: GatewayWorld) -> None:
        """An agency cannot submit a message signed by another agency."""
        _, wire = world.seal("de.lka-berlin", ("ua.npu",), "bulletin")
        outcome = world.borders["DE"].submission(wire, subject_agency="de.sta-berlin", now=NOW)
        assert outcome.refused == "sender_mismatch"
        assert all(not p.subject.startswith("cb.out.") for p in outcome.publishes)

    def test_tampered_message_injected_at_the_border(self, world: GatewayWorld) -> None:
        """Altered bytes arriving from abroad are refused; the claimed sender is told why."""
        _, wire = world.seal("de.lka-berlin", ("ua.npu",), "bulletin")
        at = wire.index(b"ciphertext") + 20
        tampered = wire[:at] + (b"A" if wire[at : at + 1] != b"A" else b"B") + wire[at + 1 :]
        outcome = world.borders["UA"].inbound(tampered, now=NOW)
        assert outcome.refused == "digest_mismatch"
        (evidence,) = outcome.publishes
        assert evidence.subject == "cb.out.ua.de"
        assert not any(p.subject == "cb.deliver.ua.npu" for p in outcome.publishes)

    def test_revoked_sender_is_refused_at_ingress(
        self, world: GatewayWorld, dev: DevFederation
    ) -> None:
        """After a revocation is published, the destination gateway refuses the sender."""
        _, wire = world.seal("de.lka-berlin", ("ua.npu",), "bulletin")
        later = NOW + timedelta(minutes=1)
        revoked = Directory.load(
            dev.sign_directory(now=later, revoked=["de.lka-berlin"], serial=5),
            root_cert=dev.root.cert,
            now=later,
        )
        border = Border(
            country="UA",
            identity=sender(dev, "ua.gateway"),
            directory=lambda: revoked,
            policy=lambda: world.policy["UA"],
            crossings=MemoryCrossings(),
        )
        outcome = border.inbound(wire, now=later)
        assert outcome.refused == "sender_revoked"
        assert not any(p.subject.startswith("cb.deliver.") for p in outcome.publishes)

    def test_no_policy_loaded_fails_closed(self, world: GatewayWorld) -> None:
        """Without a valid policy a gateway relays nothing across the border."""
        world.policy.pop("DE")
        _, wire = world.seal("de.lka-berlin", ("ua.npu",), "bulletin")
        world.submit("de.lka-berlin", wire)
        assert world.delivered["ua.npu"] == []
        assert world.outcomes[0][2].refused == "policy_denied"

    def test_garbage_never_raises(self, world: GatewayWorld) -> None:
        """Arbitrary bytes are refused with a reason, at either border."""
        for data in (b"", b"{}", b"\xff" * 10, b'{"v":1,"outer":"a.b.c","jwe":"{}"}'):
            assert (
                world.borders["DE"]
                .submission(data, subject_agency="de.lka-berlin", now=NOW)
                .refused
            )
            assert world.borders["UA"].inbound(data, now=NOW).refused
