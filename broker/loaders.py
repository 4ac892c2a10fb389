"""Loaders at the edge: the files and environment the pure core must never read itself.

What it is for
    Reading the message catalogue (``schemas/``: ``$CASEBRIDGE_SCHEMAS``, else the package data
    of an installed wheel, else the checkout) and policy files from disk, and handing their
    bytes to the core (:mod:`broker.core.schemas`, :mod:`broker.core.policy`). The node, the
    gateway, the CLI, the demos and the tests load through here.

What it must never do
    Decide anything: every check happens in the core functions these call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Final

from cryptography import x509

from broker.core.policy.loading import parse_policy
from broker.core.policy.model import Policy
from broker.core.policy.signing import verify_policy
from broker.core.schemas import SchemaRegistry, parse_documents
from broker.errors import PolicyError, PolicyProblem, SchemaRegistryError

SCHEMAS_ENV: Final = "CASEBRIDGE_SCHEMAS"


def default_schema_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$CASEBRIDGE_SCHEMAS`` if set, else the catalogue shipped with the package.

    An installed wheel holds the schemas as package data (``broker/schemas/``, from the
    top-level ``schemas/`` of the source tree); a checkout has them at its top level.
    """
    configured = (os.environ if environ is None else environ).get(SCHEMAS_ENV)
    if configured:
        return Path(configured)
    packaged = Path(str(resources.files("broker") / "schemas"))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "schemas"


def read_schema_files(directory: Path) -> dict[str, str]:
    """Every ``*.json`` directly in ``directory``: file name -> text."""
    if not directory.is_dir():
        raise SchemaRegistryError(f"{directory}: not a directory")
    files: dict[str, str] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            files[path.name] = path.read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:
            raise SchemaRegistryError(f"{path.name}: unreadable: {exc}") from exc
    if not files:
        raise SchemaRegistryError(f"{directory}: no schema files")
    return files


def load_documents(directory: Path) -> dict[str, object]:
    """Read and parse every ``<name>.v<N>.json`` directly in ``directory``."""
    return parse_documents(read_schema_files(directory))


def load_schema_registry(path: Path | None = None) -> SchemaRegistry:
    """Load and check every schema in ``path`` (default: :func:`default_schema_dir`)."""
    return SchemaRegistry.from_documents(load_documents(path or default_schema_dir()))


def load_policy_file(path: Path | str) -> Policy:
    """Read and parse an unsigned policy YAML file (tooling and tests; nodes use signed files)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        why = exc.strerror or "unreadable"
        raise PolicyError(str(path), [PolicyProblem(line=None, message=why)]) from None
    return parse_policy(data, source=str(path))


def load_signed_policy(
    path: Path | str,
    *,
    ca_cert: x509.Certificate,
    root_cert: x509.Certificate,
    now: datetime,
) -> Policy:
    """Read and verify a signed policy file (see :func:`broker.core.policy.verify_policy`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        why = exc.strerror or "unreadable"
        raise PolicyError(str(path), [PolicyProblem(line=None, message=why)]) from None
    return verify_policy(data, ca_cert=ca_cert, root_cert=root_cert, now=now, source=str(path))
