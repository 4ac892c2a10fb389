"""Errors of the node's edges (HTTP API, transport, audit): part of the one error tree.

Each is a :class:`broker.errors.LocalError` with a stable reason code from
:class:`broker.errors.Reason` and an HTTP status, so the API renders every error alike. They
are local faults: never sent to a peer, never carried in evidence::

    NodeError (LocalError)
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

from typing import ClassVar

from broker.errors import LocalError, Reason


class NodeError(LocalError):
    """Base of node-edge errors: ``reason_code`` and ``http_status`` are set per subclass."""

    http_status: int = 500
    reason_code: ClassVar[Reason]

    def __init__(self, detail: str = "") -> None:
        super().__init__(self.reason_code, detail)


class BadRequest(NodeError):
    """The request is malformed."""

    http_status = 400
    reason_code = Reason.BAD_REQUEST


class Unauthorized(NodeError):
    """Missing or wrong API token."""

    http_status = 401
    reason_code = Reason.UNAUTHORIZED


class JustificationRequired(NodeError):
    """Opening a received message is a consultation: it needs a stated justification."""

    http_status = 428
    reason_code = Reason.JUSTIFICATION_REQUIRED


class NotFound(NodeError):
    """No such message or conversation in this node."""

    http_status = 404
    reason_code = Reason.NOT_FOUND


class IdempotencyConflict(NodeError):
    """The Idempotency-Key was already used for a different request."""

    http_status = 409
    reason_code = Reason.IDEMPOTENCY_CONFLICT


class TransportUnavailable(NodeError):
    """The federation did not acknowledge a submission (it stays queued and is retried)."""

    http_status = 503
    reason_code = Reason.TRANSPORT_UNAVAILABLE
