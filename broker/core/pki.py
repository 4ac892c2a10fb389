"""The federation PKI: validate every certificate and CRL of a Casebridge federation.

Issuing (the CA side) lives in ``broker.pki.issuing``; this module holds the profiles it
issues to and what every party checks.

Trust hierarchy (all keys P-256, all signatures ECDSA-SHA256)::

    federation root CA       O=Casebridge federation <fed>; pathLen 1; also signs the directory
    |- country CA            C=<CC>, O=Casebridge federation <fed>; pathLen 0; name-constrained
    |  |- agency signing     C, O=<agency name>, OU=<kind>, CN=<agency id>; digitalSignature +
    |  |                     nonRepudiation, EKU documentSigning (RFC 9336)
    |  |- agency agreement   same subject; keyAgreement only (JWE ECDH-ES)
    |  |- agency TLS client  same subject; clientAuth (mTLS to its national NATS server)
    |  '- NATS server TLS    C=<CC>, OU=nats-server; serverAuth; SAN DNS/IP
    '- secretariat TLS CA    O=Casebridge federation <fed>, OU=secretariat; pathLen 0
       |- hub server TLS     OU=hub; serverAuth
       '- leaf-node TLS      C=<CC>, CN=leaf.<cc>; clientAuth (country server dialling the hub)

Name constraints on a country CA permit ``directoryName C=<CC>`` and the country's DNS subtrees
(plus loopback names when created with ``allow_loopback``, dev only). They are marked
*non-critical*: both Go's crypto/x509 (nats-server) and ``cryptography`` refuse a *critical*
nameConstraints that contains a directoryName subtree, and both ignore directoryName subtrees in
a non-critical one. DNS and IP subtrees are still enforced by both; the country of every subject
and agency id is checked explicitly here, so a CA that omits or lies in its constraints is caught.
For the same reason the hub never trusts country CAs for link identity: leaf-node client
certificates come from the secretariat CA, which the hub uses as its only ``ca_file``.

Validation builds on ``cryptography.x509.verification`` (path building, validity, signatures,
pathLen, DNS/IP name constraints) with per-usage ``ExtensionPolicy`` profiles for key usage,
extended key usage and SAN, then adds the checks the library does not make.

This module is sans-io: it never reads a clock (``now`` is passed in), never touches files or
the network. Validation of certificates and CRLs that came
from elsewhere fails closed with ``InvalidMessage`` (CERT_INVALID, DIRECTORY_INVALID,
DIRECTORY_STALE, SENDER_REVOKED). ``cryptography`` exceptions never escape.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from cryptography.x509.verification import (
    ClientVerifier,
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from broker.core.header import AGENCY_RE, COUNTRY_RE, FEDERATION_RE, TASK_FORCE_RE, agency_country
from broker.core.trust import AGENCY_KINDS
from broker.errors import InvalidMessage, PKIError, Reason

# How far in the future a CRL's thisUpdate may lie before we call it bogus (peer clock skew).
CLOCK_SKEW: Final = timedelta(minutes=5)

FEDERATION_ORG_PREFIX: Final = "Casebridge federation "
AGENCY_URN_PREFIX: Final = "urn:casebridge:agency:"
SECRETARIAT_OU: Final = "secretariat"
# RFC 9336 id-kp-documentSigning: marks message-signing certificates, and (being an EKU without
# clientAuth/serverAuth) keeps TLS stacks from accepting them as TLS certificates.
DOCUMENT_SIGNING: Final = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CertUsage(StrEnum):
    """What an agency certificate is for; each usage has its own strict profile."""

    SIGNING = "signing"
    AGREEMENT = "agreement"
    TLS_CLIENT = "tls_client"


@dataclass(frozen=True, kw_only=True, slots=True)
class CertifiedKey:
    """A private key and the certificate that binds its public half."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


@dataclass(frozen=True, kw_only=True, slots=True)
class AgencyCredentials:
    """Everything an agency holds: its two key pairs with certificates (and optionally TLS)."""

    agency_id: str
    country: str
    kind: str
    name: str
    signing: CertifiedKey
    agreement: CertifiedKey


@dataclass(frozen=True, kw_only=True, slots=True)
class AgencyCertInfo:
    """What a validated agency certificate says, for one usage."""

    agency_id: str
    country: str
    kind: str
    name: str
    usage: CertUsage
    serial: int
    not_before: datetime
    not_after: datetime
    public_key: ec.EllipticCurvePublicKey


@dataclass(frozen=True, kw_only=True, slots=True)
class RevocationStatus:
    """A verified CRL reduced to what lookups need."""

    country: str
    this_update: datetime
    next_update: datetime
    revoked_serials: frozenset[int]

    def is_revoked(self, serial: int) -> bool:
        return serial in self.revoked_serials


class _ProfileError(ValueError):
    """Raised inside ExtensionPolicy validators; surfaces as a VerificationError."""


# ------------------------------------------------------------------ small helpers ---


def aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise PKIError("now must be a timezone-aware datetime")
    return now


def single_attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    """The value of exactly one attribute ``oid`` in ``name``; None if absent or repeated."""
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1 or not isinstance(values[0].value, str):
        return None
    return values[0].value


def federation_org(federation_id: str) -> str:
    """The ``O`` attribute every federation CA carries: ``Casebridge federation <fed-id>``."""
    return FEDERATION_ORG_PREFIX + federation_id


def federation_id_of(root_cert: x509.Certificate) -> str:
    """The federation id named in a root (or any federation CA) certificate's subject."""
    org = single_attr(root_cert.subject, NameOID.ORGANIZATION_NAME) or ""
    fed = org.removeprefix(FEDERATION_ORG_PREFIX)
    if not org.startswith(FEDERATION_ORG_PREFIX) or not FEDERATION_RE.fullmatch(fed):
        raise InvalidMessage(Reason.CERT_INVALID, "certificate names no Casebridge federation")
    return fed


def country_of(cert: x509.Certificate) -> str:
    """The single ``C`` attribute of a certificate subject (CERT_INVALID if absent or repeated)."""
    cc = single_attr(cert.subject, NameOID.COUNTRY_NAME)
    if cc is None or not COUNTRY_RE.fullmatch(cc):
        raise InvalidMessage(Reason.CERT_INVALID, "subject must carry exactly one country (C)")
    return cc


def _ku_bits(ku: x509.KeyUsage) -> frozenset[str]:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
    )
    bits = {name for name in names if getattr(ku, name)}
    # encipher_only/decipher_only may only be read when keyAgreement is set.
    if ku.key_agreement and (ku.encipher_only or ku.decipher_only):
        bits.add("encipher_or_decipher_only")
    return frozenset(bits)


# --------------------------------------------------------------------- validation ---


def _fail(detail: str) -> InvalidMessage:
    return InvalidMessage(Reason.CERT_INVALID, detail)


def _ee_base(expected: frozenset[str]) -> ExtensionPolicy:
    """Web-PKI end-entity defaults plus a critical KeyUsage with exactly ``expected`` bits."""

    def check(policy: Policy, cert: x509.Certificate, ku: x509.KeyUsage) -> None:
        del policy, cert
        if _ku_bits(ku) != expected:
            raise _ProfileError(f"key usage {sorted(_ku_bits(ku))}, need {sorted(expected)}")

    return ExtensionPolicy.webpki_defaults_ee().require_present(
        x509.KeyUsage, Criticality.CRITICAL, check
    )


_EkuCheck = Callable[[Policy, x509.Certificate, x509.ExtendedKeyUsage], None]


def _exact_eku(expected: tuple[x509.ObjectIdentifier, ...]) -> _EkuCheck:
    def check(policy: Policy, cert: x509.Certificate, eku: x509.ExtendedKeyUsage) -> None:
        del policy, cert
        if tuple(eku) != expected:
            raise _ProfileError(f"extended key usage {[o.dotted_string for o in eku]}")

    return check


def _agency_san(policy: Policy, cert: x509.Certificate, san: x509.SubjectAlternativeName) -> None:
    del policy
    cn = single_attr(cert.subject, NameOID.COMMON_NAME)
    if list(san) != [x509.UniformResourceIdentifier(f"{AGENCY_URN_PREFIX}{cn}")]:
        raise _ProfileError("SAN must be exactly urn:casebridge:agency:<CN>")


def _agency_profile(usage: CertUsage) -> ExtensionPolicy:
    """The end-entity extension profile of one agency certificate usage."""
    if usage is CertUsage.SIGNING:
        policy = _ee_base(frozenset({"digital_signature", "content_commitment"}))
        eku_check: _EkuCheck | None = _exact_eku((DOCUMENT_SIGNING,))
    elif usage is CertUsage.AGREEMENT:
        policy = _ee_base(frozenset({"key_agreement"}))
        eku_check = None
    else:
        policy = _ee_base(frozenset({"digital_signature"}))
        eku_check = _exact_eku((ExtendedKeyUsageOID.CLIENT_AUTH,))
    if eku_check is None:
        policy = policy.require_not_present(x509.ExtendedKeyUsage)
    else:
        policy = policy.require_present(x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, eku_check)
    if usage is CertUsage.TLS_CLIENT:
        # Identified by subject DN only; see issue_agency_tls for why there is no SAN.
        return policy.require_not_present(x509.SubjectAlternativeName)
    return policy.require_present(
        x509.SubjectAlternativeName, Criticality.NON_CRITICAL, _agency_san
    )


def _country_ca_bc(policy: Policy, cert: x509.Certificate, bc: x509.BasicConstraints) -> None:
    del policy, cert
    if not bc.ca or bc.path_length != 0:
        raise _ProfileError("a country CA must be a CA with pathLen 0")


def _country_ca_nc(policy: Policy, cert: x509.Certificate, nc: x509.NameConstraints) -> None:
    del policy
    cc = single_attr(cert.subject, NameOID.COUNTRY_NAME)
    permitted = list(nc.permitted_subtrees or [])
    dirnames = [g.value for g in permitted if isinstance(g, x509.DirectoryName)]
    if cc is None or dirnames != [x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, cc)])]:
        raise _ProfileError("name constraints must permit exactly directoryName C=<CC>")
    if not any(isinstance(g, x509.DNSName) for g in permitted):
        raise _ProfileError("name constraints must permit at least one DNS subtree")
    if not all(
        isinstance(g, x509.DirectoryName | x509.DNSName | x509.IPAddress) for g in permitted
    ):
        raise _ProfileError("name constraints may only hold directoryName, DNS and IP subtrees")
    if not any(isinstance(g, x509.IPAddress) for g in permitted):
        excluded = [g.value for g in nc.excluded_subtrees or [] if isinstance(g, x509.IPAddress)]
        if not {ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")} <= set(excluded):
            raise _ProfileError("name constraints leave IP addresses unconstrained")


def _country_ca_ku(policy: Policy, cert: x509.Certificate, ku: x509.KeyUsage) -> None:
    del policy, cert
    if _ku_bits(ku) != {"key_cert_sign", "crl_sign"}:
        raise _ProfileError("a country CA's key usage must be keyCertSign+cRLSign")


def _country_ca_profile() -> ExtensionPolicy:
    return (
        ExtensionPolicy.webpki_defaults_ca()
        .require_present(x509.BasicConstraints, Criticality.CRITICAL, _country_ca_bc)
        .require_present(x509.NameConstraints, Criticality.NON_CRITICAL, _country_ca_nc)
        .require_present(x509.KeyUsage, Criticality.CRITICAL, _country_ca_ku)
        .require_not_present(x509.ExtendedKeyUsage)
    )


def _check_crypto(cert: x509.Certificate, what: str) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _fail(f"{what}: key is not P-256")
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        raise _fail(f"{what}: signature algorithm is not ECDSA-SHA256")
    return key


class FederationValidator:
    """Validates federation certificates and CRLs against one pinned root at one instant.

    Builds each ``cryptography`` verifier once, so validating a whole directory costs one
    path build per certificate. Not for long-term reuse: ``now`` is fixed at construction.
    """

    def __init__(self, root_cert: x509.Certificate, *, now: datetime) -> None:
        self._now = aware(now)
        self._root = root_cert
        self._federation = self._check_root(root_cert)
        self._root_key = _check_crypto(root_cert, "root")
        self._store = Store([root_cert])
        self._client: dict[CertUsage, ClientVerifier] = {}
        self._country_ca_verifier = self._builder(max_depth=0, ee=_country_ca_profile())
        self._countries: dict[bytes, str] = {}

    @property
    def federation_id(self) -> str:
        return self._federation

    @property
    def root_key(self) -> ec.EllipticCurvePublicKey:
        """The pinned root's public key (checked to be P-256)."""
        return self._root_key

    def _check_root(self, root: x509.Certificate) -> str:
        fed = federation_id_of(root)
        _check_crypto(root, "root")
        bc = root.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca or root.issuer != root.subject:
            raise _fail("root is not a self-signed CA")
        try:
            root.verify_directly_issued_by(root)
        except (InvalidSignature, ValueError, TypeError):
            raise _fail("root self-signature does not verify") from None
        if not root.not_valid_before_utc <= self._now <= root.not_valid_after_utc:
            raise _fail("root certificate is not valid now")
        return fed

    def _builder(self, *, max_depth: int, ee: ExtensionPolicy) -> ClientVerifier:
        return (
            PolicyBuilder()
            .store(self._store)
            .time(self._now)
            .max_chain_depth(max_depth)
            .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
            .build_client_verifier()
        )

    def country_ca(self, ca_cert: x509.Certificate) -> str:
        """Check a country CA against the root and the country-CA profile; its country code."""
        cached = self._countries.get(ca_cert.tbs_certificate_bytes)
        if cached is not None:
            return cached
        cc = country_of(ca_cert)
        _check_crypto(ca_cert, f"{cc} CA")
        try:
            self._country_ca_verifier.verify(ca_cert, [])
        except VerificationError as exc:
            raise _fail(f"{cc} CA: {exc}") from None
        if single_attr(ca_cert.subject, NameOID.ORGANIZATION_NAME) != federation_org(
            self._federation
        ):
            raise _fail(f"{cc} CA belongs to another federation")
        self._countries[ca_cert.tbs_certificate_bytes] = cc
        return cc

    def crl(
        self, crl: x509.CertificateRevocationList, country_ca: x509.Certificate
    ) -> RevocationStatus:
        """Verify a country CA's CRL (issuer, signature, freshness) and reduce it to serials."""
        cc = self.country_ca(country_ca)
        ca_key = _check_crypto(country_ca, f"{cc} CA")
        if crl.issuer != country_ca.subject or not crl.is_signature_valid(ca_key):
            raise InvalidMessage(Reason.DIRECTORY_INVALID, f"{cc} CRL is not signed by the {cc} CA")
        if crl.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
            raise InvalidMessage(Reason.DIRECTORY_INVALID, f"{cc} CRL is not ECDSA-SHA256")
        next_update = crl.next_update_utc
        if next_update is None:
            raise InvalidMessage(Reason.DIRECTORY_INVALID, f"{cc} CRL has no next update")
        if crl.last_update_utc > self._now + CLOCK_SKEW:
            raise InvalidMessage(Reason.DIRECTORY_INVALID, f"{cc} CRL is issued in the future")
        if self._now > next_update:
            raise InvalidMessage(
                Reason.DIRECTORY_STALE, f"{cc} CRL expired at {next_update.isoformat()}"
            )
        return RevocationStatus(
            country=cc,
            this_update=crl.last_update_utc,
            next_update=next_update,
            revoked_serials=frozenset(entry.serial_number for entry in crl),
        )

    def agency_cert(
        self, cert: x509.Certificate, country_ca: x509.Certificate, *, usage: CertUsage
    ) -> AgencyCertInfo:
        """Chain, profile and country checks of one agency certificate (revocation NOT checked)."""
        cc = self.country_ca(country_ca)
        agency_id = single_attr(cert.subject, NameOID.COMMON_NAME) or "?"
        what = f"{usage.value} certificate of {agency_id}"
        public_key = _check_crypto(cert, what)
        verifier = self._client.get(usage)
        if verifier is None:
            verifier = self._builder(max_depth=1, ee=_agency_profile(usage))
            self._client[usage] = verifier
        try:
            verified = verifier.verify(cert, [country_ca])
        except VerificationError as exc:
            raise _fail(f"{what}: {exc}") from None
        if verified.chain[1] != country_ca:
            raise _fail(f"{what}: not issued by the {cc} CA")
        # cryptography ignores directoryName constraints, so the country is checked here.
        if country_of(cert) != cc:
            raise _fail(f"{what}: subject country is not {cc}, the issuing CA's")
        if not AGENCY_RE.fullmatch(agency_id) or TASK_FORCE_RE.fullmatch(agency_id):
            raise _fail(f"{what}: CN is not an agency id")
        if agency_country(agency_id) != cc:
            raise _fail(f"{what}: agency id is not in {cc}, the issuing CA's country")
        kind = single_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        name = single_attr(cert.subject, NameOID.ORGANIZATION_NAME)
        if kind not in AGENCY_KINDS or name is None:
            raise _fail(f"{what}: OU must be an agency kind and O the agency name")
        return AgencyCertInfo(
            agency_id=agency_id,
            country=cc,
            kind=kind,
            name=name,
            usage=usage,
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            public_key=public_key,
        )

    def tls_cert(
        self,
        cert: x509.Certificate,
        intermediates: Sequence[x509.Certificate],
        *,
        server_name: str | None = None,
    ) -> list[x509.Certificate]:
        """Web-PKI style TLS check: a server cert for ``server_name``, else a client cert.

        The chain must go through a country CA or the secretariat CA; for a country CA the
        subject country must be that CA's. Returns the verified chain, leaf first.
        """
        builder = PolicyBuilder().store(self._store).time(self._now).max_chain_depth(1)
        try:
            if server_name is None:
                # Our TLS client certificates carry no SAN (see issue_agency_tls).
                ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(
                    x509.SubjectAlternativeName, Criticality.NON_CRITICAL, None
                )
                client = builder.extension_policies(
                    ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee
                ).build_client_verifier()
                chain = client.verify(cert, list(intermediates)).chain
            else:
                subject = _tls_subject(server_name)
                chain = builder.build_server_verifier(subject).verify(cert, list(intermediates))
        except VerificationError as exc:
            raise _fail(f"TLS certificate: {exc}") from None
        if len(chain) != 3:
            raise _fail("TLS certificate must be issued by a country or secretariat CA")
        issuer = chain[1]
        if single_attr(issuer.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == SECRETARIAT_OU:
            return chain
        cc = self.country_ca(issuer)
        if country_of(cert) != cc:
            raise _fail(f"TLS certificate: subject country is not {cc}, the issuing CA's")
        return chain


def _tls_subject(server_name: str) -> x509.DNSName | x509.IPAddress:
    try:
        return x509.IPAddress(ipaddress.ip_address(server_name))
    except ValueError:
        return x509.DNSName(server_name)


def validate_country_ca(
    ca_cert: x509.Certificate, root_cert: x509.Certificate, *, now: datetime
) -> str:
    """Check that ``ca_cert`` is a valid country CA of the federation rooted at ``root_cert``.

    Returns the country code. Raises ``InvalidMessage(CERT_INVALID)`` otherwise.
    """
    return FederationValidator(root_cert, now=now).country_ca(ca_cert)


def verify_crl(
    crl: x509.CertificateRevocationList,
    country_ca: x509.Certificate,
    root_cert: x509.Certificate,
    *,
    now: datetime,
) -> RevocationStatus:
    """Verify a country CA's CRL: DIRECTORY_INVALID if forged, DIRECTORY_STALE if expired."""
    return FederationValidator(root_cert, now=now).crl(crl, country_ca)


def validate_agency_cert(
    cert: x509.Certificate,
    country_ca: x509.Certificate,
    root_cert: x509.Certificate,
    crl: x509.CertificateRevocationList,
    *,
    now: datetime,
    usage: CertUsage,
) -> AgencyCertInfo:
    """Fully validate one agency certificate for ``usage``.

    Order: country CA (CERT_INVALID), chain/validity/profile/country (CERT_INVALID), the CA's
    CRL (DIRECTORY_INVALID if not signed by the CA, DIRECTORY_STALE past next_update), then
    revocation (SENDER_REVOKED).
    """
    validator = FederationValidator(root_cert, now=now)
    info = validator.agency_cert(cert, country_ca, usage=usage)
    status = validator.crl(crl, country_ca)
    if status.is_revoked(info.serial):
        raise InvalidMessage(Reason.SENDER_REVOKED, f"{info.agency_id} {usage.value} cert revoked")
    return info


def validate_tls_cert(
    cert: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    root_cert: x509.Certificate,
    *,
    now: datetime,
    server_name: str | None = None,
) -> list[x509.Certificate]:
    """Validate a NATS TLS certificate (server if ``server_name`` is given, else client)."""
    return FederationValidator(root_cert, now=now).tls_cert(
        cert, intermediates, server_name=server_name
    )
