"""The node's hit/no-hit lookups: its keyed index, its lookup log, asking and answering.

What it is for
    :class:`LookupService` lets the agency register identifiers of its records (stored only
    as keyed digests, one per partner country key), send a ``lookup.query`` to an agency of a
    partner country (identifiers keyed before they leave this object), answer the queries it
    receives automatically (purpose and per-requester rate limit checked first, then the
    index), and log every lookup sent, received and answered in its own SQLite file.
    It is event-driven: the store's commit listener wakes it and it reads the change feed
    (``message.received`` events of ``lookup.*`` messages) from where it stopped, so an
    answer leaves as soon as the query is stored; a scan of the inbox at start (and after a
    gap in the feed) catches what arrived while it was not running. An answer whose send
    fails is retried a bounded number of times (same Idempotency-Key, so never twice),
    each failure logged; the last failure is logged as ``not_sent`` and not retried.
    The protocol, and what each side learns, is in docs/protocol.md ("Hit/no-hit lookup").

What it must never do
    Store, log or return an identifier in clear (only kinds, digests, counts and
    references), answer a query with anything but hit (reference + agency to contact),
    no_hit or refused, or say why a query was refused in a way that depends on the index.
    Its SQL stays in :class:`LookupStore` (its own file next to the node's store).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import structlog

from broker.core import lookup as core
from broker.core.header import agency_country
from broker.errors import CasebridgeError, ConfigError
from broker.node.errors import BadRequest, NotFound
from broker.node.events import EventSignal
from broker.node.model import Draft, InboxMessage
from broker.node.service import Node

DEFAULT_LEGAL_BASIS: Final = "Police cooperation: hit/no-hit lookup (bilateral agreement)"
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS entries (
    partner TEXT NOT NULL, key_id TEXT NOT NULL, kind TEXT NOT NULL, digest TEXT NOT NULL,
    reference TEXT NOT NULL, registered_at TEXT NOT NULL, registered_by TEXT,
    PRIMARY KEY (partner, key_id, digest, reference)
);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY, at TEXT NOT NULL, event TEXT NOT NULL, message_id TEXT NOT NULL,
    query_id TEXT NOT NULL, counterpart TEXT NOT NULL, purpose TEXT, probes INTEGER NOT NULL,
    result TEXT NOT NULL, actor TEXT, UNIQUE (event, message_id)
);
CREATE INDEX IF NOT EXISTS log_recent ON log (event, at);
"""
EVENTS: Final = (
    "query_sent", "query_refused", "query_received", "answer_sent", "answer_received"
)  # fmt: skip
# Lookup messages looked at by the start-up scan, newest first (each of type).
POLL_LIMIT: Final = 100
# Change-feed events read per page while following it.
FEED_PAGE: Final = 200
# Pauses between attempts to send an answer (bounded: len + 1 attempts in all). Short, so
# that a passing fault still leaves the answer within the 2 s the protocol promises.
ANSWER_RETRY_DELAYS: Final = (0.05, 0.2, 0.5)
LOOKUP_TYPES: Final = frozenset({core.QUERY_TYPE, core.ANSWER_TYPE})


@dataclass(frozen=True, kw_only=True, slots=True)
class LookupSettings:
    """The lookup settings file: partner keys, allowed purposes, limits, contact point."""

    partners: Mapping[str, tuple[str, bytes]] = field(repr=False)  # country -> (key id, secret)
    purposes: frozenset[str] = frozenset({"investigation"})
    per_requester: int = 30
    window: timedelta = timedelta(hours=1)
    contact_point: Mapping[str, Any] | None = None
    legal_basis: str = DEFAULT_LEGAL_BASIS
    # The longest wait between two looks at the feed when no commit woke the loop (a safety
    # net only: commits wake it at once).
    rescan_seconds: float = 30.0
    index_path: Path | None = None

    @classmethod
    def load(cls, path: Path) -> LookupSettings:
        """Read the file (format: docs/protocol.md); relative paths against its directory."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable lookup settings: {exc}") from None
        allowed = {
            "partners", "purposes", "rate_limit", "contact_point", "legal_basis",
            "rescan_seconds", "index",
        }  # fmt: skip
        if not isinstance(raw, dict) or set(raw) - allowed:
            raise ConfigError(f"{path}: lookup settings: an object with {sorted(allowed)}")
        base = path.resolve().parent
        partners: dict[str, tuple[str, bytes]] = {}
        for country, entry in dict(raw.get("partners", {})).items():
            if not isinstance(entry, dict) or set(entry) != {"key_id", "secret_file"}:
                raise ConfigError(f"{path}: partners.{country}: key_id and secret_file")
            try:
                text = (base / str(entry["secret_file"])).read_text(encoding="ascii").strip()
                secret = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path}: partners.{country}: unreadable secret") from exc
            key_id = str(entry["key_id"])
            if not core.KEY_ID_RE.fullmatch(key_id) or len(secret) < core.MIN_SECRET_BYTES:
                raise ConfigError(
                    f"{path}: partners.{country}: a key id and a secret of at least "
                    f"{core.MIN_SECRET_BYTES} bytes (base64url) are needed"
                )
            partners[str(country)] = (key_id, secret)
        limit = dict(raw.get("rate_limit", {}))
        try:
            return cls(
                partners=partners,
                purposes=frozenset(raw.get("purposes", ["investigation"])),
                per_requester=int(limit.get("per_requester", 30)),
                window=timedelta(seconds=float(limit.get("window_seconds", 3600))),
                contact_point=raw.get("contact_point"),
                legal_basis=str(raw.get("legal_basis", DEFAULT_LEGAL_BASIS)),
                rescan_seconds=float(raw.get("rescan_seconds", 30.0)),
                index_path=(base / str(raw["index"])) if raw.get("index") else None,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: lookup settings: {exc}") from None


@dataclass(frozen=True, kw_only=True, slots=True)
class LogEntry:
    """One line of the lookup log: never an identifier, only counts, kinds and outcomes."""

    seq: int
    at: str
    event: str
    message_id: str
    query_id: str
    counterpart: str
    purpose: str | None
    probes: int
    result: str
    actor: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "event": self.event,
            "message_id": self.message_id,
            "query_id": self.query_id,
            "counterpart": self.counterpart,
            "purpose": self.purpose,
            "probes": self.probes,
            "result": self.result,
            "actor": self.actor,
        }


class LookupStore:
    """The keyed index and the lookup log, in their own SQLite file (all the SQL is here)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def register(
        self, rows: Sequence[tuple[str, str, str, str]], reference: str, at: str, actor: str | None
    ) -> int:
        """Add (partner, key id, kind, digest) rows for ``reference``; how many were new."""
        with self._tx() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(p, k, kind, d, reference, at, actor) for p, k, kind, d in rows],
            )
            return db.total_changes - before

    def unregister(self, reference: str) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM entries WHERE reference = ?", (reference,)).rowcount

    def holders(self, partner: str, key_id: str, digest: str) -> list[str]:
        """References registered under ``digest`` for this partner key."""
        with self._lock:
            rows = self._db.execute(
                "SELECT reference FROM entries WHERE partner = ? AND key_id = ? AND digest = ? "
                "ORDER BY reference",
                (partner, key_id, digest),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def log(self, entry: Mapping[str, Any]) -> bool:
        """Append a log line; False if this (event, message) is already logged."""
        with self._tx() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO log (at, event, message_id, query_id, counterpart, "
                "purpose, probes, result, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry["at"], entry["event"], entry["message_id"], entry["query_id"],
                    entry["counterpart"], entry.get("purpose"), entry["probes"],
                    entry["result"], entry.get("actor"),
                ),
            )  # fmt: skip
            return cursor.rowcount == 1

    def recent(
        self,
        event: str,
        since: str,
        *,
        counterpart: str | None = None,
        actor: str | None = None,
        answered: bool = False,
    ) -> int:
        """Log lines of ``event`` at or after ``since``, for one counterpart or one actor (the
        rate limits: kept in the log, so a restart does not reset them). ``answered``: leave
        out queries that were refused."""
        sql = "SELECT COUNT(*) FROM log WHERE event = ? AND at >= ?"
        params: list[Any] = [event, since]
        if counterpart is not None:
            sql += " AND counterpart = ?"
            params.append(counterpart)
        else:
            sql += " AND actor IS ?"
            params.append(actor)
        if answered:
            sql += " AND result != 'refused'"
        with self._lock:
            return int(self._db.execute(sql, params).fetchone()[0])

    def result_of(self, event: str, message_id: str) -> str | None:
        """The logged result of ``event`` for ``message_id`` (None: not logged)."""
        with self._lock:
            row = self._db.execute(
                "SELECT result FROM log WHERE event = ? AND message_id = ?", (event, message_id)
            ).fetchone()
        return None if row is None else str(row[0])

    def answer_logged(self, query_id: str) -> bool:
        """Whether an answer to ``query_id`` was sent, or given up on (``not_sent:...``)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM log WHERE event = 'answer_sent' AND query_id = ?", (query_id,)
            ).fetchone()
        return row is not None

    def logged(self, event: str, message_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM log WHERE event = ? AND message_id = ?", (event, message_id)
            ).fetchone()
        return row is not None

    def entries(self, *, limit: int = 1000) -> list[LogEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, at, event, message_id, query_id, counterpart, purpose, probes, "
                "result, actor FROM log ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            LogEntry(
                seq=r[0],
                at=r[1],
                event=r[2],
                message_id=r[3],
                query_id=r[4],
                counterpart=r[5],
                purpose=r[6],
                probes=r[7],
                result=r[8],
                actor=r[9],
            )
            for r in rows
        ]


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LookupService:
    """Asking, answering and registering for one node (see the module docstring)."""

    def __init__(self, node: Node, settings: LookupSettings, store: LookupStore) -> None:
        self.node = node
        self.settings = settings
        self.store = store
        self.country = agency_country(node.agency_id)
        self._keys = {
            country: core.PartnerKey(
                country=country,
                key_id=key_id,
                key=core.pairwise_key(secret, (self.country, country), key_id),
            )
            for country, (key_id, secret) in settings.partners.items()
        }
        self._log = structlog.get_logger("casebridge.lookup").bind(agency=node.agency_id)
        self._answering: dict[str, asyncio.Task[None]] = {}
        self._deciding = asyncio.Lock()

    # --------------------------------------------------------------- register

    async def register(
        self, kind: str, value: str, reference: str, *, actor: str | None
    ) -> dict[str, Any]:
        """Key ``value`` under every partner key and index it for ``reference``."""
        if not core.KEY_ID_RE.fullmatch(reference.lower()) or len(reference) > 64:
            raise BadRequest("reference: 1-64 letters, digits, '.', '_' or '-'")
        try:
            normalised = core.normalise(kind, value)
        except core.LookupInputError as exc:
            raise BadRequest(str(exc)) from None
        rows = [
            (country, key.key_id, kind, core.probe_digest(key.key, kind, normalised))
            for country, key in sorted(self._keys.items())
        ]
        now = _iso(self.node.now())
        added = await asyncio.to_thread(self.store.register, rows, reference, now, actor)
        self._log.info("lookup_registered", kind=kind, partners=len(rows), added=added)
        return {
            "reference": reference,
            "kind": kind,
            "partners": sorted(self._keys),
            "added": added,
        }

    async def unregister(self, reference: str) -> int:
        return await asyncio.to_thread(self.store.unregister, reference)

    # ------------------------------------------------------------------- ask

    async def query(
        self,
        recipient: str,
        identifiers: Sequence[tuple[str, str]],
        *,
        purpose: str = "investigation",
        case_ref: str | None = None,
        purpose_note: str | None = None,
        actor: str | None = None,
    ) -> dict[str, Any]:
        """Send a ``lookup.query`` to ``recipient``; the identifiers leave only as digests."""
        partner = self._keys.get(agency_country(recipient)) if "." in recipient else None
        if partner is None:
            raise BadRequest(f"no lookup key with the country of {recipient!r}")
        if purpose not in self.settings.purposes:
            raise BadRequest(f"purpose {purpose!r} is not allowed for lookups here")
        since = _iso(self.node.now() - self.settings.window)
        sent = await asyncio.to_thread(self.store.recent, "query_sent", since, actor=actor)
        if sent >= self.settings.per_requester:
            raise BadRequest("lookup rate limit reached for this requester; try later")
        try:
            body = core.query_body(
                identifiers, partner, case_ref=case_ref, purpose_note=purpose_note
            )
        except core.LookupInputError as exc:
            raise BadRequest(str(exc)) from None
        try:
            result = await self.node.send(
                Draft(
                    type=core.QUERY_TYPE,
                    body=body,
                    purpose=purpose,
                    handling="H2",
                    tlp="AMBER",
                    legal_basis=self.settings.legal_basis,
                    to=(recipient,),
                ),
                actor=actor,
            )
        except CasebridgeError as exc:  # e.g. our own policy refused it: logged, then raised
            attempt = f"refused:{uuid.uuid4()}"
            await asyncio.to_thread(
                self.store.log,
                {
                    "at": _iso(self.node.now()), "event": "query_refused",
                    "message_id": attempt, "query_id": attempt, "counterpart": recipient,
                    "purpose": purpose, "probes": len(body["probes"]),
                    "result": exc.reason.value, "actor": actor,
                },
            )  # fmt: skip
            raise
        await asyncio.to_thread(
            self.store.log,
            {
                "at": _iso(self.node.now()), "event": "query_sent",
                "message_id": result.message_id, "query_id": result.message_id,
                "counterpart": recipient, "purpose": purpose, "probes": len(body["probes"]),
                "result": result.state.value, "actor": actor,
            },
        )  # fmt: skip
        self._log.info(
            "lookup_query_sent",
            message_id=result.message_id,
            to=recipient,
            probes=len(body["probes"]),
        )
        return {"query_id": result.message_id, "state": result.state.value}

    def answer_to(self, query_id: str) -> dict[str, Any]:
        """The answer to one of our queries so far: pending, or the answer's content."""
        sent = self.node.store.outbox_message(query_id)
        if sent is None or sent.type != core.QUERY_TYPE:
            raise NotFound(f"no lookup {query_id}")
        received, _ = self.node.store.thread(str(sent.header["conversation"]))
        for message in received:
            if message.type == core.ANSWER_TYPE and message.in_reply_to == query_id:
                body = message.body
                return {
                    "query_id": query_id,
                    "status": str(body.get("result")),
                    "hits": [
                        {k: v for k, v in h.items() if k in ("probe", "reference", "agency",
                                                              "contact_point")}
                        for h in body.get("hits", [])
                    ],
                    "answer_id": message.message_id,
                    "answered_at": message.received_at,
                }  # fmt: skip
        return {"query_id": query_id, "status": "pending", "hits": []}

    # ---------------------------------------------------------------- answer

    async def run(self) -> None:
        """Answer queries and log answers as their deliveries are committed: woken by the
        store's commit listener, it reads the change feed from where it stopped (no polling;
        ``rescan_seconds`` is only a safety net)."""
        signal = EventSignal()
        signal.attach(self.node.store)  # before reading the cursor: no commit slips between
        try:
            cursor = -1  # not known yet: scan the inbox first
            while True:
                try:
                    cursor = await self.follow(cursor)
                except CasebridgeError as exc:  # a store fault: try again on the next wake-up
                    self._log.warning("lookup_follow_failed", reason=exc.reason.value)
                await signal.wait(self.settings.rescan_seconds)
        finally:
            signal.detach()
            for task in list(self._answering.values()):
                task.cancel()
            await asyncio.gather(*self._answering.values(), return_exceptions=True)

    async def follow(self, cursor: int) -> int:
        """Handle the lookup messages received since event ``cursor`` (-1: not known yet, or
        events were purged since: scan the inbox); returns the cursor to go on from."""
        store = self.node.store
        _, first, last = await asyncio.to_thread(store.event_bounds)
        if cursor < 0 or (first and cursor < first - 1) or (not first and cursor < last):
            await self.poll_once()
            return last  # read before the scan: later arrivals are events after it
        while True:
            page = await asyncio.to_thread(
                store.events_after, cursor, limit=FEED_PAGE, types=("message.received",)
            )
            for event in page:
                if event.data.get("type") in LOOKUP_TYPES and event.message_id:
                    message = await asyncio.to_thread(store.inbox_message, event.message_id)
                    if message is not None:
                        await self._handle(message)
                cursor = event.seq
            if len(page) < FEED_PAGE:
                return cursor

    async def poll_once(self) -> int:
        """Handle every lookup message in the inbox not handled yet (the scan at start);
        how many were handled."""

        def recent() -> list[InboxMessage]:
            # Indexed by type (store migration "inbox_lookup"): cheap however full the inbox.
            store = self.node.store
            queries = store.list_inbox(message_type=core.QUERY_TYPE, limit=POLL_LIMIT)
            answers = store.list_inbox(message_type=core.ANSWER_TYPE, limit=POLL_LIMIT)
            # Oldest first; equal times keep the store's order (rowid), reversed to oldest first.
            return sorted([*reversed(queries), *reversed(answers)], key=lambda m: m.received_at)

        handled = 0
        for message in await asyncio.to_thread(recent):  # oldest first
            if message.type == core.QUERY_TYPE and message.answered:
                continue
            handled += await self._handle(message)
        await self.settle()
        return handled

    async def settle(self) -> None:
        """Wait until the answers being sent (with their retries) are done."""
        while self._answering:
            await asyncio.gather(*list(self._answering.values()), return_exceptions=True)

    async def _handle(self, message: InboxMessage) -> int:
        if message.type == core.QUERY_TYPE:
            if message.message_id in self._answering:
                return 0
            # Its own task: the retries of one answer never hold up the others.
            task = asyncio.create_task(self._answer(message), name="lookup-answer")
            self._answering[message.message_id] = task
            task.add_done_callback(lambda _t: self._answering.pop(message.message_id, None))
            return 1
        if message.type != core.ANSWER_TYPE or await asyncio.to_thread(
            self.store.logged, "answer_received", message.message_id
        ):
            return 0
        await asyncio.to_thread(
            self.store.log,
            {
                "at": _iso(self.node.now()), "event": "answer_received",
                "message_id": message.message_id,
                "query_id": message.in_reply_to or "", "counterpart": message.sender,
                "purpose": message.header.get("purpose"),
                "probes": len(message.body.get("hits", [])),
                "result": str(message.body.get("result")), "actor": None,
            },
        )  # fmt: skip
        return 1

    def _decide(self, message: InboxMessage) -> tuple[str, list[core.Match]]:
        sender = str(message.sender)
        partner = self._keys.get(agency_country(sender))
        body = message.body
        purpose = str(message.header.get("purpose"))
        probes = body.get("probes") or []
        if (
            partner is None
            or body.get("key_id") != partner.key_id
            or purpose not in self.settings.purposes
            or not probes
            or self.store.recent(
                "query_received",
                _iso(self.node.now() - self.settings.window),
                counterpart=sender,
                answered=True,
            )
            >= self.settings.per_requester
        ):
            return "refused", []
        return self._matches(message, partner)

    def _matches(
        self, message: InboxMessage, partner: core.PartnerKey
    ) -> tuple[str, list[core.Match]]:
        def holders(digest: str) -> list[tuple[str, str]]:
            refs = self.store.holders(partner.country, partner.key_id, digest)
            return [(r, self.node.agency_id) for r in refs]

        matches = core.match(message.body, holders)
        return ("hit" if matches else "no_hit"), matches

    def _decided(self, message: InboxMessage) -> tuple[str, list[core.Match]] | None:
        """The decision logged before a restart (None: not decided yet). Not taken again: the
        query would count against its own rate limit; the index is looked up again."""
        logged = self.store.result_of("query_received", message.message_id)
        if logged is None:
            return None
        partner = self._keys.get(agency_country(str(message.sender)))
        if logged == "refused" or partner is None:
            return "refused", []
        return self._matches(message, partner)

    async def _answer(self, message: InboxMessage) -> None:
        if await asyncio.to_thread(self.store.answer_logged, message.message_id):
            return  # answered before, or given up on after the last attempt
        purpose = str(message.header.get("purpose"))
        # Decided and logged one query at a time: the rate limit counts the logged ones.
        async with self._deciding:
            decided = await asyncio.to_thread(self._decided, message)
            if decided is None:
                result, matches = await asyncio.to_thread(self._decide, message)
                await asyncio.to_thread(
                    self.store.log,
                    {
                        "at": _iso(self.node.now()), "event": "query_received",
                        "message_id": message.message_id, "query_id": message.message_id,
                        "counterpart": message.sender, "purpose": purpose,
                        "probes": len(message.body.get("probes") or []), "result": result,
                        "actor": None,
                    },
                )  # fmt: skip
            else:
                result, matches = decided
        body = core.answer_body(
            message.message_id, result, matches, contact=self.settings.contact_point
        )
        draft = Draft(
            type=core.ANSWER_TYPE,
            body=body,
            purpose=purpose,
            handling="H2",
            tlp="AMBER",
            legal_basis=self.settings.legal_basis,
            in_reply_to=message.message_id,
        )
        # One key per query: a retry after a send that was stored but raised returns the
        # first answer instead of sending a second one.
        idempotency = (f"lookup-answer:{message.message_id}", message.message_id)
        outcome, answer_id = "", ""
        for attempt in range(1, len(ANSWER_RETRY_DELAYS) + 2):
            try:
                sent = await self.node.send(draft, idempotency=idempotency)
            except CasebridgeError as exc:
                last = attempt > len(ANSWER_RETRY_DELAYS)
                self._log.warning(
                    "lookup_answer_send_failed",
                    query_id=message.message_id,
                    reason=exc.reason.value,
                    attempt=attempt,
                    retried=not last,
                )
                if last:
                    outcome = f"not_sent:{exc.reason.value}"
                    break
                await asyncio.sleep(ANSWER_RETRY_DELAYS[attempt - 1])
            else:
                outcome, answer_id = result, sent.message_id
                break
        await asyncio.to_thread(
            self.store.log,
            {
                "at": _iso(self.node.now()), "event": "answer_sent",
                "message_id": answer_id or f"none:{message.message_id}",
                "query_id": message.message_id, "counterpart": message.sender,
                "purpose": purpose, "probes": len(matches), "result": outcome, "actor": None,
            },
        )  # fmt: skip
        self._log.info("lookup_answered", query_id=message.message_id, result=outcome)
