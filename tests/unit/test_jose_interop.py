"""Our JOSE layer against jwcrypto's JWS/JWE objects, an independent parser of the same RFCs.

The core parses JOSE itself and calls jwcrypto's algorithm implementations directly; these
tests prove the bytes it produces are standard (jwcrypto's objects accept them) and that it
accepts what a standard implementation produces, and refuses the same token when tampered.
"""

from __future__ import annotations

import json
import secrets
import struct
from typing import Final

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from jwcrypto import jwe, jwk, jws
from jwcrypto.jwa import JWA

from broker.core import jose
from broker.errors import InvalidMessage, Reason

TYP = "casebridge.test+jwe"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_our_compact_jws_verifies_with_jwcrypto() -> None:
    key = _key()
    token = jose.sign_compact(b'{"a":1}', key, kid="k1", typ="casebridge.test+jws")
    parsed = jws.JWS()
    parsed.deserialize(token)
    parsed.verify(jwk.JWK.from_pyca(key.public_key()), alg="ES256")
    assert parsed.payload == b'{"a":1}'
    assert parsed.jose_header == {"alg": "ES256", "kid": "k1", "typ": "casebridge.test+jws"}


def test_jwcrypto_compact_jws_verifies_with_ours_and_tamper_is_refused() -> None:
    key = _key()
    token = jws.JWS(b"payload")
    header = json.dumps({"alg": "ES256", "kid": "k1", "typ": "t"}, separators=(",", ":"))
    token.add_signature(jwk.JWK.from_pyca(key), alg="ES256", protected=header)
    text = str(token.serialize(compact=True))
    head, body, sig = text.split(".")
    # jwcrypto does not normalise s; ours accepts only the low-s twin, so normalise it here.
    low = jose.b64url_encode(jose._low_s(jose.b64url_decode(sig, what="sig")))
    unverified = jose.parse_compact(f"{head}.{body}.{low}", typ="t", what="jws")
    assert jose.verify_compact(unverified, key.public_key(), what="jws") == b"payload"
    other = jose.parse_compact(
        f"{head}.{jose.b64url_encode(b'payloaD')}.{low}", typ="t", what="jws"
    )
    with pytest.raises(InvalidMessage) as err:
        jose.verify_compact(other, key.public_key(), what="jws")
    assert err.value.reason is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("count", [1, 3])
def test_our_general_jwe_decrypts_with_jwcrypto_for_every_recipient(count: int) -> None:
    keys = [_key() for _ in range(count)]
    text = jose.encrypt_general(
        b"secret body", [(f"k{i}", k.public_key()) for i, k in enumerate(keys)], typ=TYP
    )
    for key in keys:
        parsed = jwe.JWE()
        parsed.allowed_algs = [jose.KEY_ALG, jose.ENC_ALG]
        parsed.deserialize(text, jwk.JWK.from_pyca(key))
        assert parsed.payload == b"secret body"


def test_jwcrypto_general_jwe_decrypts_with_ours_and_tamper_is_refused() -> None:
    keys = [_key(), _key()]
    token = jwe.JWE(b"from elsewhere", protected=json.dumps({"enc": "A256GCM", "typ": TYP}))
    for i, key in enumerate(keys):
        token.add_recipient(
            jwk.JWK.from_pyca(key.public_key()),
            header=json.dumps({"alg": "ECDH-ES+A256KW", "kid": f"k{i}"}),
        )
    obj = json.loads(token.serialize(compact=False))
    text = json.dumps(obj)
    for i, key in enumerate(keys):
        assert jose.decrypt_general(text, kid=f"k{i}", key=key, typ=TYP) == b"from elsewhere"
    flipped = obj["ciphertext"][:-2] + ("A" if obj["ciphertext"][-2] != "A" else "B") + "A"
    with pytest.raises(InvalidMessage) as err:
        jose.decrypt_general(
            json.dumps({**obj, "ciphertext": flipped}), kid="k0", key=keys[0], typ=TYP
        )
    assert err.value.reason in {Reason.DECRYPT_FAILED, Reason.MALFORMED}


def test_short_iv_is_refused_before_decryption() -> None:
    key = _key()
    obj = json.loads(jose.encrypt_general(b"x", [("k", key.public_key())], typ=TYP))
    obj["iv"] = jose.b64url_encode(b"\0" * 8)
    with pytest.raises(InvalidMessage) as err:
        jose.decrypt_general(json.dumps(obj), kid="k", key=key, typ=TYP)
    assert err.value.reason is Reason.MALFORMED


def test_wrong_key_is_refused_as_decrypt_failed() -> None:
    key, other = _key(), _key()
    text = jose.encrypt_general(b"x", [("k", key.public_key())], typ=TYP)
    with pytest.raises(InvalidMessage) as err:
        jose.decrypt_general(text, kid="k", key=other, typ=TYP)
    assert err.value.reason is Reason.DECRYPT_FAILED


class TestEcdhEsWithCryptographyDirectly:
    """ECDH-ES+A256KW done with pyca (ConcatKDFHash, AES key wrap) against jwcrypto's own."""

    KEY_WRAP = JWA.keymgmt_alg(jose.KEY_ALG)
    HEADERS: Final = {"alg": jose.KEY_ALG, "enc": jose.ENC_ALG}

    def test_our_wrapped_key_unwraps_with_jwcrypto(self) -> None:
        """A content key we wrap is recovered by jwcrypto's ECDH-ES+A256KW from our epk."""
        key, cek = _key(), secrets.token_bytes(32)
        epk, encrypted_key = jose.wrap_key(cek, key.public_key())
        assert set(epk) == {"crv", "kty", "x", "y"}
        unwrapped = self.KEY_WRAP.unwrap(
            jwk.JWK.from_pyca(key), 256, encrypted_key, {**self.HEADERS, "epk": epk}
        )
        assert unwrapped == cek

    def test_jwcrypto_wrapped_key_unwraps_with_ours(self) -> None:
        """A content key jwcrypto wraps (its own ephemeral JWK) is recovered by ours."""
        key, cek = _key(), secrets.token_bytes(32)
        wrapped = self.KEY_WRAP.wrap(jwk.JWK.from_pyca(key.public_key()), 256, cek, self.HEADERS)
        epk = jwk.JWK(**wrapped["header"]["epk"]).get_op_key("verify")
        assert jose.unwrap_key(wrapped["ek"], epk, key) == cek

    def test_same_ephemeral_key_gives_the_same_bytes_as_jwcrypto(self) -> None:
        """With the same ephemeral key, our Concat KDF output (our OtherInfo) and wrapped key
        are byte-identical to jwcrypto's derivation."""
        ephemeral, recipient = _key(), _key()
        ours = jose._kek(ephemeral, recipient.public_key())
        theirs = self.KEY_WRAP._derive(
            ephemeral, recipient.public_key(), jose.KEY_ALG, 256, self.HEADERS
        )
        assert ours == theirs
        cek = secrets.token_bytes(32)
        assert aes_key_wrap(ours, cek) == aes_key_wrap(theirs, cek)

    def test_other_info_is_the_rfc_7518_layout(self) -> None:
        """OtherInfo: length-prefixed alg, empty apu and apv, 256 as 32-bit big-endian."""
        alg = b"ECDH-ES+A256KW"
        expected = struct.pack(">I", len(alg)) + alg + struct.pack(">III", 0, 0, 256)
        assert jose._other_info(256) == expected

    def test_a_wrapped_key_of_another_length_is_refused(self) -> None:
        """A 128-bit content key wrapped to us is refused as decrypt_failed (not used)."""
        key = _key()
        wrapped = self.KEY_WRAP.wrap(
            jwk.JWK.from_pyca(key.public_key()), 128, secrets.token_bytes(16), self.HEADERS
        )
        text = jose.encrypt_general(b"x", [("k", key.public_key())], typ=TYP)
        obj = json.loads(text)
        obj["recipients"][0]["encrypted_key"] = jose.b64url_encode(wrapped["ek"])
        obj["recipients"][0]["header"]["epk"] = {
            k: wrapped["header"]["epk"][k] for k in ("crv", "kty", "x", "y")
        }
        with pytest.raises(InvalidMessage) as err:
            jose.decrypt_general(json.dumps(obj), kid="k", key=key, typ=TYP)
        assert err.value.reason is Reason.DECRYPT_FAILED

    def test_signing_needs_no_jwk_and_jose_keeps_no_cache(self) -> None:
        """ES256 runs on the pyca key itself: the module holds no key cache."""
        assert not [n for n in vars(jose) if "CACHE" in n.upper() and not n.startswith("__")]
        key = _key()
        token = jose.sign_compact(b"p", key, kid="k", typ="t")
        parsed = jws.JWS()
        parsed.deserialize(token)
        parsed.verify(jwk.JWK.from_pyca(key.public_key()), alg="ES256")
