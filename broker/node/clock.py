"""Time and identifiers, injected into the node so tests are deterministic.

Must never be bypassed: node code reads time only through a :data:`Clock` and makes message
ids only through an :data:`IdSource`.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime."""

IdSource = Callable[[], str]
"""Returns a fresh lower-case hyphenated UUID string (a message id)."""

SaltSource = Callable[[], bytes]
"""Returns fresh randomness for :func:`broker.core.envelope.seal` (16 bytes or more)."""


def system_clock() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def random_id() -> str:
    """A random (version 4) UUID."""
    return str(uuid.uuid4())


def random_salt() -> bytes:
    """128 bits from the OS CSPRNG."""
    return secrets.token_bytes(16)
