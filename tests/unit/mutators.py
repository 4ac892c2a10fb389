"""Mutations of a valid sealed message at every layer, and the differential oracle.

Shared by ``tests/unit/test_differential_fuzz.py`` (hypothesis drives the ``random.Random``) and
``bench/fuzz.py`` (a plain seeded loop of >= 100,000 messages). A mutation plays a dishonest
sender who holds a valid signing key: after changing a layer it re-signs, re-encrypts and
re-hashes the layers around it (when ``consistent``), so the checks *behind* the signature are
reached, not only ``bad_signature``.

The oracle (:func:`differential`) runs the gateway check (``verify_routing``) and the
recipient (``open_message``) on the same bytes. Allowed outcomes: both accept with the same
header; both refuse with the same reason (the gateway's steps are the recipient's first
steps); the gateway accepts and the recipient refuses at a later step. A refusal is a
``RemoteError`` with a reason code: ``InvalidMessage``, or ``SchemaInvalid`` for a body its
schema refuses (step 17).
Anything else (another exception, a refusal the other side does not share) is a finding.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from broker.core import canonical, jose
from broker.core.envelope import INNER_TYP, JWE_TYP, OUTER_TYP, open_message, verify_routing
from broker.core.header import Header
from broker.core.replay import MemoryReplayStore
from broker.errors import InvalidMessage, RemoteError
from broker.loaders import load_schema_registry

from . import forge
from .forge import NOW

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
WORLD: Final = forge.make_world()
REGISTRY: Final = load_schema_registry()
SENDER: Final = "de.lka-berlin"
RECIPIENT: Final = "nl.politie-nec"
OTHER: Final = "ua.npu-ctd"
BODY: Final[dict[str, Any]] = json.loads((EXAMPLES / "bulletin.json").read_text())

# Values that have broken parsers before, or could: lone surrogates, non-ASCII, wrong types,
# huge numbers, empty and long strings, v1 UUIDs, nested containers.
HOSTILE: Final[tuple[Any, ...]] = (
    None,
    True,
    False,
    0,
    -1,
    1,
    2**63,
    2**64 + 1,
    1.5,
    "",
    " ",
    "\ud800",
    "a\udfffb",
    "\u0000",
    "\u202e",
    "é",
    "de.lka-berlin",
    "nl.politie-nec",
    "tf.balkan-route",
    "6ba7b810-9dad-11d1-80b4-00c04fd430c8",  # v1 UUID
    "00000000-0000-4000-8000-000000000000",
    "x" * 5000,
    [],
    [None],
    ["nl.politie-nec", "nl.politie-nec"],
    {},
    {"agency": "de.lka-berlin", "country": "DE"},
    {"a": {"b": {"c": {"d": [[[[]]]]}}}},
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Parts:
    """A message decomposed into the values a sender controls."""

    outer_header: dict[str, Any]
    inner_header: dict[str, Any]
    body: Any
    salt: str


def base_header() -> Header:
    return forge.header(recipients=(RECIPIENT, OTHER))


_BASE_HEADER: Final = base_header().to_json()
BASE = Parts(
    outer_header=_BASE_HEADER,
    inner_header=_BASE_HEADER,
    body=BODY,
    salt=forge.b64(b"\x01" * 16),
)


def inner_of(parts: Parts) -> bytes:
    payload = canonical_or_json(
        {"header": parts.inner_header, "body": parts.body, "salt": parts.salt}
    )
    return jose.sign_compact(
        payload, WORLD[SENDER].signing, kid=f"{SENDER}#sig", typ=INNER_TYP
    ).encode("ascii")


def canonical_or_json(value: Any) -> bytes:
    """Canonical bytes, or (for values with no canonical form, e.g. lone surrogates) the
    ``json`` module's escaped ASCII form: a hostile sender can sign anything."""
    try:
        return canonical.dumps(value)
    except InvalidMessage:
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")


def outer_of(outer_header: Any, jwe_text: str, inner: bytes, **extra: Any) -> str:
    payload: dict[str, Any] = {
        "header": outer_header,
        "jwe_sha256": jose.sha256_b64url(jwe_text.encode("utf-8", "surrogatepass")),
        "commitment": jose.sha256_b64url(inner),
    }
    payload.update(extra)
    return sign_outer(canonical_or_json(payload))


def sign_outer(payload: bytes) -> str:
    return jose.sign_compact(payload, WORLD[SENDER].signing, kid=f"{SENDER}#sig", typ=OUTER_TYP)


def assemble(outer: str, jwe_text: str) -> bytes:
    """The wire object (non-ASCII or lone surrogates in ``jwe_text`` kept, as a sender could)."""
    return canonical_or_json({"v": 1, "outer": outer, "jwe": jwe_text})


def encrypt(inner: bytes, *agencies: str) -> str:
    return forge.encrypt_to(inner, *(WORLD[a] for a in agencies))


def build(parts: Parts) -> tuple[bytes, str, str, bytes]:
    """``(wire, outer, jwe_text, inner)`` of a consistently sealed message."""
    inner = inner_of(parts)
    jwe_text = encrypt(inner, RECIPIENT, OTHER)
    outer = outer_of(parts.outer_header, jwe_text, inner)
    return forge.assemble(outer, jwe_text), outer, jwe_text, inner


WIRE, OUTER, JWE_TEXT, INNER = build(BASE)


# ---------------------------------------------------------------------- helpers ---


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    op = rng.randrange(6)
    if not data:
        return bytes([rng.randrange(256)])
    pos = rng.randrange(len(data))
    if op == 0:  # flip bits
        return data[:pos] + bytes([data[pos] ^ rng.randrange(1, 256)]) + data[pos + 1 :]
    if op == 1:  # insert
        return data[:pos] + rng.randbytes(rng.randrange(1, 9)) + data[pos:]
    if op == 2:  # delete
        return data[:pos] + data[pos + rng.randrange(1, 17) :]
    if op == 3:  # truncate
        return data[:pos]
    if op == 4:  # duplicate a slice
        end = min(len(data), pos + rng.randrange(1, 33))
        return data[:end] + data[pos:end] + data[end:]
    return data + rng.randbytes(rng.randrange(1, 9))  # extend


def _mutate_json(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """One change somewhere inside a JSON value: a member removed, added, replaced."""
    if isinstance(value, dict) and value and (depth < 3 or rng.random() < 0.5):
        key = rng.choice(sorted(value))
        op = rng.randrange(4)
        out = dict(value)
        if op == 0:
            del out[key]
        elif op == 1:
            out[rng.choice(["aad", "unprotected", "x", "zip", "jku", "crit", key + "_"])] = (
                rng.choice(HOSTILE)
            )
        elif op == 2:
            out[key] = rng.choice(HOSTILE)
        else:
            out[key] = _mutate_json(rng, value[key], depth + 1)
        return out
    if isinstance(value, list) and value:
        out_list = list(value)
        op = rng.randrange(4)
        index = rng.randrange(len(out_list))
        if op == 0:
            del out_list[index]
        elif op == 1:
            out_list.insert(index, rng.choice(HOSTILE))
        elif op == 2:
            out_list.reverse()
        else:
            out_list[index] = _mutate_json(rng, out_list[index], depth + 1)
        return out_list
    return rng.choice(HOSTILE)


def _reencode(rng: random.Random, value: Any) -> bytes:
    """The value as JSON bytes, canonical or (sometimes) in a non-canonical form."""
    form = rng.randrange(5)
    if form == 0:
        return json.dumps(value, indent=1).encode("utf-8", "surrogatepass")
    if form == 1:
        return json.dumps(value, separators=(",", ":")).encode("ascii")  # unsorted, \u escapes
    return canonical_or_json(value)


# -------------------------------------------------------------------- mutations ---


def m_raw_bytes(rng: random.Random) -> bytes:
    """Raw byte edits of the whole wire."""
    return _mutate_bytes(rng, WIRE)


def m_b64_segment(rng: random.Random) -> bytes:
    """Edit the decoded bytes of one base64url segment (outer JWS part or JWE member), then
    (often) re-sign and re-hash consistently."""
    consistent = rng.random() < 0.7
    if rng.random() < 0.4:
        head, payload, sig = OUTER.split(".")
        index = rng.randrange(3)
        segs = [head, payload, sig]
        raw = jose.b64url_decode(segs[index], what="segment")
        segs[index] = forge.b64(_mutate_bytes(rng, raw))
        if consistent and index == 1:
            return forge.assemble(sign_outer(jose.b64url_decode(segs[1], what="p")), JWE_TEXT)
        if consistent and index == 0:
            signing_input = f"{segs[0]}.{segs[1]}".encode("ascii")
            # ES256 by hand (raw r || s), so an edited header is signed as a sender would.
            der = WORLD[SENDER].signing.sign(signing_input, ec.ECDSA(hashes.SHA256()))
            r, s_ = decode_dss_signature(der)
            signature = r.to_bytes(32, "big") + s_.to_bytes(32, "big")
            return forge.assemble(f"{segs[0]}.{segs[1]}.{forge.b64(signature)}", JWE_TEXT)
        return forge.assemble(".".join(segs), JWE_TEXT)
    jwe = json.loads(JWE_TEXT)
    member = rng.choice(["protected", "iv", "tag", "ciphertext", "encrypted_key"])
    if member == "encrypted_key":
        entry = rng.randrange(len(jwe["recipients"]))
        raw = jose.b64url_decode(jwe["recipients"][entry]["encrypted_key"], what="k")
        jwe["recipients"][entry]["encrypted_key"] = forge.b64(_mutate_bytes(rng, raw))
    else:
        raw = jose.b64url_decode(jwe[member], what=member)
        jwe[member] = forge.b64(_mutate_bytes(rng, raw))
    jwe_text = canonical.dumps(jwe).decode("ascii")
    outer = outer_of(BASE.outer_header, jwe_text, INNER) if consistent else OUTER
    return forge.assemble(outer, jwe_text)


def m_wire_json(rng: random.Random) -> bytes:
    """Change the wire object's members (added, removed, wrong types, v) or its JSON form."""
    obj: dict[str, Any] = {"v": 1, "outer": OUTER, "jwe": JWE_TEXT}
    if rng.random() < 0.3:
        return _reencode(rng, obj) if rng.random() < 0.5 else _reencode(rng, _mutate_json(rng, obj))
    return canonical_or_json(_mutate_json(rng, obj))


def m_outer_payload(rng: random.Random) -> bytes:
    """Change the outer payload's members or values (not the header), re-signed."""
    payload = json.loads(jose.b64url_decode(OUTER.split(".")[1], what="p"))
    mutated = _mutate_json(rng, payload) if rng.random() < 0.8 else payload
    return forge.assemble(sign_outer(_reencode(rng, mutated)), JWE_TEXT)


def m_header_field(rng: random.Random) -> bytes:
    """Change one header member (or a nested one) in the outer header, the inner header or
    both, and seal consistently around the change."""
    header = dict(BASE.outer_header)
    key = rng.choice(sorted(header))
    if rng.random() < 0.6:
        header[key] = rng.choice(HOSTILE)
    else:
        header = _mutate_json(rng, header)
    where = rng.randrange(3)
    outer_h = header if where in (0, 2) else BASE.outer_header
    inner_h = header if where in (1, 2) else BASE.inner_header
    wire, _, _, _ = build(
        Parts(outer_header=outer_h, inner_header=inner_h, body=BODY, salt=BASE.salt)
    )
    return wire


def m_jwe_structure(rng: random.Random) -> bytes:
    """Recipients added, removed, duplicated or reordered; iv/tag lengths; protected header
    and extra members; then the outer layer re-hashed and re-signed."""
    jwe = json.loads(JWE_TEXT)
    op = rng.randrange(8)
    entries = jwe["recipients"]
    if op == 0:
        entries.reverse()
    elif op == 1:
        entries.pop(rng.randrange(len(entries)))
    elif op == 2:
        entries.append(dict(entries[rng.randrange(len(entries))]))
    elif op == 3:
        extra = json.loads(encrypt(INNER, "de.sta-berlin"))["recipients"][0]
        entries.insert(rng.randrange(len(entries) + 1), extra)
    elif op == 4:
        member = rng.choice(["iv", "tag"])
        length = rng.choice([0, 1, 8, 11, 13, 15, 17, 32])
        jwe[member] = forge.b64(rng.randbytes(length))
    elif op == 5:
        protected = json.loads(jose.b64url_decode(jwe["protected"], what="p"))
        jwe["protected"] = forge.b64(_reencode(rng, _mutate_json(rng, protected)))
    elif op == 6:
        jwe = _mutate_json(rng, jwe)
    else:
        entry = entries[rng.randrange(len(entries))]
        entry["header"] = _mutate_json(rng, entry["header"])
    jwe_text = _reencode(rng, jwe).decode("utf-8", "surrogatepass")
    return assemble(outer_of(BASE.outer_header, jwe_text, INNER), jwe_text)


def m_inner(rng: random.Random) -> bytes:
    """The inner layer changed (payload members, salt, body, JWS header, JSON form), then
    encrypted and committed to consistently."""
    op = rng.randrange(5)
    payload: Any = {"header": BASE.inner_header, "body": BODY, "salt": BASE.salt}
    kid, typ = f"{SENDER}#sig", INNER_TYP
    if op == 0:
        payload = _mutate_json(rng, payload)
    elif op == 1:
        payload["salt"] = forge.b64(rng.randbytes(rng.choice([0, 8, 15, 16, 64, 65])))
    elif op == 2:
        payload["body"] = _mutate_json(rng, BODY) if rng.random() < 0.7 else rng.choice(HOSTILE)
    elif op == 3:
        kid, typ = rng.choice([(f"{OTHER}#sig", INNER_TYP), (kid, OUTER_TYP), (kid, JWE_TYP)])
    raw = _reencode(rng, payload) if op in (0, 4) else canonical_or_json(payload)
    inner = jose.sign_compact(raw, WORLD[SENDER].signing, kid=kid, typ=typ).encode("ascii")
    if op == 4 and rng.random() < 0.5:
        inner = _mutate_bytes(rng, inner)
    jwe_text = encrypt(inner, RECIPIENT, OTHER)
    return forge.assemble(outer_of(BASE.outer_header, jwe_text, inner), jwe_text)


MUTATIONS: Final[dict[str, Callable[[random.Random], bytes]]] = {
    "raw_bytes": m_raw_bytes,
    "b64_segment": m_b64_segment,
    "wire_json": m_wire_json,
    "outer_payload": m_outer_payload,
    "header_field": m_header_field,
    "jwe_structure": m_jwe_structure,
    "inner": m_inner,
}


# ----------------------------------------------------------------------- oracle ---


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What both sides did with one message; ``finding`` is None when they agree."""

    gateway: str  # "accepted" or the reason code
    recipient: str
    finding: str | None = None


def _side(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "accepted", fn()
    except RemoteError as exc:  # InvalidMessage, or SchemaInvalid (step 17): a reason code
        return exc.reason.value, None
    except Exception as exc:  # noqa: BLE001 - the point: anything else is a finding
        return f"CRASH {type(exc).__name__}: {exc}"[:300], None


def differential(wire: bytes) -> Outcome:
    """Run the gateway check and the recipient on ``wire`` and compare (module docstring)."""
    gateway, routed = _side(lambda: verify_routing(wire, resolver=WORLD.resolver, now=NOW))
    recipient, opened = _side(
        lambda: open_message(
            wire,
            recipient=WORLD[RECIPIENT].recipient,
            resolver=WORLD.resolver,
            replay=MemoryReplayStore(),
            validator=REGISTRY,
            now=NOW,
        )
    )
    finding = None
    if gateway.startswith("CRASH") or recipient.startswith("CRASH"):
        finding = "crash"
    elif gateway == "accepted" and recipient == "accepted":
        if routed.header != opened.header:
            finding = "accepted with different headers"
    elif gateway not in ("accepted", recipient):
        finding = f"gateway refused {gateway}, recipient {recipient}"
    return Outcome(gateway=gateway, recipient=recipient, finding=finding)
