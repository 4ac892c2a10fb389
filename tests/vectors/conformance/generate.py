"""Generate the conformance vectors (docs/protocol.md section 11): one file per check.

Run from the repository root: ``python -m tests.vectors.conformance.generate``. The TEST-ONLY
PKI (``pki.json``, ``directories/``) is created on the first run and re-used afterwards, and
every signature here is deterministic ECDSA (RFC 6979), so a re-run rewrites the same bytes
except the JWE's own randomness (ephemeral keys, content key, IV). ``--new-pki`` starts over.

Each vector names the check it exercises (role, step, reason) and the expected outcome; the
unit test ``tests/unit/test_conformance.py`` opens every one through the core and runs the
``casebridge conformance`` runner against this implementation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from broker.core import canonical, jose
from broker.core.envelope import INNER_TYP, JWE_TYP, OUTER_TYP
from broker.core.header import Header
from broker.core.schemas import SchemaRegistry
from broker.loaders import load_schema_registry
from tests.vectors.conformance.material import (
    DIRECTORY_ISSUED,
    FED,
    HERE,
    NOW,
    SERIAL,
    TEST_ONLY,
    Material,
    create_material,
    der_b64,
    load_material,
    material_json,
)

T0: Final = int(NOW.timestamp())
DE, NL, NL2, UA = "de.lka-berlin", "nl.politie-nec", "nl.comensha", "ua.npu-ctd"
VECTORS: Final = HERE / "vectors"
DIRECTORIES: Final = HERE / "directories"
POLICIES: Final = HERE / "policies"
EXAMPLES: Final = HERE.parents[2] / "schemas" / "examples"
NL_POLICY: Final = """\
# TEST-ONLY conformance policy of NL (docs/policy.md): no H3 request at ingress.
country: NL
version: 1
rules:
  - id: nl.in.no-h3-requests
    reason: Conformance vector policy, NL accepts no H3 requests.
    direction: ingress
    peer: any
    type: request.assistance
    handling: H3
    decision: deny
  - id: nl.in.all
    reason: Conformance vector policy, everything else is accepted.
    direction: ingress
    peer: any
    decision: allow
"""


def es256(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> bytes:
    """Deterministic (RFC 6979) ES256, low S, as R || S."""
    der = key.sign(signing_input, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    s = min(s, jose.P256_ORDER - s)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def jws(header: dict[str, Any] | bytes, payload: bytes, key: ec.EllipticCurvePrivateKey) -> str:
    head = header if isinstance(header, bytes) else canonical.dumps(header)
    signing_input = f"{jose.b64url_encode(head)}.{jose.b64url_encode(payload)}"
    return f"{signing_input}.{jose.b64url_encode(es256(key, signing_input.encode('ascii')))}"


def wire_of(outer: str, jwe_text: str, v: Any = 1) -> bytes:
    return canonical.dumps({"jwe": jwe_text, "outer": outer, "v": v})


@dataclass
class Gen:
    m: Material
    registry: SchemaRegistry
    written: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------- building

    def header(
        self,
        n: int,
        message_type: str,
        recipients: tuple[str, ...],
        body: dict[str, Any],
        *,
        sender: str = DE,
        now: int = T0,
        **changes: Any,
    ) -> dict[str, Any]:
        h = Header(
            fed=FED,
            id=f"00000000-0000-4000-8000-{n:012d}",
            type=message_type,
            type_version=1,
            conversation=f"00000000-0000-4000-9000-{n:012d}",
            sender=sender,
            recipients=tuple(sorted(recipients)),
            handling="H2",
            tlp="AMBER",
            purpose="investigation",
            legal_basis="Council Framework Decision 2006/960/JHA, Art. 3",
            categories=(),
            iat=now - 60,
            exp=now + 14 * 86400,
        )
        out = h.to_json()
        if message_type in self.registry.types():
            out["categories"] = sorted(self.registry.categories(message_type, 1, body))
        out.update(changes)
        return out

    def seal(
        self,
        h: dict[str, Any],
        body: Any,
        *,
        name: str,
        inner_header: dict[str, Any] | None = None,
        inner_jws_header: dict[str, Any] | bytes | None = None,
        inner_key: ec.EllipticCurvePrivateKey | None = None,
        inner_payload: bytes | None = None,
        salt: bytes | None = None,
        plaintext: bytes | None = None,
        recipients: list[tuple[str, ec.EllipticCurvePublicKey]] | None = None,
        jwe_edit: Callable[[dict[str, Any]], None] | None = None,
        jwe_text: Callable[[str], str] | None = None,
        outer_edit: Callable[[dict[str, Any]], None] | None = None,
        outer_payload: bytes | None = None,
        outer_jws_header: dict[str, Any] | bytes | None = None,
        outer_key: ec.EllipticCurvePrivateKey | None = None,
        outer_sig: Callable[[str], str] | None = None,
        commitment: str | None = None,
    ) -> bytes:
        """Assemble a message layer by layer; every keyword replaces or edits one piece."""
        agency = self.m.agency(h["sender"]["agency"])
        kid = agency.signing_kid
        salt = salt if salt is not None else hashlib.sha256(name.encode()).digest()[:16]
        payload = inner_payload or canonical.dumps(
            {"body": body, "header": inner_header or h, "salt": jose.b64url_encode(salt)}
        )
        inner = jws(
            inner_jws_header or {"alg": "ES256", "kid": kid, "typ": INNER_TYP},
            payload,
            inner_key or agency.signing.key,
        ).encode("ascii")
        if recipients is None:
            # Recipients the material lacks (deliberately bad ids) get nl.politie-nec's entry.
            known = [r for r in h["recipients"] if r in self.m.agencies] or [NL]
            recipients = [
                (self.m.agency(r).agreement_kid, self.m.agency(r).agreement.key.public_key())
                for r in known
            ]
        text = jose.encrypt_general(plaintext or inner, recipients, typ=JWE_TYP)
        if jwe_edit is not None:
            obj = json.loads(text)
            jwe_edit(obj)
            text = canonical.dumps(obj).decode("utf-8")
        if jwe_text is not None:
            text = jwe_text(text)
        outer_obj: dict[str, Any] = {
            "commitment": commitment or jose.sha256_b64url(inner),
            "header": h,
            "jwe_sha256": jose.sha256_b64url(text.encode("utf-8")),
        }
        if outer_edit is not None:
            outer_edit(outer_obj)
        outer = jws(
            outer_jws_header or {"alg": "ES256", "kid": kid, "typ": OUTER_TYP},
            outer_payload or canonical.dumps(outer_obj),
            outer_key or agency.signing.key,
        )
        if outer_sig is not None:
            outer = outer_sig(outer)
        return wire_of(outer, text)

    # ---------------------------------------------------------------- writing

    def write(
        self,
        name: str,
        description: str,
        *,
        wire: bytes | None,
        role: str = "recipient",
        step: int | None,
        reason: str | None,
        recipient: str | None = NL,
        now: datetime = NOW,
        directory: str = "current.jws",
        directory_loaded_at: datetime | None = None,
        min_serial: int = 0,
        replay: list[dict[str, Any]] | None = None,
        concurrent_accept: bool = False,
        policy: str | None = None,
        expect: dict[str, Any] | None = None,
    ) -> None:
        number = len(self.written) + 1
        file_name = f"{number:03d}-{name}.json"
        doc: dict[str, Any] = {
            "name": name,
            "description": description,
            "test_only": True,
            "role": role,
            "now": _time(now),
            "directory": directory,
            "expect": {
                "outcome": "refused" if reason else "accepted",
                "step": step,
                "reason": reason,
                **(expect or {}),
            },
        }
        if directory_loaded_at is not None:
            doc["directory_loaded_at"] = _time(directory_loaded_at)
        if min_serial:
            doc["min_serial"] = min_serial
        if role == "recipient":
            doc["recipient"] = recipient
            doc["replay"] = replay or []
            doc["concurrent_accept"] = concurrent_accept
            doc["policy"] = policy
        if wire is not None:
            try:
                text: str | None = wire.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text is not None and "\ufeff" not in text:
                doc["wire"] = text
            else:  # not UTF-8, or a BOM a text editor would hide: exact bytes in base64
                doc["wire_b64"] = base64.b64encode(wire).decode("ascii")
        (VECTORS / file_name).write_text(
            json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        self.written.append(file_name)

    def accepted(
        self, name: str, description: str, wire: bytes, h: dict[str, Any], body: Any, **kw: Any
    ) -> None:
        role = kw.get("role", "recipient")
        expect: dict[str, Any] = {"header": h, "digest": jose.sha256_b64url(wire)}
        if role == "recipient":
            expect["body"] = body
        self.write(name, description, wire=wire, step=None, reason=None, expect=expect, **kw)


def _time(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return loaded


def _b64j(value: Any) -> str:
    return jose.b64url_encode(canonical.dumps(value))


def _swap_outer_header(wire: bytes, header: bytes) -> bytes:
    obj = json.loads(wire)
    _, payload, sig = obj["outer"].split(".")
    return wire_of(f"{jose.b64url_encode(header)}.{payload}.{sig}", obj["jwe"])


def directories(m: Material, *, fresh: bool) -> None:
    """The signed directories the vectors refer to (kept once written, like the PKI)."""
    DIRECTORIES.mkdir(exist_ok=True)
    wanted: dict[str, Callable[[], bytes]] = {
        "current.jws": m.sign_directory,
        "serial-6.jws": lambda: m.sign_directory(
            serial=SERIAL - 1, issued_at=DIRECTORY_ISSUED - timedelta(days=1)
        ),
        "serial-8.jws": lambda: m.sign_directory(serial=SERIAL + 1),
        "crl-stale-ua.jws": lambda: m.sign_directory(
            crl_next_update={"UA": NOW - timedelta(hours=1)}
        ),
        "other-root.jws": lambda: m.sign_directory(root=m.other_root),
        "issued-in-future.jws": lambda: m.sign_directory(
            issued_at=NOW + timedelta(hours=1), next_update=NOW + timedelta(days=7)
        ),
        "expired.jws": lambda: m.sign_directory(
            issued_at=NOW - timedelta(days=8), next_update=NOW - timedelta(hours=1)
        ),
    }
    for name, make in wanted.items():
        path = DIRECTORIES / name
        if fresh or not path.exists():
            path.write_bytes(make())
    current = (DIRECTORIES / "current.jws").read_bytes().decode("ascii")
    head, payload, sig = current.split(".")
    raw = bytearray(jose.b64url_decode(sig, what="sig"))
    raw[5] ^= 1
    (DIRECTORIES / "not-a-jws.jws").write_text('{"v": 1}\n')
    flipped = jose.b64url_encode(bytes(raw))
    (DIRECTORIES / "bad-signature.jws").write_text(f"{head}.{payload}.{flipped}")
    doc = json.loads(jose.b64url_decode(payload, what="payload"))
    del doc["task_forces"]
    (DIRECTORIES / "missing-member.jws").write_text(
        jws(json.loads(jose.b64url_decode(head, what="h")), canonical.dumps(doc), m.root.key)
    )


def main(argv: list[str]) -> None:
    fresh = "--new-pki" in argv
    pki_path = HERE / "pki.json"
    if fresh or not pki_path.exists():
        m = create_material()
        pki_path.write_text(json.dumps(material_json(m), indent=2, sort_keys=True) + "\n")
    m = load_material(pki_path)
    directories(m, fresh=fresh)
    POLICIES.mkdir(exist_ok=True)
    (POLICIES / "nl.yaml").write_text(NL_POLICY)
    (HERE / "root.pem").write_text(_pem_cert(m))
    VECTORS.mkdir(exist_ok=True)
    for old in VECTORS.glob("*.json"):
        old.unlink()
    g = Gen(m=m, registry=load_schema_registry())
    from tests.vectors.conformance import cases

    cases.write_all(g)
    print(f"wrote {len(g.written)} conformance vectors to {VECTORS}")


def _pem_cert(m: Material) -> str:
    b64 = der_b64(m.root.cert)
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


__all__ = ["TEST_ONLY", "Gen", "es256", "jws", "main", "wire_of"]

if __name__ == "__main__":
    main(sys.argv[1:])
