"""Replay protection: remember every accepted message id until its expiry (plus clock tolerance).

JetStream's Nats-Msg-Id window catches duplicates for minutes; this store catches them for
the whole life of a message. ``remember`` is the atomic step (check-and-insert): the node's
SQLite store implements the same Protocol with a primary key, so two workers cannot both accept
the same id.
"""

from __future__ import annotations

import heapq
from datetime import datetime
from typing import Protocol


class ReplayStore(Protocol):
    """Ids of messages already accepted, each kept until ``expires_at`` (epoch seconds)."""

    def seen(self, message_id: str, *, now: datetime) -> bool:
        """True if ``message_id`` was accepted before and has not yet been forgotten."""
        ...

    def remember(self, message_id: str, *, expires_at: int, now: datetime) -> bool:
        """Record ``message_id``; False (and nothing changed) if it was already recorded."""
        ...


class MemoryReplayStore:
    """In-process replay store (tests, benchmarks, single-process tools). Not persistent."""

    def __init__(self) -> None:
        self._expiry: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, now: datetime) -> None:
        cutoff = int(now.timestamp())
        while self._heap and self._heap[0][0] < cutoff:
            expires_at, message_id = heapq.heappop(self._heap)
            if self._expiry.get(message_id) == expires_at:
                del self._expiry[message_id]

    def seen(self, message_id: str, *, now: datetime) -> bool:
        self._purge(now)
        return message_id in self._expiry

    def remember(self, message_id: str, *, expires_at: int, now: datetime) -> bool:
        self._purge(now)
        if message_id in self._expiry:
            return False
        self._expiry[message_id] = expires_at
        heapq.heappush(self._heap, (expires_at, message_id))
        return True
