"""The gateway's SQLite ledger: crossing records (shared by two gateways), their purge, and
an audit log that records a retried decision once while its hash chain stays valid."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.core import audit
from broker.core.header import Onward
from broker.core.policy import Decision, Point, Verdict
from broker.gateway.audit import UNVERIFIED_KEEP_SECONDS, GatewayLedger
from broker.gateway.border import EVIDENCE_SUBJECT_RULE, Crossing, Outcome
from broker.node import audit_log

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
EXP = int(NOW.timestamp()) + 3600


def crossing(message_id: str, *, digest: str = "d1", direction: str = "ingress") -> Crossing:
    return Crossing(
        message_id=message_id,
        direction=direction,
        digest=digest,
        sender="ua.npu",
        recipients=("de.lka-berlin", "de.sta-berlin"),
        onward=Onward(allowed=True, exclude=("NL", "UA")),
        exp=EXP,
    )


def relayed(message_id: str, *, digest: str = "d1") -> Outcome:
    """An ingress outcome delivering a message to two local agencies."""
    return Outcome(
        message_id=message_id,
        message_type="bulletin",
        sender="ua.npu",
        relayed_to=("de.lka-berlin", "de.sta-berlin"),
        digest=digest,
        exp=EXP,
        crossing=crossing(message_id, digest=digest),
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[GatewayLedger]:
    opened = GatewayLedger(tmp_path / "gateway.sqlite", agency="de.gateway")
    yield opened
    opened.close()


def audit_rows(path: Path) -> list[audit.StoredRecord]:
    db = sqlite3.connect(path)
    try:
        return audit_log.records(db)
    finally:
        db.close()


class TestCrossings:
    def test_recorded_crossing_reads_back_exactly(self, ledger: GatewayLedger) -> None:
        """What the border let through is read back field for field."""
        message_id = str(uuid.uuid4())
        ledger.record("ingress", [relayed(message_id)], now=NOW)
        assert ledger.crossings(message_id) == (crossing(message_id),)
        assert ledger.crossings(str(uuid.uuid4())) == ()

    def test_two_gateways_sharing_the_file_see_each_others_records(self, tmp_path: Path) -> None:
        """A crossing recorded by one gateway is visible to the other on the same file."""
        path = tmp_path / "shared.sqlite"
        first = GatewayLedger(path, agency="de.gateway")
        second = GatewayLedger(path, agency="de.gateway")
        try:
            message_id = str(uuid.uuid4())
            first.record("ingress", [relayed(message_id)], now=NOW)
            assert second.crossings(message_id) == (crossing(message_id),)
        finally:
            first.close()
            second.close()

    def test_copies_with_another_digest_are_kept_apart(self, ledger: GatewayLedger) -> None:
        """Two different wire copies of one id are two records (the border reads both)."""
        message_id = str(uuid.uuid4())
        ledger.record("ingress", [relayed(message_id, digest="a")], now=NOW)
        ledger.record("ingress", [relayed(message_id, digest="b")], now=NOW)
        assert [c.digest for c in ledger.crossings(message_id)] == ["a", "b"]

    def test_purge_after_exp_and_clock_skew(self, ledger: GatewayLedger) -> None:
        """Records are kept until exp + 120 s and deleted at that instant."""
        message_id = str(uuid.uuid4())
        ledger.record("ingress", [relayed(message_id)], now=NOW)
        assert ledger.purge(datetime.fromtimestamp(EXP + 119, UTC)) == 0
        assert ledger.crossings(message_id)
        assert ledger.purge(datetime.fromtimestamp(EXP + 120, UTC)) == 1
        assert ledger.crossings(message_id) == ()

    def test_recording_purges_expired_records_by_itself(self, ledger: GatewayLedger) -> None:
        """A gateway that only records still forgets expired crossings (no job needed)."""
        old = str(uuid.uuid4())
        ledger.record("ingress", [relayed(old)], now=NOW)
        later = datetime.fromtimestamp(EXP + 3600, UTC)
        ledger.record("ingress", [relayed(str(uuid.uuid4()))], now=later)
        assert ledger.crossings(old) == ()

    def test_a_failed_record_leaves_no_crossing(self, ledger: GatewayLedger) -> None:
        """Crossing and audit are one transaction: if the audit fails, no crossing remains."""
        message_id = str(uuid.uuid4())
        bad = Outcome(
            message_id=message_id,
            relayed_to=("de.lka-berlin",),
            digest="d1",
            exp=EXP,
            crossing=crossing(message_id),
        )
        ledger.agency = ""  # AuditEntry refuses an empty agency: the audit write fails
        with pytest.raises(ValueError, match="agency"):
            ledger.record("ingress", [bad], now=NOW)
        ledger.agency = "de.gateway"
        assert ledger.crossings(message_id) == ()


class TestIdempotentAudit:
    def test_a_retried_decision_is_audited_once(
        self, ledger: GatewayLedger, tmp_path: Path
    ) -> None:
        """The same input decided again (redelivery after a failed publish) adds no record."""
        message_id = str(uuid.uuid4())
        ledger.record("ingress", [relayed(message_id)], now=NOW)
        ledger.record("ingress", [relayed(message_id)], now=NOW + timedelta(seconds=5))
        ledger.record("ingress", [relayed(message_id), relayed(message_id)], now=NOW)
        rows = audit_rows(tmp_path / "gateway.sqlite")
        assert [r.record.entry.peer for r in rows] == ["de.lka-berlin", "de.sta-berlin"]
        assert audit.verify(rows, []).ok

    def test_other_direction_or_bytes_are_other_decisions(
        self, ledger: GatewayLedger, tmp_path: Path
    ) -> None:
        """Another wire digest or direction for the same id is a new decision, logged, and
        the chain still verifies across all of them."""
        message_id = str(uuid.uuid4())
        ledger.record("ingress", [relayed(message_id, digest="a")], now=NOW)
        ledger.record("ingress", [relayed(message_id, digest="b")], now=NOW)
        ledger.record("egress", [relayed(message_id, digest="a")], now=NOW)
        rows = audit_rows(tmp_path / "gateway.sqlite")
        assert len(rows) == 6
        assert {r.record.entry.digest for r in rows} == {"a", "b"}
        assert audit.verify(rows, []).ok

    def test_unverifiable_junk_is_audited_once_per_distinct_bytes(
        self, ledger: GatewayLedger, tmp_path: Path
    ) -> None:
        """Refusals without id or exp are keyed by their digest and remembered a day."""
        junk = Outcome(refused="malformed", digest="junk")
        ledger.record("egress", [junk, junk], now=NOW)
        ledger.record("egress", [junk], now=NOW + timedelta(seconds=UNVERIFIED_KEEP_SECONDS - 1))
        assert len(audit_rows(tmp_path / "gateway.sqlite")) == 1
        ledger.record("egress", [junk], now=NOW + timedelta(seconds=UNVERIFIED_KEEP_SECONDS + 61))
        assert len(audit_rows(tmp_path / "gateway.sqlite")) == 2

    def test_refusal_records_name_the_deciding_rule(
        self, ledger: GatewayLedger, tmp_path: Path
    ) -> None:
        """A border-rule refusal is audited with its rule id and the wire digest."""
        refused = Outcome(
            message_id=str(uuid.uuid4()),
            message_type="evidence.rejected",
            sender="de.fbs-berlin",
            decisions=(
                Decision(
                    verdict=Verdict.DENY,
                    rule_id=EVIDENCE_SUBJECT_RULE,
                    reason="not delivered",
                    point=Point.EGRESS,
                ),
            ),
            rejected_for=("UA",),
            digest="d9",
            exp=EXP,
        )
        ledger.record("egress", [refused], now=NOW)
        (row,) = audit_rows(tmp_path / "gateway.sqlite")
        entry = row.record.entry
        assert (entry.operation, entry.peer, entry.detail, entry.digest) == (
            audit.Operation.REFUSAL,
            "UA",
            EVIDENCE_SUBJECT_RULE,
            "d9",
        )

    def test_an_existing_ledger_file_gains_the_new_tables(self, tmp_path: Path) -> None:
        """A file written before crossings existed (roots and audit only) opens and records."""
        path = tmp_path / "old.sqlite"
        db = sqlite3.connect(path)
        db.executescript(audit_log.AUDIT_TABLE)
        db.close()
        ledger = GatewayLedger(path, agency="de.gateway")
        try:
            message_id = str(uuid.uuid4())
            ledger.record("ingress", [relayed(message_id)], now=NOW)
            assert ledger.crossings(message_id)
        finally:
            ledger.close()
