"""Border rules on real processes (nats-servers, both gateways, the LKA and NPU nodes).

Reproduces the accepted attacks of issue 10 that the gateways now refuse, each played by an
agency (or a compromised peer gateway) that bypasses its node and seals with its own real keys:
an invented ``evidence.*`` type, evidence about a message its sender never received, junk
naming another agency as sender (no evidence may be reflected to that agency), and a message
``derived_from`` one whose onward transfer is forbidden. Honest traffic between the same
agencies is delivered meanwhile.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pytest

from broker.core import jose
from broker.core import wire as s
from broker.core.evidence import EvidenceFacts, EvidenceKind
from broker.core.peek import unverified_header
from broker.gateway.border import EVIDENCE_SUBJECT_RULE, ONWARD_RULE
from tests.integration.e2e_helpers import Running, Sealed, bulletin, example, wait_until

pytestmark = pytest.mark.integration

LKA: Final = "de.lka-berlin"
STA: Final = "de.sta-berlin"
NPU: Final = "ua.npu"
DELIVERY: Final = 20.0


@pytest.fixture(scope="module")
def fed(nats_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """DE + UA with both gateways and the LKA and NPU nodes."""
    del nats_binary
    running = Running.start(tmp_path_factory.mktemp("border") / "fed", nodes=[LKA, NPU])
    try:
        yield running
    finally:
        running.close()


def send(fed: Running, sender: str, draft: dict[str, Any]) -> str:
    """Send through the sender's node; the message id."""
    result: dict[str, Any] = fed.client(sender).call("POST", "/v1/messages", body=draft)
    return str(result["message_id"])


def delivered(fed: Running, agency: str, message_id: str) -> None:
    wait_until(
        lambda: message_id in fed.inbox_ids(agency), DELIVERY, what=f"{message_id} at {agency}"
    )


def honest_traffic_flows(fed: Running) -> None:
    """Both directions still deliver (and, each lane being in order, everything published
    before has been decided)."""
    delivered(fed, NPU, send(fed, LKA, bulletin([NPU])))
    delivered(fed, LKA, send(fed, NPU, bulletin([LKA])))


def gateway_event(fed: Running, country: str, event: str, message_id: str) -> dict[str, Any]:
    """The first ``event`` the country's gateway logged about ``message_id`` (waits for it)."""

    def find() -> dict[str, Any]:
        for e in fed.log_events(f"gateway-{country.lower()}"):
            if e.get("event") == event and e.get("message_id") == message_id:
                return e
        return {}

    return wait_until(find, DELIVERY, what=f"{event} for {message_id} at {country}")


def evidence_about(fed: Running, country: str, stream: str, message_id: str) -> list[str]:
    """Types of the evidence messages in a stream whose subject is ``message_id``."""
    found = []
    for _, data in fed.stream_messages(country, stream):
        header = unverified_header(data)
        if header is not None and header.in_reply_to == message_id:
            found.append(header.type)
    return found


def seal_evidence(
    fed: Running,
    actor: str,
    to: str,
    subject_id: str,
    *,
    kind: EvidenceKind = EvidenceKind.DELIVERED,
    message_type: str | None = None,
    detail: str = "",
) -> Sealed:
    """Evidence sealed with the actor's real keys, bypassing its node."""
    body = EvidenceFacts(
        kind=kind,
        subject_id=subject_id,
        subject_digest=jose.sha256_b64url(b"unknown"),
        actor=actor,
        at=datetime.now(UTC),
        reason="policy_denied" if kind.is_refusal else None,
        detail=detail,
    ).body()
    return fed.seal_as(
        actor,
        [to],
        body,
        type=message_type or kind.message_type,
        purpose="system",
        handling="H0",
        in_reply_to=subject_id,
    )


def bad_signature(wire: bytes) -> bytes:
    """The same message with one character of its outer signature changed."""
    doc = json.loads(wire)
    head, payload, signature = doc["outer"].split(".")
    flipped = signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:]
    doc["outer"] = f"{head}.{payload}.{flipped}"
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


class TestEvidenceIsEvidence:
    def test_invented_evidence_type_is_refused_at_the_senders_border(self, fed: Running) -> None:
        """evidence.note from NPU: refused unknown_type by ua.gateway, never leaves UA."""
        subject = send(fed, LKA, bulletin([NPU]))
        delivered(fed, NPU, subject)
        forged = seal_evidence(fed, NPU, LKA, subject, message_type="evidence.note")
        fed.publish(NPU, s.submit_subject(NPU), [(forged.message_id, forged.wire)])
        event = gateway_event(fed, "UA", "message_refused", forged.message_id)
        assert event["reason"] == "unknown_type"
        honest_traffic_flows(fed)
        assert forged.message_id not in fed.stream_ids("UA", s.out_stream("DE"))
        assert forged.message_id not in fed.inbox_ids(LKA)

    def test_evidence_about_a_message_never_received_is_refused(self, fed: Running) -> None:
        """NPU's rejected evidence (with free text) about a domestic DE message it never got:
        refused by builtin.evidence-subject at ua.gateway."""
        domestic = send(fed, LKA, bulletin([STA]))
        forged = seal_evidence(
            fed, NPU, LKA, domestic, kind=EvidenceKind.REJECTED, detail="free text " * 15
        )
        fed.publish(NPU, s.submit_subject(NPU), [(forged.message_id, forged.wire)])
        event = gateway_event(fed, "UA", "border_decision", forged.message_id)
        assert (event["verdict"], event["rule_id"]) == ("deny", EVIDENCE_SUBJECT_RULE)
        honest_traffic_flows(fed)
        assert forged.message_id not in fed.stream_ids("UA", s.out_stream("DE"))

    def test_evidence_not_addressed_to_the_subjects_sender_is_refused_at_ingress(
        self, fed: Running
    ) -> None:
        """Evidence put straight into UA's outbox (a compromised ua.gateway) about an LKA
        message but addressed to StA: de.gateway refuses it by the same rule."""
        subject = send(fed, LKA, bulletin([NPU]))
        delivered(fed, NPU, subject)
        forged = seal_evidence(fed, NPU, STA, subject)
        fed.publish("ua.gateway", s.out_subject("UA", "DE"), [(forged.message_id, forged.wire)])
        event = gateway_event(fed, "DE", "border_decision", forged.message_id)
        assert (event["verdict"], event["rule_id"]) == ("deny", EVIDENCE_SUBJECT_RULE)
        honest_traffic_flows(fed)


class TestNoReflection:
    def test_junk_naming_another_agency_produces_no_cross_border_evidence(
        self, fed: Running
    ) -> None:
        """NPU submits LKA's own signed message and a copy with a broken signature: both are
        refused, and no relay_rejected is sent to LKA across the border."""
        genuine = fed.seal_as(LKA, [NPU], example("bulletin"))
        broken = bad_signature(genuine.wire)
        fed.publish(
            NPU,
            s.submit_subject(NPU),
            [(genuine.message_id, genuine.wire), (f"{genuine.message_id}-b", broken)],
        )
        event = gateway_event(fed, "UA", "message_refused", genuine.message_id)
        assert event["reason"] in {"sender_mismatch", "bad_signature"}
        honest_traffic_flows(fed)
        refusals = [
            e
            for e in fed.log_events("gateway-ua")
            if e.get("event") == "message_refused" and e.get("message_id") == genuine.message_id
        ]
        assert {e["reason"] for e in refusals} == {"sender_mismatch", "bad_signature"}
        assert evidence_about(fed, "UA", s.out_stream("DE"), genuine.message_id) == []

    def test_junk_from_abroad_naming_a_local_sender_gets_no_evidence(self, fed: Running) -> None:
        """Junk in DE's outbox claiming LKA (broken signature): ua.gateway tells nobody."""
        genuine = fed.seal_as(LKA, [NPU], example("bulletin"))
        fed.publish(
            "de.gateway",
            s.out_subject("DE", "UA"),
            [(genuine.message_id, bad_signature(genuine.wire))],
        )
        event = gateway_event(fed, "UA", "message_refused", genuine.message_id)
        assert event["reason"] == "bad_signature"
        honest_traffic_flows(fed)
        assert evidence_about(fed, "UA", s.out_stream("DE"), genuine.message_id) == []
        assert genuine.message_id not in fed.inbox_ids(NPU)


class TestOnwardTransfer:
    def test_derived_from_a_no_onward_message_is_refused_at_the_border(self, fed: Running) -> None:
        """LKA skips pre-flight and seals a message derived from one NPU sent without onward
        transfer: de.gateway refuses it (builtin.onward-transfer), while a message derived
        from one that allowed onward transfer is delivered."""
        forbidden = send(fed, NPU, bulletin([LKA]))
        allowed = send(fed, NPU, bulletin([LKA], onward_allowed=True))
        delivered(fed, LKA, forbidden)
        delivered(fed, LKA, allowed)
        derived = fed.seal_as(LKA, [NPU], example("bulletin"), derived_from=forbidden)
        fine = fed.seal_as(LKA, [NPU], example("bulletin"), derived_from=allowed)
        fed.publish(
            LKA,
            s.submit_subject(LKA),
            [(derived.message_id, derived.wire), (fine.message_id, fine.wire)],
        )
        event = gateway_event(fed, "DE", "border_decision", derived.message_id)
        assert (event["verdict"], event["rule_id"], event["peer"]) == ("deny", ONWARD_RULE, "UA")
        delivered(fed, NPU, fine.message_id)
        honest_traffic_flows(fed)
        assert derived.message_id not in fed.inbox_ids(NPU)
        assert derived.message_id not in fed.stream_ids("DE", s.out_stream("UA"))

    def test_unknown_original_is_not_a_border_refusal(self, fed: Running) -> None:
        """derived_from an id this border never let in is left to the sending node."""
        derived = fed.seal_as(LKA, [NPU], example("bulletin"), derived_from=str(uuid.uuid4()))
        fed.publish(LKA, s.submit_subject(LKA), [(derived.message_id, derived.wire)])
        delivered(fed, NPU, derived.message_id)
