"""A node runs on its country server's time when its own clock is far off."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from broker.node.clock_check import ClockCollector, ClockDiscipline, measure_once

LOCAL = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def discipline() -> ClockDiscipline:
    return ClockDiscipline(lambda: LOCAL)


class TestClockDiscipline:
    def test_small_offsets_are_not_corrected(self) -> None:
        """Within 30 s the local clock is kept as it is (no jitter), but the offset is known."""
        clock = discipline()
        clock.observe(server=LOCAL + timedelta(seconds=20), sent=LOCAL, received=LOCAL)
        assert clock.now() == LOCAL
        assert clock.measured == timedelta(seconds=20)
        assert clock.problem() is None

    def test_large_offsets_are_corrected_both_ways(self) -> None:
        """Five minutes ahead or behind: the node runs on the server's time."""
        for offset in (timedelta(minutes=5), timedelta(minutes=-5)):
            clock = discipline()
            clock.observe(server=LOCAL + offset, sent=LOCAL, received=LOCAL)
            assert clock.now() == LOCAL + offset
            assert clock.problem() is None

    def test_round_trip_is_halved(self) -> None:
        """The server answered halfway through the round trip."""
        clock = discipline()
        received = LOCAL + timedelta(seconds=2)
        clock.observe(
            server=LOCAL + timedelta(minutes=10, seconds=1), sent=LOCAL, received=received
        )
        assert clock.measured == timedelta(minutes=10)

    def test_correction_goes_away_when_the_clock_is_repaired(self) -> None:
        """Once the clocks agree again the local clock is used unchanged."""
        clock = discipline()
        clock.observe(server=LOCAL + timedelta(minutes=5), sent=LOCAL, received=LOCAL)
        clock.observe(server=LOCAL, sent=LOCAL, received=LOCAL)
        assert clock.now() == LOCAL

    def test_beyond_the_bound_nothing_is_trusted(self) -> None:
        """A day apart: no correction, and readiness names the problem."""
        clock = discipline()
        clock.observe(server=LOCAL + timedelta(days=1), sent=LOCAL, received=LOCAL)
        assert clock.now() == LOCAL
        assert (clock.problem() or "").startswith("clock_skew")

    def test_unreachable_server_keeps_the_last_correction(self) -> None:
        """A failed measurement changes nothing."""
        clock = discipline()
        clock.observe(server=LOCAL + timedelta(minutes=5), sent=LOCAL, received=LOCAL)

        async def down() -> datetime | None:
            raise TimeoutError

        asyncio.run(measure_once(clock, down))
        assert clock.now() == LOCAL + timedelta(minutes=5)

    def test_offset_is_exported(self) -> None:
        """casebridge_node_clock_offset_seconds carries the last measurement."""
        registry = CollectorRegistry()
        clock = discipline()
        registry.register(ClockCollector(clock))
        assert registry.get_sample_value("casebridge_node_clock_offset_seconds") is None
        clock.observe(server=LOCAL - timedelta(minutes=5), sent=LOCAL, received=LOCAL)
        assert registry.get_sample_value("casebridge_node_clock_offset_seconds") == -300.0
