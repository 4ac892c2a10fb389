"""Value objects of the node: what callers hand in (drafts) and what the store hands out.

Frozen, keyword-only, with a ``to_json`` for the API. Nothing here does I/O; nothing here
holds key material.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from broker.core.evidence import EvidenceKind, is_evidence


class OutboxState(StrEnum):
    """Where a sent message is on its way into the federation."""

    QUEUED = "queued"  # stored, not yet acknowledged by JetStream
    SUBMITTED = "submitted"  # a submit is in flight (or was, when the node stopped)
    ACKNOWLEDGED = "acknowledged"  # JetStream stored it: the federation has it


# Evidence kinds and types are the protocol's (docs/protocol.md section 10): one definition,
# in the core, shared with the border gateway.
is_evidence_type = is_evidence


@dataclass(frozen=True, kw_only=True, slots=True)
class Draft:
    """A message a case worker wants to send, before policy and sealing.

    ``to`` names recipient agencies (or is empty with ``task_force`` set, or empty on a
    reply, which then goes to the original sender). ``categories`` may declare more than the
    body shows (e.g. a minor mentioned in free text); pre-flight adds what the body holds.
    """

    type: str
    body: Mapping[str, Any]
    purpose: str
    handling: str
    legal_basis: str | None = None
    to: tuple[str, ...] = ()
    task_force: str | None = None
    tlp: str = "AMBER"
    type_version: int = 1
    due: str | None = None
    in_reply_to: str | None = None
    categories: tuple[str, ...] = ()
    onward_allowed: bool = False
    # Derived data (broker.node.derived): the received message this one is derived from, and
    # the countries this message's own onward marking excludes.
    derived_from: str | None = None
    onward_exclude: tuple[str, ...] = ()
    attachments: tuple[str, ...] = ()  # handles of uploaded files (docs/api.md, attachments)


@dataclass(frozen=True, kw_only=True, slots=True)
class SendResult:
    """What :meth:`Node.send` did: the message id, its state and what pre-flight decided."""

    message_id: str
    conversation: str
    state: OutboxState
    digest: str
    categories: tuple[str, ...]
    rule_id: str
    redactions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "conversation": self.conversation,
            "state": self.state.value,
            "digest": self.digest,
            "categories": list(self.categories),
            "rule_id": self.rule_id,
            "redactions": list(self.redactions),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxMessage:
    """A message this node sealed (application message or evidence)."""

    message_id: str
    header: Mapping[str, Any]
    body: Mapping[str, Any]
    wire: bytes
    digest: str
    state: OutboxState
    attempts: int
    created_at: str
    updated_at: str
    last_error: str | None

    @property
    def type(self) -> str:
        return str(self.header["type"])

    def to_json(self, *, with_body: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = {
            "message_id": self.message_id,
            "type": self.type,
            "recipients": self.header["recipients"],
            "conversation": self.header["conversation"],
            "in_reply_to": self.header["in_reply_to"],
            "due": self.header["due"],
            "state": self.state.value,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_error": self.last_error,
            "digest": self.digest,
        }
        if with_body:
            result["header"] = dict(self.header)
            result["body"] = dict(self.body)
        return result


@dataclass(frozen=True, kw_only=True, slots=True)
class InboxMessage:
    """A message delivered to this node (verified, decrypted, valid, admitted by policy)."""

    message_id: str
    header: Mapping[str, Any]
    body: Mapping[str, Any]
    sender: str
    type: str
    conversation: str
    in_reply_to: str | None
    due: str | None
    digest: str
    received_at: str
    read_at: str | None
    read_by: str | None
    answered: bool

    def overdue(self, today: str) -> bool:
        """A request whose due date (``YYYY-MM-DD``) has passed without a reply from us."""
        return self.due is not None and self.due < today and not self.answered

    def to_json(self, *, today: str, with_body: bool) -> dict[str, Any]:
        result: dict[str, Any] = {
            "message_id": self.message_id,
            "type": self.type,
            "sender": self.sender,
            "conversation": self.conversation,
            "in_reply_to": self.in_reply_to,
            "due": self.due,
            "overdue": self.overdue(today),
            "answered": self.answered,
            "received_at": self.received_at,
            "read_at": self.read_at,
            "digest": self.digest,
        }
        if with_body:
            result["header"] = dict(self.header)
            result["body"] = dict(self.body)
        return result


@dataclass(frozen=True, kw_only=True, slots=True)
class EvidenceRecord:
    """One event in a message's evidence trail (sent by us or received from a peer)."""

    subject_id: str | None
    kind: EvidenceKind
    actor: str
    at: str
    reason: str | None = None
    rule_id: str | None = None
    detail: str | None = None
    evidence_id: str | None = None  # id of the sealed evidence message, if there is one
    direction: str = "sent"  # "sent" (we produced it) or "received" (a peer did)
    digest_matches: bool | None = None  # received: does subject_digest equal our digest?

    def to_json(self) -> dict[str, Any]:
        return {
            "subject_message_id": self.subject_id,
            "kind": self.kind.value,
            "actor": self.actor,
            "at": self.at,
            "reason": self.reason,
            "rule_id": self.rule_id,
            "detail": self.detail,
            "evidence_message_id": self.evidence_id,
            "direction": self.direction,
            "digest_matches": self.digest_matches,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class Rejection:
    """A delivery this node refused: what it claimed to be (if readable) and why."""

    digest: str
    sequence: int
    message_id: str | None
    sender: str | None
    type: str | None
    reason: str
    rule_id: str | None
    detail: str
    at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "sequence": self.sequence,
            "claimed_message_id": self.message_id,
            "claimed_sender": self.sender,
            "claimed_type": self.type,
            "reason": self.reason,
            "rule_id": self.rule_id,
            "detail": self.detail,
            "at": self.at,
        }


QUARANTINED: Final = "quarantined"


@dataclass(frozen=True, kw_only=True, slots=True)
class Quarantined:
    """A delivery that kept failing on our side, set aside (with its bytes) for an operator.

    ``claimed_*`` come from the unverified header (None when illegible): never trusted.
    ``error`` is the exception type of the last failure, ``detail`` its message."""

    id: int
    digest: str
    sequence: int
    lane: str
    wire: bytes
    message_id: str | None
    sender: str | None
    type: str | None
    error: str
    detail: str
    attempts: int
    first_at: str
    last_at: str
    reason: str = QUARANTINED

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "digest": self.digest,
            "sequence": self.sequence,
            "lane": self.lane,
            "size": len(self.wire),
            "claimed_message_id": self.message_id,
            "claimed_sender": self.sender,
            "claimed_type": self.type,
            "reason": self.reason,
            "error": self.error,
            "detail": self.detail,
            "attempts": self.attempts,
            "first_at": self.first_at,
            "last_at": self.last_at,
        }


def iso(when: datetime) -> str:
    """The store's (and the API's) time format: RFC 3339 UTC with a ``Z``, whole seconds."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, kw_only=True, slots=True)
class SealedRecord:
    """A sealed message ready for the outbox: its header (JSON form), body, bytes, digest."""

    header: Mapping[str, Any]
    body: Mapping[str, Any]
    wire: bytes
    digest: str

    @property
    def message_id(self) -> str:
        return str(self.header["id"])


@dataclass(frozen=True, kw_only=True, slots=True)
class SentSubject:
    """What incoming evidence is checked against about a message we sent: its header, digest
    and creation time (read without its body and bytes: evidence never needs them)."""

    message_id: str
    header: Mapping[str, Any]
    digest: str
    created_at: str

    @property
    def type(self) -> str:
        return str(self.header["type"])


@dataclass(frozen=True, kw_only=True, slots=True)
class Receipt:
    """Where a delivery came from: its stream sequence and the digest of its bytes."""

    digest: str
    sequence: int
