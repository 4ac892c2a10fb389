"""Every identifier pattern matches the whole string, and what it accepts is a safe NATS token.

``$`` in a Python regex also matches before a final newline, so ``"nl.politie\\n"`` used to pass
the agency pattern and then stall a gateway at publish (a newline is not allowed in a NATS
subject). Each pattern now ends in ``\\Z``; these tests hold every pattern of the code base to it.
"""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import metrics, tracing
from broker.core import directory, header, ids, schemas
from broker.core import wire as subjects
from broker.federation import spec
from broker.pki import issuing

# (name, pattern, a string it accepts). Every identifier or id pattern in broker/.
PATTERNS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("header.COUNTRY_RE", header.COUNTRY_RE, "NL"),
    ("header.AGENCY_RE", header.AGENCY_RE, "nl.politie-nec"),
    ("header.TASK_FORCE_RE", header.TASK_FORCE_RE, "tf.balkan-route"),
    ("header.TYPE_RE", header.TYPE_RE, "request.assistance"),
    ("header.FEDERATION_RE", header.FEDERATION_RE, "eu-thb"),
    ("header.DATE_RE", header.DATE_RE, "2026-11-28"),
    ("ids.UUID_RE", ids.UUID_RE, "6f1c2a52-4d0e-1c4b-9a51-1c1b8f0e2d77"),
    ("ids.UUID4_RE", ids.UUID4_RE, "6f1c2a52-4d0e-4c4b-9a51-1c1b8f0e2d77"),
    ("directory._TIME_RE", directory._TIME_RE, "2026-11-28T12:00:00Z"),
    ("issuing.DNS_LABEL", issuing.DNS_LABEL, "hub-1"),
    ("schemas._FILE_RE", schemas._FILE_RE, "request.assistance.v1.json"),
    ("schemas._MEMBER_NAME_RE", schemas._MEMBER_NAME_RE, "victims"),
    ("schemas._ARRAY_TOKEN_RE", schemas._ARRAY_TOKEN_RE, "12"),
    ("metrics._COUNTRY_RE", metrics._COUNTRY_RE, "UA"),
    ("metrics._TYPE_RE", metrics._TYPE_RE, "evidence.delivered"),
    ("tracing._RE", tracing._RE, f"00-{'a' * 32}-{'b' * 16}-01"),
    ("spec._HOST_RE", spec._HOST_RE, "hub.casebridge.test"),
)
IDS = [name for name, _, _ in PATTERNS]
SUFFIXES = ("\n", "\r", "\x00", " ", "\t", "\r\n")


def is_subject_token(token: str) -> bool:
    """A NATS subject token: non-empty printable ASCII, no whitespace, no '.', '*' or '>'."""
    return (
        bool(token)
        and token.isascii()
        and token.isprintable()
        and not any(c.isspace() for c in token)
        and not any(c in ".*>" for c in token)
    )


def is_subject(subject: str) -> bool:
    """A NATS subject: dot-separated valid tokens (no empty token, no wildcard)."""
    return all(is_subject_token(t) for t in subject.split("."))


@pytest.mark.parametrize(("name", "pattern", "example"), PATTERNS, ids=IDS)
def test_pattern_is_anchored_at_the_end_of_the_string(
    name: str, pattern: re.Pattern[str], example: str
) -> None:
    """Each pattern accepts its example but neither match nor fullmatch accepts it with a
    trailing newline, carriage return, NUL, space or tab."""
    assert pattern.fullmatch(example), name
    for suffix in SUFFIXES:
        assert pattern.fullmatch(example + suffix) is None, (name, suffix)
        assert pattern.match(example + suffix) is None, (name, suffix)
        assert pattern.fullmatch(suffix + example) is None, (name, suffix)


@pytest.mark.parametrize(("name", "pattern", "example"), PATTERNS, ids=IDS)
@given(data=st.data())
def test_accepted_strings_are_safe_subject_tokens(
    name: str, pattern: re.Pattern[str], example: str, data: st.DataObject
) -> None:
    """Any string a pattern accepts is ASCII without whitespace, control characters, '*' or
    '>', and its dot-separated parts are non-empty: usable as NATS subject token(s)."""
    del example
    value = data.draw(st.from_regex(pattern, fullmatch=True), label=name)
    assert is_subject(value), (name, value)


@given(st.from_regex(header.AGENCY_RE, fullmatch=True))
def test_agency_subjects_have_exactly_the_expected_tokens(agency_id: str) -> None:
    """An accepted agency id adds exactly two tokens to the subjects it is used in."""
    for subject, base in (
        (subjects.submit_subject(agency_id), 2),
        (subjects.deliver_subject(agency_id), 2),
        (subjects.deliver_subject(agency_id, evidence=True), 3),
        (subjects.audit_subject(agency_id), 2),
        (subjects.inbox_prefix(agency_id), 1),
    ):
        assert is_subject(subject), subject
        assert len(subject.split(".")) == base + 2, subject


@given(st.from_regex(header.COUNTRY_RE, fullmatch=True))
def test_country_subjects_and_streams_are_valid(code: str) -> None:
    """An accepted country code yields valid subjects, domains and stream names."""
    peer = "UA" if code != "UA" else "NL"
    assert is_subject(subjects.out_subject(code, peer))
    assert is_subject(subjects.cross_delivery_prefix(code, peer))
    assert is_subject_token(subjects.domain(code))
    assert is_subject_token(subjects.out_stream(code))


@given(st.text(max_size=20))
def test_uuid_checks_accept_exactly_lower_case_hyphenated_forms(text: str) -> None:
    """is_uuid/is_uuid4 agree with the uuid module on arbitrary text (canonical form only)."""
    try:
        canonical = str(uuid.UUID(text))
    except ValueError:
        canonical = None
    assert ids.is_uuid(text) == (canonical == text)
    assert ids.is_uuid4(text) == (
        canonical == text
        and uuid.UUID(text).version == 4
        and uuid.UUID(text).variant == uuid.RFC_4122
    )


@given(st.uuids())
def test_uuid_checks_on_real_uuids(value: uuid.UUID) -> None:
    """Any UUID's canonical text is a UUID; it is a message id only if version 4, RFC 4122."""
    text = str(value)
    assert ids.is_uuid(text)
    assert ids.is_uuid4(text) == (value.version == 4 and value.variant == uuid.RFC_4122)
    assert not ids.is_uuid(text.upper()) or text == text.upper()
    assert not ids.is_uuid(text + "\n")


@given(st.uuids(), st.text(max_size=64))
def test_derived_ids_are_deterministic_version_4(namespace: uuid.UUID, name: str) -> None:
    """derived_uuid4 gives the same v4-shaped id for the same inputs, another for another name."""
    first = ids.derived_uuid4(namespace, name)
    assert first == ids.derived_uuid4(namespace, name)
    assert ids.is_uuid4(first)
    assert first != ids.derived_uuid4(namespace, name + "x")


def test_derived_id_is_the_documented_construction() -> None:
    """derived_uuid4 = first 16 bytes of SHA-256(namespace || name), version 4, RFC 4122 variant
    (docs/protocol.md): a fixed input gives the value computed by hand."""
    import hashlib

    ns = uuid.UUID("6f1c2a52-4d0e-4c4b-9a51-1c1b8f0e2d77")
    raw = bytearray(hashlib.sha256(ns.bytes + b"subject|relay_accepted|de.gateway|").digest()[:16])
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    assert ids.derived_uuid4(ns, "subject|relay_accepted|de.gateway|") == str(
        uuid.UUID(bytes=bytes(raw))
    )
