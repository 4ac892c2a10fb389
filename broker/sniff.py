"""What a file's content looks like (magic bytes, via ``filetype``), next to what it claims.

Shared by the CLI (the type to declare for ``--attach``) and the node (the sniffed type of a
received file, recorded beside the sender's declared type). A sniff is a hint for people and
scanners, never a decision: a border cannot look inside a file, and the recipient refuses
nothing because of it. Reads at most the first 8 KiB; never executes or parses a file.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Final

import filetype  # type: ignore[import-untyped]  # no stubs; one call, typed here

HEAD_BYTES: Final = 8192
FALLBACK: Final = "application/octet-stream"


def sniff_bytes(head: bytes) -> str | None:
    """The media type the first bytes of a file match, or None when unknown."""
    kind = filetype.guess(head[:HEAD_BYTES])
    return None if kind is None else str(kind.mime)


def declared_type_for(path: Path) -> str:
    """The media type to declare for a file: what its content looks like, else what its name
    says, else ``application/octet-stream``."""
    with path.open("rb") as f:
        sniffed = sniff_bytes(f.read(HEAD_BYTES))
    if sniffed is not None:
        return sniffed
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or FALLBACK
