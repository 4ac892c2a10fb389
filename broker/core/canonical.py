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
    result = dict(pairs)
    if len(result) != len(pairs):  # C-speed check; find the name only on the error path
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidMessage(Reason.MALFORMED, f"duplicate JSON member {key!r}")
            seen.add(key)
    return result


def _no_constants(name: str) -> Any:
    raise InvalidMessage(Reason.MALFORMED, f"JSON constant {name} is not allowed")


# One decoder for every strict parse (json.loads with hooks builds a new one per call).
_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def _too_deep(value: Any, budget: int) -> bool:
    if budget < 0:
        return True
    if isinstance(value, dict):
        return any(_too_deep(v, budget - 1) for v in value.values() if isinstance(v, dict | list))
    if isinstance(value, list):
        return any(_too_deep(v, budget - 1) for v in value if isinstance(v, dict | list))
    return False


def _brackets(data: bytes | str) -> int:
    if isinstance(data, bytes):
        return data.count(b"[") + data.count(b"{")
    return data.count("[") + data.count("{")


def loads_strict(
    data: bytes | str, *, what: str = "JSON", max_depth: int | None = MAX_DEPTH
) -> Any:
    """Parse untrusted JSON, refusing duplicates, NaN/Infinity, bad UTF-8 and deep nesting.

    ``max_depth=None`` skips the nesting walk; only for documents whose exact structure the
    caller checks member by member right after (the walk is the costliest part on the hot path).
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = _STRICT_DECODER.decode(text)
    except InvalidMessage:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidMessage(Reason.MALFORMED, f"{what} is not valid JSON") from exc
    if (
        max_depth is not None
        and isinstance(value, dict | list)
        # Depth can't exceed the number of opening brackets: skip the walk when few (C-speed).
        and _brackets(data) >= max_depth
        and _too_deep(value, max_depth - 1)
    ):
        raise InvalidMessage(Reason.MALFORMED, f"{what} nests deeper than {max_depth}")
    return value
