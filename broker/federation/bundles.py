"""Per-party bundles: what each party of a federation takes to its own machine.

A bundle is a PKI directory (``certs/README.md`` layout) holding exactly one party's private
keys plus public federation material (certificates, the signed directory, the federation
description with every server's host and port, a ``bundle.json`` manifest):

=============  ===========================================================================
party          private keys in its bundle
=============  ===========================================================================
``<cc>``       its country CA (or a ``ca.pkcs11`` token reference), its nats-server and
               leaf-node TLS keys, its agencies' signing, agreement and TLS keys
``hub``        the hub's TLS key only: no country secret, no root key
``secretariat`` the root and secretariat CA keys only (it signs directories from the CRLs
               the countries sign themselves)
=============  ===========================================================================

``casebridge federation init`` writes them under ``<dir>/bundles/`` from the dev PKI (the
one-machine launcher itself still runs from ``pki/``); the key ceremony (docs/joining.md)
produces the country bundles directly, each in its own directory, and
:func:`write_hub_bundle` the hub's from the secretariat's directory. This module writes files
only; it never copies a key of one party into another party's bundle.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import yaml

from broker.core.directory import root_fingerprint
from broker.errors import ConfigError
from broker.federation.spec import FederationDescription
from broker.pki.dev import HUB_PARTY, SECRETARIAT_PARTY, DevFederation, write_dev_federation
from broker.pki.store import (
    DIRECTORY_FILE,
    HUB,
    PUBLISHER,
    ROOT,
    SECRETARIAT,
    PkiStore,
    country_stem,
)

MANIFEST: Final = "bundle.json"
DESCRIPTION_FILE: Final = "federation.yaml"
MANIFEST_VERSION: Final = 1


def write_manifest(store: PkiStore, *, party: str, description: FederationDescription) -> Path:
    """``bundle.json`` (party, federation, root fingerprint) and ``federation.yaml``."""
    text = yaml.safe_dump(description.to_json(), sort_keys=False, allow_unicode=True)
    store.write_bytes(DESCRIPTION_FILE, text.encode("utf-8"))
    manifest = {
        "version": MANIFEST_VERSION,
        "federation": description.federation_id,
        "party": party,
        "root_sha256": root_fingerprint(store.read_cert(ROOT)),
    }
    data = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n"
    return store.write_bytes(MANIFEST, data)


def write_dev_bundles(
    dev: DevFederation, description: FederationDescription, out: Path
) -> dict[str, Path]:
    """One bundle per country, the hub and the secretariat under ``out``; party -> directory."""
    parties = [SECRETARIAT_PARTY, HUB_PARTY, *dev.countries]
    written: dict[str, Path] = {}
    for party in parties:
        target = out / party.lower()
        store = PkiStore(target, passphrase=None)
        write_dev_federation(store, dev, party=party)
        write_manifest(store, party=party, description=description)
        written[party] = target
    return written


def add_publisher(pki: PkiStore, bundles: dict[str, Path]) -> None:
    """Give the directory publisher's certificate to the hub (public: the hub maps its DN to
    the one user allowed to publish directories) and its key to the secretariat, whose
    credential it is. No other party gets either."""
    publisher = pki.read_certified(PUBLISHER)
    chain = [pki.read_cert(SECRETARIAT)]
    PkiStore(bundles[SECRETARIAT_PARTY], passphrase=None).write_certified(
        PUBLISHER, publisher, chain
    )
    PkiStore(bundles[HUB_PARTY], passphrase=None).write_cert(PUBLISHER, publisher.cert)


def write_hub_bundle(
    secretariat: PkiStore,
    out: Path,
    *,
    countries: Iterable[str],
    description: FederationDescription,
) -> Path:
    """Complete the hub's bundle: ``out`` already holds the hub's own key and certificate
    (``pki request-hub`` there, ``pki sign-hub`` at the secretariat); add the secretariat CA
    and root certificates, each country's leaf-node certificate (public: the hub maps its DN)
    and the directory. No key is copied."""
    store = PkiStore(out, passphrase=None)
    if not store.has_key(HUB) or not store.has(HUB):
        raise ConfigError(f"{out} holds no hub key and certificate (pki request-hub, sign-hub)")
    store.write_cert(SECRETARIAT, secretariat.read_cert(SECRETARIAT))
    store.write_cert(ROOT, secretariat.read_cert(ROOT))
    for code in countries:
        stem = country_stem(code, "leaf")
        if not secretariat.has(stem):
            raise ConfigError(f"no leaf-node certificate for {code}: sign its request first")
        store.write_cert(stem, secretariat.read_cert(stem))
    store.write_bytes(DIRECTORY_FILE, secretariat.read_bytes(DIRECTORY_FILE))
    if secretariat.has(PUBLISHER):
        store.write_cert(PUBLISHER, secretariat.read_cert(PUBLISHER))
    write_manifest(store, party=HUB_PARTY, description=description)
    return out
