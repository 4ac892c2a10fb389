"""The one error tree: every error Casebridge raises on purpose carries a reason and a status."""

from __future__ import annotations

from broker.errors import CasebridgeError, LocalError, Reason
from broker.node.audit_log import AuditUnavailable
from broker.node.errors import (
    BadRequest,
    IdempotencyConflict,
    InternalError,
    JustificationRequired,
    NodeError,
    NotFound,
    PayloadTooLarge,
    StorageUnavailable,
    TransportUnavailable,
    Unauthorized,
)

NODE_ERRORS = (
    BadRequest,
    Unauthorized,
    JustificationRequired,
    NotFound,
    IdempotencyConflict,
    TransportUnavailable,
    AuditUnavailable,
    StorageUnavailable,
    PayloadTooLarge,
    InternalError,
)


class TestNodeErrorsInTheTree:
    def test_node_errors_are_local_casebridge_errors(self) -> None:
        """Node-edge errors are caught by `except CasebridgeError` and are local faults."""
        for cls in NODE_ERRORS:
            exc = cls("detail text")
            assert isinstance(exc, CasebridgeError)
            assert isinstance(exc, LocalError)
            assert isinstance(exc, NodeError)
            assert isinstance(exc.reason, Reason)
            assert exc.detail == "detail text"

    def test_reason_codes_and_statuses_are_distinct(self) -> None:
        """Each node error has its own stable reason code and a 4xx/5xx status."""
        reasons = [cls("").reason for cls in NODE_ERRORS]
        assert len(set(reasons)) == len(reasons)
        assert {cls("").http_status for cls in NODE_ERRORS} <= {
            400,
            401,
            404,
            409,
            413,
            428,
            500,
            503,
        }
        assert Unauthorized("").reason.value == "unauthorized"
        assert JustificationRequired("").http_status == 428
