"""``casebridge policy``: check, explain, sign and verify, run in-process."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from broker.cli import main
from broker.pki.dev import DevFederation

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "docs" / "policies"
DRAFT = POLICIES / "drafts" / "request-de-ua.yaml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["policy", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the repository root, where explain finds docs/policies by default."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def pki_dir(dev_federation: DevFederation, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dev federation written to disk (keys unencrypted: test material only)."""
    directory = tmp_path_factory.mktemp("pki")
    dev_federation.write(directory)
    return directory


class TestCheck:
    """policy check."""

    def test_examples_are_clean(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The example policies check without warnings: exit 0."""
        files = [str(p) for p in sorted(POLICIES.glob("*.yaml"))]
        code, out, _ = run(capsys, "check", *files)
        assert code == 0
        assert "DE v7" in out
        assert "0 warning(s)" in out

    def test_refused_file_lists_lines(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """A schema-invalid file is refused with file:line per problem: exit 2."""
        bad = tmp_path / "bad.yaml"
        bad.write_text("country: DE\nversion: 1\nrules:\n  - {id: a, reason: r}\n")
        code, out, _ = run(capsys, "check", str(bad))
        assert code == 2
        assert f"{bad}:4: error: rules/0: " in out
        assert "REFUSED" in out

    def test_findings_exit_1(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """A shadowed rule is a warning: exit 1, with the line."""
        shadow = tmp_path / "shadow.yaml"
        shadow.write_text(
            "country: DE\nversion: 1\nrules:\n"
            "  - {id: all, reason: r, direction: egress, decision: deny}\n"
            "  - {id: eu, reason: r, direction: egress, peer: eu, decision: allow}\n"
        )
        code, out, _ = run(capsys, "check", str(shadow))
        assert code == 1
        assert "line 5: warning [shadowed] rule eu" in out


class TestExplain:
    """policy explain."""

    def test_text(self, capsys: pytest.CaptureFixture[str]) -> None:
        """All four points are shown with their rules, the redactions and the redacted body."""
        code, out, _ = run(capsys, "explain", "--draft", str(DRAFT), "--from", "DE", "--to", "UA")
        assert code == 0
        for expected in (
            "1. Pre-flight",
            "2. Border gateway DE, egress to UA",
            "3. Border gateway UA, ingress from DE",
            "4. Receiving node",
            "rule de.out.partner-police -> ua.npu",
            "rule ua.in.police -> ua.npu",
            "drop     /victims/*/contact",
            "Removed by redaction:  contact_details, health, precise_location",
            '"date_of_birth": "1999"',
        ):
            assert expected in out, expected
        assert "Beispielstrasse" not in out

    def test_json(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--format json gives every point's decision and the redacted body."""
        code, out, _ = run(
            capsys,
            "explain",
            "--draft",
            str(DRAFT),
            "--from",
            "DE",
            "--to",
            "UA",
            "--format",
            "json",
        )
        assert code == 0
        data = json.loads(out)
        assert data["egress"]["decision"]["rule_id"] == "de.out.partner-police"
        assert data["recipient"]["decision"]["verdict"] == "allow"
        assert "contact" not in data["body"]["victims"][0]

    @pytest.mark.parametrize(
        ("draft", "origin", "destination", "rule"),
        [
            (DRAFT, "DE", "UA", "de.out.partner-police"),
            (POLICIES / "drafts" / "referral-nl-ua.yaml", "NL", "UA", "nl.out.care-return"),
        ],
        ids=["police-request", "ngo-referral"],
    )
    def test_example_drafts(
        self,
        capsys: pytest.CaptureFixture[str],
        draft: Path,
        origin: str,
        destination: str,
        rule: str,
    ) -> None:
        """Every example draft is sent, redacted by the expected origin rule."""
        code, out, _ = run(
            capsys, "explain", "--draft", str(draft), "--from", origin, "--to", destination
        )
        assert code == 0
        assert f"2. Border gateway {origin}, egress to {destination}" in out
        assert f"rule {rule}" in out
        assert "=> the message would be sealed and sent" in out

    def test_refusal_exit_1(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """A draft the origin refuses exits 1 and says nothing is sent."""
        draft = tmp_path / "bio.yaml"
        draft.write_text(
            DRAFT.read_text().replace(
                "      gender: male\n",
                "      gender: male\n      biometrics: [{kind: fingerprints, reference: X1}]\n",
            )
        )
        code, out, _ = run(capsys, "explain", "--draft", str(draft), "--from", "DE", "--to", "UA")
        assert code == 1
        assert "rule de.out.biometrics-only-eu" in out
        assert "nothing is sent" in out
        assert "Body as far as pre-flight got (not sent):" in out

    def test_wrong_country(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--from must be the draft sender's country."""
        code, _, err = run(capsys, "explain", "--draft", str(DRAFT), "--from", "NL", "--to", "UA")
        assert code == 2
        assert "not in NL" in err

    def test_sender_picked_by_kind(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """Without sender and recipients in the draft, --from/--to and kinds pick agencies."""
        draft = tmp_path / "anon.yaml"
        text = DRAFT.read_text().replace("sender: de.lka-berlin\n", "")
        draft.write_text(text.replace("recipients: [ua.npu]\n", ""))
        code, out, _ = run(
            capsys, "explain", "--draft", str(draft), "--from", "DE", "--to", "UA",
            "--recipient-kind", "law_enforcement",
        )  # fmt: skip
        assert code == 0
        assert "From      de.lka-berlin" in out


class TestSignVerify:
    """policy sign and verify against a PKI directory."""

    def test_sign_verify_check(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, pki_dir: Path
    ) -> None:
        """A signed policy verifies, and check reports its signature valid."""
        out_file = tmp_path / "de.jws"
        code, out, _ = run(
            capsys, "sign", str(POLICIES / "de.yaml"), "--pki", str(pki_dir), "-o", str(out_file)
        )
        assert code == 0
        assert "kid de-ca#" in out
        code, out, _ = run(capsys, "verify", str(out_file), "--pki", str(pki_dir))
        assert code == 0
        assert "valid policy of DE v7" in out
        code, out, _ = run(capsys, "check", str(out_file), "--pki", str(pki_dir))
        assert code == 0
        assert "signature valid (DE CA)" in out

    def test_check_signed_without_pki_says_unchecked(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, pki_dir: Path
    ) -> None:
        """Without --pki a signed file is linted but its signature is reported as not checked."""
        out_file = tmp_path / "de.jws"
        run(capsys, "sign", str(POLICIES / "de.yaml"), "--pki", str(pki_dir), "-o", str(out_file))
        code, out, _ = run(capsys, "check", str(out_file))
        assert code == 0
        assert "signature NOT checked" in out

    def test_verify_refuses_unsigned(
        self, capsys: pytest.CaptureFixture[str], pki_dir: Path
    ) -> None:
        """Verifying plain YAML fails with exit 2."""
        code, _, err = run(capsys, "verify", str(POLICIES / "de.yaml"), "--pki", str(pki_dir))
        assert code == 2
        assert "not a signed Casebridge policy" in err

    def test_sign_refuses_foreign_policy(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, pki_dir: Path
    ) -> None:
        """Signing with another country's CA (explicit --key/--cert) is refused."""
        ca_dir = pki_dir / "countries" / "nl"
        code, _, err = run(
            capsys, "sign", str(POLICIES / "de.yaml"), "-o", str(tmp_path / "x.jws"),
            "--key", str(ca_dir / "ca.key"), "--cert", str(ca_dir / "ca.pem"),
        )  # fmt: skip
        assert code == 2
        assert "the CA is NL's" in err
        assert not (tmp_path / "x.jws").exists()


class TestDocs:
    """docs/policy.md shows the real output of explain."""

    def test_explain_output_in_docs_is_current(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The explain example in docs/policy.md is byte-for-byte what the command prints."""
        command = (
            "$ casebridge policy explain --draft docs/policies/drafts/request-de-ua.yaml"
            " --from DE --to UA\n"
        )
        doc = (REPO / "docs" / "policy.md").read_text(encoding="utf-8")
        shown = doc.split(command, 1)[1].split("\n```\n", 1)[0]
        relative = DRAFT.relative_to(REPO)
        code = main(["policy", "explain", "--draft", str(relative), "--from", "DE", "--to", "UA",
                     "--policies", str(POLICIES.relative_to(REPO))])  # fmt: skip
        out, _ = capsys.readouterr()
        assert code == 0
        assert out.rstrip("\n") == shown


class TestFederationSource:
    """Where explain and check take EU flags and agency kinds from."""

    def test_directory_from_pki(self, capsys: pytest.CaptureFixture[str], pki_dir: Path) -> None:
        """With --pki, the signed directory (or, if unusable, the PKI records) is named."""
        code, out, _ = run(
            capsys, "explain", "--draft", str(DRAFT), "--from", "DE", "--to", "UA",
            "--pki", str(pki_dir),
        )  # fmt: skip
        assert code == 0
        assert "Federation directory " in out or "Federation PKI records in " in out

    def test_stale_directory_falls_back_to_pki_records(
        self,
        capsys: pytest.CaptureFixture[str],
        dev_federation: DevFederation,
        fixed_now: datetime,
        tmp_path: Path,
    ) -> None:
        """An expired directory does not stop planning: the PKI records are used, and said so."""
        dev_federation.write(tmp_path)
        stale = dev_federation.sign_directory(
            now=fixed_now - timedelta(days=60), valid_for=timedelta(days=1)
        )
        (tmp_path / "directory.jws").write_bytes(stale)
        code, out, _ = run(
            capsys, "explain", "--draft", str(DRAFT), "--from", "DE", "--to", "UA",
            "--pki", str(tmp_path),
        )  # fmt: skip
        assert code == 0
        assert "directory not usable: directory_stale" in out
