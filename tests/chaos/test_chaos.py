"""The standing chaos suite (issue 11): faults an operator's bad day brings, on real processes.

Every part of a DE + UA federation -- the hub, each country server, each border gateway, the
sending and the receiving node -- is killed with ``kill -9`` at a random point of repeated
message runs (seeded; the seed is printed). After every run: acknowledged ids == delivered ids,
no id delivered twice, no rejection evidence for a delivered message, every process ready
again with nothing done by hand (see :mod:`tests.chaos.harness`). The suite's table is printed
at the end of the session and quoted in docs/operations.md ("Chaos suite").
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.federation.processes import STORE_DIR
from tests.chaos.conftest import Campaign
from tests.chaos.harness import (
    BACKLOG_SETTINGS,
    LKA,
    NPU,
    PARTS,
    TABLE,
    RunResult,
    SmallDisk,
    can_mount,
    disk_full_run,
    kill_run,
    not_ready,
    outage,
    plain_run,
    refused_at_recipient,
    row,
    table,
)
from tests.integration.e2e_helpers import Running

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def federation(nats_binary: Path, tmp_path: Path) -> Iterator[Running]:
    """A fresh DE + UA federation with both gateways and the LKA and NPU nodes."""
    del nats_binary
    running = Running.start(tmp_path / "fed", nodes=[LKA, NPU])
    try:
        yield running
    finally:
        running.close()


def _report(part: str, results: list[RunResult], capsys: pytest.CaptureFixture[str]) -> None:
    TABLE.append(row(part, results))
    with capsys.disabled():
        print(f"\n{table([row(part, results)])}")


@pytest.mark.parametrize("part", list(PARTS))
def test_kill_9_at_random_points(
    part: str, federation: Running, campaign: Campaign, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 of one part in each of the campaign's runs: nothing lost, nothing twice, no
    rejection for a delivered message, every process ready again by itself."""
    rng = campaign.rng(part)
    with capsys.disabled():
        print(f"\nchaos seed {campaign.seed}: {part}, {campaign.runs} x {campaign.messages}")
    results = []
    for n in range(campaign.runs):
        result = kill_run(federation, part, messages=campaign.messages, rng=rng, tag=f"{n}")
        results.append(result)
        with capsys.disabled():
            print(f"  run {n}: kill -9 {result.part}, {result.seconds:.1f}s")
        assert result.violations() == [], f"run {n} (seed {campaign.seed}): {result}"
    _report(part, results, capsys)


@pytest.fixture
def backlog_federation(nats_binary: Path, tmp_path: Path) -> Iterator[Running]:
    """DE + UA with the UA police node; the DE gateway lets one sender go at full speed."""
    del nats_binary
    running = Running.start(tmp_path / "fed", nodes=[LKA, NPU], settings=BACKLOG_SETTINGS)
    try:
        yield running
    finally:
        running.close()


def test_destination_outage_with_a_backlog(
    backlog_federation: Running, campaign: Campaign, capsys: pytest.CaptureFixture[str]
) -> None:
    """UA down while the campaign's backlog (10,000 by default) is sent; back: every
    acknowledged message delivered once, no refusal, every process ready."""
    federation = backlog_federation
    count = campaign.backlog
    drain, acked = outage(federation, count, timeout=120 + count / 5)
    counts = federation.delivered_log_count(NPU)
    inbox = federation.inbox_ids(NPU)
    refused = refused_at_recipient(federation)
    result = RunResult(
        part="destination outage",
        messages=count,
        acknowledged=set(acked),
        delivered=set(inbox),
        twice={i for i, n in Counter(inbox).items() if n > 1 or counts[i] > 1},
        rejected_for_delivered=set(inbox) & refused,
        missing_evidence=set(),  # the evidence goes to STA, which runs no node here
        refused_sends=[],
        recovery=drain.ready_seconds,
        resume=drain.ready_seconds + drain.first_seconds,
        seconds=drain.queue_seconds + drain.drain_seconds,
        not_ready=not_ready(federation),
    )
    with capsys.disabled():
        print(
            f"\noutage: {drain.queued} queued in {drain.queue_seconds:.0f}s; first delivery "
            f"{drain.first_seconds:.1f}s after UA was back; drained in "
            f"{drain.drain_seconds:.0f}s ({drain.rate:.1f} messages/s)"
        )
    _report("destination outage", [result], capsys)
    assert result.violations() == []


@pytest.fixture
def on_small_disk(nats_binary: Path, tmp_path: Path) -> Iterator[tuple[Running, SmallDisk]]:
    """DE + UA whose node stores and gateway ledgers all live on one 64 MB tmpfs."""
    del nats_binary
    why = can_mount(tmp_path)
    if why is not None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"the full-disk run needs a real small filesystem in CI: {why}")
        pytest.skip(why)
    disk = SmallDisk(tmp_path / "fed" / STORE_DIR, 64)
    disk.mount()
    try:
        running = Running.start(tmp_path / "fed", nodes=[LKA, NPU])
        try:
            yield running, disk
        finally:
            running.close()
    finally:
        disk.unmount()


def test_full_disk(
    on_small_disk: tuple[Running, SmallDisk],
    campaign: Campaign,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The stores' disk full to the last byte mid-run, then freed: the fault shows (503 or
    readiness), nothing lost or twice, every loop and process back by itself."""
    federation, disk = on_small_disk
    rng = campaign.rng("full disk")
    with capsys.disabled():
        print(f"\nchaos seed {campaign.seed}: full disk, {campaign.runs} x {campaign.messages}")
    results = []
    for n in range(campaign.runs):
        result, seen = disk_full_run(
            federation, disk, messages=campaign.messages, rng=rng, tag=f"disk {n}"
        )
        results.append(result)
        with capsys.disabled():
            print(f"  run {n}: {result.seconds:.1f}s; the fault showed as {seen}")
        assert result.violations() == [], f"run {n} (seed {campaign.seed}): {result}"
    _report("full disk", results, capsys)


# A 5-minute skew is beyond the protocol's 120 s tolerance (docs/protocol.md): the node measures
# its country server's clock and runs on it (broker/node/clock_check.py). Before that, each
# direction broke a promise: the own border refused the sender's messages (+5 min), the sender
# refused all evidence (-5 min), the receiver's evidence was refused at its border (+5 min), the
# receiver refused honest messages with rejected evidence for its own fault (-5 min).
CLOCK_TIMEOUT = 30.0  # seconds per settling step; 50 messages settle in ~5 s when all works


@pytest.mark.parametrize(
    ("agency", "offset"),
    [
        pytest.param(LKA, 300),
        pytest.param(LKA, -300),
        pytest.param(NPU, 300),
        pytest.param(NPU, -300),
    ],
    ids=["sender+5min", "sender-5min", "receiver+5min", "receiver-5min"],
)
@pytest.mark.usefixtures("nats_binary")
def test_node_clock_five_minutes_off(
    agency: str,
    offset: int,
    tmp_path: Path,
    campaign: Campaign,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One node's clock 5 minutes off (``clock_offset_seconds``): every acknowledged message
    delivered once, its ``delivered`` evidence back, no rejection for a delivered message."""
    federation = Running.start(
        tmp_path / "fed",
        nodes=[LKA, NPU],
        settings={agency: {"clock_offset_seconds": offset}},
    )
    try:
        label = f"{'sending' if agency == LKA else 'receiving'} node clock {offset:+d} s"
        result = plain_run(
            federation, messages=min(campaign.messages, 50), tag=label, timeout=CLOCK_TIMEOUT
        )
        _report(label, [result], capsys)
        assert result.violations() == [], f"{label}: {result.violations()}"
    finally:
        federation.close()
