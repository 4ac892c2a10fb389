"""Keeping a node's notion of time honest: its clock checked against its country server's.

What it is for
    The protocol tolerates 120 s of clock skew (docs/protocol.md). A node whose clock is off by
    more would seal messages its own border refuses as ``not_yet_valid``, or refuse honest
    messages and evidence and tell their senders so — an untrue answer about a fault of ours.
    The country server is the node's reference: every ``CLOCK_CHECK_SECONDS`` the node asks it
    for its time (the ``ts`` of a JetStream consumer-info answer on the node's own durable, a
    subject it may use) and, when the difference exceeds :data:`CORRECT_ABOVE`, runs on the
    server's time instead (``ClockDiscipline.now``), logs ``clock_skew_detected`` once, exports
    ``casebridge_node_clock_offset_seconds`` and the alert ``CasebridgeNodeClockSkew`` fires so
    that an operator repairs NTP. Corrections are bounded (:data:`MAX_CORRECTION`): beyond it
    the node does not trust either clock and says so in ``/readyz``.

What it must never do
    Move time by less than the threshold (no jitter), or trust a correction beyond the bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, Final

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CLOCK_CHECK_SECONDS: Final = 30.0
CORRECT_ABOVE: Final = timedelta(seconds=30)
MAX_CORRECTION: Final = timedelta(hours=12)

log = structlog.get_logger("casebridge.node")


class ClockDiscipline:
    """The node's clock: the local one, corrected by the measured offset when it is large."""

    def __init__(self, local: Callable[[], datetime]) -> None:
        self._local = local
        self.offset = timedelta(0)  # applied correction
        self.measured: timedelta | None = None  # last measurement (server - local)
        self.untrusted = False  # the measured offset is beyond MAX_CORRECTION

    def now(self) -> datetime:
        return self._local() + self.offset

    def observe(self, *, server: datetime, sent: datetime, received: datetime) -> None:
        """One measurement: ``server`` time answered between local ``sent`` and ``received``."""
        local = sent + (received - sent) / 2
        measured = server - local
        self.measured = measured
        if abs(measured) > MAX_CORRECTION:
            if not self.untrusted:
                log.error("clock_untrusted", offset_seconds=measured.total_seconds())
            self.untrusted = True
            return
        self.untrusted = False
        corrected = measured if abs(measured) > CORRECT_ABOVE else timedelta(0)
        if corrected != timedelta(0) and self.offset == timedelta(0):
            log.warning("clock_skew_detected", offset_seconds=round(measured.total_seconds(), 3))
        elif corrected == timedelta(0) and self.offset != timedelta(0):
            log.info("clock_skew_resolved", offset_seconds=round(measured.total_seconds(), 3))
        self.offset = corrected

    def problem(self) -> str | None:
        """Why the node should not be considered ready, if its time cannot be trusted."""
        if self.untrusted and self.measured is not None:
            return f"clock_skew: local clock off by {self.measured.total_seconds():.0f} s"
        return None


async def measure_once(
    discipline: ClockDiscipline, server_time: Callable[[], Awaitable[datetime | None]]
) -> None:
    """One measurement; an unreachable server keeps the last correction (logged at debug)."""
    sent_mono, sent = time.monotonic(), discipline._local()
    try:
        server = await server_time()
    except Exception as exc:  # noqa: BLE001 - no measurement this time
        log.debug("clock_check_failed", error=repr(exc))
        return
    if server is not None:
        elapsed = timedelta(seconds=time.monotonic() - sent_mono)
        discipline.observe(server=server, sent=sent, received=sent + elapsed)


async def run_clock_check(
    discipline: ClockDiscipline,
    server_time: Callable[[], Awaitable[datetime | None]],
    *,
    interval: float = CLOCK_CHECK_SECONDS,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> None:
    """Measure every ``interval`` seconds, for ever."""
    while True:
        await sleep(interval)
        await measure_once(discipline, server_time)


class ClockCollector(Collector):
    """``casebridge_node_clock_offset_seconds``: the country server's clock minus the node's,
    as last measured (no sample before the first measurement)."""

    def __init__(self, discipline: ClockDiscipline) -> None:
        self._discipline = discipline

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        measured = self._discipline.measured
        if measured is None:
            return
        gauge = GaugeMetricFamily(
            "casebridge_node_clock_offset_seconds",
            "The country server's clock minus this node's (last measurement); beyond 30 s the "
            "node runs on the server's time.",
        )
        gauge.add_metric([], measured.total_seconds())
        yield gauge
