"""A complete small federation PKI built in memory, for the demo, tests and benchmarks.

:func:`build_dev_federation` turns a :class:`FederationSpec` into a :class:`DevFederation`:
root and secretariat CAs, one CA per country, every agency's keys and certificates, NATS TLS
certificates (loopback by default), the signed directory and the loaded :class:`Directory`.
The structure is deterministic (same spec, same entities, same names); the keys are fresh
random P-256 keys every time, so nothing here is a secret worth keeping and no key is ever
committed. Writing to disk (optional) goes through :mod:`broker.pki.store`.

Dev only: loopback names are allowed on every country CA, keys may be written unencrypted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509

from broker.core.directory import (
    AgencyEntry,
    CountryEntry,
    Directory,
    TaskForce,
    build_directory,
)
from broker.core.header import agency_country
from broker.core.pki import AgencyCredentials, CertifiedKey
from broker.core.trust import cert_kid
from broker.errors import PKIError
from broker.pki import issuing
from broker.pki import store as pki_store

DEFAULT_HUB_DOMAIN: Final = "casebridge.test"
LOOPBACK_IPS: Final = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


@dataclass(frozen=True, kw_only=True, slots=True)
class AgencySpec:
    """One agency to create: id (``<cc>.<name>``), kind (one of AGENCY_KINDS), display name."""

    agency_id: str
    kind: str
    name: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CountrySpec:
    """One country to create, with its agencies."""

    code: str
    name: str
    eu: bool
    agencies: tuple[AgencySpec, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskForceSpec:
    """A task force: id (``tf.<name>``), display name, member agency ids."""

    task_force_id: str
    name: str
    members: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class FederationSpec:
    """What :func:`build_dev_federation` builds."""

    federation_id: str
    countries: tuple[CountrySpec, ...]
    task_forces: tuple[TaskForceSpec, ...] = ()
    hub_domain: str = DEFAULT_HUB_DOMAIN
    # Loopback SANs on every country server and the hub (dev only, see issuing.issue_country_ca).
    allow_loopback: bool = True
    directory_validity: timedelta = timedelta(days=7)


DEMO_SPEC: Final = FederationSpec(
    federation_id="demo",
    countries=(
        CountrySpec(
            code="DE",
            name="Germany",
            eu=True,
            agencies=(
                AgencySpec(agency_id="de.lka-berlin", kind="law_enforcement", name="LKA Berlin"),
                AgencySpec(
                    agency_id="de.sta-berlin", kind="prosecutor", name="Staatsanwaltschaft Berlin"
                ),
                AgencySpec(
                    agency_id="de.fbs-berlin", kind="ngo", name="Fachberatungsstelle Berlin"
                ),
            ),
        ),
        CountrySpec(
            code="NL",
            name="Netherlands",
            eu=True,
            agencies=(
                AgencySpec(agency_id="nl.politie", kind="law_enforcement", name="Politie"),
                AgencySpec(
                    agency_id="nl.arbeidsinspectie",
                    kind="labour_inspectorate",
                    name="Nederlandse Arbeidsinspectie",
                ),
                AgencySpec(agency_id="nl.hulp-ngo", kind="ngo", name="Slachtofferhulp NGO"),
            ),
        ),
        CountrySpec(
            code="UA",
            name="Ukraine",
            eu=False,
            agencies=(
                AgencySpec(agency_id="ua.npu", kind="law_enforcement", name="National Police"),
                AgencySpec(agency_id="ua.pgo", kind="prosecutor", name="Prosecutor General"),
                AgencySpec(agency_id="ua.hotline-ngo", kind="ngo", name="Hotline NGO"),
            ),
        ),
    ),
    task_forces=(
        TaskForceSpec(
            task_force_id="tf.eastern-route",
            name="Eastern route joint task force",
            members=("de.lka-berlin", "nl.politie", "ua.npu"),
        ),
    ),
)


@dataclass(frozen=True, kw_only=True, slots=True)
class DevAgency:
    """One agency's private keys and certificates."""

    agency_id: str
    country: str
    kind: str
    name: str
    signing: CertifiedKey
    agreement: CertifiedKey
    tls: CertifiedKey

    @property
    def signing_kid(self) -> str:
        return cert_kid(self.agency_id, self.signing.cert)

    @property
    def agreement_kid(self) -> str:
        return cert_kid(self.agency_id, self.agreement.cert)

    @property
    def credentials(self) -> AgencyCredentials:
        return AgencyCredentials(
            agency_id=self.agency_id,
            country=self.country,
            kind=self.kind,
            name=self.name,
            signing=self.signing,
            agreement=self.agreement,
        )

    def serials(self) -> tuple[int, ...]:
        """Serial numbers of all this agency's certificates (what revoking it lists)."""
        return tuple(c.cert.serial_number for c in (self.signing, self.agreement, self.tls))


@dataclass(frozen=True, kw_only=True, slots=True)
class DevCountry:
    """One country's CA and NATS TLS material."""

    code: str
    name: str
    eu: bool
    ca: CertifiedKey
    server_tls: CertifiedKey
    leaf_tls: CertifiedKey


@dataclass(frozen=True, kw_only=True, slots=True)
class DevFederation:
    """A whole dev federation: every key, every certificate, the signed and loaded directory."""

    spec: FederationSpec
    now: datetime
    root: CertifiedKey
    secretariat: CertifiedKey
    hub_tls: CertifiedKey
    countries: Mapping[str, DevCountry]
    agencies: Mapping[str, DevAgency]
    task_forces: tuple[TaskForce, ...]
    directory_bytes: bytes
    directory: Directory

    @property
    def federation_id(self) -> str:
        return self.spec.federation_id

    def agency(self, agency_id: str) -> DevAgency:
        try:
            return self.agencies[agency_id]
        except KeyError:
            raise PKIError(f"no agency {agency_id!r} in the dev federation") from None

    def country(self, code: str) -> DevCountry:
        try:
            return self.countries[code]
        except KeyError:
            raise PKIError(f"no country {code!r} in the dev federation") from None

    def sign_directory(
        self,
        *,
        now: datetime,
        valid_for: timedelta | None = None,
        revoked: Iterable[str] = (),
        serial: int = 2,
        agencies: Sequence[AgencyEntry] | None = None,
    ) -> bytes:
        """Sign a fresh directory of this federation, e.g. with some agencies revoked.

        ``agencies`` replaces the agency entries (tests use it to plant a bad entry).
        """
        return _sign_directory(
            root=self.root,
            countries=self.countries,
            agencies=self.agencies,
            task_forces=self.task_forces,
            now=now,
            valid_for=valid_for or self.spec.directory_validity,
            revoked=frozenset(revoked),
            serial=serial,
            entries=agencies,
        )

    def agency_entries(self) -> list[AgencyEntry]:
        """The directory entries of every agency, in id order."""
        return _agency_entries(self.agencies)

    def write(self, out_dir: Path) -> None:
        """Write everything to a PKI directory (layout: ``certs/README.md``)."""
        write_dev_federation(pki_store.PkiStore.from_env(out_dir), self)


def _agency_entries(agencies: Mapping[str, DevAgency]) -> list[AgencyEntry]:
    return [
        AgencyEntry(
            agency_id=a.agency_id,
            kind=a.kind,
            name=a.name,
            signing_cert=a.signing.cert,
            agreement_cert=a.agreement.cert,
            tls_cert=a.tls.cert,
        )
        for a in sorted(agencies.values(), key=lambda a: a.agency_id)
    ]


def _sign_directory(
    *,
    root: CertifiedKey,
    countries: Mapping[str, DevCountry],
    agencies: Mapping[str, DevAgency],
    task_forces: Sequence[TaskForce],
    now: datetime,
    valid_for: timedelta,
    revoked: frozenset[str],
    serial: int,
    entries: Sequence[AgencyEntry] | None,
) -> bytes:
    next_update = now + valid_for
    unknown = revoked - set(agencies)
    if unknown:
        raise PKIError(f"cannot revoke unknown agencies {sorted(unknown)}")
    country_entries = []
    for country in countries.values():
        crl_entries = [
            (serial_no, now, x509.ReasonFlags.key_compromise)
            for agency_id in sorted(revoked)
            if agency_country(agency_id) == country.code
            for serial_no in agencies[agency_id].serials()
        ]
        crl = issuing.build_crl(country.ca.key, country.ca.cert, crl_entries, now, next_update)
        country_entries.append(
            CountryEntry(
                code=country.code,
                name=country.name,
                eu=country.eu,
                ca_cert=country.ca.cert,
                crl=crl,
            )
        )
    return build_directory(
        root=root,
        serial=serial,
        issued_at=now,
        next_update=next_update,
        countries=country_entries,
        agencies=_agency_entries(agencies) if entries is None else entries,
        task_forces=task_forces,
    )


def _build_country(
    spec: CountrySpec,
    *,
    root: CertifiedKey,
    secretariat: CertifiedKey,
    now: datetime,
    loopback: bool,
) -> tuple[DevCountry, list[DevAgency]]:
    ca = issuing.issue_country_ca(root, country=spec.code, now=now, allow_loopback=loopback)
    domain = issuing.default_dns_domains(spec.code)[0]
    hosts = ("localhost",) if loopback else (f"nats.{domain}",)
    server = issuing.issue_server_tls(
        ca, host_names=hosts, ip_addresses=LOOPBACK_IPS if loopback else (), now=now
    )
    leaf = issuing.issue_leaf_tls(secretariat, country=spec.code, now=now)
    agencies = []
    for agency in spec.agencies:
        creds = issuing.issue_agency(
            ca, agency_id=agency.agency_id, kind=agency.kind, name=agency.name, now=now
        )
        tls = issuing.issue_agency_tls(
            ca, agency_id=agency.agency_id, kind=agency.kind, name=agency.name, now=now
        )
        agencies.append(
            DevAgency(
                agency_id=creds.agency_id,
                country=creds.country,
                kind=creds.kind,
                name=creds.name,
                signing=creds.signing,
                agreement=creds.agreement,
                tls=tls,
            )
        )
    country = DevCountry(
        code=spec.code, name=spec.name, eu=spec.eu, ca=ca, server_tls=server, leaf_tls=leaf
    )
    return country, agencies


def build_dev_federation(
    spec: FederationSpec = DEMO_SPEC, *, now: datetime, out_dir: Path | None = None
) -> DevFederation:
    """Build the federation described by ``spec`` at ``now`` (optionally writing it to disk).

    The directory (serial 1) is valid from ``now`` for ``spec.directory_validity``.
    """
    root = issuing.create_root_ca(spec.federation_id, now=now)
    loopback = spec.allow_loopback
    secretariat = issuing.issue_secretariat_ca(
        root, now=now, dns_domains=(spec.hub_domain,), allow_loopback=loopback
    )
    hub = issuing.issue_hub_tls(
        secretariat,
        host_names=("localhost",) if loopback else (f"hub.{spec.hub_domain}",),
        ip_addresses=LOOPBACK_IPS if loopback else (),
        now=now,
    )
    countries: dict[str, DevCountry] = {}
    agencies: dict[str, DevAgency] = {}
    for country_spec in spec.countries:
        country, members = _build_country(
            country_spec, root=root, secretariat=secretariat, now=now, loopback=loopback
        )
        countries[country.code] = country
        agencies.update((a.agency_id, a) for a in members)
    task_forces = tuple(
        TaskForce(task_force_id=t.task_force_id, name=t.name, members=tuple(sorted(t.members)))
        for t in spec.task_forces
    )
    signed = _sign_directory(
        root=root,
        countries=countries,
        agencies=agencies,
        task_forces=task_forces,
        now=now,
        valid_for=spec.directory_validity,
        revoked=frozenset(),
        serial=1,
        entries=None,
    )
    directory = Directory.load(signed, root_cert=root.cert, now=now)
    if directory.problems:
        raise PKIError(f"dev federation directory has problems: {directory.problems}")
    fed = DevFederation(
        spec=spec,
        now=now,
        root=root,
        secretariat=secretariat,
        hub_tls=hub,
        countries=countries,
        agencies=agencies,
        task_forces=task_forces,
        directory_bytes=signed,
        directory=directory,
    )
    if out_dir is not None:
        fed.write(out_dir)
    return fed


# --------------------------------------------------------- a dev federation ---


SECRETARIAT_PARTY: Final = "secretariat"
HUB_PARTY: Final = "hub"


def write_dev_federation(
    store: pki_store.PkiStore, fed: DevFederation, *, party: str | None = None
) -> None:
    """Write a :class:`DevFederation` in the same layout the CLI manages, with its state.

    ``party`` None writes every key (the one-machine dev PKI). Otherwise only that party's
    private keys are written and every other certificate as a public file: ``"secretariat"``
    (root and secretariat CAs), ``"hub"`` (the hub's TLS key) or a country code (its CA,
    server and leaf keys and its agencies' keys; its state lists only itself). Each country's
    CRL is written too, so a secretariat without country keys can sign directories.
    """
    spec = fed.spec

    def put(
        stem: str, certified: CertifiedKey, owner: str, chain: Sequence[x509.Certificate] = ()
    ) -> None:
        if party is None or party == owner:
            store.write_certified(stem, certified, chain)
        else:
            store.write_cert(stem, certified.cert, chain)

    put(pki_store.ROOT, fed.root, SECRETARIAT_PARTY)
    put(pki_store.SECRETARIAT, fed.secretariat, SECRETARIAT_PARTY)
    put(pki_store.HUB, fed.hub_tls, HUB_PARTY, [fed.secretariat.cert])
    state = pki_store.StoreState(
        federation_id=fed.federation_id,
        hub_domains=(spec.hub_domain,),
        allow_loopback=spec.allow_loopback,
        directory_serial=fed.directory.serial,
    )
    own = [
        c for c in fed.countries.values() if party in (None, SECRETARIAT_PARTY, HUB_PARTY, c.code)
    ]
    for country in fed.countries.values():
        code = country.code
        put(pki_store.country_stem(code, "ca"), country.ca, code)
        put(pki_store.country_stem(code, "server"), country.server_tls, code, [country.ca.cert])
        put(pki_store.country_stem(code, "leaf"), country.leaf_tls, code, [fed.secretariat.cert])
        store.write_crl(
            code,
            issuing.build_crl(
                country.ca.key, country.ca.cert, [], fed.now, fed.now + spec.directory_validity
            ),
        )
    for country in own:
        state = state.with_country(
            pki_store.CountryRecord(
                code=country.code,
                name=country.name,
                eu=country.eu,
                dns_domains=_dns_domains(country.ca.cert),
                allow_loopback=spec.allow_loopback,
            )
        )
    codes = {c.code for c in own}
    for agency in fed.agencies.values():
        ca_cert = fed.countries[agency.country].ca.cert
        for usage, certified in (
            ("signing", agency.signing),
            ("agreement", agency.agreement),
            ("tls", agency.tls),
        ):
            put(
                pki_store.agency_stem(agency.agency_id, usage), certified, agency.country, [ca_cert]
            )
        if agency.country not in codes:
            continue
        state = state.with_agency(
            pki_store.AgencyRecord(
                agency_id=agency.agency_id,
                kind=agency.kind,
                name=agency.name,
                serials={
                    "signing": agency.signing.cert.serial_number,
                    "agreement": agency.agreement.cert.serial_number,
                    "tls": agency.tls.cert.serial_number,
                },
            )
        )
    # Task forces are the secretariat's records (their members span countries).
    for tf in fed.task_forces if party in (None, SECRETARIAT_PARTY, HUB_PARTY) else ():
        state = state.with_task_force(
            pki_store.TaskForceRecord(
                task_force_id=tf.task_force_id, name=tf.name, members=tf.members
            )
        )
    store.write_bytes(pki_store.DIRECTORY_FILE, fed.directory_bytes)
    store.write_state(state)


def _dns_domains(ca_cert: x509.Certificate) -> tuple[str, ...]:
    nc = ca_cert.extensions.get_extension_for_class(x509.NameConstraints).value
    loopback = {"localhost"}
    return tuple(
        g.value
        for g in nc.permitted_subtrees or []
        if isinstance(g, x509.DNSName) and g.value not in loopback
    )
