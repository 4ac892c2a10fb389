"""Finding Debian's ``prometheus`` and ``promtool`` for tests: skip locally, fail in CI.

``.ci/run`` installs the ``prometheus`` package when it is missing, so in CI (``CI=true``) a
missing binary is a broken environment and the test fails instead of silently skipping.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def require(tool: str) -> Path:
    """The path of ``tool`` (``prometheus`` or ``promtool``); fail in CI, skip elsewhere."""
    found = shutil.which(tool)
    if found is not None:
        return Path(found)
    message = f"{tool} not found (apt-get install prometheus)"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"observability tests need {tool} in CI: {message}")
    pytest.skip(message)
