"""Retention: how long a node keeps message bodies, and the purge job that erases them.

What it is for
    :class:`RetentionPolicy` says, per message type, how many days a body may be kept (counted
    from reception for received messages, from creation for sent ones). :func:`purge` erases
    the bodies (and sealed bytes) of every message past its retention, keeps what the law
    requires to remain (header metadata, digest, evidence trail, consultations, audit records)
    and writes one ``erasure`` audit record per message, in the same transaction.

    The policy is part of the node settings (``retention`` section, docs/data-protection.md):
    each country's nodes carry the periods of their national law; :data:`DEFAULT_DAYS` are the
    defaults. Every period must be at least :data:`MIN_DAYS`, the JetStream streams' maximum
    age (``broker.federation.streams.MAX_AGE_SECONDS``): the encrypted copy in the federation's
    streams is gone by then at the latest, so no copy outlives the node's own retention.

What it must never do
    Erase a message that is still waiting to be sent (its bytes are needed to resubmit), or
    delete rows: a purge keeps the row and blanks the body.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

from broker.core.audit import ActorKind, AuditEntry, Operation, rfc3339
from broker.errors import ConfigError
from broker.node import audit_log

MIN_DAYS: Final = 90
ERASED_BODY: Final = "{}"
# Defaults (days) per message type; national law may set others in the node settings.
DEFAULT_DAYS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "alert.person": 365,
        "request.assistance": 3 * 365,
        "response.assistance": 3 * 365,
        "information.spontaneous": 3 * 365,
        "request.legal_remedy": 3 * 365,
        "case.update": 3 * 365,
        "coordination.interview": 365,
        "referral.victim": 2 * 365,
        "referral.response": 2 * 365,
        "aftercare.handover": 2 * 365,
        "report.confidential": 365,
        "feedback": 365,
        "bulletin": 5 * 365,
        "statistics.aggregate": 5 * 365,
        "correction": 3 * 365,
        "withdrawal": 3 * 365,
    }
)
DEFAULT_OTHER_DAYS: Final = 365


@dataclass(frozen=True, kw_only=True, slots=True)
class RetentionPolicy:
    """Days a body is kept, per message type (``default_days`` for types not listed)."""

    days: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_DAYS))
    default_days: int = DEFAULT_OTHER_DAYS

    def __post_init__(self) -> None:
        for name, value in (*self.days.items(), ("default_days", self.default_days)):
            if not isinstance(value, int) or isinstance(value, bool) or value < MIN_DAYS:
                raise ConfigError(
                    f"retention of {name} must be a whole number of days >= {MIN_DAYS} "
                    "(the federation streams keep messages up to 90 days)"
                )

    def period(self, message_type: str) -> timedelta:
        return timedelta(days=self.days.get(message_type, self.default_days))

    @classmethod
    def from_json(cls, raw: Any) -> RetentionPolicy:
        """From the settings' ``retention`` section: ``{"default_days": N, "types": {...}}``
        (types listed override the defaults; others keep theirs)."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or set(raw) - {"default_days", "types"}:
            raise ConfigError("settings: retention must be {default_days, types}")
        types = raw.get("types", {})
        if not isinstance(types, dict):
            raise ConfigError("settings: retention.types must map message types to days")
        return cls(
            days={**DEFAULT_DAYS, **types},
            default_days=raw.get("default_days", DEFAULT_OTHER_DAYS),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class PurgeResult:
    """What one purge erased: message ids, received and sent."""

    received: tuple[str, ...]
    sent: tuple[str, ...]


def erase_received(
    db: sqlite3.Connection, message_id: str, *, why: str, agency: str, now: datetime
) -> bool:
    """Blank one received body, register and log the erasure (caller's transaction)."""
    row = db.execute(
        "SELECT type, sender, digest FROM inbox WHERE id = ? AND id NOT IN "
        "(SELECT message_id FROM erasures WHERE direction = 'received')",
        (message_id,),
    ).fetchone()
    if row is None:
        return False
    # The received bytes hold the body too (we can decrypt them): erased with it.
    db.execute("UPDATE inbox SET body = ?, wire = NULL WHERE id = ?", (ERASED_BODY, message_id))
    db.execute(
        "INSERT INTO erasures (message_id, direction, at, why) VALUES (?, 'received', ?, ?)",
        (message_id, rfc3339(now), why),
    )
    audit_log.append(
        db,
        [_erasure(message_id, row[0], row[1], row[2], why=why, agency=agency)],
        now=now,
    )
    return True


def _erasure(
    message_id: str, message_type: str, peer: str | None, digest: str, *, why: str, agency: str
) -> AuditEntry:
    return AuditEntry(
        operation=Operation.ERASURE,
        actor=agency,
        actor_kind=ActorKind.SYSTEM,
        agency=agency,
        justification=why,
        message_id=message_id,
        message_type=message_type,
        peer=peer,
        digest=digest,
    )


def purge(
    db: sqlite3.Connection, policy: RetentionPolicy, *, agency: str, now: datetime
) -> PurgeResult:
    """Erase every body past retention (caller's transaction). Evidence messages carry no
    personal data and are left alone; unsent messages are never touched."""
    received: list[str] = []
    sent: list[str] = []
    inbox = db.execute(
        "SELECT id, type, received_at FROM inbox WHERE type NOT LIKE 'evidence.%' AND id NOT IN "
        "(SELECT message_id FROM erasures WHERE direction = 'received') ORDER BY received_at"
    ).fetchall()
    for message_id, message_type, received_at in inbox:
        days = policy.period(message_type).days
        if received_at < rfc3339(now - policy.period(message_type)):
            why = f"retention: {message_type} kept {days} days after reception"
            if erase_received(db, message_id, why=why, agency=agency, now=now):
                received.append(message_id)
    outbox = db.execute(
        "SELECT id, type, created_at, digest, header FROM outbox WHERE type NOT LIKE 'evidence.%' "
        "AND state = 'acknowledged' AND id NOT IN "
        "(SELECT message_id FROM erasures WHERE direction = 'sent') ORDER BY created_at"
    ).fetchall()
    for message_id, message_type, created_at, digest, _header in outbox:
        if created_at >= rfc3339(now - policy.period(message_type)):
            continue
        why = (
            f"retention: {message_type} kept {policy.period(message_type).days} days after sending"
        )
        db.execute("UPDATE outbox SET body = ?, wire = X'' WHERE id = ?", (ERASED_BODY, message_id))
        db.execute(
            "INSERT INTO erasures (message_id, direction, at, why) VALUES (?, 'sent', ?, ?)",
            (message_id, rfc3339(now), why),
        )
        audit_log.append(
            db, [_erasure(message_id, message_type, None, digest, why=why, agency=agency)], now=now
        )
        sent.append(message_id)
    return PurgeResult(received=tuple(received), sent=tuple(sent))


def erasures(db: sqlite3.Connection, message_id: str) -> list[dict[str, str]]:
    """The erasure register's entries for one message."""
    rows = db.execute(
        "SELECT direction, at, why FROM erasures WHERE message_id = ? ORDER BY at", (message_id,)
    ).fetchall()
    return [{"direction": r[0], "at": r[1], "why": r[2]} for r in rows]
