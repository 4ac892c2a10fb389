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
    ├── RequestTimeout          408  the request body did not arrive in time (reason bad_request)
    ├── PayloadTooLarge         413  the request body exceeds the API's limit (reason too_large)
    ├── TransportUnavailable    503  the federation did not acknowledge a submission
    ├── StorageUnavailable      503  the node's store cannot write (disk full, I/O error, locked):
    │                                says whether the operation was stored (``outcome``)
    ├── InternalError           500  an unexpected fault in the node (never a peer's doing)
    └── AuditUnavailable        503  the audit record could not be written: operation not done
                                     (defined in broker.node.audit_log)

The 503s carry ``retry_after`` (seconds), sent by the API as ``Retry-After``.
"""

from __future__ import annotations

from typing import ClassVar, Final, Literal

from broker.errors import LocalError, Reason


class NodeError(LocalError):
    """Base of node-edge errors: ``reason_code`` and ``http_status`` are set per subclass."""

    http_status: int = 500
    reason_code: ClassVar[Reason]
    retry_after: ClassVar[int | None] = None

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


class Forbidden(NodeError):
    """An authenticated API client lacks the scope the route needs."""

    http_status = 403
    reason_code = Reason.FORBIDDEN


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


class RequestTimeout(BadRequest):
    """The client did not send its request body within the API's body timeout."""

    http_status = 408


class PayloadTooLarge(NodeError):
    """The request body is larger than the API accepts."""

    http_status = 413
    reason_code = Reason.TOO_LARGE


class TransportUnavailable(NodeError):
    """The federation did not acknowledge a submission (it stays queued and is retried)."""

    http_status = 503
    reason_code = Reason.TRANSPORT_UNAVAILABLE
    retry_after = 5


StorageOutcome = Literal["not_stored", "unknown"]
STORAGE_RETRY_AFTER: Final = 10


class StorageUnavailable(NodeError):
    """The node's store could not complete a read or write (disk full, I/O error, database
    locked beyond the busy timeout...). ``outcome`` says what the caller may rely on:
    ``not_stored`` (the transaction was rolled back: nothing of it is stored) or ``unknown``
    (the commit itself failed in a way that leaves its outcome open: retry with the same
    Idempotency-Key, which finds the first attempt if it was stored)."""

    http_status = 503
    reason_code = Reason.STORAGE_UNAVAILABLE
    retry_after = STORAGE_RETRY_AFTER

    def __init__(self, detail: str = "", *, outcome: StorageOutcome = "not_stored") -> None:
        self.outcome: StorageOutcome = outcome
        super().__init__(detail)


class InternalError(NodeError):
    """An unexpected fault in the node: logged with its traceback, answered without it."""

    http_status = 500
    reason_code = Reason.INTERNAL_ERROR
