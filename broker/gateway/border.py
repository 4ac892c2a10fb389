"""The border gateway's decisions, without I/O: bytes in, publications and evidence out.

For each message taken from its country's ``SUBMIT`` stream (egress) or ``INBOX`` stream
(ingress), :class:`Border` verifies the outer layer (``verify_routing``: sender certificate,
signature, header, time), applies the border rules and the country's policy on the signed
header, and returns what to publish: the unchanged wire bytes to ``OUT_<PEER>`` / ``DELIVER``,
plus signed evidence (``relay_accepted`` / ``relay_rejected`` naming the rule) for the sender.
The caller (``broker.gateway.runner``) records the :class:`Outcome` in the ledger, publishes
everything, then acks the input. Time and randomness come in; nothing here touches NATS.

Border rules besides the country policy (docs/federation.md, "Border rules"):

* only the five evidence types exist: any other ``evidence.*`` type is refused
  (``unknown_type``), so the policies' evidence rules cannot be used as a bypass;
* ``builtin.onward-transfer``: a message ``derived_from`` one this country received (a
  :class:`Crossing` of direction ingress) goes abroad only as that message's onward marking
  allows, the same rule pre-flight applies (``broker.core.policy``);
* ``builtin.evidence-subject``: evidence refers to a message its sender could have handled and
  is addressed to that message's sender, as far as the crossings recorded here can tell;
* evidence is sent only to an authenticated sender (the outer signature verified), never to
  whoever a message merely claims as sender, and never about evidence (no cascades).

What it must never do: read the clock, touch NATS or SQLite (crossings are read through the
:class:`CrossingLog` seam), or send evidence to an agency that did not sign the message.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Protocol

from broker.core import jose
from broker.core import wire as subjects
from broker.core.attachments import Descriptor
from broker.core.directory import Directory
from broker.core.envelope import (
    DEFAULT_LIMITS,
    RoutedMessage,
    SenderIdentity,
    authenticated_header,
    seal,
    verify_routing,
)
from broker.core.evidence import (
    EVIDENCE_PREFIX,
    EvidenceKind,
    Subject,
    build_evidence,
    evidence_kind,
    is_evidence,
    wants_evidence,
)
from broker.core.header import Header, Onward, agency_country
from broker.core.ids import derived_uuid4
from broker.core.peek import unverified_sender
from broker.core.policy import (
    Builtin,
    Decision,
    Federation,
    OnwardLookup,
    Point,
    Policy,
    Verdict,
    evaluate_egress,
    evaluate_ingress,
)
from broker.errors import CasebridgeError, InvalidMessage, LocalError, Reason

# Deterministic evidence ids: the same decision about the same message always gets the same
# id, so a redelivered input produces duplicates that JetStream and the node de-duplicate.
EVIDENCE_NAMESPACE: Final = uuid.UUID("6f1c2a52-4d0e-4c4b-9a51-1c1b8f0e2d77")
NO_POLICY_RULE: Final = "builtin.no-policy"
ONWARD_RULE: Final = Builtin.ONWARD_TRANSFER.value  # the same rule id as pre-flight's
EVIDENCE_SUBJECT_RULE: Final = "builtin.evidence-subject"
EGRESS: Final = "egress"
INGRESS: Final = "ingress"
GATEWAY_KIND: Final = "gateway"
RELAY_KINDS: Final = frozenset({EvidenceKind.RELAY_ACCEPTED, EvidenceKind.RELAY_REJECTED})
CLOCK_SKEW_SECONDS: Final = int(DEFAULT_LIMITS.clock_skew.total_seconds())


@dataclass(frozen=True, kw_only=True, slots=True)
class Publish:
    """One JetStream publication the runner must make (with ``Nats-Msg-Id`` = ``msg_id``)."""

    subject: str
    msg_id: str
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Crossing:
    """What a gateway remembers of a (non-evidence) message it let through; never content.

    ``direction`` is ``egress`` (submitted in this country) or ``ingress`` (came from abroad);
    ``recipients`` the agencies it went to: delivered here, or (egress) relayed to their
    country's gateway. Kept until ``exp`` + clock skew (:attr:`expires`), after which no valid
    message can refer to it at this border any more. ``attachments``: the files its signed
    header declared (public descriptors: id, type, sizes, chunk count), against which the
    chunk relay counts the chunks that follow the message; None where they are not known (a
    record written before descriptors were kept, or read back from the SQLite ledger, which
    does not keep them): such chunks are not counted.
    """

    message_id: str
    direction: str
    digest: str
    sender: str
    recipients: tuple[str, ...]
    onward: Onward
    exp: int
    attachments: tuple[Descriptor, ...] | None = None

    @property
    def expires(self) -> int:
        return self.exp + CLOCK_SKEW_SECONDS


class CrossingLog(Protocol):
    """The border's memory of what crossed it: ``GatewayLedger`` (SQLite, shared by the
    gateways of a country) or :class:`MemoryCrossings`."""

    def crossings(self, message_id: str) -> Sequence[Crossing]:
        """Every record of ``message_id`` kept (either direction, one per distinct digest)."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What the gateway decided about one input message, and what the ledger must record."""

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
    digest: str = ""  # SHA-256 of the input bytes: with id and direction, the decision's key
    exp: int | None = None  # the verified header's exp (None: it never verified)
    crossing: Crossing | None = None  # to record before anything is published


class MemoryCrossings:
    """:class:`CrossingLog` in memory, recording like the ledger (first record per message
    id, direction and digest wins). For tests and single-process tools."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[tuple[str, str], Crossing]] = {}

    def crossings(self, message_id: str) -> Sequence[Crossing]:
        return tuple(self._rows.get(message_id, {}).values())

    def record(self, direction: str, outcomes: Iterable[Outcome], *, now: datetime) -> None:
        del direction, now  # the crossing carries its own direction and expiry
        for outcome in outcomes:
            c = outcome.crossing
            if c is not None:
                self._rows.setdefault(c.message_id, {}).setdefault((c.direction, c.digest), c)

    def purge(self, now: datetime) -> int:
        """Forget records past their expiry; how many were dropped."""
        t = int(now.timestamp())
        dropped = 0
        for message_id in list(self._rows):
            kept = {k: c for k, c in self._rows[message_id].items() if c.expires > t}
            dropped += len(self._rows[message_id]) - len(kept)
            if kept:
                self._rows[message_id] = kept
            else:
                del self._rows[message_id]
        return dropped


def _merged_onward(received: Sequence[Crossing]) -> Onward:
    """The strictest marking of every received copy (a peer cannot loosen one by resending)."""
    return Onward(
        allowed=all(c.onward.allowed for c in received),
        exclude=tuple(sorted({cc for c in received for cc in c.onward.exclude})),
    )


class Border:
    """One country's border decisions. Cheap to construct; its only state is read through
    ``crossings`` (written by the caller from each :class:`Outcome`), apart from the policy
    engine's view of the directory in force, derived once per directory."""

    def __init__(
        self,
        *,
        country: str,
        identity: SenderIdentity,
        directory: Callable[[], Directory],
        policy: Callable[[], Policy | None],
        crossings: CrossingLog,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.country = country.upper()
        self.identity = identity
        self._directory = directory
        self._policy = policy
        self._crossings = crossings
        self._random = random
        # The policy engine's view of the federation, built once per directory in force (a
        # reloaded directory is a new object) instead of once per decision.
        self._federation_of: tuple[Directory, Federation] | None = None

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
        header, body = build_evidence(
            federation_id=directory.federation_id,
            kind=kind,
            subject=Subject(
                message_id=subject_id, conversation=conversation, sender=to, digest=subject_digest
            ),
            actor=self.identity.agency_id,
            message_id=evidence_id,
            now=now,
            reason=reason,
            rule_id=rule_id,
            detail=detail,
        )
        try:
            wire = seal(
                header=header,
                body=body,
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
        self,
        data: bytes,
        exc: CasebridgeError,
        *,
        now: datetime,
        direction: str,
        submitter: str | None = None,
    ) -> Outcome:
        """A message that failed verification. ``relay_rejected`` goes only to a sender whose
        outer signature verified (at egress: only to the submitting agency itself), never
        about evidence, and never for our own fault."""
        digest = jose.sha256_b64url(data)
        header = authenticated_header(data, resolver=self._directory(), now=now)
        claimed = unverified_sender(data) if header is None else (header.id, header.sender)
        publishes: list[Publish] = []
        if (
            header is not None
            and wants_evidence(header)
            and not isinstance(exc, LocalError)
            and (submitter is None or header.sender == submitter)
        ):
            evidence = self._evidence(
                kind=EvidenceKind.RELAY_REJECTED,
                subject_id=header.id,
                subject_digest=digest,
                conversation=header.conversation,
                to=header.sender,
                now=now,
                reason=exc.reason.value,
                rule_id=None,
                detail=f"{direction}: {exc.detail}",
                scope=direction,
            )
            if evidence is not None:
                publishes.append(evidence)
        return Outcome(
            publishes=tuple(publishes),
            message_id=claimed[0] if claimed else None,
            message_type=header.type if header is not None else None,
            sender=claimed[1] if claimed else None,
            refused=exc.reason.value,
            detail=exc.detail,
            evidence=(EvidenceKind.RELAY_REJECTED,) if publishes else (),
            digest=digest,
            exp=header.exp if header is not None else None,
        )

    def _verify(self, data: bytes, now: datetime) -> RoutedMessage:
        routed = verify_routing(data, resolver=self._directory(), now=now)
        kind = routed.header.type
        if kind.startswith(EVIDENCE_PREFIX) and evidence_kind(kind) is None:
            # Only the five kinds exist: an invented one would ride the policies' evidence rules.
            raise InvalidMessage(Reason.UNKNOWN_TYPE, f"{kind!r} is not an evidence type")
        return routed

    def _current_policy(self) -> Policy:
        policy = self._policy()
        if policy is None:
            raise InvalidMessage(Reason.POLICY_DENIED, f"no valid policy loaded for {self.country}")
        return policy

    def _crossing(
        self, direction: str, routed: RoutedMessage, recipients: Iterable[str]
    ) -> Crossing | None:
        header = routed.header
        went = tuple(sorted(recipients))
        if not went or is_evidence(header.type):
            return None  # nothing crossed, or evidence (nothing may refer to it)
        return Crossing(
            message_id=header.id,
            direction=direction,
            digest=routed.digest,
            sender=header.sender,
            recipients=went,
            onward=header.onward,
            exp=header.exp,
            attachments=header.attachments,
        )

    def _is_gateway(self, agency: str) -> bool:
        try:
            return self._directory().agency_kind(agency) == GATEWAY_KIND
        except CasebridgeError:
            return False

    def _subject_refused(
        self, routed: RoutedMessage, why: str, *, point: Point, rejected_for: tuple[str, ...]
    ) -> Outcome:
        """Evidence refused by ``builtin.evidence-subject`` (evidence gets no evidence)."""
        header = routed.header
        return Outcome(
            decisions=(
                Decision(
                    verdict=Verdict.DENY,
                    rule_id=EVIDENCE_SUBJECT_RULE,
                    reason=why,
                    point=point,
                    peer=None,
                    recipient=None,
                ),
            ),
            message_id=header.id,
            message_type=header.type,
            sender=header.sender,
            rejected_for=rejected_for,
            digest=routed.digest,
            exp=header.exp,
        )

    # -------------------------------------------------------------------- egress ---

    def _original_onward(self, header: Header) -> OnwardLookup | None:
        """The onward marking of the message ``header`` derives from, if it came in here.

        Unknown here (sent from here, older than the ledger, or already forgotten): no check at
        the border; the sending node's pre-flight refuses an unknown original (fail closed).
        """
        if header.derived_from is None:
            return None
        received = [
            c for c in self._crossings.crossings(header.derived_from) if c.direction == INGRESS
        ]
        if not received:
            return None
        onward = _merged_onward(received)
        return lambda _message_id: onward

    def _egress_evidence_refusal(self, header: Header, submitter: str) -> str | None:
        """Why ``submitter`` may not send this evidence, or None: recipient evidence about X
        goes only from an agency this country's gateways delivered X to, to X's sender."""
        kind = evidence_kind(header.type)
        if kind in RELAY_KINDS:
            return "relay evidence comes only from border gateways, not from an agency"
        subject = header.in_reply_to
        if subject is None:
            return "evidence must name its subject message in in_reply_to"
        handled = [c for c in self._crossings.crossings(subject) if submitter in c.recipients]
        if not handled:
            return f"{submitter} was not delivered message {subject} through this border"
        if not any(header.recipients == (c.sender,) for c in handled):
            return f"evidence about {subject} must be addressed to its sender only"
        return None

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
            return self._refused(data, exc, now=now, direction=EGRESS, submitter=subject_agency)
        header = routed.header
        lane = is_evidence(header.type)
        if lane:
            why = self._egress_evidence_refusal(header, subject_agency)
            if why is not None:
                return self._subject_refused(
                    routed, why, point=Point.EGRESS, rejected_for=header.countries
                )
        domestic = [r for r in header.recipients if agency_country(r) == self.country]
        publishes = [
            Publish(
                subject=subjects.deliver_subject(r, evidence=lane),
                msg_id=f"{header.id}:{r}",
                data=data,
            )
            for r in domestic
        ]
        peers = sorted({c for c in header.countries if c != self.country})
        if not peers:
            return Outcome(
                publishes=tuple(publishes),
                message_id=header.id,
                message_type=header.type,
                sender=header.sender,
                relayed_to=(self.country,),
                digest=routed.digest,
                exp=header.exp,
                crossing=self._crossing(EGRESS, routed, domestic),
            )
        outcome = evaluate_egress(
            policy,
            header,
            federation=self._federation(),
            original_onward=self._original_onward(header),
        )
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
        went = [*domestic, *(r for r in header.recipients if agency_country(r) in relayed)]
        return Outcome(
            publishes=tuple(publishes),
            decisions=outcome.decisions,
            message_id=header.id,
            message_type=header.type,
            sender=header.sender,
            relayed_to=tuple(relayed),
            rejected_for=tuple(rejected),
            evidence=tuple(kinds),
            digest=routed.digest,
            exp=header.exp,
            crossing=self._crossing(EGRESS, routed, went),
        )

    # ------------------------------------------------------------------- ingress ---

    def _ingress_evidence_refusal(self, header: Header) -> str | None:
        """Why evidence from abroad is refused, or None. Checkable only for a subject this
        country knows: one sent from here must be reported on to its sender, by a gateway of
        a country it was relayed to (relay evidence) or by an agency it was relayed to."""
        subject = header.in_reply_to
        if subject is None:
            return "evidence must name its subject message in in_reply_to"
        known = self._crossings.crossings(subject)
        if not known:
            return None  # not sent from here, or forgotten: the recipient node decides
        relay = evidence_kind(header.type) in RELAY_KINDS
        gateway = self._is_gateway(header.sender)
        for c in known:
            if c.direction != EGRESS or header.recipients != (c.sender,):
                continue
            if (
                relay
                and gateway
                and header.sender_country in {agency_country(r) for r in c.recipients}
            ):
                return None
            if not relay and not gateway and header.sender in c.recipients:
                return None
        return (
            f"{header.sender} could not have handled message {subject} as sent from "
            f"{self.country}, or the evidence is not addressed to its sender"
        )

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
            return self._refused(data, exc, now=now, direction=INGRESS)
        header = routed.header
        if is_evidence(header.type):
            why = self._ingress_evidence_refusal(header)
            if why is not None:
                return self._subject_refused(
                    routed, why, point=Point.INGRESS, rejected_for=tuple(local)
                )
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
            digest=routed.digest,
            exp=header.exp,
            crossing=self._crossing(INGRESS, routed, allowed),
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
        directory = self._directory()
        if self._federation_of is None or self._federation_of[0] is not directory:
            self._federation_of = (directory, Federation.from_directory(directory))
        return self._federation_of[1]
