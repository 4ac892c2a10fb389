"""The border gateway's only state: node audit roots, its own audit log, and crossings.

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
      and nothing crosses the border unlogged. A decision retried for the same input (same
      message id, direction and wire digest: a redelivery after a failed publish, or the same
      input taken by both gateways of a country) is logged once: ``decided`` holds the keys
      of the decisions logged, and a key already there adds nothing to the chain.
    * ``crossings``: what the border let through (:class:`~broker.gateway.border.Crossing`:
      id, digest, sender, recipients, onward marking, exp), written in the same transaction
      as the audit records, read by the border rules (onward transfer, evidence subjects).
      Rows are deleted after ``exp`` + clock skew (with the ``decided`` keys), at most once a
      minute while recording.

    Two gateways of a country may share the file (WAL, ``busy_timeout``): each decision is
    one ``BEGIN IMMEDIATE`` transaction, so they see each other's crossings and keys.

What it must never do
    Keep a checkpoint it could not verify, or a message body.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from broker.core import audit
from broker.core.audit import ActorKind, AuditEntry, Checkpoint, Operation
from broker.core.directory import Directory
from broker.core.header import Onward
from broker.errors import InvalidMessage, Reason
from broker.gateway.border import CLOCK_SKEW_SECONDS, Crossing, Outcome
from broker.node import audit_log

if TYPE_CHECKING:  # the relay's value object; this module stays free of the NATS edge
    from broker.gateway.attachments import ChunkRefusal

# The highest directory serial this gateway accepted: a restart with an older (still unexpired)
# directory file must not undo a revocation (docs/threat-model.md).
DIRECTORY_SERIAL_TABLE = """
    CREATE TABLE IF NOT EXISTS directory_serial (
        only INTEGER PRIMARY KEY CHECK (only = 1),
        serial INTEGER NOT NULL
    );
"""

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

# Both tables are keyed like a decision: (message id, direction, SHA-256 of the wire bytes).
# message_id is '' for input whose id was illegible.
CROSSINGS_TABLES = """
    CREATE TABLE IF NOT EXISTS decided (
        message_id TEXT NOT NULL,
        direction TEXT NOT NULL,
        digest TEXT NOT NULL,
        expires INTEGER NOT NULL,
        PRIMARY KEY (message_id, direction, digest)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS decided_expires ON decided (expires);
    CREATE TABLE IF NOT EXISTS crossings (
        message_id TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('egress', 'ingress')),
        digest TEXT NOT NULL,
        sender TEXT NOT NULL,
        recipients TEXT NOT NULL,
        onward_allowed INTEGER NOT NULL,
        onward_exclude TEXT NOT NULL,
        exp INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        PRIMARY KEY (message_id, direction, digest)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS crossings_expires ON crossings (expires);
"""

# A decision about input that never verified has no exp: its key is kept this long (a
# redelivery comes within minutes; junk must not grow the table for ever).
UNVERIFIED_KEEP_SECONDS: Final = 24 * 3600
PURGE_EVERY_SECONDS: Final = 60


class GatewayLedger:
    """The gateway's SQLite file: node roots, its own audit log, and the crossings (it is
    the :class:`~broker.gateway.border.CrossingLog` its ``Border`` reads)."""

    def __init__(self, path: Path | str, *, agency: str) -> None:
        self.agency = agency
        self._purged_at: int | None = None
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
            script = ROOTS_TABLE + CROSSINGS_TABLES + DIRECTORY_SERIAL_TABLE
            if not exists:
                script += audit_log.AUDIT_TABLE
            self._db.executescript(f"BEGIN IMMEDIATE;\n{script}\nCOMMIT;")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def directory_serial(self) -> int:
        """The highest directory serial accepted so far (0: none yet)."""
        with self._lock:
            row = self._db.execute("SELECT serial FROM directory_serial WHERE only = 1").fetchone()
        return int(row[0]) if row is not None else 0

    def accept_directory_serial(self, serial: int) -> None:
        """Remember ``serial`` as accepted (never lowers what is remembered)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO directory_serial (only, serial) VALUES (1, ?) "
                "ON CONFLICT (only) DO UPDATE SET serial = max(serial, excluded.serial)",
                (serial,),
            )

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
        """Log border decisions and record crossings (before the outputs are published), in
        one commit. A decision already logged (same id, direction, digest) is not logged
        again; its crossing, if any, is kept once."""
        self.record_many([(direction, outcomes)], now=now)

    def record_many(
        self, batches: Sequence[tuple[str, Sequence[Outcome]]], *, now: datetime
    ) -> None:
        """:meth:`record` for the ``(direction, outcomes)`` of several loops, in ONE commit
        (a group commit: nothing of it is kept if any of it fails)."""
        t = int(now.timestamp())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # Purge first, so an expired key cannot suppress the record of a new decision.
                if self._purged_at is None or t - self._purged_at >= PURGE_EVERY_SECONDS:
                    self._purge(t)
                    self._purged_at = t
                entries = []
                for direction, outcomes in batches:
                    for outcome in outcomes:
                        if self._first_decision(direction, outcome, t):
                            entries.extend(self._entries(direction, outcome))
                        if outcome.crossing is not None:
                            self._insert_crossing(outcome.crossing)
                if entries:
                    audit_log.append(self._db, entries, now=now)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def record_chunk_refusal(self, refusal: ChunkRefusal, *, now: datetime) -> bool:
        """Log a refused attachment chunk (``refusal`` entry: reason code and why), once per
        file and reason: a file's further bad chunks add nothing to the chain. Whether it
        was logged now."""
        t = int(now.timestamp())
        expires = (
            refusal.exp + CLOCK_SKEW_SECONDS
            if refusal.exp is not None
            else t + UNVERIFIED_KEEP_SECONDS
        )
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                first = self._db.execute(
                    "INSERT OR IGNORE INTO decided (message_id, direction, digest, expires) "
                    "VALUES (?, ?, ?, ?)",
                    (
                        refusal.message_id,
                        refusal.direction,
                        f"chunk:{refusal.attachment_id}:{refusal.reason.value}",
                        expires,
                    ),
                ).rowcount
                if first == 1:
                    entry = AuditEntry(
                        operation=Operation.REFUSAL,
                        actor=self.agency,
                        actor_kind=ActorKind.SYSTEM,
                        agency=self.agency,
                        message_id=refusal.message_id,
                        peer=refusal.peer,
                        justification=f"{refusal.direction}: attachment chunk "
                        f"{refusal.reason.value}",
                        detail=refusal.detail,
                    )
                    audit_log.append(self._db, [entry], now=now)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return first == 1

    def _first_decision(self, direction: str, outcome: Outcome, t: int) -> bool:
        expires = (
            outcome.exp + CLOCK_SKEW_SECONDS
            if outcome.exp is not None
            else t + UNVERIFIED_KEEP_SECONDS
        )
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO decided (message_id, direction, digest, expires) "
            "VALUES (?, ?, ?, ?)",
            (outcome.message_id or "", direction, outcome.digest, expires),
        )
        return cursor.rowcount == 1

    def _insert_crossing(self, c: Crossing) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO crossings (message_id, direction, digest, sender, "
            "recipients, onward_allowed, onward_exclude, exp, expires) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                c.message_id,
                c.direction,
                c.digest,
                c.sender,
                json.dumps(list(c.recipients)),
                int(c.onward.allowed),
                json.dumps(list(c.onward.exclude)),
                c.exp,
                c.expires,
            ),
        )

    def _purge(self, t: int) -> int:
        dropped = self._db.execute("DELETE FROM crossings WHERE expires <= ?", (t,)).rowcount
        self._db.execute("DELETE FROM decided WHERE expires <= ?", (t,))
        return int(dropped)

    def purge(self, now: datetime) -> int:
        """Delete crossings (and decision keys) past ``exp`` + clock skew; how many crossings."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                dropped = self._purge(int(now.timestamp()))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return dropped

    def crossings(self, message_id: str) -> Sequence[Crossing]:
        """Every crossing recorded for ``message_id`` (by any gateway sharing the file)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT message_id, direction, digest, sender, recipients, onward_allowed, "
                "onward_exclude, exp FROM crossings WHERE message_id = ? "
                "ORDER BY direction, digest",
                (message_id,),
            ).fetchall()
        return tuple(
            Crossing(
                message_id=str(r[0]),
                direction=str(r[1]),
                digest=str(r[2]),
                sender=str(r[3]),
                recipients=tuple(str(a) for a in json.loads(r[4])),
                onward=Onward(allowed=bool(r[5]), exclude=tuple(str(c) for c in json.loads(r[6]))),
                exp=int(r[7]),
            )
            for r in rows
        )

    def _entries(self, direction: str, outcome: Outcome) -> list[AuditEntry]:
        entries: list[AuditEntry] = []
        base = {
            "actor": self.agency,
            "actor_kind": ActorKind.SYSTEM,
            "agency": self.agency,
            "message_id": outcome.message_id,
            "message_type": outcome.message_type,
            "digest": outcome.digest or None,
        }
        denying = ", ".join(sorted({d.rule_id for d in outcome.decisions if not d.allowed}))
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
                    detail=denying or None,
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
