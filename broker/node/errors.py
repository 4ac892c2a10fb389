"""Errors of the node's edges (HTTP API, transport) that have no place in ``broker.errors`` yet.

They mirror the shape of :class:`broker.errors.CasebridgeError` (``reason``, ``detail``,
``http_status``) so the API renders both the same way. They are local faults: never sent to a
peer, never carried in evidence. Candidates to fold into ``broker/errors.py`` (they need reason
codes there)::

    NodeError                   reason, detail, http_status
    ├── BadRequest              400  the request is malformed (bad JSON, missing member)
    ├── Unauthorized            401  missing or wrong API token
    ├── JustificationRequired   428  opening an inbox message needs a stated justification
    ├── NotFound                404  no such message / conversation
    ├── IdempotencyConflict     409  an Idempotency-Key reused with another request
    ├── TransportUnavailable    503  the federation did not acknowledge a submission
    └── AuditUnavailable        503  the audit record could not be written: operation not done
                                     (defined in broker.node.audit_log)
"""

from __future__ import annotations

from enum import StrEnum


class NodeReason(StrEnum):
    """Stable reason codes of node-local errors (API responses). Never rename."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    JUSTIFICATION_REQUIRED = "justification_required"
    NOT_FOUND = "not_found"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    TRANSPORT_UNAVAILABLE = "transport_unavailable"
    AUDIT_UNAVAILABLE = "audit_unavailable"


class NodeError(Exception):
    """Base of node-local errors: a stable reason code, a readable detail, an HTTP status."""

    http_status: int = 500
    reason: NodeReason

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(f"{self.reason.value}: {detail}" if detail else self.reason.value)


class BadRequest(NodeError):
    """The request is malformed."""

    http_status = 400
    reason = NodeReason.BAD_REQUEST


class Unauthorized(NodeError):
    """Missing or wrong API token."""

    http_status = 401
    reason = NodeReason.UNAUTHORIZED


class JustificationRequired(NodeError):
    """Opening a received message is a consultation: it needs a stated justification."""

    http_status = 428
    reason = NodeReason.JUSTIFICATION_REQUIRED


class NotFound(NodeError):
    """No such message or conversation in this node."""

    http_status = 404
    reason = NodeReason.NOT_FOUND


class IdempotencyConflict(NodeError):
    """The Idempotency-Key was already used for a different request."""

    http_status = 409
    reason = NodeReason.IDEMPOTENCY_CONFLICT


class TransportUnavailable(NodeError):
    """The federation did not acknowledge a submission (it stays queued and is retried)."""

    http_status = 503
    reason = NodeReason.TRANSPORT_UNAVAILABLE
