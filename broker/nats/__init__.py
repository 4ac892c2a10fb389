"""The NATS client edge shared by the node and the border gateway.

What it is for
    Connecting to a country server over mTLS (:func:`connect`, :func:`tls_context`), the
    timeouts both sides use, and translating nats-py's exceptions into Casebridge errors once,
    at this edge (:func:`map_exceptions`), instead of ``suppress(...)`` blocks everywhere.

What it must never do
    Hold node or gateway logic (the node's transport is ``broker/node/transport_nats.py``, the
    gateway's loops ``broker/gateway/runner.py``), or let a nats-py exception reach the core.
"""

from broker.nats.client import (
    MSG_ID,
    NATS_ERRORS,
    PUBLISH_TIMEOUT,
    BatchPublisher,
    connect,
    lean_fetch,
    map_exceptions,
    quiet_tls_eof_warning,
    tls_context,
)

__all__ = [
    "MSG_ID",
    "NATS_ERRORS",
    "PUBLISH_TIMEOUT",
    "BatchPublisher",
    "connect",
    "lean_fetch",
    "map_exceptions",
    "quiet_tls_eof_warning",
    "tls_context",
]
