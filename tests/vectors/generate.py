"""Regenerate the protocol test vectors (docs/protocol.md section 11).

TEST-ONLY KEYS: ``keys.json`` holds published private keys for the vector agencies. They exist
so that independent implementations can replay the vectors; never use them for anything else.

Run: ``.venv/bin/python -m tests.vectors.generate`` (keeps keys.json if present, rewrites the
vector files with fresh randomness; header ids and times are fixed).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk

from broker.core import canonical, jose
from broker.core.envelope import INNER_TYP, JWE_TYP, OUTER_TYP, SenderIdentity, seal
from broker.core.header import Header
from broker.core.trust import AgencyKeys, StaticResolver
from broker.loaders import load_schema_registry

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[1] / "schemas" / "examples"
FED = "vector-fed"
NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
AGENCIES = ("de.lka-berlin", "nl.politie-nec", "ua.npu-ctd")
TEST_ONLY = "TEST-ONLY published key material for Casebridge protocol vectors. Never use it."


def _key_from_jwk(data: dict[str, Any]) -> ec.EllipticCurvePrivateKey:
    key = jwk.JWK(**data).get_op_key("sign")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def load_keys() -> dict[str, dict[str, Any]]:
    """keys.json as {agency: {signing_kid, signing_jwk, signing_cert, agreement_...}}.

    The keys and certificates are those of the conformance PKI (``conformance/pki.json``), so
    every key id is the one definition of docs/protocol.md section 9:
    ``<agency>#base64url(SHA-256(certificate DER))``.
    """
    path = HERE / "keys.json"
    if not path.exists():
        pki = json.loads((HERE / "conformance" / "pki.json").read_text())["agencies"]
        keys = {
            a: {
                "signing_kid": pki[a]["signing_kid"],
                "signing_jwk": pki[a]["signing_jwk"],
                "signing_cert": pki[a]["signing"]["cert"],
                "agreement_kid": pki[a]["agreement_kid"],
                "agreement_jwk": pki[a]["agreement_jwk"],
                "agreement_cert": pki[a]["agreement"]["cert"],
            }
            for a in AGENCIES
        }
        doc = {"warning": TEST_ONLY, "federation": FED, "agencies": keys}
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    loaded: dict[str, dict[str, Any]] = json.loads(path.read_text())["agencies"]
    return loaded


def private_keys(
    entry: dict[str, Any],
) -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePrivateKey]:
    return _key_from_jwk(entry["signing_jwk"]), _key_from_jwk(entry["agreement_jwk"])


def resolver_from(keys: dict[str, dict[str, Any]]) -> StaticResolver:
    """The trusted key set a vector receiver uses (stands in for the verified directory)."""
    entries = []
    for agency, entry in keys.items():
        signing, agreement = private_keys(entry)
        entries.append(
            AgencyKeys(
                agency_id=agency,
                country=agency[:2].upper(),
                kind="law_enforcement",
                name=agency,
                signing_kid=entry["signing_kid"],
                signing_key=signing.public_key(),
                agreement_kid=entry["agreement_kid"],
                agreement_key=agreement.public_key(),
            )
        )
    return StaticResolver(FED, entries)


def _header(n: int, message_type: str, recipients: tuple[str, ...], **changes: Any) -> Header:
    t = int(NOW.timestamp()) - 3600
    h = Header(
        fed=FED,
        id=f"00000000-0000-4000-8000-{n:012d}",
        type=message_type,
        type_version=1,
        conversation=f"00000000-0000-4000-9000-{n:012d}",
        sender="de.lka-berlin",
        recipients=recipients,
        handling="H2",
        tlp="AMBER",
        purpose="investigation",
        legal_basis="Directive (EU) 2016/680, Art. 8; Council Framework Decision 2006/960/JHA",
        categories=(),
        iat=t,
        exp=t + 14 * 86400,
    )
    return replace(h, **changes)


def _body(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return loaded


def main() -> None:
    registry = load_schema_registry()
    keys = load_keys()
    resolver = resolver_from(keys)
    sign_key = {a: private_keys(keys[a])[0] for a in AGENCIES}
    ka_pub = {a: private_keys(keys[a])[1].public_key() for a in AGENCIES}
    sender = SenderIdentity(
        agency_id="de.lka-berlin",
        signing_kid=keys["de.lka-berlin"]["signing_kid"],
        signing_key=sign_key["de.lka-berlin"],
    )

    def categories(message_type: str, body: dict[str, Any]) -> tuple[str, ...]:
        return tuple(sorted(registry.categories(message_type, 1, body)))

    def sealed(h: Header, body: dict[str, Any]) -> bytes:
        h = replace(h, categories=categories(h.type, body))
        return seal(
            header=h,
            body=body,
            sender=sender,
            resolver=resolver,
            now=NOW,
            salt=secrets.token_bytes(16),
        )

    def parts(
        h: Header,
        body: dict[str, Any],
        *,
        inner_header: dict[str, Any] | None = None,
        outer_header: dict[str, Any] | None = None,
        jwe_edit: Callable[[dict[str, Any]], None] | None = None,
        jws_header: dict[str, Any] | None = None,
        commit_other: bool = False,
    ) -> bytes:
        h = replace(h, categories=categories(h.type, body))
        kid = keys["de.lka-berlin"]["signing_kid"]
        inner = jose.sign_compact(
            canonical.dumps(
                {
                    "header": inner_header or h.to_json(),
                    "body": body,
                    "salt": jose.b64url_encode(secrets.token_bytes(16)),
                }
            ),
            sign_key["de.lka-berlin"],
            kid=kid,
            typ=INNER_TYP,
        ).encode()
        jwe_text = jose.encrypt_general(
            inner, [(keys[r]["agreement_kid"], ka_pub[r]) for r in h.recipients], typ=JWE_TYP
        )
        if jwe_edit is not None:
            obj = json.loads(jwe_text)
            jwe_edit(obj)
            jwe_text = canonical.dumps(obj).decode()
        payload = canonical.dumps(
            {
                "header": outer_header or h.to_json(),
                "jwe_sha256": jose.sha256_b64url(jwe_text.encode()),
                "commitment": jose.sha256_b64url(inner + b"." if commit_other else inner),
            }
        )
        if jws_header is None:
            outer = jose.sign_compact(payload, sign_key["de.lka-berlin"], kid=kid, typ=OUTER_TYP)
        else:
            outer = ".".join(
                [
                    jose.b64url_encode(canonical.dumps(jws_header)),
                    jose.b64url_encode(payload),
                    jose.b64url_encode(b"\x00" * 64),
                ]
            )
        return canonical.dumps({"v": 1, "outer": outer, "jwe": jwe_text})

    for old in HERE.glob("valid-*.json"):
        old.unlink()
    for old in HERE.glob("invalid-*.json"):
        old.unlink()

    def write(name: str, wire: bytes, recipient: str, **expect: Any) -> None:
        doc = {
            "now": NOW.isoformat().replace("+00:00", "Z"),
            "recipient": recipient,
            "wire": wire.decode(),
            **expect,
        }
        (HERE / f"{name}.json").write_text(
            json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )

    one = ("nl.politie-nec",)
    two = ("nl.politie-nec", "ua.npu-ctd")
    for n, (label, mtype, rcpts, extra) in enumerate(
        [
            ("request-one-recipient", "request.assistance", one, {"due": "2026-12-12"}),
            (
                "bulletin-two-recipients",
                "bulletin",
                two,
                {"handling": "H0", "tlp": "GREEN", "purpose": "prevention"},
            ),
        ],
        start=1,
    ):
        h = _header(n, mtype, rcpts, **extra)
        body = _body(mtype)
        wire = sealed(h, body)
        expected_header = replace(h, categories=categories(mtype, body)).to_json()
        for r in rcpts:
            write(
                f"valid-{n}-{label}-{r}",
                wire,
                r,
                header=expected_header,
                body=body,
                digest=jose.sha256_b64url(wire),
            )

    h = _header(10, "bulletin", one, handling="H0", tlp="GREEN", purpose="prevention")
    body = _body("bulletin")
    good = sealed(h, body)
    good_obj = json.loads(good)
    outer_parts = good_obj["outer"].split(".")

    def with_outer(outer: str, jwe_text: str | None = None) -> bytes:
        return canonical.dumps({"v": 1, "outer": outer, "jwe": jwe_text or good_obj["jwe"]})

    flipped = bytearray(jose.b64url_decode(outer_parts[2], what="s"))
    flipped[0] ^= 1
    other = json.loads(
        sealed(_header(11, "bulletin", one, handling="H0", tlp="GREEN", purpose="prevention"), body)
    )
    cases: list[tuple[str, bytes, str, str]] = [
        (
            "bad-signature",
            with_outer(f"{outer_parts[0]}.{outer_parts[1]}.{jose.b64url_encode(bytes(flipped))}"),
            "nl.politie-nec",
            "bad_signature",
        ),
        (
            "alg-none",
            with_outer(
                ".".join(
                    [
                        jose.b64url_encode(
                            canonical.dumps(
                                {
                                    "alg": "none",
                                    "kid": keys["de.lka-berlin"]["signing_kid"],
                                    "typ": OUTER_TYP,
                                }
                            )
                        ),
                        outer_parts[1],
                        "",
                    ]
                )
            ),
            "nl.politie-nec",
            "alg_not_allowed",
        ),
        (
            "jku-header",
            parts(
                h,
                body,
                jws_header={
                    "alg": "ES256",
                    "jku": "https://keys.invalid/jwks.json",
                    "kid": keys["de.lka-berlin"]["signing_kid"],
                    "typ": OUTER_TYP,
                },
            ),
            "nl.politie-nec",
            "forbidden_header",
        ),
        (
            "jwe-swapped",
            with_outer(good_obj["outer"], other["jwe"]),
            "nl.politie-nec",
            "digest_mismatch",
        ),
        ("not-addressed", good, "ua.npu-ctd", "not_addressed"),
        (
            "header-mismatch",
            parts(
                h,
                body,
                inner_header=replace(
                    h, handling="H3", categories=categories("bulletin", body)
                ).to_json(),
            ),
            "nl.politie-nec",
            "header_mismatch",
        ),
        (
            "foreign-federation",
            parts(replace(h, fed="other-fed"), body),
            "nl.politie-nec",
            "foreign_federation",
        ),
        (
            "zip",
            parts(
                h,
                body,
                jwe_edit=lambda o: o.__setitem__(
                    "protected",
                    jose.b64url_encode(
                        canonical.dumps({"enc": "A256GCM", "typ": JWE_TYP, "zip": "DEF"})
                    ),
                ),
            ),
            "nl.politie-nec",
            "forbidden_header",
        ),
        (
            "pbes2",
            parts(
                h,
                body,
                jwe_edit=lambda o: o["recipients"][0]["header"].__setitem__(
                    "alg", "PBES2-HS256+A128KW"
                ),
            ),
            "nl.politie-nec",
            "alg_not_allowed",
        ),
        ("non-canonical", json.dumps(good_obj, indent=1).encode(), "nl.politie-nec", "malformed"),
    ]
    # An expired message cannot be sealed at NOW (seal refuses it), so seal it at issue time.
    t0 = NOW - timedelta(days=20)
    hx = replace(
        h,
        id="00000000-0000-4000-8000-000000000012",
        iat=int(t0.timestamp()),
        exp=int((t0 + timedelta(days=14)).timestamp()),
    )
    hx = replace(hx, categories=categories("bulletin", body))
    expired = seal(
        header=hx, body=body, sender=sender, resolver=resolver, now=t0, salt=secrets.token_bytes(16)
    )
    cases.append(("expired", expired, "nl.politie-nec", "expired"))
    cases.extend(_more_cases(good_obj, h, body, parts, with_outer))
    for name, wire, recipient, reason in cases:
        write(f"invalid-{name}", wire, recipient, reason=reason)
    print(f"wrote {len(list(HERE.glob('valid-*.json')))} valid and {len(cases)} invalid vectors")


def _more_cases(
    good_obj: dict[str, Any],
    h: Header,
    body: dict[str, Any],
    parts: Callable[..., bytes],
    with_outer: Callable[[str], bytes],
) -> list[tuple[str, bytes, str, str]]:
    """High-S twin signature, off-curve ephemeral key, inner content not the committed one."""
    head, payload, sig = good_obj["outer"].split(".")
    raw = jose.b64url_decode(sig, what="s")
    high_s = (jose.P256_ORDER - int.from_bytes(raw[32:], "big")).to_bytes(32, "big")
    twin = f"{head}.{payload}.{jose.b64url_encode(raw[:32] + high_s)}"

    def off_curve(obj: dict[str, Any]) -> None:
        epk = obj["recipients"][0]["header"]["epk"]
        y = bytearray(jose.b64url_decode(epk["y"], what="y"))
        y[-1] ^= 1
        epk["y"] = jose.b64url_encode(bytes(y))

    return [
        ("high-s-signature", with_outer(twin), "nl.politie-nec", "bad_signature"),
        ("off-curve-epk", parts(h, body, jwe_edit=off_curve), "nl.politie-nec", "decrypt_failed"),
        (
            "commitment-mismatch",
            parts(h, body, commit_other=True),
            "nl.politie-nec",
            "commitment_mismatch",
        ),
    ]


if __name__ == "__main__":
    main()
