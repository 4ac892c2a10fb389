"""A border gateway's settings: one frozen value object read from a JSON file at the edge.

What it is for
    Everything a gateway needs to start: its identity and signing key (it signs
    ``relay_accepted``/``relay_rejected`` evidence), its NATS connection, the directory and
    root, its country's signed policy, its ledger file, where it serves metrics, fair sharing.

What it must never hold
    A decryption (key-agreement) key or an API token: a gateway reads no case content and
    serves no API. The file format is the node's (docs/node-api.md) minus those: files written
    by older launchers still carry ``keys.agreement_*`` and ``api.token_file``; they are
    accepted and never read (the keys are not even opened). Relative paths resolve against
    the file's directory. Private keys may be encrypted with ``$CASEBRIDGE_KEY_PASSPHRASE``
    (read where the key is read, ``broker/pki/keyfiles.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from broker.core.header import AGENCY_RE
from broker.errors import ConfigError
from broker.gateway.fairness import FairShare
from broker.nats.settings import NatsSettings

DEFAULT_METRICS_PORT: Final = 8470
_TOP: Final = frozenset(
    {"agency", "nats", "keys", "directory", "policy", "store", "api", "fair_share"}
)
# Written by older launchers (the node's format): accepted, never read.
_IGNORED_KEYS: Final = frozenset({"agreement_key", "agreement_cert"})
_IGNORED_API: Final = frozenset({"token_file"})


@dataclass(frozen=True, kw_only=True, slots=True)
class SigningKeys:
    """The gateway's signing key and certificate (PEM files): its only private key."""

    signing_key: Path
    signing_cert: Path


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricsEndpoint:
    """Where the gateway serves ``/metrics`` (the settings member ``api``: host and port)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_METRICS_PORT


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewaySettings:
    """Everything a border gateway needs to start (no decryption key, no API token)."""

    agency: str
    nats: NatsSettings
    keys: SigningKeys
    directory_file: Path
    root_cert: Path
    store_path: Path
    api: MetricsEndpoint = field(default_factory=MetricsEndpoint)
    policy_file: Path | None = None
    policy_ca_cert: Path | None = None
    fair_share: FairShare = field(default_factory=FairShare)


def _obj(raw: Any, what: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"gateway settings: {what} must be an object")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"gateway settings: unknown members {unknown} in {what}")
    return raw


def _text(raw: dict[str, Any], name: str, what: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"gateway settings: {what}.{name} must be a non-empty string")
    return value


def gateway_settings_from_json(raw: object, *, base: Path) -> GatewaySettings:
    """Check a parsed settings document; relative paths resolve against ``base``."""
    top = _obj(raw, "settings", _TOP)

    def file(value: str) -> Path:
        return (base / value).resolve()

    agency = _text(top, "agency", "settings")
    if not AGENCY_RE.fullmatch(agency):
        raise ConfigError(f"gateway settings: agency {agency!r} is not an agency id")
    nats = _obj(top.get("nats"), "nats", frozenset({"url", "ca_file", "cert_file", "key_file"}))
    keys = _obj(top.get("keys"), "keys", frozenset({"signing_key", "signing_cert"} | _IGNORED_KEYS))
    directory = _obj(top.get("directory"), "directory", frozenset({"file", "root_cert"}))
    api = _obj(top.get("api", {}), "api", frozenset({"host", "port"} | _IGNORED_API))
    policy = top.get("policy")
    if policy is not None:
        policy = _obj(policy, "policy", frozenset({"file", "ca_cert"}))
    port = api.get("port", DEFAULT_METRICS_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigError("gateway settings: api.port must be a TCP port")
    store = top.get("store")
    if not isinstance(store, str) or not store:
        raise ConfigError("gateway settings: store must be the SQLite ledger path")
    return GatewaySettings(
        agency=agency,
        nats=NatsSettings(
            url=_text(nats, "url", "nats"),
            ca_file=file(nats["ca_file"]) if nats.get("ca_file") else None,
            cert_file=file(nats["cert_file"]) if nats.get("cert_file") else None,
            key_file=file(nats["key_file"]) if nats.get("key_file") else None,
        ),
        keys=SigningKeys(
            signing_key=file(_text(keys, "signing_key", "keys")),
            signing_cert=file(_text(keys, "signing_cert", "keys")),
        ),
        directory_file=file(_text(directory, "file", "directory")),
        root_cert=file(_text(directory, "root_cert", "directory")),
        store_path=file(store),
        api=MetricsEndpoint(host=str(api.get("host", "127.0.0.1")), port=port),
        policy_file=file(_text(policy, "file", "policy")) if policy else None,
        policy_ca_cert=file(_text(policy, "ca_cert", "policy")) if policy else None,
        fair_share=FairShare.from_json(top.get("fair_share")),
    )


def load_gateway_settings(path: Path | str) -> GatewaySettings:
    """Read and check a gateway settings file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable settings: {exc}") from None
    return gateway_settings_from_json(raw, base=path.resolve().parent)
