"""Evidence (receipts) about a message: what they say and how they are addressed.

Evidence is an ordinary sealed message of type ``evidence.<kind>`` from the actor (a border
gateway ``<cc>.gateway`` or a recipient agency) to the subject message's sender, carrying the
subject's id and wire digest, the time, and for refusals the reason code and deciding rule.
Evidence about evidence is never produced (no cascades): :func:`wants_evidence` says so.

Evidence is small and closed: exactly the five :class:`EvidenceKind` types exist (any other
``evidence.*`` type is refused as ``unknown_type``, see :func:`evidence_kind`), bodies carry
ids, a digest, a time, and for refusals a reason code, a rule id and at most
:data:`MAX_DETAIL` characters of explanation, so evidence cannot carry case content past a
policy that would refuse it as a case message.

:func:`build_evidence` is the one builder of an evidence message (header and body), used by
the nodes (``delivered``, ``rejected``, ``read``) and the border gateways (``relay_*``); the
caller seals it. Ids and time are passed in: this module never draws an id or reads a clock.

Marking: always **H0 / TLP:GREEN**, not inherited from the subject. The body holds no case
content (ids, a digest, an agency id, a time, a reason code), and an inherited TLP:RED or H3
would need a border rule naming the recipient exactly (``builtin.red-h3-explicit``), so
evidence about the most sensitive messages would be dropped at the border exactly when the
sender most needs it. Must never put body content of the subject into evidence (``detail``
comes from error details, which never carry content).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from broker.core.header import Header

EVIDENCE_PREFIX: Final = "evidence."
EVIDENCE_LIFETIME: Final = timedelta(days=30)
MAX_DETAIL: Final = 200


class EvidenceKind(StrEnum):
    RELAY_ACCEPTED = "relay_accepted"
    RELAY_REJECTED = "relay_rejected"
    DELIVERED = "delivered"
    REJECTED = "rejected"
    READ = "read"

    @property
    def message_type(self) -> str:
        return f"{EVIDENCE_PREFIX}{self.value}"

    @property
    def is_refusal(self) -> bool:
        return self in (EvidenceKind.RELAY_REJECTED, EvidenceKind.REJECTED)


def evidence_kind(message_type: str) -> EvidenceKind | None:
    """The kind of an evidence type (``evidence.delivered`` -> DELIVERED); None for any other
    type, including an ``evidence.*`` type that does not exist."""
    if not message_type.startswith(EVIDENCE_PREFIX):
        return None
    try:
        return EvidenceKind(message_type[len(EVIDENCE_PREFIX) :])
    except ValueError:
        return None


def is_evidence(message_type: str) -> bool:
    """True for the evidence types (they never produce evidence of their own)."""
    return message_type.startswith(EVIDENCE_PREFIX)


def wants_evidence(header: Header) -> bool:
    """Whether a decision about this message should be reported back to its sender."""
    return not is_evidence(header.type)


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, kw_only=True, slots=True)
class EvidenceFacts:
    """What one piece of evidence states."""

    kind: EvidenceKind
    subject_id: str
    subject_digest: str
    actor: str
    at: datetime
    reason: str | None = None
    rule_id: str | None = None
    detail: str = ""

    def body(self) -> dict[str, Any]:
        """The evidence body, valid against ``schemas/evidence.<kind>.v1.json``."""
        body: dict[str, Any] = {
            "subject_message_id": self.subject_id,
            "subject_digest": self.subject_digest,
            "actor": self.actor,
            "at": _rfc3339(self.at),
        }
        if self.kind.is_refusal:
            body["reason"] = self.reason or "unspecified"
            body["rule_id"] = self.rule_id
            if self.detail:
                body["detail"] = self.detail[:MAX_DETAIL]
        return body


@dataclass(frozen=True, kw_only=True, slots=True)
class Subject:
    """What evidence needs to know about the message it is about."""

    message_id: str
    conversation: str
    sender: str
    digest: str

    @classmethod
    def of(cls, header: Header, digest: str) -> Subject:
        return cls(
            message_id=header.id,
            conversation=header.conversation,
            sender=header.sender,
            digest=digest,
        )


def evidence_header(
    *,
    federation_id: str,
    actor: str,
    to: str,
    kind: EvidenceKind,
    subject_id: str,
    conversation: str,
    now: datetime,
    message_id: str,
    lifetime: timedelta = EVIDENCE_LIFETIME,
) -> Header:
    """Header of an evidence message from ``actor`` to ``to`` about message ``subject_id``
    (``message_id``: drawn by the caller, at random or derived)."""
    t = int(now.timestamp())
    return Header(
        fed=federation_id,
        id=message_id,
        type=kind.message_type,
        type_version=1,
        conversation=conversation,
        in_reply_to=subject_id,
        sender=actor,
        recipients=(to,),
        handling="H0",
        tlp="GREEN",
        purpose="system",
        legal_basis="Casebridge protocol evidence (docs/protocol.md section 10)",
        categories=(),
        iat=t,
        exp=t + int(lifetime.total_seconds()),
    )


def build_evidence(
    *,
    federation_id: str,
    kind: EvidenceKind,
    subject: Subject,
    actor: str,
    message_id: str,
    now: datetime,
    reason: str | None = None,
    rule_id: str | None = None,
    detail: str = "",
    lifetime: timedelta = EVIDENCE_LIFETIME,
) -> tuple[Header, dict[str, Any]]:
    """The header and body of evidence from ``actor`` to the subject's sender, ready to seal.
    ``reason``/``rule_id``/``detail`` count for refusals only; ``detail`` is cut to
    :data:`MAX_DETAIL`."""
    header = evidence_header(
        federation_id=federation_id,
        actor=actor,
        to=subject.sender,
        kind=kind,
        subject_id=subject.message_id,
        conversation=subject.conversation,
        now=now,
        message_id=message_id,
        lifetime=lifetime,
    )
    facts = EvidenceFacts(
        kind=kind,
        subject_id=subject.message_id,
        subject_digest=subject.digest,
        actor=actor,
        at=now,
        reason=reason,
        rule_id=rule_id,
        detail=detail,
    )
    return header, facts.body()
