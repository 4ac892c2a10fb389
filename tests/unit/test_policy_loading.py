"""Loading policy files: the restricted YAML reader, the JSON Schema, semantic checks, lines."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from broker.core.header import DATA_CATEGORIES, HANDLING_CODES, PURPOSES, TLP_MARKINGS
from broker.core.policy import Direction, Verdict, parse_policy
from broker.core.policy.loading import MAX_POLICY_BYTES
from broker.core.policy.schema import POLICY_SCHEMA
from broker.core.trust import AGENCY_KINDS
from broker.errors import ConfigError, PolicyError
from broker.loaders import load_policy_file

REPO = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO / "schemas" / "policy.v1.json"
EXAMPLES = sorted((REPO / "docs" / "policies").glob("*.yaml"))

GOOD = """\
country: DE
version: 3
groups:
  partners: [UA, NO]
rules:
  - id: de.one
    reason: A reason.
    direction: egress
    peer: [eu, partners, CH]
    type: ["request.*", bulletin]
    handling: [H0, H1]
    tlp: AMBER
    categories: {any: [health], none: [biometric]}
    sender_kind: law_enforcement
    recipient_agency: [ua.npu, "nl.*"]
    decision: allow
    redact:
      - drop: /victims/*/contact
      - coarsen: /victims/*/date_of_birth
        to: date_to_year
    removes: [contact_details]
"""


def refuse(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse_policy(textwrap.dedent(text).encode("utf-8"), source="p.yaml")
    return info.value


def lines(error: PolicyError) -> list[int | None]:
    return [p.line for p in error.problems]


class TestGoodPolicy:
    """A valid policy becomes typed rules."""

    def test_fields(self) -> None:
        """Every condition of the file reaches the rule, normalised to sets and patterns."""
        policy = parse_policy(GOOD.encode(), source="p.yaml")
        rule = policy.rules[0]
        assert (policy.country, policy.version, len(policy.rules)) == ("DE", 3, 1)
        assert rule.directions == {Direction.EGRESS}
        assert rule.decision is Verdict.ALLOW
        assert rule.peer.eu
        assert not rule.peer.non_eu
        # "NO" stays Norway: YAML 1.1 would have read it as false.
        assert rule.peer.countries == {"UA", "NO", "CH"}
        assert rule.tlp == frozenset({"AMBER"})
        assert rule.handling == frozenset({"H0", "H1"})
        assert rule.categories.any_of == frozenset({"health"})
        assert rule.categories.none_of == {"biometric"}
        assert rule.recipient_agency is not None
        assert rule.recipient_agency.exact == {"ua.npu"}
        assert [(r.op, r.path, r.to) for r in rule.redact] == [
            ("drop", "/victims/*/contact", None),
            ("coarsen", "/victims/*/date_of_birth", "date_to_year"),
        ]
        assert rule.removes == {"contact_details"}
        assert rule.line == 6

    def test_digest_names_the_exact_bytes(self) -> None:
        """The digest changes with any byte of the file, even a comment."""
        one = parse_policy(GOOD.encode())
        two = parse_policy(GOOD.encode() + b"# comment\n")
        assert one.digest != two.digest
        assert one.digest == parse_policy(GOOD.encode()).digest

    def test_direction_any_and_wildcard_type(self) -> None:
        """direction any covers both directions; type '*' means no type condition."""
        policy = parse_policy(
            b"country: DE\nversion: 1\nrules:\n"
            b"  - {id: a, reason: r, direction: any, type: '*', decision: deny}\n"
        )
        assert policy.rules[0].directions == set(Direction)
        assert policy.rules[0].types is None

    def test_empty_rule_list(self) -> None:
        """A policy may have no rules at all: then default deny refuses everything."""
        assert parse_policy(b"country: DE\nversion: 1\nrules: []\n").rules == ()

    @pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
    def test_examples_load(self, path: Path) -> None:
        """Every example policy under docs/policies loads."""
        policy = load_policy_file(path)
        assert policy.country == path.stem.upper()
        assert policy.rules


class TestYamlRefusals:
    """The YAML reader refuses doubtful constructs, naming the line."""

    def test_duplicate_key(self) -> None:
        """A key given twice is refused at the second occurrence."""
        error = refuse(
            """\
            country: DE
            version: 1
            rules:
              - id: a
                reason: r
                direction: egress
                decision: allow
                decision: deny
            """
        )
        assert lines(error) == [8]
        assert "duplicate key 'decision' (first at line 7)" in error.problems[0].message

    def test_alias(self) -> None:
        """Anchors and aliases are refused."""
        error = refuse("country: DE\nversion: 1\nrules: &r []\nother: *r\n")
        assert lines(error) == [3]
        assert "anchors and aliases" in error.problems[0].message

    def test_merge_key(self) -> None:
        """Merge keys are refused."""
        error = refuse("country: DE\nversion: 1\nrules:\n  - <<: {id: a}\n")
        assert "merge keys" in error.problems[0].message

    def test_custom_tag(self) -> None:
        """Explicit non-standard tags are refused."""
        error = refuse("country: !!python/name:os.system DE\nversion: 1\nrules: []\n")
        assert lines(error) == [1]

    def test_binary_tag(self) -> None:
        """A standard but non-JSON tag (binary) is refused."""
        error = refuse("country: !!binary REU=\nversion: 1\nrules: []\n")
        assert "tag" in error.problems[0].message

    def test_non_string_key(self) -> None:
        """Keys must be strings."""
        error = refuse("country: DE\nversion: 1\n1: x\nrules: []\n")
        assert lines(error) == [3]

    def test_syntax_error(self) -> None:
        """A YAML syntax error is reported with its line."""
        error = refuse("country: DE\nversion: 1\nrules: [\n  {id: a\n")
        assert error.problems[0].line is not None

    def test_two_documents(self) -> None:
        """A stream with two documents is refused."""
        error = refuse("country: DE\n---\ncountry: NL\n")
        assert error.problems[0].line is not None

    def test_empty(self) -> None:
        """An empty file is refused."""
        assert refuse("").problems[0].message == "empty document"

    def test_not_utf8(self) -> None:
        """Bytes that are not UTF-8 are refused with the line they are on."""
        with pytest.raises(PolicyError) as info:
            parse_policy(b"country: DE\nversion: 1\nrules: []\n# \xff\n")
        assert lines(info.value) == [4]

    def test_too_large(self) -> None:
        """Files over the size cap are refused before parsing."""
        with pytest.raises(PolicyError):
            parse_policy(b"#" * (MAX_POLICY_BYTES + 1))

    def test_dates_stay_strings(self) -> None:
        """A date-looking scalar is a string (not a datetime.date), so the schema sees text."""
        error = refuse("country: DE\nversion: 1\ndescription: 2025-01-01\nrules: 5\n")
        assert all("description" not in p.message for p in error.problems)


class TestSchemaRefusals:
    """Schema violations are reported one per problem, each with its line."""

    def test_many_problems_in_line_order(self) -> None:
        """Every violation is listed, sorted by line, with a readable message."""
        error = refuse(
            """\
            country: DE
            version: 1
            rules:
              - id: a
                reason: r
                direction: sideways
                decision: allow
              - id: builtin.b
                reason: r
                direction: egress
                tlp: PURPLE
                decision: allow
            """
        )
        assert lines(error) == [6, 8, 11]
        messages = [p.message for p in error.problems]
        assert messages[0] == 'rules/0/direction: "sideways" is not one of: egress, ingress, any'
        assert "reserved" in messages[1]
        assert "PURPLE" in messages[2]
        assert str(error).startswith("config_invalid: p.yaml:6: ")

    def test_deny_with_redact(self) -> None:
        """A deny rule cannot redact."""
        error = refuse(
            """\
            country: DE
            version: 1
            rules:
              - id: a
                reason: r
                direction: egress
                decision: deny
                redact: [{drop: /x}]
            """
        )
        assert error.problems[0].message == "rules/0: a deny rule cannot have redact or removes"
        assert lines(error) == [4]

    def test_removes_without_redact(self) -> None:
        """removes makes no sense without redactions."""
        error = refuse(
            """\
            country: DE
            version: 1
            rules:
              - {id: a, reason: r, direction: egress, decision: allow, removes: [health]}
            """
        )
        assert "removes needs redact" in error.problems[0].message

    def test_unknown_category(self) -> None:
        """Categories outside the federation's list are refused."""
        error = refuse(
            """\
            country: DE
            version: 1
            rules:
              - id: a
                reason: r
                direction: egress
                categories: {any: [horoscope]}
                decision: deny
            """
        )
        assert lines(error) == [7]
        assert "horoscope" in error.problems[0].message

    def test_unknown_coarsener(self) -> None:
        """Only the named coarseners exist."""
        error = refuse(
            """\
            country: DE
            version: 1
            rules:
              - id: a
                reason: r
                direction: egress
                decision: allow
                redact:
                  - coarsen: /x
                    to: hours
            """
        )
        assert lines(error) == [10]
        assert "hours" in error.problems[0].message

    @pytest.mark.parametrize(
        ("member", "value"),
        [
            ("peer", "europe"),
            ("type", "Request"),
            ("recipient_agency", "NL.police"),
            ("handling", "H4"),
            ("purpose", "curiosity"),
            ("sender_kind", "spy"),
        ],
    )
    def test_bad_condition_values(self, member: str, value: str) -> None:
        """Each condition refuses values outside its vocabulary, naming the member."""
        text = (
            "country: DE\nversion: 1\nrules:\n"
            f"  - {{id: a, reason: r, direction: egress, decision: deny, {member}: {value}}}\n"
        )
        error = refuse(text)
        assert lines(error) == [4]
        if member != "peer":
            assert member in error.problems[0].message

    def test_builtin_group_redefined(self) -> None:
        """eu, non_eu and any cannot be redefined as groups."""
        error = refuse("country: DE\nversion: 1\ngroups: {eu: [DE]}\nrules: []\n")
        assert "group names" in error.problems[0].message

    def test_small_cell_k_floor(self) -> None:
        """A policy cannot lower k below the federation floor of 11."""
        error = refuse("country: DE\nversion: 1\nsafeguards: {small_cell_k: 3}\nrules: []\n")
        assert "safeguards/small_cell_k" in error.problems[0].message

    def test_unknown_member(self) -> None:
        """Unknown top-level members are refused (no silently ignored typos)."""
        error = refuse("country: DE\nversion: 1\nrulez: []\nrules: []\n")
        assert "rulez" in error.problems[0].message


class TestSemanticRefusals:
    """Checks the schema cannot express, with lines."""

    def test_duplicate_rule_id(self) -> None:
        """Rule ids are unique; the duplicate's line and the first's are named."""
        error = refuse(
            """\
            country: DE
            version: 1
            rules:
              - {id: a, reason: r, direction: egress, decision: deny}
              - {id: a, reason: r, direction: egress, decision: deny}
            """
        )
        assert lines(error) == [5]
        assert "first at line 4" in error.problems[0].message

    def test_unknown_group(self) -> None:
        """A peer naming an undefined group is refused."""
        error = refuse(
            """\
            country: DE
            version: 1
            rules:
              - {id: a, reason: r, direction: egress, decision: deny, peer: nordics}
            """
        )
        assert error.problems[0].message == "unknown country group 'nordics'"
        assert lines(error) == [4]


class TestFiles:
    """File loading and the schema document itself."""

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is a PolicyError (a ConfigError) naming the file."""
        with pytest.raises(ConfigError) as info:
            load_policy_file(tmp_path / "absent.yaml")
        assert "absent.yaml" in str(info.value)

    def test_schema_held_as_data_is_the_published_file(self) -> None:
        """The core's copy of the policy schema is exactly schemas/policy.v1.json."""
        assert json.loads(SCHEMA_PATH.read_text(encoding="utf-8")) == POLICY_SCHEMA

    def test_schema_document(self) -> None:
        """The policy schema has its versioned $id and the federation's vocabularies."""
        schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
        defs = schema["$defs"]
        rule = defs["rule"]["properties"]
        assert schema["$id"] == "https://schemas.casebridge.org/policy/v1.json"
        assert defs["category"]["enum"] == list(DATA_CATEGORIES)
        assert rule["handling"]["oneOf"][0]["enum"] == list(HANDLING_CODES)
        assert rule["tlp"]["oneOf"][0]["enum"] == list(TLP_MARKINGS)
        assert rule["purpose"]["oneOf"][0]["enum"] == list(PURPOSES)
        assert rule["sender_kind"]["oneOf"][0]["enum"] == list(AGENCY_KINDS)
        assert rule["recipient_kind"]["oneOf"][1]["items"]["enum"] == list(AGENCY_KINDS)
