"""The node's settings: one frozen value object read from a JSON file at the edge.

Relative paths in the file are resolved against the file's directory. The API token is read
from ``api.token_file`` (never written in the settings file itself) or ``$CASEBRIDGE_NODE_TOKEN``.
Private keys may be encrypted with ``$CASEBRIDGE_KEY_PASSPHRASE`` (as ``casebridge pki`` writes
them). Nothing else in the node reads the environment or these files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from broker.console.settings import ConsoleSettings, parse_console
from broker.core.header import AGENCY_RE
from broker.errors import ConfigError
from broker.nats.settings import NatsSettings
from broker.node.attachment_scan import AttachmentSettings
from broker.node.events import DEFAULT_RETENTION_DAYS, retention_days
from broker.node.retention import RetentionPolicy
from broker.node.webhooks import WebhookSettings

__all__ = ["ApiSettings", "KeySettings", "NatsSettings", "Settings", "load_settings"]

TOKEN_ENV: Final = "CASEBRIDGE_NODE_TOKEN"  # noqa: S105 - a variable name, not a secret
DEFAULT_PORT: Final = 8470
_TOP: Final = frozenset(
    {
        "agency",
        "nats",
        "keys",
        "directory",
        "policy",
        "store",
        "api",
        "message_lifetime_days",
        "retention",
        "audit",
        "fair_share",  # gateway-only (broker/gateway/settings.py): accepted, never read
        "clock_offset_seconds",
        "events",
        "webhooks",
        "console",
        "lookup",
        "attachments",
    }
)
DEFAULT_CHECKPOINT_SECONDS: Final = 300.0
# How long a replaced key-agreement key still opens messages sealed to it: a message may wait
# in an outbox while its destination is away, up to its lifetime (message_lifetime_days).
DEFAULT_AGREEMENT_GRACE: Final = timedelta(days=30)
_PREVIOUS: Final = frozenset({"key", "cert"})


@dataclass(frozen=True, kw_only=True, slots=True)
class PreviousAgreementKey:
    """A key-agreement key the current one replaced (PEM files), kept for messages in flight."""

    key: Path
    cert: Path


@dataclass(frozen=True, kw_only=True, slots=True)
class KeySettings:
    """The agency's signing and key-agreement keys and certificates (PEM files).

    ``previous_agreement``: keys the current agreement key replaced, newest first; each opens
    messages sealed to it for ``agreement_grace`` after the current agreement certificate's
    notBefore (default 30 days), then it is dropped from the ring.
    """

    signing_key: Path
    signing_cert: Path
    agreement_key: Path
    agreement_cert: Path
    previous_agreement: tuple[PreviousAgreementKey, ...] = ()
    agreement_grace: timedelta = DEFAULT_AGREEMENT_GRACE


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiSettings:
    """The local HTTP API: bind address (loopback by default) and bearer token."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str = ""

    def __repr__(self) -> str:  # never print the token
        return f"ApiSettings(host={self.host!r}, port={self.port}, token=<hidden>)"


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Everything a node needs to start."""

    agency: str
    nats: NatsSettings
    keys: KeySettings
    directory_file: Path
    root_cert: Path
    store_path: Path
    api: ApiSettings
    policy_file: Path | None = None
    policy_ca_cert: Path | None = None
    message_lifetime_days: int = 30
    # docs/data-protection.md: body retention per message type, audit checkpoint interval
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS
    # Fault tests only (the chaos suite's "node clock 5 minutes off"): added to the wall clock
    # the node seals, verifies and stamps with. Never set it in production.
    clock_offset_seconds: float = 0.0
    # The change feed's retention and webhook delivery (broker.node.events, .webhooks)
    events_retention_days: int = DEFAULT_RETENTION_DAYS
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    # The focal-point console (broker/console/settings.py); None: not served
    console: ConsoleSettings | None = None
    # Hit/no-hit lookups (broker/node/lookup.py): the lookup settings file, with the pairwise
    # keys; None: this node neither answers nor sends lookups.
    lookup_file: Path | None = None
    # Files of messages: upload limit and scanner hook (broker/node/attachment_scan.py)
    attachments: AttachmentSettings = field(default_factory=AttachmentSettings)


def _obj(raw: Any, what: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"settings: {what} must be an object")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"settings: unknown members {unknown} in {what}")
    return raw


def _text(raw: dict[str, Any], name: str, what: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"settings: {what}.{name} must be a non-empty string")
    return value


def load_settings(path: Path | str, *, env: dict[str, str] | None = None) -> Settings:
    """Read and check a settings file (format: ``docs/node-api.md``)."""
    path = Path(path)
    environ = dict(os.environ) if env is None else env
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable settings: {exc}") from None
    top = _obj(raw, "settings", _TOP)
    base = path.resolve().parent

    def file(value: str) -> Path:
        return (base / value).resolve()

    agency = _text(top, "agency", "settings")
    if not AGENCY_RE.fullmatch(agency):
        raise ConfigError(f"settings: agency {agency!r} is not an agency id")
    nats = _obj(top.get("nats"), "nats", frozenset({"url", "ca_file", "cert_file", "key_file"}))
    keys = _obj(
        top.get("keys"),
        "keys",
        frozenset(
            {
                "signing_key",
                "signing_cert",
                "agreement_key",
                "agreement_cert",
                "previous_agreement",
                "agreement_grace_hours",
            }
        ),
    )
    previous = keys.get("previous_agreement", [])
    if not isinstance(previous, list):
        raise ConfigError("settings: keys.previous_agreement must be a list of {key, cert}")
    previous_keys = tuple(
        PreviousAgreementKey(
            key=file(_text(_obj(entry, "keys.previous_agreement[]", _PREVIOUS), "key", "keys")),
            cert=file(_text(_obj(entry, "keys.previous_agreement[]", _PREVIOUS), "cert", "keys")),
        )
        for entry in previous
    )
    grace_hours = keys.get("agreement_grace_hours", DEFAULT_AGREEMENT_GRACE / timedelta(hours=1))
    if not isinstance(grace_hours, int | float) or isinstance(grace_hours, bool):
        raise ConfigError("settings: keys.agreement_grace_hours must be a number")
    if not 0 <= grace_hours <= 24 * 366:
        raise ConfigError("settings: keys.agreement_grace_hours must be 0-8784")
    directory = _obj(top.get("directory"), "directory", frozenset({"file", "root_cert"}))
    api = _obj(top.get("api", {}), "api", frozenset({"host", "port", "token_file"}))
    policy = top.get("policy")
    if policy is not None:
        policy = _obj(policy, "policy", frozenset({"file", "ca_cert"}))
    token = environ.get(TOKEN_ENV, "")
    if "token_file" in api:
        try:
            token = file(_text(api, "token_file", "api")).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"settings: api.token_file unreadable: {exc.strerror}") from None
    if len(token) < 16:
        raise ConfigError(
            f"settings: an API token of 16+ characters (api.token_file or {TOKEN_ENV})"
        )
    port = api.get("port", DEFAULT_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigError("settings: api.port must be a TCP port")
    lifetime = top.get("message_lifetime_days", 30)
    if not isinstance(lifetime, int) or isinstance(lifetime, bool) or not 0 < lifetime <= 90:
        raise ConfigError("settings: message_lifetime_days must be 1-90")
    audit = _obj(top.get("audit", {}), "audit", frozenset({"checkpoint_seconds"}))
    checkpoint_seconds = audit.get("checkpoint_seconds", DEFAULT_CHECKPOINT_SECONDS)
    if not isinstance(checkpoint_seconds, int | float) or not 0 < checkpoint_seconds <= 86400:
        raise ConfigError("settings: audit.checkpoint_seconds must be 1-86400")
    offset = top.get("clock_offset_seconds", 0)
    if not isinstance(offset, int | float) or isinstance(offset, bool) or abs(offset) > 86400:
        raise ConfigError("settings: clock_offset_seconds must be a number within a day")
    lookup = _obj(top["lookup"], "lookup", frozenset({"file"})) if "lookup" in top else None
    store = top.get("store")
    if not isinstance(store, str) or not store:
        raise ConfigError("settings: store must be the SQLite file path")
    return Settings(
        agency=agency,
        nats=NatsSettings(
            url=_text(nats, "url", "nats"),
            ca_file=file(nats["ca_file"]) if nats.get("ca_file") else None,
            cert_file=file(nats["cert_file"]) if nats.get("cert_file") else None,
            key_file=file(nats["key_file"]) if nats.get("key_file") else None,
        ),
        keys=KeySettings(
            signing_key=file(_text(keys, "signing_key", "keys")),
            signing_cert=file(_text(keys, "signing_cert", "keys")),
            agreement_key=file(_text(keys, "agreement_key", "keys")),
            agreement_cert=file(_text(keys, "agreement_cert", "keys")),
            previous_agreement=previous_keys,
            agreement_grace=timedelta(hours=grace_hours),
        ),
        directory_file=file(_text(directory, "file", "directory")),
        root_cert=file(_text(directory, "root_cert", "directory")),
        store_path=file(store),
        api=ApiSettings(host=str(api.get("host", "127.0.0.1")), port=port, token=token),
        policy_file=file(_text(policy, "file", "policy")) if policy else None,
        policy_ca_cert=file(_text(policy, "ca_cert", "policy")) if policy else None,
        message_lifetime_days=lifetime,
        retention=RetentionPolicy.from_json(top.get("retention")),
        checkpoint_seconds=float(checkpoint_seconds),
        clock_offset_seconds=float(offset),
        events_retention_days=retention_days(top.get("events")),
        webhooks=WebhookSettings.from_json(top.get("webhooks")),
        console=parse_console(top.get("console"), base),
        lookup_file=file(_text(lookup, "file", "lookup")) if lookup else None,
        attachments=AttachmentSettings.from_json(top.get("attachments")),
    )
