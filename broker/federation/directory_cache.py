"""The last directory a gateway or node accepted from the federation, kept for its next start.

A process that hot-swapped a newer directory remembers its serial (node store, gateway ledger)
and refuses anything older at its next start (DIRECTORY_STALE). Its settings still name the
directory file it was first given, so without this cache a restart would fail until somebody
copies the new file by hand. :func:`startup_directory` picks the newer of the two; both are
verified again by ``Directory.load`` at start, like any file.

What it must never do: trust the cache more than the file (it is only used if it verifies and
is newer), or import NATS (nodes load it without a NATS connection).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from cryptography import x509

from broker.core.directory import Directory
from broker.errors import CasebridgeError
from broker.pki.keyfiles import read_bytes


def directory_cache(store_path: Path) -> Path:
    """Where a gateway or node keeps the last published directory it accepted: next to its
    store (``<store>.directory.jws``)."""
    return store_path.with_name(store_path.name + ".directory.jws")


def write_cache(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a crash leaves the old file or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def startup_directory(
    configured: Path, cache: Path, *, root_cert: x509.Certificate, now: datetime
) -> bytes:
    """The signed directory to start from: the configured file, or the cached one accepted
    from the federation if it verifies and is newer (a process restarted after a hot swap
    must not fall back to the file's older serial, which its store refuses as stale)."""
    data = read_bytes(configured)  # a missing or unreadable file: ConfigError, as before
    try:
        cached = cache.read_bytes()
    except OSError:
        return data
    try:
        newer = Directory.load(cached, root_cert=root_cert, now=now)
        current = Directory.load(data, root_cert=root_cert, now=now)
    except CasebridgeError:
        return data  # a bad cache is ignored; a bad file fails at load as before
    return cached if newer.serial > current.serial else data
