"""What every adapter shares: its settings file, its node client, atomic file writes.

What it must never do
    Hold a token in a settings file (it comes from ``token_file`` or ``$CASEBRIDGE_TOKEN``), or
    leave a half-written file under a name a case system reads.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from broker.errors import ConfigError
from broker.sdk import NodeClient, Retries

DEFAULT_NODE: Final = "http://127.0.0.1:8470"
TOKEN_ENV: Final = "CASEBRIDGE_TOKEN"  # noqa: S105 - the variable's name, not a token


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeAccess:
    """Where the node's API is and the credential the adapter uses (never printed)."""

    url: str
    token: str = ""

    def __repr__(self) -> str:
        return f"NodeAccess(url={self.url!r})"

    def client(self, *, retries: Retries | None = None, timeout: float = 30.0) -> NodeClient:
        """An SDK client of the node (``token`` required)."""
        if not self.token:
            raise ConfigError(f"no API token: set node.token_file in the settings or ${TOKEN_ENV}")
        if retries is None:
            return NodeClient(self.url, self.token, timeout=timeout)
        return NodeClient(self.url, self.token, timeout=timeout, retries=retries)


def load_document(path: Path) -> Mapping[str, Any]:
    """A settings or mapping file (YAML, of which JSON is a subset) as a mapping."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: must hold a mapping at the top")
    return loaded


def node_access(raw: object, *, base: Path) -> NodeAccess:
    """The ``node`` section: ``{url, token_file}`` (paths relative to the settings file)."""
    section = raw if isinstance(raw, dict) else {} if raw is None else None
    if section is None:
        raise ConfigError("node must be a mapping with url and token_file")
    unknown = sorted(set(section) - {"url", "token_file"})
    if unknown:
        raise ConfigError(f"node: unknown members {unknown}")
    url = section.get("url", DEFAULT_NODE)
    if not isinstance(url, str):
        raise ConfigError("node.url must be a string")
    token = os.environ.get(TOKEN_ENV, "")
    token_file = section.get("token_file")
    if token_file is not None:
        try:
            token = (base / str(token_file)).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"node.token_file {token_file}: cannot read ({exc.strerror})"
            ) from None
    return NodeAccess(url=url, token=token)


def reject_unknown(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """Refuse members a settings section does not know (a typo must not be ignored)."""
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown members {unknown}")


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the whole new one, never
    part of it: a hidden temporary file in the same directory, flushed, then renamed."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make renames in ``directory`` durable (a crash must not undo a move already reported)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dumps(value: object) -> bytes:
    """Readable JSON for files people and case systems open."""
    return (json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
