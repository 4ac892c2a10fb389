"""The cooperation catalogue of issue 19: new types refuse bad bodies, the 4x4 evaluation is
shared, the honesty check covers the new types, and the example policies decide them.

The generic checks (metaschema, boundedness, both validators on every example, categories of
each example) run for the new types in tests/unit/test_schemas.py, which lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.core.header import Header
from broker.core.policy import (
    Builtin,
    Federation,
    Verdict,
    evaluate_egress,
    evaluate_ingress,
    evaluate_recipient,
    parse_policy,
)
from broker.loaders import load_policy_file
from tests.unit.test_schemas import (
    _DELETE,
    documents,
    edit,
    example,
    py_paths,
    registry,
    rs_paths,
    verdict,
)

REPO = Path(__file__).resolve().parents[2]
EVALUATION_REF = "https://schemas.casebridge.org/common/v1.json#/$defs/evaluation"
NEW_TYPES = (
    "brief.policy",
    "response.legal_remedy",
    "capacity.query",
    "capacity.update",
    "meeting.notice",
    "meeting.minutes",
    "feedback.survivor",
    "review.partnership",
    "lookup.query",
    "lookup.answer",
)

# Seeded bad bodies: (example, JSON pointer, new value or _DELETE, error path, keyword).
INVALID: list[tuple[str, str, Any, str, str]] = [
    ("brief.policy", "/brief_kind", "press_release", "/brief_kind", "enum"),
    ("brief.policy", "/summary", _DELETE, "", "required"),
    (
        "brief.policy",
        "/signatories/0/person",
        "A. Voorbeeld",
        "/signatories/0",
        "additionalProperties",
    ),
    ("response.legal_remedy", "/request_id", "not-a-uuid", "/request_id", "pattern"),
    ("response.legal_remedy", "/outcome", "declined", "", "required"),
    (
        "response.legal_remedy",
        "/steps/1/amount_awarded/amount",
        "8,400",
        "/steps/1/amount_awarded/amount",
        "pattern",
    ),
    ("response.legal_remedy", "/court_dates/0/at", "next tuesday", "/court_dates/0/at", "format"),
    ("capacity.query", "/services", [], "/services", "minItems"),
    ("capacity.query", "/places_needed", 0, "/places_needed", "minimum"),
    ("capacity.query", "/victim", {"given_names": "Ana"}, "", "additionalProperties"),
    ("capacity.update", "/offers/0/street", "Voorbeeldweg 3", "/offers/0", "additionalProperties"),
    ("capacity.update", "/offers/0/places_available", -1, "/offers/0/places_available", "minimum"),
    ("capacity.update", "/offers", _DELETE, "", "required"),
    ("meeting.notice", "/mode", "telepathy", "/mode", "enum"),
    ("meeting.notice", "/status", "cancelled", "", "required"),
    ("meeting.notice", "/invited/0", "Politie NEC", "/invited/0", "pattern"),
    ("meeting.minutes", "/action_items/0/owner", _DELETE, "/action_items/0", "required"),
    ("meeting.minutes", "/action_items/0/due", "2026-13-01", "/action_items/0/due", "format"),
    ("meeting.minutes", "/action_items/0/status", "forgotten", "/action_items/0/status", "enum"),
    ("feedback.survivor", "/consent", _DELETE, "", "required"),
    ("feedback.survivor", "/consent/given", False, "/consent/given", "const"),
    ("feedback.survivor", "/respondent/age", 27, "/respondent", "additionalProperties"),
    ("feedback.survivor", "/respondent/name", "Ana", "/respondent", "additionalProperties"),
    ("feedback.survivor", "/ratings/safety", 6, "/ratings/safety", "maximum"),
    ("review.partnership", "/partners", [], "/partners", "minItems"),
    ("review.partnership", "/areas/0/area", "everything", "/areas/0/area", "enum"),
    ("lookup.query", "/scheme", "sha256", "/scheme", "const"),
    ("lookup.query", "/probes/0/digest", "AB12345", "/probes/0/digest", "pattern"),
    ("lookup.query", "/probes/0/value", "AB1234567", "/probes/0", "additionalProperties"),
    ("lookup.answer", "/hits", _DELETE, "", "required"),
    (
        "lookup.answer.2",
        "/hits",
        [{"probe": 0, "reference": "X1", "agency": "de.lka-berlin"}],
        "/hits",
        "maxItems",
    ),
    ("lookup.answer.2", "/pad", "secret", "/pad", "pattern"),
]


def _type(name: str) -> str:
    return name.removesuffix(".2")


class TestSeededBadBodies:
    @pytest.mark.parametrize(("name", "path", "value", "where", "keyword"), INVALID)
    def test_refused_by_both_validators_at_the_path(
        self, name: str, path: str, value: Any, where: str, keyword: str
    ) -> None:
        """Each seeded fault is refused by both validators and the registry, at its path."""
        body = edit(example(name), path, value)
        assert where in py_paths(_type(name), body)
        assert where in rs_paths(_type(name), body)
        refusal = verdict(_type(name), body)
        assert refusal is not None
        assert any(e.path == where and e.validator == keyword for e in refusal.errors)

    def test_every_new_type_has_a_seeded_fault(self) -> None:
        """No new type goes without at least one refused bad body."""
        assert {_type(n) for n, *_ in INVALID} == set(NEW_TYPES)


# Locations that carry intelligence, each with the common 4x4 evaluation.
INTELLIGENCE = [
    ("information.spontaneous", ("properties", "items", "items", "properties", "evaluation")),
    ("response.assistance", ("properties", "results", "items", "properties", "evaluation")),
    ("alert.person", ("properties", "last_seen", "properties", "evaluation")),
    ("report.confidential", ("properties", "evaluation")),
    ("request.assistance", ("properties", "facts_evaluation")),
    ("case.update", ("properties", "events", "items", "properties", "evaluation")),
]


def _at(doc: Any, steps: tuple[str, ...]) -> Any:
    for step in steps:
        doc = doc[step]
    return doc


class TestEvaluation:
    @pytest.mark.parametrize(("message_type", "steps"), INTELLIGENCE)
    def test_intelligence_uses_the_common_definition(
        self, message_type: str, steps: tuple[str, ...]
    ) -> None:
        """Every information item that carries intelligence refers to common $defs/evaluation."""
        assert _at(documents()[f"{message_type}.v1.json"], steps)["$ref"] == EVALUATION_REF

    def test_no_second_definition_of_the_code(self) -> None:
        """The 4x4 code is defined once: no schema spells out source_reliability itself."""
        owners = [
            name
            for name, doc in documents().items()
            if '"source_reliability"' in repr(doc).replace("'", '"') and name != "common.v1.json"
        ]
        assert owners == []

    @pytest.mark.parametrize(
        ("message_type", "body_path", "evaluation", "ok"),
        [
            (
                "response.assistance",
                "/results/0/evaluation",
                {"source_reliability": "B", "information_assessment": 2},
                True,
            ),
            (
                "response.assistance",
                "/results/0/evaluation",
                {"source_reliability": "X", "information_assessment": 2},
                False,
            ),
            (
                "alert.person",
                "/last_seen/evaluation",
                {"source_reliability": "C", "information_assessment": 3},
                True,
            ),
            (
                "alert.person",
                "/last_seen/evaluation",
                {"source_reliability": "C", "information_assessment": 5},
                False,
            ),
            (
                "report.confidential",
                "/evaluation",
                {"source_reliability": "D", "information_assessment": 4},
                True,
            ),
            ("report.confidential", "/evaluation", {"source_reliability": "D"}, False),
            (
                "request.assistance",
                "/facts_evaluation",
                {"source_reliability": "A", "information_assessment": 1},
                True,
            ),
            (
                "case.update",
                "/events/0/evaluation",
                {"source_reliability": "A", "information_assessment": 1, "x": 1},
                False,
            ),
        ],
    )
    def test_evaluation_is_checked_where_it_is_carried(
        self, message_type: str, body_path: str, evaluation: dict[str, Any], ok: bool
    ) -> None:
        """A well-formed 4x4 evaluation is accepted on each item; a malformed one is refused."""
        body = edit(example(message_type), body_path, evaluation)
        refusal = verdict(message_type, body)
        assert (refusal is None) is ok
        if refusal is not None:
            assert all(e.path.startswith(body_path) for e in refusal.errors)


FEDERATION = Federation(
    eu={"DE": True, "NL": True, "UA": False},
    agency_kind={
        "de.lka-berlin": "law_enforcement",
        "de.fz-arbeit-berlin": "ngo",
        "nl.politie-nec": "law_enforcement",
        "nl.comensha": "ngo",
        "ua.npu-ctd": "law_enforcement",
        "ua.nadiya-centre": "ngo",
    }.get,
)
MESSAGE_ID = "33333333-3333-4333-8333-333333333333"


def header(message_type: str, sender: str, recipient: str, **over: Any) -> Header:
    return Header(
        fed="test",
        id=MESSAGE_ID,
        type=message_type,
        type_version=1,
        conversation=MESSAGE_ID,
        sender=sender,
        recipients=(recipient,),
        handling=over.get("handling", "H1"),
        tlp=over.get("tlp", "AMBER"),
        purpose=over.get("purpose", "coordination"),
        legal_basis="test",
        categories=tuple(sorted(over.get("categories", ()))),
        iat=1,
        exp=2,
    ).validate()


class TestHonesty:
    @pytest.mark.parametrize(
        "name",
        [
            "brief.policy",
            "feedback.survivor.2",
            "lookup.query",
            "meeting.minutes",
            "meeting.notice",
            "response.legal_remedy",
            "review.partnership",
        ],
    )
    def test_undeclared_categories_in_new_types_are_refused(self, name: str) -> None:
        """The recipient refuses a new-type body whose categories the header does not declare."""
        message_type = _type(name)
        body = example(name)
        present = registry().categories(message_type, 1, body)
        assert present  # the example carries something to hide
        policy = parse_policy(b"country: DE\nversion: 1\nrules: []\n")
        hidden = header(message_type, "nl.comensha", "de.fz-arbeit-berlin")
        outcome = evaluate_recipient(
            policy, hidden, body, federation=FEDERATION, schemas=registry()
        )
        assert outcome.decision.rule_id == Builtin.HONESTY
        assert all(c in outcome.decision.reason for c in present)
        declared = header(message_type, "nl.comensha", "de.fz-arbeit-berlin", categories=present)
        outcome = evaluate_recipient(
            policy, declared, body, federation=FEDERATION, schemas=registry()
        )
        assert outcome.decision.rule_id != Builtin.HONESTY


def example_policy(country: str) -> Any:
    return load_policy_file(REPO / "docs" / "policies" / f"{country.lower()}.yaml")


class TestExamplePolicies:
    @pytest.mark.parametrize("country", ["DE", "NL", "UA"])
    def test_cooperation_types_flow_without_personal_data(self, country: str) -> None:
        """Each example policy lets a brief out under its cooperation rule, case facts only."""
        sender = {"DE": "de.fz-arbeit-berlin", "NL": "nl.comensha", "UA": "ua.nadiya-centre"}
        recipient = "nl.comensha" if country != "NL" else "de.fz-arbeit-berlin"
        clean = header("brief.policy", sender[country], recipient, categories={"case_facts"})
        outcome = evaluate_egress(example_policy(country), clean, federation=FEDERATION)
        assert outcome.decision.verdict is Verdict.ALLOW
        assert outcome.decision.rule_id == f"{country.lower()}.out.cooperation"
        personal = header(
            "brief.policy", sender[country], recipient, categories={"case_facts", "victim_identity"}
        )
        outcome = evaluate_egress(example_policy(country), personal, federation=FEDERATION)
        assert outcome.decision.verdict is Verdict.DENY

    def test_survivor_feedback_only_for_evaluation(self) -> None:
        """Survivor feedback leaves Germany for evaluation, to a support organisation only."""
        ok = header("feedback.survivor", "de.fz-arbeit-berlin", "nl.comensha", purpose="evaluation")
        assert evaluate_egress(example_policy("DE"), ok, federation=FEDERATION).allowed
        police = header(
            "feedback.survivor", "de.fz-arbeit-berlin", "nl.politie-nec", purpose="evaluation"
        )
        assert not evaluate_egress(example_policy("DE"), police, federation=FEDERATION).allowed

    @pytest.mark.parametrize(
        ("country", "sender", "recipient"),
        [
            ("DE", "de.lka-berlin", "nl.politie-nec"),
            ("NL", "nl.politie-nec", "de.lka-berlin"),
            ("UA", "ua.npu-ctd", "de.lka-berlin"),
        ],
    )
    def test_lookups_between_police_for_investigations(
        self, country: str, sender: str, recipient: str
    ) -> None:
        """Lookups go police to police for an investigation; another purpose is refused."""
        cats = {"suspect_identity"}
        ok = header("lookup.query", sender, recipient, purpose="investigation", categories=cats)
        decision = evaluate_egress(example_policy(country), ok, federation=FEDERATION).decision
        assert decision.verdict is Verdict.ALLOW
        assert decision.rule_id == f"{country.lower()}.out.lookup"
        other = header("lookup.query", sender, recipient, purpose="prevention", categories=cats)
        assert not evaluate_egress(example_policy(country), other, federation=FEDERATION).allowed
        to_ngo = header(
            "lookup.query",
            sender,
            "nl.comensha" if country != "NL" else "de.fz-arbeit-berlin",
            purpose="investigation",
            categories=cats,
        )
        assert not evaluate_egress(example_policy(country), to_ngo, federation=FEDERATION).allowed

    def test_lookup_from_ukraine_enters_germany_and_the_netherlands(self) -> None:
        """A partner's police lookup is admitted by DE and NL ingress, to police only."""
        for country, recipient in (("DE", "de.lka-berlin"), ("NL", "nl.politie-nec")):
            query = header(
                "lookup.query",
                "ua.npu-ctd",
                recipient,
                purpose="investigation",
                categories={"suspect_identity"},
            )
            assert evaluate_ingress(example_policy(country), query, federation=FEDERATION).allowed
