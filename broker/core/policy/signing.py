"""Signed policy files: a country signs its policy with its country CA key; nodes verify it.

Format: a compact JWS (ES256) with protected header ``{alg, kid, typ}``, ``typ`` =
``casebridge-policy+jws`` and ``kid`` = ``<cc>-ca#<base64url SHA-256 of the CA cert DER>``
(``cc`` lower-case), whose payload is the policy YAML bytes exactly (so line numbers in errors
refer to the file the focal point wrote).

A policy is accepted only if the CA certificate chains to the pinned federation root (checked
by :func:`broker.core.pki.validate_country_ca`), the ``kid`` names that certificate, the
signature verifies, the YAML is a valid policy, and its ``country`` is the CA's country. Every
refusal is a :class:`~broker.errors.PolicyError`. Never reads a file (``broker/loaders.py`` does).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from broker.core import jose, pki
from broker.core.policy.loading import parse_policy
from broker.core.policy.model import Policy
from broker.errors import InvalidMessage, PolicyError, PolicyProblem

POLICY_TYP: Final = "casebridge-policy+jws"
MAX_SIGNED_BYTES: Final = 2 << 20


def policy_kid(country: str, ca_cert: x509.Certificate) -> str:
    """Key id of a country CA as a policy signer: ``<cc>-ca#<base64url(SHA-256(cert DER))>``."""
    return f"{country.lower()}-ca#{jose.b64url_encode(ca_cert.fingerprint(hashes.SHA256()))}"


def _refuse(source: str, message: str, line: int | None = None) -> PolicyError:
    return PolicyError(source, [PolicyProblem(line=line, message=message)])


def sign_policy(
    data: bytes,
    *,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    source: str = "<policy>",
) -> str:
    """Sign policy YAML bytes after checking them: refuses an invalid or foreign policy."""
    policy = parse_policy(data, source=source)
    try:
        cc = pki.country_of(ca_cert)
    except InvalidMessage as exc:
        raise _refuse(
            source, f"the signing certificate is not a country CA: {exc.detail}"
        ) from None
    if policy.country != cc:
        raise _refuse(source, f"the policy is for {policy.country}, the CA is {cc}'s")
    public = ca_cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.public_numbers() != (
        ca_key.public_key().public_numbers()
    ):
        raise _refuse(source, "the key does not belong to the CA certificate")
    return jose.sign_compact(data, ca_key, kid=policy_kid(cc, ca_cert), typ=POLICY_TYP)


def unverified_policy_country(token: str) -> str | None:
    """The country a signed policy's ``kid`` claims (to pick the CA to verify with). Unverified."""
    try:
        unverified = jose.parse_compact(token.strip(), typ=POLICY_TYP, what="policy")
    except InvalidMessage:
        return None
    prefix, _, _ = unverified.kid.partition("-ca#")
    return prefix.upper() if len(prefix) == 2 and prefix.isalpha() else None


def verify_policy_payload(
    token: str | bytes,
    *,
    ca_cert: x509.Certificate,
    root_cert: x509.Certificate,
    now: datetime,
    source: str = "<policy>",
) -> tuple[str, bytes]:
    """Check the signature of a signed policy; return the signing country and the YAML bytes.

    The YAML is not parsed here (see :func:`verify_policy`), so callers can tell a bad
    signature from a bad policy.
    """
    if len(token) > MAX_SIGNED_BYTES:
        raise _refuse(source, f"larger than {MAX_SIGNED_BYTES} bytes")
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise _refuse(source, "not a signed policy (unsigned YAML?)") from None
    try:
        unverified = jose.parse_compact(token.strip(), typ=POLICY_TYP, what="policy")
    except InvalidMessage as exc:
        raise _refuse(source, f"not a signed policy (unsigned YAML?): {exc.detail}") from None
    try:
        cc = pki.validate_country_ca(ca_cert, root_cert, now=now)
    except InvalidMessage as exc:
        raise _refuse(source, f"the country CA does not chain to the root: {exc.detail}") from None
    if unverified.kid != policy_kid(cc, ca_cert):
        raise _refuse(source, f"signed by another key ({unverified.kid}), not the {cc} CA")
    public = ca_cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise _refuse(source, f"the {cc} CA key is not an EC key")
    try:
        payload = jose.verify_compact(unverified, public, what="policy")
    except InvalidMessage as exc:
        raise _refuse(source, exc.detail) from None
    return cc, payload


def check_policy_country(policy: Policy, signer: str) -> Policy:
    """Refuse a policy signed by another country's CA than the one it is for."""
    if policy.country != signer:
        raise _refuse(
            policy.source, f"signed by the {signer} CA but the policy is for {policy.country}"
        )
    return policy


def verify_policy(
    token: str | bytes,
    *,
    ca_cert: x509.Certificate,
    root_cert: x509.Certificate,
    now: datetime,
    source: str = "<policy>",
) -> Policy:
    """Verify a signed policy against a country CA and the pinned root; return the policy."""
    cc, payload = verify_policy_payload(
        token, ca_cert=ca_cert, root_cert=root_cert, now=now, source=source
    )
    return check_policy_country(parse_policy(payload, source=source), cc)
