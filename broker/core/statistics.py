"""Complementary (secondary) suppression for ``statistics.aggregate`` tables.

What it is for
    Small-cell suppression (``builtin.small-cells``, :mod:`broker.core.policy.safeguards`)
    withholds counts from 1 to k-1. A withheld count can still be *derived*: a recipient who
    knows the row, column or other marginal totals (published in the same report, or in
    another message) subtracts the disclosed cells. This module withholds further cells
    ("complements") until no withheld cell is determined by the totals, and it holds the
    attacker the tests use to check that (:func:`determined_cells`).

The attacker's knowledge (conservative)
    The table has one axis per dimension; its cells are the body's ``cells`` (a missing
    combination counts as a known zero). The attacker knows every disclosed count and every
    *line total*: the sum along one axis with all other coordinates fixed, for every axis
    with at least two values. That implies every marginal table of lower order and the grand
    total. An axis with a single value gives no total (its "sum" is the cell itself).
    A withheld cell is *derivable* when its value is the same in every real-valued table
    that agrees with all this, ignoring non-negativity; :func:`determined_cells` decides it
    exactly with rational Gaussian elimination (no floating point). When every withheld
    count is positive, not derivable also means the feasible interval of each withheld cell,
    non-negativity included, is more than one value (the tests construct such a second
    table).

How complements are chosen
    Every line holding exactly one withheld cell gets a second one; then, while the
    elimination still finds a determined withheld cell, one more cell in one of its lines is
    withheld (or, when its lines are all withheld already, the nearest disclosed cell).
    Candidates are disclosed cells; the smallest positive count is preferred
    (least information lost), zeros only when nothing else is left; ties break on the key,
    so the result is deterministic. Complements are marked ``suppressed: true`` like the
    primary cells: a recipient must not be able to tell which cells were small.

What it must never do
    I/O of any kind, randomness, or trusting a body's shape: a body whose keys do not fit
    its dimensions is returned unchanged (the schema, not this module, judges validity).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

Coord = tuple[str, ...]
# Bounds the exact elimination. Beyond it every cell is withheld (fail closed): a table with
# hundreds of withheld cells is not a table anyone can use anyway.
MAX_UNKNOWNS: Final = 400


@dataclass(frozen=True, kw_only=True, slots=True)
class Table:
    """A statistics body seen as a table: cell counts (None = withheld) by coordinates."""

    axes: tuple[tuple[str, ...], ...]
    counts: Mapping[Coord, int | None]

    def lines(self) -> list[list[Coord]]:
        """Every line (one axis varies, the others fixed) over axes with two or more values."""
        found: list[list[Coord]] = []
        for axis, values in enumerate(self.axes):
            if len(values) < 2:
                continue
            groups: dict[Coord, list[Coord]] = {}
            for coord in self.counts:
                rest = coord[:axis] + coord[axis + 1 :]
                groups.setdefault(rest, []).append(coord)
            found.extend(sorted(g) for _, g in sorted(groups.items()) if len(g) >= 2)
        return found

    def unknown(self) -> set[Coord]:
        return {c for c, n in self.counts.items() if n is None}


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def table_of(body: Mapping[str, Any]) -> Table | None:
    """The table of a statistics body, or None if its keys do not fit its dimensions."""
    dimensions = body.get("dimensions")
    cells = body.get("cells")
    if not isinstance(dimensions, list) or not isinstance(cells, list) or not dimensions:
        return None
    width = len(dimensions)
    counts: dict[Coord, int | None] = {}
    for cell in cells:
        if not isinstance(cell, dict):
            return None
        key = cell.get("key")
        count = cell.get("count")
        if (
            not isinstance(key, list)
            or len(key) != width
            or not all(isinstance(k, str) for k in key)
            or tuple(key) in counts
        ):
            return None
        if cell.get("suppressed") is True or count is None:
            counts[tuple(key)] = None
        elif _is_count(count):
            counts[tuple(key)] = count
        else:
            return None
    axes = tuple(tuple(sorted({c[i] for c in counts})) for i in range(width))
    return Table(axes=axes, counts=counts)


def determined_cells(table: Table) -> set[Coord]:
    """Withheld cells whose value the line totals and disclosed cells fix (linear attacker).

    Unknowns are the withheld cells; each line gives one equation over the unknowns in it
    (the disclosed part moves to the known side). A cell is determined exactly when its unit
    vector lies in the row space of those equations: in reduced row echelon form, when its
    pivot row has no entry in a free column.
    """
    unknown = sorted(table.unknown())
    if not unknown:
        return set()
    if len(unknown) > MAX_UNKNOWNS:
        return set(unknown)  # not checked: treated as exposed (fail closed)
    index = {c: i for i, c in enumerate(unknown)}
    rows: list[dict[int, Fraction]] = []
    for line in table.lines():
        row = {index[c]: Fraction(1) for c in line if c in index}
        if row:
            rows.append(row)
    pivots: dict[int, dict[int, Fraction]] = {}  # pivot column -> its (reduced) row
    for equation in rows:
        row = dict(equation)
        for col, prow in pivots.items():
            factor = row.get(col)
            if factor:
                for c, v in prow.items():
                    nv = row.get(c, Fraction(0)) - factor * v
                    if nv:
                        row[c] = nv
                    else:
                        row.pop(c, None)
        if not row:
            continue
        col = min(row)
        lead = row[col]
        row = {c: v / lead for c, v in row.items()}
        for other in pivots.values():  # keep every earlier row reduced in the new column
            factor = other.get(col)
            if factor:
                for c, v in row.items():
                    nv = other.get(c, Fraction(0)) - factor * v
                    if nv:
                        other[c] = nv
                    else:
                        other.pop(c, None)
        pivots[col] = row
    return {unknown[col] for col, row in pivots.items() if set(row) == {col}}


def _lonely(table: Table, lines: Sequence[Sequence[Coord]]) -> list[Sequence[Coord]]:
    unknown = table.unknown()
    return [line for line in lines if sum(1 for c in line if c in unknown) == 1]


def _pick(table: Table, candidates: Iterable[Coord]) -> Coord | None:
    """The disclosed cell to withhold: smallest positive count, then zeros; ties by key."""
    best: tuple[int, int, Coord] | None = None
    for coord in candidates:
        count = table.counts.get(coord)
        if count is None:
            continue
        rank = (0 if count > 0 else 1, count, coord)
        if best is None or rank < best:
            best = rank
    return None if best is None else best[2]


def _nearest(table: Table, target: Coord) -> Coord | None:
    """The disclosed cell sharing most coordinates with ``target`` (then as :func:`_pick`)."""
    best: tuple[int, int, int, Coord] | None = None
    for coord, count in table.counts.items():
        if count is None:
            continue
        distance = sum(1 for a, b in zip(coord, target, strict=True) if a != b)
        rank = (distance, 0 if count > 0 else 1, count, coord)
        if best is None or rank < best:
            best = rank
    return None if best is None else best[3]


def complements(table: Table) -> tuple[Table, list[Coord]]:
    """The table with complements withheld, and the complements in the order chosen."""
    counts = dict(table.counts)
    current = Table(axes=table.axes, counts=counts)
    chosen: list[Coord] = []
    if not current.unknown():
        return current, chosen
    lines = current.lines()
    by_cell: dict[Coord, list[Sequence[Coord]]] = {}
    for line in lines:
        for coord in line:
            by_cell.setdefault(coord, []).append(line)
    while True:
        lonely = _lonely(current, lines)
        if lonely:
            pick = _pick(current, lonely[0])
            if pick is None:  # cannot happen: a lonely line has another, disclosed cell
                break
        elif len(current.unknown()) > MAX_UNKNOWNS:
            break
        else:
            exposed = sorted(determined_cells(current))
            if not exposed:
                break
            pick = None
            for coord in exposed:
                pick = _pick(current, (c for line in by_cell.get(coord, ()) for c in line))
                if pick is not None:
                    break
            if pick is None:  # its lines are all withheld: the nearest disclosed cell anywhere
                pick = _nearest(current, exposed[0])
            if pick is None:
                break
        counts[pick] = None
        chosen.append(pick)
        current = Table(axes=table.axes, counts=counts)
    return current, chosen


def suppress_complements(body: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """A copy of a statistics body with complementary cells withheld, and how many.

    Withheld complements get ``count: null`` and ``suppressed: true``. A body without
    withheld cells, or whose keys do not fit its dimensions, comes back unchanged.
    """
    out: dict[str, Any] = copy.deepcopy(dict(body))
    table = table_of(out)
    if table is None or not table.unknown():
        return out, 0
    if len(table.unknown()) > MAX_UNKNOWNS:
        chosen = sorted(c for c, n in table.counts.items() if n is not None)
    else:
        _, chosen = complements(table)
    targets = set(chosen)
    for cell in out["cells"]:
        if tuple(cell["key"]) in targets:
            cell["count"] = None
            cell["suppressed"] = True
    return out, len(chosen)
