"""Message ids: the one definition of what a valid id is, and deterministic ids for evidence.

A message ``id`` is a version-4 RFC 4122 UUID in lower-case hyphenated form (docs/protocol.md
section 3). Senders draw it at random (``uuid.uuid4()``, at the edge: the core takes ids in).
Where an id must be reproducible instead (a border gateway's evidence about one decision, so a
redelivered input yields the same evidence id and JetStream de-duplicates it), it is derived
with :func:`derived_uuid4`: still v4-shaped, so receivers need one rule only. Pure functions.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Final

# Lower-case hyphenated UUID of any version, and the v4 / RFC 4122 variant form of it.
UUID_RE: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
UUID4_RE: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z"
)


def is_uuid(value: object) -> bool:
    """Whether ``value`` is a UUID string in lower-case hyphenated (8-4-4-4-12) form."""
    return isinstance(value, str) and UUID_RE.fullmatch(value) is not None


def is_uuid4(value: object) -> bool:
    """Whether ``value`` is a lower-case hyphenated version-4, RFC 4122-variant UUID."""
    return isinstance(value, str) and UUID4_RE.fullmatch(value) is not None


def derived_uuid4(namespace: uuid.UUID, name: str) -> str:
    """A deterministic v4-shaped UUID: SHA-256(namespace bytes || UTF-8 name), first 16 bytes,
    version nibble set to 4 and variant bits to 10 (RFC 4122). Same inputs, same id."""
    digest = bytearray(
        hashlib.sha256(namespace.bytes + name.encode("utf-8", "surrogatepass")).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(digest)))
