"""Test-only toolkit for building valid and deliberately malicious sealed messages.

A small in-memory world of agencies (fresh P-256 keys per test session), plus functions that
assemble the wire format from parts, so a test can play a dishonest *sender* who holds a valid
signing key and still must be refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from broker.core import canonical, jose
from broker.core.envelope import (
    INNER_TYP,
    JWE_TYP,
    OUTER_TYP,
    RecipientIdentity,
    SenderIdentity,
    seal,
)
from broker.core.header import Header
from broker.core.trust import AgencyKeys, StaticResolver

FED = "test-fed"
NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
AGENCIES = (
    ("de.lka-berlin", "law_enforcement"),
    ("de.sta-berlin", "prosecutor"),
    ("nl.politie-nec", "law_enforcement"),
    ("nl.comensha", "ngo"),
    ("ua.npu-ctd", "law_enforcement"),
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class Agency:
    agency_id: str
    kind: str
    signing: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    agreement: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    @property
    def keys(self) -> AgencyKeys:
        return AgencyKeys(
            agency_id=self.agency_id,
            country=self.agency_id[:2].upper(),
            kind=self.kind,
            name=self.agency_id,
            signing_kid=f"{self.agency_id}#sig",
            signing_key=self.signing.public_key(),
            agreement_kid=f"{self.agency_id}#ka",
            agreement_key=self.agreement.public_key(),
        )

    @property
    def sender(self) -> SenderIdentity:
        return SenderIdentity(
            agency_id=self.agency_id, signing_kid=f"{self.agency_id}#sig", signing_key=self.signing
        )

    @property
    def recipient(self) -> RecipientIdentity:
        return RecipientIdentity(
            agency_id=self.agency_id,
            agreement_kid=f"{self.agency_id}#ka",
            agreement_key=self.agreement,
        )


@dataclass
class World:
    agencies: dict[str, Agency]
    resolver: StaticResolver

    def __getitem__(self, agency_id: str) -> Agency:
        return self.agencies[agency_id]


def make_world(*, revoked: tuple[str, ...] = ()) -> World:
    agencies = {a: Agency(a, kind) for a, kind in AGENCIES}
    resolver = StaticResolver(
        FED,
        [a.keys for a in agencies.values()],
        task_forces={"tf.balkan-route": ["de.lka-berlin", "nl.politie-nec", "ua.npu-ctd"]},
        revoked=[f"{a}#sig" for a in revoked],
    )
    return World(agencies, resolver)


def header(
    *,
    sender: str = "de.lka-berlin",
    recipients: tuple[str, ...] = ("nl.politie-nec",),
    message_type: str = "bulletin",
    now: datetime = NOW,
    **changes: Any,
) -> Header:
    t = int(now.timestamp())
    h = Header(
        fed=FED,
        id=str(uuid.uuid4()),
        type=message_type,
        type_version=1,
        conversation=str(uuid.uuid4()),
        sender=sender,
        recipients=tuple(sorted(recipients)),
        handling="H1",
        tlp="GREEN",
        purpose="prevention",
        legal_basis="Council Framework Decision 2006/960/JHA",
        categories=(),
        iat=t,
        exp=t + 7 * 86400,
    )
    return replace(h, **changes)


def seal_for(world: World, h: Header, body: dict[str, Any], *, now: datetime = NOW) -> bytes:
    return seal(
        header=h,
        body=body,
        sender=world[h.sender].sender,
        resolver=world.resolver,
        now=now,
        salt=secrets.token_bytes(16),
    )


def split(wire: bytes) -> tuple[str, str]:
    obj = json.loads(wire)
    return obj["outer"], obj["jwe"]


def assemble(outer: str, jwe_text: str, v: Any = 1) -> bytes:
    return canonical.dumps({"v": v, "outer": outer, "jwe": jwe_text})


def compact(header_obj: dict[str, Any], payload: bytes, signature: bytes) -> str:
    return ".".join((b64(canonical.dumps(header_obj)), b64(payload), b64(signature)))


def hs256(header_obj: dict[str, Any], payload: bytes, secret: bytes) -> str:
    signing_input = f"{b64(canonical.dumps(header_obj))}.{b64(payload)}".encode()
    return (
        f"{signing_input.decode()}.{b64(hmac.new(secret, signing_input, hashlib.sha256).digest())}"
    )


def inner_jws(agency: Agency, h: Header | dict[str, Any], body: dict[str, Any]) -> bytes:
    header_json = h.to_json() if isinstance(h, Header) else h
    payload = canonical.dumps(
        {"header": header_json, "body": body, "salt": b64(secrets.token_bytes(16))}
    )
    return jose.sign_compact(
        payload, agency.signing, kid=f"{agency.agency_id}#sig", typ=INNER_TYP
    ).encode()


def encrypt_to(inner: bytes, *recipients: Agency) -> str:
    return jose.encrypt_general(
        inner, [(f"{r.agency_id}#ka", r.agreement.public_key()) for r in recipients], typ=JWE_TYP
    )


def outer_jws(
    signer: Agency,
    h: Header | dict[str, Any],
    jwe_text: str,
    inner: bytes,
    *,
    kid: str | None = None,
) -> str:
    header_json = h.to_json() if isinstance(h, Header) else h
    payload = canonical.dumps(
        {
            "header": header_json,
            "jwe_sha256": jose.sha256_b64url(jwe_text.encode()),
            "commitment": jose.sha256_b64url(inner),
        }
    )
    return jose.sign_compact(
        payload, signer.signing, kid=kid or f"{signer.agency_id}#sig", typ=OUTER_TYP
    )


def forge(
    signer: Agency,
    h: Header | dict[str, Any],
    body: dict[str, Any],
    *recipients: Agency,
) -> bytes:
    """A message assembled by hand from the same parts ``seal`` uses (no seal-side checks)."""
    inner = inner_jws(signer, h, body)
    jwe_text = encrypt_to(inner, *recipients)
    return assemble(outer_jws(signer, h, jwe_text, inner), jwe_text)


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)
