"""A federation built through the key ceremony only, running on real nats-server processes.

Issue 14 acceptance: each country's material in its own directory, made there; the hub runs
from a bundle with no country secret; servers are named by the host and port in the federation
description; a message crosses with its evidence; and no country directory ever holds another
party's private key. Then an agreement-key rotation with messages in flight to the old key:
all of them are opened by the node's key ring.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from broker.cli import main
from broker.cli.focal import NodeClient
from broker.core.trust import cert_kid
from broker.federation import processes
from broker.federation.launcher import Federation, free_port
from broker.pki import ceremony
from broker.pki.keyfiles import read_private_key
from broker.pki.store import PkiStore, agency_stem
from tests.ceremony_world import CeremonyWorld, CountryPlan, build, pki
from tests.integration.e2e_helpers import Running, bulletin, request_de_ua, wait_until

pytestmark = pytest.mark.integration

LKA: Final = "de.lka-berlin"
NPU: Final = "ua.npu"
DELIVERY: Final = 20.0
HOST: Final = "127.0.0.1"
IN_FLIGHT: Final = 5
PLANS: Final = (
    CountryPlan(
        code="DE", name="Germany", eu=True, agencies=((LKA, "law_enforcement", "LKA Berlin"),)
    ),
    CountryPlan(
        code="UA", name="Ukraine", eu=False, agencies=((NPU, "law_enforcement", "National Police"),)
    ),
)


@dataclass
class CeremonyFederation:
    """The ceremony's directories and the federation running from them."""

    world: CeremonyWorld
    hub_bundle: Path
    running: Running


def _description() -> dict[str, Any]:
    def server() -> dict[str, Any]:
        return {"host": HOST, "client_port": free_port(), "http_port": free_port()}

    return {
        "federation": "ceremony",
        "hub": {
            "domain": "hub.casebridge.test",
            "host": HOST,
            "client_port": free_port(),
            "http_port": free_port(),
            "leaf_port": free_port(),
        },
        "countries": [
            {
                "code": p.code,
                "name": p.name,
                "eu": p.eu,
                "server": server(),
                "agencies": [{"id": a, "kind": k, "name": n} for a, k, n in p.agencies],
            }
            for p in PLANS
        ],
    }


@pytest.fixture(scope="module")
def ceremony_fed(
    nats_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeremonyFederation]:
    """DE and UA brought in through the ceremony, the hub from its bundle; both gateways and
    the LKA and NPU nodes running from their countries' directories."""
    del nats_binary
    base = tmp_path_factory.mktemp("ceremony-fed")
    raw = _description()
    travel = base / "travel"
    travel.mkdir()
    fed_file = travel / "federation.yaml"
    fed_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    world = build(base, federation_id="ceremony", plans=PLANS, federation_file=fed_file)
    run = base / "run"
    assert main(["federation", "hub-bundle", str(fed_file), "--secretariat",
                 str(world.secretariat), "--hub", str(world.hub)]) == 0  # fmt: skip
    countries = [f"{code}={path}" for code, path in world.countries.items()]
    assert main(["federation", "from-bundles", str(fed_file), str(run), "--hub", str(world.hub),
                 *(arg for c in countries for arg in ("--country", c))]) == 0  # fmt: skip
    fed = Federation.open(run)
    clients = {e.agency_id: NodeClient(e.url, e.token) for e in processes.endpoints(fed)}
    hub_bundle = world.hub
    running = Running(fed=fed, clients=clients)
    try:
        fed.up()
        running.wait_started()
        yield CeremonyFederation(world=world, hub_bundle=hub_bundle, running=running)
    finally:
        running.close()


def _public_keys(directory: Path) -> dict[bytes, Path]:
    """Every private key file under ``directory``, by the public key it holds."""
    found = {}
    for path in ceremony.private_key_files(directory):
        if path.suffix != ".key":
            continue
        public = read_private_key(path).public_key()
        found[public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )] = path  # fmt: skip
    return found


def _recipient_kids(wire: bytes) -> list[str]:
    """The key ids a sealed message's JWE has entries for (read without any key)."""
    jwe = json.loads(json.loads(wire)["jwe"])
    return [entry["header"]["kid"] for entry in jwe["recipients"]]


def _send(running: Running, sender: str, draft: dict[str, Any]) -> str:
    result: dict[str, Any] = running.client(sender).call("POST", "/v1/messages", body=draft)
    assert result["state"] == "acknowledged", result
    return str(result["message_id"])


class TestCeremonyFederation:
    def test_message_and_evidence_cross(self, ceremony_fed: CeremonyFederation) -> None:
        """DE police -> UA police: delivered once, with relay and delivery evidence."""
        running = ceremony_fed.running
        message_id = _send(running, LKA, request_de_ua())
        wait_until(
            lambda: message_id in running.inbox_ids(NPU), DELIVERY, what=f"{message_id} at NPU"
        )
        expected = {
            ("relay_accepted", "de.gateway"),
            ("relay_accepted", "ua.gateway"),
            ("delivered", NPU),
        }

        def complete() -> bool:
            trail = running.evidence(LKA, message_id)
            return expected <= {(e["kind"], e["actor"]) for e in trail}

        wait_until(complete, DELIVERY, what="evidence at LKA")
        assert running.inbox_ids(NPU).count(message_id) == 1

    def test_no_directory_holds_another_partys_key(self, ceremony_fed: CeremonyFederation) -> None:
        """Every private key in a country's directory is that country's (by path and by key);
        the hub bundle holds only the hub's key; nothing that travelled holds a key."""
        world = ceremony_fed.world
        by_party = {code: _public_keys(path) for code, path in world.countries.items()}
        by_party["hub"] = _public_keys(ceremony_fed.hub_bundle)
        by_party["secretariat"] = _public_keys(world.secretariat)
        for code, keys in by_party.items():
            assert keys, f"{code} holds its own keys"
            for other, other_keys in by_party.items():
                if other != code:
                    shared = set(keys) & set(other_keys)
                    assert not shared, f"{code} and {other} share {[keys[k] for k in shared]}"
        for code, path in world.countries.items():
            for key in ceremony.private_key_files(path):
                parts = key.relative_to(path).parts
                owner = parts[1] if parts[0] == "countries" else parts[1].split(".")[0]
                assert owner == code.lower(), f"{key} in {code}'s directory"
        assert [p.name for p in ceremony.private_key_files(ceremony_fed.hub_bundle)] == ["hub.key"]
        assert ceremony.private_key_files(world.base / "travel") == []
        configs = (ceremony_fed.running.fed.base / "nats").glob("*.conf")
        for config in configs:
            # Each server's configuration names only its own party's key files.
            party = "hub" if config.stem == "hub" else config.stem
            own = ceremony_fed.hub_bundle if party == "hub" else world.countries[party.upper()]
            for line in config.read_text().splitlines():
                if "key_file" in line:
                    assert str(own) in line, f"{config.name}: {line.strip()}"


class TestAgreementKeyRotation:
    def test_messages_in_flight_to_the_old_key_all_opened(
        self, ceremony_fed: CeremonyFederation
    ) -> None:
        """NPU is down while DE sends to its old agreement key; UA rotates that key (ceremony:
        rotate, sign, CRL, export, accept, new directory, join); NPU restarts with the new key
        and the old one in its ring: every message sent before and after is opened."""
        running, world = ceremony_fed.running, ceremony_fed.world
        ua = world.countries["UA"]
        running.fed.stop(f"node-{NPU}")
        old_kid = cert_kid(NPU, PkiStore(ua).read_cert(agency_stem(NPU, "agreement")))
        before = [_send(running, LKA, bulletin([NPU])) for _ in range(IN_FLIGHT)]
        wait_until(
            lambda: set(before) <= set(running.stream_ids("UA", "DELIVER")),
            DELIVERY,
            what="in-flight messages waiting for NPU",
        )
        for message_id in before:
            # Sealed to the key about to be replaced, and to nothing else.
            assert _recipient_kids(running.wire_of("UA", "DELIVER", message_id)) == [old_kid]

        prefix, kept = ceremony.rotate_agreement(PkiStore(ua), agency_id=NPU)
        pki(ua, "sign-agency", str(prefix))
        pki(ua, "crl")
        public = world.base / "travel" / "public-ua-2"
        pki(ua, "export-country", "--out", str(public))
        pki(world.secretariat, "accept-country", str(public))
        pki(world.secretariat, "directory", "--valid-hours", "48")
        for here in world.countries.values():
            pki(here, "join", "--directory", str(world.directory))

        settings_file = running.fed.base / processes.SETTINGS_DIR / f"{NPU}.json"
        doc = json.loads(settings_file.read_text(encoding="utf-8"))
        doc["keys"]["previous_agreement"] = [
            {"key": str(kept), "cert": str(kept.with_suffix(".pem"))}
        ]
        doc["keys"]["agreement_grace_hours"] = 24
        settings_file.write_text(json.dumps(doc), encoding="utf-8")
        running.restart(f"node-{NPU}", country="UA")

        wait_until(
            lambda: set(before) <= set(running.inbox_ids(NPU)),
            DELIVERY * 2,
            what="every in-flight message opened",
        )
        new_kid = cert_kid(NPU, PkiStore(ua).read_cert(agency_stem(NPU, "agreement")))
        assert new_kid != old_kid
        after = _send(running, LKA, bulletin([NPU]))
        wait_until(lambda: after in running.inbox_ids(NPU), DELIVERY, what="message after")
        refused = [r for r in running.rejections(NPU) if r.get("message_id") in before]
        assert refused == []
        assert all(running.inbox_ids(NPU).count(m) == 1 for m in [*before, after])
