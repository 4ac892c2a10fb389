"""Issuing federation certificates and CRLs: the CA side of the PKI (``broker.core.pki`` validates).

Every function here is pure apart from drawing fresh keys and random serial numbers: it takes
the issuer's key and certificate and ``now``, returns certificates, and never reads a clock or a
file. The issuer's key is any ``ec.EllipticCurvePrivateKey``: a key in memory or one held in a
PKCS#11 token (``broker.pki.signer``), which signs without ever leaving it.

The guarded ``create_*``/``issue_*`` functions apply the federation's profiles (hierarchy and
name constraints: ``broker.core.pki``); :func:`sign_certificate` applies none and exists for
them and for tests that must build rogue certificates. Errors are ``PKIError``. It must never
issue for a name outside the issuing CA's country or subtrees.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.core.header import AGENCY_RE, COUNTRY_RE, FEDERATION_RE, TASK_FORCE_RE, agency_country
from broker.core.pki import (
    AGENCY_URN_PREFIX,
    DOCUMENT_SIGNING,
    SECRETARIAT_OU,
    AgencyCredentials,
    CertifiedKey,
    IPAddress,
    IPNetwork,
    aware,
    federation_id_of,
    federation_org,
    single_attr,
)
from broker.core.trust import AGENCY_KINDS
from broker.errors import InvalidMessage, PKIError

ROOT_LIFETIME: Final = timedelta(days=10 * 365)
CA_LIFETIME: Final = timedelta(days=5 * 365)
AGENCY_LIFETIME: Final = timedelta(days=2 * 365)
TLS_LIFETIME: Final = timedelta(days=397)
# Certificates start a little in the past so a peer whose clock lags slightly accepts them.
BACKDATE: Final = timedelta(minutes=5)
LOOPBACK_DNS: Final = ("localhost",)
LOOPBACK_NETS: Final = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# Upper bounds from X.520 (ub-common-name, ub-organization-name, ub-organizational-unit-name).
MAX_NAME: Final = 64
_CCTLD_EXCEPTIONS: Final = {"GB": "uk"}
DNS_LABEL: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
# One CRL entry as the caller states it: (serial, revocation time, reason or None).
RevokedEntry = tuple[int, datetime, x509.ReasonFlags | None]


# ------------------------------------------------------------------ small helpers ---


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 private key (the only curve Casebridge uses)."""
    return ec.generate_private_key(ec.SECP256R1())


def _check_p256(key: ec.EllipticCurvePrivateKey) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PKIError("only P-256 keys are allowed")
    return key


def _attr(oid: x509.ObjectIdentifier, value: str) -> x509.NameAttribute[str]:
    if not value or len(value) > MAX_NAME:
        raise PKIError(f"name attribute must be 1..{MAX_NAME} characters: {value!r}")
    return x509.NameAttribute(oid, value)


def default_dns_domains(country: str) -> tuple[str, ...]:
    """The DNS subtree a country CA gets by default: its ccTLD (``GB`` -> ``uk``)."""
    return (_CCTLD_EXCEPTIONS.get(country, country.lower()),)


def _check_dns_name(name: str) -> str:
    labels = name.split(".")
    if not name or len(name) > 253 or not all(DNS_LABEL.fullmatch(label) for label in labels):
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
    now = aware(now)
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


def name_constraints(
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
    constraints = name_constraints(
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
    constraints = name_constraints(
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
    cc = single_attr(ca.cert.subject, NameOID.COUNTRY_NAME)
    if not bc.ca or cc is None or not COUNTRY_RE.fullmatch(cc):
        raise PKIError("issuer is not a country CA")
    return cc


def _check_secretariat(ca: CertifiedKey) -> str:
    if single_attr(ca.cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) != SECRETARIAT_OU:
        raise PKIError("issuer is not the secretariat CA")
    try:
        return federation_id_of(ca.cert)
    except InvalidMessage as exc:
        raise PKIError(exc.detail) from None


def check_agency_id(agency_id: str, country: str) -> None:
    if not AGENCY_RE.fullmatch(agency_id) or TASK_FORCE_RE.fullmatch(agency_id):
        raise PKIError(f"invalid agency id {agency_id!r}")
    if len(agency_id) > MAX_NAME:
        raise PKIError(f"agency id longer than {MAX_NAME} characters: {agency_id!r}")
    if agency_country(agency_id) != country:
        raise PKIError(f"the {country} country CA cannot issue for {agency_id!r}")


def agency_subject(agency_id: str, country: str, kind: str, name: str) -> x509.Name:
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
    check_agency_id(agency_id, country)
    subject = agency_subject(agency_id, country, kind, name)
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
    check_agency_id(agency_id, country)
    return _leaf(
        ca,
        subject=agency_subject(agency_id, country, kind, name),
        key=key,
        now=now,
        lifetime=lifetime,
        usage=key_usage("digital_signature"),
        extended_usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
        san=(),
    )


def server_subject(federation_id: str, country: str, common: str) -> x509.Name:
    """Subject of a country's nats-server certificate. Its DN is also the servers' route
    identity in a cluster (``verify_and_map`` on routes: natsconf.ClusterConf)."""
    return x509.Name(
        [
            _attr(NameOID.COUNTRY_NAME, country),
            _attr(NameOID.ORGANIZATION_NAME, federation_org(federation_id)),
            _attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "nats-server"),
            _attr(NameOID.COMMON_NAME, common),
        ]
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
    """A country's nats-server certificate, names checked against the CA's subtrees.

    EKU serverAuth for its clients, and clientAuth because in a 3-server cluster each server
    dials the others' route port with it (mutual TLS; the accepting server maps the
    certificate's DN to its only route user). clientAuth gives it no other door: on the
    client port its DN is no user (``verify_and_map``), and the hub trusts only the
    secretariat CA.
    """
    country = _issuing_country(ca)
    fed = federation_id_of(ca.cert)
    san = _tls_names(ca.cert, host_names, ip_addresses)
    # An IP-only certificate gets a CN that is no DNS name: OpenSSL checks a host-like CN
    # against the CA's DNS subtrees ("permitted subtree violation" for CN=192.0.2.10).
    common = host_names[0] if host_names else f"NATS server {country}"
    return _leaf(
        ca,
        subject=server_subject(fed, country, common),
        key=key,
        now=now,
        lifetime=lifetime,
        usage=key_usage("digital_signature"),
        extended_usage=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
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


def publisher_subject(federation_id: str) -> x509.Name:
    """Subject of the secretariat's directory-publisher client certificate; the hub maps this
    DN to the one user that may publish directories (its ``DIRECTORY`` stream)."""
    return x509.Name(
        [
            _attr(NameOID.ORGANIZATION_NAME, federation_org(federation_id)),
            _attr(NameOID.ORGANIZATIONAL_UNIT_NAME, SECRETARIAT_OU),
            _attr(NameOID.COMMON_NAME, "directory publisher"),
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
    """The hub's certificate, from the secretariat CA: serverAuth for its leaf and client
    listeners, clientAuth for the routes between the servers of a 3-server hub (mapped to
    its DN, as a country's: :func:`issue_server_tls`)."""
    fed = _check_secretariat(secretariat)
    san = _tls_names(secretariat.cert, host_names, ip_addresses)
    common = host_names[0] if host_names else "Casebridge hub"  # see issue_server_tls
    return _leaf(
        secretariat,
        subject=hub_subject(fed, common),
        key=key,
        now=now,
        lifetime=lifetime,
        usage=key_usage("digital_signature"),
        extended_usage=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        san=san,
    )


def hub_subject(federation_id: str, common: str) -> x509.Name:
    """Subject of the hub's certificate; also its servers' route identity in a cluster."""
    return x509.Name(
        [
            _attr(NameOID.ORGANIZATION_NAME, federation_org(federation_id)),
            _attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "hub"),
            _attr(NameOID.COMMON_NAME, common),
        ]
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
    now = aware(now)
    if aware(next_update) <= now:
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
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(aware(when))
        # RFC 5280 5.3.1: "unspecified" SHOULD be expressed by leaving the reason out.
        if reason is not None and reason is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca_key, hashes.SHA256())


# ------------------------------------------------- certifying requested public keys ---


class _RequestedKey(ec.EllipticCurvePrivateKey):
    """The public half of a key that lives elsewhere (a CSR's), where ``_leaf`` wants a key.

    The guarded ``issue_*`` functions only ever read ``public_key()`` of the subject's key, so
    this lets the CSR flow go through exactly the same profile and name checks. It cannot sign,
    exchange or be serialised: it holds no secret.
    """

    def __init__(self, public_key: ec.EllipticCurvePublicKey) -> None:
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise PKIError("only P-256 keys are allowed")
        self._public = public_key

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def _absent(self) -> PKIError:
        return PKIError("a requested key has no private half here")

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise self._absent()

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        raise self._absent()

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise self._absent()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise self._absent()

    def __copy__(self) -> _RequestedKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _RequestedKey:
        return self


def certify_country_ca(
    root: CertifiedKey,
    *,
    country: str,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    dns_domains: Sequence[str] | None = None,
    ip_networks: Sequence[IPNetwork] = (),
    allow_loopback: bool = False,
    lifetime: timedelta = CA_LIFETIME,
) -> x509.Certificate:
    """:func:`issue_country_ca` for a key generated by the country (from its CSR)."""
    return issue_country_ca(
        root,
        country=country,
        now=now,
        dns_domains=dns_domains,
        ip_networks=ip_networks,
        allow_loopback=allow_loopback,
        lifetime=lifetime,
        key=_RequestedKey(public_key),
    ).cert


def certify_agency(
    ca: CertifiedKey,
    *,
    agency_id: str,
    kind: str,
    name: str,
    signing_key: ec.EllipticCurvePublicKey,
    agreement_key: ec.EllipticCurvePublicKey,
    now: datetime,
    lifetime: timedelta = AGENCY_LIFETIME,
) -> tuple[x509.Certificate, x509.Certificate]:
    """:func:`issue_agency` for keys generated by the agency: (signing, agreement) certificates."""
    creds = issue_agency(
        ca,
        agency_id=agency_id,
        kind=kind,
        name=name,
        now=now,
        lifetime=lifetime,
        signing_key=_RequestedKey(signing_key),
        agreement_key=_RequestedKey(agreement_key),
    )
    return creds.signing.cert, creds.agreement.cert


def certify_agency_tls(
    ca: CertifiedKey,
    *,
    agency_id: str,
    kind: str,
    name: str,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    lifetime: timedelta = TLS_LIFETIME,
) -> x509.Certificate:
    """:func:`issue_agency_tls` for a key generated by the agency's node."""
    return issue_agency_tls(
        ca,
        agency_id=agency_id,
        kind=kind,
        name=name,
        now=now,
        lifetime=lifetime,
        key=_RequestedKey(public_key),
    ).cert


def certify_server_tls(
    ca: CertifiedKey,
    *,
    host_names: Sequence[str],
    ip_addresses: Sequence[IPAddress] = (),
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    lifetime: timedelta = TLS_LIFETIME,
) -> x509.Certificate:
    """:func:`issue_server_tls` for a key generated on the server's machine."""
    return issue_server_tls(
        ca,
        host_names=host_names,
        ip_addresses=ip_addresses,
        now=now,
        lifetime=lifetime,
        key=_RequestedKey(public_key),
    ).cert


def certify_leaf_tls(
    secretariat: CertifiedKey,
    *,
    country: str,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    lifetime: timedelta = TLS_LIFETIME,
) -> x509.Certificate:
    """:func:`issue_leaf_tls` for a key generated on the country server's machine."""
    return issue_leaf_tls(
        secretariat, country=country, now=now, lifetime=lifetime, key=_RequestedKey(public_key)
    ).cert


def certify_agreement(
    ca: CertifiedKey,
    *,
    agency_id: str,
    kind: str,
    name: str,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    lifetime: timedelta = AGENCY_LIFETIME,
) -> x509.Certificate:
    """A new key-agreement certificate for an agency (rotation; its signing key stays)."""
    country = _issuing_country(ca)
    check_agency_id(agency_id, country)
    return _leaf(
        ca,
        subject=agency_subject(agency_id, country, kind, name),
        key=_RequestedKey(public_key),
        now=now,
        lifetime=lifetime,
        usage=key_usage("key_agreement"),
        extended_usage=(),
        san=[x509.UniformResourceIdentifier(AGENCY_URN_PREFIX + agency_id)],
    ).cert


def certify_hub_tls(
    secretariat: CertifiedKey,
    *,
    host_names: Sequence[str],
    ip_addresses: Sequence[IPAddress] = (),
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    lifetime: timedelta = TLS_LIFETIME,
) -> x509.Certificate:
    """:func:`issue_hub_tls` for a key generated on the hub's machine."""
    return issue_hub_tls(
        secretariat,
        host_names=host_names,
        ip_addresses=ip_addresses,
        now=now,
        lifetime=lifetime,
        key=_RequestedKey(public_key),
    ).cert
