"""Per-party bundles of `federation init` and server addresses in the federation description."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from broker.core.directory import Directory
from broker.errors import ConfigError
from broker.federation.launcher import BUNDLES_KEY, HUB, Federation, new_settings, render_configs
from broker.federation.spec import parse_description
from broker.pki import ceremony
from broker.pki.keyfiles import read_private_key
from broker.pki.store import ROOT, PkiStore
from tests.ceremony_world import pki

SMALL: dict[str, Any] = {
    "federation": "bundles",
    "countries": [
        {
            "code": "DE",
            "name": "Germany",
            "eu": True,
            "agencies": [{"id": "de.lka-berlin", "kind": "law_enforcement", "name": "LKA"}],
        },
        {
            "code": "UA",
            "name": "Ukraine",
            "eu": False,
            "agencies": [{"id": "ua.npu", "kind": "law_enforcement", "name": "NPU"}],
        },
    ],
}
ADDRESSED: dict[str, Any] = {
    **SMALL,
    "hub": {
        "domain": "hub.casebridge.test",
        "host": "192.0.2.1",
        "client_port": 4222,
        "http_port": 8222,
        "leaf_port": 7422,
    },
    "countries": [
        {
            **SMALL["countries"][0],
            "server": {"host": "nats.de", "client_port": 4223, "http_port": 8223},
        },
        {
            **SMALL["countries"][1],
            "server": {"host": "192.0.2.3", "client_port": 4224, "http_port": 8224},
        },
    ],
}


def _keys(directory: Path) -> dict[bytes, Path]:
    out = {}
    for path in ceremony.private_key_files(directory):
        public = (
            read_private_key(path)
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        out[public] = path
    return out


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """`federation init` of DE + UA (writes pki/ and bundles/)."""
    base = tmp_path_factory.mktemp("init") / "fed"
    return Federation.init(parse_description(SMALL), base, now=datetime.now(UTC))


class TestAddresses:
    def test_round_trip(self) -> None:
        """Hub and server addresses survive the description's JSON form."""
        description = parse_description(ADDRESSED)
        assert description.hub_address is not None
        assert description.hub_address.leaf_port == 7422
        assert description.country("UA").server is not None
        assert parse_description(description.to_json()) == description

    def test_settings_use_the_named_addresses(self, tmp_path: Path) -> None:
        """Servers listen where the description says, not on loopback ports picked here."""
        settings = new_settings(parse_description(ADDRESSED), tmp_path)
        assert (settings.hub.host, settings.hub.leaf_port) == ("192.0.2.1", 7422)
        assert settings.country("DE").url == "tls://nats.de:4223"
        assert settings.country("UA").monitor_url == "http://192.0.2.3:8224"
        assert settings.nodes["de.lka-berlin"].nats_url == "tls://nats.de:4223"

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"hub": {"host": "192.0.2.1"}}, "an address needs all of"),
            (
                {"hub": {"host": "a b", "client_port": 1, "http_port": 2, "leaf_port": 3}},
                "not a DNS",
            ),
            (
                {"hub": {"host": "h.test", "client_port": 0, "http_port": 2, "leaf_port": 3}},
                "TCP port",
            ),
        ],
    )
    def test_bad_address_refused(self, change: dict[str, Any], message: str) -> None:
        """A partial hub address, a bad host or a bad port is a ConfigError naming the field."""
        with pytest.raises(ConfigError, match=message):
            parse_description({**SMALL, **change})


class TestDevBundles:
    def test_each_bundle_holds_only_its_partys_keys(self, initialised: Federation) -> None:
        """A country's bundle holds its own keys only; the hub's only the hub key; no two
        bundles share a key."""
        bundles = initialised.base / BUNDLES_KEY
        by_party = {p.name: _keys(p) for p in bundles.iterdir()}
        assert set(by_party) == {"secretariat", "hub", "de", "ua"}
        assert [p.name for p in by_party["hub"].values()] == ["hub.key"]
        assert sorted(
            str(p.relative_to(bundles / "secretariat")) for p in by_party["secretariat"].values()
        ) == [
            "root/ca.key",
            "secretariat/ca.key",
            "secretariat/publisher.key",  # its directory-publishing credential
        ]
        for code in ("de", "ua"):
            for path in by_party[code].values():
                parts = path.relative_to(bundles / code).parts
                owner = parts[1] if parts[0] == "countries" else parts[1].split(".")[0]
                assert owner == code
        seen: dict[bytes, str] = {}
        for party, keys in by_party.items():
            for public in keys:
                assert public not in seen, f"{party} and {seen[public]} share a key"
                seen[public] = party

    def test_servers_configured_from_their_own_bundles(self, initialised: Federation) -> None:
        """With bundles in the settings, each server's configuration names only key files of
        its own party's bundle."""
        bundles = initialised.base / BUNDLES_KEY
        settings = replace(
            initialised.settings,
            extra={
                BUNDLES_KEY: {
                    HUB: str(bundles / "hub"),
                    "DE": str(bundles / "de"),
                    "UA": str(bundles / "ua"),
                }
            },
        )
        for config, text in render_configs(settings).items():
            party = "hub" if config.stem == "hub" else config.stem
            key_lines = [line for line in text.splitlines() if "key_file" in line]
            assert key_lines
            assert all(str(bundles / party) in line for line in key_lines), config.name

    def test_secretariat_bundle_signs_from_country_crls(self, initialised: Federation) -> None:
        """Holding no country key, the secretariat's bundle signs the next directory from the
        CRLs the countries signed; it loads without problems."""
        sec = initialised.base / BUNDLES_KEY / "secretariat"
        pki(sec, "directory", "--valid-hours", "24")
        loaded = Directory.load(
            (sec / "directory.jws").read_bytes(),
            root_cert=PkiStore(sec).read_cert(ROOT),
            now=datetime.now(UTC),
        )
        assert loaded.problems == ()
        assert loaded.serial == 2
