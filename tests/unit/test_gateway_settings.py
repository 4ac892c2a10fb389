"""A border gateway's own settings: no decryption key, no API token (broker/gateway/settings.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from broker.errors import ConfigError
from broker.gateway.settings import (
    GatewaySettings,
    MetricsEndpoint,
    SigningKeys,
    load_gateway_settings,
)


def _write(tmp_path: Path, **members: Any) -> Path:
    doc = {
        "agency": "de.gateway",
        "nats": {"url": "nats://127.0.0.1:4222", "ca_file": "ca.pem"},
        "keys": {"signing_key": "k.pem", "signing_cert": "c.pem"},
        "directory": {"file": "directory.json", "root_cert": "root.pem"},
        "store": "gateway.sqlite",
        "api": {"host": "127.0.0.1", "port": 9470},
        "policy": {"file": "de.policy.jws", "ca_cert": "de-ca.pem"},
    } | members
    path = tmp_path / "de.gateway.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


class TestGatewaySettings:
    def test_reads_the_launcher_format_with_paths_resolved(self, tmp_path: Path) -> None:
        """Every path resolves against the file's directory; the api member is the metrics port."""
        settings = load_gateway_settings(_write(tmp_path))
        assert settings.agency == "de.gateway"
        assert settings.keys.signing_key == (tmp_path / "k.pem").resolve()
        assert settings.nats.ca_file == (tmp_path / "ca.pem").resolve()
        assert settings.store_path == (tmp_path / "gateway.sqlite").resolve()
        assert settings.policy_file == (tmp_path / "de.policy.jws").resolve()
        assert (settings.api.host, settings.api.port) == ("127.0.0.1", 9470)

    def test_holds_no_decryption_key_and_no_token(self) -> None:
        """The value object has no member for a key-agreement key or an API token."""
        names = {
            f.name
            for cls in (GatewaySettings, SigningKeys, MetricsEndpoint)
            for f in dataclasses.fields(cls)
        }
        assert not {n for n in names if "agreement" in n or "token" in n}

    def test_old_node_format_members_are_accepted_but_never_read(self, tmp_path: Path) -> None:
        """Files of older launchers name a key-agreement key and a token file: both absent on
        disk, the file still loads (they are never opened) and nothing of them is kept."""
        keys = {
            "signing_key": "k.pem",
            "signing_cert": "c.pem",
            "agreement_key": "missing-ak.pem",
            "agreement_cert": "missing-ac.pem",
        }
        api = {"port": 9471, "token_file": "missing.token"}
        settings = load_gateway_settings(_write(tmp_path, keys=keys, api=api))
        assert "missing" not in repr(settings)

    def test_unknown_members_are_refused(self, tmp_path: Path) -> None:
        """A member the gateway does not know is a configuration error, not silently ignored."""
        with pytest.raises(ConfigError, match="unknown members"):
            load_gateway_settings(_write(tmp_path, retention={}))

    def test_agency_must_be_an_agency_id(self, tmp_path: Path) -> None:
        """An agency that is not an agency id is refused."""
        with pytest.raises(ConfigError, match="not an agency id"):
            load_gateway_settings(_write(tmp_path, agency="DE GATEWAY"))
