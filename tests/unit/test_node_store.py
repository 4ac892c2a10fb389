"""The node's SQLite store: migrations, replay store, atomic delivery, outbox, idempotency."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.core.evidence import EvidenceKind
from broker.core.replay import ReplayStore
from broker.errors import ConfigError, InvalidMessage, Reason
from broker.node.model import (
    EvidenceRecord,
    OutboxState,
    Receipt,
    SealedRecord,
)
from broker.node.store import MIGRATIONS, Store

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
ID = "00000000-0000-4000-8000-000000000001"


def header(message_id: str = ID, **overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "id": message_id,
        "type": "request.assistance",
        "sender": {"agency": "de.lka-berlin", "country": "DE"},
        "recipients": ["nl.politie"],
        "conversation": "00000000-0000-4000-8000-0000000000c1",
        "in_reply_to": None,
        "due": "2026-12-01",
        "categories": [],
    }
    value.update(overrides)
    return value


def deliver(store: Store, message_id: str = ID, sequence: int = 1) -> None:
    store.commit_delivery(
        header=header(message_id),
        body={"title": "x"},
        receipt=Receipt(digest=f"d-{message_id}", sequence=sequence),
        replay_expires_at=int((NOW + timedelta(days=1)).timestamp()),
        now=NOW,
        evidence=EvidenceRecord(
            subject_id=message_id, kind=EvidenceKind.DELIVERED, actor="nl.politie", at="t"
        ),
        sealed=None,
    )


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with Store(tmp_path / "node.sqlite") as opened:
        yield opened


class TestMigrations:
    def test_new_database_gets_the_latest_schema(self, store: Store) -> None:
        """A fresh file is migrated to the newest user_version."""
        assert store.schema_version == len(MIGRATIONS)

    def test_reopening_keeps_the_data(self, tmp_path: Path) -> None:
        """Opening an existing database migrates nothing and keeps its rows."""
        with Store(tmp_path / "n.sqlite") as first:
            deliver(first)
        with Store(tmp_path / "n.sqlite") as second:
            assert [m.message_id for m in second.list_inbox()] == [ID]

    def test_newer_database_is_refused(self, tmp_path: Path) -> None:
        """A database written by a newer node is refused, not downgraded."""
        path = tmp_path / "n.sqlite"
        with sqlite3.connect(path) as db:
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        db.close()
        with pytest.raises(ConfigError):
            Store(path)

    def test_wal_mode_is_on(self, store: Store) -> None:
        """The database runs in WAL mode."""
        with sqlite3.connect(store.path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()


class TestReplayStore:
    def test_is_a_replay_store(self, store: Store) -> None:
        """remember is check-and-insert; seen is true until the id expires; purge forgets."""
        replay: ReplayStore = store
        expires = int((NOW + timedelta(hours=1)).timestamp())
        assert not replay.seen(ID, now=NOW)
        assert replay.remember(ID, expires_at=expires, now=NOW)
        assert not replay.remember(ID, expires_at=expires, now=NOW)
        assert replay.seen(ID, now=NOW)
        later = NOW + timedelta(hours=2)
        assert not replay.seen(ID, now=later)
        assert store.purge_replay(now=later) == 1


class TestDelivery:
    def test_delivery_and_replay_entry_commit_together(self, store: Store) -> None:
        """A second delivery of the same id is refused as replay and stores nothing more."""
        deliver(store)
        with pytest.raises(InvalidMessage) as caught:
            deliver(store, sequence=2)
        assert caught.value.reason is Reason.REPLAY
        assert len(store.list_inbox()) == 1
        assert store.processed(Receipt(digest=f"d-{ID}", sequence=1))
        assert not store.processed(Receipt(digest=f"d-{ID}", sequence=2))
        assert len(store.evidence_for(ID)) == 1

    def test_settled_or_held_answers_processed_and_quarantined_in_one(self, store: Store) -> None:
        """A settled delivery counts; a quarantined one counts unless an operator retries it."""
        deliver(store)
        settled = Receipt(digest=f"d-{ID}", sequence=1)
        held = Receipt(digest="d-held", sequence=7)
        store.quarantine(
            receipt=held,
            lane="messages",
            wire=b"{}",
            message_id=None,
            sender=None,
            type_=None,
            error="LocalError",
            detail="synthetic",
            attempts=3,
            first_at="2026-11-28T12:00:00Z",
            now=NOW,
        )
        assert store.settled_or_held(settled)
        assert store.settled_or_held(settled, held_counts=False)
        assert store.settled_or_held(held)
        assert not store.settled_or_held(held, held_counts=False)
        assert not store.settled_or_held(Receipt(digest="d-other", sequence=1))

    def test_filters_unread_overdue_and_conversation(self, store: Store) -> None:
        """Inbox filters select by read state, due date and conversation."""
        deliver(store)
        assert store.list_inbox(overdue_before="2026-12-02")[0].message_id == ID
        assert store.list_inbox(overdue_before="2026-12-01") == []
        assert store.list_inbox(conversation="00000000-0000-4000-8000-0000000000c2") == []
        store.mark_read(ID, actor="a", justification="j", now=NOW, evidence=None, sealed=None)
        assert store.list_inbox(unread=True) == []


class TestOutbox:
    def test_states_attempts_and_idempotency_key(self, store: Store) -> None:
        """An outbox row moves queued -> submitted -> acknowledged; its key is remembered."""
        sealed = SealedRecord(header=header(), body={}, wire=b"w", digest="d")
        store.add_outbox(sealed, now=NOW, idempotency=("k1", "h1"))
        assert store.idempotent("k1") == ("h1", ID)
        assert [m.message_id for m in store.list_outbox(pending_only=True)] == [ID]
        store.mark_outbox(ID, OutboxState.SUBMITTED, now=NOW, attempted=True)
        store.mark_outbox(ID, OutboxState.ACKNOWLEDGED, now=NOW)
        stored = store.outbox_message(ID)
        assert stored is not None
        assert (stored.state, stored.attempts, stored.wire) == (
            OutboxState.ACKNOWLEDGED,
            1,
            b"w",
        )
        assert store.list_outbox(pending_only=True) == []

    def test_evidence_is_hidden_from_the_default_listing(self, store: Store) -> None:
        """Evidence messages in the outbox are listed only on request."""
        store.add_outbox(
            SealedRecord(header=header(type="evidence.read"), body={}, wire=b"w", digest="d"),
            now=NOW,
        )
        assert store.list_outbox() == []
        assert len(store.list_outbox(include_evidence=True)) == 1
