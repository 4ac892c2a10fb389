"""Canonical JSON bytes for what we sign, and a strict parser for what we receive.

Output: UTF-8, object members sorted by key, no insignificant whitespace, no NaN/Infinity.
For the value domain Casebridge signs (strings, integers, booleans, null, arrays, objects)
this equals RFC 8785 (JCS). Input: duplicate member names, NaN/Infinity literals, invalid
UTF-8, lone surrogates (``"\\ud800"`` escapes that decode to no Unicode scalar value) and
excessive nesting are refused with ``InvalidMessage(MALFORMED)``. Neither function lets any
other exception out for a value it is handed: what cannot be canonical UTF-8 is MALFORMED.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from broker.errors import InvalidMessage, Reason

MAX_DEPTH = 64


# A JSON escape of a UTF-16 surrogate (U+D800-U+DFFF). Only text holding one can decode to a
# string with a lone surrogate (a valid pair decodes to one proper character).
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")


# One encoder for every canonical dump: ``json.dumps`` with options builds a new JSONEncoder
# per call. Stateless (a constant, like the decoder below), so safe to share.
_CANONICAL_ENCODER: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def dumps(value: Any) -> bytes:
    """Serialise ``value`` canonically (sorted keys, compact, UTF-8).

    A string that is not valid Unicode text (a lone surrogate), NaN/Infinity or a circular
    structure has no canonical form: ``InvalidMessage(MALFORMED)``.
    """
    try:
        return _CANONICAL_ENCODER.encode(value).encode("utf-8")
    except ValueError as exc:  # UnicodeEncodeError (lone surrogate), NaN, circular reference
        raise InvalidMessage(Reason.MALFORMED, "value has no canonical JSON form") from exc


def is_canonical(value: Any, raw: bytes) -> bool:
    """Whether ``raw`` is exactly the canonical form of ``value`` (its parse result)."""
    try:
        return dumps(value) == raw
    except InvalidMessage:
        return False


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
    """Whether ``value`` (a parse result: exact dicts and lists) nests below ``budget`` more
    containers. Exact type checks and plain loops: this walk runs on every received layer."""
    if budget < 0:
        return True
    for item in value.values() if isinstance(value, dict) else value:
        kind = type(item)
        if (kind is dict or kind is list) and _too_deep(item, budget - 1):
            return True
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
        if isinstance(data, bytes):
            text = data.decode("utf-8")
            escapes = b"\\u" in data and _SURROGATE_ESCAPE.search(data) is not None
        else:
            text = data
            # A str may hold a raw lone surrogate as well as an escaped one.
            escapes = not data.isascii() or (
                "\\u" in data and _SURROGATE_ESCAPE.search(data.encode("ascii")) is not None
            )
        value = _STRICT_DECODER.decode(text)
        if escapes:
            # Rare path (only text with surrogate escapes or, for str, non-ASCII): every decoded
            # string, key or value, must encode to UTF-8; a lone surrogate does not.
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except InvalidMessage:
        raise
    except UnicodeEncodeError as exc:
        raise InvalidMessage(Reason.MALFORMED, f"{what} holds a lone surrogate") from exc
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
