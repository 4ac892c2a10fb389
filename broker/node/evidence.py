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

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from broker.core.header import Header
from broker.node.model import EVIDENCE_PREFIX, EvidenceKind
from broker.node.store import iso

EVIDENCE_HANDLING: Final = "H0"
EVIDENCE_TLP: Final = "GREEN"
EVIDENCE_PURPOSE: Final = "system"
EVIDENCE_LEGAL_BASIS: Final = "Casebridge protocol, section 10: evidence of exchange"
MAX_DETAIL: Final = 1000


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


def evidence_type(kind: EvidenceKind) -> str:
    """The message type of an evidence kind, e.g. ``evidence.delivered``."""
    return f"{EVIDENCE_PREFIX}{kind.value}"


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
    return Header(
        fed=fed,
        id=message_id,
        type=evidence_type(kind),
        type_version=1,
        conversation=subject.conversation,
        in_reply_to=subject.message_id,
        sender=producer,
        recipients=(subject.sender,),
        handling=EVIDENCE_HANDLING,
        tlp=EVIDENCE_TLP,
        purpose=EVIDENCE_PURPOSE,
        legal_basis=EVIDENCE_LEGAL_BASIS,
        categories=(),
        iat=iat,
        exp=exp,
    )


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
    refusals; ``detail`` is cut to the schema's limit."""
    body: dict[str, Any] = {
        "subject_message_id": subject.message_id,
        "subject_digest": subject.digest,
        "actor": actor,
        "at": iso(at),
    }
    if kind in (EvidenceKind.REJECTED, EvidenceKind.RELAY_REJECTED):
        body["reason"] = reason or "unknown"
        body["rule_id"] = rule_id
        if detail:
            body["detail"] = detail[:MAX_DETAIL]
    return body
