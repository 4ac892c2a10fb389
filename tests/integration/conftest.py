"""Fixtures that run real nats-server federations on loopback (hub + country servers, mTLS).

``federation`` is one running federation per session (docs/federation.example.yaml: DE, NL, UA),
for tests that only connect. ``small_federation`` is a fresh DE + UA federation per test, for
tests that stop servers. Every federation is torn down by a finalizer, so a failing test leaves
no nats-server behind. Without the nats-server binary these tests skip locally and fail in CI
(``CI=true``): the integration layer must never silently disappear there.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from nats.aio.client import Client as NatsClient

from broker.errors import ConfigError
from broker.federation.launcher import Federation, find_nats_server
from broker.federation.spec import FederationDescription, load_description, parse_description

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "federation.example.yaml"
T = TypeVar("T")

SMALL = {
    "federation": "small",
    "countries": [
        {
            "code": "DE",
            "name": "Germany",
            "eu": True,
            "agencies": [{"id": "de.lka-berlin", "kind": "law_enforcement", "name": "LKA Berlin"}],
        },
        {
            "code": "UA",
            "name": "Ukraine",
            "eu": False,
            "agencies": [{"id": "ua.npu", "kind": "law_enforcement", "name": "National Police"}],
        },
    ],
}


def run(coro: Awaitable[T]) -> T:
    """Run one coroutine to completion (the tests are synchronous; no pytest-asyncio)."""

    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


@pytest.fixture(scope="session")
def nats_binary() -> Path:
    """The nats-server binary; missing means skip locally, fail in CI."""
    try:
        return find_nats_server()
    except ConfigError as exc:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"integration tests need nats-server in CI: {exc.detail}")
        pytest.skip(f"nats-server not available: {exc.detail}")


@pytest.fixture(scope="session")
def example_description() -> FederationDescription:
    """The example federation file shipped in docs/."""
    return load_description(EXAMPLE)


def _started(description: FederationDescription, base: Path) -> Iterator[Federation]:
    fed = Federation.init(description, base, now=datetime.now(UTC))
    try:
        fed.up()
        yield fed
    finally:
        fed.close()


@pytest.fixture(scope="session")
def federation(
    nats_binary: Path,
    example_description: FederationDescription,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Federation]:
    """The example federation, running for the whole session. Do not stop its servers."""
    del nats_binary
    yield from _started(example_description, tmp_path_factory.mktemp("federation"))


@pytest.fixture
def small_federation(nats_binary: Path, tmp_path: Path) -> Iterator[Federation]:
    """A fresh, running DE + UA federation that the test may stop and restart."""
    del nats_binary
    yield from _started(parse_description(SMALL), tmp_path / "fed")


class ErrorLog:
    """Collects asynchronous errors the server reports to a client (permissions violations)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, exc: Exception) -> None:
        """The ``error_cb`` (nats-py insists on a coroutine function, not a callable object)."""
        self.errors.append(str(exc))

    def violations(self) -> list[str]:
        """Permissions violations, lower-cased (nats-py lower-cases the server's text)."""
        return [e.lower() for e in self.errors if "permissions violation" in e.lower()]


async def connect(fed: Federation, agency_id: str, **options: Any) -> tuple[NatsClient, ErrorLog]:
    """Connect as ``agency_id`` with an error log and no reconnection (tests want errors)."""
    log = ErrorLog()
    nc = await fed.connect_as(agency_id, error_cb=log.record, allow_reconnect=False, **options)
    return nc, log
