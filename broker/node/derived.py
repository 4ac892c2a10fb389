"""Derived data at the sending node: ``derived_from`` and the onward-transfer marking.

What it is for
    A draft may say that it is derived from a message this node received (``derived_from``)
    and carry its own onward-transfer marking (``onward_allowed``, ``onward_exclude``: the
    countries it must never reach, even onward). Before anything is sealed,
    :func:`refuse_excluded` applies the built-in rule ``builtin.onward-transfer``
    (:func:`broker.core.policy.safeguards.onward_refusal`) to every foreign recipient country:
    a source that did not allow onward transfer, or excluded that country, or that this node
    does not know (fail closed), refuses the send with the rule and the reason -- with or
    without a country policy loaded (the policy engine applies the same rule again).

What it must never do
    Let a derived message leave for a country its source's marking excludes, or guess a
    marking for a source it does not hold.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.core.header import Header, Onward
from broker.core.policy.model import Builtin
from broker.core.policy.safeguards import onward_refusal
from broker.errors import PolicyDenied

OnwardLookup = Callable[[str], Onward | None]


def refuse_excluded(header: Header, original_onward: OnwardLookup) -> None:
    """Raise ``PolicyDenied(builtin.onward-transfer)`` if ``header`` is derived from a
    message whose onward marking forbids one of its foreign recipient countries."""
    if header.derived_from is None:
        return
    original = original_onward(header.derived_from)
    for peer in header.countries:
        if peer == header.sender_country:
            continue  # onward transfer is about crossing a border again
        why = onward_refusal(original, peer, header.derived_from)
        if why is not None:
            raise PolicyDenied(Builtin.ONWARD_TRANSFER, why)
