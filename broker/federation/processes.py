"""Gateways and nodes of a local federation: their settings files, signed policies, tokens.

``prepare(fed, policy_dir=...)`` runs after ``Federation.init``: it signs each country's policy
file with that country's CA key (``DIR/policies/<cc>.policy.jws``), writes one settings file per
border gateway and per agency node (``DIR/settings/<id>.json``, the node settings format of
docs/node-api.md; a gateway's without key-agreement key and API token, see
``broker/gateway/settings.py``), an API token per node (``DIR/settings/<id>.token``, mode
0600), and registers
the processes that ``federation up`` starts after the NATS servers and streams (plus the NATS
metrics exporter, ``broker.federation.observability``).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from broker.core.policy import sign_policy
from broker.errors import ConfigError
from broker.federation.launcher import ClientSettings, Federation, ProcessSpec, party_dir
from broker.federation.observability import exporter_process
from broker.pki.store import DIRECTORY_FILE, ROOT, PkiStore, country_stem

SETTINGS_DIR: Final = "settings"
POLICY_DIR: Final = "policies"
STORE_DIR: Final = "store"


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeEndpoint:
    """Where a node's HTTP API listens and the token that opens it (for the demo and tests)."""

    agency_id: str
    url: str
    token: str
    settings: Path


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _settings_json(
    client: ClientSettings,
    *,
    base: Path,
    fed: Federation,
    policy: Path | None,
    policy_ca: Path | None,
    token_file: Path | None,
) -> dict[str, Any]:
    """A settings document; ``token_file`` None: a gateway's (no decryption key, no API)."""
    here = base / SETTINGS_DIR
    # From the party's own bundle when the federation runs from bundles (each country keeps
    # its copy of the directory and root), else the one-machine PKI's.
    directory, root_cert = fed.settings.directory, fed.settings.root_cert
    own = party_dir(fed.settings, client.country)
    if own != fed.settings.pki_dir:
        directory, root_cert = own / DIRECTORY_FILE, own / f"{ROOT}.pem"

    def rel(path: Path) -> str:
        return os.path.relpath(path, here)

    doc: dict[str, Any] = {
        "agency": client.agency_id,
        "nats": {
            "url": client.nats_url,
            "ca_file": rel(client.ca_file),
            "cert_file": rel(client.tls_cert),
            "key_file": rel(client.tls_key),
        },
        "keys": {
            "signing_key": rel(client.signing_key),
            "signing_cert": rel(client.signing_cert),
        },
        "directory": {
            "file": rel(directory),
            "root_cert": rel(root_cert),
        },
        "store": rel(base / STORE_DIR / f"{client.agency_id}.sqlite"),
        "api": {"host": "127.0.0.1", "port": client.http_port},
    }
    if token_file is not None:  # a node: it decrypts and serves the API
        doc["keys"]["agreement_key"] = rel(client.agreement_key)
        doc["keys"]["agreement_cert"] = rel(client.agreement_cert)
        doc["api"]["token_file"] = rel(token_file)
    if policy is not None and policy_ca is not None:
        doc["policy"] = {"file": rel(policy), "ca_cert": rel(policy_ca)}
    return doc


def sign_policies(fed: Federation, policy_dir: Path) -> dict[str, Path]:
    """Sign ``<policy_dir>/<cc>.yaml`` for every country with that country's CA key."""
    base = fed.settings.base
    signed: dict[str, Path] = {}
    for code in fed.settings.countries:
        source = policy_dir / f"{code.lower()}.yaml"
        if not source.exists():
            continue
        ca = PkiStore(party_dir(fed.settings, code)).read_certified(country_stem(code, "ca"))
        token = sign_policy(source.read_bytes(), ca_key=ca.key, ca_cert=ca.cert, source=str(source))
        out = base / POLICY_DIR / f"{code.lower()}.policy.jws"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(token + "\n", encoding="utf-8")
        signed[code] = out
    return signed


def prepare(fed: Federation, *, policy_dir: Path | None) -> list[NodeEndpoint]:
    """Write gateway and node settings and register their processes with ``fed``."""
    base = fed.settings.base
    signed = sign_policies(fed, policy_dir) if policy_dir is not None else {}
    processes: list[ProcessSpec] = []
    endpoints: list[NodeEndpoint] = []
    for code, gateway in sorted(fed.settings.gateways.items()):
        if code not in signed:
            raise ConfigError(f"no policy for {code} in {policy_dir}: its gateway would deny all")
        ca_cert = party_dir(fed.settings, code) / f"{country_stem(code, 'ca')}.pem"
        path = base / SETTINGS_DIR / f"{gateway.agency_id}.json"
        doc = _settings_json(
            gateway,
            base=base,
            fed=fed,
            policy=signed[code],
            policy_ca=ca_cert,
            token_file=None,
        )
        _write_private(path, json.dumps(doc, indent=2) + "\n")
        processes.append(
            ProcessSpec(
                name=f"gateway-{code.lower()}",
                argv=("{python}", "-m", "broker.cli", "gateway", "--settings", str(path)),
                country=code,
            )
        )
    for agency_id, node in sorted(fed.settings.nodes.items()):
        code = node.country
        ca_cert = party_dir(fed.settings, code) / f"{country_stem(code, 'ca')}.pem"
        # Prefixed: a URL-safe token may start with "-", which a command line such as
        # `casebridge inbox --token $TOKEN` would read as an option (1 token in 64).
        token = "cbn_" + secrets.token_urlsafe(24)
        token_file = base / SETTINGS_DIR / f"{agency_id}.token"
        _write_private(token_file, token)
        path = base / SETTINGS_DIR / f"{agency_id}.json"
        doc = _settings_json(
            node,
            base=base,
            fed=fed,
            policy=signed.get(code),
            policy_ca=ca_cert if code in signed else None,
            token_file=token_file,
        )
        _write_private(path, json.dumps(doc, indent=2) + "\n")
        processes.append(
            ProcessSpec(
                name=f"node-{agency_id}",
                argv=("{python}", "-m", "broker.cli", "node", "--settings", str(path)),
                country=code,
            )
        )
        endpoints.append(
            NodeEndpoint(
                agency_id=agency_id,
                url=f"http://127.0.0.1:{node.http_port}",
                token=token,
                settings=path,
            )
        )
    (base / STORE_DIR).mkdir(parents=True, exist_ok=True)
    processes.append(exporter_process(fed))
    fed.set_processes(processes)
    return endpoints


def endpoints(fed: Federation) -> list[NodeEndpoint]:
    """The node API endpoints of an initialised federation (tokens read from their files)."""
    base = fed.settings.base
    out = []
    for agency_id, node in sorted(fed.settings.nodes.items()):
        token_file = base / SETTINGS_DIR / f"{agency_id}.token"
        if not token_file.exists():
            continue
        out.append(
            NodeEndpoint(
                agency_id=agency_id,
                url=f"http://127.0.0.1:{node.http_port}",
                token=token_file.read_text(encoding="utf-8").strip(),
                settings=base / SETTINGS_DIR / f"{agency_id}.json",
            )
        )
    return out
