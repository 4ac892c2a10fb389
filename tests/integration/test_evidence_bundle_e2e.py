"""Evidence bundles end to end: exported with the CLI from real nodes after a real delivery.

DE (LKA Berlin) sends to NL (Politie) across both border gateways on real nats-servers; the
Dutch police open the message. ``casebridge evidence export`` then writes the sender's bundle
(relay evidence from both gateways, delivered and read evidence) and the recipient's bundle
with the body; ``casebridge evidence verify`` checks each in a fresh process whose working
directory is an empty temporary directory (no settings, no store, no network), with the
federation root pinned. One changed byte makes it fail with the reason.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from broker.federation import processes
from tests.integration.e2e_helpers import Running, example, wait_until

pytestmark = pytest.mark.integration

LKA: Final = "de.lka-berlin"
POL: Final = "nl.politie"
DELIVERY: Final = 20.0
CLI_TIMEOUT: Final = 60.0
DESCRIPTION: Final[dict[str, Any]] = {
    "federation": "evidence-e2e",
    "countries": [
        {
            "code": "DE",
            "name": "Germany",
            "eu": True,
            "agencies": [{"id": LKA, "kind": "law_enforcement", "name": "LKA Berlin"}],
        },
        {
            "code": "NL",
            "name": "Netherlands",
            "eu": True,
            "agencies": [{"id": POL, "kind": "law_enforcement", "name": "Politie"}],
        },
    ],
}


@pytest.fixture(scope="module")
def fed(nats_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """DE + NL with both gateways, the LKA and the Politie nodes running."""
    del nats_binary
    running = Running.start(
        tmp_path_factory.mktemp("evidence") / "fed", nodes=[LKA, POL], description=DESCRIPTION
    )
    try:
        yield running
    finally:
        running.close()


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "evidence", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
        cwd=cwd,
    )


def _settings(fed: Running, agency: str) -> str:
    return str(fed.fed.base / processes.SETTINGS_DIR / f"{agency}.json")


def _kinds(fed: Running, message_id: str) -> list[str]:
    return sorted(e["kind"] for e in fed.evidence(LKA, message_id))


def test_bundles_export_and_verify_offline(fed: Running, tmp_path: Path) -> None:
    """Sender's and recipient's bundles verify in an empty directory; one changed byte fails."""
    sent = fed.client(LKA).call(
        "POST",
        "/v1/messages",
        body={
            "to": [POL],
            "type": "information.spontaneous",
            "purpose": "investigation",
            "handling": "H2",
            "tlp": "AMBER",
            "legal_basis": "Framework Decision 2006/960/JHA, Art. 7",
            "body": example("information.spontaneous"),
        },
        headers={"X-Actor": "kk.weber"},
    )
    message_id = sent["message_id"]
    wait_until(lambda: message_id in fed.inbox_ids(POL), DELIVERY, what="delivery")
    fed.client(POL).call(
        "GET",
        f"/v1/messages/{message_id}",
        headers={"X-Justification": "case work", "X-Actor": "officer@nl"},
    )
    expected = ["delivered", "read", "relay_accepted", "relay_accepted"]
    wait_until(lambda: _kinds(fed, message_id) == expected, DELIVERY, what="evidence")

    out = tmp_path / "out"
    out.mkdir()
    sender_bundle, recipient_bundle = out / "sender.json", out / "recipient.json"
    done = _cli(
        "export", message_id, "--settings", _settings(fed, LKA), "--out", str(sender_bundle)
    )
    assert done.returncode == 0, done.stderr
    done = _cli(
        "export", message_id, "--settings", _settings(fed, POL),
        "--out", str(recipient_bundle), "--with-body", "--actor", "dpo@nl",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    root = str(fed.fed.settings.root_cert)
    checked = _cli("verify", str(sender_bundle), "--root", root, cwd=empty)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = checked.stdout
    assert "VERIFIED" in report
    assert "NOT VERIFIED" not in report
    assert f"From:  {LKA}" in report
    assert f"To:    {POL}" in report
    assert "Outcome: DELIVERED and READ" in report
    assert "relay_accepted by de.gateway" in report
    assert "relay_accepted by nl.gateway" in report
    assert "[FAIL]" not in report

    checked = _cli("verify", str(recipient_bundle), "--root", root, cwd=empty)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Body (disclosed by the exporter, signed by the sender)" in checked.stdout

    data = sender_bundle.read_bytes()
    position = data.index(b'"wire":"') + 500
    flipped = b"A" if data[position : position + 1] != b"A" else b"B"
    altered = empty / "altered.json"
    altered.write_bytes(data[:position] + flipped + data[position + 1 :])
    checked = _cli("verify", str(altered), "--root", root, cwd=empty)
    assert checked.returncode == 1
    assert "FAILED:" in checked.stdout
    assert "seal" in checked.stdout
