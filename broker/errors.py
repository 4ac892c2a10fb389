"""The one error tree of Casebridge.

Every error raised on purpose by Casebridge code derives from :class:`CasebridgeError`
and carries a stable, machine-readable ``reason`` (a :class:`Reason` value, documented in
``docs/protocol.md``) and an HTTP status for the API edge::

    CasebridgeError                     reason, http_status
    ├── LocalError                      our side is wrong: configuration, keys, files
    │   ├── ConfigError                 settings / files unusable
    │   │   └── PolicyError             a policy file refused at load (carries line numbers)
    │   ├── PKIError                    certificate issuance or validation of our own material
    │   ├── SchemaRegistryError         a schema file is missing or itself invalid
    │   ├── TransportError              NATS unreachable or a publish not acknowledged
    │   │                               (broker/nats; the node raises its own subclass)
    │   └── NodeError                   the node's edges (broker/node/errors.py): bad request,
    │                                   unauthorized, justification required, not found,
    │                                   idempotency conflict, transport, audit or storage
    │                                   unavailable, too large, internal error
    └── RemoteError                     what a peer sent us is unacceptable
        ├── InvalidMessage              sealed message refused (crypto, header, time, replay...)
        ├── SchemaInvalid               the body does not match its schema (carries error paths)
        └── PolicyDenied                a policy rule refused the message (carries rule id)

Third-party exceptions (jwcrypto, cryptography, jsonschema) are translated at the module
that imports the library; they never escape to callers. Messages never contain body content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Stable reason codes. Values are part of the wire protocol (evidence, API): never rename."""

    # framing
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    # JOSE layer
    ALG_NOT_ALLOWED = "alg_not_allowed"
    FORBIDDEN_HEADER = "forbidden_header"
    BAD_SIGNATURE = "bad_signature"
    DIGEST_MISMATCH = "digest_mismatch"
    DECRYPT_FAILED = "decrypt_failed"
    COMMITMENT_MISMATCH = "commitment_mismatch"
    HEADER_MISMATCH = "header_mismatch"
    # header semantics
    HEADER_INVALID = "header_invalid"
    FOREIGN_FEDERATION = "foreign_federation"
    SENDER_MISMATCH = "sender_mismatch"
    NOT_ADDRESSED = "not_addressed"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REPLAY = "replay"
    # trust
    UNKNOWN_SENDER = "unknown_sender"
    UNKNOWN_RECIPIENT = "unknown_recipient"
    SENDER_REVOKED = "sender_revoked"
    CERT_INVALID = "cert_invalid"
    DIRECTORY_STALE = "directory_stale"
    DIRECTORY_INVALID = "directory_invalid"
    # content
    UNKNOWN_TYPE = "unknown_type"
    SCHEMA_INVALID = "schema_invalid"
    CATEGORY_UNDECLARED = "category_undeclared"
    POLICY_DENIED = "policy_denied"
    # attachments (docs/protocol.md section 17)
    ATTACHMENT_CHUNK_INVALID = "attachment_chunk_invalid"
    ATTACHMENT_INCOMPLETE = "attachment_incomplete"
    ATTACHMENT_SIZE_MISMATCH = "attachment_size_mismatch"
    ATTACHMENT_DIGEST_MISMATCH = "attachment_digest_mismatch"
    # local: the node's API and edges
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    JUSTIFICATION_REQUIRED = "justification_required"
    NOT_FOUND = "not_found"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    TRANSPORT_UNAVAILABLE = "transport_unavailable"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    INTERNAL_ERROR = "internal_error"
    FORBIDDEN = "forbidden"  # an API client lacks the scope a route needs (403)
    CURSOR_EXPIRED = "cursor_expired"  # a change-feed cursor older than what is retained (410)
    # local
    CONFIG_INVALID = "config_invalid"
    PKI_ERROR = "pki_error"
    SCHEMA_REGISTRY = "schema_registry"


class CasebridgeError(Exception):
    """Base of every Casebridge error: a stable reason code plus a human-readable detail."""

    http_status: int = 500
    # The receiving step (docs/protocol.md section 6) at which a message was refused; set by
    # broker.core.envelope for refusals of a sealed message, None elsewhere.
    step: int | None = None

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


class LocalError(CasebridgeError):
    """Something on our side is wrong (configuration, key material, schema files)."""


class ConfigError(LocalError):
    """Settings or files are unusable."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.CONFIG_INVALID, detail)


class PKIError(LocalError):
    """Certificate issuance failed or our own PKI material is inconsistent."""

    def __init__(self, detail: str, reason: Reason = Reason.PKI_ERROR) -> None:
        super().__init__(reason, detail)


class SchemaRegistryError(LocalError):
    """A schema file is missing, unreadable or itself not a valid schema."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.SCHEMA_REGISTRY, detail)


class TransportError(LocalError):
    """The NATS edge failed: server unreachable, publish or request not acknowledged in time.
    Never the peer's fault; retried (broker/nats/client.py maps nats-py's errors to it)."""

    http_status = 503

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.TRANSPORT_UNAVAILABLE, detail)


class RemoteError(CasebridgeError):
    """What a peer sent is unacceptable. Always safe to report back to that peer."""

    http_status = 422


class InvalidMessage(RemoteError):
    """A sealed message (or directory, or evidence) was refused. ``reason`` says why."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SchemaErrorDetail:
    """One schema violation: where (JSON pointer into the body), which rule, and why."""

    path: str
    validator: str
    message: str


class SchemaInvalid(RemoteError):
    """The body does not satisfy the schema of its declared type."""

    http_status = 422

    def __init__(self, message_type: str, errors: Sequence[SchemaErrorDetail]) -> None:
        self.message_type = message_type
        self.errors = tuple(errors)
        first = self.errors[0] if self.errors else None
        summary = f"{first.path or '/'}: {first.message}" if first else "invalid"
        more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(Reason.SCHEMA_INVALID, f"{message_type}: {summary}{more}")


class PolicyDenied(RemoteError):
    """A policy rule (or built-in safeguard) refused the message."""

    http_status = 403

    def __init__(self, rule_id: str, detail: str, reason: Reason = Reason.POLICY_DENIED) -> None:
        self.rule_id = rule_id
        super().__init__(reason, f"[{rule_id}] {detail}")


@dataclass(frozen=True, kw_only=True, slots=True)
class PolicyProblem:
    """One reason a policy file was refused: the 1-based line in the YAML (if known) and why."""

    line: int | None
    message: str


class PolicyError(ConfigError):
    """A policy file is malformed, schema-invalid, unsigned or foreign-signed.

    ``source`` names the file (or "<policy>"); ``problems`` lists every reason found, by line.
    """

    def __init__(self, source: str, problems: Sequence[PolicyProblem]) -> None:
        self.source = source
        self.problems = tuple(problems) or (PolicyProblem(line=None, message="invalid"),)
        first = self.problems[0]
        where = f"{source}:{first.line}" if first.line is not None else source
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"{where}: {first.message}{more}")
