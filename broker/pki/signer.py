"""CA keys that sign without leaving where they live: a PKCS#8 file (default) or a PKCS#11 token.

The one signer interface is ``cryptography``'s own ``ec.EllipticCurvePrivateKey``: certificate,
CSR and CRL builders and the directory's JWS signer only ever call ``sign()`` and
``public_key()`` on it. :class:`Pkcs11Key` implements exactly those against a token (tested
with SoftHSM2), so every issuing path works unchanged with a root or country CA key that
cannot be exported. Everything else (exchange, serialisation) refuses.

A key in a token is named by a small RFC 7512-style URI, ``pkcs11:token=<label>;object=<label>``,
kept next to the certificate as ``<stem>.pkcs11`` instead of ``<stem>.key``. The module path
comes from ``$CASEBRIDGE_PKCS11_MODULE`` (default: Debian's SoftHSM2) and the user PIN from
``$CASEBRIDGE_PKCS11_PIN``: neither is ever written to disk by this module.

Only ECDSA with SHA-256 on P-256 is signed (the federation's one algorithm). SoftHSM offers no
CKM_ECDSA_SHA256, so the digest is computed here and the token signs it with CKM_ECDSA; its raw
``r || s`` answer is DER-encoded as ``cryptography`` expects. Token errors become
``ConfigError`` (our own fault, never a peer's). This module must never log a PIN.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote, unquote

import pkcs11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, PublicKey, SignMixin
from pkcs11.exceptions import PKCS11Error
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from broker.errors import ConfigError

MODULE_ENV: Final = "CASEBRIDGE_PKCS11_MODULE"
PIN_ENV: Final = "CASEBRIDGE_PKCS11_PIN"
DEFAULT_MODULE: Final = Path("/usr/lib/softhsm/libsofthsm2.so")
URI_SCHEME: Final = "pkcs11:"
_P256_SIG_BYTES: Final = 64


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenKeyRef:
    """Where a key lives in a token: token label and key (object) label."""

    token: str
    label: str

    def to_uri(self) -> str:
        return f"{URI_SCHEME}token={quote(self.token, safe='')};object={quote(self.label, safe='')}"

    @classmethod
    def parse(cls, text: str) -> TokenKeyRef:
        """Read ``pkcs11:token=...;object=...`` (ConfigError if it is anything else)."""
        text = text.strip()
        if not text.startswith(URI_SCHEME):
            raise ConfigError(f"not a pkcs11: URI: {text!r}")
        fields: dict[str, str] = {}
        for part in text.removeprefix(URI_SCHEME).split(";"):
            name, sep, value = part.partition("=")
            if not sep or name in fields:
                raise ConfigError(f"malformed pkcs11: URI {text!r}")
            fields[name] = unquote(value)
        if set(fields) != {"token", "object"} or not all(fields.values()):
            raise ConfigError(f"a pkcs11: URI needs exactly token= and object=: {text!r}")
        return cls(token=fields["token"], label=fields["object"])


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenAccess:
    """How to reach the token: the PKCS#11 module and the user PIN."""

    module: Path
    pin: str

    @classmethod
    def from_env(cls) -> TokenAccess:
        """``$CASEBRIDGE_PKCS11_MODULE`` (default SoftHSM2) and ``$CASEBRIDGE_PKCS11_PIN``."""
        pin = os.environ.get(PIN_ENV, "")
        if not pin:
            raise ConfigError(f"a key in a PKCS#11 token needs the user PIN in ${PIN_ENV}")
        return cls(module=Path(os.environ.get(MODULE_ENV) or DEFAULT_MODULE), pin=pin)


def _token(access: TokenAccess, ref: TokenKeyRef) -> pkcs11.Token:
    if not access.module.is_file():
        raise ConfigError(f"PKCS#11 module {access.module} not found (set ${MODULE_ENV})")
    try:
        return pkcs11.lib(str(access.module)).get_token(token_label=ref.token)
    except PKCS11Error as exc:
        raise ConfigError(f"PKCS#11 token {ref.token!r}: {type(exc).__name__}") from None


class Pkcs11Key(ec.EllipticCurvePrivateKey):
    """A P-256 private key inside a PKCS#11 token; signs there, never leaves it."""

    def __init__(
        self, ref: TokenKeyRef, access: TokenAccess, public_key: ec.EllipticCurvePublicKey
    ) -> None:
        self.ref = ref
        self._access = access
        self._public = public_key

    @classmethod
    def open(cls, ref: TokenKeyRef, access: TokenAccess) -> Pkcs11Key:
        """The key ``ref`` (its public half read from the token now; ConfigError if absent)."""
        token = _token(access, ref)
        try:
            with token.open(user_pin=access.pin) as session:
                public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=ref.label)
                if not isinstance(public, PublicKey):
                    raise ConfigError(f"{ref.to_uri()}: not a public key")
                der = encode_ec_public_key(public)
                # Fail now, not at the first signature, if the private half is missing.
                session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=ref.label)
        except PKCS11Error as exc:
            raise ConfigError(f"{ref.to_uri()}: {type(exc).__name__}") from None
        key = serialization.load_der_public_key(der)
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise ConfigError(f"{ref.to_uri()}: not a P-256 key")
        return cls(ref, access, key)

    @classmethod
    def generate(cls, ref: TokenKeyRef, access: TokenAccess) -> Pkcs11Key:
        """Generate a non-extractable P-256 key pair in the token under ``ref.label``.

        Refuses (ConfigError) if the token already holds a key with that label: a CA key is
        never silently replaced.
        """
        token = _token(access, ref)
        try:
            with token.open(rw=True, user_pin=access.pin) as session:
                existing = list(
                    session.get_objects(
                        {Attribute.LABEL: ref.label, Attribute.CLASS: ObjectClass.PRIVATE_KEY}
                    )
                )
                if existing:
                    raise ConfigError(f"{ref.to_uri()} already exists in the token")
                params = session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                    local=True,
                )
                params.generate_keypair(
                    store=True,
                    label=ref.label,
                    private_template={
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: False,
                        Attribute.SIGN: True,
                    },
                )
        except PKCS11Error as exc:
            raise ConfigError(f"{ref.to_uri()}: {type(exc).__name__}") from None
        return cls.open(ref, access)

    # ---------------------------------------------- what the builders call

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        """DER ECDSA signature of SHA-256(data), made by the token."""
        if not (
            isinstance(signature_algorithm, ec.ECDSA)
            and isinstance(signature_algorithm.algorithm, hashes.SHA256)
        ):
            raise ConfigError("a token key signs ECDSA with SHA-256 only")
        digest = hashlib.sha256(bytes(data)).digest()
        token = _token(self._access, self.ref)
        try:
            with token.open(user_pin=self._access.pin) as session:
                key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=self.ref.label)
                if not isinstance(key, SignMixin):
                    raise ConfigError(f"{self.ref.to_uri()}: not a private key")
                raw = key.sign(digest, mechanism=Mechanism.ECDSA)
        except PKCS11Error as exc:
            raise ConfigError(
                f"{self.ref.to_uri()}: signing failed: {type(exc).__name__}"
            ) from None
        if len(raw) != _P256_SIG_BYTES:
            raise ConfigError(f"{self.ref.to_uri()}: unexpected signature length {len(raw)}")
        half = _P256_SIG_BYTES // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    # ---------------------------------------------- what a token never gives

    def _refused(self) -> ConfigError:
        return ConfigError(f"{self.ref.to_uri()}: a token key cannot be exported or used for ECDH")

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise self._refused()

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise self._refused()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise self._refused()

    def __copy__(self) -> Pkcs11Key:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Pkcs11Key:
        return self
