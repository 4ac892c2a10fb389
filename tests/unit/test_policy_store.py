"""The policy store keeps the last good policy when a new file is refused, and says so."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from broker.core import jose
from broker.core.policy import POLICY_TYP, policy_kid, sign_policy
from broker.pki.dev import DevFederation
from broker.policy_store import LoadFailure, PolicyStore

REPO = Path(__file__).resolve().parents[2]
DE_POLICY = (REPO / "docs" / "policies" / "de.yaml").read_bytes()


def signed(fed: DevFederation, data: bytes, cc: str = "DE") -> str:
    ca = fed.country(cc).ca
    return jose.sign_compact(data, ca.key, kid=policy_kid(cc, ca.cert), typ=POLICY_TYP)


class Node:
    """A store for DE with its own metrics registry."""

    def __init__(self, fed: DevFederation, now: datetime) -> None:
        self.fed = fed
        self.now = now
        self.registry = CollectorRegistry()
        self.store = PolicyStore(country="DE", root_cert=fed.root.cert, registry=self.registry)

    def load(self, token: str | bytes, cc: str = "DE") -> bool:
        return self.store.load_bytes(
            token, ca_cert=self.fed.country(cc).ca.cert, now=self.now, source="de.jws"
        )

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def failures(self, reason: LoadFailure) -> float | None:
        return self.metric("casebridge_policy_load_failures_total", reason=reason.value)


@pytest.fixture
def node(dev_federation: DevFederation, fixed_now: datetime) -> Node:
    return Node(dev_federation, fixed_now)


class TestGoodLoad:
    """A good signed policy comes into force."""

    def test_loads_and_reports(self, node: Node) -> None:
        """current is the policy; version, time and success are exported; a log line says so."""
        with capture_logs() as logs:
            assert node.load(signed(node.fed, DE_POLICY))
        policy = node.store.current
        assert policy is not None
        assert policy.version == 7
        assert node.metric("casebridge_policy_version_loaded") == 7
        assert node.metric("casebridge_policy_last_load_ok") == 1
        assert node.metric("casebridge_policy_loaded_timestamp_seconds") == node.now.timestamp()
        assert logs == [
            {
                "event": "policy_loaded",
                "log_level": "info",
                "country": "DE",
                "version": 7,
                "digest": policy.digest,
                "rules": len(policy.rules),
                "source": "de.jws",
            }
        ]

    def test_newer_version_replaces(self, node: Node) -> None:
        """A higher version replaces the one in force."""
        node.load(signed(node.fed, DE_POLICY))
        assert node.load(signed(node.fed, DE_POLICY.replace(b"version: 7", b"version: 8")))
        assert node.store.current is not None
        assert node.store.current.version == 8

    def test_same_file_again(self, node: Node) -> None:
        """Reloading the identical policy is accepted (a no-op)."""
        token = signed(node.fed, DE_POLICY)
        assert node.load(token)
        assert node.load(token)


class TestKeepsLastGood:
    """A refused file leaves the last good policy in force; log and metric say why."""

    @pytest.mark.parametrize(
        ("make", "reason"),
        [
            (lambda fed: DE_POLICY, LoadFailure.SIGNATURE),
            (lambda fed: signed(fed, DE_POLICY)[:-4] + "AAAA", LoadFailure.SIGNATURE),
            (lambda fed: signed(fed, b"country: DE\nversion: 9\nrules: 1\n"), LoadFailure.INVALID),
            (
                lambda fed: signed(fed, DE_POLICY.replace(b"version: 7", b"version: 6")),
                LoadFailure.ROLLBACK,
            ),
            (
                lambda fed: signed(fed, DE_POLICY + b"# same version, other content\n"),
                LoadFailure.ROLLBACK,
            ),
        ],
        ids=["unsigned", "bad-signature", "schema-invalid", "older", "same-version-changed"],
    )
    def test_refused(
        self, node: Node, make: Callable[[DevFederation], str | bytes], reason: LoadFailure
    ) -> None:
        """The refusal is counted by reason, logged with the version kept, and changes nothing."""
        assert node.load(signed(node.fed, DE_POLICY))
        good = node.store.current
        with capture_logs() as logs:
            assert not node.load(make(node.fed))
        assert node.store.current is good
        assert node.failures(reason) == 1
        assert node.metric("casebridge_policy_last_load_ok") == 0
        assert node.metric("casebridge_policy_version_loaded") == 7
        (entry,) = logs
        assert entry["event"] == "policy_refused"
        assert entry["log_level"] == "error"
        assert entry["reason"] == reason.value
        assert entry["keeping_version"] == 7

    def test_problems_are_logged_with_lines(self, node: Node) -> None:
        """A schema-invalid policy's problems reach the log with their lines."""
        with capture_logs() as logs:
            node.load(signed(node.fed, b"country: DE\nversion: 1\nrules:\n  - {id: a}\n"))
        (entry,) = logs
        assert entry["problems"][0]["line"] == 4
        assert entry["keeping_version"] is None

    def test_policy_of_another_country(self, node: Node) -> None:
        """The NL policy, correctly signed by NL, is refused by a DE node."""
        nl_policy = (REPO / "docs" / "policies" / "nl.yaml").read_bytes()
        ca = node.fed.country("NL").ca
        token = sign_policy(nl_policy, ca_key=ca.key, ca_cert=ca.cert)
        assert not node.load(token, cc="NL")
        assert node.failures(LoadFailure.COUNTRY) == 1
        assert node.store.current is None

    def test_unreadable_file(self, node: Node, tmp_path: Path) -> None:
        """A missing file is refused as unreadable; nothing was ever loaded, so version is 0."""
        ok = node.store.load_file(
            tmp_path / "absent.jws", ca_cert=node.fed.country("DE").ca.cert, now=node.now
        )
        assert not ok
        assert node.failures(LoadFailure.UNREADABLE) == 1
        assert node.metric("casebridge_policy_version_loaded") == 0

    def test_file_round_trip(self, node: Node, tmp_path: Path) -> None:
        """load_file reads and loads a signed file."""
        path = tmp_path / "de.jws"
        path.write_text(signed(node.fed, DE_POLICY))
        assert node.store.load_file(path, ca_cert=node.fed.country("DE").ca.cert, now=node.now)

    def test_failure_counters_start_at_zero(self, node: Node) -> None:
        """Every reason is exported from the start, so alerts can use rate() at once."""
        assert all(node.failures(reason) == 0 for reason in LoadFailure)
