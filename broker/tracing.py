"""W3C Trace Context (``traceparent``) values carried in NATS headers, without I/O.

What it is for
    A node starts a trace when it submits a message (:func:`new_traceparent`); the border
    gateways copy the header onto every publication of that message; the recipient logs it and
    puts a child of it (:func:`child`) on the ``delivered``/``rejected`` evidence it sends back,
    so one trace id follows a message from sender to recipient and back. Format:
    https://www.w3.org/TR/trace-context/#traceparent-header (version ``00`` only).

What it must never do
    Trust a received value for anything but logs and propagation (it is unsigned, set by the
    sender), or put message content into it. Randomness comes in (``random``).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

TRACEPARENT: Final = "traceparent"
_VERSION: Final = "00"
_SAMPLED: Final = "01"
_RE: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16

Random = Callable[[int], bytes]


@dataclass(frozen=True, kw_only=True, slots=True)
class TraceParent:
    """A parsed ``traceparent``: trace id, parent (span) id and flags, all lower-case hex."""

    trace_id: str
    span_id: str
    flags: str = _SAMPLED

    def __str__(self) -> str:
        return f"{_VERSION}-{self.trace_id}-{self.span_id}-{self.flags}"


def _hex(random: Random, size: int, zero: str) -> str:
    while True:
        value = random(size).hex()
        if value != zero:  # all-zero ids are invalid (W3C trace context, section 3.2.2)
            return value


def new_traceparent(random: Random = secrets.token_bytes) -> str:
    """A fresh, sampled ``traceparent`` (a new trace)."""
    return str(
        TraceParent(trace_id=_hex(random, 16, _ZERO_TRACE), span_id=_hex(random, 8, _ZERO_SPAN))
    )


def parse(value: str | None) -> TraceParent | None:
    """The parsed header, or None when absent or not a valid version-00 ``traceparent``."""
    if not value:
        return None
    found = _RE.fullmatch(value.strip())
    if found is None or found[1] == _ZERO_TRACE or found[2] == _ZERO_SPAN:
        return None
    return TraceParent(trace_id=found[1], span_id=found[2], flags=found[3])


def child(value: str | None, random: Random = secrets.token_bytes) -> str:
    """A new span in the trace of ``value`` (a new trace when ``value`` is absent or invalid)."""
    parent = parse(value)
    if parent is None:
        return new_traceparent(random)
    return str(
        TraceParent(
            trace_id=parent.trace_id, span_id=_hex(random, 8, _ZERO_SPAN), flags=parent.flags
        )
    )


def from_headers(headers: Mapping[str, str] | None) -> str | None:
    """The valid ``traceparent`` among NATS headers (case-insensitive name), or None."""
    for name, value in (headers or {}).items():
        if name.lower() == TRACEPARENT:
            parent = parse(value)
            return None if parent is None else str(parent)
    return None
