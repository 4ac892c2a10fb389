"""The only module that imports jwcrypto: typed, allowlisted JWS and JWE operations.

Everything here fails closed with ``InvalidMessage`` and a reason code. Headers are checked
against an explicit allowlist *before* any key is used: the only algorithms are ES256 for
signatures and ECDH-ES+A256KW with A256GCM for encryption; ``zip``, ``crit``, ``jku``, ``x5u``,
``jwk``, ``x5c`` and any member not listed are refused, so no key is ever taken or fetched
from a message. Values parsed but not yet verified are named ``unverified_*``.

The JOSE structure (splitting, base64url, headers, JSON members) is parsed here, strictly and
once; the cryptographic steps are jwcrypto's JWA algorithm implementations (``ES256``,
``A256GCM``), handed the exact signing input, AAD and key material. We do not build jwcrypto
``JWS``/``JWE`` objects: they would re-parse everything we have already checked more strictly
(and deep-copy their header registry per object, ~30% of their cost). Nor ``JWK`` objects: the
JWA classes only ask a key for its pyca key (``get_op_key``), which :class:`_OpKey` answers
without building (and caching) a JWK per key.

``ECDH-ES+A256KW`` (RFC 7518 section 4.6) uses ``cryptography`` directly: jwcrypto's object
model costs far more than the operation there (``JWK.generate`` for the ephemeral key ~160 us
against ~18 us; importing the ``epk`` as a JWK ~130 us). The steps are pyca's ECDH exchange,
``ConcatKDFHash`` (the Concat KDF of NIST SP 800-56A that section 4.6.2 names) and AES key
wrap (RFC 3394); only the OtherInfo layout is ours (:func:`_other_info`). The interop tests
(``tests/unit/test_jose_interop.py``) prove it byte-compatible with jwcrypto's own objects in
both directions.
What those objects would still add is done here explicitly: the JWS signing input is
``ASCII(header_b64 || "." || payload_b64)`` (RFC 7515 section 5.2), the JWE AAD is
``ASCII(protected_b64)`` (RFC 7516 section 5.2 step 14, no ``aad`` member), the IV must be 96
bits and the tag 128 bits, and the unwrapped content key must be 256 bits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap
from jwcrypto.jwa import JWA

from broker.core import canonical
from broker.errors import InvalidMessage, Reason

SIG_ALG: Final = "ES256"
KEY_ALG: Final = "ECDH-ES+A256KW"
ENC_ALG: Final = "A256GCM"
JWS_HEADER_MEMBERS: Final = frozenset({"alg", "kid", "typ"})
JWE_PROTECTED_MEMBERS: Final = frozenset({"enc", "typ"})
JWE_RECIPIENT_MEMBERS: Final = frozenset({"alg", "kid", "epk"})
JWE_TOP_MEMBERS: Final = frozenset({"protected", "recipients", "iv", "ciphertext", "tag"})
CEK_BITS: Final = 256
IV_BYTES: Final = 12
TAG_BYTES: Final = 16
# jwcrypto's algorithm implementations (stateless; one instance each, chosen by name here and
# never from a message).
_SIGNER: Final = JWA.signing_alg(SIG_ALG)
_CONTENT_CIPHER: Final = JWA.encryption_alg(ENC_ALG)
_KW_KEY_BYTES: Final = 32  # A256KW: the Concat KDF derives a 256-bit key-encryption key
# Named so the refusal says *why* (these make a JWS/JWE name its own key or change semantics).
DANGEROUS_MEMBERS: Final = frozenset({"jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256", "crit", "zip"})


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_URL_TO_STANDARD: Final = bytes.maketrans(b"-_", b"+/")
_STANDARD_TO_URL: Final = bytes.maketrans(b"+/", b"-_")


def b64url_decode(text: str, *, what: str) -> bytes:
    """Strict base64url (no padding, no other alphabet, canonical); MALFORMED otherwise."""
    if not isinstance(text, str) or not text.isascii():
        raise InvalidMessage(Reason.MALFORMED, f"{what} is not base64url")
    data = text.encode("ascii")
    try:
        raw = binascii.a2b_base64(
            data.translate(_URL_TO_STANDARD) + b"=" * (-len(data) % 4), strict_mode=True
        )
    except (binascii.Error, ValueError):
        raise InvalidMessage(Reason.MALFORMED, f"{what} is not base64url") from None
    # One check for the alphabet and the canonical form (RFC 4648 section 3.5: unused low bits
    # zero): encoding the result must give back exactly the text. "+" or "/" (translated into
    # the standard alphabet above) would come back as "-" or "_", padding would be stripped.
    if binascii.b2a_base64(raw, newline=False).rstrip(b"=").translate(_STANDARD_TO_URL) != data:
        raise InvalidMessage(Reason.MALFORMED, f"{what} is not canonical base64url")
    return raw


def sha256_b64url(data: bytes) -> str:
    """base64url(SHA-256(data)): the digest form used throughout the protocol."""
    return b64url_encode(hashlib.sha256(data).digest())


class _OpKey:
    """A pyca key as jwcrypto's JWA classes ask for it (``get_op_key``), without a JWK."""

    __slots__ = ("_key",)

    def __init__(self, key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    def get_op_key(
        self, operation: str | None = None, arg: object = None
    ) -> ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey:
        return self._key


def _other_info(bitsize: int) -> bytes:
    """RFC 7518 section 4.6.2 OtherInfo for ``ECDH-ES+A256KW``: AlgorithmID (the ``alg``
    value), empty PartyUInfo and PartyVInfo (we send no ``apu``/``apv``), SuppPubInfo = the
    key data length in bits, each length-prefixed as 32-bit big-endian; no SuppPrivInfo."""
    alg = KEY_ALG.encode("ascii")
    return (
        len(alg).to_bytes(4, "big")
        + alg
        + (0).to_bytes(4, "big")
        + (0).to_bytes(4, "big")
        + bitsize.to_bytes(4, "big")
    )


_OTHER_INFO: Final = _other_info(_KW_KEY_BYTES * 8)


def _kek(private: ec.EllipticCurvePrivateKey, public: ec.EllipticCurvePublicKey) -> bytes:
    """The key-encryption key: Concat KDF (SHA-256) over the ECDH shared secret."""
    shared = private.exchange(ec.ECDH(), public)
    kdf = ConcatKDFHash(algorithm=hashes.SHA256(), length=_KW_KEY_BYTES, otherinfo=_OTHER_INFO)
    return kdf.derive(shared)


def _coordinate(value: int) -> str:
    return b64url_encode(value.to_bytes(32, "big"))


def wrap_key(cek: bytes, recipient: ec.EllipticCurvePublicKey) -> tuple[dict[str, str], bytes]:
    """``ECDH-ES+A256KW`` key wrapping of ``cek`` to ``recipient`` with a fresh ephemeral key:
    ``(epk as a public JWK {crv, kty, x, y}, encrypted_key)``."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    numbers = ephemeral.public_key().public_numbers()
    epk = {"crv": "P-256", "kty": "EC", "x": _coordinate(numbers.x), "y": _coordinate(numbers.y)}
    return epk, aes_key_wrap(_kek(ephemeral, recipient), cek)


def unwrap_key(
    encrypted_key: bytes, epk: ec.EllipticCurvePublicKey, key: ec.EllipticCurvePrivateKey
) -> bytes:
    """Reverse of :func:`wrap_key`: the 256-bit content key (raises ``InvalidUnwrap`` or
    ``ValueError`` on any failure, a content key of another length included)."""
    cek = aes_key_unwrap(_kek(key, epk), encrypted_key)
    if len(cek) * 8 != CEK_BITS:
        raise ValueError("the content key must be 256 bits")
    return cek


def _check_p256(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> None:
    if not isinstance(key.curve, ec.SECP256R1):
        raise InvalidMessage(Reason.ALG_NOT_ALLOWED, "only P-256 keys are allowed")


# ---------------------------------------------------------------- JWS (compact) ---


@dataclass(frozen=True, kw_only=True, slots=True)
class UnverifiedJWS:
    """A compact JWS split and its header checked, signature NOT yet verified."""

    token: str
    header: Mapping[str, Any]
    header_bytes: bytes  # the decoded protected header exactly as sent (canonical-form checks)
    kid: str
    unverified_payload: bytes
    signature: bytes


# Order of the P-256 group. ECDSA signatures (r, s) and (r, n - s) are both valid; we emit and
# accept only s <= n/2 so that a signed message has exactly one byte form (no malleability).
P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _low_s(signature: bytes) -> bytes:
    r, s = signature[:32], int.from_bytes(signature[32:], "big")
    if s > P256_ORDER // 2:
        s = P256_ORDER - s
    return r + s.to_bytes(32, "big")


def sign_compact(payload: bytes, key: ec.EllipticCurvePrivateKey, *, kid: str, typ: str) -> str:
    """ES256 compact JWS over ``payload`` with protected header ``{alg, kid, typ}``, low-s."""
    _check_p256(key)
    head = b64url_encode(canonical.dumps({"alg": SIG_ALG, "kid": kid, "typ": typ}))
    signing_input = f"{head}.{b64url_encode(payload)}"
    signature = _SIGNER.sign(_OpKey(key), signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(_low_s(signature))}"


@dataclass(frozen=True, kw_only=True, slots=True)
class SplitJWS:
    """A compact JWS split, its header decoded (strict JSON object, no dangerous member)."""

    token: str
    parts: tuple[str, str, str]
    header: Mapping[str, Any]
    header_bytes: bytes


def split_compact(token: str, *, what: str) -> SplitJWS:
    """First half of :func:`parse_compact` (protocol step 3 for OUTER): three parts, the header
    base64url and a strict JSON object, no member that names or carries a key, not a JWE."""
    if not isinstance(token, str) or not token.isascii():
        raise InvalidMessage(Reason.MALFORMED, f"{what} is not a compact JWS")
    parts = token.split(".")
    if len(parts) != 3:
        # Five parts is a compact JWE where a JWS belongs.
        raise InvalidMessage(Reason.MALFORMED, f"{what} is not a compact JWS ({len(parts)} parts)")
    header_bytes = b64url_decode(parts[0], what=f"{what} header")
    header = canonical.loads_strict(header_bytes, what=f"{what} header", max_depth=None)
    if not isinstance(header, dict):
        raise InvalidMessage(Reason.MALFORMED, f"{what} header is not an object")
    dangerous = sorted(DANGEROUS_MEMBERS & set(header))
    if dangerous:
        raise InvalidMessage(Reason.FORBIDDEN_HEADER, f"{what} header has {dangerous}")
    if "enc" in header:
        raise InvalidMessage(Reason.MALFORMED, f"{what} is a JWE, a JWS was expected")
    return SplitJWS(
        token=token, parts=(parts[0], parts[1], parts[2]), header=header, header_bytes=header_bytes
    )


def finish_compact(split: SplitJWS, *, typ: str, what: str) -> UnverifiedJWS:
    """Second half of :func:`parse_compact` (step 4 for OUTER): the header allowlist, payload
    and signature base64url, a 64-byte low-S signature."""
    check_jws_header(split.header, typ=typ, what=what)
    payload = b64url_decode(split.parts[1], what=f"{what} payload")
    signature = b64url_decode(split.parts[2], what=f"{what} signature")
    if len(signature) != 64 or int.from_bytes(signature[32:], "big") > P256_ORDER // 2:
        raise InvalidMessage(Reason.BAD_SIGNATURE, f"{what} signature is not a low-s ES256 value")
    return UnverifiedJWS(
        token=split.token,
        header=split.header,
        header_bytes=split.header_bytes,
        kid=split.header["kid"],
        unverified_payload=payload,
        signature=signature,
    )


def parse_compact(token: str, *, typ: str, what: str) -> UnverifiedJWS:
    """Split a compact JWS and check its protected header against the allowlist."""
    return finish_compact(split_compact(token, what=what), typ=typ, what=what)


def check_jws_header(header: Mapping[str, Any], *, typ: str, what: str) -> None:
    """Refuse any JWS header that is not exactly ``{alg: ES256, kid, typ}``."""
    dangerous = sorted(DANGEROUS_MEMBERS & set(header))
    if dangerous:
        raise InvalidMessage(Reason.FORBIDDEN_HEADER, f"{what} header has {dangerous}")
    if "enc" in header:
        raise InvalidMessage(Reason.MALFORMED, f"{what} is a JWE, a JWS was expected")
    if header.get("alg") != SIG_ALG:
        raise InvalidMessage(
            Reason.ALG_NOT_ALLOWED, f"{what} alg {header.get('alg')!r} (only {SIG_ALG})"
        )
    extra = sorted(set(header) - JWS_HEADER_MEMBERS)
    if extra:
        raise InvalidMessage(Reason.FORBIDDEN_HEADER, f"{what} header has {extra}")
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise InvalidMessage(Reason.MALFORMED, f"{what} header has no kid")
    if header.get("typ") != typ:
        raise InvalidMessage(Reason.MALFORMED, f"{what} typ must be {typ!r}")


def verify_compact(
    unverified: UnverifiedJWS, key: ec.EllipticCurvePublicKey, *, what: str
) -> bytes:
    """Verify an ES256 compact JWS already header-checked by :func:`parse_compact`."""
    _check_p256(key)
    signing_input = unverified.token[: unverified.token.rindex(".")].encode("ascii")
    try:
        _SIGNER.verify(_OpKey(key), signing_input, unverified.signature)
    except Exception as exc:  # InvalidSignature, or anything a malformed value provokes
        raise InvalidMessage(Reason.BAD_SIGNATURE, f"{what} signature does not verify") from exc
    return unverified.unverified_payload


# ---------------------------------------------------------- JWE (general JSON) ---


def encrypt_general(
    plaintext: bytes,
    recipients: Sequence[tuple[str, ec.EllipticCurvePublicKey]],
    *,
    typ: str,
) -> str:
    """JWE (general JSON serialization) to each ``(kid, key)``: ECDH-ES+A256KW, A256GCM.

    One content key and ciphertext, one key-wrap entry per recipient. Always the general form
    with a ``recipients`` array, even for one recipient, so receivers parse a single shape.
    """
    if not recipients:
        raise InvalidMessage(Reason.UNKNOWN_RECIPIENT, "no recipients")
    protected = b64url_encode(canonical.dumps({"enc": ENC_ALG, "typ": typ}))
    cek = secrets.token_bytes(CEK_BITS // 8)
    entries = []
    for kid, key in recipients:
        _check_p256(key)
        # A fresh ephemeral key per recipient; the derived key wraps the one content key.
        epk, encrypted_key = wrap_key(cek, key)
        entries.append(
            {
                "encrypted_key": b64url_encode(encrypted_key),
                "header": {"alg": KEY_ALG, "epk": epk, "kid": kid},
            }
        )
    iv, ciphertext, tag = _CONTENT_CIPHER.encrypt(cek, protected.encode("ascii"), plaintext)
    out = {
        "ciphertext": b64url_encode(ciphertext),
        "iv": b64url_encode(iv),
        "protected": protected,
        "recipients": entries,
        "tag": b64url_encode(tag),
    }
    return canonical.dumps(out).decode("utf-8")


def _check_epk_shape(epk: Any, *, what: str) -> None:
    if not isinstance(epk, dict) or set(epk) != {"kty", "crv", "x", "y"}:
        raise InvalidMessage(Reason.MALFORMED, f"{what} epk must be an EC public JWK")
    if epk["kty"] != "EC" or epk["crv"] != "P-256":
        raise InvalidMessage(Reason.ALG_NOT_ALLOWED, f"{what} epk must be on P-256")
    if not isinstance(epk["x"], str) or not isinstance(epk["y"], str):
        raise InvalidMessage(Reason.MALFORMED, f"{what} epk coordinates must be strings")


def _epk_on_curve(epk: dict[str, Any], *, what: str) -> ec.EllipticCurvePublicKey:
    """The ``epk`` as a public key, refused unless it is a point of P-256."""
    x = b64url_decode(epk["x"], what=f"{what} epk.x")
    y = b64url_decode(epk["y"], what=f"{what} epk.y")
    if len(x) != 32 or len(y) != 32:
        raise InvalidMessage(Reason.MALFORMED, f"{what} epk coordinates must be 32 bytes")
    try:
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        ).public_key()
    except ValueError:
        raise InvalidMessage(Reason.DECRYPT_FAILED, f"{what} epk is not on P-256") from None


@dataclass(frozen=True, kw_only=True, slots=True)
class UnverifiedJWE:
    """A general-JSON JWE whose structure and every header were checked; nothing decrypted.

    ``members`` is the parsed JSON object and ``protected_bytes`` the decoded protected header
    exactly as sent, so a caller can also require canonical forms (the envelope does).
    """

    text: str
    members: Mapping[str, Any]
    protected: Mapping[str, Any]
    protected_bytes: bytes
    entries: tuple[Mapping[str, Any], ...]
    iv: bytes
    tag: bytes
    ciphertext: bytes


def parse_general(unverified_jwe: str, *, typ: str, what: str = "JWE") -> UnverifiedJWE:
    """Check a JWE (general JSON serialization) against section 4.4 without any key: members,
    the protected header, every recipient entry and header, base64url values, IV/tag sizes."""
    if not isinstance(unverified_jwe, str) or not unverified_jwe.startswith("{"):
        parts = len(unverified_jwe.split(".")) if isinstance(unverified_jwe, str) else 0
        kind = {3: "a compact JWS", 5: "a compact JWE"}.get(parts, "not JSON")
        raise InvalidMessage(Reason.MALFORMED, f"{what} is {kind}, a JWE in JSON form was expected")
    # No nesting walk: every member at every level is type-checked below, so a deeper value
    # cannot pass (and the walk would cost more than the rest of this function).
    obj = canonical.loads_strict(unverified_jwe, what=what, max_depth=None)
    if not isinstance(obj, dict):
        raise InvalidMessage(Reason.MALFORMED, f"{what} must be a JSON object")
    if "payload" in obj or "signatures" in obj:
        raise InvalidMessage(Reason.MALFORMED, f"{what} is a JWS, a JWE was expected")
    if set(obj) != JWE_TOP_MEMBERS:
        raise InvalidMessage(
            Reason.FORBIDDEN_HEADER if set(obj) > JWE_TOP_MEMBERS else Reason.MALFORMED,
            f"{what} members must be exactly {sorted(JWE_TOP_MEMBERS)}",
        )
    protected_bytes = b64url_decode(obj["protected"], what=f"{what} protected")
    protected = canonical.loads_strict(protected_bytes, what=f"{what} protected", max_depth=None)
    if not isinstance(protected, dict):
        raise InvalidMessage(Reason.MALFORMED, f"{what} protected header must be an object")
    dangerous = sorted(DANGEROUS_MEMBERS & set(protected))
    if dangerous:
        raise InvalidMessage(Reason.FORBIDDEN_HEADER, f"{what} protected header has {dangerous}")
    if "alg" in protected and protected["alg"] != KEY_ALG:
        raise InvalidMessage(Reason.ALG_NOT_ALLOWED, f"{what} alg {protected['alg']!r}")
    if protected.get("enc") != ENC_ALG:
        raise InvalidMessage(Reason.ALG_NOT_ALLOWED, f"{what} enc {protected.get('enc')!r}")
    if set(protected) != JWE_PROTECTED_MEMBERS or protected["typ"] != typ:
        raise InvalidMessage(
            Reason.FORBIDDEN_HEADER, f"{what} protected header must be {{enc, typ}}"
        )
    entries = obj["recipients"]
    if not isinstance(entries, list) or not entries or len(entries) > 64:
        raise InvalidMessage(Reason.MALFORMED, f"{what} recipients must be a non-empty list")
    kids: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"header", "encrypted_key"}:
            raise InvalidMessage(Reason.MALFORMED, f"{what} recipient entry malformed")
        header = entry["header"]
        if not isinstance(header, dict):
            raise InvalidMessage(Reason.MALFORMED, f"{what} recipient header malformed")
        dangerous = sorted(DANGEROUS_MEMBERS & set(header))
        if dangerous:
            raise InvalidMessage(
                Reason.FORBIDDEN_HEADER, f"{what} recipient header has {dangerous}"
            )
        if header.get("alg") != KEY_ALG:
            raise InvalidMessage(Reason.ALG_NOT_ALLOWED, f"{what} alg {header.get('alg')!r}")
        if set(header) != JWE_RECIPIENT_MEMBERS:
            raise InvalidMessage(
                Reason.FORBIDDEN_HEADER, f"{what} recipient header must be {{alg, kid, epk}}"
            )
        _check_epk_shape(header["epk"], what=what)
        kid = header["kid"]
        if not isinstance(kid, str) or not kid:
            raise InvalidMessage(Reason.MALFORMED, f"{what} recipient kid must be a string")
        if kid in kids:
            raise InvalidMessage(Reason.MALFORMED, f"{what} names recipient {kid!r} twice")
        kids.add(kid)
        b64url_decode(entry["encrypted_key"], what=f"{what} encrypted_key")
    iv = b64url_decode(obj["iv"], what=f"{what} iv")
    tag = b64url_decode(obj["tag"], what=f"{what} tag")
    ciphertext = b64url_decode(obj["ciphertext"], what=f"{what} ciphertext")
    if len(iv) != IV_BYTES or len(tag) != TAG_BYTES:
        raise InvalidMessage(Reason.MALFORMED, f"{what} iv must be 96 bits and tag 128 bits")
    return UnverifiedJWE(
        text=unverified_jwe,
        members=obj,
        protected=protected,
        protected_bytes=protected_bytes,
        entries=tuple(entries),
        iv=iv,
        tag=tag,
        ciphertext=ciphertext,
    )


def decrypt_parsed(
    unverified: UnverifiedJWE,
    *,
    kid: str,
    key: ec.EllipticCurvePrivateKey,
    what: str = "JWE",
) -> bytes:
    """Decrypt our recipient entry of a JWE already checked by :func:`parse_general`."""
    _check_p256(key)
    mine = next((e for e in unverified.entries if e["header"]["kid"] == kid), None)
    if mine is None:
        raise InvalidMessage(Reason.NOT_ADDRESSED, f"{what} has no entry for {kid!r}")
    # Invalid-curve attacks target the receiver's own key: check the point we will use.
    epk = _epk_on_curve(mine["header"]["epk"], what=what)
    encrypted_key = b64url_decode(mine["encrypted_key"], what=f"{what} encrypted_key")
    try:
        cek = unwrap_key(encrypted_key, epk, key)
        payload = _CONTENT_CIPHER.decrypt(
            cek,
            unverified.members["protected"].encode("ascii"),
            unverified.iv,
            unverified.ciphertext,
            unverified.tag,
        )
    except Exception as exc:  # InvalidTag, InvalidUnwrap, or anything a crafted value provokes
        raise InvalidMessage(Reason.DECRYPT_FAILED, f"{what} does not decrypt") from exc
    if not isinstance(payload, bytes):
        raise InvalidMessage(Reason.DECRYPT_FAILED, f"{what} produced no plaintext")
    return payload


def decrypt_general(
    unverified_jwe: str,
    *,
    kid: str,
    key: ec.EllipticCurvePrivateKey,
    typ: str,
    what: str = "JWE",
) -> bytes:
    """Decrypt the recipient entry whose ``kid`` is ours, after checking every header member."""
    _check_p256(key)
    return decrypt_parsed(
        parse_general(unverified_jwe, typ=typ, what=what), kid=kid, key=key, what=what
    )
