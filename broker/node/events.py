"""The change feed: numbered events about what changed in the node, for case systems.

What it is for
    Every change a case system may care about becomes an event with a gap-free, monotonically
    increasing sequence number, written by a SQLite trigger in the very transaction of the
    change (``EVENTS_MIGRATION`` in :mod:`broker.node.store`): a change is never committed
    without its event, and an event never exists for a change that rolled back. Systems read
    the feed with a cursor (``GET /v1/events?after=SEQ``), follow it live (server-sent events,
    resuming from ``Last-Event-ID``), or receive it as webhooks (:mod:`broker.node.webhooks`).

The catalogue (:data:`EVENT_TYPES`)
    ``message.received``, ``message.rejected`` (a refusal recorded), ``message.corrected``,
    ``message.withdrawn`` (a notice applied), ``evidence.received`` (about one of ours),
    ``outbox.stored``, ``outbox.acknowledged`` (our message stored, then held by JetStream).

Retention
    Events older than ``events.retention_days`` (settings; 30 by default) are purged, except
    those a webhook delivery still needs; the numbering never restarts. A cursor older than the
    oldest retained event is answered ``410 cursor_expired``, never with a silent gap.

What it must never do
    Carry a message body (ids and header fields only), or number events outside the
    transaction of their change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from broker.errors import Reason
from broker.node.errors import BadRequest, NodeError
from broker.node.model import iso
from broker.node.store import Store, StoredEvent

EVENT_TYPES: Final = (
    "message.received",
    "message.rejected",
    "message.corrected",
    "message.withdrawn",
    "evidence.received",
    "outbox.stored",
    "outbox.acknowledged",
)
DEFAULT_RETENTION_DAYS: Final = 30
MAX_PAGE: Final = 1000


class CursorExpired(NodeError):
    """The cursor points before the oldest retained event: events were purged since."""

    http_status = 410
    reason_code = Reason.CURSOR_EXPIRED


def event_json(event: StoredEvent) -> dict[str, Any]:
    """The API form of an event (the feed, the stream, a webhook's payload)."""
    return {
        "seq": event.seq,
        "type": event.type,
        "at": event.at,
        "message_id": event.message_id,
        "data": dict(event.data),
    }


@dataclass(frozen=True, kw_only=True, slots=True)
class FeedPage:
    """Events after a cursor, oldest first; ``next`` is the cursor to ask with next time."""

    feed: str
    events: tuple[StoredEvent, ...]
    next: int
    last: int

    def to_json(self) -> dict[str, Any]:
        return {
            "feed": self.feed,
            "events": [event_json(e) for e in self.events],
            "next": self.next,
            "last": self.last,
        }


def check_types(types: Sequence[str]) -> tuple[str, ...]:
    """``types`` if each is in the catalogue; otherwise a 400 naming the unknown ones."""
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise BadRequest(f"unknown event types {unknown}; known: {list(EVENT_TYPES)}")
    return tuple(types)


def read_page(store: Store, *, after: int, limit: int, types: Sequence[str] = ()) -> FeedPage:
    """One page of the feed after ``after`` (blocking: call it off the event loop).

    Raises :class:`CursorExpired` if events after ``after`` were purged already."""
    feed, first, last = store.event_bounds()
    after = min(
        after, last
    )  # a cursor from the future (another feed): nothing to skip, never a gap
    if first and after < first - 1:
        raise CursorExpired(
            f"events after {after} were purged (the oldest retained is {first}); "
            "resynchronise from the inbox and outbox, then follow from the latest event"
        )
    if not first and after < last:
        raise CursorExpired(f"events up to {last} were purged; follow from {last}")
    events = tuple(store.events_after(after, limit=limit, types=types))
    if len(events) == limit:
        cursor = events[-1].seq
    else:
        # Fewer than asked for: everything up to ``last`` (read before the events) was
        # looked at, including events a type filter skipped.
        cursor = max(after, last, events[-1].seq if events else 0)
    return FeedPage(feed=feed, events=events, next=cursor, last=last)


def retention_days(raw: object) -> int:
    """Settings ``events``: ``{"retention_days": 1-3650}`` (default 30)."""
    from broker.errors import ConfigError  # noqa: PLC0415 - settings only

    if raw is None:
        return DEFAULT_RETENTION_DAYS
    if not isinstance(raw, dict) or set(raw) - {"retention_days"}:
        raise ConfigError('settings: events must be {"retention_days": N}')
    days = raw.get("retention_days", DEFAULT_RETENTION_DAYS)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650:
        raise ConfigError("settings: events.retention_days must be 1-3650")
    return days


def purge(store: Store, *, now: datetime, retention_days: int) -> int:
    """Drop events older than the retention (blocking). How many were dropped."""
    return store.purge_events(before=iso(now - timedelta(days=retention_days)))


class EventSignal:
    """Wakes coroutines when the store commits (the feed may have grown): no polling loop.

    ``attach`` registers a commit listener on the store, called on the committing thread;
    it hands the wake-up to the event loop (thread-safe)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._detach: Callable[[], None] | None = None

    def attach(self, store: Store) -> None:
        self._loop = asyncio.get_running_loop()
        self._detach = store.add_commit_listener(self._committed)

    def detach(self) -> None:
        if self._detach is not None:
            self._detach()
            self._detach = None

    def _committed(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self.wake)
        except RuntimeError:  # the loop closed meanwhile: nobody waits any more
            return

    def wake(self) -> None:
        """Wake every waiter (on the event loop)."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait for the next commit, at most ``timeout`` seconds; True if one came."""
        event = self._event
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True
