"""Conformance vectors (tests/vectors/conformance): coverage, the core, the runner, the CLI."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from jwcrypto import jwk

from broker import conformance
from broker.core.directory import Directory
from broker.core.envelope import RecipientIdentity, open_message, verify_routing
from broker.core.policy import Federation, evaluate_recipient, parse_policy
from broker.core.replay import MemoryReplayStore
from broker.errors import CasebridgeError, PolicyDenied, Reason
from broker.loaders import load_schema_registry

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "tests" / "vectors" / "conformance"
VECTORS = conformance.load_vectors(BASE)
PKI = json.loads((BASE / "pki.json").read_text())
ROOT_CERT = x509.load_pem_x509_certificate((BASE / "root.pem").read_bytes())
REGISTRY = load_schema_registry()
# Codes that never describe a peer's message (node API and local faults).
LOCAL = {
    "bad_request", "unauthorized", "justification_required", "not_found",
    "idempotency_conflict", "transport_unavailable", "audit_unavailable",
    "storage_unavailable", "internal_error", "config_invalid", "pki_error", "schema_registry",
    "forbidden", "cursor_expired",  # node API only (issue 15): never on the wire
}  # fmt: skip
# Attachment codes are decided on chunks, not on a sealed message: their vectors are the
# files under tests/vectors/attachments/ (tests/unit/test_attachments_core.py).
ATTACHMENT_CODES = {
    "attachment_chunk_invalid", "attachment_incomplete", "attachment_size_mismatch",
    "attachment_digest_mismatch",
}  # fmt: skip


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _core(doc: dict[str, Any]) -> dict[str, Any]:
    """Decide one vector with the core modules directly (no facade, no adapter)."""
    now = _time(doc["now"])
    signed = (BASE / "directories" / doc["directory"]).read_bytes()
    try:
        directory = Directory.load(
            signed,
            root_cert=ROOT_CERT,
            now=now
            if doc["role"] == "directory"
            else _time(doc.get("directory_loaded_at", doc["now"])),
            min_serial=doc.get("min_serial", 0),
        )
        if doc["role"] == "directory":
            return {"outcome": "accepted", "reason": None, "step": None}
        wire = conformance.wire_bytes(doc)
        assert wire is not None
        if doc["role"] == "gateway":
            routed = verify_routing(wire, resolver=directory, now=now)
            return {"outcome": "accepted", "reason": None, "step": None,
                    "header": routed.header.to_json(), "digest": routed.digest}  # fmt: skip
        agency = PKI["agencies"][doc["recipient"]]
        replay = MemoryReplayStore()
        for entry in doc["replay"]:
            replay.remember(entry["id"], expires_at=entry["expires_at"], now=now)
        if doc["concurrent_accept"]:
            replay.remember = lambda *a, **k: False  # type: ignore[method-assign]
        policy = parse_policy(doc["policy"].encode()) if doc["policy"] else None

        def admit(opened: Any) -> None:
            if policy is not None:
                evaluate_recipient(
                    policy, opened.header, opened.body,
                    federation=Federation.from_directory(directory), schemas=REGISTRY,
                ).decision.raise_if_denied()  # fmt: skip
                return
            h = opened.header
            extra = REGISTRY.categories(h.type, h.type_version, opened.body) - set(h.categories)
            if extra:
                raise PolicyDenied("builtin.honesty", "undeclared", Reason.CATEGORY_UNDECLARED)

        opened = open_message(
            wire,
            recipient=RecipientIdentity(
                agency_id=doc["recipient"],
                agreement_kid=agency["agreement_kid"],
                agreement_key=jwk.JWK(**agency["agreement_jwk"]).get_op_key("unwrapKey"),
            ),
            resolver=directory,
            replay=replay,
            validator=REGISTRY,
            now=now,
            admit=admit,
        )
    except CasebridgeError as exc:
        out = {"outcome": "refused", "reason": exc.reason.value, "step": exc.step}
        if isinstance(exc, PolicyDenied):
            out["rule_id"] = exc.rule_id
        return out
    return {"outcome": "accepted", "reason": None, "step": None,
            "header": opened.header.to_json(), "body": opened.body,
            "digest": opened.routed.digest}  # fmt: skip


class TestVectorSet:
    def test_enough_vectors_all_marked_test_only(self) -> None:
        """At least 60 vectors, each marked test-only, and the PKI file says TEST-ONLY."""
        assert len(VECTORS) >= 60
        assert all(v.doc["test_only"] is True for v in VECTORS)
        assert "TEST-ONLY" in PKI["warning"]

    def test_every_step_and_reason_code_has_a_vector(self) -> None:
        """Each receiving step 1-19, each directory step and each peer reason code is covered."""
        steps = {v.expect["step"] for v in VECTORS if v.doc["role"] != "directory"}
        assert set(range(1, 20)) <= steps
        directory_steps = {v.expect["step"] for v in VECTORS if v.doc["role"] == "directory"}
        assert {2, 3, 4, 5, 7, 8, 9} <= directory_steps
        reasons = {v.expect["reason"] for v in VECTORS}
        assert {r.value for r in Reason} - LOCAL - ATTACHMENT_CODES <= reasons

    def test_accepted_vectors_cover_task_forces_evidence_and_non_ascii(self) -> None:
        """Accepted vectors include a 3-recipient task force, evidence and non-ASCII text."""
        accepted = [
            v for v in VECTORS if v.expect["outcome"] == "accepted" and "header" in v.expect
        ]
        assert any(
            v.expect["header"]["task_force"] and len(v.expect["header"]["recipients"]) == 3
            for v in accepted
        )
        assert any(v.expect["header"]["type"].startswith("evidence.") for v in accepted)
        assert any(
            not v.expect["header"]["legal_basis"].isascii()
            and not json.dumps(v.expect["body"], ensure_ascii=False).isascii()
            for v in accepted
        )

    def test_key_ids_are_certificate_thumbprints(self) -> None:
        """Every kid in pki.json is <agency>#base64url(SHA-256(certificate DER))."""
        import hashlib

        for agency_id, entry in PKI["agencies"].items():
            for usage in ("signing", "agreement"):
                der = base64.b64decode(entry[usage]["cert"])
                thumb = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=")
                assert entry[f"{usage}_kid"] == f"{agency_id}#{thumb.decode()}"


def _documented_checks(heading: str) -> set[tuple[int, str]]:
    """(step, reason) pairs of a check table of docs/protocol.md (the one after ``heading``)."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    blocks = text[text.index(heading) :].split("\n\n")
    table = next(b for b in blocks if b.startswith("|"))
    pairs: set[tuple[int, str]] = set()
    step = 0
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0].isdigit():
            step = int(cells[0])
        pairs.update((step, code) for code in re.findall(r"`([a-z_]+)`", cells[-1]))
    return pairs


def test_every_vector_matches_a_documented_check() -> None:
    """Each refused vector's (step, reason) is a row of the check tables in docs/protocol.md."""
    receiving = _documented_checks("### 6.1 The check table")
    directory = _documented_checks("### 9.4 Loading a directory")
    for v in VECTORS:
        if v.expect["outcome"] == "refused":
            table = directory if v.doc["role"] == "directory" else receiving
            pair = (v.expect["step"], v.expect["reason"])
            # Check 16.1 repeats the checks of steps 3 and 4 on INNER, with their reasons.
            inner_jws = pair[0] == 16 and {(3, pair[1]), (4, pair[1])} & table
            assert pair in table or inner_jws, (v.name, pair)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_vector_through_the_core(vector: conformance.Vector) -> None:
    """The core decides every vector as it states: outcome, step, reason (and content)."""
    got = _core(vector.doc)
    assert conformance.compare(vector, got) == []


class TestRunner:
    def _cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker.cli", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
            check=False,
        )

    def test_runner_against_this_project_finds_no_mismatch(self) -> None:
        """casebridge conformance --impl <this project> reports zero mismatches, exit 0."""
        impl = f"{sys.executable} -m broker.conformance_impl"
        done = self._cli("conformance", "--impl", impl)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "(no mismatch)" in done.stdout
        assert f"{len(VECTORS)} vectors: {len(VECTORS)} passed, 0 mismatched" in done.stdout

    def test_runner_reports_a_lying_implementation(self, tmp_path: Path) -> None:
        """An implementation that accepts everything gets a mismatch table and exit 1."""
        liar = tmp_path / "liar.py"
        liar.write_text(
            "import sys, json\n"
            "for line in sys.stdin:\n"
            "    answer = {'outcome': 'accepted', 'reason': None, 'step': None}\n"
            "    print(json.dumps(answer), flush=True)\n"
        )
        done = self._cli("conformance", "--impl", f"{sys.executable} {liar}")
        assert done.returncode == 1
        assert "outer-alg-none" in done.stdout
        refused = sum(v.expect["outcome"] == "refused" for v in VECTORS)
        assert f"{refused} mismatched" in done.stdout

    def test_skipped_answers_are_counted_not_mismatched(self, tmp_path: Path) -> None:
        """An answer {"outcome": "skipped"} (e.g. no policy engine) is not a mismatch."""
        skipper = tmp_path / "skip.py"
        skipper.write_text(
            "import sys, json\n"
            "for line in sys.stdin:\n"
            "    print(json.dumps({'outcome': 'skipped'}), flush=True)\n"
        )
        done = self._cli("conformance", "--impl", f"{sys.executable} {skipper}")
        assert done.returncode == 0
        assert f"0 passed, 0 mismatched, {len(VECTORS)} skipped" in done.stdout
