"""Fixtures of the chart tests: the nats-server binary (skips locally without it, fails in CI)."""

from tests.integration.conftest import nats_binary

__all__ = ["nats_binary"]
