"""Federation settings for processes that run from per-party bundles (``bundles.py``).

:func:`settings_from_bundles` builds the :class:`~broker.federation.launcher.FederationSettings`
the launcher and ``processes.prepare`` work from, where every path of a party points into that
party's own bundle (``party_dir``) and every server address comes from the federation
description (host and ports: nothing is assumed to be loopback). Used to run a federation whose
countries were brought in through the key ceremony. It reads no key and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from broker.core import wire as s
from broker.errors import ConfigError
from broker.federation.launcher import (
    BUNDLES_KEY,
    HUB,
    ClientSettings,
    FederationSettings,
    ServerSettings,
    free_port,
)
from broker.federation.spec import FederationDescription, gateway_id
from broker.pki.store import DIRECTORY_FILE, ROOT, agency_stem, country_stem


def _client(
    bundle: Path, agency_id: str, server: ServerSettings, *, durable: str | None
) -> ClientSettings:
    def stem(what: str, ext: str) -> Path:
        return bundle / f"{agency_stem(agency_id, what)}{ext}"

    return ClientSettings(
        agency_id=agency_id,
        country=server.name,
        nats_url=server.url,
        tls_cert=stem("tls", "-chain.pem"),
        tls_key=stem("tls", ".key"),
        ca_file=bundle / f"{country_stem(server.name, 'ca')}.pem",
        inbox_prefix=s.inbox_prefix(agency_id),
        durable=durable,
        signing_key=stem("signing", ".key"),
        signing_cert=stem("signing", ".pem"),
        agreement_key=stem("agreement", ".key"),
        agreement_cert=stem("agreement", ".pem"),
        http_port=free_port(),
    )


def settings_from_bundles(
    description: FederationDescription,
    base: Path,
    *,
    hub: Path,
    countries: Mapping[str, Path],
) -> FederationSettings:
    """Settings under ``base`` (configs, data, logs) for the hub and countries in ``countries``
    (code -> bundle directory), each running from its own bundle.

    Every server's address must be in the description (ConfigError otherwise).
    """
    base = base.resolve()
    named = description.hub_address
    if named is None or named.leaf_port is None:
        raise ConfigError("the federation description names no hub address")
    hub_server = ServerSettings(
        name=HUB,
        host=named.host,
        client_port=named.client_port,
        http_port=named.http_port,
        leaf_port=named.leaf_port,
        config=base / "nats" / "hub.conf",
    )
    servers: dict[str, ServerSettings] = {}
    for code, _ in countries.items():
        country = description.country(code)
        if country.server is None:
            raise ConfigError(f"the federation description names no server for {code}")
        servers[code] = ServerSettings(
            name=code,
            host=country.server.host,
            client_port=country.server.client_port,
            http_port=country.server.http_port,
            config=base / "nats" / f"{country.domain}.conf",
            store_dir=base / "data" / country.domain,
            peers=tuple(p for p in description.codes if p != code),
        )
    bundles = {HUB: str(hub.resolve()), **{cc: str(p.resolve()) for cc, p in countries.items()}}
    return FederationSettings(
        base=base,
        description=description,
        pki_dir=hub.resolve(),
        root_cert=hub.resolve() / f"{ROOT}.pem",
        directory=hub.resolve() / DIRECTORY_FILE,
        hub=hub_server,
        countries=servers,
        gateways={
            cc: _client(countries[cc].resolve(), gateway_id(cc), server, durable=None)
            for cc, server in servers.items()
        },
        nodes={
            a.agency_id: _client(
                countries[cc].resolve(),
                a.agency_id,
                server,
                durable=s.node_durable(a.agency_id),
            )
            for cc, server in servers.items()
            for a in description.country(cc).agencies
        },
        extra={BUNDLES_KEY: bundles},
    )
