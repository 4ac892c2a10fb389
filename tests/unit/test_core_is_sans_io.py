"""The pure core imports no I/O framework (STYLE.md habit 1)."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("asyncio", "nats", "aiohttp")

PROBE = """
import importlib, json, pkgutil, sys
import broker.core
names = [m.name for m in pkgutil.walk_packages(broker.core.__path__, "broker.core.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted(sys.modules)}))
"""


def _probe(code: str) -> dict[str, list[str]]:
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    result: dict[str, list[str]] = json.loads(out.stdout)
    return result


def _offenders(loaded: list[str]) -> list[str]:
    return [m for m in loaded if m.split(".")[0] in FORBIDDEN]


def test_importing_broker_core_loads_no_io_framework() -> None:
    """`import broker.core` loads no asyncio, nats or aiohttp module."""
    result = _probe(
        "import sys, json, broker.core; print(json.dumps({'loaded': sorted(sys.modules)}))"
    )
    assert _offenders(result["loaded"]) == []


def test_every_core_module_is_sans_io() -> None:
    """Importing every module under broker.core loads no asyncio, nats or aiohttp module."""
    result = _probe(PROBE)
    assert "broker.core.envelope" in result["modules"]
    assert _offenders(result["loaded"]) == []
