"""Canonical JSON bytes for what we sign, and a strict parser for what we receive.

Output: UTF-8, object members sorted by key, no insignificant whitespace, no NaN/Infinity.
For the value domain Casebridge signs (strings, integers, booleans, null, arrays, objects)
this equals RFC 8785 (JCS). Input: duplicate member names, NaN/Infinity literals, invalid
UTF-8 and excessive nesting are refused with ``InvalidMessage(MALFORMED)``.
"""

from __future__ import annotations

import json
from typing import Any

from broker.errors import InvalidMessage, Reason

MAX_DEPTH = 64


def dumps(value: Any) -> bytes:
    """Serialise ``value`` canonically (sorted keys, compact, UTF-8)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, val in pairs:
        if key in result:
            raise InvalidMessage(Reason.MALFORMED, f"duplicate JSON member {key!r}")
        result[key] = val
    return result


def _no_constants(name: str) -> Any:
    raise InvalidMessage(Reason.MALFORMED, f"JSON constant {name} is not allowed")


def _depth(value: Any, limit: int) -> int:
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > limit:
            return level
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def loads_strict(data: bytes | str, *, what: str = "JSON") -> Any:
    """Parse untrusted JSON, refusing duplicates, NaN/Infinity, bad UTF-8 and deep nesting."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants
        )
    except InvalidMessage:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidMessage(Reason.MALFORMED, f"{what} is not valid JSON") from exc
    if _depth(value, MAX_DEPTH) > MAX_DEPTH:
        raise InvalidMessage(Reason.MALFORMED, f"{what} nests deeper than {MAX_DEPTH}")
    return value
