"""structlog set-up for the node and gateway processes: JSON lines (default) or console.

One event per line on stdout: ``{"event": ..., "level": ..., "timestamp": ..., ...}`` with the
fields each call site binds (message id, rule id, reason, traceparent; never message content).
``--log-format console`` renders the same events for humans. Called once at process start by
the CLI; library code only ever calls ``structlog.get_logger``.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, Literal, TextIO

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
