"""Per-system API clients: scoped credentials for case systems, stored hashed, rotated with overlap.

What it is for
    Each case system (or script) that talks to the node gets its own client: a name, the case
    system it stands for, its declared purpose and its scopes (``send``, ``read``, ``events``,
    ``admin``). A client holds one or more secrets; rotation issues a new one and lets the old
    ones live for an overlap, so a system can switch without an outage. Revocation ends every
    secret at once. The node's settings token stays valid as the built-in client ``node``
    with every scope (persons using the focal-point CLI and scripts keep working).

Tokens and hashing
    A token is ``cbc_<secret id>_<secret>``: the secret is 32 random bytes (256 bits,
    ``secrets.token_urlsafe``). Only ``HMAC-SHA-256(key=domain label, token)`` is stored. A slow
    password hash (argon2id) protects *low-entropy* passwords against offline guessing; a
    256-bit random secret cannot be guessed offline whatever the hash, so a fast keyed hash is
    as safe here and keeps every request's check to microseconds (argon2id would cost tens of
    milliseconds of CPU per request, which an API under load, or a flood of bad tokens, cannot
    afford). The secret id finds the row; the digest is compared in constant time.

What a client's scopes mean
    ``send``: submit, explain, corrections and withdrawals. ``read``: the inbox, outbox,
    threads, evidence, message bodies (a *transfer* to the client's case system, audited with
    its purpose, no ``read`` evidence) and ``POST /v1/messages/{id}/read`` (a person's reading:
    consultation and ``read`` evidence). ``events``: the change feed and its stream.
    ``admin``: quarantine, webhooks, clients.

What it must never do
    Store or log a secret (only its hash; the token is shown once, when issued), accept a
    revoked or expired secret, or let the check's time depend on how much of a token matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from broker.core.audit import ActorKind, AuditEntry, Operation
from broker.node import audit_log
from broker.node.errors import BadRequest, Forbidden, NotFound, Unauthorized
from broker.node.model import iso
from broker.node.store import Store

SCOPES: Final = ("send", "read", "events", "lookup", "lookup-index", "admin")
BUILTIN_CLIENT: Final = "node"
TOKEN_PREFIX: Final = "cbc_"  # noqa: S105 - a format prefix, not a secret
CLIENT_ID_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_TOKEN_PATTERN: Final = re.compile(r"cbc_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
# Domain separation for the stored digest (not a secret: see the module docstring).
_HASH_KEY: Final = b"casebridge api client secret v1"
DEFAULT_OVERLAP: Final = timedelta(hours=24)
MAX_TEXT: Final = 200


@dataclass(frozen=True, kw_only=True, slots=True)
class Principal:
    """Who is calling: a client id, the case system it stands for, its purpose and scopes.
    ``builtin``: the node's settings token (a person's tools, not a case system)."""

    client_id: str
    system: str
    purpose: str
    scopes: frozenset[str]
    builtin: bool = False

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"client {self.client_id} lacks the {scope!r} scope")


BUILTIN: Final = Principal(
    client_id=BUILTIN_CLIENT,
    system="node",
    purpose="node operator (settings token)",
    scopes=frozenset(SCOPES),
    builtin=True,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Client:
    """A registered client as listed (never with a secret)."""

    client_id: str
    system: str
    purpose: str
    scopes: tuple[str, ...]
    created_at: str
    revoked_at: str | None
    secrets: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "system": self.system,
            "purpose": self.purpose,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "secrets": [dict(s) for s in self.secrets],
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class Issued:
    """A newly issued secret: the token is shown this once."""

    client_id: str
    secret_id: str
    token: str

    def to_json(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "secret_id": self.secret_id, "token": self.token}


def digest(token: str) -> bytes:
    """What is stored for a token (see the module docstring for why not argon2id)."""
    return hmac.new(_HASH_KEY, token.encode("ascii"), hashlib.sha256).digest()


def _new_token() -> tuple[str, str]:
    secret_id = secrets.token_hex(8)
    return secret_id, f"{TOKEN_PREFIX}{secret_id}_{secrets.token_urlsafe(32)}"


def check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    if not scopes:
        raise BadRequest(f"a client needs at least one scope of {list(SCOPES)}")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise BadRequest(f"unknown scopes {unknown}; known: {list(SCOPES)}")
    return tuple(s for s in SCOPES if s in scopes)


def _text(value: str, name: str) -> str:
    if not value.strip() or len(value) > MAX_TEXT or not value.isprintable():
        raise BadRequest(f"{name} must be 1-{MAX_TEXT} printable characters")
    return value


def add(
    store: Store,
    *,
    client_id: str,
    system: str,
    purpose: str,
    scopes: Sequence[str],
    now: datetime,
) -> Issued:
    """Register a client and issue its first secret (blocking)."""
    if CLIENT_ID_PATTERN.fullmatch(client_id) is None or client_id == BUILTIN_CLIENT:
        raise BadRequest(
            "client_id must be 1-63 lower-case letters, digits or '-' (and not 'node')"
        )
    chosen = check_scopes(scopes)
    _text(system, "system")
    _text(purpose, "purpose")
    secret_id, token = _new_token()
    if not store.add_client(
        client_id=client_id,
        system=system,
        purpose=purpose,
        scopes=chosen,
        secret_id=secret_id,
        secret_hash=digest(token),
        now=iso(now),
    ):
        raise BadRequest(f"client {client_id} exists already (rotate its secret instead)")
    return Issued(client_id=client_id, secret_id=secret_id, token=token)


def rotate(store: Store, client_id: str, *, now: datetime, overlap: timedelta) -> Issued:
    """A new secret; the current ones stay valid for ``overlap`` (0: end them now)."""
    secret_id, token = _new_token()
    if not store.rotate_client(
        client_id,
        secret_id=secret_id,
        secret_hash=digest(token),
        now=iso(now),
        old_until=iso(now + overlap),
    ):
        raise NotFound(f"no active client {client_id}")
    return Issued(client_id=client_id, secret_id=secret_id, token=token)


def revoke(store: Store, client_id: str, *, now: datetime) -> None:
    if not store.revoke_client(client_id, now=iso(now)):
        raise NotFound(f"no active client {client_id}")


def listed(store: Store) -> list[Client]:
    return [Client(**row) for row in store.list_clients()]


def authenticate(store: Store, token: str, *, now: datetime) -> Principal:
    """The client a bearer token belongs to; :class:`Unauthorized` if it is unknown, expired
    or revoked (one answer for all: the caller learns nothing about which)."""
    match = _TOKEN_PATTERN.fullmatch(token)
    if match is None:
        raise Unauthorized("unknown API token")
    found = store.client_by_secret(match.group(1))
    expected = found["hash"] if found is not None else b"\0" * 32
    valid = hmac.compare_digest(digest(token), expected)
    if found is None or not valid:
        raise Unauthorized("unknown API token")
    if found["revoked_at"] is not None:
        raise Unauthorized(f"client {found['client_id']} is revoked")
    if found["expires_at"] is not None and found["expires_at"] <= iso(now):
        raise Unauthorized(f"this secret of client {found['client_id']} has expired (rotated)")
    return Principal(
        client_id=str(found["client_id"]),
        system=str(found["system"]),
        purpose=str(found["purpose"]),
        scopes=frozenset(found["scopes"]),
    )


def claimed_client(token: str) -> str | None:
    """The secret id a token claims (for the audit entry of a refusal), never the secret."""
    match = _TOKEN_PATTERN.fullmatch(token)
    return match.group(1) if match is not None else None


def refusal(*, agency: str, client: str, route: str, method: str, reason: str) -> AuditEntry:
    """The audit entry of an API request refused for its credentials (401) or scope (403)."""
    return AuditEntry(
        operation=Operation.REFUSAL,
        actor=client,
        actor_kind=ActorKind.SYSTEM,
        agency=agency,
        detail=f"API {method} {route} refused: {reason}",
    )


def transfer(
    *,
    agency: str,
    principal: Principal,
    message_id: str,
    message_type: str,
    digest_: str,
    detail: str = "body fetched by a case system over the API (no read evidence)",
) -> AuditEntry:
    """A received message's body (or one of its files) handed to a case system, not a
    person's consultation."""
    return AuditEntry(
        operation=Operation.TRANSFER,
        actor=principal.client_id,
        actor_kind=ActorKind.SYSTEM,
        agency=agency,
        justification=principal.purpose,
        message_id=message_id,
        message_type=message_type,
        peer=f"system:{principal.system}",
        digest=digest_,
        detail=detail,
    )


def record(store: Store, entries: Sequence[AuditEntry], *, now: datetime) -> None:
    """Write audit entries in their own transaction (blocking)."""
    with store.transaction() as db:
        audit_log.append(db, entries, now=now)
