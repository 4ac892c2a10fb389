"""The federation description: one YAML file naming the hub, countries, agencies and task forces.

:func:`load_description` / :func:`parse_description` turn the file into a
:class:`FederationDescription`, checked strictly (unknown keys, bad ids, duplicates, task-force
members that do not exist are all ``ConfigError`` with the path of the offending entry), and
:meth:`FederationDescription.to_pki_spec` into the :class:`broker.pki.dev.FederationSpec` the
PKI tooling builds. Every country automatically gets its border gateway identity
``<cc>.gateway`` (kind ``gateway``); the file may not declare it itself.

Format (``docs/federation.example.yaml``)::

    federation: demo
    hub: {domain: casebridge.test}          # optional; host, client_port, http_port,
                                            # leaf_port: where the hub listens (optional)
    directory_valid_days: 30                # optional, default 30
    countries:
      - code: DE
        name: Germany
        eu: true
        server: {host: 192.0.2.10, client_port: 4222, http_port: 8222}   # optional
        servers: 3                          # optional: 1 (default) or a 3-server cluster
        agencies:
          - {id: de.lka-berlin, kind: law_enforcement, name: LKA Berlin}
    task_forces:
      - {id: tf.eastern-route, name: Eastern route, members: [de.lka-berlin, ...]}

Addresses (``hub`` host and ports, each country's ``server``) are optional for a development
federation on one machine (the launcher picks free loopback ports) and required for one whose
parties run on their own machines (``broker.federation.bundles``): nothing else assumes
loopback or a shared file system.

Names end up in certificate subject DNs, which nats-server matches as text
(``verify_and_map``), so characters that DN escaping would change are refused.
This module reads one file and never touches the network or the PKI.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import yaml

from broker.core.header import AGENCY_RE, COUNTRY_RE, FEDERATION_RE, TASK_FORCE_RE
from broker.core.trust import AGENCY_KINDS
from broker.errors import ConfigError
from broker.pki.dev import (
    DEFAULT_HUB_DOMAIN,
    AgencySpec,
    CountrySpec,
    FederationSpec,
    TaskForceSpec,
)

GATEWAY_KIND: Final = "gateway"
GATEWAY_NAME: Final = "gateway"
DEFAULT_DIRECTORY_DAYS: Final = 30
# A clustered country runs this many NATS servers (JetStream R3: one may fail).
CLUSTER_SIZE: Final = 3
MAX_NAME: Final = 64
# Characters RFC 4514 / Go's pkix.Name.String() would escape, quotes, and control characters.
_UNSAFE_NAME: Final = re.compile(r"[,+\"\\<>;=#\x00-\x1f\x7f]")
_HOST_RE: Final = re.compile(
    r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+\Z"
)


def gateway_id(code: str) -> str:
    """The agency id of a country's border gateway: ``<cc>.gateway``."""
    return f"{code.lower()}.{GATEWAY_NAME}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerAddress:
    """Where a NATS server listens: host (DNS name or IP) and ports (``leaf_port``: hub only)."""

    host: str
    client_port: int
    http_port: int
    leaf_port: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "host": self.host,
            "client_port": self.client_port,
            "http_port": self.http_port,
        }
        if self.leaf_port is not None:
            out["leaf_port"] = self.leaf_port
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class AgencyDescription:
    """One agency of a country as the file declares it."""

    agency_id: str
    kind: str
    name: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CountryDescription:
    """One country: ISO code (upper case), display name, EU membership, its agencies."""

    code: str
    name: str
    eu: bool
    agencies: tuple[AgencyDescription, ...]
    server: ServerAddress | None = None
    # NATS servers of the country: 1, or a cluster of CLUSTER_SIZE (R3 streams).
    servers: int = 1

    @property
    def domain(self) -> str:
        """The country's JetStream domain (lower-case code)."""
        return self.code.lower()

    @property
    def gateway_id(self) -> str:
        return gateway_id(self.code)


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskForceDescription:
    """A task force: id ``tf.<name>``, display name, member agency ids."""

    task_force_id: str
    name: str
    members: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class FederationDescription:
    """The whole federation as described in the YAML file (gateways not included)."""

    federation_id: str
    hub_domain: str
    countries: tuple[CountryDescription, ...]
    task_forces: tuple[TaskForceDescription, ...] = ()
    directory_validity: timedelta = timedelta(days=DEFAULT_DIRECTORY_DAYS)
    hub_address: ServerAddress | None = None

    def country(self, code: str) -> CountryDescription:
        for country in self.countries:
            if country.code == code.upper():
                return country
        raise ConfigError(f"no country {code!r} in federation {self.federation_id!r}")

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(c.code for c in self.countries)

    def agency_ids(self) -> tuple[str, ...]:
        """Every declared agency id (gateways excluded), in file order."""
        return tuple(a.agency_id for c in self.countries for a in c.agencies)

    def to_pki_spec(self) -> FederationSpec:
        """The PKI spec: every declared agency plus one ``<cc>.gateway`` per country."""
        countries = tuple(
            CountrySpec(
                code=c.code,
                name=c.name,
                eu=c.eu,
                agencies=(
                    *(
                        AgencySpec(agency_id=a.agency_id, kind=a.kind, name=a.name)
                        for a in c.agencies
                    ),
                    AgencySpec(
                        agency_id=c.gateway_id,
                        kind=GATEWAY_KIND,
                        name=f"{c.name} border gateway",
                    ),
                ),
            )
            for c in self.countries
        )
        return FederationSpec(
            federation_id=self.federation_id,
            countries=countries,
            task_forces=tuple(
                TaskForceSpec(task_force_id=t.task_force_id, name=t.name, members=t.members)
                for t in self.task_forces
            ),
            hub_domain=self.hub_domain,
            allow_loopback=True,
            directory_validity=self.directory_validity,
        )

    def to_json(self) -> dict[str, Any]:
        """The same structure as the YAML file (what :func:`parse_description` reads)."""
        return {
            "federation": self.federation_id,
            "hub": {
                "domain": self.hub_domain,
                **(self.hub_address.to_json() if self.hub_address else {}),
            },
            "directory_valid_days": self.directory_validity.days,
            "countries": [
                {
                    "code": c.code,
                    "name": c.name,
                    "eu": c.eu,
                    "agencies": [
                        {"id": a.agency_id, "kind": a.kind, "name": a.name} for a in c.agencies
                    ],
                    **({"server": c.server.to_json()} if c.server else {}),
                }
                | ({"servers": c.servers} if c.servers != 1 else {})
                for c in self.countries
            ],
            "task_forces": [
                {"id": t.task_force_id, "name": t.name, "members": list(t.members)}
                for t in self.task_forces
            ],
        }


# ------------------------------------------------------------------ parsing ---


def _mapping(raw: object, where: str, required: set[str], optional: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    keys = set(raw)
    unknown = keys - required - optional
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(map(str, unknown))}")
    missing = required - keys
    if missing:
        raise ConfigError(f"{where}: missing keys {sorted(missing)}")
    return raw


def _list(raw: object, where: str) -> Sequence[Any]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list")
    return raw


def _name(raw: object, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{where}: expected a non-empty string")
    if raw != raw.strip() or len(raw) > MAX_NAME or _UNSAFE_NAME.search(raw):
        raise ConfigError(
            f"{where}: {raw!r} must be at most {MAX_NAME} characters without leading or "
            'trailing spaces and without any of , + " \\ < > ; = # (they change in DNs)'
        )
    return raw


def _matching(raw: object, pattern: re.Pattern[str], where: str) -> str:
    if not isinstance(raw, str) or not pattern.fullmatch(raw):
        raise ConfigError(f"{where}: {raw!r} does not match {pattern.pattern}")
    return raw


def _port(raw: object, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < raw < 65536:
        raise ConfigError(f"{where}: expected a TCP port (1-65535)")
    return raw


def _address(raw: Mapping[str, Any], where: str, *, hub: bool) -> ServerAddress:
    host = raw.get("host")
    try:
        ipaddress.ip_address(str(host))
    except ValueError:
        if not isinstance(host, str) or not _HOST_RE.fullmatch(host):
            raise ConfigError(f"{where}.host: {host!r} is not a DNS name or IP address") from None
    return ServerAddress(
        host=str(host),
        client_port=_port(raw.get("client_port"), f"{where}.client_port"),
        http_port=_port(raw.get("http_port"), f"{where}.http_port"),
        leaf_port=_port(raw.get("leaf_port"), f"{where}.leaf_port") if hub else None,
    )


def _agency(raw: object, where: str, code: str) -> AgencyDescription:
    entry = _mapping(raw, where, {"id", "kind", "name"}, set())
    agency_id = _matching(entry["id"], AGENCY_RE, f"{where}.id")
    if agency_id.split(".", 1)[0] != code.lower():
        raise ConfigError(f"{where}.id: {agency_id!r} must start with {code.lower()}.")
    if agency_id == gateway_id(code):
        raise ConfigError(f"{where}.id: {agency_id!r} is reserved for the border gateway")
    kind = entry["kind"]
    if kind not in AGENCY_KINDS or kind == GATEWAY_KIND:
        choices = [k for k in AGENCY_KINDS if k != GATEWAY_KIND]
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {choices}")
    return AgencyDescription(agency_id=agency_id, kind=kind, name=_name(entry["name"], where))


def _country(raw: object, where: str) -> CountryDescription:
    entry = _mapping(raw, where, {"code", "name", "eu"}, {"agencies", "server", "servers"})
    code = _matching(entry["code"], COUNTRY_RE, f"{where}.code")
    if not isinstance(entry["eu"], bool):
        raise ConfigError(f"{where}.eu: expected true or false")
    servers = entry.get("servers", 1)
    if isinstance(servers, bool) or servers not in (1, CLUSTER_SIZE):
        raise ConfigError(f"{where}.servers: expected 1 or {CLUSTER_SIZE} (a cluster)")
    agencies = tuple(
        _agency(a, f"{where}.agencies[{i}]", code)
        for i, a in enumerate(_list(entry.get("agencies"), f"{where}.agencies"))
    )
    server = None
    if entry.get("server") is not None:
        fields = {"host", "client_port", "http_port"}
        server_raw = _mapping(entry["server"], f"{where}.server", fields, set())
        server = _address(server_raw, f"{where}.server", hub=False)
    return CountryDescription(
        code=code,
        name=_name(entry["name"], f"{where}.name"),
        eu=entry["eu"],
        agencies=agencies,
        server=server,
        servers=int(servers),
    )


def _task_force(raw: object, where: str, known: set[str]) -> TaskForceDescription:
    entry = _mapping(raw, where, {"id", "name", "members"}, set())
    tf_id = _matching(entry["id"], TASK_FORCE_RE, f"{where}.id")
    members = tuple(
        _matching(m, AGENCY_RE, f"{where}.members[{i}]")
        for i, m in enumerate(_list(entry["members"], f"{where}.members"))
    )
    if not members:
        raise ConfigError(f"{where}.members: a task force needs at least one member")
    unknown = [m for m in members if m not in known]
    if unknown:
        raise ConfigError(f"{where}.members: unknown agencies {unknown}")
    if len(set(members)) != len(members):
        raise ConfigError(f"{where}.members: duplicate members")
    return TaskForceDescription(
        task_force_id=tf_id, name=_name(entry["name"], f"{where}.name"), members=members
    )


def _unique(values: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ConfigError(f"duplicate {what} {value!r}")
        seen.add(value)


def parse_description(raw: object) -> FederationDescription:
    """Check a parsed YAML/JSON document and build the description (``ConfigError`` if bad)."""
    top = _mapping(
        raw,
        "federation file",
        {"federation", "countries"},
        {"hub", "task_forces", "directory_valid_days"},
    )
    fed = _matching(top["federation"], FEDERATION_RE, "federation")
    hub_fields = {"host", "client_port", "http_port", "leaf_port"}
    hub = _mapping(top.get("hub") or {}, "hub", set(), {"domain", *hub_fields})
    hub_address = None
    if hub_fields & set(hub):
        if not hub_fields <= set(hub):
            raise ConfigError(f"hub: an address needs all of {sorted(hub_fields)}")
        hub_address = _address(hub, "hub", hub=True)
    domain = hub.get("domain", DEFAULT_HUB_DOMAIN)
    if not isinstance(domain, str) or not _HOST_RE.fullmatch(domain):
        raise ConfigError(f"hub.domain: {domain!r} is not a DNS domain")
    days = top.get("directory_valid_days", DEFAULT_DIRECTORY_DAYS)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 366:
        raise ConfigError("directory_valid_days: expected a whole number of days from 1 to 366")
    countries = tuple(
        _country(c, f"countries[{i}]") for i, c in enumerate(_list(top["countries"], "countries"))
    )
    if not countries:
        raise ConfigError("countries: a federation needs at least one country")
    _unique([c.code for c in countries], "country")
    agency_ids = [a.agency_id for c in countries for a in c.agencies]
    _unique(agency_ids, "agency")
    known = set(agency_ids)
    task_forces = tuple(
        _task_force(t, f"task_forces[{i}]", known)
        for i, t in enumerate(_list(top.get("task_forces"), "task_forces"))
    )
    _unique([t.task_force_id for t in task_forces], "task force")
    return FederationDescription(
        federation_id=fed,
        hub_domain=domain,
        countries=countries,
        task_forces=task_forces,
        directory_validity=timedelta(days=days),
        hub_address=hub_address,
    )


def load_description(path: Path) -> FederationDescription:
    """Read and check a federation YAML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_description(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.detail}") from None
