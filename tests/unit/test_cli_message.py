"""casebridge message seal|open|verify-routing|inspect, with the conformance TEST-ONLY PKI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "tests" / "vectors" / "conformance"
PKI = json.loads((BASE / "pki.json").read_text())
NOW = "2026-11-28T12:00:00Z"


def _run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "message", *args],
        capture_output=True,
        input=stdin,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("message")
    out = {"root": BASE / "root.pem", "directory": BASE / "directories" / "current.jws"}
    for agency_id, entry in PKI["agencies"].items():
        for usage in ("signing", "agreement"):
            path = tmp / f"{agency_id}.{usage}.jwk"
            path.write_text(json.dumps(entry[f"{usage}_jwk"]))
            out[f"{agency_id}.{usage}"] = path
        pem = tmp / f"{agency_id}.signing.pem"
        pem.write_text(entry["signing"]["key_pem"])
        out[f"{agency_id}.signing.pem"] = pem
    vector = json.loads((BASE / "vectors" / "001-valid-request-one-recipient.json").read_text())
    header: dict[str, Any] = dict(vector["expect"]["header"])
    header["id"] = "00000000-0000-4000-8000-00000000a001"
    (tmp / "header.json").write_text(json.dumps(header))
    (tmp / "body.json").write_text(json.dumps(vector["expect"]["body"]))
    out["header"], out["body"] = tmp / "header.json", tmp / "body.json"
    return out


def _trust(files: dict[str, Path]) -> list[str]:
    return ["--root", str(files["root"]), "--directory", str(files["directory"]), "--now", NOW]


@pytest.fixture(scope="module")
def wire(files: dict[str, Path]) -> bytes:
    done = _run(
        "seal", *_trust(files),
        "--header", str(files["header"]), "--body", str(files["body"]),
        "--agency", "de.lka-berlin", "--signing-key", str(files["de.lka-berlin.signing.pem"]),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class TestMessageCli:
    def test_sealed_message_opens_for_its_recipient(
        self, files: dict[str, Path], wire: bytes
    ) -> None:
        """seal then open (wire on stdin): accepted with the header, body and digest as JSON."""
        done = _run(
            "open", "-", *_trust(files), "--agency", "nl.politie-nec",
            "--agreement-key", str(files["nl.politie-nec.agreement"]), stdin=wire,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["outcome"] == "accepted"
        assert answer["body"] == json.loads(files["body"].read_text())
        assert answer["header"]["id"] == "00000000-0000-4000-8000-00000000a001"

    def test_open_by_someone_else_is_refused_with_reason_and_step(
        self, files: dict[str, Path], wire: bytes
    ) -> None:
        """Another agency gets exit 1 and {"reason": "not_addressed", "step": 12}."""
        done = _run(
            "open", "-", *_trust(files), "--agency", "ua.npu-ctd",
            "--agreement-key", str(files["ua.npu-ctd.agreement"]), stdin=wire,
        )  # fmt: skip
        assert done.returncode == 1
        answer = json.loads(done.stdout)
        assert (answer["outcome"], answer["reason"], answer["step"]) == (
            "refused", "not_addressed", 12,
        )  # fmt: skip

    def test_verify_routing_accepts_and_refuses_tampering(
        self, files: dict[str, Path], wire: bytes, tmp_path: Path
    ) -> None:
        """verify-routing accepts the sealed message and refuses a changed JWE (step 11)."""
        path = tmp_path / "wire.json"
        path.write_bytes(wire)
        done = _run("verify-routing", str(path), *_trust(files))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["outcome"] == "accepted"
        obj = json.loads(wire)
        obj["jwe"] = obj["jwe"].replace('"tag":"', '"tag":"A', 1)
        tampered = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        done = _run("verify-routing", "-", *_trust(files), stdin=tampered)
        answer = json.loads(done.stdout)
        assert (done.returncode, answer["reason"], answer["step"]) == (1, "digest_mismatch", 11)

    def test_inspect_shows_claims_without_verifying(self, wire: bytes) -> None:
        """inspect prints the unverified header and recipient kids, marked verified: false."""
        done = _run("inspect", "-", stdin=wire)
        assert done.returncode == 0
        shown = json.loads(done.stdout)
        assert shown["verified"] is False
        assert shown["unverified_header"]["sender"]["agency"] == "de.lka-berlin"
        assert shown["unverified_recipient_kids"] == [
            PKI["agencies"]["nl.politie-nec"]["agreement_kid"]
        ]

    def test_local_problem_exits_2(self, files: dict[str, Path], tmp_path: Path) -> None:
        """A directory that does not load is a local problem: exit 2 with its reason."""
        done = _run(
            "verify-routing", "-", "--root", str(files["root"]),
            "--directory", str(BASE / "directories" / "bad-signature.jws"), "--now", NOW,
            stdin=b"{}",
        )  # fmt: skip
        assert done.returncode == 2
        assert b"directory_invalid" in done.stderr
