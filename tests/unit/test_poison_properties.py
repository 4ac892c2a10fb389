"""Property: every consuming loop's decision function answers anything with a typed outcome.

Node receive (``Node._receive``: stored, or refused and recorded), gateway egress and ingress
(``Border.submission`` / ``Border.inbound``: an ``Outcome``, refusals with a reason code) and
the audit checkpoint intake (``GatewayLedger.accept_checkpoint``: a checkpoint or a
``CasebridgeError``) are fed arbitrary bytes, arbitrary JSON, and near-valid messages: the real
wire layout, signed with a real agency key, with random outer-payload members and random header
values (control characters, huge integers, nested objects, lone surrogates). Anything else
than a typed outcome would be retried and quarantined by the loops; here it is a bug.
"""

from __future__ import annotations

import itertools
import json
import secrets
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.core import jose
from broker.core.envelope import INNER_TYP, JWE_TYP, OUTER_TYP
from broker.core.header import Header
from broker.errors import CasebridgeError, Reason
from broker.gateway.audit import GatewayLedger
from broker.gateway.border import Border, MemoryCrossings, Outcome
from broker.node.model import Receipt
from broker.node.service import Node
from broker.pki.dev import DevFederation

from .gateway_world import build, policies, sender
from .node_world import ManualClock, World

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REASONS = {r.value for r in Reason}

text = st.text(alphabet=st.characters(), max_size=40)  # lone surrogates included
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
# Strings the attack found and their relatives: lone surrogates, newlines, controls, huge.
SURROGATES = ["x\ud800", "\udfff"]
hostile_text = (
    st.sampled_from(
        [
            *SURROGATES,
            *("nl.politie\n", "de.lka-berlin\n", "a\u0000b", "\u2028", "é" * 3, ""),
            *(" de.lka-berlin", "x" * 5000),
        ]
    )
    | text
)
hostile_values = hostile_text | json_values | st.integers(min_value=2**63, max_value=2**200)


def b64(data: bytes) -> str:
    return jose.b64url_encode(data)


def dumps(value: Any) -> bytes:
    """Compact, sorted JSON with ASCII escapes (so lone surrogates travel as ``\\ud800``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class Setup:
    """The decision functions under test (one node, two borders, one ledger)."""

    def __init__(
        self,
        dev: DevFederation,
        node: Node,
        borders: dict[str, Border],
        ledger: GatewayLedger,
        sequence: Iterator[int],
    ) -> None:
        self.dev, self.node, self.borders = dev, node, borders
        self.ledger, self.sequence = ledger, sequence

    def __repr__(self) -> str:
        return "Setup()"

    def header(self, **changes: Any) -> dict[str, Any]:
        """The JSON form of a valid bulletin header de.lka-berlin -> nl.politie, changed."""
        t = int(NOW.timestamp())
        value = (
            Header(
                fed=self.dev.federation_id,
                id="5b0c3b62-1f7e-4d55-9d2e-2f6f0f3a9c11",
                type="bulletin",
                type_version=1,
                conversation="7c1e2d33-9a0b-4c6d-8e5f-0a1b2c3d4e5f",
                sender="de.lka-berlin",
                recipients=("nl.politie",),
                handling="H1",
                tlp="GREEN",
                purpose="prevention",
                legal_basis="Directive 2011/36/EU",
                categories=(),
                iat=t,
                exp=t + 86400,
            )
            .validate()
            .to_json()
        )
        value.update(changes)
        return dict(value)

    def forge(
        self, header: Any, *, body: Any = None, outer_extra: dict[str, Any] | None = None
    ) -> bytes:
        """A message on the real wire layout, signed by de.lka-berlin's real keys, encrypted
        to nl.politie, with whatever header and extra outer-payload members are given."""
        signer = self.dev.agency("de.lka-berlin")
        recipient = self.dev.agency("nl.politie")
        inner_payload = dumps(
            {"header": header, "body": body or {}, "salt": b64(secrets.token_bytes(16))}
        )
        inner = jose.sign_compact(
            inner_payload, signer.signing.key, kid=signer.signing_kid, typ=INNER_TYP
        ).encode()
        jwe = jose.encrypt_general(
            inner,
            [(recipient.agreement_kid, recipient.agreement.key.public_key())],
            typ=JWE_TYP,
        )
        outer_payload = {
            "header": header,
            "jwe_sha256": jose.sha256_b64url(jwe.encode()),
            "commitment": jose.sha256_b64url(inner),
            **(outer_extra or {}),
        }
        outer = jose.sign_compact(
            dumps(outer_payload), signer.signing.key, kid=signer.signing_kid, typ=OUTER_TYP
        )
        return dumps({"v": 1, "outer": outer, "jwe": jwe})


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    dev = build(NOW)
    with tempfile.TemporaryDirectory() as tmp:
        world = World(fed=dev, tmp=Path(tmp), clock=ManualClock(NOW))
        node = world.node("nl.politie")
        ledger = GatewayLedger(Path(tmp) / "gateway.sqlite", agency="de.gateway")
        found = policies()
        borders = {
            cc: Border(
                country=cc,
                identity=sender(dev, f"{cc.lower()}.gateway"),
                directory=lambda: dev.directory,
                policy=lambda cc=cc: found.get(cc),  # type: ignore[misc]
                crossings=MemoryCrossings(),
            )
            for cc in ("DE", "NL")
        }
        try:
            yield Setup(dev, node, borders, ledger, itertools.count(1))
        finally:
            ledger.close()
            world.close()


def assert_node_typed(setup: Setup, data: bytes) -> None:
    """The node's receive decision stores or refuses ``data``; it never raises."""
    receipt = Receipt(digest=jose.sha256_b64url(data), sequence=next(setup.sequence))
    setup.node._receive(data, receipt)  # raising anything here is the bug this test looks for
    outcome = setup.node.store.receipt_outcome(receipt)
    assert outcome in {"delivered", "evidence", "rejected"}


def assert_border_typed(setup: Setup, data: bytes) -> None:
    """Both borders answer ``data`` with an Outcome; a refusal names a reason code."""
    outcomes: list[Outcome] = [
        setup.borders["DE"].submission(data, subject_agency="de.lka-berlin", now=NOW),
        setup.borders["NL"].inbound(data, now=NOW),
    ]
    for outcome in outcomes:
        assert isinstance(outcome, Outcome)
        if outcome.refused is not None:
            assert outcome.refused in REASONS


def assert_checkpoint_typed(setup: Setup, data: bytes) -> None:
    """The checkpoint intake keeps a checkpoint or raises a CasebridgeError, nothing else."""
    try:
        setup.ledger.accept_checkpoint(
            data.decode("ascii", "replace"),
            subject_agency="de.lka-berlin",
            directory=setup.dev.directory,
            now=NOW,
        )
    except CasebridgeError:
        return


class TestArbitraryInput:
    @SETTINGS
    @given(data=st.binary(max_size=600))
    def test_bytes(self, setup: Setup, data: bytes) -> None:
        """Arbitrary bytes: typed outcome at the node, both borders and the checkpoint intake."""
        assert_node_typed(setup, data)
        assert_border_typed(setup, data)
        assert_checkpoint_typed(setup, data)

    @SETTINGS
    @given(value=json_values)
    def test_json_documents(self, setup: Setup, value: Any) -> None:
        """Arbitrary JSON documents (and wire-shaped objects holding them)."""
        for data in (dumps(value), dumps({"v": 1, "outer": value, "jwe": value})):
            assert_node_typed(setup, data)
            assert_border_typed(setup, data)
            assert_checkpoint_typed(setup, data)

    @SETTINGS
    @given(
        parts=st.lists(
            st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef-_.", max_size=30), max_size=5
        )
    )
    def test_checkpoint_shaped_tokens(self, setup: Setup, parts: list[str]) -> None:
        """Compact-JWS-shaped junk at the checkpoint intake."""
        assert_checkpoint_typed(setup, ".".join(parts).encode())


class TestNearValidMessages:
    @SETTINGS
    @given(
        member=st.sampled_from(
            [
                "id",
                "type",
                "type_version",
                "conversation",
                "in_reply_to",
                "sender",
                "recipients",
                "countries",
                "task_force",
                "handling",
                "tlp",
                "purpose",
                "legal_basis",
                "categories",
                "onward",
                "iat",
                "exp",
                "due",
            ]
        ),
        value=hostile_values,
    )
    def test_one_header_member_replaced(self, setup: Setup, member: str, value: Any) -> None:
        """A signed message whose header has one member replaced by a hostile value."""
        data = setup.forge(setup.header(**{member: value}))
        assert_node_typed(setup, data)
        assert_border_typed(setup, data)

    @SETTINGS
    @given(
        sender_agency=hostile_text,
        recipient=hostile_text,
        legal_basis=hostile_text,
    )
    def test_hostile_identifiers_and_text(
        self, setup: Setup, sender_agency: str, recipient: str, legal_basis: str
    ) -> None:
        """Sender, recipient and free-text header fields with newlines, controls, surrogates."""
        header = setup.header(
            sender={"agency": sender_agency, "country": "DE"},
            recipients=[recipient],
            legal_basis=legal_basis,
        )
        data = setup.forge(header)
        assert_node_typed(setup, data)
        assert_border_typed(setup, data)

    @SETTINGS
    @given(
        extra=st.dictionaries(text, json_values, max_size=3),
        header=json_values,
    )
    def test_random_outer_payload(self, setup: Setup, extra: dict[str, Any], header: Any) -> None:
        """Extra outer-payload members, and a header that is any JSON value at all."""
        for data in (
            setup.forge(setup.header(), outer_extra=extra),
            setup.forge(header, outer_extra=extra),
        ):
            assert_node_typed(setup, data)
            assert_border_typed(setup, data)

    @SETTINGS
    @given(body=json_values)
    def test_random_body_of_a_valid_header(self, setup: Setup, body: Any) -> None:
        """A valid signed header over any body (schema and honesty checks at the node)."""
        data = setup.forge(setup.header(id=str(uuid.uuid4())), body=body)
        assert_node_typed(setup, data)
        assert_border_typed(setup, data)


@pytest.mark.parametrize("member", ["legal_basis"])
@pytest.mark.parametrize("value", SURROGATES)
def test_lone_surrogates_in_a_signed_header(setup: Setup, member: str, value: str) -> None:
    """A signed header holding a lone surrogate escape is refused with a reason code."""
    data = setup.forge(setup.header(id=str(uuid.uuid4()), **{member: value}))
    assert_border_typed(setup, data)
    assert_node_typed(setup, data)
