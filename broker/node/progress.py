"""Whether a receive lane is moving: the node's readiness signal for a stuck lane.

What it is for
    A lane is a durable consumer the node reads in order (case messages, evidence). It makes
    progress when a delivery is *settled* (stored, refused, or set aside in the quarantine)
    and acknowledged. A nak (a retry) is not progress. :class:`LaneProgress` remembers when
    the lane first took a delivery since its last settlement; if that is longer ago than the
    threshold, the lane is stalled: ``/readyz`` answers 503,
    ``casebridge_node_lane_stalled_seconds`` grows, the alert fires. This is what the node
    can know without asking the server: deliveries taken but nothing settled, whether one
    message hangs, every message is retried (our directory is stale, the store is
    unavailable), or a handler never returns.

What it must never do
    Decide anything about a message, or read the wall clock (a monotonic clock is injected).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

LANES: Final = ("messages", "evidence")


def lane_name(*, evidence: bool) -> str:
    """The label of a lane (metrics, quarantine rows, readiness)."""
    return "evidence" if evidence else "messages"


class LaneProgress:
    """Progress of one lane: see the module docstring."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._waiting_since: float | None = None
        self.settled_total = 0

    def taken(self) -> None:
        """A delivery was taken (first or redelivery)."""
        if self._waiting_since is None:
            self._waiting_since = self._clock()

    def settled(self) -> None:
        """A delivery was settled: the lane moved."""
        self._waiting_since = None
        self.settled_total += 1

    def stalled_for(self) -> float:
        """Seconds since the lane took a delivery without settling any (0: moving or idle)."""
        if self._waiting_since is None:
            return 0.0
        return max(0.0, self._clock() - self._waiting_since)
