"""Differential fuzz: the gateway check and the recipient agree on every mutated message.

Mutations at every layer (raw bytes, base64url segments, wire/outer/JWE/inner JSON members,
header values, JWE structure) come from ``tests/unit/mutators.py``; a dishonest sender re-signs
and re-encrypts around each change so the checks behind the signatures are reached. Each
mutated message is accepted by both with the same header, refused by both with the same reason
code, or accepted by the gateway and refused by the recipient at a later step: never an
exception outside the error tree. ``bench/fuzz.py`` runs the same oracle on >= 100,000 messages.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import mutators
from .mutators import BASE, BODY, MUTATIONS, Parts, build, differential

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_unmutated_message_is_accepted_by_both() -> None:
    """The starting message passes both sides (so every refusal is due to its mutation)."""
    outcome = differential(mutators.WIRE)
    assert (outcome.gateway, outcome.recipient, outcome.finding) == ("accepted", "accepted", None)


@pytest.mark.parametrize("layer", sorted(MUTATIONS))
@FUZZ
@given(rng=st.randoms(use_true_random=False))
def test_mutations_are_refused_alike_or_accepted_alike(layer: str, rng: random.Random) -> None:
    """A mutated message: same header on both sides, or the same reason code, never a crash."""
    outcome = differential(MUTATIONS[layer](rng))
    assert outcome.finding is None, outcome


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("legal_basis", "\ud800"),
        ("purpose", "a\udfffb"),
        ("id", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),  # a v1 UUID
        ("recipients", ["nl.politie-nec", "nl.politie-nec"]),
        ("iat", True),
        ("exp", 2**64 + 1),
    ],
)
def test_hostile_signed_header_values_are_refused_alike(member: str, value: object) -> None:
    """Lone surrogates, a v1 UUID, duplicates, booleans and huge numbers in a consistently
    signed header are refused by the gateway and by the recipient with the same reason."""
    header = {**BASE.outer_header, member: value}
    wire, _, _, _ = build(
        Parts(outer_header=header, inner_header=header, body=BODY, salt=BASE.salt)
    )
    outcome = differential(wire)
    assert outcome.gateway != "accepted", outcome
    assert outcome.finding is None, outcome
