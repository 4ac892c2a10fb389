"""Shared fixtures: a fixed clock and one dev federation per test session.

``dev_federation`` is the demo federation (DE, NL in the EU; UA outside; three agencies each;
task force ``tf.eastern-route``) built with fresh keys at ``fixed_now``. Its directory is valid
for seven days from ``fixed_now``. Treat it as read-only: tests that need a different directory
call ``dev_federation.sign_directory(...)`` and load the result themselves.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from broker.pki.dev import DEMO_SPEC, DevFederation, build_dev_federation

FIXED_NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def pytest_addoption(parser: pytest.Parser) -> None:
    """The chaos suite's campaign size (tests/chaos; env: CASEBRIDGE_CHAOS_RUNS, ...)."""
    group = parser.getgroup("chaos", "chaos suite (tests/chaos, marked slow)")
    group.addoption("--runs", type=int, default=None, help="runs per part (default 5)")
    group.addoption("--messages", type=int, default=None, help="messages per run")
    group.addoption("--backlog", type=int, default=None, help="messages queued in the outage")
    group.addoption("--chaos-seed", type=int, default=None, help="seed (default: random)")


@pytest.fixture(scope="session")
def fixed_now() -> datetime:
    """The instant every session-wide fixture is built at: 2026-11-28T12:00:00Z."""
    return FIXED_NOW


@pytest.fixture(scope="session")
def dev_federation(fixed_now: datetime) -> DevFederation:
    """The demo federation: root, countries, agencies with keys, signed and loaded directory."""
    return build_dev_federation(DEMO_SPEC, now=fixed_now)
