"""Evidence messages a node produces: their headers and bodies (pure; sealing is the caller's).

Addressing (docs/protocol.md section 10): evidence goes from this agency to the subject's
sender, type ``evidence.<kind>``, ``purpose: system``, ``in_reply_to`` = subject id,
``conversation`` = subject's conversation, no data categories, ``onward`` not allowed.

Marking: always **H0 / TLP:GREEN**, not inherited from the subject. The body holds no case
content (ids, a digest, an agency id, a time, a reason code), and an inherited TLP:RED or H3
would need a border rule naming the recipient exactly (``builtin.red-h3-explicit``), so
evidence about the most sensitive messages would be dropped at the border exactly when the
sender most needs it.

Must never put body content of the subject into evidence (``detail`` comes from error details,
which never carry content), nor produce evidence about evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from broker.core.evidence import EvidenceFacts, EvidenceKind
from broker.core.evidence import evidence_header as core_evidence_header
from broker.core.header import Header


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
    fed: str,
    message_id: str,
    kind: EvidenceKind,
    producer: str,
    subject: Subject,
    iat: int,
    exp: int,
) -> Header:
    """The header of evidence from ``producer`` to the subject's sender."""
    header = core_evidence_header(
        federation_id=fed,
        actor=producer,
        to=subject.sender,
        kind=kind,
        subject_id=subject.message_id,
        conversation=subject.conversation,
        now=datetime.fromtimestamp(iat, UTC),
        message_id=message_id,
    )
    return replace(header, exp=exp)


def evidence_body(
    *,
    kind: EvidenceKind,
    subject: Subject,
    actor: str,
    at: datetime,
    reason: str | None = None,
    rule_id: str | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    """The body (schemas/evidence.<kind>.v1.json). ``reason``/``rule_id``/``detail`` only for
    refusals; ``detail`` is cut to ``broker.core.evidence.MAX_DETAIL`` (200 characters, the
    schema's limit) by the one builder gateways use too."""
    return EvidenceFacts(
        kind=kind,
        subject_id=subject.message_id,
        subject_digest=subject.digest,
        actor=actor,
        at=at,
        reason=reason,
        rule_id=rule_id,
        detail=detail or "",
    ).body()
