"""Our JOSE layer against jwcrypto's JWS/JWE objects, an independent parser of the same RFCs.

The core parses JOSE itself and calls jwcrypto's algorithm implementations directly; these
tests prove the bytes it produces are standard (jwcrypto's objects accept them) and that it
accepts what a standard implementation produces, and refuses the same token when tampered.
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwe, jwk, jws

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
