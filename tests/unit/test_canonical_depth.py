"""The nesting bound of the strict parser (broker/core/canonical.py): refused beyond it,
accepted up to it, whatever the mix of objects and arrays."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core import canonical
from broker.errors import InvalidMessage, Reason


def _depth(value: Any) -> int:
    """Containers on the deepest path (a scalar: 0, ``[]``: 1, ``{"a": [1]}``: 2)."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value, "x"] if level % 2 else {"k": value, "b": True}
    return value


@pytest.mark.parametrize("max_depth", [1, 4, canonical.MAX_DEPTH])
def test_refused_one_level_beyond_the_bound_accepted_at_it(max_depth: int) -> None:
    assert canonical.loads_strict(json.dumps(_nested(max_depth)), max_depth=max_depth)
    with pytest.raises(InvalidMessage) as refused:
        canonical.loads_strict(json.dumps(_nested(max_depth + 1)), max_depth=max_depth)
    assert refused.value.reason is Reason.MALFORMED
    assert f"nests deeper than {max_depth}" in str(refused.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=60,
)


@settings(max_examples=400)
@given(json_values, st.integers(min_value=1, max_value=8))
def test_the_bound_is_the_depth_of_the_deepest_path(value: Any, max_depth: int) -> None:
    text = json.dumps(value)
    if _depth(value) > max_depth:
        with pytest.raises(InvalidMessage):
            canonical.loads_strict(text, max_depth=max_depth)
    else:
        assert canonical.loads_strict(text, max_depth=max_depth) == value
