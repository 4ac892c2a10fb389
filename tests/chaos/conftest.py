"""The chaos suite's campaign: runs per part, messages per run, backlog size, seed.

Options (registered in ``tests/conftest.py``) win over environment variables, which win over
the defaults sized for CI (see docs/operations.md, "Chaos suite", for the measured times):
``--runs`` / ``CASEBRIDGE_CHAOS_RUNS``, ``--messages`` / ``CASEBRIDGE_CHAOS_MESSAGES``,
``--backlog`` / ``CASEBRIDGE_CHAOS_BACKLOG``, ``--chaos-seed`` / ``CASEBRIDGE_CHAOS_SEED``.
The seed is printed, so a failing campaign can be repeated exactly.
"""

from __future__ import annotations

import os
import random
import secrets
from dataclasses import dataclass
from typing import Final

import pytest

from tests.chaos.harness import TABLE, table
from tests.integration.conftest import nats_binary

__all__ = ["nats_binary"]  # the integration layer's fixture: skip locally, fail in CI

RUNS: Final = 5
MESSAGES: Final = 200
BACKLOG: Final = 10_000


@dataclass(frozen=True, slots=True)
class Campaign:
    """How large the chaos campaign is, and its seed."""

    runs: int
    messages: int
    backlog: int
    seed: int

    def rng(self, salt: str) -> random.Random:
        """A generator per test, so each part replays the same points under the same seed."""
        return random.Random(f"{self.seed}:{salt}")  # noqa: S311 - fault points, not secrets


def _setting(config: pytest.Config, option: str, env: str, default: int) -> int:
    value = config.getoption(option)
    if value is None:
        raw = os.environ.get(env)
        value = int(raw) if raw else default
    return int(value)


@pytest.fixture(scope="session")
def campaign(pytestconfig: pytest.Config) -> Campaign:
    """The campaign of this session (options, environment, or CI defaults)."""
    seed = _setting(pytestconfig, "chaos_seed", "CASEBRIDGE_CHAOS_SEED", -1)
    return Campaign(
        runs=_setting(pytestconfig, "runs", "CASEBRIDGE_CHAOS_RUNS", RUNS),
        messages=_setting(pytestconfig, "messages", "CASEBRIDGE_CHAOS_MESSAGES", MESSAGES),
        backlog=_setting(pytestconfig, "backlog", "CASEBRIDGE_CHAOS_BACKLOG", BACKLOG),
        seed=seed if seed >= 0 else secrets.randbelow(2**32),
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TABLE:
        terminalreporter.write_sep("=", "chaos suite")
        terminalreporter.write_line(table(TABLE))
