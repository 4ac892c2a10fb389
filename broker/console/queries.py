"""Read-only queries the console pages need (lists with filters, counts, statistics rows).

What it is for
    Inbox and outbox pages with filters, search over header fields and pagination, the
    overdue and awaiting-answer counts, and the rows the scorecard is computed from. The
    queries run through :meth:`Store.query` (under the store's lock, on its connection), like
    the audit log's, and read only the node's own tables.

What it must never do
    Write, read a body for a list (bodies are read one message at a time, when opened), or
    build SQL from request text (every value is a bound parameter; the fragments are fixed).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Final

from broker.node.store import Store

PAGE: Final = 50
_ANSWERED: Final = (
    "EXISTS (SELECT 1 FROM outbox o WHERE o.in_reply_to = inbox.id "
    "AND o.type NOT LIKE 'evidence.%')"
)
ANSWERED_SQL: Final = _ANSWERED  # for other console modules (notices): "answered" is defined once
_MARK: Final = (
    "(SELECT group_concat(DISTINCT mark) FROM message_marks m WHERE m.message_id = {table}.id)"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Filters:
    """What a person asked a list for (every member optional)."""

    type: str = ""
    partner: str = ""
    country: str = ""
    overdue: bool = False
    awaiting: bool = False
    unread: bool = False
    q: str = ""
    page: int = 1

    def query(self, **changes: Any) -> dict[str, str]:
        """The URL query of these filters (with ``changes``), for links and pagination."""
        values = {
            "type": self.type,
            "partner": self.partner,
            "country": self.country,
            "overdue": "1" if self.overdue else "",
            "awaiting": "1" if self.awaiting else "",
            "unread": "1" if self.unread else "",
            "q": self.q,
            "page": str(self.page),
        }
        values.update({k: str(v) for k, v in changes.items()})
        return {k: v for k, v in values.items() if v and not (k == "page" and v == "1")}


@dataclass(frozen=True, kw_only=True, slots=True)
class Row:
    """One line of the inbox or outbox list (no body)."""

    message_id: str
    type: str
    party: str  # inbox: the sender; outbox: the first recipient
    parties: tuple[str, ...]
    conversation: str
    due: str | None
    at: str
    handling: str
    tlp: str
    unread: bool
    answered: bool
    marks: tuple[str, ...]
    state: str = ""  # outbox: acknowledged/queued...; inbox: ""

    def overdue(self, today: str) -> bool:
        return self.due is not None and self.due < today and not self.answered


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _inbox_where(f: Filters, today: str) -> tuple[str, list[Any]]:
    clauses = ["1"]
    args: list[Any] = []
    if f.type:
        clauses.append("type = ?")
        args.append(f.type)
    if f.partner:
        clauses.append("sender = ?")
        args.append(f.partner)
    if f.country:
        clauses.append("sender LIKE ? ESCAPE '\\'")
        args.append(f.country.lower().replace("_", "\\_") + ".%")
    if f.overdue:
        clauses.append(f"due IS NOT NULL AND due < ? AND NOT {_ANSWERED}")
        args.append(today)
    if f.awaiting:
        clauses.append(f"due IS NOT NULL AND NOT {_ANSWERED}")
    if f.unread:
        clauses.append("read_at IS NULL")
    if f.q:
        clauses.append("(id LIKE ? ESCAPE '\\' OR header LIKE ? ESCAPE '\\')")
        args.extend([_like(f.q), _like(f.q)])
    return " AND ".join(clauses), args


def inbox_page(store: Store, f: Filters, *, today: str) -> tuple[list[Row], int]:
    """One page of the inbox, newest first, and the number of matching messages."""
    where, args = _inbox_where(f, today)
    offset = (max(f.page, 1) - 1) * PAGE

    def run(db: sqlite3.Connection) -> tuple[list[Row], int]:
        total = db.execute(f"SELECT count(*) FROM inbox WHERE {where}", args).fetchone()[0]  # noqa: S608
        rows = db.execute(
            "SELECT id, type, sender, conversation, due, received_at, read_at, "  # noqa: S608
            "json_extract(header, '$.handling'), json_extract(header, '$.tlp'), "
            f"{_ANSWERED}, {_MARK.format(table='inbox')} "
            # The page's rows are picked on the covering index first, so that skipped rows
            # (page 100) never have their columns and subqueries computed.
            "FROM inbox WHERE rowid IN (SELECT rowid FROM inbox "
            f"WHERE {where} ORDER BY received_at DESC, rowid DESC LIMIT ? OFFSET ?) "
            "ORDER BY received_at DESC, rowid DESC",
            [*args, PAGE, offset],
        ).fetchall()
        return [
            Row(
                message_id=r[0],
                type=r[1],
                party=r[2],
                parties=(r[2],),
                conversation=r[3],
                due=r[4],
                at=r[5],
                unread=r[6] is None,
                handling=r[7] or "",
                tlp=r[8] or "",
                answered=bool(r[9]),
                marks=tuple(sorted((r[10] or "").split(","))) if r[10] else (),
            )
            for r in rows
        ], int(total)

    return store.query(run)


def outbox_page(store: Store, f: Filters, *, today: str) -> tuple[list[Row], int]:
    """One page of what we sent (no evidence), newest first, and the number matching."""
    clauses = ["type NOT LIKE 'evidence.%'"]
    args: list[Any] = []
    if f.type:
        clauses.append("type = ?")
        args.append(f.type)
    if f.partner:
        clauses.append("EXISTS (SELECT 1 FROM json_each(header, '$.recipients') WHERE value = ?)")
        args.append(f.partner)
    if f.country:
        clauses.append("EXISTS (SELECT 1 FROM json_each(header, '$.countries') WHERE value = ?)")
        args.append(f.country.upper())
    answered = "EXISTS (SELECT 1 FROM inbox i WHERE i.in_reply_to = outbox.id)"
    if f.awaiting or f.overdue:
        clauses.append(f"json_extract(header, '$.due') IS NOT NULL AND NOT {answered}")
    if f.overdue:
        clauses.append("json_extract(header, '$.due') < ?")
        args.append(today)
    if f.q:
        clauses.append("(id LIKE ? ESCAPE '\\' OR header LIKE ? ESCAPE '\\')")
        args.extend([_like(f.q), _like(f.q)])
    where = " AND ".join(clauses)
    offset = (max(f.page, 1) - 1) * PAGE

    def run(db: sqlite3.Connection) -> tuple[list[Row], int]:
        total = db.execute(f"SELECT count(*) FROM outbox WHERE {where}", args).fetchone()[0]  # noqa: S608
        rows = db.execute(
            "SELECT id, type, json_extract(header, '$.recipients'), conversation, "  # noqa: S608
            "json_extract(header, '$.due'), created_at, state, "
            "json_extract(header, '$.handling'), json_extract(header, '$.tlp'), "
            f"{answered}, {_MARK.format(table='outbox')} "
            "FROM outbox WHERE rowid IN (SELECT rowid FROM outbox "
            f"WHERE {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?) "
            "ORDER BY created_at DESC, rowid DESC",
            [*args, PAGE, offset],
        ).fetchall()
        out = []
        for r in rows:
            recipients = tuple(json.loads(r[2] or "[]"))
            out.append(
                Row(
                    message_id=r[0],
                    type=r[1],
                    party=recipients[0] if recipients else "",
                    parties=recipients,
                    conversation=r[3],
                    due=r[4],
                    at=r[5],
                    state=r[6],
                    handling=r[7] or "",
                    tlp=r[8] or "",
                    unread=False,
                    answered=bool(r[9]),
                    marks=tuple(sorted((r[10] or "").split(","))) if r[10] else (),
                )
            )
        return out, int(total)

    return store.query(run)


@dataclass(frozen=True, kw_only=True, slots=True)
class Counts:
    """The numbers always shown in the navigation."""

    unread: int
    awaiting: int
    overdue: int
    newest: str  # received_at of the newest message ("" if none): changes when one arrives


def counts(store: Store, *, today: str) -> Counts:
    def run(db: sqlite3.Connection) -> Counts:
        row = db.execute(
            "SELECT "  # noqa: S608 - fixed fragments
            "(SELECT count(*) FROM inbox WHERE read_at IS NULL), "
            f"(SELECT count(*) FROM inbox WHERE due IS NOT NULL AND NOT {_ANSWERED}), "
            f"(SELECT count(*) FROM inbox WHERE due IS NOT NULL AND due < ? AND NOT {_ANSWERED}), "
            "(SELECT coalesce(max(received_at), '') FROM inbox)",
            (today,),
        ).fetchone()
        return Counts(unread=row[0], awaiting=row[1], overdue=row[2], newest=row[3])

    return store.query(run)


def marks(store: Store, message_id: str) -> list[tuple[str, str, str, str]]:
    """``(mark, by_message_id, reason, at)`` of a message (corrected / withdrawn)."""
    return store.query(
        lambda db: [
            (r[0], r[1], r[2], r[3])
            for r in db.execute(
                "SELECT mark, by_message_id, reason, at FROM message_marks "
                "WHERE message_id = ? ORDER BY seq",
                (message_id,),
            ).fetchall()
        ]
    )


def partners(store: Store) -> list[str]:
    """Agencies we exchanged messages with (for the partner filter)."""
    return store.query(
        lambda db: [
            r[0]
            for r in db.execute(
                "SELECT DISTINCT sender FROM inbox UNION "
                "SELECT DISTINCT value FROM outbox, json_each(outbox.header, '$.recipients') "
                "WHERE outbox.type NOT LIKE 'evidence.%' ORDER BY 1"
            ).fetchall()
        ]
    )


def audit_page(store: Store, *, page: int, actor: str = "") -> tuple[list[dict[str, Any]], int]:
    """Audit records newest first (never a body: the log holds none)."""
    offset = (max(page, 1) - 1) * PAGE
    where, args = ("actor = ?", [actor]) if actor else ("1", [])

    def run(db: sqlite3.Connection) -> tuple[list[dict[str, Any]], int]:
        total = db.execute(f"SELECT count(*) FROM audit WHERE {where}", args).fetchone()[0]  # noqa: S608
        rows = db.execute(
            "SELECT seq, at, operation, actor, actor_kind, justification, message_id, "  # noqa: S608
            f"message_type, peer, detail FROM audit WHERE {where} "
            "ORDER BY seq DESC LIMIT ? OFFSET ?",
            [*args, PAGE, offset],
        ).fetchall()
        keys = (
            "seq",
            "at",
            "operation",
            "actor",
            "actor_kind",
            "justification",
            "message_id",
            "message_type",
            "peer",
            "detail",
        )
        return [dict(zip(keys, r, strict=True)) for r in rows], int(total)

    return store.query(run)


def exchange_rows(
    store: Store, since: str, until: str
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows the scorecard is computed from, for messages dated in ``[since, until)``:
    sent ``(id, type, recipients json, created_at, due, first answer received_at, answer type,
    answer outcome, decline reason)`` and received ``(id, type, sender, received_at, due,
    answered)``."""

    def run(db: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        sent = db.execute(
            "SELECT o.id, o.type, json_extract(o.header, '$.recipients'), o.created_at, "
            "json_extract(o.header, '$.due'), "
            "(SELECT min(i.received_at) FROM inbox i WHERE i.in_reply_to = o.id), "
            "(SELECT i.type FROM inbox i WHERE i.in_reply_to = o.id "
            " ORDER BY i.received_at LIMIT 1), "
            "(SELECT json_extract(i.body, '$.outcome') FROM inbox i WHERE i.in_reply_to = o.id "
            " ORDER BY i.received_at LIMIT 1), "
            "(SELECT json_extract(i.body, '$.declined.reason') FROM inbox i "
            " WHERE i.in_reply_to = o.id ORDER BY i.received_at LIMIT 1) "
            "FROM outbox o WHERE o.type NOT LIKE 'evidence.%' AND o.created_at >= ? "
            "AND o.created_at < ?",
            (since, until),
        ).fetchall()
        received = db.execute(
            f"SELECT id, type, sender, received_at, due, {_ANSWERED} FROM inbox "  # noqa: S608
            "WHERE received_at >= ? AND received_at < ?",
            (since, until),
        ).fetchall()
        return [tuple(r) for r in sent], [tuple(r) for r in received]

    return store.query(run)


def thread_items(store: Store, conversation: str, *, agency: str) -> list[dict[str, Any]]:
    """Every application message of a conversation, received and sent, oldest first: header
    facts only (never a body: the thread page shows who, what, when and the markings)."""

    def run(db: sqlite3.Connection) -> list[dict[str, Any]]:
        received = db.execute(
            "SELECT id, type, received_at, sender, due, read_at, "
            "json_extract(header, '$.handling'), json_extract(header, '$.tlp') "
            "FROM inbox WHERE conversation = ?",
            (conversation,),
        ).fetchall()
        sent = db.execute(
            "SELECT id, type, created_at, json_extract(header, '$.recipients'), "
            "json_extract(header, '$.due'), json_extract(header, '$.handling'), "
            "json_extract(header, '$.tlp') FROM outbox "
            "WHERE conversation = ? AND type NOT LIKE 'evidence.%'",
            (conversation,),
        ).fetchall()
        items = [
            {
                "id": r[0],
                "type": r[1],
                "at": r[2],
                "from": r[3],
                "to": [agency],
                "direction": "in",
                "due": r[4],
                "read": r[5] is not None,
                "handling": r[6] or "",
                "tlp": r[7] or "",
            }
            for r in received
        ] + [
            {
                "id": r[0],
                "type": r[1],
                "at": r[2],
                "from": agency,
                "to": json.loads(r[3] or "[]"),
                "direction": "out",
                "due": r[4],
                "read": True,
                "handling": r[5] or "",
                "tlp": r[6] or "",
            }
            for r in sent
        ]
        items.sort(key=lambda i: (i["at"], i["id"]))
        return items

    return store.query(run)
