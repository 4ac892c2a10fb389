"""Sealing and opening Casebridge messages (the two-layer format of docs/protocol.md).

    wire   = {"v": 1, "outer": <compact JWS>, "jwe": <JWE JSON text>}
    inner  = JWS_ES256(sender, {"header", "body", "salt"})
    jwe    = JWE(ECDH-ES+A256KW / A256GCM, inner) to every recipient agency
    outer  = JWS_ES256(sender, {"header", "jwe_sha256": H(jwe), "commitment": H(inner)})

A border gateway calls :func:`verify_routing` (outer layer only: it never holds a decryption
key); a recipient calls :func:`open_message`, which performs every check of the protocol in the
documented order and raises ``InvalidMessage`` with a reason code on the first failure. Nothing
here reads the clock, the network or a file: time, keys, randomness and stores come in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from broker.core import canonical, jose
from broker.core.attachments import Manifest, check_manifests
from broker.core.header import Header, parse_header
from broker.core.replay import ReplayStore
from broker.core.trust import GATEWAY_KIND, AgencyKeys, KeyResolver
from broker.errors import CasebridgeError, InvalidMessage, Reason

WIRE_VERSION: Final = 1
OUTER_TYP: Final = "casebridge-outer+jws"
INNER_TYP: Final = "casebridge-inner+jws"
JWE_TYP: Final = "casebridge-inner+jwe"
WIRE_MEMBERS: Final = frozenset({"v", "outer", "jwe"})
OUTER_MEMBERS: Final = frozenset({"header", "jwe_sha256", "commitment"})
INNER_MEMBERS: Final = frozenset({"header", "body", "salt"})
# Present exactly when the header declares attachments (docs/protocol.md 17.1).
INNER_ATTACHMENTS: Final = "attachments"
MIN_SALT_BYTES: Final = 16
MAX_SALT_BYTES: Final = 64


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """Receiver limits. Defaults are the protocol's; a deployment may tighten them."""

    max_bytes: int = 1024 * 1024
    clock_skew: timedelta = timedelta(seconds=120)
    max_lifetime: timedelta = timedelta(days=90)


DEFAULT_LIMITS: Final = Limits()


@dataclass(frozen=True, kw_only=True, slots=True)
class SenderIdentity:
    """An agency's own signing key and the key id of its signing certificate."""

    agency_id: str
    signing_kid: str
    signing_key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True, kw_only=True, slots=True)
class RetiredAgreementKey:
    """A previous key-agreement key, kept to open messages still in flight to it until ``until``."""

    kid: str
    key: ec.EllipticCurvePrivateKey
    until: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class RecipientIdentity:
    """An agency's key-agreement (decryption) key ring: the current key and its certificate's
    key id first, then the keys it replaced, each usable until its grace period ends."""

    agency_id: str
    agreement_kid: str
    agreement_key: ec.EllipticCurvePrivateKey
    previous: tuple[RetiredAgreementKey, ...] = ()

    def ring(self, now: datetime) -> tuple[tuple[str, ec.EllipticCurvePrivateKey], ...]:
        """(kid, key) pairs usable at ``now``, current first; a retired key past ``until`` is
        gone, so a message sealed to it is NOT_ADDRESSED like one sealed to a stranger."""
        kept = tuple((k.kid, k.key) for k in self.previous if now <= k.until)
        return ((self.agreement_kid, self.agreement_key), *kept)


class BodyValidator(Protocol):
    """Schema check of a body for its declared type (``broker.core.schemas.SchemaRegistry``)."""

    def validate(self, message_type: str, version: int, body: object) -> None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutedMessage:
    """What the outer layer proves: a header signed by a directory-trusted sender."""

    header: Header
    sender: AgencyKeys
    digest: str  # base64url SHA-256 of the wire bytes: the id of this exact message in evidence
    jwe_sha256: str
    commitment: str
    recipients: tuple[AgencyKeys, ...] = ()  # the directory entries of header.recipients


@dataclass(frozen=True, kw_only=True, slots=True)
class OpenedMessage:
    """A message that passed every check: decrypted, both signatures verified, body valid."""

    header: Header
    body: Mapping[str, Any]
    routed: RoutedMessage
    attachments: tuple[Manifest, ...] = ()  # one per header.attachments, same order


def seal(
    *,
    header: Header,
    body: Mapping[str, Any],
    sender: SenderIdentity,
    resolver: KeyResolver,
    now: datetime,
    salt: bytes,
    attachments: Sequence[Manifest] = (),
) -> bytes:
    """Sign, encrypt to every recipient in ``header.recipients``, sign again; return wire bytes.

    ``salt`` must be fresh randomness (``secrets.token_bytes(16)``); it is an argument so that
    test vectors are reproducible up to the JWE's own randomness. ``attachments``: the
    manifests of the files ``header.attachments`` declares, in the same order.
    """
    header_json = header.to_json()  # encoded once, checked and signed in both layers
    parse_header(header_json)  # every member valid (Header.validate, without a second to_json)
    if header.sender != sender.agency_id:
        raise InvalidMessage(Reason.SENDER_MISMATCH, "header.sender is not the sealing agency")
    if header.fed != resolver.federation_id:
        raise InvalidMessage(Reason.FOREIGN_FEDERATION, "header.fed is not this federation")
    if header.exp <= int(now.timestamp()):
        raise InvalidMessage(Reason.EXPIRED, "header.exp is already past")
    if not MIN_SALT_BYTES <= len(salt) <= MAX_SALT_BYTES:
        raise InvalidMessage(Reason.MALFORMED, f"salt must be {MIN_SALT_BYTES}-64 bytes")
    if tuple(m.descriptor for m in attachments) != header.attachments:
        raise InvalidMessage(
            Reason.HEADER_MISMATCH, "attachment manifests differ from header.attachments"
        )
    keys = check_addressing(header, resolver=resolver, now=now)
    inner_payload: dict[str, Any] = {
        "header": header_json,
        "body": body,
        "salt": jose.b64url_encode(salt),
    }
    if attachments:
        inner_payload[INNER_ATTACHMENTS] = [m.to_json() for m in attachments]
    inner = jose.sign_compact(
        canonical.dumps(inner_payload),
        sender.signing_key,
        kid=sender.signing_kid,
        typ=INNER_TYP,
    ).encode("ascii")
    jwe = jose.encrypt_general(
        inner, [(k.agreement_kid, k.agreement_key) for k in keys], typ=JWE_TYP
    )
    outer = jose.sign_compact(
        canonical.dumps(
            {
                "header": header_json,
                "jwe_sha256": jose.sha256_b64url(jwe.encode("utf-8")),
                "commitment": jose.sha256_b64url(inner),
            }
        ),
        sender.signing_key,
        kid=sender.signing_kid,
        typ=OUTER_TYP,
    )
    return _canonical_wire(outer, jwe)


def _canonical_wire(outer: str, jwe: str) -> bytes:
    # Same bytes as canonical.dumps({"jwe", "outer", "v"}) for the ASCII strings the protocol
    # allows here (callers check), through the encoder's fast ASCII path.
    return b"".join(
        (
            b'{"jwe":',
            json.dumps(jwe).encode("ascii"),
            b',"outer":',
            json.dumps(outer).encode("ascii"),
            b',"v":1}',
        )
    )


def _unverified_wire(wire: bytes, limits: Limits) -> tuple[str, str]:
    if len(wire) > limits.max_bytes:
        raise InvalidMessage(Reason.TOO_LARGE, f"{len(wire)} bytes > {limits.max_bytes}")
    obj = canonical.loads_strict(wire, what="message", max_depth=None)
    if not isinstance(obj, dict) or set(obj) != WIRE_MEMBERS:
        raise InvalidMessage(Reason.MALFORMED, "message must be an object {v, outer, jwe}")
    if obj["v"] != WIRE_VERSION or isinstance(obj["v"], bool):
        raise InvalidMessage(Reason.MALFORMED, f"unsupported wire version {obj['v']!r}")
    if not isinstance(obj["outer"], str) or not isinstance(obj["jwe"], str):
        raise InvalidMessage(Reason.MALFORMED, "outer and jwe must be strings")
    if not obj["outer"].isascii() or not obj["jwe"].isascii():
        raise InvalidMessage(Reason.MALFORMED, "outer and jwe must be ASCII")
    # One byte string per message: whitespace or escaping variants are refused, so the wire
    # digest identifies the message exactly (evidence refers to it).
    if _canonical_wire(obj["outer"], obj["jwe"]) != wire:
        raise InvalidMessage(Reason.MALFORMED, "message is not in canonical JSON form")
    return obj["outer"], obj["jwe"]


def _check_time(header: Header, now: datetime, limits: Limits) -> None:
    t = now.timestamp()
    skew = limits.clock_skew.total_seconds()
    if header.iat > t + skew:
        raise InvalidMessage(Reason.NOT_YET_VALID, "iat is in the future")
    if header.exp <= t - skew:
        raise InvalidMessage(Reason.EXPIRED, "exp has passed")
    if header.exp - header.iat > limits.max_lifetime.total_seconds():
        raise InvalidMessage(Reason.HEADER_INVALID, "exp - iat exceeds the maximum lifetime")


def _digest_b64(data: bytes) -> str:
    return jose.b64url_encode(hashlib.sha256(data).digest())


def _require_canonical(value: Any, raw: bytes, what: str) -> None:
    # Each signed or encrypted JSON layer has exactly one valid byte form (section 2): the
    # parsed value re-serialised canonically must give back the bytes received.
    if not canonical.is_canonical(value, raw):
        raise InvalidMessage(Reason.MALFORMED, f"{what} is not in canonical JSON form")


def check_addressing(
    header: Header, *, resolver: KeyResolver, now: datetime
) -> tuple[AgencyKeys, ...]:
    """Step 9 (addressing) against the directory; returns the recipients' directory entries.

    A task force must exist, the sender must be a member and the recipients exactly the other
    members; every recipient must be an agency the directory lists as current (a revoked,
    invalid or unknown one, or a border gateway, is ``unknown_recipient``). A stale directory
    stays ``directory_stale``: that is the receiver's own fault, never the sender's.
    """
    if header.task_force is not None:
        members = resolver.task_force(header.task_force, now=now)
        if header.sender not in members:
            raise InvalidMessage(
                Reason.HEADER_INVALID,
                f"sender {header.sender} is not a member of task force {header.task_force}",
            )
        expected = tuple(sorted(m for m in members if m != header.sender))
        if header.recipients != expected:
            raise InvalidMessage(
                Reason.HEADER_INVALID,
                f"recipients must be exactly the other members of {header.task_force}",
            )
    found = []
    for agency_id in header.recipients:
        try:
            keys = resolver.agency(agency_id, now=now)
        except InvalidMessage as exc:
            if exc.reason is Reason.DIRECTORY_STALE:
                raise
            raise InvalidMessage(
                Reason.UNKNOWN_RECIPIENT,
                f"recipient {agency_id} is not a current agency ({exc.reason.value})",
            ) from None
        if keys.kind == GATEWAY_KIND:
            raise InvalidMessage(
                Reason.UNKNOWN_RECIPIENT, f"recipient {agency_id} is a border gateway"
            )
        found.append(keys)
    return tuple(found)


class _Step:
    """The receiving step in progress (docs/protocol.md section 6), stamped on a refusal."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 1


def _stamp(exc: CasebridgeError, at: _Step) -> None:
    if exc.step is None:
        exc.step = at.n


def _routing(
    wire: bytes, *, resolver: KeyResolver, now: datetime, limits: Limits, at: _Step
) -> tuple[RoutedMessage, jose.UnverifiedJWE, Any]:
    at.n = 1
    if len(wire) > limits.max_bytes:
        raise InvalidMessage(Reason.TOO_LARGE, f"{len(wire)} bytes > {limits.max_bytes}")
    at.n = 2
    unverified_outer, unverified_jwe = _unverified_wire(wire, limits)
    at.n = 3
    split = jose.split_compact(unverified_outer, what="outer JWS")
    at.n = 4
    parsed = jose.finish_compact(split, typ=OUTER_TYP, what="outer JWS")
    _require_canonical(parsed.header, parsed.header_bytes, "outer JWS header")
    at.n = 5
    sender = resolver.signing_key(parsed.kid, now=now)
    at.n = 6
    outer_bytes = jose.verify_compact(parsed, sender.signing_key, what="outer JWS")
    at.n = 7
    outer_payload = canonical.loads_strict(
        outer_bytes,
        what="outer payload",
        max_depth=4,  # {header: {sender|onward: {...: [..]}}}: deeper is malformed anyway
    )
    if not isinstance(outer_payload, dict) or set(outer_payload) != OUTER_MEMBERS:
        raise InvalidMessage(
            Reason.MALFORMED, "outer payload must be {header, jwe_sha256, commitment}"
        )
    _require_canonical(outer_payload, outer_bytes, "outer payload")
    header = parse_header(outer_payload["header"])
    at.n = 8
    if header.fed != resolver.federation_id:
        raise InvalidMessage(Reason.FOREIGN_FEDERATION, f"message is for federation {header.fed!r}")
    at.n = 9
    if header.sender != sender.agency_id:
        raise InvalidMessage(Reason.SENDER_MISMATCH, "outer signer is not header.sender")
    recipients = check_addressing(header, resolver=resolver, now=now)
    at.n = 10
    _check_time(header, now, limits)
    at.n = 11
    jwe_sha256 = outer_payload["jwe_sha256"]
    commitment = outer_payload["commitment"]
    for name, value in (("jwe_sha256", jwe_sha256), ("commitment", commitment)):
        if not isinstance(value, str) or len(jose.b64url_decode(value, what=name)) != 32:
            raise InvalidMessage(Reason.MALFORMED, f"{name} must be a base64url SHA-256")
    jwe_bytes = unverified_jwe.encode("ascii")  # ASCII: checked with the wire object
    if _digest_b64(jwe_bytes) != jwe_sha256:
        raise InvalidMessage(Reason.DIGEST_MISMATCH, "JWE does not match the signed digest")
    jwe = jose.parse_general(unverified_jwe, typ=JWE_TYP)
    _require_canonical(jwe.members, jwe_bytes, "JWE")
    _require_canonical(jwe.protected, jwe.protected_bytes, "JWE protected header")
    routed = RoutedMessage(
        header=header,
        sender=sender,
        digest=_digest_b64(wire),
        jwe_sha256=jwe_sha256,
        commitment=commitment,
        recipients=recipients,
    )
    return routed, jwe, outer_payload["header"]


def verify_routing(
    wire: bytes, *, resolver: KeyResolver, now: datetime, limits: Limits = DEFAULT_LIMITS
) -> RoutedMessage:
    """Gateway check of the outer layer (steps 1-11): size, format and canonical forms,
    allowlists, sender trust, signature, header, federation, addressing against the directory,
    time window, and that the JWE is the one the sender signed and well-formed.

    A refusal carries the step (1-11) that failed in ``exc.step``."""
    at = _Step()
    try:
        routed, _, _ = _routing(wire, resolver=resolver, now=now, limits=limits, at=at)
    except CasebridgeError as exc:
        _stamp(exc, at)
        raise
    return routed


def open_message(
    wire: bytes,
    *,
    recipient: RecipientIdentity,
    resolver: KeyResolver,
    replay: ReplayStore,
    validator: BodyValidator,
    now: datetime,
    limits: Limits = DEFAULT_LIMITS,
    admit: Callable[[OpenedMessage], None] | None = None,
) -> OpenedMessage:
    """Recipient side: every check of docs/protocol.md section 6, in that order.

    ``admit`` is step 18 (recipient policy and honesty): it raises to refuse. It runs before the
    id is recorded, so a refused message is never remembered as accepted. A refusal carries
    the step (1-19) that failed in ``exc.step``.
    """
    at = _Step()
    try:
        return _open(
            wire,
            recipient=recipient,
            resolver=resolver,
            replay=replay,
            validator=validator,
            now=now,
            limits=limits,
            admit=admit,
            at=at,
        )
    except CasebridgeError as exc:
        _stamp(exc, at)
        raise


def _open(
    wire: bytes,
    *,
    recipient: RecipientIdentity,
    resolver: KeyResolver,
    replay: ReplayStore,
    validator: BodyValidator,
    now: datetime,
    limits: Limits,
    admit: Callable[[OpenedMessage], None] | None,
    at: _Step,
) -> OpenedMessage:
    routed, jwe, outer_header_json = _routing(
        wire, resolver=resolver, now=now, limits=limits, at=at
    )
    header = routed.header
    at.n = 12
    if recipient.agency_id not in header.recipients:
        raise InvalidMessage(Reason.NOT_ADDRESSED, f"{recipient.agency_id} is not a recipient")
    at.n = 13
    if replay.seen(header.id, now=now):
        raise InvalidMessage(Reason.REPLAY, f"message {header.id} was already accepted")
    at.n = 14
    # The first key of our ring that the JWE has an entry for; with none, the current key's
    # kid, so the refusal names the key we hold now.
    entry_kids = {entry["header"]["kid"] for entry in jwe.entries}
    kid, key = next(
        ((k, v) for k, v in recipient.ring(now) if k in entry_kids),
        (recipient.agreement_kid, recipient.agreement_key),
    )
    inner = jose.decrypt_parsed(jwe, kid=kid, key=key)
    at.n = 15
    if _digest_b64(inner) != routed.commitment:
        raise InvalidMessage(
            Reason.COMMITMENT_MISMATCH, "decrypted content is not the committed one"
        )
    at.n = 16
    parsed_inner = jose.parse_compact(
        inner.decode("ascii", errors="replace"), typ=INNER_TYP, what="inner JWS"
    )
    _require_canonical(parsed_inner.header, parsed_inner.header_bytes, "inner JWS header")
    if parsed_inner.kid != routed.sender.signing_kid:
        raise InvalidMessage(Reason.SENDER_MISMATCH, "inner and outer signers differ")
    inner_bytes = jose.verify_compact(parsed_inner, routed.sender.signing_key, what="inner JWS")
    inner_payload = canonical.loads_strict(inner_bytes, what="inner payload")
    wanted = INNER_MEMBERS | ({INNER_ATTACHMENTS} if header.attachments else set())
    if not isinstance(inner_payload, dict) or set(inner_payload) != wanted:
        raise InvalidMessage(
            Reason.MALFORMED, "inner payload must be {header, body, salt[, attachments]}"
        )
    _require_canonical(inner_payload, inner_bytes, "inner payload")
    if canonical.dumps(inner_payload["header"]) != canonical.dumps(outer_header_json):
        raise InvalidMessage(Reason.HEADER_MISMATCH, "inner header differs from outer header")
    salt = jose.b64url_decode(inner_payload["salt"], what="salt")
    if not MIN_SALT_BYTES <= len(salt) <= MAX_SALT_BYTES:
        raise InvalidMessage(Reason.MALFORMED, "salt length out of range")
    body = inner_payload["body"]
    if not isinstance(body, dict):
        raise InvalidMessage(Reason.MALFORMED, "body must be a JSON object")
    manifests = (
        check_manifests(header.attachments, inner_payload[INNER_ATTACHMENTS])
        if header.attachments
        else ()
    )
    at.n = 17
    validator.validate(header.type, header.type_version, body)
    opened = OpenedMessage(header=header, body=body, routed=routed, attachments=manifests)
    at.n = 18
    if admit is not None:
        admit(opened)
    at.n = 19
    if not replay.remember(
        header.id, expires_at=header.exp + int(limits.clock_skew.total_seconds()), now=now
    ):
        raise InvalidMessage(Reason.REPLAY, f"message {header.id} was already accepted")
    return opened


def authenticated_header(
    wire: bytes, *, resolver: KeyResolver, now: datetime, limits: Limits = DEFAULT_LIMITS
) -> Header | None:
    """The header of ``wire`` if its outer signature verifies with the directory key of the
    agency that header names as sender; None otherwise.

    Only the signature, the header's syntax, the federation and signer = ``header.sender`` are
    checked (not time, digests or routing): it tells a gateway whom a refusal may be reported
    to, never whether to let the message through (that is :func:`verify_routing`). A message
    that merely *claims* a sender gets None, so nobody can make a gateway send evidence to a
    third party.
    """
    try:
        unverified_outer, _ = _unverified_wire(wire, limits)
        parsed = jose.parse_compact(unverified_outer, typ=OUTER_TYP, what="outer JWS")
        sender = resolver.signing_key(parsed.kid, now=now)
        payload = canonical.loads_strict(
            jose.verify_compact(parsed, sender.signing_key, what="outer JWS"),
            what="outer payload",
            max_depth=4,
        )
        if not isinstance(payload, dict) or set(payload) != OUTER_MEMBERS:
            return None
        header = parse_header(payload["header"])
    except CasebridgeError:  # a peer's fault or ours (stale directory): nobody to tell
        return None
    if header.fed != resolver.federation_id or header.sender != sender.agency_id:
        return None
    return header
