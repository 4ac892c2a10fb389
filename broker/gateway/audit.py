"""The border gateway's only state: the audit roots of its nodes and its own audit log.

What it is for
    Gateways are otherwise stateless (NATS holds every message). This small SQLite file (the
    ``store`` of the gateway's settings) keeps:

    * ``roots``: every audit checkpoint a node of this country published on
      ``cb.audit.<agency>``, after its signature was verified with the directory's signing key
      of that agency. A node that later rewrites or truncates its log no longer matches them
      (``casebridge audit verify --gateway-roots FILE``).
    * ``audit``: the gateway's own hash-chained log of border decisions (``transfer`` when a
      message is relayed towards a peer or a local agency, ``refusal`` otherwise), written
      BEFORE the outputs are published: if it cannot be written the input is not acknowledged
      and nothing crosses the border unlogged. A redelivered input is logged again.

What it must never do
    Keep a checkpoint it could not verify, or a message body.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from broker.core import audit
from broker.core.audit import ActorKind, AuditEntry, Checkpoint, Operation
from broker.core.directory import Directory
from broker.errors import InvalidMessage, Reason
from broker.gateway.border import Outcome
from broker.node import audit_log

ROOTS_TABLE = """
    CREATE TABLE IF NOT EXISTS roots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        node TEXT NOT NULL,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        token TEXT NOT NULL,
        received_at TEXT NOT NULL,
        UNIQUE (node, token)
    );
    CREATE INDEX IF NOT EXISTS roots_node ON roots (node, last_seq);
"""


class GatewayLedger:
    """The gateway's SQLite file: node roots and its own audit log."""

    def __init__(self, path: Path | str, *, agency: str) -> None:
        self.agency = agency
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        try:
            # Each gateway instance should have its own file; if two share one, they wait for
            # each other's commits instead of failing.
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            exists = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'"
            ).fetchone()
            script = ROOTS_TABLE if exists else ROOTS_TABLE + audit_log.AUDIT_TABLE
            self._db.executescript(f"BEGIN IMMEDIATE;\n{script}\nCOMMIT;")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def accept_checkpoint(
        self, token: str, *, subject_agency: str, directory: Directory, now: datetime
    ) -> Checkpoint:
        """Verify a checkpoint published on ``cb.audit.<subject_agency>`` and keep it."""
        kid = audit.checkpoint_kid(token)
        keys = directory.signing_key(kid, now=now)
        if keys.agency_id != subject_agency:
            raise InvalidMessage(
                Reason.SENDER_MISMATCH, f"checkpoint signed by {keys.agency_id} on another subject"
            )
        checkpoint = audit.open_checkpoint(token, keys.signing_key, node=subject_agency)
        with self._lock:
            self._db.execute(
                "INSERT INTO roots (node, first_seq, last_seq, token, received_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    checkpoint.node,
                    checkpoint.first_seq,
                    checkpoint.last_seq,
                    token,
                    audit.rfc3339(now),
                ),
            )
        return checkpoint

    def record(self, direction: str, outcomes: Sequence[Outcome], *, now: datetime) -> None:
        """Log border decisions (before their outputs are published), in one commit."""
        entries = [e for outcome in outcomes for e in self._entries(direction, outcome)]
        if not entries:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                audit_log.append(self._db, entries, now=now)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _entries(self, direction: str, outcome: Outcome) -> list[AuditEntry]:
        entries: list[AuditEntry] = []
        base = {
            "actor": self.agency,
            "actor_kind": ActorKind.SYSTEM,
            "agency": self.agency,
            "message_id": outcome.message_id,
            "message_type": outcome.message_type,
        }
        for peer in outcome.relayed_to:
            entries.append(
                AuditEntry(
                    operation=Operation.TRANSFER,
                    peer=peer,
                    justification=f"{direction}: relayed from {outcome.sender}",
                    **base,  # type: ignore[arg-type]
                )
            )
        for peer in outcome.rejected_for:
            entries.append(
                AuditEntry(
                    operation=Operation.REFUSAL,
                    peer=peer,
                    justification=f"{direction}: refused for {outcome.sender}",
                    **base,  # type: ignore[arg-type]
                )
            )
        if outcome.refused:
            entries.append(
                AuditEntry(
                    operation=Operation.REFUSAL,
                    peer=outcome.sender,
                    justification=f"{direction}: {outcome.refused}",
                    **base,  # type: ignore[arg-type]
                )
            )
        return entries


def roots_in(path: Path | str, node: str) -> list[str]:
    """The checkpoint tokens a gateway file holds for ``node`` (read-only), oldest first."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT token FROM roots WHERE node = ? ORDER BY id", (node,)).fetchall()
    finally:
        db.close()
    return [str(r[0]) for r in rows]
