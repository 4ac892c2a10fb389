"""Packaging: every package and the schema catalogue ship in the wheel; schemas load from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _configured_packages() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(config["tool"]["setuptools"]["packages"])


def test_package_list_matches_the_source_tree() -> None:
    """pyproject lists every broker package (a new one cannot be left out of the wheel)."""
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "broker").rglob("__init__.py")
    }
    shipped = {"broker.schemas", "broker.schemas.examples", "broker.adapters"}
    assert _configured_packages() == found | shipped


def test_registry_loads_from_another_working_directory(tmp_path: Path) -> None:
    """load_schema_registry() does not depend on the current directory."""
    code = (
        "from broker.loaders import load_schema_registry;print(len(load_schema_registry().types()))"
    )
    env = {k: v for k, v in os.environ.items() if k != "CASEBRIDGE_SCHEMAS"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 20


@pytest.mark.slow
def test_installed_wheel_loads_schemas_without_a_checkout(tmp_path: Path) -> None:
    """A built wheel holds broker/schemas/*.json and broker/adapters; installed alone, the
    registry loads from it and the adapters import."""
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("broker", "schemas", "adapters"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("casebridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "broker/schemas/bulletin.v1.json" in names
    assert "broker/schemas/examples/bulletin.json" in names
    assert "broker/adapters/folder.py" in names
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    code = (
        "import broker, sys; from broker.loaders import load_schema_registry, default_schema_dir;"
        f"assert broker.__file__.startswith({str(site)!r}), broker.__file__;"
        # The adapters import as installed (broker.adapters), with their relative imports.
        "import broker.adapters.folder, broker.adapters.mapping, broker.adapters.webhook_receiver;"
        "from broker.cli.adapter import adapter_module;"
        "assert adapter_module('folder') is broker.adapters.folder;"
        "print(default_schema_dir()); print(len(load_schema_registry().types()))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CASEBRIDGE_SCHEMAS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown, count = done.stdout.split()
    assert shown.startswith(str(site))
    assert int(count) >= 20
