"""The node's SQLite store: outbox, inbox, evidence trails, threads, replay store, idempotency.

What it is for
    Durable state of one agency node in one SQLite file (WAL, ``synchronous=FULL``), opened by
    one process. Every method is short and synchronous; the async node calls them through
    ``asyncio.to_thread``, and a lock serialises them on the one connection (one writer).
    :meth:`Store.batch` holds one transaction open on one thread while many write methods run
    inside it as savepoints (the receive loop settles a fetched batch with one commit).

The transactions that matter
    * :meth:`Store.commit_delivery`: the delivered message, its replay-store entry, its receipt
      (stream sequence + digest) and the ``delivered`` evidence (record and sealed message in
      the outbox) are ONE transaction. The node acknowledges to NATS only after it returns, so
      a crash at any point either loses nothing or leaves exactly one copy.
    * :meth:`Store.commit_rejection`: the same for a refusal (receipt + ``rejected`` evidence).
    * :meth:`Store.add_outbox` stores a sealed message before the first submit attempt, so a
      message acknowledged to a case worker survives a crash and is resubmitted on restart.

Storage faults
    Every SQLite failure that says the storage (not the SQL) is at fault -- disk or database
    full, I/O error, locked or busy beyond the busy timeout, read-only, corrupt -- is
    translated here, once, into :class:`~broker.node.errors.StorageUnavailable` (503, with
    ``outcome``: ``not_stored`` when the transaction was rolled back, ``unknown`` when the
    commit itself failed on I/O). The store remembers the outcome of its last write
    (:meth:`Store.writable`, readiness) and counts failed writes (``write_failures``, a metric).

What it must never do
    Decide anything about a message (that is ``broker.core`` and the node service), hold key
    material, or log bodies. Schema changes go through :data:`MIGRATIONS` (``PRAGMA
    user_version``); a database newer than this code is refused.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from broker.core.evidence import EVIDENCE_PREFIX, EvidenceKind
from broker.errors import ConfigError, InvalidMessage, Reason
from broker.node.audit_log import AUDIT_MIGRATION, Within
from broker.node.errors import StorageOutcome, StorageUnavailable
from broker.node.model import (
    EvidenceRecord,
    InboxMessage,
    OutboxMessage,
    OutboxState,
    Quarantined,
    Receipt,
    Rejection,
    SealedRecord,
    SentSubject,
    iso,
)

T = TypeVar("T")


def _event_trigger(
    *, name: str, when: str, type_sql: str, at: str, message_id: str, data: str
) -> str:
    """A trigger appending one event (next number of the counter) for a row change."""
    return f"""
    CREATE TRIGGER {name} {when}
    BEGIN
        UPDATE event_counter SET last = last + 1 WHERE only = 1;
        INSERT INTO events (seq, type, at, message_id, data)
        VALUES ((SELECT last FROM event_counter WHERE only = 1), {type_sql}, {at},
                {message_id}, {data});
    END;
    """  # noqa: S608 - fixed fragments of this module only


# The events carry ids and header fields, never a body (a body is fetched with credentials).
# Outbox: the message stored (``outbox.stored``) and acknowledged by JetStream; the attempts
# in between (queued <-> submitted) are not events. Evidence we produce is not an event.
_EVENT_TABLES: Final = """
    CREATE TABLE event_counter (
        only INTEGER PRIMARY KEY CHECK (only = 1),
        last INTEGER NOT NULL,
        feed TEXT NOT NULL
    );
    INSERT INTO event_counter (only, last, feed) VALUES (1, 0, lower(hex(randomblob(8))));
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        type TEXT NOT NULL,
        at TEXT NOT NULL,
        message_id TEXT,
        data TEXT NOT NULL
    );
    CREATE INDEX events_at ON events (at);
    """

EVENTS_MIGRATION: Final = "".join(
    (
        _EVENT_TABLES,
        _event_trigger(
            name="event_message_received",
            when="AFTER INSERT ON inbox",
            type_sql="'message.received'",
            at="NEW.received_at",
            message_id="NEW.id",
            data="json_object('message_id', NEW.id, 'type', NEW.type, 'sender', NEW.sender, "
            "'conversation', NEW.conversation, 'in_reply_to', NEW.in_reply_to, 'due', NEW.due, "
            "'digest', NEW.digest, 'header', json(NEW.header))",
        ),
        _event_trigger(
            name="event_message_rejected",
            when="AFTER INSERT ON rejections",
            type_sql="'message.rejected'",
            at="NEW.at",
            message_id="NEW.message_id",
            data="json_object('message_id', NEW.message_id, 'sender', NEW.sender, "
            "'type', NEW.type, 'reason', NEW.reason, 'rule_id', NEW.rule_id, 'detail', NEW.detail, "
            "'digest', NEW.digest, 'sequence', NEW.sequence)",
        ),
        _event_trigger(
            name="event_evidence_received",
            when="AFTER INSERT ON evidence WHEN NEW.direction = 'received'",
            type_sql="'evidence.received'",
            at="NEW.at",
            message_id="NEW.subject_id",
            data="json_object('message_id', NEW.subject_id, 'kind', NEW.kind, 'actor', NEW.actor, "
            "'at', NEW.at, 'reason', NEW.reason, 'rule_id', NEW.rule_id, "
            "'evidence_id', NEW.evidence_id, 'digest_matches', "
            "CASE WHEN NEW.digest_matches IS NULL THEN NULL "
            "WHEN NEW.digest_matches THEN json('true') ELSE json('false') END)",
        ),
        _event_trigger(
            name="event_message_marked",
            when="AFTER INSERT ON message_marks",
            type_sql="'message.' || NEW.mark",
            at="NEW.at",
            message_id="NEW.message_id",
            data="json_object('message_id', NEW.message_id, 'by_message_id', NEW.by_message_id, "
            "'reason', NEW.reason, 'action', NEW.action)",
        ),
        _event_trigger(
            name="event_outbox_stored",
            when="AFTER INSERT ON outbox WHEN NEW.type NOT LIKE 'evidence.%'",
            type_sql="'outbox.stored'",
            at="NEW.created_at",
            message_id="NEW.id",
            data="json_object('message_id', NEW.id, 'type', NEW.type, "
            "'conversation', NEW.conversation, 'in_reply_to', NEW.in_reply_to, 'state', NEW.state, "
            "'recipients', json_extract(NEW.header, '$.recipients'), "
            "'derived_from', json_extract(NEW.header, '$.derived_from'))",
        ),
        _event_trigger(
            name="event_outbox_acknowledged",
            when="AFTER UPDATE OF state ON outbox WHEN NEW.state = 'acknowledged' "
            "AND OLD.state != 'acknowledged' AND NEW.type NOT LIKE 'evidence.%'",
            type_sql="'outbox.acknowledged'",
            at="NEW.updated_at",
            message_id="NEW.id",
            data="json_object('message_id', NEW.id, 'type', NEW.type, "
            "'conversation', NEW.conversation, 'state', NEW.state, 'attempts', NEW.attempts)",
        ),
    )
)

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: initial schema
    """
    CREATE TABLE outbox (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        conversation TEXT NOT NULL,
        in_reply_to TEXT,
        header TEXT NOT NULL,
        body TEXT NOT NULL,
        wire BLOB NOT NULL,
        digest TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'submitted', 'acknowledged')),
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        last_error TEXT
    );
    CREATE INDEX outbox_conversation ON outbox (conversation);
    CREATE INDEX outbox_in_reply_to ON outbox (in_reply_to);
    CREATE INDEX outbox_pending ON outbox (state) WHERE state != 'acknowledged';
    CREATE TABLE inbox (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        sender TEXT NOT NULL,
        conversation TEXT NOT NULL,
        in_reply_to TEXT,
        due TEXT,
        header TEXT NOT NULL,
        body TEXT NOT NULL,
        digest TEXT NOT NULL,
        received_at TEXT NOT NULL,
        read_at TEXT,
        read_by TEXT
    );
    CREATE INDEX inbox_conversation ON inbox (conversation);
    CREATE INDEX inbox_due ON inbox (due) WHERE due IS NOT NULL;
    CREATE TABLE receipts (
        digest TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        message_id TEXT,
        outcome TEXT NOT NULL CHECK (outcome IN ('delivered', 'evidence', 'rejected')),
        at TEXT NOT NULL,
        PRIMARY KEY (digest, sequence)
    );
    CREATE TABLE rejections (
        digest TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        message_id TEXT,
        sender TEXT,
        type TEXT,
        reason TEXT NOT NULL,
        rule_id TEXT,
        detail TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (digest, sequence)
    );
    CREATE TABLE evidence (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        subject_id TEXT,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        at TEXT NOT NULL,
        reason TEXT,
        rule_id TEXT,
        detail TEXT,
        evidence_id TEXT UNIQUE,
        direction TEXT NOT NULL CHECK (direction IN ('sent', 'received')),
        digest_matches INTEGER
    );
    CREATE INDEX evidence_subject ON evidence (subject_id);
    CREATE TABLE consultations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL,
        actor TEXT NOT NULL,
        justification TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE TABLE replay (
        id TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX replay_expiry ON replay (expires_at);
    CREATE TABLE idempotency (
        key TEXT PRIMARY KEY,
        request_hash TEXT NOT NULL,
        message_id TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    """,
    # 2: audit log, checkpoints, correction marks, erasures (broker.node.audit_log)
    AUDIT_MIGRATION,
    # 3: deliveries set aside after repeated local failures (Node.handle, docs/node-api.md)
    """
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        digest TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        lane TEXT NOT NULL,
        wire BLOB NOT NULL,
        message_id TEXT,
        sender TEXT,
        type TEXT,
        error TEXT NOT NULL,
        detail TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        first_at TEXT NOT NULL,
        last_at TEXT NOT NULL,
        UNIQUE (digest, sequence)
    );
    """,
    # 4: the wire bytes of what we receive (a received message, a received evidence message),
    # so that an evidence bundle (broker.node.evidence_export) can prove them to a third party.
    # Rows stored before this migration have none (NULL).
    """
    ALTER TABLE inbox ADD COLUMN wire BLOB;
    ALTER TABLE evidence ADD COLUMN wire BLOB;
    """,
    # 5: the highest directory serial this node accepted, so that a restart with an older (still
    # unexpired) directory file cannot undo a revocation (docs/threat-model.md).
    """
    CREATE TABLE directory_serial (
        only INTEGER PRIMARY KEY CHECK (only = 1),
        serial INTEGER NOT NULL
    );
    """,
    # 6: the change feed (broker.node.events): every change a case system may care about is
    # an event, written by a trigger in the very transaction of the change, numbered by one
    # counter (gap-free: a rolled-back change rolls back its number too).
    EVENTS_MIGRATION,
    # 7: webhook subscriptions and their deliveries, queued here so that they survive a
    # restart (broker.node.webhooks). ``cursor``: the last event fanned out to a subscription.
    """
    CREATE TABLE webhook_subscriptions (
        id TEXT PRIMARY KEY,
        system TEXT NOT NULL,
        url TEXT NOT NULL,
        secret TEXT NOT NULL,
        event_types TEXT NOT NULL,
        cursor INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE webhook_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        subscription_id TEXT NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        last_error TEXT,
        created_at TEXT NOT NULL,
        delivered_at TEXT,
        UNIQUE (subscription_id, seq)
    );
    CREATE INDEX webhook_due ON webhook_deliveries (next_at) WHERE state = 'pending';
    CREATE INDEX webhook_unsettled ON webhook_deliveries (seq) WHERE state != 'delivered';
    """,
    # 8: per-system API clients and their secrets (hashes only; broker.node.clients).
    """
    CREATE TABLE api_clients (
        id TEXT PRIMARY KEY,
        system TEXT NOT NULL,
        purpose TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE api_client_secrets (
        id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL REFERENCES api_clients (id),
        hash BLOB NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT
    );
    CREATE INDEX api_client_secrets_client ON api_client_secrets (client_id);
    """,
    # 9: the focal-point console (broker.console): people and their roles, drafts that wait
    # for a supervisor's four-eyes release, drafts a person saved; indexes for its lists.
    # Password hashes only (argon2id), never a password; the TOTP secret is the person's
    # second factor, readable only by this node.
    """
    CREATE TABLE console_users (
        username TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('officer', 'supervisor', 'auditor')),
        password_hash TEXT NOT NULL,
        totp_secret TEXT,
        disabled INTEGER NOT NULL DEFAULT 0,
        failed_logins INTEGER NOT NULL DEFAULT 0,
        locked_until TEXT,
        must_change INTEGER NOT NULL DEFAULT 0,
        time_zone TEXT NOT NULL DEFAULT 'UTC',
        language TEXT NOT NULL DEFAULT 'en',
        email TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE console_releases (
        id TEXT PRIMARY KEY,
        author TEXT NOT NULL,
        draft TEXT NOT NULL,
        summary TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('waiting', 'deciding', 'released', 'refused')),
        decided_by TEXT,
        message_id TEXT,
        created_at TEXT NOT NULL,
        decided_at TEXT
    );
    CREATE INDEX console_releases_state ON console_releases (state);
    CREATE TABLE console_drafts (
        id TEXT PRIMARY KEY,
        author TEXT NOT NULL,
        type TEXT NOT NULL,
        form TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX console_drafts_author ON console_drafts (author, updated_at);
    -- the console's lists and counts: without these every page scans whole rows (bodies too)
    -- (covering: lists, counts and the scorecard read these columns, never the wide row)
    CREATE INDEX inbox_console ON inbox (received_at, id, type, sender, due, read_at);
    CREATE INDEX inbox_due_id ON inbox (due, id) WHERE due IS NOT NULL;
    CREATE INDEX inbox_sender ON inbox (sender, received_at);
    CREATE INDEX outbox_created ON outbox (created_at);
    """,
    # 10: hit/no-hit lookups (issue 19): the lookup loop lists their messages by type several
    # times a second.
    """
    CREATE INDEX inbox_lookup ON inbox (type, received_at)
        WHERE type IN ('lookup.query', 'lookup.answer');
    """,
    # 11: attachments (files of messages) and messages held until their files verified
    # (broker/node/attachment_transfer.py, docs/protocol.md section 17).
    """
    CREATE TABLE attachments (
        id TEXT PRIMARY KEY,
        direction TEXT NOT NULL CHECK (direction IN ('out', 'in')),
        message_id TEXT,
        position INTEGER NOT NULL DEFAULT 0,
        manifest TEXT NOT NULL,
        state TEXT NOT NULL,
        sent INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        detail TEXT,
        sniffed TEXT,
        scan TEXT,
        scan_reason TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX attachments_message ON attachments (message_id);
    CREATE TABLE attachment_holds (
        message_id TEXT PRIMARY KEY,
        wire BLOB NOT NULL,
        digest TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        exp INTEGER NOT NULL,
        held_at TEXT NOT NULL
    );
    """,
    # 12: console e-mail notices sent once per message and kind (issue 16: overdue requests
    # are noticed once, across restarts).
    """
    CREATE TABLE console_notices (
        message_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        sent_at TEXT NOT NULL,
        PRIMARY KEY (message_id, kind)
    ) WITHOUT ROWID;
    """,
)


# SQLite primary result codes that blame the storage, not the statement: SQLITE_BUSY,
# LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
_STORAGE_FAULTS: Final = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})
_SQLITE_IOERR: Final = 10
# The readiness probe: a row large enough to need fresh pages, inserted and deleted in one
# committed transaction (nothing stays; no schema of its own). Never a message id (UUIDs).
_PROBE_ID: Final = "store-probe:" + "0" * 8192
PROBE_INTERVAL: Final = 5.0


def storage_fault(exc: BaseException) -> sqlite3.Error | None:
    """The SQLite error behind ``exc`` (itself or its causes) if it is a storage fault."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlite3.Error):
            code = getattr(seen, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _STORAGE_FAULTS:
                return seen
        seen = seen.__cause__
    return None


def store_unavailable(exc: BaseException) -> bool:
    """True if ``exc`` (or what caused it) says the database itself is unusable right now
    (locked, disk full or failing, read-only): not a fault of any one message."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, sqlite3.OperationalError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class Store:
    """One node's SQLite database. Also a :class:`broker.core.replay.ReplayStore`."""

    def __init__(self, path: Path | str, *, probe_interval: float = PROBE_INTERVAL) -> None:
        self.path = str(path)
        self.write_failures = 0  # failed write transactions since start (a metric)
        self.commits = 0  # write transactions committed since start (what batching saves)
        self._write_error: str | None = None  # the last write's failure; None: it committed
        self._probe_interval = probe_interval
        # Called (on the committing thread) after every committed write: the change feed's
        # waiters wake on it instead of polling (broker.node.events.EventSignal).
        self._commit_listeners: list[Callable[[], None]] = []
        self._probed_at = float("-inf")
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), never implicit.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Re-entrant: a batch (:meth:`batch`) holds it from BEGIN to COMMIT while the writes
        # of its messages run inside as savepoints, on the same thread.
        self._lock = threading.RLock()
        self._depth = 0  # open write scopes on the holding thread: 0, or 1 + nested savepoints
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode = WAL")
            # FULL: an acknowledged delivery must survive power loss, not only a process kill.
            self._db.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- plumbing

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise ConfigError(
                f"{self.path}: database schema v{version} is newer than this node "
                f"(v{len(MIGRATIONS)})"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript commits first; the user_version bump is inside the script so a
            # crash never leaves a half-applied migration marked as done.
            self._db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )

    @contextmanager
    def _write(self, *, counted: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; storage faults become :class:`StorageUnavailable` here.
        Inside a :meth:`batch` it is a savepoint of the batch's transaction instead."""
        with self._lock:
            if self._depth:
                with self._savepoint(counted=counted) as db:
                    yield db
                return
            outcome: StorageOutcome = "not_stored"
            changes = self._db.total_changes
            try:
                self._rollback()  # a failed ROLLBACK earlier may have left one open
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._rollback()
                    raise
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    # FULL/BUSY at commit: nothing was written, the transaction is still
                    # open (rolled back below). An I/O error may have half-written the WAL.
                    if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_IOERR:
                        outcome = "unknown"
                    self._rollback()
                    raise
            except BaseException as exc:
                fault = storage_fault(exc)
                if fault is None:
                    raise
                if counted:
                    self.write_failures += 1
                self._write_error = f"{type(fault).__name__}: {fault}"
                raise StorageUnavailable(
                    f"the node's store cannot write ({fault}); "
                    + ("nothing was stored" if outcome == "not_stored" else "outcome unknown"),
                    outcome=outcome,
                ) from exc
            self._write_error = None
            self.commits += 1
            if self._db.total_changes != changes:  # a transaction that wrote nothing: no news
                for listener in tuple(self._commit_listeners):
                    listener()

    @contextmanager
    def _savepoint(self, *, counted: bool = True) -> Iterator[sqlite3.Connection]:
        """A nested write scope (the lock is held): its writes are undone alone on failure,
        and become durable only with the enclosing transaction's commit."""
        self._depth += 1
        try:
            self._db.execute("SAVEPOINT scope")
            try:
                yield self._db
            except BaseException:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK TO scope")
                    self._db.execute("RELEASE scope")
                raise
            self._db.execute("RELEASE scope")
        except BaseException as exc:
            fault = storage_fault(exc)
            if fault is None:
                raise
            if counted:
                self.write_failures += 1
            self._write_error = f"{type(fault).__name__}: {fault}"
            raise StorageUnavailable(
                f"the node's store cannot write ({fault}); nothing was stored",
                outcome="not_stored",
            ) from exc
        finally:
            self._depth -= 1

    @contextmanager
    def batch(self) -> Iterator[Callable[[], AbstractContextManager[sqlite3.Connection]]]:
        """ONE write transaction for many deliveries (the receive loop settles a fetched batch
        with one commit). Every write method called inside, on this thread, becomes a savepoint
        of it; the yielded ``scope()`` opens one explicitly (one per message, so a message that
        fails leaves the others' writes intact). Reads inside see the batch's own writes (a
        second copy of an id in the same batch is a replay). Nothing is durable before the
        commit at the end; a commit failure raises :class:`StorageUnavailable` (the caller
        settles the messages one by one instead). Other threads wait for the commit."""
        with self._write() as _db:
            self._depth = 1
            try:
                yield self._savepoint
            finally:
                self._depth = 0

    def _rollback(self) -> None:
        if self._db.in_transaction:
            # The original error is the one to report; a failed rollback leaves the
            # transaction open, and the next write tries again.
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def directory_serial(self) -> int:
        """The highest directory serial accepted so far (0: none yet)."""
        row = self._read(
            lambda db: db.execute("SELECT serial FROM directory_serial WHERE only = 1").fetchone()
        )
        return int(row[0]) if row is not None else 0

    def accept_directory_serial(self, serial: int) -> None:
        """Remember ``serial`` as accepted (never lowers what is remembered)."""
        with self._write() as db:
            db.execute(
                "INSERT INTO directory_serial (only, serial) VALUES (1, ?) "
                "ON CONFLICT (only) DO UPDATE SET serial = max(serial, excluded.serial)",
                (serial,),
            )

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return fn(self._db)
            except sqlite3.Error as exc:
                fault = storage_fault(exc)
                if fault is None:
                    raise
                raise StorageUnavailable(f"the node's store cannot be read ({fault})") from exc

    def writable(self) -> tuple[bool, str]:
        """Whether the store can write, as far as known: the outcome of the last write; while
        that was a failure, a probe write (at most every ``probe_interval`` seconds) finds out
        whether space is back. ``(ok, why)``; blocking: call it off the event loop."""
        if self._write_error is not None:
            now = time.monotonic()
            if now - self._probed_at >= self._probe_interval:
                self._probed_at = now
                with suppress(StorageUnavailable), self._write(counted=False) as db:
                    db.execute("INSERT INTO replay (id, expires_at) VALUES (?, 0)", (_PROBE_ID,))
                    db.execute("DELETE FROM replay WHERE id = ?", (_PROBE_ID,))
        error = self._write_error
        return (True, "ok") if error is None else (False, error)

    def add_commit_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after every commit (on the committing thread; it must be quick
        and never raise); returns a function that removes it."""
        self._commit_listeners.append(listener)
        return lambda: self._commit_listeners.remove(listener)

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction for modules that keep their own tables here (audit log,
        retention, corrections): everything inside commits or rolls back together."""
        return self._write()

    def query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only ``fn`` on the connection, under the store's lock."""
        return self._read(fn)

    # ------------------------------------------------------------ replay store

    def seen(self, message_id: str, *, now: datetime) -> bool:
        """True if ``message_id`` was accepted and has not expired from the replay store."""
        row = self._read(
            lambda db: db.execute(
                "SELECT 1 FROM replay WHERE id = ? AND expires_at >= ?",
                (message_id, int(now.timestamp())),
            ).fetchone()
        )
        return row is not None

    def remember(self, message_id: str, *, expires_at: int, now: datetime) -> bool:
        """Record ``message_id`` on its own (atomic check-and-insert); False if already there."""
        with self._write() as db:
            return _remember(db, message_id, expires_at, now)

    def purge_replay(self, *, now: datetime) -> int:
        """Forget ids whose messages expired; returns how many were forgotten."""
        with self._write() as db:
            return db.execute(
                "DELETE FROM replay WHERE expires_at < ?", (int(now.timestamp()),)
            ).rowcount

    # ------------------------------------------------------------------ outbox

    def add_outbox(
        self,
        sealed: SealedRecord,
        *,
        now: datetime,
        idempotency: tuple[str, str] | None = None,
        within: Within | None = None,
        submitting: bool = False,
    ) -> None:
        """Store a sealed message as ``queued`` (with its API idempotency key, if any);
        ``within`` (its disclosure records) runs in the same transaction. ``submitting``: the
        caller submits it right after this commit, so it is stored as ``submitted`` with that
        first attempt counted (one commit fewer than marking it separately)."""
        with self._write() as db:
            _insert_outbox(db, sealed, now, submitting=submitting)
            if within is not None:
                within(db)
            if idempotency is not None:
                key, request_hash = idempotency
                db.execute(
                    "INSERT INTO idempotency (key, request_hash, message_id, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (key, request_hash, sealed.message_id, iso(now)),
                )

    def mark_outbox(
        self,
        message_id: str,
        state: OutboxState,
        *,
        now: datetime,
        error: str | None = None,
        attempted: bool = False,
    ) -> None:
        """Move an outbox message to ``state``; count an attempt; keep the last error."""
        with self._write() as db:
            db.execute(
                "UPDATE outbox SET state = ?, updated_at = ?, last_error = ?, "
                "attempts = attempts + ? WHERE id = ?",
                (state.value, iso(now), error, 1 if attempted else 0, message_id),
            )

    def mark_outbox_many(
        self,
        outcomes: Sequence[tuple[str, str | None]],
        *,
        now: datetime,
        attempted: bool = True,
    ) -> None:
        """Record the submission outcome of each ``(message_id, error)`` in one transaction:
        ``acknowledged`` when ``error`` is None, else back to ``queued`` with the error;
        ``attempted``: count the attempt here (not counted already)."""
        with self._write() as db:
            db.executemany(
                "UPDATE outbox SET state = ?, updated_at = ?, last_error = ?, "
                "attempts = attempts + ? WHERE id = ?",
                [
                    (
                        (OutboxState.ACKNOWLEDGED if error is None else OutboxState.QUEUED).value,
                        iso(now),
                        error,
                        int(attempted),
                        message_id,
                    )
                    for message_id, error in outcomes
                ],
            )

    def mark_submitting(self, message_ids: Sequence[str], *, now: datetime) -> None:
        """Count a submission attempt of each message, about to be published (one commit)."""
        with self._write() as db:
            db.executemany(
                "UPDATE outbox SET state = ?, updated_at = ?, attempts = attempts + 1 WHERE id = ?",
                [(OutboxState.SUBMITTED.value, iso(now), m) for m in message_ids],
            )

    def outbox_message(self, message_id: str) -> OutboxMessage | None:
        row = self._read(
            lambda db: db.execute("SELECT * FROM outbox WHERE id = ?", (message_id,)).fetchone()
        )
        return _outbox(row) if row is not None else None

    def sent_subject(self, message_id: str) -> SentSubject | None:
        """The header, digest and creation time of an outbox message (what incoming evidence
        about it is checked against): neither its body is parsed nor its bytes read."""
        row = self._read(
            lambda db: db.execute(
                "SELECT header, digest, created_at FROM outbox WHERE id = ?", (message_id,)
            ).fetchone()
        )
        if row is None:
            return None
        return SentSubject(
            message_id=message_id,
            header=json.loads(row[0]),
            digest=str(row[1]),
            created_at=str(row[2]),
        )

    def list_outbox(
        self, *, include_evidence: bool = False, pending_only: bool = False, limit: int = 100
    ) -> list[OutboxMessage]:
        """Newest first. ``pending_only``: not yet acknowledged (what a restart resubmits)."""
        clauses = []
        if not include_evidence:
            clauses.append("type NOT LIKE 'evidence.%'")
        if pending_only:
            clauses.append("state != 'acknowledged'")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ASC" if pending_only else "DESC"
        rows = self._read(
            lambda db: db.execute(
                f"SELECT * FROM outbox {where} ORDER BY created_at {order}, rowid {order} "  # noqa: S608 - fixed fragments only
                "LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [_outbox(r) for r in rows]

    def idempotent(self, key: str) -> tuple[str, str] | None:
        """``(request_hash, message_id)`` stored under an Idempotency-Key, if any."""
        row = self._read(
            lambda db: db.execute(
                "SELECT request_hash, message_id FROM idempotency WHERE key = ?", (key,)
            ).fetchone()
        )
        return (str(row[0]), str(row[1])) if row is not None else None

    # --------------------------------------------------------------- receiving

    def processed(self, receipt: Receipt) -> bool:
        """True if this exact delivery (same bytes, same stream sequence) was already settled:
        a redelivery after a crash between commit and ack."""
        row = self._read(
            lambda db: db.execute(
                "SELECT 1 FROM receipts WHERE digest = ? AND sequence = ?",
                (receipt.digest, receipt.sequence),
            ).fetchone()
        )
        return row is not None

    def accepted_copy(self, digest: str) -> bool:
        """True if a message with exactly these wire bytes (``digest``) was accepted before,
        under any stream sequence: a copy JetStream stored again (its duplicate window is
        lost on a server restart for work-queue streams), not a replay."""
        row = self._read(
            lambda db: db.execute(
                "SELECT 1 FROM receipts WHERE digest = ? AND outcome IN ('delivered', 'evidence')",
                (digest,),
            ).fetchone()
        )
        return row is not None

    def accepted_evidence(self, message_id: str) -> bool:
        """True if an evidence message with id ``message_id`` was accepted before."""
        row = self._read(
            lambda db: db.execute(
                "SELECT 1 FROM receipts WHERE message_id = ? AND outcome = 'evidence'",
                (message_id,),
            ).fetchone()
        )
        return row is not None

    def commit_delivery(
        self,
        *,
        header: Mapping[str, Any],
        body: Mapping[str, Any],
        receipt: Receipt,
        replay_expires_at: int,
        now: datetime,
        evidence: EvidenceRecord | None,
        sealed: SealedRecord | None,
        within: Within | None = None,
        wire: bytes | None = None,
    ) -> None:
        """Store a delivered message (with ``wire``: its bytes as received), remember its id,
        record its receipt and the ``delivered`` evidence, in one transaction (with ``within``:
        its audit record, correction marks). Raises ``InvalidMessage(REPLAY)`` (nothing
        stored) if the id was accepted before."""
        message_id = str(header["id"])
        with self._write() as db:
            if not _remember(db, message_id, replay_expires_at, now):
                raise InvalidMessage(Reason.REPLAY, f"message {message_id} was already accepted")
            db.execute(
                "INSERT INTO inbox (id, type, sender, conversation, in_reply_to, due, header, "
                "body, digest, received_at, wire) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    header["type"],
                    header["sender"]["agency"],
                    header["conversation"],
                    header["in_reply_to"],
                    header["due"],
                    _json(header),
                    _json(body),
                    receipt.digest,
                    iso(now),
                    wire,
                ),
            )
            _insert_receipt(db, receipt, message_id, "delivered", now)
            if evidence is not None:
                _insert_evidence(db, evidence)
            if sealed is not None:
                _insert_outbox(db, sealed, now)
            if within is not None:
                within(db)

    def commit_evidence_received(
        self,
        *,
        message_id: str,
        receipt: Receipt,
        replay_expires_at: int,
        now: datetime,
        evidence: EvidenceRecord | None,
        wire: bytes | None = None,
    ) -> None:
        """Record a verified incoming evidence message (``evidence`` None: logged and dropped,
        e.g. about a message we never sent; ``wire``: its bytes), remembering its id, in one
        transaction."""
        with self._write() as db:
            if not _remember(db, message_id, replay_expires_at, now):
                raise InvalidMessage(Reason.REPLAY, f"message {message_id} was already accepted")
            _insert_receipt(db, receipt, message_id, "evidence", now)
            if evidence is not None:
                _insert_evidence(db, evidence, wire=wire)

    def commit_rejection(
        self,
        rejection: Rejection,
        *,
        now: datetime,
        evidence: EvidenceRecord | None,
        sealed: SealedRecord | None,
    ) -> None:
        """Record a refused delivery, its receipt and ``rejected`` evidence in one transaction."""
        receipt = Receipt(digest=rejection.digest, sequence=rejection.sequence)
        with self._write() as db:
            db.execute(
                "INSERT INTO rejections (digest, sequence, message_id, sender, type, reason, "
                "rule_id, detail, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rejection.digest,
                    rejection.sequence,
                    rejection.message_id,
                    rejection.sender,
                    rejection.type,
                    rejection.reason,
                    rejection.rule_id,
                    rejection.detail,
                    rejection.at,
                ),
            )
            _insert_receipt(db, receipt, rejection.message_id, "rejected", now)
            if evidence is not None:
                _insert_evidence(db, evidence)
            if sealed is not None:
                _insert_outbox(db, sealed, now)

    def list_rejections(self, *, limit: int = 100) -> list[Rejection]:
        rows = self._read(
            lambda db: db.execute(
                "SELECT * FROM rejections ORDER BY at DESC, rowid DESC LIMIT ?", (limit,)
            ).fetchall()
        )
        return [
            Rejection(
                digest=r["digest"],
                sequence=r["sequence"],
                message_id=r["message_id"],
                sender=r["sender"],
                type=r["type"],
                reason=r["reason"],
                rule_id=r["rule_id"],
                detail=r["detail"],
                at=r["at"],
            )
            for r in rows
        ]

    # -------------------------------------------------------------- quarantine

    def quarantine(
        self,
        *,
        receipt: Receipt,
        lane: str,
        wire: bytes,
        message_id: str | None,
        sender: str | None,
        type_: str | None,
        error: str,
        detail: str,
        attempts: int,
        first_at: str,
        now: datetime,
    ) -> int:
        """Set a delivery aside (the caller acks it only after this commit); the same delivery
        set aside again (a lost ack) updates its row. Returns the row id."""
        with self._write() as db:
            row = db.execute(
                "INSERT INTO quarantine (digest, sequence, lane, wire, message_id, sender, type, "
                "error, detail, attempts, first_at, last_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (digest, sequence) DO UPDATE SET error = excluded.error, "
                "detail = excluded.detail, attempts = quarantine.attempts + 1, "
                "last_at = excluded.last_at RETURNING id",
                (
                    receipt.digest,
                    receipt.sequence,
                    lane,
                    wire,
                    message_id,
                    sender,
                    type_,
                    error,
                    detail,
                    attempts,
                    first_at,
                    iso(now),
                ),
            ).fetchone()
            return int(row[0])

    def settled_or_held(self, receipt: Receipt, *, held_counts: bool = True) -> bool:
        """:meth:`processed` or (with ``held_counts``) :meth:`quarantined`, in one statement:
        the first question about every delivery."""
        row = self._read(
            lambda db: db.execute(
                "SELECT EXISTS (SELECT 1 FROM receipts WHERE digest = ?1 AND sequence = ?2) "
                "OR (?3 AND EXISTS (SELECT 1 FROM quarantine WHERE digest = ?1 AND sequence = ?2))",
                (receipt.digest, receipt.sequence, int(held_counts)),
            ).fetchone()
        )
        return bool(row[0])

    def quarantined(self, receipt: Receipt) -> bool:
        """True if this exact delivery is in the quarantine (an operator decides, not us)."""
        row = self._read(
            lambda db: db.execute(
                "SELECT 1 FROM quarantine WHERE digest = ? AND sequence = ?",
                (receipt.digest, receipt.sequence),
            ).fetchone()
        )
        return row is not None

    def quarantined_item(self, item_id: int) -> Quarantined | None:
        row = self._read(
            lambda db: db.execute("SELECT * FROM quarantine WHERE id = ?", (item_id,)).fetchone()
        )
        return _quarantined(row) if row is not None else None

    def list_quarantine(self, *, limit: int = 100) -> list[Quarantined]:
        """Oldest first (the order they were set aside)."""
        rows = self._read(
            lambda db: db.execute(
                "SELECT * FROM quarantine ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        )
        return [_quarantined(r) for r in rows]

    def quarantine_size(self) -> dict[str, int]:
        """How many deliveries are held, per lane."""
        rows = self._read(
            lambda db: db.execute("SELECT lane, COUNT(*) FROM quarantine GROUP BY lane").fetchall()
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def quarantine_failed_again(
        self, item_id: int, *, error: str, detail: str, now: datetime
    ) -> None:
        """An operator's retry failed too: count it, keep the last error."""
        with self._write() as db:
            db.execute(
                "UPDATE quarantine SET error = ?, detail = ?, attempts = attempts + 1, "
                "last_at = ? WHERE id = ?",
                (error, detail, iso(now), item_id),
            )

    def release_quarantined(self, item_id: int, *, within: Within | None = None) -> bool:
        """Remove an item (settled by a retry, or dropped with ``within``: its audit record,
        same transaction). False if it was not there."""
        with self._write() as db:
            removed = db.execute("DELETE FROM quarantine WHERE id = ?", (item_id,)).rowcount == 1
            if removed and within is not None:
                within(db)
            return removed

    def receipt_outcome(self, receipt: Receipt) -> str | None:
        """How a delivery was settled (``delivered``, ``evidence``, ``rejected``), if it was."""
        row = self._read(
            lambda db: db.execute(
                "SELECT outcome FROM receipts WHERE digest = ? AND sequence = ?",
                (receipt.digest, receipt.sequence),
            ).fetchone()
        )
        return str(row[0]) if row is not None else None

    # ------------------------------------------------------------------- inbox

    def inbox_message(self, message_id: str) -> InboxMessage | None:
        row = self._read(
            lambda db: db.execute(
                f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE id = ?",  # noqa: S608 - constant
                (message_id,),
            ).fetchone()
        )
        return _inbox(row) if row is not None else None

    def list_inbox(
        self,
        *,
        unread: bool = False,
        overdue_before: str | None = None,
        conversation: str | None = None,
        limit: int = 100,
        message_type: str | None = None,
    ) -> list[InboxMessage]:
        """Newest first. ``overdue_before`` (``YYYY-MM-DD``): only unanswered messages due
        before that date. ``message_type``: only messages of that type."""
        clauses: list[str] = []
        params: list[Any] = []
        if message_type is not None:
            clauses.append("type = ?")
            params.append(message_type)
        if unread:
            clauses.append("read_at IS NULL")
        if overdue_before is not None:
            clauses.append(f"due IS NOT NULL AND due < ? AND NOT {_ANSWERED}")
            params.append(overdue_before)
        if conversation is not None:
            clauses.append("conversation = ?")
            params.append(conversation)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(limit)
        rows = self._read(
            lambda db: db.execute(
                f"SELECT {_INBOX_COLUMNS} FROM inbox {where} "  # noqa: S608 - fixed fragments only
                "ORDER BY received_at DESC, rowid DESC LIMIT ?",
                params,
            ).fetchall()
        )
        return [_inbox(r) for r in rows]

    def mark_read(
        self,
        message_id: str,
        *,
        actor: str,
        justification: str,
        now: datetime,
        evidence: EvidenceRecord | None,
        sealed: SealedRecord | None,
        within: Within | None = None,
    ) -> bool:
        """Log a consultation (``within``: its audit record, same transaction); on the first
        one mark the message read and store the ``read`` evidence. True if this was the first
        read (evidence stored)."""
        with self._write() as db:
            if within is not None:
                within(db)
            db.execute(
                "INSERT INTO consultations (message_id, actor, justification, at) "
                "VALUES (?, ?, ?, ?)",
                (message_id, actor, justification, iso(now)),
            )
            first = (
                db.execute(
                    "UPDATE inbox SET read_at = ?, read_by = ? WHERE id = ? AND read_at IS NULL",
                    (iso(now), actor, message_id),
                ).rowcount
                == 1
            )
            if first:
                if evidence is not None:
                    _insert_evidence(db, evidence)
                if sealed is not None:
                    _insert_outbox(db, sealed, now)
            return first

    def consultations(self, message_id: str) -> list[tuple[str, str, str]]:
        """``(actor, justification, at)`` of every opening of a message, oldest first."""
        rows = self._read(
            lambda db: db.execute(
                "SELECT actor, justification, at FROM consultations WHERE message_id = ? "
                "ORDER BY seq",
                (message_id,),
            ).fetchall()
        )
        return [(r[0], r[1], r[2]) for r in rows]

    # ---------------------------------------------------------------- evidence

    def evidence_for(self, subject_id: str) -> list[EvidenceRecord]:
        """The evidence trail of a message (sent or received), oldest first."""
        rows = self._read(
            lambda db: db.execute(
                "SELECT * FROM evidence WHERE subject_id = ? ORDER BY seq", (subject_id,)
            ).fetchall()
        )
        return [
            EvidenceRecord(
                subject_id=r["subject_id"],
                kind=EvidenceKind(r["kind"]),
                actor=r["actor"],
                at=r["at"],
                reason=r["reason"],
                rule_id=r["rule_id"],
                detail=r["detail"],
                evidence_id=r["evidence_id"],
                direction=r["direction"],
                digest_matches=None if r["digest_matches"] is None else bool(r["digest_matches"]),
            )
            for r in rows
        ]

    def received_wire(self, message_id: str) -> bytes | None:
        """The bytes of a received message as they arrived (None: not received, stored before
        schema v4, or erased with its body)."""
        row = self._read(
            lambda db: db.execute("SELECT wire FROM inbox WHERE id = ?", (message_id,)).fetchone()
        )
        return bytes(row[0]) if row is not None and row[0] is not None else None

    def evidence_wire(self, evidence_id: str) -> bytes | None:
        """The bytes of an evidence message about one of ours, as received (None if unknown or
        received before schema v4)."""
        row = self._read(
            lambda db: db.execute(
                "SELECT wire FROM evidence WHERE evidence_id = ? AND direction = 'received'",
                (evidence_id,),
            ).fetchone()
        )
        return bytes(row[0]) if row is not None and row[0] is not None else None

    # ----------------------------------------------------------------- threads

    def thread(self, conversation: str) -> tuple[list[InboxMessage], list[OutboxMessage]]:
        """Every application message of a conversation: received and sent."""
        received = self.list_inbox(conversation=conversation, limit=10_000)
        rows = self._read(
            lambda db: db.execute(
                "SELECT * FROM outbox WHERE conversation = ? AND type NOT LIKE ? "
                "ORDER BY created_at, rowid",
                (conversation, f"{EVIDENCE_PREFIX}%"),
            ).fetchall()
        )
        return received, [_outbox(r) for r in rows]

    # ------------------------------------------------------------- change feed

    def events_after(
        self, after: int, *, limit: int, types: Sequence[str] = ()
    ) -> list[StoredEvent]:
        """Events numbered above ``after``, oldest first (``types``: only those types)."""
        where = "seq > ?"
        params: list[Any] = [after]
        if types:
            where += f" AND type IN ({', '.join('?' * len(types))})"
            params.extend(types)
        params.append(limit)
        rows = self._read(
            lambda db: db.execute(
                f"SELECT seq, type, at, message_id, data FROM events WHERE {where} "  # noqa: S608 - placeholders only
                "ORDER BY seq LIMIT ?",
                params,
            ).fetchall()
        )
        return [_event(r) for r in rows]

    def event_bounds(self) -> tuple[str, int, int]:
        """``(feed id, first retained seq (0: none), last seq ever given)``."""

        def read(db: sqlite3.Connection) -> tuple[str, int, int]:
            feed, last = db.execute(
                "SELECT feed, last FROM event_counter WHERE only = 1"
            ).fetchone()
            first = db.execute("SELECT MIN(seq) FROM events").fetchone()[0]
            return str(feed), int(first or 0), int(last)

        return self._read(read)

    def purge_events(self, *, before: str) -> int:
        """Drop events older than ``before`` (RFC 3339) that no webhook delivery still needs
        (pending, or failed and replayable), and the records of deliveries made before it;
        the counter never goes back. How many events were dropped."""
        with self._write() as db:
            db.execute(
                "DELETE FROM webhook_deliveries WHERE state = 'delivered' AND delivered_at < ?",
                (before,),
            )
            return db.execute(
                "DELETE FROM events WHERE at < ? AND seq < COALESCE((SELECT MIN(seq) FROM "
                "webhook_deliveries WHERE state != 'delivered'), 9223372036854775807)",
                (before,),
            ).rowcount

    # ---------------------------------------------------------------- webhooks

    def add_subscription(
        self,
        *,
        subscription_id: str,
        system: str,
        url: str,
        secret: str,
        event_types: Sequence[str],
        after: int | None,
        now: str,
    ) -> int:
        """Store a webhook subscription; it gets the events after ``after`` (None: only those
        after now). Returns its starting cursor."""
        with self._write() as db:
            if after is None:
                after = int(db.execute("SELECT last FROM event_counter").fetchone()[0])
            db.execute(
                "INSERT INTO webhook_subscriptions (id, system, url, secret, event_types, "
                "cursor, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (subscription_id, system, url, secret, _json(list(event_types)), after, now),
            )
            return after

    def list_subscriptions(self) -> list[dict[str, Any]]:
        """Every subscription (without its secret) with its deliveries counted by state."""
        rows = self._read(
            lambda db: db.execute(
                "SELECT s.id, s.system, s.url, s.event_types, s.cursor, s.created_at, "
                "(SELECT COUNT(*) FROM webhook_deliveries d WHERE d.subscription_id = s.id "
                "AND d.state = 'pending') AS pending, "
                "(SELECT COUNT(*) FROM webhook_deliveries d WHERE d.subscription_id = s.id "
                "AND d.state = 'failed') AS failed, "
                "(SELECT COUNT(*) FROM webhook_deliveries d WHERE d.subscription_id = s.id "
                "AND d.state = 'delivered') AS delivered "
                "FROM webhook_subscriptions s ORDER BY s.created_at, s.id"
            ).fetchall()
        )
        return [
            {
                "subscription_id": r["id"],
                "system": r["system"],
                "url": r["url"],
                "event_types": json.loads(r["event_types"]),
                "cursor": r["cursor"],
                "created_at": r["created_at"],
                "deliveries": {
                    "pending": r["pending"],
                    "failed": r["failed"],
                    "delivered": r["delivered"],
                },
            }
            for r in rows
        ]

    def remove_subscription(self, subscription_id: str) -> bool:
        """Delete a subscription and its queued deliveries. False if there was none."""
        with self._write() as db:
            db.execute(
                "DELETE FROM webhook_deliveries WHERE subscription_id = ?", (subscription_id,)
            )
            return (
                db.execute(
                    "DELETE FROM webhook_subscriptions WHERE id = ?", (subscription_id,)
                ).rowcount
                == 1
            )

    def fan_out(
        self,
        *,
        limit: int,
        now: float,
        at: str,
        outcomes: Sequence[tuple[int, str | None, float | None]] = (),
    ) -> int:
        """Record delivery ``outcomes`` (as :meth:`record_deliveries`), then queue a delivery
        of each new event (at most ``limit`` events) to every subscription whose filter takes
        it and move the cursors: one transaction (one commit per round of the delivery loop).
        How many were queued. Nothing to record and no subscription behind: no write at all."""
        behind = self._read(
            lambda db: db.execute(
                "SELECT 1 FROM webhook_subscriptions WHERE cursor < "
                "(SELECT last FROM event_counter WHERE only = 1) LIMIT 1"
            ).fetchone()
        )
        if behind is None and not outcomes:
            return 0
        with self._write() as db:
            _record_deliveries(db, outcomes, at=at)
            subs = db.execute(
                "SELECT id, event_types, cursor FROM webhook_subscriptions"
            ).fetchall()
            if not subs:
                return 0
            low = min(int(r["cursor"]) for r in subs)
            events = db.execute(
                "SELECT seq, type FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (low, limit)
            ).fetchall()
            if not events:
                return 0
            top = int(events[-1]["seq"])
            queued: list[tuple[str, int, float, str]] = []
            for sub in subs:
                types = set(json.loads(sub["event_types"]))
                cursor = int(sub["cursor"])
                queued.extend(
                    (sub["id"], int(e["seq"]), now, at)
                    for e in events
                    if int(e["seq"]) > cursor and (not types or e["type"] in types)
                )
            db.executemany(
                "INSERT INTO webhook_deliveries (subscription_id, seq, state, next_at, "
                "created_at) VALUES (?, ?, 'pending', ?, ?) "
                "ON CONFLICT (subscription_id, seq) DO NOTHING",
                queued,
            )
            db.execute("UPDATE webhook_subscriptions SET cursor = ? WHERE cursor < ?", (top, top))
            return len(queued)

    def due_deliveries(
        self, *, now: float, limit: int, skip: Sequence[int] = ()
    ) -> list[dict[str, Any]]:
        """Pending deliveries due by ``now`` (oldest event first), with their event and the
        subscription's url and secret; ``skip``: delivery ids in flight."""
        excluded = f" AND d.id NOT IN ({', '.join('?' * len(skip))})" if skip else ""
        rows = self._read(
            lambda db: db.execute(
                "SELECT d.id, d.subscription_id, d.seq, d.attempts, s.url, s.secret, "  # noqa: S608 - placeholders only
                "e.type, e.at, e.message_id, e.data FROM webhook_deliveries d "
                "JOIN webhook_subscriptions s ON s.id = d.subscription_id "
                "JOIN events e ON e.seq = d.seq "
                f"WHERE d.state = 'pending' AND d.next_at <= ?{excluded} "
                "ORDER BY d.next_at, d.seq LIMIT ?",
                (now, *skip, limit),
            ).fetchall()
        )
        return [
            {
                "delivery_id": int(r["id"]),
                "subscription_id": r["subscription_id"],
                "attempts": int(r["attempts"]),
                "url": r["url"],
                "secret": r["secret"],
                "event": StoredEvent(
                    seq=int(r["seq"]),
                    type=r["type"],
                    at=r["at"],
                    message_id=r["message_id"],
                    data=json.loads(r["data"]),
                ),
            }
            for r in rows
        ]

    def next_delivery_at(self) -> float | None:
        """When the earliest pending delivery is due (None: nothing pending)."""
        row = self._read(
            lambda db: db.execute(
                "SELECT MIN(next_at) FROM webhook_deliveries WHERE state = 'pending'"
            ).fetchone()
        )
        return float(row[0]) if row is not None and row[0] is not None else None

    def record_deliveries(
        self, outcomes: Sequence[tuple[int, str | None, float | None]], *, at: str
    ) -> None:
        """Record attempts ``(delivery id, error, retry at)`` in one transaction: no error is
        delivered; an error with a retry time stays pending; without one it is parked
        ``failed`` (replayable)."""
        with self._write() as db:
            _record_deliveries(db, outcomes, at=at)

    def list_deliveries(
        self, subscription_id: str, *, state: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """A subscription's deliveries, newest event first (``state``: only those)."""
        where = "subscription_id = ?" + (" AND state = ?" if state is not None else "")
        params: list[Any] = [subscription_id] + ([state] if state is not None else [])
        rows = self._read(
            lambda db: db.execute(
                "SELECT id, seq, state, attempts, next_at, last_error, created_at, "  # noqa: S608 - fixed fragments
                f"delivered_at FROM webhook_deliveries WHERE {where} "
                "ORDER BY seq DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        )
        return [dict(r) for r in rows]

    def replay_deliveries(
        self, subscription_id: str, *, after: int | None, now: float, at: str
    ) -> int | None:
        """Queue again: the failed deliveries (``after`` None), or every retained event after
        ``after`` (delivered ones too, with the same webhook-id). None: no such subscription."""
        with self._write() as db:
            sub = db.execute(
                "SELECT event_types, cursor FROM webhook_subscriptions WHERE id = ?",
                (subscription_id,),
            ).fetchone()
            if sub is None:
                return None
            if after is None:
                return db.execute(
                    "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at = ? "
                    "WHERE subscription_id = ? AND state = 'failed'",
                    (now, subscription_id),
                ).rowcount
            types = json.loads(sub["event_types"])
            where = "seq > ? AND seq <= ?"
            params: list[Any] = [after, int(sub["cursor"])]
            if types:
                where += f" AND type IN ({', '.join('?' * len(types))})"
                params.extend(types)
            seqs = [
                int(r[0])
                for r in db.execute(
                    f"SELECT seq FROM events WHERE {where}",  # noqa: S608 - placeholders only
                    params,
                )
            ]
            db.executemany(
                "INSERT INTO webhook_deliveries (subscription_id, seq, state, next_at, "
                "created_at) VALUES (?, ?, 'pending', ?, ?) "
                "ON CONFLICT (subscription_id, seq) DO UPDATE SET state = 'pending', "
                "attempts = 0, next_at = excluded.next_at",
                [(subscription_id, seq, now, at) for seq in seqs],
            )
            return len(seqs)

    # ------------------------------------------------------------- API clients

    def add_client(
        self,
        *,
        client_id: str,
        system: str,
        purpose: str,
        scopes: Sequence[str],
        secret_id: str,
        secret_hash: bytes,
        now: str,
    ) -> bool:
        """Register a client with its first secret; False if the id is taken."""
        with self._write() as db:
            inserted = db.execute(
                "INSERT INTO api_clients (id, system, purpose, scopes, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (client_id, system, purpose, _json(list(scopes)), now),
            ).rowcount
            if inserted != 1:
                return False
            db.execute(
                "INSERT INTO api_client_secrets (id, client_id, hash, created_at) "
                "VALUES (?, ?, ?, ?)",
                (secret_id, client_id, secret_hash, now),
            )
            return True

    def rotate_client(
        self, client_id: str, *, secret_id: str, secret_hash: bytes, now: str, old_until: str
    ) -> bool:
        """Add a secret; the current ones expire at ``old_until`` (the overlap). False if
        there is no active client of that id."""
        with self._write() as db:
            active = db.execute(
                "SELECT 1 FROM api_clients WHERE id = ? AND revoked_at IS NULL", (client_id,)
            ).fetchone()
            if active is None:
                return False
            db.execute(
                "UPDATE api_client_secrets SET expires_at = ? WHERE client_id = ? AND "
                "(expires_at IS NULL OR expires_at > ?)",
                (old_until, client_id, old_until),
            )
            db.execute(
                "INSERT INTO api_client_secrets (id, client_id, hash, created_at) "
                "VALUES (?, ?, ?, ?)",
                (secret_id, client_id, secret_hash, now),
            )
            return True

    def revoke_client(self, client_id: str, *, now: str) -> bool:
        """Revoke a client (every secret ends now). False if there is no active one."""
        with self._write() as db:
            return (
                db.execute(
                    "UPDATE api_clients SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    (now, client_id),
                ).rowcount
                == 1
            )

    def list_clients(self) -> list[dict[str, Any]]:
        """Every client with its secrets' ids and times (never a hash)."""

        def read(db: sqlite3.Connection) -> list[dict[str, Any]]:
            clients = db.execute("SELECT * FROM api_clients ORDER BY created_at, id").fetchall()
            found = []
            for c in clients:
                keys = db.execute(
                    "SELECT id, created_at, expires_at FROM api_client_secrets "
                    "WHERE client_id = ? ORDER BY created_at, id",
                    (c["id"],),
                ).fetchall()
                found.append(
                    {
                        "client_id": c["id"],
                        "system": c["system"],
                        "purpose": c["purpose"],
                        "scopes": tuple(json.loads(c["scopes"])),
                        "created_at": c["created_at"],
                        "revoked_at": c["revoked_at"],
                        "secrets": tuple(
                            {
                                "secret_id": k["id"],
                                "created_at": k["created_at"],
                                "expires_at": k["expires_at"],
                            }
                            for k in keys
                        ),
                    }
                )
            return found

        return self._read(read)

    def client_by_secret(self, secret_id: str) -> dict[str, Any] | None:
        """The secret's hash, expiry and its client's row (None: unknown secret id)."""
        row = self._read(
            lambda db: db.execute(
                "SELECT s.hash, s.expires_at, c.id AS client_id, c.system, c.purpose, c.scopes, "
                "c.revoked_at FROM api_client_secrets s JOIN api_clients c ON c.id = s.client_id "
                "WHERE s.id = ?",
                (secret_id,),
            ).fetchone()
        )
        if row is None:
            return None
        return {
            "hash": bytes(row["hash"]),
            "expires_at": row["expires_at"],
            "client_id": row["client_id"],
            "system": row["system"],
            "purpose": row["purpose"],
            "scopes": tuple(json.loads(row["scopes"])),
            "revoked_at": row["revoked_at"],
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredEvent:
    """One row of the change feed: its number, type, time, message id and data (JSON)."""

    seq: int
    type: str
    at: str
    message_id: str | None
    data: Mapping[str, Any]


def _event(row: sqlite3.Row) -> StoredEvent:
    return StoredEvent(
        seq=int(row["seq"]),
        type=str(row["type"]),
        at=str(row["at"]),
        message_id=row["message_id"],
        data=json.loads(row["data"]),
    )


# A received message counts as answered once we sent a (non-evidence) reply to it.
_ANSWERED: Final = (
    "EXISTS (SELECT 1 FROM outbox o WHERE o.in_reply_to = inbox.id "
    "AND o.type NOT LIKE 'evidence.%')"
)
_INBOX_COLUMNS: Final = f"*, {_ANSWERED} AS answered"


def _record_deliveries(
    db: sqlite3.Connection, outcomes: Sequence[tuple[int, str | None, float | None]], *, at: str
) -> None:
    for delivery_id, error, retry_at in outcomes:
        if error is None:
            db.execute(
                "UPDATE webhook_deliveries SET state = 'delivered', attempts = attempts + 1, "
                "last_error = NULL, delivered_at = ? WHERE id = ?",
                (at, delivery_id),
            )
        else:
            db.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1, "
                "last_error = ?, next_at = COALESCE(?, next_at) WHERE id = ? "
                "AND state = 'pending'",
                ("pending" if retry_at is not None else "failed", error, retry_at, delivery_id),
            )


def _remember(db: sqlite3.Connection, message_id: str, expires_at: int, now: datetime) -> bool:
    # One statement: a new id is inserted; an id whose entry has expired is taken over (the
    # conditional upsert changes that row); a live entry is left alone and changes nothing.
    changed = db.execute(
        "INSERT INTO replay (id, expires_at) VALUES (?, ?) ON CONFLICT (id) DO UPDATE "
        "SET expires_at = excluded.expires_at WHERE replay.expires_at < ?",
        (message_id, expires_at, int(now.timestamp())),
    ).rowcount
    return changed == 1


def _insert_receipt(
    db: sqlite3.Connection, receipt: Receipt, message_id: str | None, outcome: str, now: datetime
) -> None:
    db.execute(
        "INSERT INTO receipts (digest, sequence, message_id, outcome, at) VALUES (?, ?, ?, ?, ?)",
        (receipt.digest, receipt.sequence, message_id, outcome, iso(now)),
    )


def _insert_evidence(
    db: sqlite3.Connection, record: EvidenceRecord, *, wire: bytes | None = None
) -> None:
    db.execute(
        "INSERT INTO evidence (subject_id, kind, actor, at, reason, rule_id, detail, "
        "evidence_id, direction, digest_matches, wire) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.subject_id,
            record.kind.value,
            record.actor,
            record.at,
            record.reason,
            record.rule_id,
            record.detail,
            record.evidence_id,
            record.direction,
            None if record.digest_matches is None else int(record.digest_matches),
            wire,
        ),
    )


def _insert_outbox(
    db: sqlite3.Connection, sealed: SealedRecord, now: datetime, *, submitting: bool = False
) -> None:
    header = sealed.header
    state = OutboxState.SUBMITTED if submitting else OutboxState.QUEUED
    db.execute(
        "INSERT INTO outbox (id, type, conversation, in_reply_to, header, body, wire, digest, "
        "state, attempts, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            sealed.message_id,
            header["type"],
            header["conversation"],
            header["in_reply_to"],
            _json(header),
            _json(sealed.body),
            sealed.wire,
            sealed.digest,
            state.value,
            int(submitting),
            iso(now),
            iso(now),
        ),
    )


def _outbox(row: sqlite3.Row) -> OutboxMessage:
    return OutboxMessage(
        message_id=row["id"],
        header=json.loads(row["header"]),
        body=json.loads(row["body"]),
        wire=bytes(row["wire"]),
        digest=row["digest"],
        state=OutboxState(row["state"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_error=row["last_error"],
    )


def _quarantined(row: sqlite3.Row) -> Quarantined:
    return Quarantined(
        id=row["id"],
        digest=row["digest"],
        sequence=row["sequence"],
        lane=row["lane"],
        wire=bytes(row["wire"]),
        message_id=row["message_id"],
        sender=row["sender"],
        type=row["type"],
        error=row["error"],
        detail=row["detail"],
        attempts=row["attempts"],
        first_at=row["first_at"],
        last_at=row["last_at"],
    )


def _inbox(row: sqlite3.Row) -> InboxMessage:
    return InboxMessage(
        message_id=row["id"],
        header=json.loads(row["header"]),
        body=json.loads(row["body"]),
        sender=row["sender"],
        type=row["type"],
        conversation=row["conversation"],
        in_reply_to=row["in_reply_to"],
        due=row["due"],
        digest=row["digest"],
        received_at=row["received_at"],
        read_at=row["read_at"],
        read_by=row["read_by"],
        answered=bool(row["answered"]),
    )
