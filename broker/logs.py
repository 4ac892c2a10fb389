"""structlog set-up for the node and gateway processes: JSON lines (default) or console.

One event per line on stdout: ``{"event": ..., "level": ..., "timestamp": ..., ...}`` with the
fields each call site binds (message id, rule id, reason, traceparent; never message content).
``--log-format console`` renders the same events for humans. Called once at process start by
the CLI; library code only ever calls ``structlog.get_logger``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, Literal, TextIO

import structlog

LogFormat = Literal["json", "console"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("json", "console")


def configure_logging(
    log_format: LogFormat = "json",
    *,
    stream: TextIO | None = None,
    level: int = logging.INFO,
    cache: bool = True,
) -> None:
    """Route every structlog event to ``stream`` (stdout) as JSON or console lines.

    ``cache``: each logger assembles its processor chain once, on first use (structlog's
    recommendation for production; a gateway logs one event per decision). Tests that
    reconfigure logging in one process pass ``cache=False``.
    """
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(sort_keys=True)
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=cache,
    )


class FaultLog:
    """Logs a fault that is retried in a loop once per distinct error (``<event>_failed``) and
    its end once (``<event>_recovered``), so a lasting fault is visible without a flood."""

    def __init__(
        self, log: structlog.typing.FilteringBoundLogger, event: str, **fields: str
    ) -> None:
        self._log, self._event, self._fields = log, event, fields
        self._last = ""

    def failed(self, exc: BaseException) -> None:
        if repr(exc) != self._last:
            self._last = repr(exc)
            self._log.warning(f"{self._event}_failed", error=self._last, **self._fields)

    @property
    def failing(self) -> bool:
        """True from a failure until the next success."""
        return bool(self._last)

    def ok(self) -> None:
        if self._last:
            self._last = ""
            self._log.info(f"{self._event}_recovered", **self._fields)


class DistinctFaults:
    """Logs each distinct failure (exception type and message) once, with its traceback, for
    loops that retry many messages: one message retried N times, or N messages failing the same
    way, give one event (``event``) instead of N. A failure seen again after ``repeat_after``
    seconds is logged again with how often it recurred meanwhile, so a lasting fault is not
    silent forever. Keeps at most ``capacity`` distinct failures (oldest forgotten)."""

    def __init__(
        self,
        log: structlog.typing.FilteringBoundLogger,
        event: str,
        *,
        capacity: int = 1024,
        repeat_after: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log, self._event = log, event
        self._capacity, self._repeat_after, self._clock = capacity, repeat_after, clock
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    @staticmethod
    def key(exc: BaseException) -> str:
        """What makes two failures "the same": type and message (capped)."""
        return f"{type(exc).__name__}: {exc}"[:500]

    def failed(self, exc: BaseException, **fields: Any) -> bool:
        """Note a failure; log it if it is new (or due again). True if it was logged."""
        key, now = self.key(exc), self._clock()
        found = self._seen.get(key)
        if found is not None and now - found[0] < self._repeat_after:
            self._seen[key] = (found[0], found[1] + 1)
            self._seen.move_to_end(key)
            return False
        repeats = found[1] if found is not None else 0
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        extra = {"repeats": repeats} if repeats else {}
        self._log.error(
            self._event,
            error=key.encode("utf-8", "backslashreplace").decode("utf-8"),
            exc_info=exc,
            **extra,
            **fields,
        )
        return True
