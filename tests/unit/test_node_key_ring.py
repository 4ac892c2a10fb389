"""Node settings of the agreement-key ring: previous keys, grace period, key/cert pairing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.errors import ConfigError
from broker.node.runtime import previous_agreement_keys
from broker.node.settings import DEFAULT_AGREEMENT_GRACE, load_settings
from broker.pki.dev import DevFederation
from broker.pki.store import PkiStore

ENV = {"CASEBRIDGE_NODE_TOKEN": "t" * 32}
AGENCY = "de.lka-berlin"


def _settings(tmp_path: Path, **keys: Any) -> Path:
    doc = {
        "agency": AGENCY,
        "nats": {"url": "nats://127.0.0.1:4222"},
        "keys": {
            "signing_key": "k.pem",
            "signing_cert": "c.pem",
            "agreement_key": "ak.pem",
            "agreement_cert": "ac.pem",
        }
        | keys,
        "directory": {"file": "directory.json", "root_cert": "root.pem"},
        "store": "node.sqlite",
    }
    path = tmp_path / "node.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


class TestSettings:
    def test_defaults(self, tmp_path: Path) -> None:
        """No previous keys and a 30-day grace unless configured."""
        keys = load_settings(_settings(tmp_path), env=ENV).keys
        assert keys.previous_agreement == ()
        assert keys.agreement_grace == DEFAULT_AGREEMENT_GRACE == timedelta(days=30)

    def test_previous_keys_and_grace(self, tmp_path: Path) -> None:
        """Previous keys are read in order, paths resolved against the settings file."""
        path = _settings(
            tmp_path,
            previous_agreement=[{"key": "old.key", "cert": "old.pem"}],
            agreement_grace_hours=48,
        )
        keys = load_settings(path, env=ENV).keys
        assert [(p.key.name, p.cert.name) for p in keys.previous_agreement] == [
            ("old.key", "old.pem")
        ]
        assert keys.previous_agreement[0].key.parent == tmp_path.resolve()
        assert keys.agreement_grace == timedelta(hours=48)

    @pytest.mark.parametrize(
        ("members", "message"),
        [
            ({"previous_agreement": {"key": "a", "cert": "b"}}, "must be a list"),
            ({"previous_agreement": [{"key": "a"}]}, "cert"),
            ({"previous_agreement": [{"key": "a", "cert": "b", "until": "x"}]}, "until"),
            ({"agreement_grace_hours": "48"}, "agreement_grace_hours"),
            ({"agreement_grace_hours": -1}, "agreement_grace_hours"),
            ({"agreement_grace_hours": True}, "agreement_grace_hours"),
        ],
    )
    def test_bad_values_refused_at_start(
        self, tmp_path: Path, members: dict[str, Any], message: str
    ) -> None:
        """A malformed ring or grace period is a configuration error naming the member."""
        with pytest.raises(ConfigError, match=message):
            load_settings(_settings(tmp_path, **members), env=ENV)


class TestRing:
    def test_grace_counts_from_the_current_certificate(
        self, tmp_path: Path, dev_federation: DevFederation
    ) -> None:
        """A previous key is kept until the current certificate's notBefore plus the grace."""
        store = PkiStore(tmp_path / "pki", passphrase=None)
        old = dev_federation.agency(AGENCY)
        current = dev_federation.agency("de.sta-berlin")  # any other agreement certificate
        store.write_certified("old", old.agreement)
        path = _settings(
            tmp_path,
            previous_agreement=[{"key": "pki/old.key", "cert": "pki/old.pem"}],
            agreement_grace_hours=24,
        )
        ring = previous_agreement_keys(load_settings(path, env=ENV), current.agreement.cert)
        assert [r.kid for r in ring] == [old.agreement_kid]
        start: datetime = current.agreement.cert.not_valid_before_utc
        assert ring[0].until == start + timedelta(hours=24)

    def test_key_not_matching_its_certificate_refused(
        self, tmp_path: Path, dev_federation: DevFederation
    ) -> None:
        """A previous key listed with another key's certificate stops the node at start."""
        store = PkiStore(tmp_path / "pki", passphrase=None)
        agency = dev_federation.agency(AGENCY)
        store.write_key("old", agency.signing.key)
        store.write_cert("old", agency.agreement.cert)
        path = _settings(
            tmp_path, previous_agreement=[{"key": "pki/old.key", "cert": "pki/old.pem"}]
        )
        with pytest.raises(ConfigError, match="not the key of"):
            previous_agreement_keys(load_settings(path, env=ENV), agency.agreement.cert)
