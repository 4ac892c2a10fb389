"""Signed policies: only a policy signed by its own country's CA, chaining to the root, loads."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from broker.core import jose
from broker.core.policy import (
    POLICY_TYP,
    policy_kid,
    sign_policy,
    verify_policy,
)
from broker.errors import PolicyError
from broker.loaders import load_signed_policy
from broker.pki import issuing
from broker.pki.dev import DevFederation

REPO = Path(__file__).resolve().parents[2]
DE_POLICY = (REPO / "docs" / "policies" / "de.yaml").read_bytes()


def refused(token: str | bytes, fed: DevFederation, now: datetime, cc: str = "DE") -> str:
    with pytest.raises(PolicyError) as info:
        verify_policy(token, ca_cert=fed.country(cc).ca.cert, root_cert=fed.root.cert, now=now)
    return info.value.problems[0].message


class TestSignAndVerify:
    """The happy path and the exact format."""

    def test_round_trip(self, dev_federation: DevFederation, fixed_now: datetime) -> None:
        """A policy signed with the DE CA verifies against the DE CA and the root."""
        ca = dev_federation.country("DE").ca
        token = sign_policy(DE_POLICY, ca_key=ca.key, ca_cert=ca.cert)
        policy = verify_policy(
            token, ca_cert=ca.cert, root_cert=dev_federation.root.cert, now=fixed_now
        )
        assert (policy.country, policy.version) == ("DE", 7)

    def test_format(self, dev_federation: DevFederation) -> None:
        """Compact ES256 JWS, typ casebridge-policy+jws, kid <cc>-ca#<thumbprint>, YAML payload."""
        ca = dev_federation.country("DE").ca
        token = sign_policy(DE_POLICY, ca_key=ca.key, ca_cert=ca.cert)
        unverified = jose.parse_compact(token, typ=POLICY_TYP, what="policy")
        assert unverified.header["alg"] == "ES256"
        assert unverified.kid == policy_kid("DE", ca.cert)
        assert unverified.kid.startswith("de-ca#")
        assert unverified.unverified_payload == DE_POLICY

    def test_load_signed_file(
        self, dev_federation: DevFederation, fixed_now: datetime, tmp_path: Path
    ) -> None:
        """A signed file on disk (with a trailing newline) loads."""
        ca = dev_federation.country("DE").ca
        path = tmp_path / "de.jws"
        path.write_text(sign_policy(DE_POLICY, ca_key=ca.key, ca_cert=ca.cert) + "\n")
        policy = load_signed_policy(
            path, ca_cert=ca.cert, root_cert=dev_federation.root.cert, now=fixed_now
        )
        assert policy.source == str(path)


class TestSigningRefusals:
    """sign_policy refuses to sign what could never load."""

    def test_foreign_ca(self, dev_federation: DevFederation) -> None:
        """The NL CA cannot sign the DE policy."""
        ca = dev_federation.country("NL").ca
        with pytest.raises(PolicyError) as info:
            sign_policy(DE_POLICY, ca_key=ca.key, ca_cert=ca.cert)
        assert "for DE, the CA is NL's" in info.value.problems[0].message

    def test_key_not_of_cert(self, dev_federation: DevFederation) -> None:
        """A key that does not belong to the CA certificate is refused."""
        de, nl = dev_federation.country("DE").ca, dev_federation.country("NL").ca
        with pytest.raises(PolicyError):
            sign_policy(DE_POLICY, ca_key=nl.key, ca_cert=de.cert)

    def test_invalid_policy(self, dev_federation: DevFederation) -> None:
        """An invalid policy is refused with its line before signing."""
        ca = dev_federation.country("DE").ca
        with pytest.raises(PolicyError) as info:
            sign_policy(b"country: DE\nversion: 0\nrules: []\n", ca_key=ca.key, ca_cert=ca.cert)
        assert info.value.problems[0].line == 2


class TestVerifyRefusals:
    """Everything but a good signature by the right country is refused at load."""

    def test_unsigned(self, dev_federation: DevFederation, fixed_now: datetime) -> None:
        """Plain YAML is not a signed policy."""
        assert "unsigned" in refused(DE_POLICY, dev_federation, fixed_now)

    def test_tampered(self, dev_federation: DevFederation, fixed_now: datetime) -> None:
        """Changing one byte of the payload breaks the signature."""
        ca = dev_federation.country("DE").ca
        head, _, sig = sign_policy(DE_POLICY, ca_key=ca.key, ca_cert=ca.cert).split(".")
        payload = jose.b64url_encode(DE_POLICY.replace(b"version: 7", b"version: 8"))
        assert "signature" in refused(f"{head}.{payload}.{sig}", dev_federation, fixed_now)

    def test_policy_of_another_country(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A DE policy signed by the NL CA (bypassing sign_policy) is refused: wrong country."""
        nl = dev_federation.country("NL").ca
        token = jose.sign_compact(DE_POLICY, nl.key, kid=policy_kid("NL", nl.cert), typ=POLICY_TYP)
        message = refused(token, dev_federation, fixed_now, cc="NL")
        assert message == "signed by the NL CA but the policy is for DE"

    def test_kid_of_another_ca(self, dev_federation: DevFederation, fixed_now: datetime) -> None:
        """A token naming another CA's key is refused before any signature check."""
        nl = dev_federation.country("NL").ca
        token = jose.sign_compact(DE_POLICY, nl.key, kid=policy_kid("NL", nl.cert), typ=POLICY_TYP)
        assert "signed by another key" in refused(token, dev_federation, fixed_now)

    def test_foreign_key_with_our_kid(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A token claiming the DE CA's kid but signed by another key fails the signature."""
        de, nl = dev_federation.country("DE").ca, dev_federation.country("NL").ca
        token = jose.sign_compact(DE_POLICY, nl.key, kid=policy_kid("DE", de.cert), typ=POLICY_TYP)
        assert "signature" in refused(token, dev_federation, fixed_now)

    def test_ca_of_another_federation(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A DE CA under another root does not chain to the pinned root."""
        other_root = issuing.create_root_ca("other", now=fixed_now)
        other_de = issuing.issue_country_ca(other_root, country="DE", now=fixed_now)
        token = sign_policy(DE_POLICY, ca_key=other_de.key, ca_cert=other_de.cert)
        with pytest.raises(PolicyError) as info:
            verify_policy(
                token, ca_cert=other_de.cert, root_cert=dev_federation.root.cert, now=fixed_now
            )
        assert "does not chain" in info.value.problems[0].message

    def test_expired_ca(self, dev_federation: DevFederation, fixed_now: datetime) -> None:
        """After the CA certificate expired, its policies no longer load."""
        ca = dev_federation.country("DE").ca
        token = sign_policy(DE_POLICY, ca_key=ca.key, ca_cert=ca.cert)
        later = fixed_now + timedelta(days=20 * 365)
        assert "does not chain" in refused(token, dev_federation, later)

    def test_other_token_type(self, dev_federation: DevFederation, fixed_now: datetime) -> None:
        """A JWS of another type (e.g. the directory) is not a policy."""
        ca = dev_federation.country("DE").ca
        token = jose.sign_compact(
            DE_POLICY, ca.key, kid=policy_kid("DE", ca.cert), typ="casebridge-directory+jws"
        )
        assert "unsigned" in refused(token, dev_federation, fixed_now)

    def test_signed_but_invalid(self, dev_federation: DevFederation, fixed_now: datetime) -> None:
        """A correctly signed but schema-invalid policy is refused with its line."""
        ca = dev_federation.country("DE").ca
        bad = b"country: DE\nversion: 1\nrules:\n  - {id: a}\n"
        token = jose.sign_compact(bad, ca.key, kid=policy_kid("DE", ca.cert), typ=POLICY_TYP)
        with pytest.raises(PolicyError) as info:
            verify_policy(token, ca_cert=ca.cert, root_cert=dev_federation.root.cert, now=fixed_now)
        assert info.value.problems[0].line == 4
