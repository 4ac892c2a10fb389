"""Complementary suppression: a withheld statistics cell cannot be recovered from totals.

The attackers here are written independently of broker.core.statistics: a peeling attacker
(a line with one unknown gives it away, repeat), and for two-way tables the graph criterion
(a withheld cell is fixed by row and column totals exactly when it is a bridge of the
bipartite graph rows-columns whose edges are the withheld cells) with an explicit second
table that agrees with every published number but differs in the cell.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.policy.safeguards import suppress_small_cells
from broker.core.statistics import Table, determined_cells, suppress_complements, table_of

K = 11
Coord = tuple[str, ...]


def body_of(axes: list[list[str]], counts: Mapping[Coord, int | None]) -> dict[str, Any]:
    return {
        "dataset": "test.synthetic",
        "population": "presumed_victims",
        "period": {"start": "2025-01-01", "end": "2025-12-31"},
        "dimensions": [{"name": f"d{i}", "values": values} for i, values in enumerate(axes)],
        "cells": [
            {"key": list(c), "count": n} if n is not None else {"key": list(c), "count": None}
            for c, n in counts.items()
        ],
        "k_threshold": K,
    }


@st.composite
def tables(draw: st.DrawFn, dims: int) -> tuple[list[list[str]], dict[Coord, int]]:
    sizes = [draw(st.integers(2, 5 if dims == 2 else 3)) for _ in range(dims)]
    axes = [[f"v{a}{i}" for i in range(n)] for a, n in enumerate(sizes)]
    small = st.integers(1, K - 1)
    large = st.integers(K, 400)
    counts = {
        coord: draw(st.one_of(small, large, large, st.just(0)))
        for coord in itertools.product(*axes)
    }
    return axes, counts


def withheld(body: Mapping[str, Any]) -> set[Coord]:
    return {tuple(c["key"]) for c in body["cells"] if c["count"] is None}


def lines_of(axes: list[list[str]]) -> list[list[Coord]]:
    found = []
    for axis in range(len(axes)):
        others = [a for i, a in enumerate(axes) if i != axis]
        for rest in itertools.product(*others):
            found.append([(*rest[:axis], v, *rest[axis:]) for v in axes[axis]])
    return found


def peel(axes: list[list[str]], truth: Mapping[Coord, int], hidden: set[Coord]) -> set[Coord]:
    """Cells a subtracting attacker recovers from line totals (repeatedly, one unknown a line)."""
    unknown = set(hidden)
    recovered: set[Coord] = set()
    progress = True
    while progress:
        progress = False
        for line in lines_of(axes):
            missing = [c for c in line if c in unknown]
            if len(missing) == 1:
                unknown.discard(missing[0])
                recovered.add(missing[0])
                progress = True
    return recovered


def bridges(hidden: set[Coord]) -> set[Coord]:
    """Withheld cells of a two-way table that are bridges of the row-column graph."""
    found = set()
    for edge in hidden:
        rest = hidden - {edge}
        start, goal = ("r", edge[0]), ("c", edge[1])
        seen, todo = {start}, [start]
        while todo:
            side, value = todo.pop()
            for row, col in rest:
                if (side == "r" and row == value) or (side == "c" and col == value):
                    nxt = ("c", col) if side == "r" else ("r", row)
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
        if goal not in seen:
            found.add(edge)
    return found


def second_table(
    truth: Mapping[Coord, int], hidden: set[Coord], cell: Coord
) -> dict[Coord, Fraction] | None:
    """A two-way table with the same disclosed cells and totals in which ``cell`` differs."""
    rest = hidden - {cell}
    # A path from the cell's column back to its row through other withheld cells closes a cycle.
    start, goal = ("c", cell[1]), ("r", cell[0])
    parent: dict[tuple[str, str], tuple[tuple[str, str], Coord] | None] = {start: None}
    todo = [start]
    while todo and goal not in parent:
        side, value = todo.pop(0)
        for row, col in sorted(rest):
            if (side == "r" and row == value) or (side == "c" and col == value):
                nxt = ("c", col) if side == "r" else ("r", row)
                if nxt not in parent:
                    parent[nxt] = ((side, value), (row, col))
                    todo.append(nxt)
    if goal not in parent:
        return None
    cycle = [cell]
    node = goal
    while parent[node] is not None:
        previous, edge = parent[node]  # type: ignore[misc]
        cycle.append(edge)
        node = previous
    step = Fraction(1, 2) * min(Fraction(max(truth[c], 0)) for c in cycle)
    if step == 0:
        return None
    other = {c: Fraction(v) for c, v in truth.items()}
    for i, c in enumerate(cycle):
        other[c] += step if i % 2 == 0 else -step
    return other


def totals(axes: list[list[str]], values: Mapping[Coord, Any]) -> list[Any]:
    return [sum(values[c] for c in line) for line in lines_of(axes)]


class TestComplementarySuppression:
    @settings(max_examples=150, deadline=None)
    @given(table=tables(2))
    def test_two_way_tables_resist_recovery(
        self, table: tuple[list[list[str]], dict[Coord, int]]
    ) -> None:
        """Two-way tables: no withheld cell is recoverable; a second consistent table exists."""
        axes, truth = table
        body, _ = suppress_small_cells(body_of(axes, truth), K)
        hidden = withheld(body)
        assert all(not 0 < truth[c] < K for c in set(truth) - hidden)
        assert peel(axes, truth, hidden) == set()
        assert bridges(hidden) == set()
        for line in lines_of(axes):
            assert sum(1 for c in line if c in hidden) != 1
        for cell in hidden:
            if truth[cell] == 0:
                continue
            other = second_table(truth, hidden, cell)
            if other is None:  # only when a zero on the cycle pins the cell: must be a complement
                assert any(truth[c] == 0 for c in hidden)
                continue
            assert other[cell] != truth[cell]
            assert all(v >= 0 for v in other.values())
            assert all(other[c] == truth[c] for c in set(truth) - hidden)
            assert totals(axes, other) == totals(axes, truth)

    @settings(max_examples=60, deadline=None)
    @given(table=tables(3))
    def test_three_way_tables_resist_recovery(
        self, table: tuple[list[list[str]], dict[Coord, int]]
    ) -> None:
        """Three-way tables: no line with one withheld cell; no withheld cell is determined."""
        axes, truth = table
        body, _ = suppress_small_cells(body_of(axes, truth), K)
        hidden = withheld(body)
        assert all(not 0 < truth[c] < K for c in set(truth) - hidden)
        assert peel(axes, truth, hidden) == set()
        for line in lines_of(axes):
            assert sum(1 for c in line if c in hidden) != 1
        parsed = table_of(body)
        assert parsed is not None
        assert determined_cells(parsed) == set()

    @settings(max_examples=150, deadline=None)
    @given(
        hidden=st.sets(
            st.tuples(st.sampled_from("abcd"), st.sampled_from("wxyz")), min_size=1, max_size=12
        )
    )
    def test_elimination_agrees_with_the_bridge_criterion(self, hidden: set[Coord]) -> None:
        """On two-way patterns the exact attacker flags exactly the bridges."""
        counts: dict[Coord, int | None] = {
            (r, c): (None if (r, c) in hidden else 50) for r in "abcd" for c in "wxyz"
        }
        table = Table(axes=(tuple("abcd"), tuple("wxyz")), counts=counts)
        assert determined_cells(table) == bridges(hidden)

    def test_two_per_line_is_not_enough(self) -> None:
        """Two withheld cells per line can still expose a bridge cell; complements fix it."""
        axes = [["a", "b", "c", "d"], ["w", "x", "y", "z"]]
        truth = {(r, c): 40 for r in axes[0] for c in axes[1]}
        pattern = {("a", "w"), ("a", "x"), ("b", "w"), ("b", "x"), ("b", "y")}
        pattern |= {("c", "y"), ("c", "z"), ("d", "y"), ("d", "z")}
        for line in lines_of(axes):
            assert sum(1 for c in line if c in pattern) in (0, 2, 3)
        counts: dict[Coord, int | None] = {c: (None if c in pattern else 40) for c in truth}
        assert determined_cells(Table(axes=(tuple("abcd"), tuple("wxyz")), counts=counts)) == {
            ("b", "y")
        }
        body, added = suppress_complements(body_of(axes, counts))
        assert added >= 1
        parsed = table_of(body)
        assert parsed is not None
        assert determined_cells(parsed) == set()

    def test_demo_table_gets_complements(self) -> None:
        """The catalogue example gets complements marked suppressed; nothing else changes."""
        from tests.unit.test_schemas import example, registry

        body = example("statistics.aggregate")
        out, changed = suppress_small_cells(body, 15)
        registry().validate("statistics.aggregate", 1, out)
        assert changed > 0
        assert len(withheld(out)) > len(withheld(body))
        for before, after in zip(body["cells"], out["cells"], strict=True):
            assert after["key"] == before["key"]
            if after["count"] is None:
                assert after["suppressed"] is True
            else:
                assert after["count"] == before["count"]
        parsed = table_of(out)
        assert parsed is not None
        assert determined_cells(parsed) == set()
        again, more = suppress_small_cells(out, 15)
        assert (again, more) == (out, 0)

    def test_body_that_does_not_fit_its_dimensions_is_left_alone(self) -> None:
        """Keys shorter than the dimensions: no table, nothing changed (the schema judges)."""
        body = body_of([["a", "b"], ["x", "y"]], {("a", "x"): None, ("a", "y"): 30})
        body["cells"][1]["key"] = ["a"]
        assert suppress_complements(body) == (body, 0)

    def test_too_many_withheld_cells_withholds_everything(self) -> None:
        """Beyond the elimination bound the sender fails closed: every cell is withheld."""
        axes = [[f"r{i}" for i in range(30)], [f"c{j}" for j in range(30)]]
        truth: dict[Coord, int | None] = {
            (r, c): (3 if (i + j) % 2 else 500)
            for i, r in enumerate(axes[0])
            for j, c in enumerate(axes[1])
        }
        body, _ = suppress_small_cells(body_of(axes, truth), K)
        assert withheld(body) == set(truth)
