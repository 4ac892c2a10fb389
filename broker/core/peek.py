"""Reading a sealed message's header *without verifying it*: the one unverified peek.

Uses, and only these: the in-memory bus routes by it (a test double standing in for gateways);
a gateway fetches the crossings its rules may look up; a node or gateway names the claimed id
and sender of a message it refused in its log, audit and quarantine records, and a node
addresses ``rejected`` evidence only after the outer signature verified (see
:func:`broker.core.envelope.authenticated_header`). Must never be used to decide whether a
message is accepted: everything returned here is attacker-controlled, hence the names.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from broker.core import canonical, jose
from broker.core.header import AGENCY_RE, Header, parse_header
from broker.errors import CasebridgeError

_UNREADABLE = (CasebridgeError, ValueError, KeyError, TypeError, IndexError, AttributeError)


def unverified_header_object(wire: bytes) -> Mapping[str, Any] | None:
    """The header object a message claims (not checked beyond being strict JSON), or None."""
    try:
        # The strict parser: no lone surrogates, duplicates or deep nesting get through to
        # what is logged and stored about a refused message.
        unverified_wire: Any = canonical.loads_strict(wire, what="message", max_depth=2)
        unverified_outer = unverified_wire["outer"]
        payload_b64 = unverified_outer.split(".")[1]
        unverified_payload = canonical.loads_strict(
            jose.b64url_decode(payload_b64, what="outer payload"), what="outer payload"
        )
        unverified = unverified_payload["header"]
    except _UNREADABLE:
        return None
    return unverified if isinstance(unverified, dict) else None


def unverified_header(wire: bytes) -> Header | None:
    """The header a message claims, strictly parsed, or None if it cannot be read at all."""
    unverified = unverified_header_object(wire)
    if unverified is None:
        return None
    try:
        return parse_header(unverified)
    except _UNREADABLE:
        return None


def unverified_sender(wire: bytes) -> tuple[str, str] | None:
    """(id, sender agency) a message claims, if legible, even when its header as a whole is
    not valid. For the log and the audit record only; never for a decision or to address
    evidence."""
    unverified = unverified_header_object(wire)
    if unverified is None:
        return None
    try:
        msg_id, sender = unverified["id"], unverified["sender"]["agency"]
        uuid.UUID(msg_id)
    except _UNREADABLE:
        return None
    if not isinstance(sender, str) or not AGENCY_RE.match(sender) or sender.startswith("tf."):
        return None
    return str(msg_id), sender
