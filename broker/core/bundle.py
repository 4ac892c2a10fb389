"""Evidence bundles: one file that proves, offline and years later, what happened to a message.

What it is for
    A court, a prosecutor or a data-protection authority must be able to check, without a
    running node and with nothing but this package, that a message was sent by whom, to whom,
    when, and whether it was delivered, read or refused. :func:`build_bundle` assembles (from
    parts a node hands in) one canonical JSON file holding the message's wire bytes, every
    evidence message about it, the signed federation directory (certificates, CRLs, task
    forces) with the pinned root, the certificates of every party, and the node's audit
    records about the message with RFC 6962 inclusion proofs against signed audit
    checkpoints; the exporting agency seals the whole with a detached ES256 JWS.
    :func:`verify_bundle` checks all of it and returns a :class:`BundleReport`: the facts and
    every check's result. The format is specified in docs/protocol.md ("Evidence bundles").

Trust
    Nothing in a bundle is trusted because the exporter says so: the seal only binds the file
    together (any changed byte fails it). Every signature (message, evidence, checkpoints,
    directory) is verified against certificates from the directory, which is verified against
    the root the verifier pins. Signatures are checked *at the time they claim* (the header's
    ``iat``, the checkpoint's ``at``), with certificates that were valid then.

What it must never do
    Read clocks, files or the network (bytes, keys and ``now`` come in), or report a fact
    whose signature did not verify as established.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from broker.core import audit, canonical, jose
from broker.core.directory import DIRECTORY_TYP, Directory, root_fingerprint
from broker.core.envelope import (
    INNER_ATTACHMENTS,
    INNER_MEMBERS,
    INNER_TYP,
    JWE_TYP,
    OUTER_TYP,
    RecipientIdentity,
    RoutedMessage,
    SenderIdentity,
    verify_routing,
)
from broker.core.evidence import evidence_kind
from broker.core.header import agency_country
from broker.core.pki import CLOCK_SKEW
from broker.errors import CasebridgeError, InvalidMessage, Reason

BUNDLE_TYP: Final = "casebridge-evidence-bundle+jws"
BUNDLE_KIND: Final = "casebridge-evidence-bundle"
BUNDLE_VERSION: Final = 1
# A bundle holds one message, its evidence and one directory: far below this.
MAX_BUNDLE_BYTES: Final = 64 * 1024 * 1024
# The ``detail`` of the exporter's own audit record: the disclosure of this bundle.
DISCLOSURE_PEER: Final = "evidence-bundle"
ROLES: Final = ("sender", "recipient")
USAGES: Final = ("signing", "agreement", "country_ca")

_FILE_MEMBERS: Final = frozenset({"bundle", "seal"})
_MEMBERS: Final = frozenset(
    {
        "v",
        "kind",
        "message_id",
        "exporter",
        "role",
        "exported_at",
        "body_included",
        "message",
        "evidence",
        "records",
        "pki",
        "audit",
    }
)
_SIGNED_MEMBERS: Final = frozenset({"wire", "inner"})
_PKI_MEMBERS: Final = frozenset({"root_cert", "directory", "certificates"})
_CERT_MEMBERS: Final = frozenset({"subject", "usage", "der"})
_AUDIT_MEMBERS: Final = frozenset({"checkpoints", "records"})
_PROOF_MEMBERS: Final = frozenset({"record", "checkpoint", "proof"})


def disclosure_detail(*, body_included: bool) -> str:
    """The ``detail`` of the audit record that logs the export of a bundle."""
    return f"evidence bundle exported; body included: {'yes' if body_included else 'no'}"


# ------------------------------------------------------------------------ values ---


@dataclass(frozen=True, kw_only=True, slots=True)
class SignedItem:
    """A message as it travelled (``wire``) and, when disclosed, its decrypted inner JWS."""

    wire: bytes
    inner: bytes | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditProof:
    """One audit record, the index of the checkpoint covering it, and its audit path."""

    record: audit.AuditRecord
    checkpoint: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Check:
    """One verification step: its name, whether it passed, and why."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class EvidenceFact:
    """What one verified evidence message establishes."""

    kind: str
    actor: str
    signed_at: str
    at: str | None = None  # the time stated in the (disclosed) evidence body
    reason: str | None = None
    rule_id: str | None = None
    digest_bound: bool | None = None  # None: body not disclosed, digest not checkable


@dataclass(frozen=True, kw_only=True, slots=True)
class BundleReport:
    """The outcome of :func:`verify_bundle`: every check, and the facts established."""

    checks: tuple[Check, ...]
    message_id: str | None = None
    exporter: str | None = None
    exported_at: str | None = None
    root_pinned: bool = False
    root_fingerprint: str | None = None
    header: Mapping[str, Any] | None = None
    digest: str | None = None
    body: Mapping[str, Any] | None = None
    evidence: tuple[EvidenceFact, ...] = ()
    audit_records: tuple[Mapping[str, Any], ...] = ()

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)


# ------------------------------------------------------------------------ helpers ---


def _time(when: datetime) -> str:
    return audit.rfc3339(when)


def _parse_time(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise InvalidMessage(Reason.MALFORMED, f"{what} is not a time")
    try:
        parsed = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidMessage(Reason.MALFORMED, f"{what} is not an RFC 3339 UTC time") from None
    return parsed


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidMessage(Reason.MALFORMED, f"{what} is not base64")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidMessage(Reason.MALFORMED, f"{what} is not base64") from None


def _obj(value: object, members: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != members:
        raise InvalidMessage(Reason.MALFORMED, f"{what} must be an object {sorted(members)}")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidMessage(Reason.MALFORMED, f"{what} must be a list")
    return value


def _wire_parts(wire: bytes) -> tuple[str, str]:
    obj = canonical.loads_strict(wire, what="message", max_depth=None)
    if not isinstance(obj, dict) or not isinstance(obj.get("outer"), str):
        raise InvalidMessage(Reason.MALFORMED, "message is not a Casebridge wire object")
    if not isinstance(obj.get("jwe"), str):
        raise InvalidMessage(Reason.MALFORMED, "message is not a Casebridge wire object")
    return obj["outer"], obj["jwe"]


def _unverified_outer(wire: bytes) -> dict[str, Any]:
    outer, _ = _wire_parts(wire)
    parsed = jose.parse_compact(outer, typ=OUTER_TYP, what="outer JWS")
    payload = canonical.loads_strict(parsed.unverified_payload, what="outer payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("header"), dict):
        raise InvalidMessage(Reason.MALFORMED, "outer payload has no header")
    return payload


def _unverified_iat(wire: bytes) -> datetime:
    """The time a message claims to be signed at: which certificates to check it with."""
    iat = _unverified_outer(wire)["header"].get("iat")
    if not isinstance(iat, int) or isinstance(iat, bool) or not 0 < iat < 2**40:
        raise InvalidMessage(Reason.HEADER_INVALID, "header.iat is not a time")
    return datetime.fromtimestamp(iat, UTC)


def disclose_inner(wire: bytes, recipient: RecipientIdentity) -> bytes:
    """The inner JWS of a message addressed to ``recipient`` (decrypted with its key), checked
    against the outer commitment: what a recipient discloses to prove the signed content."""
    _, unverified_jwe = _wire_parts(wire)
    jwe = jose.parse_general(unverified_jwe, typ=JWE_TYP)
    inner = jose.decrypt_parsed(jwe, kid=recipient.agreement_kid, key=recipient.agreement_key)
    if jose.sha256_b64url(inner) != _unverified_outer(wire).get("commitment"):
        raise InvalidMessage(Reason.COMMITMENT_MISMATCH, "inner content is not the committed one")
    return inner


def _cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _directory_payload(token: str) -> dict[str, Any]:
    """The directory document (call only after :meth:`Directory.load` verified ``token``)."""
    parsed = jose.parse_compact(token, typ=DIRECTORY_TYP, what="directory")
    document = canonical.loads_strict(parsed.unverified_payload, what="directory")
    if not isinstance(document, dict):
        raise InvalidMessage(Reason.DIRECTORY_INVALID, "directory is not an object")
    return document


def _directory_certs(document: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """``(subject, usage) -> base64 DER`` for every certificate the directory lists."""
    found: dict[tuple[str, str], str] = {}
    for country in document.get("countries", []):
        found[(str(country["code"]).lower(), "country_ca")] = str(country["ca_cert"])
    for agency in document.get("agencies", []):
        found[(str(agency["id"]), "signing")] = str(agency["signing_cert"])
        found[(str(agency["id"]), "agreement")] = str(agency["agreement_cert"])
    return found


def _parties(subjects: Sequence[str]) -> list[tuple[str, str]]:
    """The certificates that must be in a bundle naming ``subjects`` (agencies, gateways)."""
    needed: set[tuple[str, str]] = set()
    for agency_id in subjects:
        needed.add((agency_id, "signing"))
        needed.add((agency_id, "agreement"))
        needed.add((agency_country(agency_id).lower(), "country_ca"))
    return sorted(needed)


# -------------------------------------------------------------------------- build ---


def build_bundle(
    *,
    message_id: str,
    exporter: SenderIdentity,
    role: str,
    exported_at: datetime,
    message: SignedItem,
    evidence: Sequence[SignedItem],
    records: Sequence[Mapping[str, Any]],
    root_cert: x509.Certificate,
    directory: bytes,
    checkpoints: Sequence[str],
    proofs: Sequence[AuditProof],
) -> bytes:
    """The bundle file: canonical JSON ``{"bundle": ..., "seal": <detached JWS>}``.

    ``directory`` is the signed directory the node loaded; the certificates of every party
    (the message's sender and recipients, every evidence signer, the exporter) are copied out
    of it. ``body_included`` is whether ``message.inner`` is present.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    token = directory.decode("ascii").strip()
    document = _directory_payload(token)
    listed = _directory_certs(document)
    subjects = {exporter.agency_id}
    for item in (message, *evidence):
        header = _unverified_outer(item.wire)["header"]
        subjects.add(str(header["sender"]["agency"]))
        subjects.update(str(r) for r in header["recipients"])
    certificates = [
        {"subject": subject, "usage": usage, "der": listed[(subject, usage)]}
        for subject, usage in _parties(sorted(subjects))
        if (subject, usage) in listed
    ]

    def signed(item: SignedItem) -> dict[str, Any]:
        return {
            "wire": jose.b64url_encode(item.wire),
            "inner": None if item.inner is None else jose.b64url_encode(item.inner),
        }

    bundle = {
        "v": BUNDLE_VERSION,
        "kind": BUNDLE_KIND,
        "message_id": message_id,
        "exporter": exporter.agency_id,
        "role": role,
        "exported_at": _time(exported_at),
        "body_included": message.inner is not None,
        "message": signed(message),
        "evidence": [signed(e) for e in evidence],
        "records": [dict(r) for r in records],
        "pki": {
            "root_cert": _b64(_cert_der(root_cert)),
            "directory": token,
            "certificates": certificates,
        },
        "audit": {
            "checkpoints": list(checkpoints),
            "records": [
                {
                    "record": p.record.to_json(),
                    "checkpoint": p.checkpoint,
                    "proof": [h.hex() for h in p.proof],
                }
                for p in proofs
            ],
        },
    }
    payload = canonical.dumps(bundle)
    head, _, signature = jose.sign_compact(
        payload, exporter.signing_key, kid=exporter.signing_kid, typ=BUNDLE_TYP
    ).split(".")
    return canonical.dumps({"bundle": bundle, "seal": f"{head}..{signature}"})


# ------------------------------------------------------------------------- verify ---


@dataclass
class _Verifier:
    """Runs the checks in order, recording each; later checks use what earlier ones proved."""

    now: datetime
    pinned: x509.Certificate | None
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def record(self, name: str, fn: Callable[[], str]) -> bool:
        try:
            detail = fn()
        except CasebridgeError as exc:
            self.checks.append(Check(name=name, ok=False, detail=f"[{exc.reason}] {exc.detail}"))
            return False
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # A value of the wrong shape somewhere in a signed-over or listed member.
            self.checks.append(Check(name=name, ok=False, detail=f"[malformed] {exc!r}"))
            return False
        self.checks.append(Check(name=name, ok=True, detail=detail))
        return True

    def fail(self, name: str, detail: str) -> None:
        self.checks.append(Check(name=name, ok=False, detail=detail))


def verify_bundle(
    data: bytes, *, root_cert: x509.Certificate | None, now: datetime
) -> BundleReport:
    """Check a bundle completely, offline. ``root_cert``: the federation root the verifier
    trusts (pinned); None trusts the bundle's own root, which the report says."""
    v = _Verifier(now=now, pinned=root_cert)
    state: dict[str, Any] = {}

    def parse() -> str:
        if len(data) > MAX_BUNDLE_BYTES:
            raise InvalidMessage(Reason.TOO_LARGE, f"bundle larger than {MAX_BUNDLE_BYTES}")
        whole = _obj(canonical.loads_strict(data, what="bundle"), _FILE_MEMBERS, "bundle file")
        if canonical.dumps(whole) != data:
            raise InvalidMessage(Reason.MALFORMED, "bundle file is not canonical JSON")
        bundle = _obj(whole["bundle"], _MEMBERS, "bundle")
        if bundle["v"] != BUNDLE_VERSION or bundle["kind"] != BUNDLE_KIND:
            raise InvalidMessage(Reason.MALFORMED, f"not a v{BUNDLE_VERSION} evidence bundle")
        if bundle["role"] not in ROLES or not isinstance(bundle["body_included"], bool):
            raise InvalidMessage(Reason.MALFORMED, "bundle role or body_included is invalid")
        state["bundle"] = bundle
        state["seal"] = whole["seal"]
        state["exported_at"] = _parse_time(bundle["exported_at"], "exported_at")
        if state["exported_at"] > now + CLOCK_SKEW:
            raise InvalidMessage(Reason.NOT_YET_VALID, "bundle is exported in the future")
        return f"canonical JSON bundle v{BUNDLE_VERSION}, {len(data)} bytes"

    if not v.record("format", parse):
        return _report(v, state)
    bundle = state["bundle"]
    pki = bundle["pki"]

    def root() -> str:
        _obj(pki, _PKI_MEMBERS, "pki")
        carried = x509.load_der_x509_certificate(_unb64(pki["root_cert"], "root_cert"))
        state["root"] = carried
        if v.pinned is None:
            return f"NOT PINNED: trusting the bundle's root {root_fingerprint(carried)}"
        if _cert_der(carried) != _cert_der(v.pinned):
            raise InvalidMessage(
                Reason.CERT_INVALID, "the bundle's root is not the pinned federation root"
            )
        return f"pinned root {root_fingerprint(carried)}"

    if not v.record("root", root):
        return _report(v, state)

    def directory() -> str:
        token = pki["directory"]
        if not isinstance(token, str):
            raise InvalidMessage(Reason.DIRECTORY_INVALID, "directory is not a JWS")
        parsed = jose.parse_compact(token, typ=DIRECTORY_TYP, what="directory")
        unverified = canonical.loads_strict(parsed.unverified_payload, what="directory")
        if not isinstance(unverified, dict):
            raise InvalidMessage(Reason.DIRECTORY_INVALID, "directory is not an object")
        issued = _parse_time(unverified.get("issued_at"), "directory issued_at")
        # Loaded as of its own issue: its signature, every chain and CRL checked at that time.
        loaded = Directory.load(token.encode("ascii"), root_cert=state["root"], now=issued)
        state["directory"] = loaded
        state["document"] = _directory_payload(token)
        return (
            f"signed by the root, serial {loaded.serial}, in force "
            f"{_time(loaded.issued_at)} .. {_time(loaded.next_update)}"
        )

    if not v.record("directory", directory):
        return _report(v, state)
    resolver: Directory = state["directory"]

    def seal() -> str:
        head, empty, signature = str(state["seal"]).split(".")
        if empty:
            raise InvalidMessage(Reason.MALFORMED, "seal is not a detached JWS")
        payload = canonical.dumps(bundle)
        token = f"{head}.{jose.b64url_encode(payload)}.{signature}"
        parsed = jose.parse_compact(token, typ=BUNDLE_TYP, what="bundle seal")
        keys = resolver.signing_key(parsed.kid, now=state["exported_at"])
        if keys.agency_id != bundle["exporter"]:
            raise InvalidMessage(Reason.SENDER_MISMATCH, "the seal is not the exporter's")
        jose.verify_compact(parsed, keys.signing_key, what="bundle seal")
        return f"sealed by {keys.agency_id} at {bundle['exported_at']}"

    v.record("seal", seal)

    def message() -> str:
        item = _obj(bundle["message"], _SIGNED_MEMBERS, "message")
        wire = jose.b64url_decode(item["wire"], what="message wire")
        routed = verify_routing(wire, resolver=resolver, now=_unverified_iat(wire))
        if routed.header.id != bundle["message_id"]:
            raise InvalidMessage(Reason.HEADER_MISMATCH, "the wire bytes are another message")
        state["routed"] = routed
        h = routed.header
        return (
            f"signed by {h.sender} at {_time(datetime.fromtimestamp(h.iat, UTC))}, "
            f"to {', '.join(h.recipients)}; digest {routed.digest}"
        )

    if v.record("message", message):
        routed: RoutedMessage = state["routed"]

        def body() -> str:
            inner_b64 = bundle["message"]["inner"]
            if inner_b64 is None:
                if bundle["body_included"]:
                    raise InvalidMessage(Reason.MALFORMED, "body_included but no inner content")
                return "not disclosed by the exporter"
            if not bundle["body_included"]:
                raise InvalidMessage(Reason.MALFORMED, "inner content but body_included is false")
            state["body"] = _open_inner(jose.b64url_decode(inner_b64, what="inner"), routed)[1]
            return "disclosed; the sender's signature and the commitment verify"

        v.record("body", body)
        _check_evidence(v, bundle, resolver, routed, state)
    _check_certificates(v, bundle, state)
    _check_audit(v, bundle, resolver, state)
    return _report(v, state)


def _open_inner(inner: bytes, routed: RoutedMessage) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check a disclosed inner JWS against a verified outer layer; its header and body."""
    if jose.sha256_b64url(inner) != routed.commitment:
        raise InvalidMessage(Reason.COMMITMENT_MISMATCH, "inner content is not the committed one")
    parsed = jose.parse_compact(inner.decode("ascii"), typ=INNER_TYP, what="inner JWS")
    if parsed.kid != routed.sender.signing_kid:
        raise InvalidMessage(Reason.SENDER_MISMATCH, "inner and outer signers differ")
    payload = canonical.loads_strict(
        jose.verify_compact(parsed, routed.sender.signing_key, what="inner JWS"),
        what="inner payload",
    )
    wanted = INNER_MEMBERS | ({INNER_ATTACHMENTS} if routed.header.attachments else set())
    if not isinstance(payload, dict) or set(payload) != wanted:
        raise InvalidMessage(Reason.MALFORMED, "inner payload must be {header, body, salt}")
    if canonical.dumps(payload["header"]) != canonical.dumps(routed.header.to_json()):
        raise InvalidMessage(Reason.HEADER_MISMATCH, "inner header differs from outer header")
    if not isinstance(payload["body"], dict):
        raise InvalidMessage(Reason.MALFORMED, "body must be a JSON object")
    return payload["header"], payload["body"]


def _check_evidence(
    v: _Verifier,
    bundle: Mapping[str, Any],
    resolver: Directory,
    routed: RoutedMessage,
    state: dict[str, Any],
) -> None:
    facts: list[EvidenceFact] = []
    state["evidence"] = facts
    items = bundle["evidence"]
    if not isinstance(items, list):
        v.fail("evidence", "[malformed] evidence must be a list")
        return
    for position, raw in enumerate(items):

        def one(raw: object = raw) -> str:
            item = _obj(raw, _SIGNED_MEMBERS, "evidence")
            wire = jose.b64url_decode(item["wire"], what="evidence wire")
            ev = verify_routing(wire, resolver=resolver, now=_unverified_iat(wire))
            kind = evidence_kind(ev.header.type)
            if kind is None:
                raise InvalidMessage(Reason.UNKNOWN_TYPE, f"{ev.header.type} is not evidence")
            if ev.header.in_reply_to != routed.header.id:
                raise InvalidMessage(Reason.HEADER_MISMATCH, "evidence is about another message")
            if ev.header.recipients != (routed.header.sender,):
                raise InvalidMessage(
                    Reason.HEADER_MISMATCH, "evidence is not addressed to the message's sender"
                )
            fact = EvidenceFact(
                kind=kind.value,
                actor=ev.header.sender,
                signed_at=_time(datetime.fromtimestamp(ev.header.iat, UTC)),
            )
            if item["inner"] is not None:
                _, body = _open_inner(jose.b64url_decode(item["inner"], what="inner"), ev)
                if body.get("subject_message_id") != routed.header.id:
                    raise InvalidMessage(Reason.HEADER_MISMATCH, "evidence body names another id")
                fact = EvidenceFact(
                    kind=kind.value,
                    actor=ev.header.sender,
                    signed_at=fact.signed_at,
                    at=str(body.get("at")),
                    reason=body.get("reason"),
                    rule_id=body.get("rule_id"),
                    digest_bound=body.get("subject_digest") == routed.digest,
                )
                if not fact.digest_bound:
                    raise InvalidMessage(
                        Reason.DIGEST_MISMATCH, "evidence names other bytes than the message's"
                    )
            facts.append(fact)
            bound = "digest bound" if fact.digest_bound else "body not disclosed"
            return f"{kind.value} signed by {fact.actor} at {fact.signed_at} ({bound})"

        v.record(f"evidence[{position}]", one)


def _check_certificates(v: _Verifier, bundle: Mapping[str, Any], state: dict[str, Any]) -> None:
    def certificates() -> str:
        document = state["document"]
        listed = _directory_certs(document)
        carried: dict[tuple[str, str], str] = {}
        for raw in _list(bundle["pki"]["certificates"], "certificates"):
            entry = _obj(raw, _CERT_MEMBERS, "certificate")
            key = (str(entry["subject"]), str(entry["usage"]))
            if key[1] not in USAGES or key in carried:
                raise InvalidMessage(Reason.MALFORMED, f"certificate entry {key} is invalid")
            if listed.get(key) != entry["der"]:
                raise InvalidMessage(
                    Reason.CERT_INVALID, f"{key[1]} certificate of {key[0]} is not the directory's"
                )
            x509.load_der_x509_certificate(_unb64(entry["der"], "certificate"))
            carried[key] = entry["der"]
        subjects = {str(bundle["exporter"])}
        routed: RoutedMessage | None = state.get("routed")
        if routed is not None:
            subjects.add(routed.header.sender)
            subjects.update(routed.header.recipients)
        subjects.update(f.actor for f in state.get("evidence", ()))
        missing = [k for k in _parties(sorted(subjects)) if k not in carried]
        if missing:
            names = ", ".join(f"{usage} certificate of {subject}" for subject, usage in missing)
            raise InvalidMessage(Reason.CERT_INVALID, f"missing from the bundle: {names}")
        return f"{len(carried)} certificates, all as listed in the signed directory"

    if "document" in state:
        v.record("certificates", certificates)


def _check_audit(
    v: _Verifier, bundle: Mapping[str, Any], resolver: Directory, state: dict[str, Any]
) -> None:
    exporter = str(bundle["exporter"])
    section = bundle["audit"]
    if (
        not isinstance(section, dict)
        or set(section) != _AUDIT_MEMBERS
        or not isinstance(section["checkpoints"], list)
        or not isinstance(section["records"], list)
    ):
        v.fail("audit", "[malformed] audit must be {checkpoints: [...], records: [...]}")
        return
    opened: dict[int, audit.Checkpoint] = {}
    for position, token in enumerate(section["checkpoints"]):

        def checkpoint(token: object = token, position: int = position) -> str:
            if not isinstance(token, str):
                raise InvalidMessage(Reason.MALFORMED, "checkpoint is not a JWS")
            unverified = jose.parse_compact(token, typ=audit.CHECKPOINT_TYP, what="checkpoint")
            claimed = canonical.loads_strict(unverified.unverified_payload, what="checkpoint")
            at = _parse_time(claimed.get("at") if isinstance(claimed, dict) else None, "at")
            keys = resolver.signing_key(unverified.kid, now=at)
            if keys.agency_id != exporter:
                raise InvalidMessage(
                    Reason.SENDER_MISMATCH, f"checkpoint signed by {keys.agency_id}, not {exporter}"
                )
            cp = audit.open_checkpoint(token, keys.signing_key, node=exporter)
            opened[position] = cp
            return f"records {cp.first_seq}..{cp.last_seq} signed by {exporter} at {cp.at}"

        v.record(f"checkpoint[{position}]", checkpoint)
    shown: list[Mapping[str, Any]] = []
    state["audit_records"] = shown
    disclosure = False
    for position, raw in enumerate(section["records"]):

        def record(raw: object = raw) -> str:
            nonlocal disclosure
            entry = _obj(raw, _PROOF_MEMBERS, "audit record")
            rec = audit.AuditRecord.from_json(_obj(entry["record"], _RECORD_MEMBERS, "record"))
            if canonical.dumps(rec.to_json()) != canonical.dumps(entry["record"]):
                raise InvalidMessage(Reason.MALFORMED, "audit record has another form")
            if rec.entry.message_id != bundle["message_id"] or rec.entry.agency != exporter:
                raise InvalidMessage(Reason.HEADER_MISMATCH, "audit record is about another")
            cp = opened.get(entry["checkpoint"]) if isinstance(entry["checkpoint"], int) else None
            if cp is None:
                raise InvalidMessage(Reason.MALFORMED, "no verified checkpoint for this record")
            proof = [bytes.fromhex(h) for h in _list(entry["proof"], "proof")]
            index = rec.seq - cp.first_seq
            if not audit.verify_inclusion(rec.canonical(), index, cp.tree_size, proof, cp.root):
                raise InvalidMessage(
                    Reason.DIGEST_MISMATCH, f"record {rec.seq} is not in the checkpoint's tree"
                )
            shown.append(rec.to_json())
            e = rec.entry
            if (
                e.operation is audit.Operation.DISCLOSURE
                and e.peer == DISCLOSURE_PEER
                and e.detail == disclosure_detail(body_included=bundle["body_included"])
            ):
                disclosure = True
            return f"seq {rec.seq} {e.operation.value} by {e.actor} at {rec.at}: in checkpoint"

        v.record(f"audit[{position}]", record)

    def logged() -> str:
        if not disclosure:
            raise InvalidMessage(
                Reason.HEADER_MISMATCH,
                "the export of this bundle (and whether it holds the body) is not in the "
                "proven audit records",
            )
        return "the export is in the exporter's audit log, with the body choice"

    v.record("disclosure logged", logged)


_RECORD_MEMBERS: Final = frozenset(
    audit.AuditRecord(
        seq=0,
        at="",
        entry=audit.AuditEntry(
            operation=audit.Operation.DISCLOSURE,
            actor="-",
            actor_kind=audit.ActorKind.SYSTEM,
            agency="-",
        ),
    ).to_json()
)


def _report(v: _Verifier, state: Mapping[str, Any]) -> BundleReport:
    bundle = state.get("bundle") or {}
    routed: RoutedMessage | None = state.get("routed")
    root = state.get("root")
    return BundleReport(
        checks=tuple(v.checks),
        message_id=bundle.get("message_id"),
        exporter=bundle.get("exporter"),
        exported_at=bundle.get("exported_at"),
        root_pinned=v.pinned is not None,
        root_fingerprint=root_fingerprint(root) if root is not None else None,
        header=routed.header.to_json() if routed is not None else None,
        digest=routed.digest if routed is not None else None,
        body=state.get("body"),
        evidence=tuple(state.get("evidence", ())),
        audit_records=tuple(state.get("audit_records", ())),
    )


def wire_digest(wire: bytes) -> str:
    """Base64url SHA-256 of wire bytes: how evidence names a message."""
    return jose.b64url_encode(hashlib.sha256(wire).digest())
