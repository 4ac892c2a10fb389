"""The public Python interface to the Casebridge wire protocol (docs/protocol.md).

What it is for
    Sealing, opening, border-checking and inspecting one message outside a running node: for
    tools, interop tests and other implementations' debugging. Every collaborator is an
    explicit argument, nothing is global:

    * ``directory``: who is in the federation (a verified :class:`Directory`, loaded with
      :func:`load_directory` from the signed document and the pinned root certificate, or any
      :class:`~broker.core.trust.KeyResolver`);
    * ``schemas``: the message catalogue (:class:`SchemaRegistry`, :func:`load_schemas`);
    * ``policy``: the recipient's step 18 (:data:`RecipientPolicy`); ``None`` applies the
      honesty rule only (no country policy is *not* "deny everything");
    * ``replay``: the replay store (:class:`MemoryReplayStore` by default: a fresh one);
    * ``now``: the time, always passed in.

    ::

        from broker import protocol
        directory = protocol.load_directory(signed, root_cert=root, now=now)
        wire = protocol.seal(header=h, body=b, sender=me, directory=directory, now=now)
        opened = protocol.open(wire, recipient=them, directory=directory,
                               schemas=protocol.load_schemas(), now=now)
        outcome = protocol.check(wire, ...)   # the same, as a value instead of an exception

    Refusals raise :class:`~broker.errors.InvalidMessage` (or another ``CasebridgeError``)
    whose ``reason`` is the protocol reason code and ``step`` the receiving step that failed;
    :func:`check` and :func:`check_routing` return an :class:`Outcome` instead.

What it must never do
    Read files, the clock or the environment (the CLI ``casebridge message`` does that), or
    report a peer's message as refused for a fault of ours without saying so: an
    :class:`Outcome` of a local fault has ``local=True``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, Protocol

from cryptography import x509

from broker.core import canonical, envelope, jose
from broker.core.directory import Directory
from broker.core.envelope import (
    DEFAULT_LIMITS,
    Limits,
    OpenedMessage,
    RecipientIdentity,
    RoutedMessage,
    SenderIdentity,
)
from broker.core.header import Header
from broker.core.replay import MemoryReplayStore, ReplayStore
from broker.core.schemas import SchemaRegistry
from broker.core.trust import KeyResolver
from broker.errors import CasebridgeError, LocalError, PolicyDenied, Reason
from broker.loaders import load_schema_registry

__all__ = [
    "HONESTY_RULE",
    "Header",
    "Inspection",
    "Limits",
    "OpenedMessage",
    "Outcome",
    "RecipientIdentity",
    "RecipientPolicy",
    "RoutedMessage",
    "Schemas",
    "SenderIdentity",
    "check",
    "check_routing",
    "honesty",
    "inspect",
    "load_directory",
    "load_schemas",
    "open",
    "seal",
    "verify_routing",
]

HONESTY_RULE: Final = "builtin.honesty"

# Step 18: raise PolicyDenied (reason policy_denied or category_undeclared) to refuse.
RecipientPolicy = Callable[[OpenedMessage], None]


class Schemas(Protocol):
    """What the protocol needs from the catalogue: validation (step 17), categories (step 18)."""

    def validate(self, message_type: str, version: int, body: object) -> None: ...

    def categories(self, message_type: str, version: int, body: object) -> frozenset[str]: ...


def load_schemas() -> SchemaRegistry:
    """The catalogue shipped with the package (works from an installed wheel)."""
    return load_schema_registry()


def load_directory(
    signed: bytes, *, root_cert: x509.Certificate, now: datetime, min_serial: int = 0
) -> Directory:
    """Verify a signed directory against the pinned federation root (docs/protocol.md 9)."""
    return Directory.load(signed, root_cert=root_cert, now=now, min_serial=min_serial)


def honesty(schemas: Schemas) -> RecipientPolicy:
    """Step 18 without a country policy: the body holds no category the header does not declare.

    This is what a recipient with no policy of its own does: it accepts every message that
    passed steps 1-17 and is honest about its categories.
    """

    def check_honesty(opened: OpenedMessage) -> None:
        header = opened.header
        present = schemas.categories(header.type, header.type_version, opened.body)
        undeclared = sorted(present - frozenset(header.categories))
        if undeclared:
            raise PolicyDenied(
                HONESTY_RULE,
                f"the body holds undeclared categories: {', '.join(undeclared)}",
                reason=Reason.CATEGORY_UNDECLARED,
            )

    return check_honesty


def seal(
    *,
    header: Header,
    body: Mapping[str, Any],
    sender: SenderIdentity,
    directory: KeyResolver,
    now: datetime,
    schemas: Schemas | None = None,
    salt: bytes | None = None,
) -> bytes:
    """Seal ``body`` under ``header`` from ``sender`` to every recipient; the wire bytes.

    With ``schemas`` the body is validated first and must declare (at least) the categories it
    contains, so a receiver's steps 17 and 18 will pass. ``salt`` defaults to 16 fresh bytes.
    """
    if schemas is not None:
        schemas.validate(header.type, header.type_version, body)
        present = schemas.categories(header.type, header.type_version, body)
        undeclared = sorted(present - frozenset(header.categories))
        if undeclared:
            raise PolicyDenied(
                HONESTY_RULE,
                f"declare the categories the body holds: {', '.join(undeclared)}",
                reason=Reason.CATEGORY_UNDECLARED,
            )
    return envelope.seal(
        header=header,
        body=body,
        sender=sender,
        resolver=directory,
        now=now,
        salt=secrets.token_bytes(16) if salt is None else salt,
    )


def open(
    wire: bytes,
    *,
    recipient: RecipientIdentity,
    directory: KeyResolver,
    schemas: Schemas,
    now: datetime,
    policy: RecipientPolicy | None = None,
    replay: ReplayStore | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> OpenedMessage:
    """Every receiving check (steps 1-19) as ``recipient``; the opened message or a refusal.

    ``policy`` None means honesty only (:func:`honesty`). ``replay`` None means a fresh
    in-memory store (nothing seen before); pass the same store to refuse a second copy.
    """
    return envelope.open_message(
        wire,
        recipient=recipient,
        resolver=directory,
        replay=MemoryReplayStore() if replay is None else replay,
        validator=schemas,
        now=now,
        limits=limits,
        admit=honesty(schemas) if policy is None else policy,
    )


def verify_routing(
    wire: bytes, *, directory: KeyResolver, now: datetime, limits: Limits = DEFAULT_LIMITS
) -> RoutedMessage:
    """What a border gateway checks (steps 1-11): the outer layer, without any private key."""
    return envelope.verify_routing(wire, resolver=directory, now=now, limits=limits)


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """A decision as a value: accepted, or refused with a reason code, step and rule id."""

    outcome: Literal["accepted", "refused"]
    reason: str | None = None
    step: int | None = None
    detail: str = ""
    rule_id: str | None = None
    local: bool = False  # the refusal is the receiver's own fault (never report it to a peer)
    header: Mapping[str, Any] | None = None
    body: Mapping[str, Any] | None = None
    digest: str | None = None

    @property
    def accepted(self) -> bool:
        return self.outcome == "accepted"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.outcome, "reason": self.reason, "step": self.step}
        if not self.accepted:
            out["detail"] = self.detail
            out["rule_id"] = self.rule_id
            out["local"] = self.local
        if self.header is not None:
            out["header"] = self.header
        if self.body is not None:
            out["body"] = self.body
        if self.digest is not None:
            out["digest"] = self.digest
        return out


def _refused(exc: CasebridgeError) -> Outcome:
    return Outcome(
        outcome="refused",
        reason=exc.reason.value,
        step=exc.step,
        detail=exc.detail,
        rule_id=exc.rule_id if isinstance(exc, PolicyDenied) else None,
        local=isinstance(exc, LocalError) or exc.reason is Reason.DIRECTORY_STALE,
    )


def check(
    wire: bytes,
    *,
    recipient: RecipientIdentity,
    directory: KeyResolver,
    schemas: Schemas,
    now: datetime,
    policy: RecipientPolicy | None = None,
    replay: ReplayStore | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Outcome:
    """:func:`open` as a value: never raises a ``CasebridgeError``."""
    try:
        opened = open(
            wire,
            recipient=recipient,
            directory=directory,
            schemas=schemas,
            now=now,
            policy=policy,
            replay=replay,
            limits=limits,
        )
    except CasebridgeError as exc:
        return _refused(exc)
    return Outcome(
        outcome="accepted",
        header=opened.header.to_json(),
        body=opened.body,
        digest=opened.routed.digest,
    )


def check_routing(
    wire: bytes, *, directory: KeyResolver, now: datetime, limits: Limits = DEFAULT_LIMITS
) -> Outcome:
    """:func:`verify_routing` as a value: never raises a ``CasebridgeError``."""
    try:
        routed = verify_routing(wire, directory=directory, now=now, limits=limits)
    except CasebridgeError as exc:
        return _refused(exc)
    return Outcome(outcome="accepted", header=routed.header.to_json(), digest=routed.digest)


@dataclass(frozen=True, kw_only=True, slots=True)
class Inspection:
    """What a message *claims*, nothing verified: for debugging only, never for decisions."""

    size: int
    digest: str
    unverified_outer_header: Mapping[str, Any] | None = None
    unverified_header: Mapping[str, Any] | None = None
    unverified_recipient_kids: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": False,
            "size": self.size,
            "digest": self.digest,
            "unverified_outer_header": self.unverified_outer_header,
            "unverified_header": self.unverified_header,
            "unverified_recipient_kids": list(self.unverified_recipient_kids),
            "problems": list(self.problems),
        }


def inspect(wire: bytes) -> Inspection:
    """Decode the cleartext parts of ``wire`` without verifying anything.

    Reports the outer JWS header, the routing header as signed (not checked), and the key ids
    of the JWE recipient entries. Any part that cannot be decoded is listed in ``problems``.
    """
    digest = jose.sha256_b64url(wire)
    problems: list[str] = []
    outer_header: Mapping[str, Any] | None = None
    header: Mapping[str, Any] | None = None
    kids: tuple[str, ...] = ()
    try:
        obj = canonical.loads_strict(wire, what="message", max_depth=None)
    except CasebridgeError as exc:
        return Inspection(size=len(wire), digest=digest, problems=(f"message: {exc}",))
    if not isinstance(obj, dict):
        return Inspection(size=len(wire), digest=digest, problems=("message is not an object",))
    try:
        split = jose.split_compact(obj.get("outer"), what="outer JWS")  # type: ignore[arg-type]
        outer_header = split.header
        payload = canonical.loads_strict(
            jose.b64url_decode(split.parts[1], what="outer payload"), what="outer payload"
        )
        if isinstance(payload, dict) and isinstance(payload.get("header"), dict):
            header = payload["header"]
        else:
            problems.append("outer payload has no header object")
    except CasebridgeError as exc:
        problems.append(f"outer: {exc}")
    try:
        jwe = canonical.loads_strict(obj.get("jwe", ""), what="JWE", max_depth=None)
        entries = jwe.get("recipients", []) if isinstance(jwe, dict) else []
        kids = tuple(
            str(e["header"]["kid"])
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("header"), dict) and "kid" in e["header"]
        )
    except CasebridgeError as exc:
        problems.append(f"jwe: {exc}")
    return Inspection(
        size=len(wire),
        digest=digest,
        unverified_outer_header=outer_header,
        unverified_header=header,
        unverified_recipient_kids=kids,
        problems=tuple(problems),
    )
