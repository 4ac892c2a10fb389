"""The border gateway's decisions, without I/O: bytes in, publications and evidence out.

For each message taken from its country's ``SUBMIT`` stream (egress) or ``INBOX`` stream
(ingress), :class:`Border` verifies the outer layer (``verify_routing``: sender certificate,
signature, header, time), applies the country's policy on the signed header, and returns what
to publish: the unchanged wire bytes to ``OUT_<PEER>`` / ``DELIVER``, plus signed evidence
(``relay_accepted`` / ``relay_rejected`` naming the rule) for the sender. Evidence never produces
evidence. The caller (``broker.gateway.runner``) publishes everything, then acks the input.
Time and randomness come in; nothing here touches NATS.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from broker.core import canonical, jose
from broker.core.directory import Directory
from broker.core.envelope import RoutedMessage, SenderIdentity, seal, verify_routing
from broker.core.evidence import (
    EvidenceFacts,
    EvidenceKind,
    evidence_header,
    is_evidence,
    wants_evidence,
)
from broker.core.header import AGENCY_RE, Header, agency_country
from broker.core.ids import derived_uuid4
from broker.core.policy import Decision, Federation, Policy, evaluate_egress, evaluate_ingress
from broker.errors import CasebridgeError, InvalidMessage, Reason
from broker.federation import subjects

# Deterministic evidence ids: the same decision about the same message always gets the same
# id, so a redelivered input produces duplicates that JetStream and the node de-duplicate.
EVIDENCE_NAMESPACE: Final = uuid.UUID("6f1c2a52-4d0e-4c4b-9a51-1c1b8f0e2d77")
NO_POLICY_RULE: Final = "builtin.no-policy"


@dataclass(frozen=True, kw_only=True, slots=True)
class Publish:
    """One JetStream publication the runner must make (with ``Nats-Msg-Id`` = ``msg_id``)."""

    subject: str
    msg_id: str
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What the gateway decided about one input message."""

    publishes: tuple[Publish, ...] = ()
    decisions: tuple[Decision, ...] = ()
    message_id: str | None = None
    message_type: str | None = None
    sender: str | None = None
    refused: str | None = None  # reason code when the message failed verification
    detail: str = ""
    relayed_to: tuple[str, ...] = ()  # peer countries (egress) or agencies (ingress)
    rejected_for: tuple[str, ...] = ()
    evidence: tuple[EvidenceKind, ...] = field(default_factory=tuple)


def _unverified_sender(data: bytes) -> tuple[str, str, str] | None:
    """(id, sender agency, conversation) from a message that failed verification, if legible.

    Used only to address a ``relay_rejected`` to the agency the message *claims* to come from;
    never for a decision.
    """
    try:
        wire = canonical.loads_strict(data, what="message", max_depth=None)
        outer = wire["outer"].split(".")
        payload = canonical.loads_strict(jose.b64url_decode(outer[1], what="p"), max_depth=8)
        header = payload["header"]
        msg_id, sender, conversation = (
            header["id"],
            header["sender"]["agency"],
            header["conversation"],
        )
        uuid.UUID(msg_id)
        uuid.UUID(conversation)
    except (CasebridgeError, KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    if not isinstance(sender, str) or not AGENCY_RE.match(sender) or sender.startswith("tf."):
        return None
    return msg_id, sender, conversation


class Border:
    """One country's border decisions. Cheap to construct; holds no mutable state."""

    def __init__(
        self,
        *,
        country: str,
        identity: SenderIdentity,
        directory: Callable[[], Directory],
        policy: Callable[[], Policy | None],
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.country = country.upper()
        self.identity = identity
        self._directory = directory
        self._policy = policy
        self._random = random

    # ------------------------------------------------------------------ evidence ---

    def _evidence(
        self,
        *,
        kind: EvidenceKind,
        subject_id: str,
        subject_digest: str,
        conversation: str,
        to: str,
        now: datetime,
        reason: str | None = None,
        rule_id: str | None = None,
        detail: str = "",
        scope: str = "",
    ) -> Publish | None:
        directory = self._directory()
        evidence_id = derived_uuid4(
            EVIDENCE_NAMESPACE, f"{subject_id}|{kind.value}|{self.identity.agency_id}|{scope}"
        )
        header = evidence_header(
            federation_id=directory.federation_id,
            actor=self.identity.agency_id,
            to=to,
            kind=kind,
            subject_id=subject_id,
            conversation=conversation,
            now=now,
            message_id=evidence_id,
        )
        facts = EvidenceFacts(
            kind=kind,
            subject_id=subject_id,
            subject_digest=subject_digest,
            actor=self.identity.agency_id,
            at=now,
            reason=reason,
            rule_id=rule_id,
            detail=detail,
        )
        try:
            wire = seal(
                header=header,
                body=facts.body(),
                sender=self.identity,
                resolver=directory,
                now=now,
                salt=self._random(16),
            )
        except CasebridgeError:
            return None  # e.g. the sender is no longer in the directory: nobody to tell
        return self._route(header, wire)

    def _route(self, header: Header, wire: bytes) -> Publish:
        """Where a message this gateway emits goes: local delivery or the peer's outbox."""
        (to,) = header.recipients
        destination = agency_country(to)
        if destination == self.country:
            return Publish(
                subject=subjects.deliver_subject(to, evidence=True),
                msg_id=f"{header.id}:{to}",
                data=wire,
            )
        return Publish(
            subject=subjects.out_subject(self.country, destination), msg_id=header.id, data=wire
        )

    def _refused(
        self, data: bytes, exc: CasebridgeError, *, now: datetime, direction: str
    ) -> Outcome:
        claimed = _unverified_sender(data)
        publishes: list[Publish] = []
        if claimed is not None and exc.reason is not Reason.UNKNOWN_SENDER:
            msg_id, sender, conversation = claimed
            evidence = self._evidence(
                kind=EvidenceKind.RELAY_REJECTED,
                subject_id=msg_id,
                subject_digest=jose.sha256_b64url(data),
                conversation=conversation,
                to=sender,
                now=now,
                reason=exc.reason.value,
                rule_id=None,
                detail=f"{direction}: {exc.detail}"[:300],
                scope=direction,
            )
            if evidence is not None:
                publishes.append(evidence)
        return Outcome(
            publishes=tuple(publishes),
            message_id=claimed[0] if claimed else None,
            sender=claimed[1] if claimed else None,
            refused=exc.reason.value,
            detail=exc.detail,
            evidence=(EvidenceKind.RELAY_REJECTED,) if publishes else (),
        )

    def _verify(self, data: bytes, now: datetime) -> RoutedMessage:
        return verify_routing(data, resolver=self._directory(), now=now)

    def _current_policy(self) -> Policy:
        policy = self._policy()
        if policy is None:
            raise InvalidMessage(Reason.POLICY_DENIED, f"no valid policy loaded for {self.country}")
        return policy

    # -------------------------------------------------------------------- egress ---

    def submission(self, data: bytes, *, subject_agency: str, now: datetime) -> Outcome:
        """A message an agency of this country submitted: verify, decide per peer, route."""
        try:
            routed = self._verify(data, now)
            if routed.header.sender != subject_agency:
                raise InvalidMessage(
                    Reason.SENDER_MISMATCH,
                    f"{subject_agency} submitted a message signed by {routed.header.sender}",
                )
            if routed.header.sender_country != self.country:
                raise InvalidMessage(Reason.SENDER_MISMATCH, "sender is not of this country")
            policy = self._current_policy()
        except CasebridgeError as exc:
            return self._refused(data, exc, now=now, direction="egress")
        header = routed.header
        lane = is_evidence(header.type)
        publishes = [
            Publish(
                subject=subjects.deliver_subject(r, evidence=lane),
                msg_id=f"{header.id}:{r}",
                data=data,
            )
            for r in header.recipients
            if agency_country(r) == self.country
        ]
        peers = sorted({c for c in header.countries if c != self.country})
        if not peers:
            return Outcome(
                publishes=tuple(publishes),
                message_id=header.id,
                message_type=header.type,
                sender=header.sender,
                relayed_to=(self.country,),
            )
        outcome = evaluate_egress(policy, header, federation=self._federation())
        by_peer: dict[str, list[Decision]] = {p: [] for p in peers}
        for decision in outcome.decisions:
            if decision.peer in by_peer:
                by_peer[decision.peer].append(decision)
        relayed: list[str] = []
        rejected: list[str] = []
        kinds: list[EvidenceKind] = []
        for peer in peers:
            decisions = by_peer[peer] or [outcome.decision]
            denied = [d for d in decisions if not d.allowed]
            if not denied:
                relayed.append(peer)
                publishes.append(
                    Publish(
                        subject=subjects.out_subject(self.country, peer),
                        msg_id=header.id,
                        data=data,
                    )
                )
            else:
                rejected.append(peer)
            if wants_evidence(header):
                first = denied[0] if denied else decisions[0]
                evidence = self._evidence(
                    kind=EvidenceKind.RELAY_REJECTED if denied else EvidenceKind.RELAY_ACCEPTED,
                    subject_id=header.id,
                    subject_digest=routed.digest,
                    conversation=header.conversation,
                    to=header.sender,
                    now=now,
                    reason=Reason.POLICY_DENIED.value if denied else None,
                    rule_id=first.rule_id if denied else None,
                    detail=(
                        f"egress {self.country}->{peer}: {first.reason}"
                        if denied
                        else f"relayed {self.country}->{peer} under {first.rule_id}"
                    ),
                    scope=f"egress:{peer}",
                )
                if evidence is not None:
                    publishes.append(evidence)
                    kinds.append(
                        EvidenceKind.RELAY_REJECTED if denied else EvidenceKind.RELAY_ACCEPTED
                    )
        return Outcome(
            publishes=tuple(publishes),
            decisions=outcome.decisions,
            message_id=header.id,
            message_type=header.type,
            sender=header.sender,
            relayed_to=tuple(relayed),
            rejected_for=tuple(rejected),
            evidence=tuple(kinds),
        )

    # ------------------------------------------------------------------- ingress ---

    def inbound(self, data: bytes, *, now: datetime) -> Outcome:
        """A message arriving from a peer's outbox: verify, decide per local recipient, route."""
        try:
            routed = self._verify(data, now)
            if routed.header.sender_country == self.country:
                raise InvalidMessage(Reason.NOT_ADDRESSED, "a domestic message arrived from abroad")
            local = [r for r in routed.header.recipients if agency_country(r) == self.country]
            if not local:
                raise InvalidMessage(Reason.NOT_ADDRESSED, f"no recipient in {self.country}")
            policy = self._current_policy()
        except CasebridgeError as exc:
            return self._refused(data, exc, now=now, direction="ingress")
        header = routed.header
        outcome = evaluate_ingress(policy, header, federation=self._federation())
        decided = {d.recipient: d for d in outcome.decisions if d.recipient is not None}
        publishes: list[Publish] = []
        allowed: list[str] = []
        denied: list[tuple[str, Decision]] = []
        for agency in local:
            decision = decided.get(agency, outcome.decision)
            if decision.allowed:
                allowed.append(agency)
                publishes.append(
                    Publish(
                        subject=subjects.deliver_subject(agency, evidence=is_evidence(header.type)),
                        msg_id=f"{header.id}:{agency}",
                        data=data,
                    )
                )
            else:
                denied.append((agency, decision))
        kinds: list[EvidenceKind] = []
        if wants_evidence(header):
            for kind, scope, verdict, detail in self._ingress_evidence(allowed, denied):
                evidence = self._evidence(
                    kind=kind,
                    subject_id=header.id,
                    subject_digest=routed.digest,
                    conversation=header.conversation,
                    to=header.sender,
                    now=now,
                    reason=Reason.POLICY_DENIED.value if verdict and not verdict.allowed else None,
                    rule_id=verdict.rule_id if verdict and not verdict.allowed else None,
                    detail=detail,
                    scope=scope,
                )
                if evidence is not None:
                    publishes.append(evidence)
                    kinds.append(kind)
        return Outcome(
            publishes=tuple(publishes),
            decisions=outcome.decisions,
            message_id=header.id,
            message_type=header.type,
            sender=header.sender,
            relayed_to=tuple(allowed),
            rejected_for=tuple(a for a, _ in denied),
            evidence=tuple(kinds),
        )

    def _ingress_evidence(
        self, allowed: Iterable[str], denied: Iterable[tuple[str, Decision]]
    ) -> list[tuple[EvidenceKind, str, Decision | None, str]]:
        out: list[tuple[EvidenceKind, str, Decision | None, str]] = []
        allowed = list(allowed)
        if allowed:
            out.append(
                (
                    EvidenceKind.RELAY_ACCEPTED,
                    "ingress",
                    None,
                    f"ingress {self.country}: delivered to {', '.join(allowed)}",
                )
            )
        for agency, decision in denied:
            out.append(
                (
                    EvidenceKind.RELAY_REJECTED,
                    f"ingress:{agency}",
                    decision,
                    f"ingress {self.country} for {agency}: {decision.reason}",
                )
            )
        return out

    def _federation(self) -> Federation:
        return Federation.from_directory(self._directory())
