"""The linter, under first-match semantics: unreachable, shadowed and ineffective rules."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from broker.core.policy import Finding, Policy, Severity, lint, parse_policy
from broker.core.policy.lint import categories_imply
from broker.core.policy.model import CategoryCondition
from broker.core.schemas import SchemaRegistry
from broker.loaders import load_policy_file, load_schema_registry

REPO = Path(__file__).resolve().parents[2]
EU = {"DE": True, "NL": True, "FR": True, "UA": False, "MD": False}


def policy(rules: str) -> Policy:
    text = "country: DE\nversion: 1\ngroups: {partners: [UA, MD]}\nrules:\n" + textwrap.indent(
        textwrap.dedent(rules), "  "
    )
    return parse_policy(text.encode("utf-8"))


def codes(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.rule_id, f.code) for f in findings]


class TestShadowing:
    """An earlier rule matching everything a later rule matches makes it dead."""

    def test_broader_deny_shadows_allow(self) -> None:
        """A later allow under an earlier, broader deny is reported with the shadowing rule."""
        findings = lint(
            policy(
                """\
                - {id: no-biometric, reason: r, direction: egress, decision: deny,
                   categories: {any: [biometric]}}
                - {id: eu-bio, reason: r, direction: egress, peer: eu, decision: allow,
                   categories: {all: [biometric, case_facts]}}
                """
            ),
            eu=EU,
        )
        assert codes(findings) == [("eu-bio", "shadowed")]
        assert "no-biometric" in findings[0].message
        assert findings[0].line == 7

    def test_same_decision_is_redundant(self) -> None:
        """A later rule deciding the same way under a broader earlier one is redundant."""
        findings = lint(
            policy(
                """\
                - {id: eu, reason: r, direction: egress, peer: eu, decision: allow}
                - {id: nl, reason: r, direction: egress, peer: NL, type: bulletin,
                   decision: allow}
                """
            ),
            eu=EU,
        )
        assert codes(findings) == [("nl", "redundant")]

    def test_narrower_first_is_fine(self) -> None:
        """Exceptions before the general rule are the intended layout: nothing reported."""
        findings = lint(
            policy(
                """\
                - {id: nl, reason: r, direction: egress, peer: NL, type: bulletin,
                   decision: deny}
                - {id: eu, reason: r, direction: egress, peer: eu, decision: allow}
                """
            ),
            eu=EU,
        )
        assert findings == []

    def test_eu_group_covers_listed_eu_countries_only_with_a_directory(self) -> None:
        """eu covers [NL, FR] when the directory says both are EU members."""
        rules = """\
            - {id: eu, reason: r, direction: egress, peer: eu, decision: deny}
            - {id: two, reason: r, direction: egress, peer: [NL, FR], decision: allow}
            """
        assert codes(lint(policy(rules), eu=EU)) == [("two", "shadowed")]
        assert lint(policy(rules)) == []

    def test_partial_overlap_is_not_shadowing(self) -> None:
        """Rules that only overlap are both live."""
        findings = lint(
            policy(
                """\
                - {id: h, reason: r, direction: egress, handling: [H0, H1], decision: deny}
                - {id: t, reason: r, direction: egress, handling: [H1, H2], decision: allow}
                """
            ),
            eu=EU,
        )
        assert findings == []

    def test_type_patterns(self) -> None:
        """request.* covers request.assistance; it does not cover response.*."""
        findings = lint(
            policy(
                """\
                - {id: req, reason: r, direction: egress, type: "request.*", decision: deny}
                - {id: ra, reason: r, direction: egress, type: request.assistance,
                   decision: allow}
                - {id: resp, reason: r, direction: egress, type: "response.*", decision: allow}
                """
            )
        )
        assert codes(findings) == [("ra", "shadowed")]

    def test_union_of_earlier_rules_is_not_detected(self) -> None:
        """Documented limit: coverage by two earlier rules together is not reported."""
        findings = lint(
            policy(
                """\
                - {id: eu, reason: r, direction: egress, peer: eu, decision: deny}
                - {id: non-eu, reason: r, direction: egress, peer: non_eu, decision: deny}
                - {id: known, reason: r, direction: egress, peer: [NL, UA], decision: allow}
                """
            ),
            eu=EU,
        )
        assert findings == []


class TestUnreachable:
    """Rules whose conditions no message can meet."""

    @pytest.mark.parametrize(
        ("conditions", "why"),
        [
            ("categories: {any: [health], none: [health]}", "contradict"),
            ("categories: {all: [health], only: [case_facts]}", "contradict"),
            ("peer: DE", "own country"),
            ("sender_agency: nl.police", "wrong side"),
            ("recipient_agency: de.lka", "wrong side"),
            ("peer: UA\n  recipient_agency: nl.police", "wrong side"),
        ],
    )
    def test_unreachable(self, conditions: str, why: str) -> None:
        """Each contradiction is reported as unreachable with the reason."""
        text = f"- id: x\n  reason: r\n  direction: egress\n  decision: allow\n  {conditions}\n"
        findings = lint(policy(text), eu=EU)
        assert codes(findings) == [("x", "unreachable")]
        assert why in findings[0].message

    def test_ingress_agencies(self) -> None:
        """At ingress the sender is foreign and the recipient local."""
        fine = "- {id: x, reason: r, direction: ingress, decision: allow, sender_agency: ua.npu}"
        dead = "- {id: x, reason: r, direction: ingress, decision: allow, sender_agency: de.lka}"
        assert lint(policy(fine)) == []
        assert codes(lint(policy(dead))) == [("x", "unreachable")]

    def test_direction_any_needs_one_possible_direction(self) -> None:
        """A direction-any rule naming a local recipient is reachable through ingress."""
        text = "- {id: x, reason: r, direction: any, decision: allow, recipient_agency: de.lka}"
        assert lint(policy(text)) == []


class TestOtherFindings:
    """Findings about what a rule does rather than whether it decides."""

    def test_red_only_rule_without_agency(self) -> None:
        """An allow limited to TLP:RED that names no agency can never allow anything."""
        text = "- {id: red, reason: r, direction: egress, tlp: RED, decision: allow}"
        assert codes(lint(policy(text))) == [("red", "red-h3-never")]

    def test_red_rule_with_wildcard_only(self) -> None:
        """A wildcard agency pattern does not name an agency."""
        text = (
            "- {id: red, reason: r, direction: egress, handling: H3, decision: allow,"
            " recipient_agency: 'nl.*'}"
        )
        assert codes(lint(policy(text))) == [("red", "red-h3-never")]

    def test_unverifiable_redaction_is_a_note(self) -> None:
        """Redactions without removes are flagged as a note, not a warning."""
        text = (
            "- {id: r, reason: r, direction: egress, decision: allow,"
            " redact: [{coarsen: /victims/*/date_of_birth, to: date_to_year}]}"
        )
        findings = lint(policy(text))
        assert codes(findings) == [("r", "unverifiable-redaction")]
        assert findings[0].severity is Severity.NOTE


@pytest.fixture(scope="module")
def catalogue() -> SchemaRegistry:
    """The repository's message catalogue."""
    return load_schema_registry()


class TestCatalogue:
    """Checks against the message catalogue."""

    def test_unknown_type(self, catalogue: SchemaRegistry) -> None:
        """A type pattern no catalogue type matches is reported."""
        text = "- {id: t, reason: r, direction: egress, type: [reqest.assistance], decision: deny}"
        assert codes(lint(policy(text), catalogue=catalogue)) == [("t", "unknown-type")]

    def test_unknown_path(self, catalogue: SchemaRegistry) -> None:
        """A redaction path no matching type has is reported."""
        text = (
            "- {id: p, reason: r, direction: egress, type: referral.victim, decision: allow,"
            " redact: [{drop: /victims/*/contact}], removes: [contact_details]}"
        )
        found = codes(lint(policy(text), catalogue=catalogue))
        assert ("p", "unknown-path") in found

    def test_removes_incomplete(self, catalogue: SchemaRegistry) -> None:
        """removes naming a category the redactions leave elsewhere is reported with where."""
        text = (
            "- {id: p, reason: r, direction: egress, type: request.assistance, decision: allow,"
            " redact: [{drop: /victims/*/contact}], removes: [contact_details]}"
        )
        findings = lint(policy(text), catalogue=catalogue)
        assert codes(findings) == [("p", "removes-incomplete")]
        assert "/suspects/*/contact" in findings[0].message

    def test_location_to_city_removes_precise_location(self, catalogue: SchemaRegistry) -> None:
        """Coarsening a location to its city counts as removing its precise members."""
        text = (
            "- {id: p, reason: r, direction: egress, type: referral.victim, decision: allow,"
            " redact: [{coarsen: /current_location, to: location_to_city},"
            " {coarsen: /victim/residence, to: location_to_city}],"
            " removes: [precise_location]}"
        )
        assert lint(policy(text), catalogue=catalogue) == []

    def test_catalogue_types_decide_containment(self, catalogue: SchemaRegistry) -> None:
        """With the catalogue, evidence.* covers every evidence type listed explicitly."""
        text = """\
            - {id: ev, reason: r, direction: egress, type: "evidence.*", decision: deny}
            - {id: two, reason: r, direction: egress, type: [evidence.read, evidence.delivered],
               decision: allow}
            """
        assert codes(lint(policy(text), catalogue=catalogue)) == [("two", "shadowed")]

    @pytest.mark.parametrize(
        "path", sorted((REPO / "docs" / "policies").glob("*.yaml")), ids=lambda p: p.name
    )
    def test_examples_have_no_warnings(self, path: Path, catalogue: SchemaRegistry) -> None:
        """The example policies lint without warnings (notes allowed)."""
        findings = lint(load_policy_file(path), eu=EU, catalogue=catalogue)
        assert [str(f) for f in findings if f.severity is Severity.WARNING] == []


class TestCategoryImplication:
    """Exact implication between category conditions."""

    @pytest.mark.parametrize(
        ("inner", "outer", "implied"),
        [
            ({"all_of": {"health"}}, {"any_of": {"health", "biometric"}}, True),
            ({"any_of": {"health"}}, {"all_of": {"health"}}, True),
            ({"any_of": {"health", "biometric"}}, {"all_of": {"health"}}, False),
            ({"only": {"case_facts"}}, {"none_of": {"health"}}, True),
            ({"none_of": {"health"}}, {"only": {"case_facts"}}, False),
            ({}, {"any_of": {"health"}}, False),
            ({"any_of": {"health"}, "none_of": {"health"}}, {"all_of": {"biometric"}}, True),
        ],
    )
    def test_cases(
        self, inner: dict[str, set[str]], outer: dict[str, set[str]], implied: bool
    ) -> None:
        """Each pair is decided exactly."""

        def cond(d: dict[str, set[str]]) -> CategoryCondition:
            return CategoryCondition(
                any_of=frozenset(d["any_of"]) if "any_of" in d else None,
                all_of=frozenset(d.get("all_of", ())),
                only=frozenset(d["only"]) if "only" in d else None,
                none_of=frozenset(d.get("none_of", ())),
            )

        assert categories_imply(cond(inner), cond(outer)) is implied
