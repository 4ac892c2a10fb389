"""Attachment settings of a node, and the external scanner hook.

A node may name a scanner command (``attachments.scanner`` in its settings: an argv list).
Every received file that verified is handed to it, decrypted into a private temporary file
(mode 0600, inside the node's attachment directory, removed afterwards), as the command's last
argument. Exit status 0 approves the file; anything else (or no answer within
``scan_timeout_seconds``) quarantines it, with the first line of the command's output as the
reason shown to people. A person can download a received file only once it is approved (or
when no scanner is configured). The message itself is delivered either way: the scanner
guards people, not the protocol.

Never runs the command through a shell, never keeps the plaintext copy, never decides about
messages.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from broker.core.attachments import Manifest
from broker.errors import ConfigError
from broker.node.attachments import AttachmentSpool

DEFAULT_MAX_SIZE: Final = 1 << 32  # 4 GiB per file; the country's policy usually says less
DEFAULT_SCAN_TIMEOUT: Final = 120.0
DEFAULT_STAGED_HOURS: Final = 24.0
APPROVED: Final = "approved"
QUARANTINED: Final = "quarantined"
PENDING: Final = "pending"


@dataclass(frozen=True, kw_only=True, slots=True)
class AttachmentSettings:
    """``attachments`` member of the node settings: upload size limit, scanner hook and how
    long an upload may wait to be sent with a message (``staged_hours``)."""

    max_size: int = DEFAULT_MAX_SIZE
    scanner: tuple[str, ...] = ()
    scan_timeout_seconds: float = DEFAULT_SCAN_TIMEOUT
    staged_hours: float = DEFAULT_STAGED_HOURS

    @classmethod
    def from_json(cls, raw: Any) -> AttachmentSettings:
        """From the settings member (None: defaults); unknown members are refused."""
        if raw is None:
            return cls()
        allowed = {"max_size", "scanner", "scan_timeout_seconds", "staged_hours"}
        if not isinstance(raw, dict) or set(raw) - allowed:
            raise ConfigError(f"settings: attachments must be an object with {sorted(allowed)}")
        size = raw.get("max_size", DEFAULT_MAX_SIZE)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigError("settings: attachments.max_size must be a byte count")
        scanner = raw.get("scanner", [])
        if not isinstance(scanner, list) or not all(isinstance(a, str) and a for a in scanner):
            raise ConfigError("settings: attachments.scanner must be an argv list of strings")
        timeout = raw.get("scan_timeout_seconds", DEFAULT_SCAN_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError("settings: attachments.scan_timeout_seconds must be positive")
        staged = raw.get("staged_hours", DEFAULT_STAGED_HOURS)
        if isinstance(staged, bool) or not isinstance(staged, int | float) or staged <= 0:
            raise ConfigError("settings: attachments.staged_hours must be positive")
        return cls(
            max_size=size,
            scanner=tuple(scanner),
            scan_timeout_seconds=float(timeout),
            staged_hours=float(staged),
        )


def scan(
    spool: AttachmentSpool, manifest: Manifest, *, argv: Sequence[str], timeout: float
) -> tuple[str, str]:
    """Run the scanner on a verified file: (``approved`` or ``quarantined``, reason)."""
    workdir = spool.root / "scan"
    workdir.mkdir(mode=0o700, exist_ok=True)
    path = workdir / manifest.id
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            for piece in spool.read(manifest):
                out.write(piece)
        try:
            done = subprocess.run(  # noqa: S603 - the operator's configured argv, no shell
                [*argv, str(path)],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return QUARANTINED, f"scanner gave no answer within {timeout:.0f} s"
        except OSError as exc:
            return QUARANTINED, f"scanner could not run: {exc.strerror or exc}"
        if done.returncode == 0:
            return APPROVED, "approved by the scanner"
        said = (done.stdout or done.stderr).decode("utf-8", "replace").strip().splitlines()
        return QUARANTINED, (said[0][:200] if said else f"scanner exit status {done.returncode}")
    finally:
        Path(path).unlink(missing_ok=True)
