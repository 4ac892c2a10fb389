"""The border gateway's quarantine: inputs that kept failing, set aside so the lane moves.

What it is for
    Every loop of the gateway (egress on ``SUBMIT``, ingress on ``INBOX``, audit roots on
    ``AUDIT``) settles each input exactly once. A peer's bad message is a refusal (``Border``);
    but a decision that raises (a bug), a publication that can never succeed (a subject NATS
    refuses), or an audit record that cannot be written for this one input would otherwise be
    nak'ed and redelivered forever, holding a slot of the consumer's ack-pending window and
    repeating its side effects. :class:`Setback` retries such an input with a growing nak
    delay (its JetStream ``num_delivered``); after :attr:`GatewayRetry.max_attempts` it writes
    the input to the ``quarantine`` table (bytes, stream, subject, error, attempts), then
    terminates it, so nothing is lost and the lane moves. Faults that hit every input (the
    store unavailable, NATS timeouts) are retried with backoff without a bound. Each distinct
    failure is logged once, not per retry.

    The table lives in the gateway's own SQLite file (the ``store`` of its settings), next to
    the ledger's tables; it has its own connection. Operators list, retry and drop items
    offline with ``casebridge gateway quarantine`` (docs/operations.md#quarantine): ``retry``
    only marks an item, and the running gateway settles marked items through the same
    decision, record and publish steps (:func:`run_retries`), with its own credentials; an
    operator never needs publish rights on an agency's subject, and the message keeps its
    original ``Nats-Msg-Id`` chain of outputs. ``drop`` deletes the item with an ``erasure``
    record in the gateway's audit log (actor, justification).

What it must never do
    Drop an input before its quarantine row is committed, keep a message it was not given, or
    touch the ledger's tables other than appending a drop's audit record.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

import structlog
from nats.errors import BadHeaderError, BadSubjectError, MaxPayloadError
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from broker.core import audit
from broker.core.audit import ActorKind, AuditEntry, Operation
from broker.errors import ConfigError
from broker.logs import DistinctFaults
from broker.metrics import GatewayMetrics
from broker.node import audit_log
from broker.node.errors import JustificationRequired, NotFound
from broker.node.store import store_unavailable

log = structlog.get_logger("casebridge.gateway")

DIRECTIONS: Final = ("egress", "ingress", "audit")
RETRY_POLL_SECONDS: Final = 5.0

TABLE: Final = """
    CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        direction TEXT NOT NULL,
        stream TEXT NOT NULL,
        subject TEXT NOT NULL,
        stream_seq INTEGER,
        msg_id TEXT,
        data BLOB NOT NULL,
        error TEXT NOT NULL,
        detail TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        first_at TEXT NOT NULL,
        last_at TEXT NOT NULL,
        retry_requested INTEGER NOT NULL DEFAULT 0,
        UNIQUE (stream, stream_seq)
    );
"""

# NATS refusing the publication itself: it will fail the same way every time.
_NEVER_PUBLISHABLE: Final = (BadSubjectError, MaxPayloadError, BadHeaderError)


def _text(value: object, limit: int = 2000) -> str:
    """Storable text: lone surrogates escaped (SQLite refuses them), capped."""
    return str(value)[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def publish_permanent(exc: BaseException) -> bool:
    """A publication failure that no retry can cure: NATS refuses the subject, payload or
    headers, or anything that is not a NATS/transport error (a bug). Timeouts, a lost
    connection and JetStream refusals (stream full, unavailable) are retried."""
    if isinstance(exc, _NEVER_PUBLISHABLE):
        return True
    return not isinstance(exc, NatsError | JetStreamError | TimeoutError | ConnectionError)


def local_permanent(exc: BaseException) -> bool:
    """A local failure (decision, audit record, checkpoint) that is about this input, not the
    store being unavailable."""
    return not store_unavailable(exc)


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewayRetry:
    """How often an input is retried, and how long the nak waits (doubling, capped)."""

    max_attempts: int = 5
    nak_delay: float = 1.0
    max_nak_delay: float = 60.0

    def delay(self, attempt: int) -> float:
        exponent = min(max(attempt, 1) - 1, 32)
        return float(min(self.max_nak_delay, self.nak_delay * 2.0**exponent))


@dataclass(frozen=True, kw_only=True, slots=True)
class Item:
    """One quarantined input."""

    id: int
    direction: str
    stream: str
    subject: str
    stream_seq: int | None
    msg_id: str | None
    data: bytes
    error: str
    detail: str
    attempts: int
    first_at: str
    last_at: str
    retry_requested: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "direction": self.direction,
            "stream": self.stream,
            "subject": self.subject,
            "stream_seq": self.stream_seq,
            "msg_id": self.msg_id,
            "size": len(self.data),
            "error": self.error,
            "detail": self.detail,
            "attempts": self.attempts,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "retry_requested": self.retry_requested,
        }


class GatewayQuarantine:
    """The ``quarantine`` table of a gateway's SQLite file (its own connection)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(f"BEGIN IMMEDIATE;\n{TABLE}\nCOMMIT;")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(
        self,
        *,
        direction: str,
        stream: str,
        subject: str,
        stream_seq: int | None,
        msg_id: str | None,
        data: bytes,
        error: str,
        detail: str,
        attempts: int,
        now: datetime,
    ) -> int:
        """Set an input aside (committed when this returns); the same stream message again
        (its termination was lost) updates its row. Returns the row id."""
        at = audit.rfc3339(now)
        with self._lock:
            row = self._db.execute(
                "INSERT INTO quarantine (direction, stream, subject, stream_seq, msg_id, data, "
                "error, detail, attempts, first_at, last_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (stream, stream_seq) DO UPDATE SET error = excluded.error, "
                "detail = excluded.detail, attempts = excluded.attempts, "
                "last_at = excluded.last_at RETURNING id",
                (
                    direction,
                    stream,
                    _text(subject, 300),
                    stream_seq,
                    _text(msg_id, 300) if msg_id is not None else None,
                    data,
                    _text(error, 200),
                    _text(detail),
                    attempts,
                    at,
                    at,
                ),
            ).fetchone()
        return int(row[0])

    def items(self, *, limit: int = 100, retry_requested: bool = False) -> list[Item]:
        """Oldest first (``retry_requested``: only items an operator asked to retry)."""
        where = "WHERE retry_requested = 1 " if retry_requested else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM quarantine {where}ORDER BY id LIMIT ?",  # noqa: S608 - fixed fragments
                (limit,),
            ).fetchall()
        return [_item(r) for r in rows]

    def get(self, item_id: int) -> Item | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM quarantine WHERE id = ?", (item_id,)).fetchone()
        return _item(row) if row is not None else None

    def count(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT direction, COUNT(*) FROM quarantine GROUP BY direction"
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def request_retry(self, item_id: int) -> None:
        """Mark an item for the running gateway to settle again (:func:`run_retries`)."""
        with self._lock:
            changed = self._db.execute(
                "UPDATE quarantine SET retry_requested = 1 WHERE id = ?", (item_id,)
            ).rowcount
        if changed != 1:
            raise NotFound(f"no quarantined input {item_id}")

    def failed_again(self, item_id: int, exc: BaseException, *, now: datetime) -> None:
        """A retry failed: keep the item, count the attempt, clear the request."""
        with self._lock:
            self._db.execute(
                "UPDATE quarantine SET error = ?, detail = ?, attempts = attempts + 1, "
                "last_at = ?, retry_requested = 0 WHERE id = ?",
                (type(exc).__name__, _text(exc), audit.rfc3339(now), item_id),
            )

    def release(self, item_id: int) -> None:
        """A retry settled the item: it leaves the quarantine."""
        with self._lock:
            self._db.execute("DELETE FROM quarantine WHERE id = ?", (item_id,))

    def drop(
        self, item_id: int, *, agency: str, actor: str, justification: str, now: datetime
    ) -> None:
        """Delete an item for good, with an ``erasure`` record in the gateway's audit log
        (same transaction). Raises ``JustificationRequired`` / ``NotFound``."""
        if not justification.strip():
            raise JustificationRequired("state why you drop this input (justification)")
        with self._lock:
            exists = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'"
            ).fetchone()
            if exists is None:
                raise ConfigError(f"{self.path} has no gateway audit log: not a gateway store")
            row = self._db.execute("SELECT * FROM quarantine WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise NotFound(f"no quarantined input {item_id}")
            item = _item(row)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if (
                    self._db.execute("DELETE FROM quarantine WHERE id = ?", (item_id,)).rowcount
                    != 1
                ):
                    raise NotFound(f"no quarantined input {item_id}")  # noqa: TRY301 - rolled back
                audit_log.append(
                    self._db,
                    [
                        AuditEntry(
                            operation=Operation.ERASURE,
                            actor=actor,
                            actor_kind=ActorKind.PERSON,
                            agency=agency,
                            justification=_text(justification),
                            detail=(
                                f"quarantined {item.direction} input dropped ({item.stream} "
                                f"#{item.stream_seq}, msg id {item.msg_id}, {item.error})"
                            ),
                        )
                    ],
                    now=now,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


def _item(row: sqlite3.Row) -> Item:
    return Item(
        id=row["id"],
        direction=row["direction"],
        stream=row["stream"],
        subject=row["subject"],
        stream_seq=row["stream_seq"],
        msg_id=row["msg_id"],
        data=bytes(row["data"]),
        error=row["error"],
        detail=row["detail"],
        attempts=row["attempts"],
        first_at=row["first_at"],
        last_at=row["last_at"],
        retry_requested=bool(row["retry_requested"]),
    )


# ---------------------------------------------------------------- in the loops ---


class Settleable(Protocol):
    """What :class:`Setback` needs of a JetStream message (nats-py's ``Msg``)."""

    @property
    def data(self) -> bytes: ...

    @property
    def subject(self) -> str: ...

    async def nak(self, delay: float | None = None) -> None: ...

    async def term(self) -> None: ...


def attempts_of(msg: object) -> int:
    """JetStream's delivery count of ``msg`` (1 when it carries no JetStream metadata)."""
    try:
        return max(1, int(msg.metadata.num_delivered))  # type: ignore[attr-defined]
    except (NatsError, AttributeError, TypeError, ValueError):
        return 1


def _stream_seq(msg: object) -> int | None:
    try:
        return int(msg.metadata.sequence.stream)  # type: ignore[attr-defined]
    except (NatsError, AttributeError, TypeError, ValueError):
        return None


def _msg_id(msg: object) -> str | None:
    headers = getattr(msg, "headers", None)
    return headers.get("Nats-Msg-Id") if isinstance(headers, dict) else None


class Setback:
    """A gateway loop's answer to an input it could not settle: nak with a growing delay, or,
    after the bound and for failures that are about this input, quarantine then term."""

    def __init__(
        self,
        quarantine: GatewayQuarantine | None,
        *,
        retry: GatewayRetry = GatewayRetry(),
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], datetime],
    ) -> None:
        self.quarantine = quarantine
        self.retry = retry
        self._metrics = metrics
        self._clock = clock
        self._faults = DistinctFaults(log, "input_failed")

    async def failed(
        self,
        msg: Settleable,
        exc: BaseException,
        *,
        direction: str,
        stream: str,
        stage: str,
        permanent: bool,
    ) -> None:
        """Settle ``msg`` after ``exc`` at ``stage`` (decide, record, publish, checkpoint)."""
        attempts = attempts_of(msg)
        self._faults.failed(
            exc, stage=stage, direction=direction, stream=stream, subject=_text(msg.subject, 300)
        )
        if permanent and attempts >= self.retry.max_attempts and self.quarantine is not None:
            try:
                item_id = await asyncio.to_thread(
                    self.quarantine.add,
                    direction=direction,
                    stream=stream,
                    subject=msg.subject,
                    stream_seq=_stream_seq(msg),
                    msg_id=_msg_id(msg),
                    data=msg.data,
                    error=type(exc).__name__,
                    detail=f"{stage}: {exc}",
                    attempts=attempts,
                    now=self._clock(),
                )
            except Exception as failed:  # noqa: BLE001 - cannot set it aside: keep retrying
                self._faults.failed(failed, stage="quarantine", direction=direction)
            else:
                if self._metrics is not None:
                    self._metrics.quarantined.labels(direction=direction).inc()
                log.warning(
                    "input_quarantined",
                    quarantine_id=item_id,
                    direction=direction,
                    stream=stream,
                    stage=stage,
                    attempts=attempts,
                    error=type(exc).__name__,
                )
                with contextlib.suppress(NatsError, JetStreamError):
                    await msg.term()
                return
        with contextlib.suppress(NatsError, JetStreamError):
            await msg.nak(delay=self.retry.delay(attempts))


async def run_retries(
    quarantine: GatewayQuarantine,
    settle: Callable[[Item], Awaitable[None]],
    *,
    stop: asyncio.Event,
    clock: Callable[[], datetime],
    interval: float = RETRY_POLL_SECONDS,
) -> None:
    """Settle the items operators marked for retry (``settle`` raises if it fails again):
    released on success, kept with the new error otherwise. Until ``stop`` is set."""
    while not stop.is_set():
        try:
            marked = await asyncio.to_thread(quarantine.items, retry_requested=True)
        except sqlite3.Error as exc:
            log.warning("quarantine_unavailable", error=str(exc))
            marked = []
        for item in marked:
            try:
                await settle(item)
            except Exception as exc:  # noqa: BLE001 - reported, the item stays
                log.warning(
                    "quarantine_retry_failed",
                    quarantine_id=item.id,
                    error=_text(f"{type(exc).__name__}: {exc}", 500),
                )
                await asyncio.to_thread(quarantine.failed_again, item.id, exc, now=clock())
                continue
            await asyncio.to_thread(quarantine.release, item.id)
            log.info("quarantine_retried", quarantine_id=item.id, direction=item.direction)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
