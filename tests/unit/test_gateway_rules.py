"""Border rules beyond the country policy (real Border, real policies and PKI, in-memory
crossings): onward transfer, the five evidence types, evidence subjects, no evidence
reflection, and the crossing records each decision carries."""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from broker.core import jose
from broker.core.envelope import authenticated_header, seal
from broker.core.evidence import EvidenceFacts, EvidenceKind, evidence_header
from broker.core.header import Header, Onward
from broker.core.peek import unverified_header
from broker.gateway.border import (
    EVIDENCE_SUBJECT_RULE,
    ONWARD_RULE,
    Crossing,
    MemoryCrossings,
    Outcome,
)
from broker.pki.dev import DevFederation

from .gateway_world import GatewayWorld, build, policies, sender
from .test_gateway import evidence_of

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
LKA, STA, FBS, NPU, POLITIE = (
    "de.lka-berlin",
    "de.sta-berlin",
    "de.fbs-berlin",
    "ua.npu",
    "nl.politie",
)


@pytest.fixture(scope="module")
def dev() -> DevFederation:
    return build(NOW)


@pytest.fixture
def world(dev: DevFederation) -> GatewayWorld:
    return GatewayWorld(dev, NOW, policies())


def seal_evidence(
    world: GatewayWorld,
    actor: str,
    to: str,
    subject: Header,
    *,
    kind: EvidenceKind = EvidenceKind.DELIVERED,
    message_type: str | None = None,
    detail: str = "",
) -> tuple[Header, bytes]:
    """Evidence from ``actor`` to ``to`` about ``subject``, sealed with the actor's real keys."""
    header = evidence_header(
        federation_id=world.dev.federation_id,
        actor=actor,
        to=to,
        kind=kind,
        subject_id=subject.id,
        conversation=subject.conversation,
        now=NOW,
        message_id=str(uuid.uuid4()),
    )
    if message_type is not None:
        header = Header(**{**_fields(header), "type": message_type})
    body = EvidenceFacts(
        kind=kind,
        subject_id=subject.id,
        subject_digest=jose.sha256_b64url(b"x"),
        actor=actor,
        at=NOW,
        reason="policy_denied" if kind.is_refusal else None,
        detail=detail,
    ).body()
    wire = seal(
        header=header,
        body=body,
        sender=sender(world.dev, actor),
        resolver=world.dev.directory,
        now=NOW,
        salt=secrets.token_bytes(16),
    )
    return header, wire


def _fields(header: Header) -> dict[str, Any]:
    return {name: getattr(header, name) for name in Header.__slots__}


def egress_of(world: GatewayWorld, message_id: str) -> Outcome:
    return next(o for _, d, o in world.outcomes if d == "egress" and o.message_id == message_id)


def ingress_of(world: GatewayWorld, cc: str, message_id: str) -> Outcome:
    return next(
        o for c, d, o in world.outcomes if c == cc and d == "ingress" and o.message_id == message_id
    )


def received_from_ua(world: GatewayWorld, onward: Onward) -> Header:
    """A bulletin from UA delivered to LKA Berlin, with the given onward marking."""
    header, wire = world.seal(NPU, (LKA,), "bulletin", onward=onward)
    world.submit(NPU, wire)
    assert world.delivered[LKA] == [wire]
    return header


class TestCrossingRecords:
    def test_ingress_records_what_was_delivered_with_its_marking(self, world: GatewayWorld) -> None:
        """The receiving gateway records id, digest, sender, recipients, onward, exp and the
        declared files."""
        header = received_from_ua(world, Onward(allowed=True, exclude=("NL",)))
        (crossing,) = world.crossings["DE"].crossings(header.id)
        assert crossing == Crossing(
            message_id=header.id,
            direction="ingress",
            digest=jose.sha256_b64url(world.delivered[LKA][0]),
            sender=NPU,
            recipients=(LKA,),
            onward=Onward(allowed=True, exclude=("NL",)),
            exp=header.exp,
            attachments=(),  # the files its header declared: none
        )

    def test_egress_records_domestic_and_relayed_recipients(self, world: GatewayWorld) -> None:
        """The sending gateway records the local recipients and those of peers it relayed to."""
        header, wire = world.seal(LKA, (NPU, STA), "bulletin")
        world.submit(LKA, wire)
        (crossing,) = world.crossings["DE"].crossings(header.id)
        assert (crossing.direction, crossing.recipients) == ("egress", (STA, NPU))

    def test_refused_messages_and_evidence_are_not_recorded(self, world: GatewayWorld) -> None:
        """Nothing is recorded for a message that did not cross, nor for evidence."""
        header, wire = world.seal(
            FBS, (NPU,), "referral.victim", purpose="victim_support", handling="H2", tlp="AMBER"
        )
        world.submit(FBS, wire)
        assert world.crossings["DE"].crossings(header.id) == ()
        assert all(o.crossing is None for _, _, o in world.outcomes)

    def test_memory_purge_forgets_after_exp_and_skew(self, world: GatewayWorld) -> None:
        """Records stay until exp + clock skew and are forgotten after."""
        header = received_from_ua(world, Onward())
        memory = world.crossings["DE"]
        assert memory.purge(datetime.fromtimestamp(header.exp + 119, UTC)) == 0
        assert memory.purge(datetime.fromtimestamp(header.exp + 120, UTC)) == 1
        assert memory.crossings(header.id) == ()


class TestOnwardTransfer:
    def test_derived_message_abroad_is_refused_when_onward_is_not_allowed(
        self, world: GatewayWorld
    ) -> None:
        """derived_from a message received without onward transfer: refused for every peer,
        and the sender is told the rule."""
        original = received_from_ua(world, Onward(allowed=False))
        header, wire = world.seal(LKA, (POLITIE,), "bulletin", derived_from=original.id)
        world.submit(LKA, wire)
        assert world.delivered[POLITIE] == []
        outcome = egress_of(world, header.id)
        assert outcome.rejected_for == ("NL",)
        assert [d.rule_id for d in outcome.decisions] == [ONWARD_RULE]
        ((kind, body),) = evidence_of(world, LKA, header.id)
        assert (kind, body["rule_id"]) == ("evidence.relay_rejected", ONWARD_RULE)

    def test_excluded_country_refused_others_allowed(self, world: GatewayWorld) -> None:
        """With onward allowed except to NL, the NL copy is refused and the UA copy relayed."""
        original = received_from_ua(world, Onward(allowed=True, exclude=("NL",)))
        header, wire = world.seal(LKA, (NPU, POLITIE), "bulletin", derived_from=original.id)
        world.submit(LKA, wire)
        outcome = egress_of(world, header.id)
        assert (outcome.relayed_to, outcome.rejected_for) == (("UA",), ("NL",))
        assert wire in world.delivered[NPU]
        assert world.delivered[POLITIE] == []

    def test_domestic_recipients_are_not_an_onward_transfer(self, world: GatewayWorld) -> None:
        """Derived data staying in the country is delivered whatever the marking."""
        original = received_from_ua(world, Onward(allowed=False))
        _, wire = world.seal(LKA, (STA,), "bulletin", derived_from=original.id)
        world.submit(LKA, wire)
        assert world.delivered[STA] == [wire]

    def test_unknown_original_is_left_to_preflight(self, world: GatewayWorld) -> None:
        """A derived_from this border never let in is not judged here (pre-flight fails closed)."""
        header, wire = world.seal(LKA, (POLITIE,), "bulletin", derived_from=str(uuid.uuid4()))
        world.submit(LKA, wire)
        assert world.delivered[POLITIE] == [wire]
        assert ONWARD_RULE not in {d.rule_id for d in egress_of(world, header.id).decisions}

    def test_strictest_marking_of_every_received_copy_applies(self, world: GatewayWorld) -> None:
        """Two copies with one id (a peer resending with a looser marking): the stricter wins."""
        strict = received_from_ua(world, Onward(allowed=False))
        loose = world.crossings["DE"].crossings(strict.id)[0]
        world.crossings["DE"].record(
            "ingress",
            [
                Outcome(
                    crossing=Crossing(
                        message_id=loose.message_id,
                        direction="ingress",
                        digest="another-copy",
                        sender=loose.sender,
                        recipients=loose.recipients,
                        onward=Onward(allowed=True),
                        exp=loose.exp,
                    )
                )
            ],
            now=NOW,
        )
        _, wire = world.seal(LKA, (POLITIE,), "bulletin", derived_from=strict.id)
        world.submit(LKA, wire)
        assert world.delivered[POLITIE] == []


class TestEvidenceTypes:
    def test_invented_evidence_type_is_refused_at_egress(self, world: GatewayWorld) -> None:
        """evidence.note is not one of the five kinds: unknown_type, nothing published."""
        subject = received_from_ua(world, Onward())
        header, wire = seal_evidence(world, LKA, NPU, subject, message_type="evidence.note")
        world.submit(LKA, wire)
        outcome = egress_of(world, header.id)
        assert (outcome.refused, outcome.publishes) == ("unknown_type", ())

    def test_invented_evidence_type_is_refused_at_ingress(self, world: GatewayWorld) -> None:
        """The receiving border refuses it too (a peer gateway that let it out)."""
        subject, wire = world.seal(LKA, (NPU,), "bulletin")
        world.submit(LKA, wire)
        _, forged = seal_evidence(world, NPU, LKA, subject, message_type="evidence.memo")
        outcome = world.borders["DE"].inbound(forged, now=NOW)
        assert (outcome.refused, outcome.publishes) == ("unknown_type", ())

    def test_detail_is_cut_to_the_schema_bound(self, world: GatewayWorld) -> None:
        """Evidence bodies carry at most 200 characters of detail."""
        body = EvidenceFacts(
            kind=EvidenceKind.REJECTED,
            subject_id=str(uuid.uuid4()),
            subject_digest=jose.sha256_b64url(b""),
            actor=LKA,
            at=NOW,
            reason="policy_denied",
            detail="x" * 1000,
        ).body()
        assert len(body["detail"]) == 200


class TestEvidenceSubjects:
    def test_recipient_evidence_about_a_delivered_message_flows(self, world: GatewayWorld) -> None:
        """delivered evidence from the recipient to the sender crosses both borders."""
        subject, wire = world.seal(LKA, (NPU,), "bulletin")
        world.submit(LKA, wire)
        evidence, ewire = seal_evidence(world, NPU, LKA, subject)
        world.submit(NPU, ewire)
        assert ewire in world.delivered[LKA]
        assert egress_of(world, evidence.id).relayed_to == ("DE",)

    def test_ngo_cannot_smuggle_text_as_evidence_about_nothing(self, world: GatewayWorld) -> None:
        """An NGO's rejected evidence about a message it never received is refused with the
        rule id, even though its case messages to foreign police are denied by policy."""
        subject, wire = world.seal(NPU, (LKA,), "bulletin")
        world.submit(NPU, wire)
        evidence, ewire = seal_evidence(
            world, FBS, NPU, subject, kind=EvidenceKind.REJECTED, detail="victim named ..."
        )
        world.submit(FBS, ewire)
        outcome = egress_of(world, evidence.id)
        assert outcome.publishes == ()
        assert outcome.rejected_for == ("UA",)
        assert [d.rule_id for d in outcome.decisions] == [EVIDENCE_SUBJECT_RULE]

    def test_evidence_to_someone_other_than_the_subjects_sender_is_refused(
        self, world: GatewayWorld
    ) -> None:
        """A recipient reports only to the message's sender."""
        subject, wire = world.seal(LKA, (NPU,), "bulletin")
        world.submit(LKA, wire)
        evidence, ewire = seal_evidence(world, NPU, STA, subject)
        world.submit(NPU, ewire)
        assert [d.rule_id for d in egress_of(world, evidence.id).decisions] == [
            EVIDENCE_SUBJECT_RULE
        ]
        assert world.delivered[STA] == []

    def test_agency_cannot_submit_relay_evidence(self, world: GatewayWorld) -> None:
        """relay_* evidence comes from gateways only; an agency submitting it is refused."""
        subject, wire = world.seal(LKA, (NPU,), "bulletin")
        world.submit(LKA, wire)
        evidence, ewire = seal_evidence(world, NPU, LKA, subject, kind=EvidenceKind.RELAY_ACCEPTED)
        world.submit(NPU, ewire)
        assert egress_of(world, evidence.id).decisions[0].rule_id == EVIDENCE_SUBJECT_RULE

    def test_domestic_evidence_follows_the_same_rule(self, world: GatewayWorld) -> None:
        """Within a country too: read evidence only from an agency the message was delivered to."""
        subject, wire = world.seal(LKA, (STA,), "bulletin")
        world.submit(LKA, wire)
        _, good = seal_evidence(world, STA, LKA, subject, kind=EvidenceKind.READ)
        world.submit(STA, good)
        assert good in world.delivered[LKA]
        bad_header, bad = seal_evidence(world, FBS, LKA, subject, kind=EvidenceKind.READ)
        world.submit(FBS, bad)
        assert bad not in world.delivered[LKA]
        assert egress_of(world, bad_header.id).rejected_for == ("DE",)

    def test_ingress_refuses_evidence_from_an_agency_not_sent_the_message(
        self, world: GatewayWorld
    ) -> None:
        """A peer's agency reports on a message sent from here only if it was sent to it."""
        subject, wire = world.seal(LKA, (POLITIE,), "bulletin")
        world.submit(LKA, wire)
        _, forged = seal_evidence(world, NPU, LKA, subject)
        outcome = world.borders["DE"].inbound(forged, now=NOW)
        assert [d.rule_id for d in outcome.decisions] == [EVIDENCE_SUBJECT_RULE]
        assert outcome.publishes == ()

    def test_ingress_refuses_relay_evidence_from_a_non_gateway(self, world: GatewayWorld) -> None:
        """Relay evidence about a message sent from here must come from a peer's gateway."""
        subject, wire = world.seal(LKA, (NPU,), "bulletin")
        world.submit(LKA, wire)
        _, forged = seal_evidence(world, NPU, LKA, subject, kind=EvidenceKind.RELAY_ACCEPTED)
        assert world.borders["DE"].inbound(forged, now=NOW).decisions[0].rule_id == (
            EVIDENCE_SUBJECT_RULE
        )

    def test_ingress_lets_evidence_about_unknown_subjects_through(
        self, world: GatewayWorld
    ) -> None:
        """A subject this border has no record of cannot be judged here: the node decides."""
        subject, _ = world.seal(LKA, (NPU,), "bulletin")  # sealed, never submitted
        _, ewire = seal_evidence(world, NPU, LKA, subject)
        outcome = world.borders["DE"].inbound(ewire, now=NOW)
        assert outcome.relayed_to == (LKA,)


class TestNoReflection:
    def _bad_signature(self, wire: bytes) -> bytes:
        doc = json.loads(wire)
        head, payload, signature = doc["outer"].split(".")
        flipped = ("A" if signature[5] != "A" else "B").join((signature[:5], signature[6:]))
        doc["outer"] = f"{head}.{payload}.{flipped}"
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    def test_junk_claiming_another_agency_gets_no_evidence_at_ingress(
        self, world: GatewayWorld
    ) -> None:
        """A message naming LKA Berlin as sender but not signed by it: refused, nobody told."""
        _, wire = world.seal(LKA, (NPU,), "bulletin")
        junk = self._bad_signature(wire)
        assert authenticated_header(junk, resolver=world.dev.directory, now=NOW) is None
        outcome = world.borders["UA"].inbound(junk, now=NOW)
        assert outcome.refused
        assert (outcome.publishes, outcome.evidence) == ((), ())

    def test_junk_claiming_another_agency_gets_no_evidence_at_egress(
        self, world: GatewayWorld
    ) -> None:
        """Junk submitted by LKA naming StA as sender produces no evidence for anyone."""
        _, wire = world.seal(STA, (NPU,), "bulletin")
        outcome = world.borders["DE"].submission(
            self._bad_signature(wire), subject_agency=LKA, now=NOW
        )
        assert outcome.refused
        assert outcome.publishes == ()

    def test_another_agencys_signed_message_gets_no_evidence(self, world: GatewayWorld) -> None:
        """A message validly signed by StA but submitted by LKA: the victim is not told."""
        _, wire = world.seal(STA, (NPU,), "bulletin")
        outcome = world.borders["DE"].submission(wire, subject_agency=LKA, now=NOW)
        assert (outcome.refused, outcome.publishes) == ("sender_mismatch", ())

    def test_authenticated_sender_is_told_of_a_later_failure(self, world: GatewayWorld) -> None:
        """A failure after the signature verified (expired) is reported to that signer."""
        header, wire = world.seal(LKA, (NPU,), "bulletin")
        later = datetime.fromtimestamp(header.exp + 3600, UTC)
        outcome = world.borders["DE"].submission(wire, subject_agency=LKA, now=later)
        assert outcome.refused == "expired"
        (evidence,) = outcome.publishes
        assert evidence.subject == f"cb.deliver.{LKA}.evidence"
        told = unverified_header(evidence.data)
        assert told is not None
        assert told.recipients == (LKA,)

    def test_refused_evidence_gets_no_evidence(self, world: GatewayWorld) -> None:
        """No cascades: signed evidence that fails verification (altered JWE) produces nothing."""
        subject, wire = world.seal(LKA, (NPU,), "bulletin")
        world.submit(LKA, wire)
        _, ewire = seal_evidence(world, NPU, LKA, subject)
        at = ewire.index(b"ciphertext") + 20
        altered = ewire[:at] + (b"A" if ewire[at : at + 1] != b"A" else b"B") + ewire[at + 1 :]
        outcome = world.borders["DE"].inbound(altered, now=NOW)
        assert outcome.refused == "digest_mismatch"
        assert outcome.publishes == ()


def test_memory_crossings_keep_the_first_record_per_key() -> None:
    """Recording the same crossing twice keeps one record (like the ledger's unique key)."""
    memory = MemoryCrossings()
    crossing = Crossing(
        message_id=str(uuid.uuid4()),
        direction="ingress",
        digest="d",
        sender=NPU,
        recipients=(LKA,),
        onward=Onward(),
        exp=10,
    )
    memory.record("ingress", [Outcome(crossing=crossing)] * 2, now=NOW)
    assert memory.crossings(crossing.message_id) == (crossing,)


class TestAuthenticatedHeader:
    def test_signed_header_is_returned_even_when_later_checks_fail(
        self, world: GatewayWorld
    ) -> None:
        """The signer's header comes back for an intact message and for one with an altered
        JWE (the outer signature still verifies), so that sender can be told."""
        header, wire = world.seal(LKA, (NPU,), "bulletin")
        at = wire.index(b"ciphertext") + 20
        altered = wire[:at] + (b"A" if wire[at : at + 1] != b"A" else b"B") + wire[at + 1 :]
        for data in (wire, altered):
            assert authenticated_header(data, resolver=world.dev.directory, now=NOW) == header

    def test_garbage_is_never_authenticated(self, world: GatewayWorld) -> None:
        """Bytes that are not a signed message give None, never an exception."""
        for data in (b"", b"{}", b"\xff\xfe", b'{"jwe":"{}","outer":"a.b.c","v":1}'):
            assert authenticated_header(data, resolver=world.dev.directory, now=NOW) is None
