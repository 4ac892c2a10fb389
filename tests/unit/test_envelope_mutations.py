"""Property: any mutation of a sealed message is refused with a reason code, never a crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.core.envelope import open_message, verify_routing
from broker.core.replay import MemoryReplayStore
from broker.errors import CasebridgeError
from broker.loaders import load_schema_registry

from . import forge
from .forge import NOW

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
WORLD = forge.make_world()
REGISTRY = load_schema_registry()
BODY: dict[str, Any] = json.loads((EXAMPLES / "bulletin.json").read_text())
WIRE = forge.seal_for(WORLD, forge.header(recipients=("nl.politie-nec", "ua.npu-ctd")), BODY)
OUTER, JWE_TEXT = forge.split(WIRE)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def must_refuse(wire: bytes) -> None:
    """Both the gateway check and the recipient refuse, with an error from our tree."""
    assert wire != WIRE
    try:
        open_message(
            wire,
            recipient=WORLD["nl.politie-nec"].recipient,
            resolver=WORLD.resolver,
            replay=MemoryReplayStore(),
            validator=REGISTRY,
            now=NOW,
        )
    except CasebridgeError as exc:
        reason = exc.reason.value
    else:
        raise AssertionError("mutated message was accepted")
    assert reason


def test_unmutated_message_opens() -> None:
    """The message the mutations start from is itself valid (so refusals mean something)."""
    opened = open_message(
        WIRE,
        recipient=WORLD["ua.npu-ctd"].recipient,
        resolver=WORLD.resolver,
        replay=MemoryReplayStore(),
        validator=REGISTRY,
        now=NOW,
    )
    assert opened.body == BODY


@SETTINGS
@given(st.data())
def test_byte_flips_are_refused(data: st.DataObject) -> None:
    """Flipping any bits of any byte of the wire is refused."""
    pos = data.draw(st.integers(0, len(WIRE) - 1))
    mask = data.draw(st.integers(1, 255))
    mutated = bytearray(WIRE)
    mutated[pos] ^= mask
    must_refuse(bytes(mutated))


@SETTINGS
@given(st.data())
def test_insertions_and_deletions_are_refused(data: st.DataObject) -> None:
    """Inserting or deleting bytes anywhere is refused."""
    pos = data.draw(st.integers(0, len(WIRE)))
    if data.draw(st.booleans()):
        mutated = WIRE[:pos] + data.draw(st.binary(min_size=1, max_size=8)) + WIRE[pos:]
    else:
        end = data.draw(st.integers(pos, min(len(WIRE), pos + 16)))
        mutated = WIRE[:pos] + WIRE[end:]
    if mutated != WIRE:
        must_refuse(mutated)


@SETTINGS
@given(st.data())
def test_character_edits_inside_the_layers_are_refused(data: st.DataObject) -> None:
    """Replacing a character of the outer JWS or of the JWE text is refused."""
    which = data.draw(st.sampled_from(["outer", "jwe"]))
    text = OUTER if which == "outer" else JWE_TEXT
    pos = data.draw(st.integers(0, len(text) - 1))
    char = data.draw(st.characters(codec="utf-8"))
    edited = text[:pos] + char + text[pos + 1 :]
    if edited == text:
        return
    outer, jwe_text = (edited, JWE_TEXT) if which == "outer" else (OUTER, edited)
    must_refuse(forge.assemble(outer, jwe_text))


@SETTINGS
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash_the_gateway(raw: bytes) -> None:
    """verify_routing on arbitrary bytes raises only errors from the Casebridge tree."""
    try:
        verify_routing(raw, resolver=WORLD.resolver, now=NOW)
    except CasebridgeError:
        pass
    else:
        raise AssertionError("random bytes were accepted")
