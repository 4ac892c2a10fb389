"""Where a country's NATS server is and the mTLS material a client presents to it.

A value object shared by the node's and the gateway's settings; read from their settings files
by their loaders (``broker/node/settings.py``, ``broker/gateway/settings.py``). Must never read
a file itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True, slots=True)
class NatsSettings:
    """Where the country NATS server is and the client's mTLS material."""

    url: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
