"""Header parsing: message ids are v4 RFC 4122 UUIDs; other UUID members any version; ids whole."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core.header import parse_header
from broker.errors import InvalidMessage, Reason

from . import forge

BASE = "6f1c2a52-4d0e-4c4b-9a51-1c1b8f0e2d77"


def with_nibbles(version: str, variant: str) -> str:
    """BASE with the version nibble (char 14) and the variant nibble (char 19) replaced."""
    return BASE[:14] + version + BASE[15:19] + variant + BASE[20:]


def header_json(**members: Any) -> dict[str, Any]:
    h = forge.header().to_json()
    h.update(members)
    return h


def refused(value: dict[str, Any]) -> str:
    with pytest.raises(InvalidMessage) as info:
        parse_header(value)
    assert info.value.reason == Reason.HEADER_INVALID
    return info.value.detail


@pytest.mark.parametrize("version", "0123456789abcdef")
@pytest.mark.parametrize("variant", "0123456789abcdef")
def test_only_version_4_rfc_4122_ids(version: str, variant: str) -> None:
    """An id is accepted exactly when its version nibble is 4 and its variant bits are 10."""
    msg_id = with_nibbles(version, variant)
    if version == "4" and variant in "89ab":
        assert parse_header(header_json(id=msg_id)).id == msg_id
    else:
        assert "header.id" in refused(header_json(id=msg_id))


@pytest.mark.parametrize("member", ["conversation", "in_reply_to", "derived_from"])
@pytest.mark.parametrize("version", "0123456789abcdef")
def test_other_uuid_members_take_any_version(member: str, version: str) -> None:
    """conversation, in_reply_to and derived_from accept any lower-case hyphenated UUID."""
    value = with_nibbles(version, "c")
    assert getattr(parse_header(header_json(**{member: value})), member) == value


@pytest.mark.parametrize("member", ["id", "conversation", "in_reply_to", "derived_from"])
@pytest.mark.parametrize(
    "value",
    [
        BASE.upper(),
        BASE.replace("-", ""),
        "{" + BASE + "}",
        "urn:uuid:" + BASE,
        BASE + "\n",
        " " + BASE,
        BASE[:-1] + "g",
        BASE[:-1] + "٣",  # an Arabic-Indic digit: int() would take it, the protocol does not
        7,
    ],
)
def test_uuid_members_must_be_lower_case_hyphenated(member: str, value: Any) -> None:
    """Upper case, no hyphens, braces, URNs, padding, non-hex or non-strings are refused."""
    assert f"header.{member}" in refused(header_json(**{member: value}))


def test_header_validate_refuses_a_v1_id() -> None:
    """Header.validate (used by seal) applies the same v4 rule."""
    with pytest.raises(InvalidMessage) as info:
        replace(forge.header(), id=str(uuid.uuid1())).validate()
    assert info.value.reason == Reason.HEADER_INVALID


@given(st.uuids(version=4))
def test_every_random_v4_id_is_accepted(value: uuid.UUID) -> None:
    """Whatever uuid4() draws is a valid message id."""
    assert parse_header(header_json(id=str(value))).id == str(value)
