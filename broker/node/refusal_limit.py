"""A per-source rate limit on the audit entries of refused credentials (API ``401``).

What it is for
    Every ``401`` is audited (broker.node.api_integrations), so a flood of bad tokens could
    grow the audit log without bound. Per source address, the first ``burst`` refusals of an
    ``interval`` are audited one by one; the rest are counted
    (``casebridge_api_refusals_suppressed_total``) and, once the interval is over, written as
    one summary audit entry per source ("N refusals from SOURCE not audited one by one"). The
    summary is written with the next refusal after the interval (from any source), or when the
    API stops.

What it must never do
    Lose a refusal without a trace (each is audited, or counted and summarised), hold state
    without bound (at most ``max_sources`` sources are tracked; further ones share the source
    ``other``), or touch the clock itself (``clock`` is passed in).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

OTHER: Final = "other"


@dataclass(kw_only=True, slots=True)
class _Window:
    started: float
    audited: int = 0
    suppressed: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Suppressed:
    """Refusals of one source not audited one by one during one interval."""

    source: str
    count: int
    interval_seconds: float


class RefusalLimiter:
    """Decides which refusals are audited; collects the summaries of those that were not."""

    def __init__(
        self,
        *,
        burst: int = 10,
        interval: float = 60.0,
        max_sources: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        on_suppressed: Callable[[], None] | None = None,
    ) -> None:
        self._on_suppressed = on_suppressed
        self.burst = burst
        self.interval = interval
        self.max_sources = max_sources
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def admit(self, source: str) -> bool:
        """Whether this refusal from ``source`` is audited on its own (else it is counted)."""
        now = self._clock()
        if source not in self._windows and len(self._windows) >= self.max_sources:
            source = OTHER
        window = self._windows.get(source)
        if window is None:
            window = self._windows[source] = _Window(started=now)
        if window.audited < self.burst:
            window.audited += 1
            return True
        window.suppressed += 1
        if self._on_suppressed is not None:
            self._on_suppressed()
        return False

    def ended(self, *, everything: bool = False) -> list[Suppressed]:
        """The summaries of the intervals that are over (``everything``: all of them, e.g. on
        shutdown); their sources are forgotten."""
        now = self._clock()
        done = [
            source
            for source, window in self._windows.items()
            if everything or now - window.started >= self.interval
        ]
        summaries = []
        for source in done:
            window = self._windows.pop(source)
            if window.suppressed:
                summaries.append(
                    Suppressed(
                        source=source,
                        count=window.suppressed,
                        interval_seconds=self.interval,
                    )
                )
        return summaries
