"""The TEST-ONLY PKI of the conformance vectors: keys, certificates, signed directories, CRLs.

Everything here is published on purpose so that other implementations can replay the vectors;
none of it may ever be used for anything else. The material is created once
(:func:`create_material`) and committed under ``tests/vectors/conformance/``; the vector
generator re-uses it, so certificates, key ids and directories stay stable across runs.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from jwcrypto import jwk

from broker.core.directory import AgencyEntry, CountryEntry, TaskForce, build_directory
from broker.core.pki import CertifiedKey
from broker.core.trust import cert_kid
from broker.pki import issuing

HERE: Final = Path(__file__).resolve().parent
TEST_ONLY: Final = (
    "TEST-ONLY published key material for the Casebridge conformance vectors. Never use it."
)
FED: Final = "vector-fed"
# Every vector's fixed "now" unless it says otherwise; the PKI was issued before it.
NOW: Final = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
ISSUED: Final = NOW - timedelta(days=30)
DIRECTORY_ISSUED: Final = NOW - timedelta(days=1)
DIRECTORY_NEXT: Final = NOW + timedelta(days=6)
SERIAL: Final = 7

COUNTRIES: Final = (("DE", "Germany", True), ("NL", "Netherlands", True), ("UA", "Ukraine", False))
# (agency id, kind, display name); the agencies of the vector federation.
AGENCIES: Final = (
    ("de.lka-berlin", "law_enforcement", "LKA Berlin"),
    ("de.gateway", "gateway", "Border gateway DE"),
    ("nl.politie-nec", "law_enforcement", "Politie NEC"),
    ("nl.comensha", "ngo", "CoMensha"),
    ("nl.revoked-unit", "law_enforcement", "Revoked unit"),
    ("ua.npu-ctd", "law_enforcement", "NPU CTD"),
)
REVOKED: Final = ("nl.revoked-unit",)
# Listed in the directory with certificates from a CA outside the federation.
ROGUE: Final = ("de.rogue", "law_enforcement", "Rogue unit")
TASK_FORCES: Final = (
    (
        "tf.eastern-route",
        "Eastern route",
        ("de.lka-berlin", "nl.comensha", "nl.politie-nec", "ua.npu-ctd"),
    ),
    ("tf.nl-ua", "NL-UA bilateral", ("nl.politie-nec", "ua.npu-ctd")),
)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def _load_key(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def der_b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii")


def _cert(text: str) -> x509.Certificate:
    return x509.load_der_x509_certificate(base64.b64decode(text))


def private_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """A private JWK with exactly kty, crv, x, y, d (no ``kid``: key ids come from certificates)."""
    exported: dict[str, Any] = json.loads(jwk.JWK.from_pyca(key).export_private())
    return {k: exported[k] for k in ("crv", "d", "kty", "x", "y")}


@dataclass(frozen=True, kw_only=True, slots=True)
class VectorAgency:
    agency_id: str
    kind: str
    name: str
    signing: CertifiedKey
    agreement: CertifiedKey

    @property
    def signing_kid(self) -> str:
        return cert_kid(self.agency_id, self.signing.cert)

    @property
    def agreement_kid(self) -> str:
        return cert_kid(self.agency_id, self.agreement.cert)

    def entry(self) -> AgencyEntry:
        return AgencyEntry(
            agency_id=self.agency_id,
            kind=self.kind,
            name=self.name,
            signing_cert=self.signing.cert,
            agreement_cert=self.agreement.cert,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Material:
    root: CertifiedKey
    other_root: CertifiedKey  # the same federation id, another key: directories it signs fail
    cas: dict[str, CertifiedKey]
    agencies: dict[str, VectorAgency]

    def agency(self, agency_id: str) -> VectorAgency:
        return self.agencies[agency_id]

    def sign_directory(
        self,
        *,
        serial: int = SERIAL,
        issued_at: datetime = DIRECTORY_ISSUED,
        next_update: datetime = DIRECTORY_NEXT,
        crl_next_update: dict[str, datetime] | None = None,
        root: CertifiedKey | None = None,
    ) -> bytes:
        """A directory of the vector federation (nl.revoked-unit on the NL CRL)."""
        countries = []
        for code, name, eu in COUNTRIES:
            ca = self.cas[code]
            revoked = [
                (a.signing.cert.serial_number, issued_at, x509.ReasonFlags.key_compromise)
                for a in self.agencies.values()
                if a.agency_id in REVOKED and a.agency_id[:2].upper() == code
            ] + [
                (a.agreement.cert.serial_number, issued_at, x509.ReasonFlags.key_compromise)
                for a in self.agencies.values()
                if a.agency_id in REVOKED and a.agency_id[:2].upper() == code
            ]
            until = (crl_next_update or {}).get(code, next_update)
            crl = issuing.build_crl(ca.key, ca.cert, revoked, issued_at, until, number=serial)
            countries.append(CountryEntry(code=code, name=name, eu=eu, ca_cert=ca.cert, crl=crl))
        return build_directory(
            root=root or self.root,
            serial=serial,
            issued_at=issued_at,
            next_update=next_update,
            countries=countries,
            agencies=[a.entry() for a in self.agencies.values()],
            task_forces=[
                TaskForce(task_force_id=t, name=n, members=tuple(sorted(m)))
                for t, n, m in TASK_FORCES
            ],
        )


def create_material() -> Material:
    """Fresh keys and certificates for the whole vector federation."""
    root = issuing.create_root_ca(FED, now=ISSUED)
    other_root = issuing.create_root_ca(FED, now=ISSUED)
    cas = {
        code: issuing.issue_country_ca(root, country=code, now=ISSUED) for code, _, _ in COUNTRIES
    }
    agencies: dict[str, VectorAgency] = {}
    for agency_id, kind, name in AGENCIES:
        creds = issuing.issue_agency(
            cas[agency_id[:2].upper()], agency_id=agency_id, kind=kind, name=name, now=ISSUED
        )
        agencies[agency_id] = VectorAgency(
            agency_id=agency_id,
            kind=kind,
            name=name,
            signing=creds.signing,
            agreement=creds.agreement,
        )
    rogue_root = issuing.create_root_ca("rogue-fed", now=ISSUED)
    rogue_ca = issuing.issue_country_ca(rogue_root, country="DE", now=ISSUED)
    rogue_id, rogue_kind, rogue_name = ROGUE
    creds = issuing.issue_agency(
        rogue_ca, agency_id=rogue_id, kind=rogue_kind, name=rogue_name, now=ISSUED
    )
    agencies[rogue_id] = VectorAgency(
        agency_id=rogue_id,
        kind=rogue_kind,
        name=rogue_name,
        signing=creds.signing,
        agreement=creds.agreement,
    )
    return Material(root=root, other_root=other_root, cas=cas, agencies=agencies)


def _ck_json(ck: CertifiedKey) -> dict[str, str]:
    return {"cert": der_b64(ck.cert), "key_pem": _pem_key(ck.key)}


def _ck(data: dict[str, str]) -> CertifiedKey:
    return CertifiedKey(key=_load_key(data["key_pem"]), cert=_cert(data["cert"]))


def material_json(m: Material) -> dict[str, Any]:
    """pki.json: every key and certificate, plus the derived key ids and JWKs for implementers."""
    return {
        "warning": TEST_ONLY,
        "federation": FED,
        "root": _ck_json(m.root),
        "other_root": _ck_json(m.other_root),
        "country_cas": {code: _ck_json(ca) for code, ca in sorted(m.cas.items())},
        "agencies": {
            a.agency_id: {
                "kind": a.kind,
                "name": a.name,
                "signing": _ck_json(a.signing),
                "agreement": _ck_json(a.agreement),
                "signing_kid": a.signing_kid,
                "agreement_kid": a.agreement_kid,
                "signing_jwk": private_jwk(a.signing.key),
                "agreement_jwk": private_jwk(a.agreement.key),
            }
            for a in sorted(m.agencies.values(), key=lambda a: a.agency_id)
        },
    }


def load_material(path: Path = HERE / "pki.json") -> Material:
    data = json.loads(path.read_text())
    return Material(
        root=_ck(data["root"]),
        other_root=_ck(data["other_root"]),
        cas={code: _ck(ca) for code, ca in data["country_cas"].items()},
        agencies={
            agency_id: VectorAgency(
                agency_id=agency_id,
                kind=a["kind"],
                name=a["name"],
                signing=_ck(a["signing"]),
                agreement=_ck(a["agreement"]),
            )
            for agency_id, a in data["agencies"].items()
        },
    )
