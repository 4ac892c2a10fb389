"""Reading a sealed message's header *without verifying it*.

Two uses only: the in-memory bus routes by it (a test double standing in for gateways), and a
node addresses ``rejected`` evidence for a message it refused before the outer signature was
verified (tampered bytes still name their claimed sender and id). Must never be used to decide
whether a message is accepted: everything returned here is attacker-controlled.
"""

from __future__ import annotations

from typing import Any

from broker.core import canonical, jose
from broker.core.header import Header, parse_header
from broker.errors import CasebridgeError


def unverified_header(wire: bytes) -> Header | None:
    """The header a message claims, strictly parsed, or None if it cannot be read at all."""
    try:
        # The strict parser: no lone surrogates, duplicates or deep nesting get through to
        # what is logged and stored about a refused message.
        unverified_wire: Any = canonical.loads_strict(wire, what="message", max_depth=2)
        unverified_outer = unverified_wire["outer"]
        payload_b64 = unverified_outer.split(".")[1]
        unverified_payload = canonical.loads_strict(
            jose.b64url_decode(payload_b64, what="outer payload"), what="outer payload"
        )
        return parse_header(unverified_payload["header"])
    except (CasebridgeError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
