"""The node's audit log in SQLite: append-only table, hooks for the store's transactions,
checkpoints sealed for the national gateway.

What it is for
    The ``audit`` table holds the records of :mod:`broker.core.audit` with their chain hashes.
    Records are written by *hooks* (:data:`Within`) that the store runs inside the very
    transaction of the operation they record (collection in ``commit_delivery``, disclosure in
    ``add_outbox``, consultation in ``mark_read``, alteration and erasure in
    :mod:`broker.node.corrections` and :mod:`broker.node.retention`). If the record cannot be
    written, :class:`AuditUnavailable` is raised and the whole transaction rolls back: there is
    no unlogged operation.

Defence in depth, and its limit
    SQLite triggers refuse ``UPDATE`` and ``DELETE`` on ``audit``. Anyone with write access to
    the database file can drop the triggers; that is what the hash chain and the checkpoints
    held by the gateway (``audit_checkpoints`` here, the gateway's own store there) are for.

What it must never do
    Store a message body, or let an operation succeed without its record.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from broker.core import audit
from broker.core import wire as subjects
from broker.core.audit import ActorKind, AuditEntry, AuditRecord, Operation, StoredRecord
from broker.errors import Reason
from broker.node.errors import NodeError

Within = Callable[[sqlite3.Connection], None]
"""Work a store method runs inside its own transaction (after its own writes)."""

AUDIT_TABLE: Final = """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        seq INTEGER NOT NULL UNIQUE,
        at TEXT NOT NULL,
        operation TEXT NOT NULL,
        actor TEXT NOT NULL,
        actor_kind TEXT NOT NULL,
        agency TEXT NOT NULL,
        justification TEXT,
        message_id TEXT,
        message_type TEXT,
        peer TEXT,
        digest TEXT,
        detail TEXT,
        chain_hash BLOB NOT NULL
    );
    CREATE INDEX audit_message ON audit (message_id);
    CREATE INDEX audit_at ON audit (at);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

# Migration 2 of broker.node.store: the audit log, its checkpoints, correction/withdrawal
# marks and the erasure register (bodies erased by retention or withdrawal).
AUDIT_MIGRATION: Final = (
    AUDIT_TABLE
    + """
    CREATE TABLE audit_checkpoints (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL UNIQUE,
        at TEXT NOT NULL,
        token TEXT NOT NULL,
        sent_at TEXT
    );
    CREATE TABLE message_marks (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL,
        mark TEXT NOT NULL CHECK (mark IN ('corrected', 'withdrawn')),
        by_message_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        action TEXT,
        at TEXT NOT NULL,
        UNIQUE (message_id, by_message_id)
    );
    CREATE INDEX message_marks_message ON message_marks (message_id);
    CREATE TABLE erasures (
        message_id TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('sent', 'received')),
        at TEXT NOT NULL,
        why TEXT NOT NULL,
        PRIMARY KEY (message_id, direction)
    );
    """
)

_COLUMNS: Final = (
    "seq, at, operation, actor, actor_kind, agency, justification, message_id, "
    "message_type, peer, digest, detail, chain_hash"
)


class AuditUnavailable(NodeError):
    """The audit record of an operation could not be written: the operation was not done."""

    http_status = 503
    reason_code = Reason.AUDIT_UNAVAILABLE


# ------------------------------------------------------------------- writing ---


def append(db: sqlite3.Connection, entries: Iterable[AuditEntry], *, now: datetime) -> None:
    """Append ``entries`` in the caller's transaction; :class:`AuditUnavailable` on failure."""
    try:
        row = db.execute("SELECT seq, chain_hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        last, previous = (int(row[0]), bytes(row[1])) if row is not None else (0, audit.GENESIS)
        for entry in entries:
            stored = audit.append(previous, last, entry, now=now)
            values = stored.record.to_json()
            db.execute(
                f"INSERT INTO audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constant
                (*values.values(), stored.chain_hash),
            )
            last, previous = stored.record.seq, stored.chain_hash
    except sqlite3.Error as exc:
        raise AuditUnavailable(
            f"the audit record could not be written ({exc}); the operation was not performed"
        ) from exc


def log(entries: Sequence[AuditEntry], *, now: datetime) -> Within:
    """A hook that appends ``entries``."""

    def write(db: sqlite3.Connection) -> None:
        append(db, entries, now=now)

    return write


def both(*hooks: Within | None) -> Within:
    """One hook running several, in order."""

    def run(db: sqlite3.Connection) -> None:
        for hook in hooks:
            if hook is not None:
                hook(db)

    return run


def _justification(header: Mapping[str, Any]) -> str:
    return f"purpose: {header.get('purpose')}; legal basis: {header.get('legal_basis')}"


def disclosures(
    header: Mapping[str, Any], digest: str, *, actor: str | None, agency: str
) -> list[AuditEntry]:
    """One ``disclosure`` per recipient of a message we send (by ``actor``, or the system)."""
    return [
        AuditEntry(
            operation=Operation.DISCLOSURE,
            actor=actor or agency,
            actor_kind=ActorKind.PERSON if actor else ActorKind.SYSTEM,
            agency=agency,
            justification=_justification(header),
            message_id=str(header["id"]),
            message_type=str(header["type"]),
            peer=str(recipient),
            digest=digest,
        )
        for recipient in header["recipients"]
    ]


def collection(header: Mapping[str, Any], digest: str, *, agency: str) -> AuditEntry:
    """A received message stored by the node."""
    return AuditEntry(
        operation=Operation.COLLECTION,
        actor=agency,
        actor_kind=ActorKind.SYSTEM,
        agency=agency,
        justification=_justification(header),
        message_id=str(header["id"]),
        message_type=str(header["type"]),
        peer=str(header["sender"]["agency"]),
        digest=digest,
    )


def consultation(
    *,
    message_id: str,
    message_type: str,
    sender: str,
    digest: str,
    actor: str,
    justification: str,
    agency: str,
) -> AuditEntry:
    """A person opened a received message, for the stated reason."""
    return AuditEntry(
        operation=Operation.CONSULTATION,
        actor=actor,
        actor_kind=ActorKind.PERSON,
        agency=agency,
        justification=justification,
        message_id=message_id,
        message_type=message_type,
        peer=sender,
        digest=digest,
    )


# ------------------------------------------------------------------- reading ---


def _stored(row: sqlite3.Row | tuple[Any, ...]) -> StoredRecord:
    names = _COLUMNS.split(", ")
    raw = dict(zip(names, tuple(row), strict=True))
    return StoredRecord(record=AuditRecord.from_json(raw), chain_hash=bytes(raw["chain_hash"]))


def records(
    db: sqlite3.Connection, *, after: int = 0, since: str | None = None, until: str | None = None
) -> list[StoredRecord]:
    """Records in storage order (``after``: sequence numbers above; ``since``/``until``: times,
    inclusive, RFC 3339)."""
    clauses, params = ["seq > ?"], [after]
    if since is not None:
        clauses.append("at >= ?")
        params.append(since)  # type: ignore[arg-type]
    if until is not None:
        clauses.append("at <= ?")
        params.append(until)  # type: ignore[arg-type]
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM audit WHERE {' AND '.join(clauses)} ORDER BY id",  # noqa: S608 - fixed fragments
        params,
    ).fetchall()
    return [_stored(r) for r in rows]


def records_about(db: sqlite3.Connection, message_id: str) -> list[StoredRecord]:
    """Every record naming ``message_id``, oldest first."""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM audit WHERE message_id = ? ORDER BY id",  # noqa: S608 - constant
        (message_id,),
    ).fetchall()
    return [_stored(r) for r in rows]


def checkpoint_ranges(db: sqlite3.Connection) -> list[tuple[int, int, str]]:
    """``(first_seq, last_seq, token)`` of every checkpoint this node sealed, oldest first."""
    rows = db.execute("SELECT first_seq, last_seq, token FROM audit_checkpoints ORDER BY id")
    return [(int(r[0]), int(r[1]), str(r[2])) for r in rows]


def checkpoint_tokens(db: sqlite3.Connection) -> list[str]:
    """Every checkpoint this node sealed, oldest first."""
    return [str(r[0]) for r in db.execute("SELECT token FROM audit_checkpoints ORDER BY id")]


# --------------------------------------------------------------- checkpoints ---


def seal_checkpoint(
    db: sqlite3.Connection,
    *,
    node: str,
    sign: Callable[[audit.Checkpoint], str],
    now: datetime,
) -> str | None:
    """Seal the records since the last checkpoint (in the caller's transaction); the signed
    token, or None when there is nothing new."""
    row = db.execute("SELECT MAX(last_seq) FROM audit_checkpoints").fetchone()
    after = int(row[0]) if row is not None and row[0] is not None else 0
    checkpoint = audit.make_checkpoint(node, records(db, after=after), now=now)
    if checkpoint is None:
        return None
    token = sign(checkpoint)
    db.execute(
        "INSERT INTO audit_checkpoints (first_seq, last_seq, at, token) VALUES (?, ?, ?, ?)",
        (checkpoint.first_seq, checkpoint.last_seq, checkpoint.at, token),
    )
    return token


def unsent_checkpoints(db: sqlite3.Connection) -> list[tuple[int, str]]:
    """``(last_seq, token)`` of checkpoints not yet acknowledged by the federation."""
    rows = db.execute(
        "SELECT last_seq, token FROM audit_checkpoints WHERE sent_at IS NULL ORDER BY id"
    ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def mark_sent(db: sqlite3.Connection, last_seq: int, *, now: datetime) -> None:
    db.execute(
        "UPDATE audit_checkpoints SET sent_at = ? WHERE last_seq = ?",
        (audit.rfc3339(now), last_seq),
    )


def audit_subject(agency_id: str) -> str:
    """Where an agency publishes its checkpoints for its gateway: ``cb.audit.<agency>``."""
    return subjects.audit_subject(agency_id)


def checkpoint_msg_id(agency_id: str, last_seq: int) -> str:
    """``Nats-Msg-Id`` of a checkpoint: resubmissions are de-duplicated by JetStream."""
    return f"audit-{agency_id}-{last_seq}"
