"""Lawful processing end to end: corrections, withdrawals and audit roots on real processes.

What the issue "Lawful processing" asks to prove against real nats-servers, gateways and
nodes (docs/data-protection.md): a correction and a withdrawal sent through the node API reach
every earlier recipient of the original, in Germany and in the Netherlands, and each recipient
shows the original as corrected, then withdrawn (and erased); an agency that did not send the
original cannot mark it. The audit checkpoints a node seals (periodically and on shutdown)
reach the national gateway's roots store, ``casebridge audit verify`` passes against them, and
names the exact position after the node's SQLite file was tampered with offline, including a
consistent rewrite that only the gateway's roots reveal. ``casebridge audit show`` gives the
history of one message with evidence from both countries.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from broker.cli.focal import NodeCallError
from broker.core import audit
from broker.core import wire as s
from broker.federation import processes
from broker.node import audit_log
from tests.integration.e2e_helpers import Running, bulletin, example, wait_until

pytestmark = pytest.mark.integration

LKA: Final = "de.lka-berlin"
STA: Final = "de.sta-berlin"
POL: Final = "nl.politie"
OFFICER: Final = "kk.weber"
DELIVERY: Final = 20.0  # seconds; one message across the federation takes well under one
CLI_TIMEOUT: Final = 60.0
WHY: Final = "case NEC-2026-0412, checking the correction"

# DE (police, prosecutor) and NL (police): de.out.eu-police lets corrections and withdrawals
# cross; the DE-UA rule does not (docs/policies/de.yaml).
DESCRIPTION: Final[dict[str, Any]] = {
    "federation": "audit-e2e",
    "countries": [
        {
            "code": "DE",
            "name": "Germany",
            "eu": True,
            "agencies": [
                {"id": LKA, "kind": "law_enforcement", "name": "LKA Berlin"},
                {"id": STA, "kind": "prosecutor", "name": "StA Berlin"},
            ],
        },
        {
            "code": "NL",
            "name": "Netherlands",
            "eu": True,
            "agencies": [{"id": POL, "kind": "law_enforcement", "name": "Politie"}],
        },
    ],
}
# LKA and the Dutch police checkpoint every second; StA only on shutdown (within the test).
SETTINGS: Final = {
    LKA: {"audit": {"checkpoint_seconds": 1}},
    POL: {"audit": {"checkpoint_seconds": 1}},
    STA: {"audit": {"checkpoint_seconds": 3600}},
}


@pytest.fixture(scope="module")
def fed(nats_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """DE + NL with both gateways and the LKA, StA and Politie nodes running."""
    del nats_binary
    running = Running.start(
        tmp_path_factory.mktemp("audit") / "fed",
        nodes=[LKA, STA, POL],
        description=DESCRIPTION,
        settings=SETTINGS,
    )
    try:
        yield running
    finally:
        running.close()


# ------------------------------------------------------------------------- helpers ---


def _call(fed: Running, agency: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    answer: dict[str, Any] = fed.client(agency).call(method, path, **kwargs)
    return answer


def _delivered(fed: Running, agency: str, message_id: str) -> None:
    wait_until(
        lambda: message_id in fed.inbox_ids(agency), DELIVERY, what=f"{message_id} at {agency}"
    )


def _open(fed: Running, agency: str, message_id: str) -> dict[str, Any]:
    """A received message as a person opens it (justified: a consultation)."""
    return _call(
        fed,
        agency,
        "GET",
        f"/v1/messages/{message_id}",
        headers={"X-Justification": WHY, "X-Actor": f"officer@{agency}"},
    )


def _information(to: list[str]) -> dict[str, Any]:
    return {
        "to": to,
        "type": "information.spontaneous",
        "purpose": "investigation",
        "handling": "H2",
        "tlp": "AMBER",
        "legal_basis": "Framework Decision 2006/960/JHA, Art. 7",
        "body": example("information.spontaneous"),
    }


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _max_seq(store: Path) -> int:
    db = _ro(store)
    try:
        row = db.execute("SELECT MAX(seq) FROM audit").fetchone()
    finally:
        db.close()
    return int(row[0] or 0)


def _gateway_store(fed: Running, country: str) -> Path:
    return fed.fed.base / processes.STORE_DIR / f"{country.lower()}.gateway.sqlite"


def _roots(fed: Running, country: str, agency: str) -> list[tuple[int, int]]:
    """``(first_seq, last_seq)`` of every root the country's gateway keeps for ``agency``."""
    path = _gateway_store(fed, country)
    if not path.exists():
        return []
    db = _ro(path)
    try:
        rows = db.execute(
            "SELECT first_seq, last_seq FROM roots WHERE node = ? ORDER BY first_seq", (agency,)
        ).fetchall()
    finally:
        db.close()
    return [(int(a), int(b)) for a, b in rows]


def _covering(fed: Running, country: str, agency: str, last: int) -> list[tuple[int, int]]:
    """The gateway's roots of ``agency`` once they reach ``last`` (empty before)."""
    ranges = _roots(fed, country, agency)
    return ranges if ranges and ranges[-1][1] >= last else []


def _settings(fed: Running, agency: str) -> Path:
    return fed.fed.base / processes.SETTINGS_DIR / f"{agency}.json"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "audit", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def _verify(settings: Path, roots: Path | None) -> subprocess.CompletedProcess[str]:
    extra = ("--gateway-roots", str(roots)) if roots is not None else ()
    return _cli("verify", "--node-settings", str(settings), *extra)


def _show(fed: Running, agency: str, message_id: str) -> dict[str, Any]:
    done = _cli("show", message_id, "--node-settings", str(_settings(fed, agency)))
    assert done.returncode == 0, done.stderr
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown


def _operations(shown: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(r["operation"], r["peer"]) for r in shown["audit"]]


# --------------------------------------------------------------------- corrections ---


class TestCorrectionAndWithdrawal:
    """A notice about a message goes to every earlier recipient, in both countries."""

    def test_every_recipient_marks_the_original_corrected_then_withdrawn(
        self, fed: Running
    ) -> None:
        """StA (DE) and Politie (NL) show corrected, then withdrawn and erased; audit show."""
        sent = _call(
            fed, LKA, "POST", "/v1/messages", body=_information([STA, POL]),
            headers={"X-Actor": OFFICER},
        )  # fmt: skip
        assert sent["state"] == "acknowledged"
        original = sent["message_id"]
        for agency in (STA, POL):
            _delivered(fed, agency, original)
            before = _open(fed, agency, original)
            assert (before["status"], before["marks"], before["erased"]) == ("current", [], [])

        change = {"op": "replace", "path": "/suspects/0/date_of_birth", "value": "1990"}
        correction = _call(
            fed, LKA, "POST", f"/v1/messages/{original}/correction",
            body={"corrections": [change], "reason": "data_entry_error"},
            headers={"X-Actor": OFFICER},
        )  # fmt: skip
        assert correction["state"] == "acknowledged"
        notice = _call(fed, LKA, "GET", f"/v1/messages/{correction['message_id']}")
        assert sorted(notice["recipients"]) == [STA, POL]
        assert notice["in_reply_to"] == original
        for agency in (STA, POL):
            _delivered(fed, agency, correction["message_id"])
            shown = _open(fed, agency, original)
            assert shown["status"] == "corrected"
            assert [(m["mark"], m["by_message_id"], m["reason"]) for m in shown["marks"]] == [
                ("corrected", correction["message_id"], "data_entry_error")
            ]
            assert shown["erased"] == []
            assert shown["body"] == example("information.spontaneous")
            received = _open(fed, agency, correction["message_id"])["body"]
            assert received["corrected_message_id"] == original
            assert received["corrected_type"] == "information.spontaneous"
            assert received["corrections"] == [change]

        withdrawal = _call(
            fed, LKA, "POST", f"/v1/messages/{original}/withdrawal",
            body={"reason": "data_inaccurate", "action_requested": "erase"},
            headers={"X-Actor": OFFICER},
        )  # fmt: skip
        assert withdrawal["state"] == "acknowledged"
        for agency in (STA, POL):
            _delivered(fed, agency, withdrawal["message_id"])
            shown = _open(fed, agency, original)
            assert shown["status"] == "withdrawn"
            assert [(m["mark"], m["by_message_id"], m["action"]) for m in shown["marks"]] == [
                ("corrected", correction["message_id"], None),
                ("withdrawn", withdrawal["message_id"], "erase"),
            ]
            assert [e["direction"] for e in shown["erased"]] == ["received"]
            assert shown["body"] == {}

        # The sender's history: one disclosure per recipient, by the named officer.
        at_lka = _show(fed, LKA, original)
        assert sorted(_operations(at_lka)) == [("disclosure", STA), ("disclosure", POL)]
        assert {(r["actor"], r["actor_kind"]) for r in at_lka["audit"]} == {(OFFICER, "person")}

        # Evidence from both countries' gateways and both recipients (delivered, then read).
        def trail() -> set[tuple[str, str]]:
            kinds = {(e["kind"], e["actor"]) for e in _show(fed, LKA, original)["evidence"]}
            return kinds if {("read", STA), ("read", POL)} <= kinds else set()

        kinds = wait_until(trail, DELIVERY, what="read evidence from StA and Politie")
        assert {
            ("relay_accepted", "de.gateway"),
            ("relay_accepted", "nl.gateway"),
            ("delivered", STA),
            ("delivered", POL),
        } <= kinds

        # Each recipient's history: collected, consulted, altered twice, erased.
        for agency in (STA, POL):
            shown = _show(fed, agency, original)
            operations = [op for op, _peer in _operations(shown)]
            assert operations[0] == "collection"
            assert [op for op in operations if op != "consultation"] == [
                "collection",
                "alteration",
                "alteration",
                "erasure",
            ]
            assert {peer for _op, peer in _operations(shown)} == {LKA}
            assert [r["detail"] for r in shown["audit"] if r["operation"] == "alteration"] == [
                "marked corrected",
                "marked withdrawn",
            ]
            assert {c["justification"] for c in shown["consultations"]} == {WHY}
            assert shown["status"] == "withdrawn"
            assert len(shown["marks"]) == 2
            assert [e["direction"] for e in shown["erased"]] == ["received"]

    def test_notice_from_another_agency_marks_nothing(self, fed: Running) -> None:
        """A correction sealed by StA about the LKA's message reaches Politie; nothing marked."""
        sent = _call(fed, LKA, "POST", "/v1/messages", body=_information([POL]))
        original = sent["message_id"]
        _delivered(fed, POL, original)
        body = example("correction") | {"corrected_message_id": original}
        forged = fed.seal_as(
            STA, [POL], body, type="correction", purpose="investigation", handling="H2",
            tlp="AMBER", legal_basis="Framework Decision 2006/960/JHA, Art. 7",
            categories=("suspect_identity",),
        )  # fmt: skip
        fed.publish(STA, s.submit_subject(STA), [(forged.message_id, forged.wire)])
        _delivered(fed, POL, forged.message_id)
        shown = _open(fed, POL, original)
        assert (shown["status"], shown["marks"]) == ("current", [])
        assert shown["body"] == example("information.spontaneous")
        assert "alteration" not in [op for op, _ in _operations(_show(fed, POL, original))]

    def test_message_never_disclosed_cannot_be_corrected(self, fed: Running) -> None:
        """Correcting a message received (never passed on) is refused: 400, nothing sent."""
        sent = _call(fed, LKA, "POST", "/v1/messages", body=bulletin([POL]))
        _delivered(fed, POL, sent["message_id"])
        before = fed.outbox_states(POL)
        with pytest.raises(NodeCallError, match="not disclosed to any agency"):
            _call(
                fed, POL, "POST", f"/v1/messages/{sent['message_id']}/correction",
                body={"corrections": [{"op": "remove", "path": "/x"}], "reason": "other"},
            )  # fmt: skip
        assert fed.outbox_states(POL) == before


# ------------------------------------------------------------------- audit roots ---


def _consecutive(ranges: list[tuple[int, int]]) -> bool:
    """Ranges that start at 1 and follow each other without gap or overlap."""
    return bool(ranges) and all(
        first == (ranges[i - 1][1] + 1 if i else 1) for i, (first, _) in enumerate(ranges)
    )


class TestPeriodicCheckpoints:
    """A running node's checkpoints reach its gateway; verify passes against them."""

    def test_roots_held_by_gateway_and_verify_passes(self, fed: Running) -> None:
        """After traffic, de.gateway holds LKA roots up to its last record; verify says OK."""
        sent = _call(fed, LKA, "POST", "/v1/messages", body=bulletin([STA, POL]))
        _delivered(fed, POL, sent["message_id"])
        last = _max_seq(fed.store_path(LKA))
        ranges = wait_until(
            lambda: _covering(fed, "DE", LKA, last),
            DELIVERY,
            what=f"a root of {LKA} covering seq {last}",
        )
        assert _consecutive(ranges), ranges
        # Roots stay in the country: the Dutch gateway holds none of the German node's.
        assert _roots(fed, "NL", LKA) == []
        done = _verify(_settings(fed, LKA), _gateway_store(fed, "DE"))
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("OK: ")
        assert "chain intact" in done.stdout
        held = re.search(r"\((\d+) held by the gateway\)", done.stdout)
        assert held is not None, done.stdout
        assert int(held.group(1)) >= len(ranges)

    def test_dutch_node_roots_held_by_dutch_gateway(self, fed: Running) -> None:
        """Politie's checkpoints are kept by nl.gateway and verify there."""
        sent = _call(fed, LKA, "POST", "/v1/messages", body=bulletin([POL]))
        _delivered(fed, POL, sent["message_id"])
        last = _max_seq(fed.store_path(POL))
        ranges = wait_until(
            lambda: _covering(fed, "NL", POL, last),
            DELIVERY,
            what=f"a root of {POL} covering seq {last}",
        )
        assert _consecutive(ranges), ranges
        done = _verify(_settings(fed, POL), _gateway_store(fed, "NL"))
        assert done.returncode == 0, done.stdout + done.stderr


@dataclass(frozen=True, slots=True)
class Snapshot:
    """StA's store as it was when the node stopped (the gateway holds its root 1..last_seq)."""

    fed: Running
    store: Path
    last_seq: int

    def copy(self, name: str) -> tuple[Path, Path]:
        """A copy of the store and a settings file naming it (the node's keys and directory)."""
        settings_dir = self.fed.fed.base / processes.SETTINGS_DIR
        target = self.store.with_name(f"{name}.sqlite")
        source, copy = sqlite3.connect(self.store), sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            source.close()
            copy.close()
        doc = json.loads(_settings(self.fed, STA).read_text(encoding="utf-8"))
        doc["store"] = str(target)
        settings = settings_dir / f"{name}.json"
        settings.write_text(json.dumps(doc), encoding="utf-8")
        return target, settings


@pytest.fixture(scope="module")
def snapshot(fed: Running) -> Snapshot:
    """StA with records and no checkpoint yet, stopped (SIGTERM): its shutdown checkpoint
    reaches de.gateway; the store is copied, and StA started again for the other tests."""
    for _ in range(2):
        sent = _call(fed, LKA, "POST", "/v1/messages", body=bulletin([STA]))
        _delivered(fed, STA, sent["message_id"])
    _open(fed, STA, sent["message_id"])
    assert _roots(fed, "DE", STA) == []  # interval 3600 s: nothing sealed while running
    name = f"node-{STA}"
    fed.fed.stop(name)
    last = _max_seq(fed.store_path(STA))
    assert last >= 3
    wait_until(
        lambda: _roots(fed, "DE", STA) == [(1, last)],
        DELIVERY,
        what=f"the shutdown checkpoint 1..{last} of {STA} at de.gateway",
    )
    store = fed.store_path(STA).with_name("sta-at-stop.sqlite")
    source, copy = sqlite3.connect(fed.store_path(STA)), sqlite3.connect(store)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    fed.restart(name, country="DE")
    return Snapshot(fed=fed, store=store, last_seq=last)


def _without_triggers(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    return db


def _alter(path: Path, seq: int) -> None:
    db = _without_triggers(path)
    try:
        db.execute("UPDATE audit SET actor = 'nobody' WHERE seq = ?", (seq,))
    finally:
        db.close()


def _delete(path: Path, seq: int) -> None:
    db = _without_triggers(path)
    try:
        db.execute("DELETE FROM audit WHERE seq = ?", (seq,))
    finally:
        db.close()


def _drop_last(path: Path, seq: int) -> None:
    db = _without_triggers(path)
    try:
        db.execute("DELETE FROM audit WHERE seq >= ?", (seq,))
    finally:
        db.close()


def _rewrite(path: Path, seq: int) -> None:
    """Alter ``seq``, recompute every chain hash from there, drop the node's own checkpoints:
    a history consistent in itself that only the roots held elsewhere contradict."""
    db = _without_triggers(path)
    try:
        db.execute("UPDATE audit SET justification = 'rewritten' WHERE seq = ?", (seq,))
        previous = audit.GENESIS
        for stored in audit_log.records(db):
            chained = audit.chain(previous, stored.record)
            db.execute(
                "UPDATE audit SET chain_hash = ? WHERE seq = ?", (chained, stored.record.seq)
            )
            previous = chained
        db.execute("DELETE FROM audit_checkpoints")
    finally:
        db.close()


class TestShutdownCheckpointAndTampering:
    """The checkpoint sealed on shutdown is held by the gateway; tampering is located."""

    def test_intact_store_verifies_against_gateway_roots(self, snapshot: Snapshot) -> None:
        """The untouched store: OK, covered up to its last record, the root held by de.gateway."""
        _store, settings = snapshot.copy("sta-intact")
        done = _verify(settings, _gateway_store(snapshot.fed, "DE"))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "(1 held by the gateway)" in done.stdout
        assert done.stdout.rstrip().endswith(f"covering up to seq {snapshot.last_seq}")

    @pytest.mark.parametrize(
        ("tamper", "expected"),
        [
            (_alter, "altered at seq 2"),
            (_delete, "missing at seq 2"),
        ],
        ids=["altered", "deleted"],
    )
    def test_tampered_row_named(
        self, snapshot: Snapshot, tamper: Callable[[Path, int], None], expected: str
    ) -> None:
        """A changed or deleted row (triggers dropped offline): verify exits 1 naming seq 2."""
        store, settings = snapshot.copy(f"sta-{tamper.__name__.strip('_')}")
        tamper(store, 2)
        done = _verify(settings, _gateway_store(snapshot.fed, "DE"))
        assert done.returncode == 1
        assert done.stdout.startswith(f"BROKEN: {expected}:"), done.stdout + done.stderr

    def test_dropped_tail_named_by_gateway_root(self, snapshot: Snapshot) -> None:
        """The last record deleted and the node's own checkpoints too: truncated at that seq."""
        store, settings = snapshot.copy("sta-truncated")
        _drop_last(store, snapshot.last_seq)
        db = sqlite3.connect(store)
        with db:
            db.execute("DELETE FROM audit_checkpoints")
        db.close()
        assert _verify(settings, None).returncode == 0  # consistent in itself
        done = _verify(settings, _gateway_store(snapshot.fed, "DE"))
        assert done.returncode == 1
        assert done.stdout.startswith(f"BROKEN: truncated at seq {snapshot.last_seq}:"), (
            done.stdout + done.stderr
        )

    def test_consistent_rewrite_named_by_gateway_root(self, snapshot: Snapshot) -> None:
        """Re-chained after a change: passes alone, root_mismatch at 1 with de.gateway's roots."""
        store, settings = snapshot.copy("sta-rewritten")
        _rewrite(store, 2)
        alone = _verify(settings, None)
        assert alone.returncode == 0, alone.stdout
        done = _verify(settings, _gateway_store(snapshot.fed, "DE"))
        assert done.returncode == 1
        assert done.stdout.startswith("BROKEN: root_mismatch at seq 1:"), done.stdout + done.stderr
