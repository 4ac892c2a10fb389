"""Attachment limits in country policies: count, size, total and media types, with rule ids."""

from __future__ import annotations

import textwrap
import uuid
from dataclasses import replace

import pytest

from broker.core.attachments import Descriptor, chunk_count
from broker.core.header import Header
from broker.core.policy import Policy, evaluate_egress, evaluate_ingress, parse_policy
from broker.core.policy.attachments import DEFAULT_DENY
from broker.errors import PolicyError
from tests.unit import forge
from tests.unit.test_policy_cases import case_federation

FEDERATION = case_federation()
CHUNK = 262144
MIB = 1024 * 1024

RULES = """\
rules:
  - id: de.out.all
    reason: Everything may go out in this test.
    direction: any
    decision: allow
"""

LIMITS = """\
attachments:
  - id: de.att.no-files-to-ua
    reason: No files to UA under this test agreement.
    direction: egress
    peer: UA
    decision: deny
  - id: de.att.bulletins
    reason: Bulletins carry at most one image.
    direction: egress
    type: bulletin
    decision: allow
    max_count: 1
    media_types: ["image/*"]
  - id: de.att.default
    reason: Up to three documents or photos of 10 MiB, 20 MiB in all.
    direction: any
    decision: allow
    max_count: 3
    max_size: 10485760
    max_total: 20971520
    media_types: [application/pdf, image/jpeg, image/png]
"""


def _policy(attachments: str = LIMITS, country: str = "DE") -> Policy:
    return parse_policy(f"country: {country}\nversion: 1\n{RULES}{attachments}".encode())


def _file(media_type: str = "application/pdf", size: int = MIB) -> Descriptor:
    return Descriptor(
        id=str(uuid.uuid4()),
        media_type=media_type,
        size=size,
        chunk_size=CHUNK,
        chunks=chunk_count(size, CHUNK),
    )


def _header(
    *files: Descriptor, message_type: str = "request.assistance", to: str = "nl.politie-nec"
) -> Header:
    return replace(
        forge.header(recipients=(to,), message_type=message_type), attachments=tuple(files)
    )


def _egress(p: Policy, h: Header) -> tuple[bool, str, str]:
    d = evaluate_egress(p, h, federation=FEDERATION).decision
    return d.allowed, d.rule_id, d.reason


class TestEgress:
    def test_within_limits_is_allowed_by_the_main_rule(self) -> None:
        """Files within every limit leave the decision of the policy's rules unchanged."""
        assert _egress(_policy(), _header(_file(), _file("image/jpeg")))[:2] == (True, "de.out.all")

    def test_forbidden_media_type_is_denied_with_the_rule_and_why(self) -> None:
        """A declared type outside the list is refused by that entry, the reason naming the type."""
        allowed, rule, reason = _egress(_policy(), _header(_file("application/zip")))
        assert (allowed, rule) == (False, "de.att.default")
        assert "application/zip" in reason

    def test_file_too_large_is_denied(self) -> None:
        """A file over max_size is refused, the reason giving both sizes."""
        allowed, rule, reason = _egress(_policy(), _header(_file(size=10 * MIB + 1)))
        assert (allowed, rule) == (False, "de.att.default")
        assert str(10 * MIB + 1) in reason

    def test_too_many_files_and_too_many_bytes_are_denied(self) -> None:
        """Four files break max_count; three of 8 MiB break max_total."""
        four = _header(*(_file() for _ in range(4)))
        assert _egress(_policy(), four)[:2] == (False, "de.att.default")
        big = _header(*(_file(size=8 * MIB) for _ in range(3)))
        allowed, _, reason = _egress(_policy(), big)
        assert not allowed
        assert "in all" in reason

    def test_limits_per_message_type(self) -> None:
        """A bulletin may carry one image but not a PDF: the type-specific entry decides first."""
        assert _egress(_policy(), _header(_file("image/png"), message_type="bulletin"))[0]
        allowed, rule, _ = _egress(_policy(), _header(_file(), message_type="bulletin"))
        assert (allowed, rule) == (False, "de.att.bulletins")

    def test_limits_per_destination(self) -> None:
        """Files to UA are denied by the UA entry, though the same files may go to NL."""
        h = _header(_file(), to="ua.npu-ctd")
        assert _egress(_policy(), h)[:2] == (False, "de.att.no-files-to-ua")

    def test_policy_without_attachment_rules_lets_no_file_cross(self) -> None:
        """Fail closed: no attachments section means builtin.attachments-default-deny."""
        assert _egress(_policy(""), _header(_file()))[:2] == (False, DEFAULT_DENY)
        assert _egress(_policy(""), _header())[:2] == (True, "de.out.all")

    def test_a_denial_by_the_rules_stays_the_rules_denial(self) -> None:
        """Attachment limits never turn a denied message into an allowed one."""
        p = parse_policy(
            b"country: DE\nversion: 1\nrules: []\nattachments:\n"
            + textwrap.indent(LIMITS.split("\n", 1)[1], "").encode()
        )
        assert _egress(p, _header(_file()))[:2] == (False, "builtin.default-deny")


class TestIngress:
    def test_ingress_limits_apply_at_the_receiving_border(self) -> None:
        """The receiving country's entries apply to files entering it."""
        nl = _policy(
            "attachments:\n  - id: nl.att.pdf\n    reason: PDF only.\n    direction: ingress\n"
            "    decision: allow\n    media_types: [application/pdf]\n",
            country="NL",
        )
        ok = evaluate_ingress(nl, _header(_file()), federation=FEDERATION).decision
        assert ok.allowed
        bad = evaluate_ingress(nl, _header(_file("image/png")), federation=FEDERATION).decision
        assert (bad.allowed, bad.rule_id) == (False, "nl.att.pdf")


class TestLoading:
    def test_unknown_limit_is_refused_with_its_line(self) -> None:
        """An attachments entry with an unknown member is refused by the schema, with a line."""
        with pytest.raises(PolicyError) as info:
            _policy("attachments:\n  - id: x\n    reason: r\n    direction: any\n"
                    "    decision: allow\n    max_files: 2\n")  # fmt: skip
        assert "max_files" in str(info.value)

    def test_attachment_rule_ids_share_the_rule_namespace(self) -> None:
        """An attachments entry may not reuse a rule id (decisions must name one rule)."""
        with pytest.raises(PolicyError) as info:
            _policy("attachments:\n  - id: de.out.all\n    reason: r\n    direction: any\n"
                    "    decision: deny\n")  # fmt: skip
        assert "duplicate" in str(info.value)
