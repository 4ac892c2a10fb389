"""The gateway process's own life cycle against real nats-server processes: orderly stop, and
failing fast (with the error) when one of its loops dies instead of living on relaying nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from broker.core import wire as subjects
from broker.federation.launcher import Federation
from broker.federation.processes import prepare
from broker.gateway import runner
from broker.gateway.settings import GatewaySettings, load_gateway_settings

from .conftest import run

POLICIES = Path(__file__).resolve().parents[2] / "docs" / "policies"


def _gateway_settings(fed: Federation) -> GatewaySettings:
    prepare(fed, policy_dir=POLICIES)
    return load_gateway_settings(fed.settings.base / "settings" / "de.gateway.json")


def test_gateway_stops_cleanly_when_asked(small_federation: Federation) -> None:
    settings = _gateway_settings(small_federation)

    async def scenario() -> None:
        stop, started = asyncio.Event(), asyncio.Event()

        async def ready() -> None:
            started.set()

        gateway = asyncio.create_task(runner.run_gateway(settings, stop=stop, ready=ready))
        await asyncio.wait_for(started.wait(), timeout=20)
        stop.set()
        await asyncio.wait_for(gateway, timeout=20)  # returns, raises nothing

    run(scenario())


def test_gateway_exits_with_the_error_when_a_loop_dies(
    small_federation: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _gateway_settings(small_federation)

    async def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("bug while settling a batch")

    monkeypatch.setattr(runner, "_settle_batch", broken)

    async def scenario() -> None:
        started = asyncio.Event()

        async def ready() -> None:
            started.set()

        gateway = asyncio.create_task(runner.run_gateway(settings, ready=ready))
        await asyncio.wait_for(started.wait(), timeout=20)
        agency = await small_federation.connect_as("de.lka-berlin")
        try:
            await agency.jetstream().publish(
                subjects.submit_subject("de.lka-berlin"),
                b"anything: the egress loop dies before deciding",
                headers={"Nats-Msg-Id": "fail-fast-1"},
            )
        finally:
            await agency.close()
        with pytest.raises(RuntimeError, match="bug while settling a batch"):
            await asyncio.wait_for(gateway, timeout=20)

    run(scenario())
