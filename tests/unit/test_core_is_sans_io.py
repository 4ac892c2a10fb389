"""The pure core imports no I/O framework and touches no file, environment, clock or id source
(STYLE.md habit 1, "Core means pure")."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "broker" / "core"
FORBIDDEN = ("asyncio", "nats", "aiohttp", "sqlite3")
# The core may import itself and the error tree, nothing else of broker (edges import the core).
ALLOWED_BROKER = ("broker", "broker.core", "broker.errors")

# Modules the core must never import: I/O, processes, environment, clocks, id sources.
FORBIDDEN_IMPORTS = frozenset(
    {"asyncio", "nats", "aiohttp", "sqlite3", "os", "socket", "subprocess", "urllib", "http",
     "importlib", "time", "threading", "random", "functools", "shutil", "tempfile", "glob"}
)  # fmt: skip
# Calls of these names read files or the environment, or draw ids.
FORBIDDEN_CALLS = frozenset({"open", "getenv", "uuid1", "uuid4", "input"})
# Attributes that read/write files or the environment, read a clock, draw ids or cache globally.
FORBIDDEN_ATTRIBUTES = frozenset(
    {"read_text", "read_bytes", "write_text", "write_bytes", "environ", "getenv", "uuid1",
     "uuid4", "now", "utcnow", "today", "cache", "lru_cache", "urandom"}
)  # fmt: skip
# Each exception names where and why. JWE encryption draws its content key (and the ephemeral
# keys) where it uses them: fresh key material by definition, never an id or a time.
ALLOWED = {("jose.py", "import secrets"), ("jose.py", ".token_bytes")}

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


def _foreign_broker(loaded: list[str]) -> list[str]:
    return [
        m
        for m in loaded
        if m.split(".")[0] == "broker"
        and m not in ALLOWED_BROKER
        and not m.startswith("broker.core.")
    ]


def _violations(path: Path) -> list[str]:
    """Every forbidden import, call or attribute in one core module, as ``what``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [
                f"import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_IMPORTS
            ]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in FORBIDDEN_IMPORTS:
                found.append(f"from {node.module} import")
            found += [
                f".{a.name}" for a in node.names if a.name in FORBIDDEN_ATTRIBUTES | FORBIDDEN_CALLS
            ]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in FORBIDDEN_CALLS:
                found.append(f"{node.func.id}()")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            found.append(f".{node.attr}")
        elif isinstance(node, ast.Global):
            found.append("global")
    return found  # fmt: skip


class TestImports:
    def test_importing_broker_core_loads_no_io_framework(self) -> None:
        """`import broker.core` loads no asyncio, nats, aiohttp or sqlite3 module."""
        result = _probe(
            "import sys, json, broker.core; print(json.dumps({'loaded': sorted(sys.modules)}))"
        )
        assert _offenders(result["loaded"]) == []

    def test_every_core_module_is_sans_io(self) -> None:
        """Importing every module under broker.core loads no asyncio, nats, aiohttp or sqlite3
        module, and no part of broker outside the core and the error tree."""
        result = _probe(PROBE)
        assert "broker.core.envelope" in result["modules"]
        assert "broker.core.wire" in result["modules"]
        assert _offenders(result["loaded"]) == []
        assert _foreign_broker(result["loaded"]) == []


class TestSource:
    def test_core_reads_no_file_environment_clock_or_id_source(self) -> None:
        """No module of broker/core opens or reads a file, reads the environment or a clock,
        draws a uuid4, keeps a functools cache or a global, or imports an I/O module."""
        found = [
            f"{path.relative_to(CORE)}: {what}"
            for path in sorted(CORE.rglob("*.py"))
            for what in _violations(path)
            if (path.name, what) not in ALLOWED
        ]
        assert found == []

    def test_the_scan_sees_what_it_forbids(self, tmp_path: Path) -> None:
        """The scan flags each forbidden form (so an empty result above means something)."""
        source = tmp_path / "bad.py"
        source.write_text(
            "import os, asyncio\nfrom pathlib import Path\nimport functools\n"
            "open('x')\nPath('x').read_text()\nos.environ.get('A')\n"
            "import uuid\nuuid.uuid4()\nfrom datetime import datetime\ndatetime.now()\n"
            "@functools.cache\ndef f() -> None: ...\n",
            encoding="utf-8",
        )
        found = set(_violations(source))
        assert {
            "import os",
            "import asyncio",
            "import functools",
            "open()",
            ".read_text",
            ".environ",
            ".uuid4",
            ".now",
            ".cache",
        } <= found
