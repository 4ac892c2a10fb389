"""The node's ``clock_offset_seconds`` setting (fault tests only: a skewed node clock)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.errors import ConfigError
from broker.node.runtime import _offset_clock
from broker.node.settings import load_settings

ENV = {"CASEBRIDGE_NODE_TOKEN": "t" * 32}


def _settings(tmp_path: Path, **members: Any) -> Path:
    doc = {
        "agency": "de.lka-berlin",
        "nats": {"url": "nats://127.0.0.1:4222"},
        "keys": {
            "signing_key": "k.pem",
            "signing_cert": "c.pem",
            "agreement_key": "ak.pem",
            "agreement_cert": "ac.pem",
        },
        "directory": {"file": "directory.json", "root_cert": "root.pem"},
        "store": "node.sqlite",
    } | members
    path = tmp_path / "node.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


class TestClockOffset:
    def test_default_is_the_wall_clock(self, tmp_path: Path) -> None:
        """Without the member the offset is 0 and the node reads the system clock unchanged."""
        assert load_settings(_settings(tmp_path), env=ENV).clock_offset_seconds == 0.0
        before = datetime.now(UTC)
        read = _offset_clock(0.0)()
        assert before <= read <= datetime.now(UTC)

    @pytest.mark.parametrize("offset", [300, -300, 12.5])
    def test_offset_shifts_the_node_clock(self, tmp_path: Path, offset: float) -> None:
        """A number of seconds within a day is accepted and added to every reading."""
        settings = load_settings(_settings(tmp_path, clock_offset_seconds=offset), env=ENV)
        assert settings.clock_offset_seconds == offset
        shift = timedelta(seconds=offset)
        before = datetime.now(UTC) + shift
        read = _offset_clock(settings.clock_offset_seconds)()
        assert before <= read <= datetime.now(UTC) + shift

    @pytest.mark.parametrize("offset", ["300", True, 86401, -86401, None])
    def test_anything_else_is_refused_at_start(self, tmp_path: Path, offset: object) -> None:
        """Strings, booleans, null and offsets beyond a day are configuration errors."""
        with pytest.raises(ConfigError, match="clock_offset_seconds"):
            load_settings(_settings(tmp_path, clock_offset_seconds=offset), env=ENV)
