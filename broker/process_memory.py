"""Give the C heap's free pages back to the system after start-up (glibc ``malloc_trim``).

Start-up compiles every message schema (jsonschema_rs, in Rust) and parses policies and the
directory; the gateway only checks the schemas and drops them, but glibc keeps the freed pages
resident inside its heap (about 10 MB), which counts against the 100 MB budget of each process
(docs/federation.md, "Attachments"). This module must never free or move live objects: it only
asks the allocator to return pages nothing uses; elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys


def release_free_memory() -> bool:
    """Collect garbage, then return free heap pages to the system; ``False`` if not glibc."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
