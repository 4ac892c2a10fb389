"""The key ceremony: certificates issued from CSRs, so that no private key leaves its machine.

Who does what (docs/joining.md)::

    country   request_country   CA key (file or token) + leaf key made here; CSRs out
    secretariat sign_country    checks the CSRs against what the federation allows the
                                country, signs a name-constrained country CA cert (root) and
                                the leaf-node cert (secretariat CA); reply out
    country   install_reply     keeps the reply after checking it fits its own keys
    agency    request_agency    signing, agreement and TLS keys made on the agency's machine
    country   sign_agency       the country CA certifies them (its own country's names only)
    country   request_server / sign_server   the country's nats-server certificate
    country   sign_crl, export_public       what goes back to the secretariat: public only
    secretariat accept_country  checks that public material against the root and keeps it
    country   join              directory + root installed, bundle manifest written

Every check of a request is a refusal with a reason (:class:`RequestRefused`), made *before*
anything is signed; nothing in a store changes when a request is refused. A request's
signature proves possession of its key; the subject and requested extensions are compared
with what this party may issue, never trusted. Files are written through
:class:`~broker.pki.store.PkiStore` (mode 0600 for keys); this module never prints and never
copies a ``*.key`` or ``*.pkcs11`` file anywhere.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.core import pki
from broker.core.directory import Directory, root_fingerprint
from broker.core.header import AGENCY_RE, COUNTRY_RE, TASK_FORCE_RE, agency_country
from broker.core.pki import CertifiedKey, CertUsage, IPAddress, IPNetwork
from broker.core.trust import AGENCY_KINDS
from broker.errors import InvalidMessage, PKIError
from broker.pki import issuing
from broker.pki.signer import Pkcs11Key, TokenAccess, TokenKeyRef
from broker.pki.store import (
    DIRECTORY_FILE,
    HUB,
    ROOT,
    SECRETARIAT,
    AgencyRecord,
    CountryRecord,
    PkiStore,
    Revocation,
    StoreState,
    agency_stem,
    country_stem,
)

REQUESTS: Final = "requests"
LOG_FILE: Final = "ceremony.log"
BUNDLE_FILE: Final = "bundle.json"
PUBLIC_FILE: Final = "country.json"
AGENCY_USAGES: Final = ("signing", "agreement", "tls")
BUNDLE_VERSION: Final = 1


class RequestRefused(PKIError):
    """A certificate request this party must not sign; the detail says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"request refused: {detail}")


# -------------------------------------------------------------- request files ---


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def read_request(path: Path) -> x509.CertificateSigningRequest:
    """A CSR from a PEM file, its self-signature checked (RequestRefused otherwise)."""
    try:
        csr = x509.load_pem_x509_csr(path.read_bytes())
    except OSError as exc:
        raise PKIError(f"{path}: {exc.strerror}") from None
    except ValueError:
        raise RequestRefused(f"{path} is not a PEM certificate request") from None
    if not csr.is_signature_valid:
        raise RequestRefused(f"{path}: the request's signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise RequestRefused(f"{path}: the requested key is not P-256")
    return csr


def _requested_key(csr: x509.CertificateSigningRequest) -> ec.EllipticCurvePublicKey:
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise RequestRefused("the requested key is not an EC key")
    return key


def _targets(store: PkiStore, request: Path) -> list[PkiStore]:
    """Where issued certificates go: this party's store and, when the request still lies in
    the ``requests/`` folder of the directory that made its key, that directory too (the
    certificate goes back next to its key). A request copied anywhere else gets nothing
    written beside it."""
    if request.parent.name != REQUESTS:
        return [store]
    origin = PkiStore(request.parent.parent)
    same = origin.base.resolve() == store.base.resolve()
    return [store] if same else [store, origin]


def _build_csr(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(key, hashes.SHA256())


def _within(net: IPNetwork, outer: IPNetwork) -> bool:
    if isinstance(net, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return net.subnet_of(outer)
    if isinstance(net, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return net.subnet_of(outer)
    return False


def _single(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    return pki.single_attr(name, oid)


# ---------------------------------------------------------------- country side ---


def country_ca_subject(federation_id: str, country: str) -> x509.Name:
    """The subject a country CA must carry (the same :func:`issuing.issue_country_ca` sets)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, country),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, pki.federation_org(federation_id)),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Casebridge {country} country CA"),
        ]
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class CountryRequest:
    """What :func:`request_country` wrote: the two CSR files to send to the secretariat."""

    ca_request: Path
    leaf_request: Path


def request_country(
    store: PkiStore,
    *,
    federation_id: str,
    country: str,
    name: str,
    eu: bool,
    dns_domains: Sequence[str] | None = None,
    ip_networks: Sequence[IPNetwork] = (),
    allow_loopback: bool = False,
    token: TokenKeyRef | None = None,
    access: TokenAccess | None = None,
) -> CountryRequest:
    """Make the country CA key (in ``token`` if given) and the leaf-node key; write both CSRs.

    The CA CSR carries the requested name constraints as an extension request; the
    secretariat decides whether they fit (:func:`sign_country`).
    """
    if not COUNTRY_RE.fullmatch(country):
        raise PKIError(f"invalid country code {country!r}")
    if store.has_key(country_stem(country, "ca")):
        raise PKIError(f"{store.base} already holds a {country} CA key")
    dns = tuple(dns_domains) if dns_domains else issuing.default_dns_domains(country)
    constraints = issuing.name_constraints(
        country=country, dns_domains=dns, ip_networks=ip_networks, allow_loopback=allow_loopback
    )
    ca_stem = country_stem(country, "ca")
    ca_key: ec.EllipticCurvePrivateKey
    if token is not None:
        ca_key = Pkcs11Key.generate(token, access or TokenAccess.from_env())
        store.write_token_ref(ca_stem, token)
    else:
        ca_key = issuing.generate_key()
        store.write_key(ca_stem, ca_key)
    leaf_key = issuing.generate_key()
    store.write_key(country_stem(country, "leaf"), leaf_key)
    ca_csr = _build_csr(
        country_ca_subject(federation_id, country),
        ca_key,
        [(x509.BasicConstraints(ca=True, path_length=0), True), (constraints, False)],
    )
    leaf_csr = _build_csr(issuing.leaf_subject(federation_id, country), leaf_key)
    ca_path = store.write_bytes(f"{REQUESTS}/country-{country.lower()}.csr.pem", csr_pem(ca_csr))
    leaf_path = store.write_bytes(f"{REQUESTS}/leaf-{country.lower()}.csr.pem", csr_pem(leaf_csr))
    store.write_state(
        StoreState(
            federation_id=federation_id, hub_domains=(), allow_loopback=allow_loopback
        ).with_country(
            CountryRecord(
                code=country,
                name=name,
                eu=eu,
                dns_domains=dns,
                ip_networks=tuple(str(n) for n in ip_networks),
                allow_loopback=allow_loopback,
            )
        )
    )
    return CountryRequest(ca_request=ca_path, leaf_request=leaf_path)


def own_country(state: StoreState) -> str:
    """The one country a country's store belongs to (PKIError if it holds none or several)."""
    if len(state.countries) != 1:
        raise PKIError("not a country's PKI directory (expected exactly one country)")
    return next(iter(state.countries))


# ------------------------------------------------------------ secretariat side ---


def _requested_constraints(csr: x509.CertificateSigningRequest) -> x509.NameConstraints:
    try:
        return csr.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        raise RequestRefused("the country CA request names no name constraints") from None


def check_country_request(
    csr: x509.CertificateSigningRequest,
    *,
    federation_id: str,
    country: str,
    permitted_dns: Sequence[str],
    permitted_networks: Sequence[IPNetwork] = (),
    allow_loopback: bool = False,
) -> tuple[tuple[str, ...], tuple[IPNetwork, ...], bool]:
    """Refuse a country CA request that does not fit what the federation allows ``country``.

    Returns the requested (DNS subtrees, IP networks, loopback) once they are all within
    ``permitted_dns`` / ``permitted_networks`` (and loopback only if ``allow_loopback``).
    """
    subject_cc = _single(csr.subject, NameOID.COUNTRY_NAME)
    if subject_cc != country:
        raise RequestRefused(
            f"the request is for country {subject_cc!r}, not {country}: a CSR for another "
            "country's name is never signed"
        )
    if csr.subject != country_ca_subject(federation_id, country):
        raise RequestRefused(
            f"subject {csr.subject.rfc4514_string()!r} is not "
            f"{country_ca_subject(federation_id, country).rfc4514_string()!r}"
        )
    nc = _requested_constraints(csr)
    permitted = list(nc.permitted_subtrees or [])
    dirnames = [g.value for g in permitted if isinstance(g, x509.DirectoryName)]
    expected_dir = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, country)])
    if dirnames != [expected_dir]:
        shown = [d.rfc4514_string() for d in dirnames]
        raise RequestRefused(
            f"name constraints must permit exactly directoryName C={country}, "
            f"the request has {shown}"
        )
    loopback = False
    dns: list[str] = []
    for general in permitted:
        if isinstance(general, x509.DNSName):
            if general.value in issuing.LOOPBACK_DNS:
                loopback = True
                continue
            if not any(
                general.value == base or general.value.endswith("." + base)
                for base in permitted_dns
            ):
                raise RequestRefused(
                    f"DNS subtree {general.value!r} is outside what {country} may name "
                    f"({', '.join(permitted_dns)})"
                )
            dns.append(general.value)
    nets: list[IPNetwork] = []
    for general in permitted:
        if isinstance(general, x509.IPAddress):
            net = general.value
            if not isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise RequestRefused("an IP subtree must be a network")
            if net in issuing.LOOPBACK_NETS:
                loopback = True
                continue
            if not any(_within(net, p) for p in permitted_networks):
                raise RequestRefused(
                    f"IP network {net} is outside what {country} may name "
                    f"({', '.join(map(str, permitted_networks)) or 'none'})"
                )
            nets.append(net)
        elif not isinstance(general, x509.DNSName | x509.DirectoryName):
            raise RequestRefused(f"unexpected name constraint {general!r}")
    if nc.excluded_subtrees and any(
        not isinstance(g, x509.IPAddress) for g in nc.excluded_subtrees
    ):
        raise RequestRefused("only IP subtrees may be excluded")
    if loopback and not allow_loopback:
        raise RequestRefused(
            "the request names loopback addresses (allowed in dev federations only)"
        )
    if not dns:
        raise RequestRefused("the request permits no DNS subtree of its own")
    return tuple(dns), tuple(nets), loopback


def check_leaf_request(
    csr: x509.CertificateSigningRequest, *, federation_id: str, country: str
) -> None:
    """Refuse a leaf-node request whose subject is not exactly ``country``'s hub identity."""
    expected = issuing.leaf_subject(federation_id, country)
    if csr.subject != expected:
        raise RequestRefused(
            f"leaf-node subject {csr.subject.rfc4514_string()!r} is not "
            f"{expected.rfc4514_string()!r}: a country gets its own hub identity only"
        )


def _sign_country(
    store: PkiStore,
    *,
    country: str,
    ca_request: Path,
    leaf_request: Path,
    name: str,
    eu: bool,
    reply: PkiStore,
    now: datetime,
    permitted_dns: Sequence[str] | None = None,
    permitted_networks: Sequence[IPNetwork] = (),
    allow_loopback: bool = False,
    replace: bool = False,
) -> x509.Certificate:
    """The secretariat signs ``country``'s CA and leaf-node requests; writes the reply store.

    ``country`` is the country whose delegation handed the requests over (checked out of band);
    a request naming any other country is refused. Nothing is written to ``store`` or
    ``reply`` unless both requests pass every check.
    """
    state = store.read_state()
    ca_csr = read_request(ca_request)
    leaf_csr = read_request(leaf_request)
    if not COUNTRY_RE.fullmatch(country):
        raise PKIError(f"invalid country code {country!r}")
    if country in state.countries and not replace:
        raise RequestRefused(f"country {country} already has a CA (re-keying needs --replace)")
    dns_allowed = tuple(permitted_dns) if permitted_dns else issuing.default_dns_domains(country)
    dns, nets, loopback = check_country_request(
        ca_csr,
        federation_id=state.federation_id,
        country=country,
        permitted_dns=dns_allowed,
        permitted_networks=permitted_networks,
        allow_loopback=allow_loopback,
    )
    check_leaf_request(leaf_csr, federation_id=state.federation_id, country=country)
    root = store.read_certified(ROOT)
    secretariat = store.read_certified(SECRETARIAT)
    ca_cert = issuing.certify_country_ca(
        root,
        country=country,
        public_key=_requested_key(ca_csr),
        now=now,
        dns_domains=dns,
        ip_networks=nets,
        allow_loopback=loopback,
    )
    leaf_cert = issuing.certify_leaf_tls(
        secretariat, country=country, public_key=_requested_key(leaf_csr), now=now
    )
    for target in (store, reply):
        target.write_cert(country_stem(country, "ca"), ca_cert)
        target.write_cert(country_stem(country, "leaf"), leaf_cert, [secretariat.cert])
    reply.write_cert(ROOT, root.cert)
    reply.write_cert(SECRETARIAT, secretariat.cert)
    store.write_state(
        state.with_country(
            CountryRecord(
                code=country,
                name=name,
                eu=eu,
                dns_domains=dns,
                ip_networks=tuple(str(n) for n in nets),
                allow_loopback=loopback,
            )
        )
    )
    return ca_cert


# ---------------------------------------------------------- back at the country ---


def install_reply(
    store: PkiStore, reply: PkiStore, *, now: datetime, root_sha256: str | None = None
) -> str:
    """Keep the secretariat's reply after checking it certifies *our* keys; returns the root
    fingerprint (to compare out of band, or pinned with ``root_sha256``)."""
    state = store.read_state()
    country = own_country(state)
    root_cert = reply.read_cert(ROOT)
    fingerprint = root_fingerprint(root_cert)
    if root_sha256 is not None and fingerprint != root_sha256.lower():
        raise PKIError(f"the reply's root {fingerprint} is not the pinned root {root_sha256}")
    ca_cert = reply.read_cert(country_stem(country, "ca"))
    leaf_cert = reply.read_cert(country_stem(country, "leaf"))
    pairs = ((country_stem(country, "ca"), ca_cert), (country_stem(country, "leaf"), leaf_cert))
    for stem, cert in pairs:
        if cert.public_key() != store.read_key(stem).public_key():
            raise PKIError(f"the reply's {stem} certificate is not for the key made here")
    try:
        if pki.validate_country_ca(ca_cert, root_cert, now=now) != country:
            raise PKIError(f"the reply's CA certificate is not for {country}")
    except InvalidMessage as exc:
        raise PKIError(f"the reply's CA certificate does not validate: {exc.detail}") from None
    secretariat_cert = reply.read_cert(SECRETARIAT)
    store.write_cert(ROOT, root_cert)
    store.write_cert(SECRETARIAT, secretariat_cert)
    store.write_cert(country_stem(country, "ca"), ca_cert)
    store.write_cert(country_stem(country, "leaf"), leaf_cert, [secretariat_cert])
    return fingerprint


def request_agency(
    store: PkiStore, *, agency_id: str, kind: str, name: str, tls: bool = True
) -> Path:
    """Make an agency's keys where it lives and write its CSRs; returns the request stem path.

    ``<dir>/requests/agency-<id>.<usage>.csr.pem`` for usage signing, agreement (and tls).
    """
    if not AGENCY_RE.fullmatch(agency_id) or TASK_FORCE_RE.fullmatch(agency_id):
        raise PKIError(f"invalid agency id {agency_id!r}")
    if kind not in AGENCY_KINDS:
        raise PKIError(f"unknown agency kind {kind!r}")
    subject = issuing.agency_subject(agency_id, agency_country(agency_id), kind, name)
    for usage in AGENCY_USAGES if tls else AGENCY_USAGES[:2]:
        stem = agency_stem(agency_id, usage)
        if store.has_key(stem):
            raise PKIError(f"{store.path(stem)}.key exists: an agency's key is never replaced here")
        key = issuing.generate_key()
        store.write_key(stem, key)
        store.write_bytes(
            f"{REQUESTS}/agency-{agency_id}.{usage}.csr.pem", csr_pem(_build_csr(subject, key))
        )
    return store.path(f"{REQUESTS}/agency-{agency_id}")


def rotate_agreement(store: PkiStore, *, agency_id: str) -> tuple[Path, Path]:
    """Agency side of a key-agreement rotation: the current key and certificate are kept as
    ``agreement.<serial hex>.key/.pem`` (for the node's key ring) and a new key and CSR made.

    Returns (request prefix, kept key path).
    """
    stem = agency_stem(agency_id, "agreement")
    current = store.read_cert(stem)
    kept = f"{stem}.{current.serial_number:x}"
    if store.has_key(kept):
        raise PKIError(f"{store.path(kept)}.key exists already")
    store.write_key(kept, store.read_key(stem))
    store.write_cert(kept, current)
    key = issuing.generate_key()
    store.write_key(stem, key)
    csr = _build_csr(current.subject, key)
    store.write_bytes(f"{REQUESTS}/agency-{agency_id}.agreement.csr.pem", csr_pem(csr))
    for usage in ("signing", "tls"):
        store.path(f"{REQUESTS}/agency-{agency_id}.{usage}.csr.pem").unlink(missing_ok=True)
    return store.path(f"{REQUESTS}/agency-{agency_id}"), store.path(f"{kept}.key")


def _agency_requests(prefix: Path) -> dict[str, x509.CertificateSigningRequest]:
    found = {}
    for usage in AGENCY_USAGES:
        path = prefix.with_name(f"{prefix.name}.{usage}.csr.pem")
        if path.exists():
            found[usage] = read_request(path)
    if set(found) == {"agreement"}:
        return found  # a rotation of the key-agreement key (sign_agency checks the agency)
    if "signing" not in found or "agreement" not in found:
        raise RequestRefused(f"{prefix}: needs .signing and .agreement requests")
    return found


def check_agency_request(
    requests: dict[str, x509.CertificateSigningRequest], *, ca_country: str
) -> tuple[str, str, str]:
    """Refuse agency requests the ``ca_country`` CA may not sign; (agency id, kind, name)."""
    subjects = {csr.subject for csr in requests.values()}
    if len(subjects) != 1:
        raise RequestRefused("an agency's requests must all carry the same subject")
    subject = subjects.pop()
    agency_id = _single(subject, NameOID.COMMON_NAME) or ""
    if not AGENCY_RE.fullmatch(agency_id) or TASK_FORCE_RE.fullmatch(agency_id):
        raise RequestRefused(f"CN {agency_id!r} is not an agency id")
    cc = agency_country(agency_id)
    subject_cc = _single(subject, NameOID.COUNTRY_NAME)
    if cc != ca_country or subject_cc != ca_country:
        raise RequestRefused(
            f"the {ca_country} country CA cannot issue for {agency_id!r} (country "
            f"{subject_cc or cc}): each country certifies its own agencies only"
        )
    kind = _single(subject, NameOID.ORGANIZATIONAL_UNIT_NAME) or ""
    name = _single(subject, NameOID.ORGANIZATION_NAME) or ""
    if kind not in AGENCY_KINDS:
        raise RequestRefused(f"OU {kind!r} is not an agency kind")
    if subject != issuing.agency_subject(agency_id, cc, kind, name):
        raise RequestRefused(f"subject {subject.rfc4514_string()!r} has unexpected attributes")
    return agency_id, kind, name


def _sign_agency(store: PkiStore, *, request: Path, now: datetime) -> AgencyRecord:
    """The country CA certifies an agency's requested keys (its own country only).

    Certificates go to this store and, when the request came from another directory (the
    agency's machine), next to the request's keys there too.
    """
    state = store.read_state()
    country = own_country(state)
    requests = _agency_requests(request)
    agency_id, kind, name = check_agency_request(requests, ca_country=country)
    ca = store.read_certified(country_stem(country, "ca"))
    existing = state.agencies.get(agency_id)
    if set(requests) == {"agreement"}:
        if existing is None or existing.revoked:
            raise RequestRefused(f"{agency_id} has no certificates whose agreement key to rotate")
        return _rotate(
            store,
            state=state,
            record=existing,
            csr=requests["agreement"],
            ca=ca,
            request=request,
            now=now,
        )
    if existing is not None:
        raise RequestRefused(f"agency {agency_id} already has certificates")
    signing, agreement = issuing.certify_agency(
        ca,
        agency_id=agency_id,
        kind=kind,
        name=name,
        signing_key=_requested_key(requests["signing"]),
        agreement_key=_requested_key(requests["agreement"]),
        now=now,
    )
    certs = {"signing": signing, "agreement": agreement}
    if "tls" in requests:
        certs["tls"] = issuing.certify_agency_tls(
            ca,
            agency_id=agency_id,
            kind=kind,
            name=name,
            public_key=_requested_key(requests["tls"]),
            now=now,
        )
    for target in _targets(store, request):
        for usage, cert in certs.items():
            target.write_cert(agency_stem(agency_id, usage), cert, [ca.cert])
    record = AgencyRecord(
        agency_id=agency_id,
        kind=kind,
        name=name,
        serials={usage: cert.serial_number for usage, cert in certs.items()},
    )
    store.write_state(state.with_agency(record))
    return record


def _rotate(
    store: PkiStore,
    *,
    state: StoreState,
    record: AgencyRecord,
    csr: x509.CertificateSigningRequest,
    ca: CertifiedKey,
    request: Path,
    now: datetime,
) -> AgencyRecord:
    """Certify a new agreement key; the old certificate is superseded in the next CRL."""
    cert = issuing.certify_agreement(
        ca,
        agency_id=record.agency_id,
        kind=record.kind,
        name=record.name,
        public_key=_requested_key(csr),
        now=now,
    )
    for target in _targets(store, request):
        target.write_cert(agency_stem(record.agency_id, "agreement"), cert, [ca.cert])
    old_serial = record.serials.get("agreement")
    superseded = (
        ()
        if old_serial is None
        else (
            Revocation(
                country=own_country(state),
                serial=old_serial,
                revoked_at=now,
                reason="superseded",
                subject=f"{record.agency_id} agreement",
            ),
        )
    )
    renewed = replace(record, serials={**record.serials, "agreement": cert.serial_number})
    store.write_state(state.with_agency(renewed).with_revocations(superseded))
    return renewed


def _tls_request(
    store: PkiStore,
    *,
    stem: str,
    subject: x509.Name,
    host_names: Sequence[str],
    ip_addresses: Sequence[IPAddress],
    name: str,
) -> Path:
    if not host_names and not ip_addresses:
        raise PKIError("a server request needs at least one host name or IP address")
    if store.has_key(stem):
        raise PKIError(f"{store.path(stem)}.key exists: a server key is never replaced here")
    key = issuing.generate_key()
    store.write_key(stem, key)
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in host_names]
    names += [x509.IPAddress(ip) for ip in ip_addresses]
    csr = _build_csr(subject, key, [(x509.SubjectAlternativeName(names), False)])
    return store.write_bytes(f"{REQUESTS}/{name}.csr.pem", csr_pem(csr))


def _requested_names(
    csr: x509.CertificateSigningRequest,
) -> tuple[list[str], list[IPAddress]]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise RequestRefused("a server request must name its hosts (SAN)") from None
    ips: list[IPAddress] = []
    for value in san.get_values_for_type(x509.IPAddress):
        if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise RequestRefused(f"a server names single addresses, not the network {value}")
        ips.append(value)
    return san.get_values_for_type(x509.DNSName), ips


def request_hub(
    store: PkiStore, *, host_names: Sequence[str], ip_addresses: Sequence[IPAddress] = ()
) -> Path:
    """Make the hub's TLS key on the hub's machine and write its CSR for the secretariat."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Casebridge hub")])
    return _tls_request(
        store,
        stem=HUB,
        subject=subject,
        host_names=host_names,
        ip_addresses=ip_addresses,
        name="hub",
    )


def _sign_hub(store: PkiStore, *, request: Path, now: datetime) -> x509.Certificate:
    """The secretariat CA certifies the hub's requested names (within the hub's subtrees)."""
    csr = read_request(request)
    hosts, ips = _requested_names(csr)
    secretariat = store.read_certified(SECRETARIAT)
    try:
        cert = issuing.certify_hub_tls(
            secretariat,
            host_names=hosts,
            ip_addresses=ips,
            public_key=_requested_key(csr),
            now=now,
        )
    except PKIError as exc:
        raise RequestRefused(exc.detail) from None
    for target in _targets(store, request):
        target.write_cert(HUB, cert, [secretariat.cert])
    return cert


def request_server(
    store: PkiStore, *, host_names: Sequence[str], ip_addresses: Sequence[IPAddress] = ()
) -> Path:
    """Make the country server's TLS key here and write its CSR (SANs as an extension)."""
    country = own_country(store.read_state())
    common = host_names[0] if host_names else f"NATS server {country}"
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, country),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )
    return _tls_request(
        store,
        stem=country_stem(country, "server"),
        subject=subject,
        host_names=host_names,
        ip_addresses=ip_addresses,
        name=f"server-{country.lower()}",
    )


def _sign_server(store: PkiStore, *, request: Path, now: datetime) -> x509.Certificate:
    """The country CA certifies its server's requested names (within its own subtrees)."""
    country = own_country(store.read_state())
    csr = read_request(request)
    if _single(csr.subject, NameOID.COUNTRY_NAME) != country:
        raise RequestRefused(f"the {country} country CA signs only its own country's servers")
    hosts, ips = _requested_names(csr)
    ca = store.read_certified(country_stem(country, "ca"))
    try:
        cert = issuing.certify_server_tls(
            ca, host_names=hosts, ip_addresses=ips, public_key=_requested_key(csr), now=now
        )
    except PKIError as exc:
        raise RequestRefused(exc.detail) from None
    for target in _targets(store, request):
        target.write_cert(country_stem(country, "server"), cert, [ca.cert])
    return cert


def sign_crl(
    store: PkiStore, *, now: datetime, valid_for: timedelta
) -> x509.CertificateRevocationList:
    """The country CA signs its CRL from its own revocations (``countries/<cc>/crl.pem``)."""
    state = store.read_state()
    country = own_country(state)
    ca = store.read_certified(country_stem(country, "ca"))
    entries = [
        (r.serial, r.revoked_at, x509.ReasonFlags[r.reason])
        for r in state.revocations
        if r.country == country
    ]
    crl = issuing.build_crl(ca.key, ca.cert, entries, now, now + valid_for)
    store.write_crl(country, crl)
    return crl


def revoke_agency(store: PkiStore, *, agency_id: str, reason: str, now: datetime) -> int:
    """Record the revocation of an agency's certificates in the country's own store."""
    state = store.read_state()
    country = own_country(state)
    record = state.agencies.get(agency_id)
    if record is None:
        raise PKIError(f"unknown agency {agency_id!r}")
    added = tuple(
        Revocation(
            country=country,
            serial=serial,
            revoked_at=now,
            reason=reason,
            subject=f"{agency_id} {usage}",
        )
        for usage, serial in sorted(record.serials.items())
    )
    revoked = AgencyRecord(
        agency_id=agency_id,
        kind=record.kind,
        name=record.name,
        serials=record.serials,
        revoked=True,
    )
    store.write_state(state.with_agency(revoked).with_revocations(added))
    return len(added)


# ------------------------------------------------- public material, both ways ---


def export_public(store: PkiStore, out: PkiStore) -> list[Path]:
    """Copy what the secretariat needs for the directory: certificates, CRL, agency records.

    Only ``*.pem`` files are copied (enumerated, never globbed), so no key can travel.
    """
    state = store.read_state()
    country = own_country(state)
    if not store.path(f"{country_stem(country, 'crl')}.pem").is_file():
        raise PKIError("no CRL yet: run `casebridge pki crl` first")
    stems = [country_stem(country, "ca"), country_stem(country, "crl")]
    stems += [
        agency_stem(agency_id, usage)
        for agency_id, record in sorted(state.agencies.items())
        for usage in record.serials
    ]
    written = [out.write_bytes(f"{stem}.pem", store.read_bytes(f"{stem}.pem")) for stem in stems]
    manifest = {
        "country": country,
        "agencies": {
            a.agency_id: {"kind": a.kind, "name": a.name, "usages": sorted(a.serials)}
            for a in state.agencies.values()
            if not a.revoked
        },
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    written.append(out.write_bytes(PUBLIC_FILE, text.encode("utf-8")))
    return written


def _accept_country(store: PkiStore, public: PkiStore, *, now: datetime) -> list[str]:
    """The secretariat takes a country's public material after validating all of it.

    The CA must be the one it signed, every agency certificate must validate under it for its
    usage (its own country's names only), and the CRL must be signed by it and fresh. Returns
    the agency ids now recorded for that country.
    """
    state = store.read_state()
    try:
        manifest = json.loads(public.read_bytes(PUBLIC_FILE))
        country = str(manifest["country"])
        agencies = {str(k): dict(v) for k, v in manifest["agencies"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RequestRefused(f"{PUBLIC_FILE} is malformed: {exc!r}") from None
    if country not in state.countries:
        raise RequestRefused(f"{country} has not joined (no CA signed for it)")
    ca_cert = public.read_cert(country_stem(country, "ca"))
    if ca_cert != store.read_cert(country_stem(country, "ca")):
        raise RequestRefused(f"the {country} CA certificate is not the one the secretariat signed")
    root_cert = store.read_cert(ROOT)
    validator = pki.FederationValidator(root_cert, now=now)
    try:
        crl = x509.load_pem_x509_crl(public.read_bytes(f"{country_stem(country, 'crl')}.pem"))
    except ValueError:
        raise RequestRefused(f"the {country} CRL is not a PEM CRL") from None
    usages = {
        "signing": CertUsage.SIGNING,
        "agreement": CertUsage.AGREEMENT,
        "tls": CertUsage.TLS_CLIENT,
    }
    records = []
    try:
        validator.crl(crl, ca_cert)
        for agency_id, entry in sorted(agencies.items()):
            if agency_country(agency_id) != country:
                raise RequestRefused(f"{country} cannot publish {agency_id!r}: not its agency")
            serials = {}
            infos = []
            for usage in entry.get("usages", []):
                cert = public.read_cert(agency_stem(agency_id, usage))
                info = validator.agency_cert(cert, ca_cert, usage=usages[usage])
                if info.agency_id != agency_id:
                    raise RequestRefused(f"{agency_id} {usage} certificate names {info.agency_id}")
                serials[usage] = cert.serial_number
                infos.append(info)
            if "signing" not in serials or "agreement" not in serials:
                raise RequestRefused(f"{agency_id}: signing and agreement certificates needed")
            # Kind and name as the certificates say (the manifest is only a list).
            if len({(i.kind, i.name) for i in infos}) != 1:
                raise RequestRefused(f"{agency_id}: its certificates disagree on kind or name")
            records.append(
                AgencyRecord(
                    agency_id=agency_id, kind=infos[0].kind, name=infos[0].name, serials=serials
                )
            )
    except InvalidMessage as exc:
        raise RequestRefused(f"{country}: {exc.detail}") from None
    except KeyError as exc:
        raise RequestRefused(f"{country}: unknown usage {exc}") from None
    for record in records:
        for usage in record.serials:
            stem = agency_stem(record.agency_id, usage)
            store.write_bytes(f"{stem}.pem", public.read_bytes(f"{stem}.pem"))
    store.write_crl(country, crl)
    kept = {a: r for a, r in state.agencies.items() if agency_country(a) != country}
    kept |= {r.agency_id: r for r in records}
    store.write_state(replace(state, agencies=kept))
    return [r.agency_id for r in records]


def remove_country(store: PkiStore, *, country: str) -> list[str]:
    """The secretariat takes a leaving country out: its record, its agencies and their
    (public) certificates and CRL; the next directory no longer lists any of them.

    Refused while a task force still has members of that country (change the task force
    first, so that nobody silently loses a member). Returns the agency ids removed.
    """
    state = store.read_state()
    if country not in state.countries:
        raise PKIError(f"no country {country} in this federation")
    for tf in state.task_forces.values():
        members = [m for m in tf.members if agency_country(m) == country]
        if members:
            raise PKIError(f"task force {tf.task_force_id} still has members {members}")
    gone = sorted(a for a in state.agencies if agency_country(a) == country)
    countries = {c: r for c, r in state.countries.items() if c != country}
    agencies = {a: r for a, r in state.agencies.items() if a not in gone}
    store.write_state(replace(state, countries=countries, agencies=agencies))
    for relative in [f"countries/{country.lower()}", *(f"agencies/{a}" for a in gone)]:
        shutil.rmtree(store.path(relative), ignore_errors=True)
    return gone


# ------------------------------------------------------- decisions, logged ---


def _append_log(store: PkiStore, entry: dict[str, str]) -> None:
    path = store.path(LOG_FILE)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(line)


@contextmanager
def _decision(store: PkiStore, *, action: str, source: Path, now: datetime) -> Iterator[list[str]]:
    """Record what a signing party decided about ``source`` in its ``ceremony.log``: what it
    issued, or the reason it refused (then re-raised). Our own faults are not logged here."""
    notes: list[str] = []
    entry = {"at": now.isoformat(), "action": action, "source": str(source)}
    try:
        yield notes
    except RequestRefused as exc:
        _append_log(store, entry | {"outcome": "refused", "detail": exc.detail})
        raise
    _append_log(store, entry | {"outcome": "done", "detail": "; ".join(notes)})


def sign_country(
    store: PkiStore,
    *,
    country: str,
    ca_request: Path,
    leaf_request: Path,
    name: str,
    eu: bool,
    reply: PkiStore,
    now: datetime,
    permitted_dns: Sequence[str] | None = None,
    permitted_networks: Sequence[IPNetwork] = (),
    allow_loopback: bool = False,
    replace: bool = False,
) -> x509.Certificate:
    """The secretariat signs ``country``'s CA and leaf-node requests; writes the reply store.

    ``country`` is the country whose delegation handed the requests over (checked out of band);
    a request naming any other country is refused. Nothing is written to ``store`` or
    ``reply`` unless both requests pass every check (the decision goes to ``ceremony.log``).
    """
    with _decision(store, action=f"sign-country {country}", source=ca_request, now=now) as notes:
        cert = _sign_country(
            store,
            country=country,
            ca_request=ca_request,
            leaf_request=leaf_request,
            name=name,
            eu=eu,
            reply=reply,
            now=now,
            permitted_dns=permitted_dns,
            permitted_networks=permitted_networks,
            allow_loopback=allow_loopback,
            replace=replace,
        )
        notes.append(f"country CA serial {cert.serial_number:x}")
        return cert


def sign_agency(store: PkiStore, *, request: Path, now: datetime) -> AgencyRecord:
    """The country CA certifies an agency's requested keys (its own country only); an
    agreement request alone rotates that key. Decisions go to ``ceremony.log``."""
    with _decision(store, action="sign-agency", source=request, now=now) as notes:
        record = _sign_agency(store, request=request, now=now)
        serials = ", ".join(f"{u} {s:x}" for u, s in sorted(record.serials.items()))
        notes.append(f"{record.agency_id}: {serials}")
        return record


def sign_hub(store: PkiStore, *, request: Path, now: datetime) -> x509.Certificate:
    """The secretariat CA certifies the hub's requested names; logged in ``ceremony.log``."""
    with _decision(store, action="sign-hub", source=request, now=now) as notes:
        cert = _sign_hub(store, request=request, now=now)
        notes.append(f"hub serial {cert.serial_number:x}")
        return cert


def sign_server(store: PkiStore, *, request: Path, now: datetime) -> x509.Certificate:
    """The country CA certifies its server's requested names; logged in ``ceremony.log``."""
    with _decision(store, action="sign-server", source=request, now=now) as notes:
        cert = _sign_server(store, request=request, now=now)
        notes.append(f"server serial {cert.serial_number:x}")
        return cert


def accept_country(store: PkiStore, public: PkiStore, *, now: datetime) -> list[str]:
    """The secretariat takes a country's public material after validating all of it (see
    :func:`_accept_country`); logged in ``ceremony.log``."""
    with _decision(store, action="accept-country", source=public.base, now=now) as notes:
        agencies = _accept_country(store, public, now=now)
        notes.append(", ".join(agencies) or "(no agencies)")
        return agencies


# ------------------------------------------------------------------ the bundle ---


def join(
    store: PkiStore,
    *,
    directory: Path,
    federation_file: Path | None = None,
    now: datetime,
) -> Path:
    """Install the signed directory (checked against our root) and write ``bundle.json``.

    The country's directory then holds everything its servers, gateway and nodes need: its own
    keys and certificates, the root, the directory and (optionally) the federation file with
    every server's host and port. Returns the manifest's path.
    """
    state = store.read_state()
    country = own_country(state)
    root_cert = store.read_cert(ROOT)
    signed = directory.read_bytes()
    loaded = Directory.load(signed, root_cert=root_cert, now=now)
    if country not in {c.code for c in loaded.countries()}:
        raise PKIError(f"the directory does not list {country} yet")
    if loaded.country_ca(country) != store.read_cert(country_stem(country, "ca")):
        raise PKIError(f"the directory's {country} CA is not ours")
    store.write_bytes(DIRECTORY_FILE, signed)
    if federation_file is not None:
        shutil.copyfile(federation_file, store.path("federation.yaml"))
    manifest = {
        "version": BUNDLE_VERSION,
        "federation": state.federation_id,
        "party": country,
        "root_sha256": root_fingerprint(root_cert),
        "directory_serial": loaded.serial,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    return store.write_bytes(BUNDLE_FILE, text.encode("utf-8"))


def private_key_files(base: Path) -> list[Path]:
    """Every private key (file or token reference) under ``base`` (audits and tests)."""
    return sorted(p for p in base.rglob("*") if p.suffix in (".key", ".pkcs11") and p.is_file())
