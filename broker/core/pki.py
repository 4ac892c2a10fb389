"""The federation PKI: issue and validate every certificate of a Casebridge federation.

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
the network. Issuance errors are ``PKIError``; validation of certificates and CRLs that came
from elsewhere fails closed with ``InvalidMessage`` (CERT_INVALID, DIRECTORY_INVALID,
DIRECTORY_STALE, SENDER_REVOKED). ``cryptography`` exceptions never escape.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
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

ROOT_LIFETIME: Final = timedelta(days=10 * 365)
CA_LIFETIME: Final = timedelta(days=5 * 365)
AGENCY_LIFETIME: Final = timedelta(days=2 * 365)
TLS_LIFETIME: Final = timedelta(days=397)
# Certificates start a little in the past so a peer whose clock lags slightly accepts them.
BACKDATE: Final = timedelta(minutes=5)
# How far in the future a CRL's thisUpdate may lie before we call it bogus (peer clock skew).
CLOCK_SKEW: Final = timedelta(minutes=5)

FEDERATION_ORG_PREFIX: Final = "Casebridge federation "
AGENCY_URN_PREFIX: Final = "urn:casebridge:agency:"
SECRETARIAT_OU: Final = "secretariat"
# RFC 9336 id-kp-documentSigning: marks message-signing certificates, and (being an EKU without
# clientAuth/serverAuth) keeps TLS stacks from accepting them as TLS certificates.
DOCUMENT_SIGNING: Final = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")
LOOPBACK_DNS: Final = ("localhost",)
LOOPBACK_NETS: Final = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# Upper bounds from X.520 (ub-common-name, ub-organization-name, ub-organizational-unit-name).
_MAX_NAME: Final = 64
_CCTLD_EXCEPTIONS: Final = {"GB": "uk"}
_DNS_LABEL: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# One CRL entry as the caller states it: (serial, revocation time, reason or None).
RevokedEntry = tuple[int, datetime, x509.ReasonFlags | None]


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


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise PKIError("now must be a timezone-aware datetime")
    return now


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 private key (the only curve Casebridge uses)."""
    return ec.generate_private_key(ec.SECP256R1())


def _check_p256(key: ec.EllipticCurvePrivateKey) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PKIError("only P-256 keys are allowed")
    return key


def _attr(oid: x509.ObjectIdentifier, value: str) -> x509.NameAttribute[str]:
    if not value or len(value) > _MAX_NAME:
        raise PKIError(f"name attribute must be 1..{_MAX_NAME} characters: {value!r}")
    return x509.NameAttribute(oid, value)


def _single(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
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
    org = _single(root_cert.subject, NameOID.ORGANIZATION_NAME) or ""
    fed = org.removeprefix(FEDERATION_ORG_PREFIX)
    if not org.startswith(FEDERATION_ORG_PREFIX) or not FEDERATION_RE.fullmatch(fed):
        raise InvalidMessage(Reason.CERT_INVALID, "certificate names no Casebridge federation")
    return fed


def country_of(cert: x509.Certificate) -> str:
    """The single ``C`` attribute of a certificate subject (CERT_INVALID if absent or repeated)."""
    cc = _single(cert.subject, NameOID.COUNTRY_NAME)
    if cc is None or not COUNTRY_RE.fullmatch(cc):
        raise InvalidMessage(Reason.CERT_INVALID, "subject must carry exactly one country (C)")
    return cc


def default_dns_domains(country: str) -> tuple[str, ...]:
    """The DNS subtree a country CA gets by default: its ccTLD (``GB`` -> ``uk``)."""
    return (_CCTLD_EXCEPTIONS.get(country, country.lower()),)


def _check_dns_name(name: str) -> str:
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise PKIError(f"not a lower-case DNS name: {name!r}")
    return name


def _dns_within(name: str, base: str) -> bool:
    return name == base or name.endswith("." + base)


def _subject_key_ids(
    public_key: ec.EllipticCurvePublicKey, issuer_cert: x509.Certificate | None
) -> list[tuple[x509.ExtensionType, bool]]:
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    if issuer_cert is None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    else:
        issuer_ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value)
    return [(ski, False), (aki, False)]


def key_usage(*bits: str) -> x509.KeyUsage:
    """A KeyUsage with exactly the named bits set (names as in ``x509.KeyUsage``)."""
    known = {
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
    }
    unknown = set(bits) - known
    if unknown:
        raise PKIError(f"unknown key usage bits {sorted(unknown)}")
    flags = {name: name in bits for name in known}
    return x509.KeyUsage(**flags, encipher_only=False, decipher_only=False)


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


# --------------------------------------------------------------------- the signer ---


def sign_certificate(
    issuer: CertifiedKey | None,
    *,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    lifetime: timedelta,
    ca: bool,
    path_length: int | None = None,
    usage: x509.KeyUsage,
    extended_usage: Sequence[x509.ObjectIdentifier] = (),
    san: Sequence[x509.GeneralName] = (),
    name_constraints: x509.NameConstraints | None = None,
    signing_key: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    """Sign one certificate with exactly the given profile. Applies NO federation policy.

    This is the raw building block under the guarded ``create_*``/``issue_*`` functions (and
    what tests use to build the rogue certificates validation must refuse). ``issuer`` None
    means self-signed with ``signing_key``. The lifetime is clipped to the issuer's.
    """
    now = _aware(now)
    if issuer is None:
        if signing_key is None:
            raise PKIError("a self-signed certificate needs signing_key")
        sign_with, issuer_name, issuer_cert = signing_key, subject, None
        not_after = now + lifetime
    else:
        sign_with, issuer_name, issuer_cert = issuer.key, issuer.cert.subject, issuer.cert
        not_after = min(now + lifetime, issuer.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(usage, critical=True)
    )
    for ext, critical in _subject_key_ids(public_key, issuer_cert):
        builder = builder.add_extension(ext, critical=critical)
    if extended_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(extended_usage)), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    if name_constraints is not None:
        # Non-critical on purpose: see the module docstring (Go and cryptography both reject a
        # critical nameConstraints holding a directoryName subtree).
        builder = builder.add_extension(name_constraints, critical=False)
    return builder.sign(sign_with, hashes.SHA256())


# ------------------------------------------------------------------- issuing CAs ---


def _ca_usage() -> x509.KeyUsage:
    return key_usage("key_cert_sign", "crl_sign")


def _name_constraints(
    *,
    country: str | None,
    dns_domains: Sequence[str],
    ip_networks: Sequence[IPNetwork],
    allow_loopback: bool,
) -> x509.NameConstraints:
    permitted: list[x509.GeneralName] = []
    if country is not None:
        permitted.append(x509.DirectoryName(x509.Name([_attr(NameOID.COUNTRY_NAME, country)])))
    dns = [_check_dns_name(d) for d in dns_domains]
    nets = list(ip_networks)
    if allow_loopback:
        dns += [d for d in LOOPBACK_DNS if d not in dns]
        nets += [n for n in LOOPBACK_NETS if n not in nets]
    if not dns:
        raise PKIError("a CA needs at least one permitted DNS subtree")
    permitted += [x509.DNSName(d) for d in dns]
    permitted += [x509.IPAddress(n) for n in nets]
    # A type without a permitted subtree is unconstrained (RFC 5280), so forbid IPs explicitly.
    excluded: list[x509.GeneralName] | None = None
    if not nets:
        excluded = [
            x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
            x509.IPAddress(ipaddress.ip_network("::/0")),
        ]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)


def create_root_ca(
    federation_id: str,
    *,
    now: datetime,
    lifetime: timedelta = ROOT_LIFETIME,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> CertifiedKey:
    """The self-signed federation root: ``O=Casebridge federation <fed>``, pathLen 1.

    The root key also signs the federation directory, hence digitalSignature in its key usage.
    """
    if not FEDERATION_RE.fullmatch(federation_id):
        raise PKIError(f"invalid federation id {federation_id!r}")
    key = _check_p256(key or generate_key())
    subject = x509.Name(
        [
            _attr(NameOID.ORGANIZATION_NAME, federation_org(federation_id)),
            _attr(NameOID.COMMON_NAME, f"Casebridge {federation_id} root CA"),
        ]
    )
    cert = sign_certificate(
        None,
        subject=subject,
        public_key=key.public_key(),
        now=now,
        lifetime=lifetime,
        ca=True,
        path_length=1,
        usage=key_usage("digital_signature", "key_cert_sign", "crl_sign"),
        signing_key=key,
    )
    return CertifiedKey(key=key, cert=cert)


def issue_country_ca(
    root: CertifiedKey,
    *,
    country: str,
    now: datetime,
    dns_domains: Sequence[str] | None = None,
    ip_networks: Sequence[IPNetwork] = (),
    allow_loopback: bool = False,
    lifetime: timedelta = CA_LIFETIME,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> CertifiedKey:
    """A country CA (``C=<CC>``, pathLen 0) constrained to its own country.

    Permitted subtrees: ``directoryName C=<CC>``, ``dns_domains`` (default: the ccTLD) and
    ``ip_networks`` (default: none, every IP address is excluded). ``allow_loopback`` adds
    ``localhost``, 127.0.0.0/8 and ::1 so loopback dev federations work; it lets every such
    country mint certificates for the same loopback names, so it is for dev and tests ONLY.
    """
    if not COUNTRY_RE.fullmatch(country):
        raise PKIError(f"invalid country code {country!r}")
    fed = federation_id_of(root.cert)
    key = _check_p256(key or generate_key())
    subject = x509.Name(
        [
            _attr(NameOID.COUNTRY_NAME, country),
            _attr(NameOID.ORGANIZATION_NAME, federation_org(fed)),
            _attr(NameOID.COMMON_NAME, f"Casebridge {country} country CA"),
        ]
    )
    constraints = _name_constraints(
        country=country,
        dns_domains=default_dns_domains(country) if dns_domains is None else dns_domains,
        ip_networks=ip_networks,
        allow_loopback=allow_loopback,
    )
    cert = sign_certificate(
        root,
        subject=subject,
        public_key=key.public_key(),
        now=now,
        lifetime=lifetime,
        ca=True,
        path_length=0,
        usage=_ca_usage(),
        name_constraints=constraints,
    )
    return CertifiedKey(key=key, cert=cert)


def issue_secretariat_ca(
    root: CertifiedKey,
    *,
    now: datetime,
    dns_domains: Sequence[str],
    ip_networks: Sequence[IPNetwork] = (),
    allow_loopback: bool = False,
    lifetime: timedelta = CA_LIFETIME,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> CertifiedKey:
    """The secretariat's TLS CA: issues the hub server cert and the countries' leaf-node certs.

    Restricted to TLS (EKU serverAuth+clientAuth) and to the hub's DNS subtrees. It carries no
    country, so it can never pass as a country CA.
    """
    fed = federation_id_of(root.cert)
    key = _check_p256(key or generate_key())
    subject = x509.Name(
        [
            _attr(NameOID.ORGANIZATION_NAME, federation_org(fed)),
            _attr(NameOID.ORGANIZATIONAL_UNIT_NAME, SECRETARIAT_OU),
            _attr(NameOID.COMMON_NAME, f"Casebridge {fed} secretariat CA"),
        ]
    )
    constraints = _name_constraints(
        country=None,
        dns_domains=dns_domains,
        ip_networks=ip_networks,
        allow_loopback=allow_loopback,
    )
    cert = sign_certificate(
        root,
        subject=subject,
        public_key=key.public_key(),
        now=now,
        lifetime=lifetime,
        ca=True,
        path_length=0,
        usage=_ca_usage(),
        extended_usage=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        name_constraints=constraints,
    )
    return CertifiedKey(key=key, cert=cert)


# ------------------------------------------------------------- issuing end entities ---


def _issuing_country(ca: CertifiedKey) -> str:
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    cc = _single(ca.cert.subject, NameOID.COUNTRY_NAME)
    if not bc.ca or cc is None or not COUNTRY_RE.fullmatch(cc):
        raise PKIError("issuer is not a country CA")
    return cc


def _check_secretariat(ca: CertifiedKey) -> str:
    if _single(ca.cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) != SECRETARIAT_OU:
        raise PKIError("issuer is not the secretariat CA")
    try:
        return federation_id_of(ca.cert)
    except InvalidMessage as exc:
        raise PKIError(exc.detail) from None


def _check_agency_id(agency_id: str, country: str) -> None:
    if not AGENCY_RE.fullmatch(agency_id) or TASK_FORCE_RE.fullmatch(agency_id):
        raise PKIError(f"invalid agency id {agency_id!r}")
    if len(agency_id) > _MAX_NAME:
        raise PKIError(f"agency id longer than {_MAX_NAME} characters: {agency_id!r}")
    if agency_country(agency_id) != country:
        raise PKIError(f"the {country} country CA cannot issue for {agency_id!r}")


def _agency_subject(agency_id: str, country: str, kind: str, name: str) -> x509.Name:
    if kind not in AGENCY_KINDS:
        raise PKIError(f"unknown agency kind {kind!r}")
    return x509.Name(
        [
            _attr(NameOID.COUNTRY_NAME, country),
            _attr(NameOID.ORGANIZATION_NAME, name),
            _attr(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
            _attr(NameOID.COMMON_NAME, agency_id),
        ]
    )


def _permitted(ca_cert: x509.Certificate) -> tuple[list[str], list[IPNetwork]]:
    try:
        nc = ca_cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        raise PKIError("issuing CA has no name constraints") from None
    subtrees = nc.permitted_subtrees or []
    dns = [g.value for g in subtrees if isinstance(g, x509.DNSName)]
    nets = [g.value for g in subtrees if isinstance(g, x509.IPAddress)]
    return dns, [n for n in nets if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network)]


def _tls_names(
    ca_cert: x509.Certificate, host_names: Sequence[str], ip_addresses: Sequence[IPAddress]
) -> list[x509.GeneralName]:
    """SAN entries for a TLS server cert, refused early if the CA's constraints forbid them."""
    if not host_names and not ip_addresses:
        raise PKIError("a TLS server certificate needs at least one host name or IP address")
    dns, nets = _permitted(ca_cert)
    for host in host_names:
        if not any(_dns_within(_check_dns_name(host), base) for base in dns):
            raise PKIError(f"host {host!r} is outside the issuing CA's DNS subtrees {dns}")
    for ip in ip_addresses:
        if not any(ip in net for net in nets):
            raise PKIError(f"IP {ip} is outside the issuing CA's permitted networks")
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in host_names]
    names += [x509.IPAddress(ip) for ip in ip_addresses]
    return names


def _leaf(
    issuer: CertifiedKey,
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey | None,
    now: datetime,
    lifetime: timedelta,
    usage: x509.KeyUsage,
    extended_usage: Sequence[x509.ObjectIdentifier],
    san: Sequence[x509.GeneralName],
) -> CertifiedKey:
    key = _check_p256(key or generate_key())
    cert = sign_certificate(
        issuer,
        subject=subject,
        public_key=key.public_key(),
        now=now,
        lifetime=lifetime,
        ca=False,
        usage=usage,
        extended_usage=extended_usage,
        san=san,
    )
    return CertifiedKey(key=key, cert=cert)


def issue_agency(
    ca: CertifiedKey,
    *,
    agency_id: str,
    kind: str,
    name: str,
    now: datetime,
    lifetime: timedelta = AGENCY_LIFETIME,
    signing_key: ec.EllipticCurvePrivateKey | None = None,
    agreement_key: ec.EllipticCurvePrivateKey | None = None,
) -> AgencyCredentials:
    """The agency's signing and key-agreement certificates, from its own country's CA.

    Refuses (PKIError) an agency id whose country prefix is not the CA's country.
    """
    country = _issuing_country(ca)
    _check_agency_id(agency_id, country)
    subject = _agency_subject(agency_id, country, kind, name)
    san = [x509.UniformResourceIdentifier(AGENCY_URN_PREFIX + agency_id)]
    signing = _leaf(
        ca,
        subject=subject,
        key=signing_key,
        now=now,
        lifetime=lifetime,
        usage=key_usage("digital_signature", "content_commitment"),
        extended_usage=(DOCUMENT_SIGNING,),
        san=san,
    )
    agreement = _leaf(
        ca,
        subject=subject,
        key=agreement_key,
        now=now,
        lifetime=lifetime,
        usage=key_usage("key_agreement"),
        extended_usage=(),
        san=san,
    )
    return AgencyCredentials(
        agency_id=agency_id,
        country=country,
        kind=kind,
        name=name,
        signing=signing,
        agreement=agreement,
    )


def issue_agency_tls(
    ca: CertifiedKey,
    *,
    agency_id: str,
    kind: str,
    name: str,
    now: datetime,
    lifetime: timedelta = TLS_LIFETIME,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> CertifiedKey:
    """The agency node's mTLS client certificate for its national NATS server (CN = agency id).

    No SAN: the subject DN is the identity (nats-server ``verify_and_map``), and Go refuses a
    URN SAN under a name-constrained CA ("URI with empty host cannot be matched").
    """
    country = _issuing_country(ca)
    _check_agency_id(agency_id, country)
    return _leaf(
        ca,
        subject=_agency_subject(agency_id, country, kind, name),
        key=key,
        now=now,
        lifetime=lifetime,
        usage=key_usage("digital_signature"),
        extended_usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
        san=(),
    )


def issue_server_tls(
    ca: CertifiedKey,
    *,
    host_names: Sequence[str],
    ip_addresses: Sequence[IPAddress] = (),
    now: datetime,
    lifetime: timedelta = TLS_LIFETIME,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> CertifiedKey:
    """A country's nats-server certificate (serverAuth), names checked against the CA's subtrees."""
    country = _issuing_country(ca)
    fed = federation_id_of(ca.cert)
    san = _tls_names(ca.cert, host_names, ip_addresses)
    common = host_names[0] if host_names else str(ip_addresses[0])
    subject = x509.Name(
        [
            _attr(NameOID.COUNTRY_NAME, country),
            _attr(NameOID.ORGANIZATION_NAME, federation_org(fed)),
            _attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "nats-server"),
            _attr(NameOID.COMMON_NAME, common),
        ]
    )
    return _leaf(
        ca,
        subject=subject,
        key=key,
        now=now,
        lifetime=lifetime,
        usage=key_usage("digital_signature"),
        extended_usage=(ExtendedKeyUsageOID.SERVER_AUTH,),
        san=san,
    )


def leaf_subject(federation_id: str, country: str) -> x509.Name:
    """Subject of a country's leaf-node certificate; the hub maps this DN to the country's user."""
    return x509.Name(
        [
            _attr(NameOID.COUNTRY_NAME, country),
            _attr(NameOID.ORGANIZATION_NAME, federation_org(federation_id)),
            _attr(NameOID.COMMON_NAME, f"leaf.{country.lower()}"),
        ]
    )


def issue_leaf_tls(
    secretariat: CertifiedKey,
    *,
    country: str,
    now: datetime,
    lifetime: timedelta = TLS_LIFETIME,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> CertifiedKey:
    """The client certificate a country's server presents when dialling the hub as a leaf node.

    Issued by the secretariat CA (not the country CA) so that no country CA can mint another
    country's hub identity: the hub trusts only the secretariat CA for leaf connections. No
    SAN, for the same reason as :func:`issue_agency_tls`: the subject DN is the identity.
    """
    fed = _check_secretariat(secretariat)
    if not COUNTRY_RE.fullmatch(country):
        raise PKIError(f"invalid country code {country!r}")
    return _leaf(
        secretariat,
        subject=leaf_subject(fed, country),
        key=key,
        now=now,
        lifetime=lifetime,
        usage=key_usage("digital_signature"),
        extended_usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
        san=(),
    )


def issue_hub_tls(
    secretariat: CertifiedKey,
    *,
    host_names: Sequence[str],
    ip_addresses: Sequence[IPAddress] = (),
    now: datetime,
    lifetime: timedelta = TLS_LIFETIME,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> CertifiedKey:
    """The hub's leaf-node listener certificate (serverAuth), from the secretariat CA."""
    fed = _check_secretariat(secretariat)
    san = _tls_names(secretariat.cert, host_names, ip_addresses)
    common = host_names[0] if host_names else str(ip_addresses[0])
    subject = x509.Name(
        [
            _attr(NameOID.ORGANIZATION_NAME, federation_org(fed)),
            _attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "hub"),
            _attr(NameOID.COMMON_NAME, common),
        ]
    )
    return _leaf(
        secretariat,
        subject=subject,
        key=key,
        now=now,
        lifetime=lifetime,
        usage=key_usage("digital_signature"),
        extended_usage=(ExtendedKeyUsageOID.SERVER_AUTH,),
        san=san,
    )


# --------------------------------------------------------------------- revocation ---


def build_crl(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    revoked: Iterable[RevokedEntry],
    now: datetime,
    next_update: datetime,
    *,
    number: int | None = None,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca_key`` listing ``(serial, when, reason)`` entries.

    ``number`` (the CRL number) defaults to ``now`` in whole seconds, which increases as long
    as the issuing clock does.
    """
    now = _aware(now)
    if _aware(next_update) <= now:
        raise PKIError("a CRL's next_update must be after now")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(next_update)
        .add_extension(
            x509.CRLNumber(number if number is not None else int(now.timestamp())), False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    for serial, when, reason in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(_aware(when))
        # RFC 5280 5.3.1: "unspecified" SHOULD be expressed by leaving the reason out.
        if reason is not None and reason is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca_key, hashes.SHA256())


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
    cn = _single(cert.subject, NameOID.COMMON_NAME)
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
    cc = _single(cert.subject, NameOID.COUNTRY_NAME)
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
        self._now = _aware(now)
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
        if _single(ca_cert.subject, NameOID.ORGANIZATION_NAME) != federation_org(self._federation):
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
        agency_id = _single(cert.subject, NameOID.COMMON_NAME) or "?"
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
        kind = _single(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        name = _single(cert.subject, NameOID.ORGANIZATION_NAME)
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
        if _single(issuer.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == SECRETARIAT_OU:
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
