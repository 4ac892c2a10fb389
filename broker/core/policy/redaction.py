"""Redaction of message bodies: drop fields or coarsen them, addressed by path patterns.

A path is a JSON pointer (RFC 6901, ``~0``/``~1`` escapes) in which the segment ``*`` stands for
every array item or every object member; any other segment names an object member (never an
array index: a policy cannot know which victim is the first). Redaction never mutates its
input and never raises on JSON values: a value a coarsener cannot interpret is dropped
(fail closed). Applying the same redactions twice gives the same body (idempotent).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from broker.core.policy.model import Coarsener, Redaction

WILDCARD: Final = "*"

# Members location_to_city removes: those schemas/common.v1.json annotates precise_location in
# location_fields. What remains (country, region, city, place type, role...) is a valid coarse
# location by design of that schema.
PRECISE_LOCATION_MEMBERS: Final = frozenset({"street", "postcode", "geo", "place_note"})
# Age bands of age_to_range: children in narrow bands (the law treats them differently),
# adults in decades; an exact age becomes the band's label.
AGE_BANDS: Final = (
    (0, 5, "0-5"),
    (6, 11, "6-11"),
    (12, 14, "12-14"),
    (15, 17, "15-17"),
    (18, 24, "18-24"),
    (25, 34, "25-34"),
    (35, 44, "35-44"),
    (45, 54, "45-54"),
    (55, 64, "55-64"),
    (65, 200, "65+"),
)
_BAND_RE: Final = re.compile(r"^(?:[0-9]{1,3}-[0-9]{1,3}|[0-9]{1,3}\+)\Z")

_DATE_RE: Final = re.compile(r"^(\d{4})(?:-(\d{2})(?:-\d{2}(?:T[0-9:.+\-Z]*)?)?)?\Z")


class _Drop:
    """Sentinel: the coarsener could not interpret the value, so it is removed."""


_DROP: Final = _Drop()


def parse_path(path: str) -> tuple[str, ...]:
    """Split a path into unescaped segments. Callers pass paths checked by the policy schema."""
    return tuple(seg.replace("~1", "/").replace("~0", "~") for seg in path.split("/")[1:])


def _date_to_year(value: object) -> object:
    if isinstance(value, str) and (m := _DATE_RE.match(value)):
        return m.group(1)
    return _DROP


def _date_to_month(value: object) -> object:
    if isinstance(value, str) and (m := _DATE_RE.match(value)):
        return m.group(1) if m.group(2) is None else f"{m.group(1)}-{m.group(2)}"
    return _DROP


def _location_to_city(value: object) -> object:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in PRECISE_LOCATION_MEMBERS}
    return _DROP


def _age_to_range(value: object) -> object:
    if isinstance(value, str) and _BAND_RE.match(value):
        return value  # already a band
    if isinstance(value, int) and not isinstance(value, bool):
        for low, high, label in AGE_BANDS:
            if low <= value <= high:
                return label
    return _DROP


COARSENERS: Final[Mapping[str, Callable[[object], object]]] = {
    Coarsener.DATE_TO_YEAR: _date_to_year,
    Coarsener.DATE_TO_MONTH: _date_to_month,
    Coarsener.LOCATION_TO_CITY: _location_to_city,
    Coarsener.AGE_TO_RANGE: _age_to_range,
}


def _children(node: object, segment: str) -> Iterator[str | int]:
    if isinstance(node, dict):
        if segment == WILDCARD:
            yield from list(node)
        elif segment in node:
            yield segment
    elif isinstance(node, list) and segment == WILDCARD:
        yield from range(len(node))


def targets(body: object, segments: Sequence[str]) -> list[tuple[Any, str | int]]:
    """Every (container, key) a path reaches in ``body``, in document order."""
    if not segments:
        return []
    found: list[tuple[Any, str | int]] = []
    stack: list[tuple[Any, int]] = [(body, 0)]
    while stack:
        node, depth = stack.pop()
        last = depth == len(segments) - 1
        children = list(_children(node, segments[depth]))
        for key in reversed(children):
            if last:
                found.append((node, key))
            else:
                stack.append((node[key], depth + 1))
    found.reverse()
    return found


def reaches(body: object, path: str) -> bool:
    """Whether ``path`` names at least one value present in ``body``."""
    return bool(targets(body, parse_path(path)))


def _remove(found: Iterable[tuple[Any, str | int]]) -> None:
    # Delete list items from the highest index down so earlier indices stay valid.
    items = sorted(
        found, key=lambda t: (id(t[0]), -t[1] if isinstance(t[1], int) else 0), reverse=False
    )
    for container, key in items:
        if isinstance(container, dict):
            container.pop(key, None)
        elif isinstance(container, list) and isinstance(key, int) and key < len(container):
            del container[key]


def _apply_one(body: object, redaction: Redaction) -> None:
    found = targets(body, parse_path(redaction.path))
    if redaction.op == "drop":
        _remove(found)
        return
    if redaction.op == "coarsen":
        coarsen = COARSENERS.get(redaction.to or "")
        doomed: list[tuple[Any, str | int]] = []
        for container, key in found:
            new = coarsen(container[key]) if coarsen is not None else _DROP
            if new is _DROP:
                doomed.append((container, key))
            else:
                container[key] = new
        _remove(doomed)
        return
    # An operation we do not know cannot be carried out safely: remove what it names.
    _remove(found)


def apply_redactions(body: Mapping[str, Any], redactions: Iterable[Redaction]) -> dict[str, Any]:
    """A redacted deep copy of ``body``: every coarsening first, then every drop."""
    out: dict[str, Any] = copy.deepcopy(dict(body))
    ordered = sorted(redactions, key=lambda r: r.op == "drop")
    for redaction in ordered:
        _apply_one(out, redaction)
    return out
