"""Hypothesis properties of the policy engine (modest example counts: shared 2-core machine).

Rules and units are generated over small domains so that matches are frequent: a few
countries (two EU, two non-EU, one unknown), agencies, types, kinds and categories.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.header import Header
from broker.core.policy import (
    Decision,
    Direction,
    Federation,
    Point,
    Policy,
    Redaction,
    Rule,
    Unit,
    Verdict,
    apply_redactions,
    decide_unit,
    evaluate_egress,
    evaluate_ingress,
    preflight,
)
from broker.core.policy.lint import categories_imply, covers
from broker.core.policy.model import CategoryCondition, PatternSet, PeerSpec
from broker.core.policy.redaction import parse_path, reaches, targets

SETTINGS = settings(max_examples=100, deadline=None)

OWN = "DE"
EU = {"DE": True, "NL": True, "FR": True, "UA": False, "MD": False}
COUNTRIES = ("NL", "FR", "UA", "MD", "ZZ")
AGENCIES = {
    "de.lka": "law_enforcement",
    "de.ngo": "ngo",
    "nl.police": "law_enforcement",
    "nl.ngo": "ngo",
    "fr.police": "law_enforcement",
    "ua.npu": "law_enforcement",
    "ua.ngo": "shelter",
    "md.police": "prosecutor",
    "zz.police": "law_enforcement",
}
FOREIGN = tuple(a for a in AGENCIES if not a.startswith("de."))
KINDS = ("law_enforcement", "prosecutor", "ngo", "shelter")
TYPES = ("request.assistance", "request.legal_remedy", "referral.victim", "case.update", "bulletin")
TYPE_PATTERNS = ("request.*", "request.assistance", "referral.victim", "*.update", "bulletin", "*")
CATEGORIES = ("case_facts", "victim_identity", "contact_details", "health", "biometric")
HANDLING = ("H0", "H1", "H2", "H3")
TLP = ("CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED")
PURPOSES = ("investigation", "victim_support", "statistics")
FEDERATION = Federation(eu=EU, agency_kind=AGENCIES.get)


def subset(values: tuple[str, ...]) -> st.SearchStrategy[frozenset[str]]:
    return st.frozensets(st.sampled_from(values), min_size=1, max_size=len(values))


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


category_conditions = st.builds(
    CategoryCondition,
    any_of=maybe(subset(CATEGORIES)),
    all_of=st.frozensets(st.sampled_from(CATEGORIES), max_size=2),
    only=maybe(subset(CATEGORIES)),
    none_of=st.frozensets(st.sampled_from(CATEGORIES), max_size=2),
)
peers = st.one_of(
    st.just(PeerSpec()),
    st.builds(
        PeerSpec,
        any=st.just(False),
        eu=st.booleans(),
        non_eu=st.booleans(),
        countries=st.frozensets(st.sampled_from(COUNTRIES), max_size=3),
    ),
)
patterns = st.lists(st.sampled_from(TYPE_PATTERNS), min_size=1, max_size=3, unique=True).map(
    lambda p: PatternSet(patterns=tuple(p))
)
agency_patterns = st.lists(
    st.sampled_from((*AGENCIES, "ua.*", "nl.*")), min_size=1, max_size=3, unique=True
).map(lambda p: PatternSet(patterns=tuple(p)))
DROP_PATHS = ("/contact_details", "/health", "/victims/*/contact_details", "/biometric")


@st.composite
def rules(draw: st.DrawFn, decision: Verdict | None = None) -> Rule:
    verdict = decision or draw(st.sampled_from(Verdict))
    redact: tuple[Redaction, ...] = ()
    removes: frozenset[str] = frozenset()
    if verdict is Verdict.ALLOW and draw(st.booleans()):
        paths = draw(st.lists(st.sampled_from(DROP_PATHS), min_size=1, max_size=2, unique=True))
        redact = tuple(Redaction(op="drop", path=p, rule_id="r") for p in paths)
        removes = frozenset(p.rsplit("/", 1)[1] for p in paths)
    return Rule(
        id="r",
        reason="generated",
        line=None,
        decision=verdict,
        directions=draw(st.frozensets(st.sampled_from(Direction), min_size=1)),
        peer=draw(peers),
        types=draw(maybe(patterns)),
        handling=draw(maybe(subset(HANDLING))),
        tlp=draw(maybe(subset(TLP))),
        purpose=draw(maybe(subset(PURPOSES))),
        categories=draw(category_conditions),
        sender_kind=draw(maybe(subset(KINDS))),
        recipient_kind=draw(maybe(subset(KINDS))),
        sender_agency=draw(maybe(agency_patterns)),
        recipient_agency=draw(maybe(agency_patterns)),
        redact=redact,
        removes=removes,
    )


def policy_of(rule_list: list[Rule]) -> Policy:
    numbered = tuple(
        replace(
            r,
            id=f"r{i}",
            redact=tuple(replace(x, rule_id=f"r{i}") for x in r.redact),
        )
        for i, r in enumerate(rule_list)
    )
    return Policy(country=OWN, version=1, rules=numbered)


@st.composite
def units(draw: st.DrawFn) -> Unit:
    direction = draw(st.sampled_from(Direction))
    foreign = draw(st.sampled_from(FOREIGN))
    local = draw(st.sampled_from(("de.lka", "de.ngo")))
    sender, recipient = (local, foreign) if direction is Direction.EGRESS else (foreign, local)
    peer = foreign[:2].upper()
    return Unit(
        direction=direction,
        peer=peer,
        peer_eu=EU.get(peer),
        type=draw(st.sampled_from(TYPES)),
        handling=draw(st.sampled_from(HANDLING)),
        tlp=draw(st.sampled_from(TLP)),
        purpose=draw(st.sampled_from(PURPOSES)),
        categories=draw(st.frozensets(st.sampled_from(CATEGORIES))),
        sender=sender,
        sender_kind=AGENCIES.get(sender),
        recipient=recipient,
        recipient_kind=AGENCIES.get(recipient),
    )


@st.composite
def headers(draw: st.DrawFn, direction: Direction) -> Header:
    foreign = draw(st.lists(st.sampled_from(FOREIGN), min_size=1, max_size=3, unique=True))
    if direction is Direction.EGRESS:
        sender = draw(st.sampled_from(("de.lka", "de.ngo")))
        recipients = foreign
    else:
        sender = foreign[0]
        recipients = [draw(st.sampled_from(("de.lka", "de.ngo")))]
    return Header(
        fed="test",
        id="22222222-2222-4222-8222-222222222222",
        type=draw(st.sampled_from(TYPES)),
        type_version=1,
        conversation="22222222-2222-4222-8222-222222222222",
        sender=sender,
        recipients=tuple(sorted(recipients)),
        handling=draw(st.sampled_from(HANDLING)),
        tlp=draw(st.sampled_from(TLP)),
        purpose=draw(st.sampled_from(PURPOSES)),
        legal_basis="test",
        categories=tuple(sorted(draw(st.frozensets(st.sampled_from(CATEGORIES))))),
        iat=1,
        exp=2,
    )


def decide(policy: Policy, unit: Unit) -> Decision:
    return decide_unit(policy, unit, point=Point.EGRESS)[0]


def evaluate(policy: Policy, header: Header, direction: Direction) -> Decision:
    if direction is Direction.EGRESS:
        return evaluate_egress(policy, header, federation=FEDERATION).decision
    return evaluate_ingress(policy, header, federation=FEDERATION).decision


class TestDefaultDeny:
    """With no matching allow rule, every message is denied."""

    @SETTINGS
    @given(rule_list=st.lists(rules(), max_size=8), unit=units())
    def test_unit_without_matching_allow_is_denied(self, rule_list: list[Rule], unit: Unit) -> None:
        """If no allow rule matches a unit (reference semantics), the unit is denied."""
        policy = policy_of(rule_list)
        if not any(r.decision is Verdict.ALLOW and r.matches(unit) for r in policy.rules):
            assert decide(policy, unit).verdict is Verdict.DENY

    @SETTINGS
    @given(
        rule_list=st.lists(rules(decision=Verdict.DENY), max_size=8),
        direction=st.sampled_from(Direction),
        data=st.data(),
    )
    def test_policy_without_allow_denies_every_crossing(
        self, rule_list: list[Rule], direction: Direction, data: st.DataObject
    ) -> None:
        """A policy with only deny rules denies every message crossing its border."""
        header = data.draw(headers(direction))
        assert evaluate(policy_of(rule_list), header, direction).verdict is Verdict.DENY


class TestMonotonicDeny:
    """Adding a deny rule never turns a denied message into an allowed one."""

    @SETTINGS
    @given(
        rule_list=st.lists(rules(), max_size=8),
        extra=rules(decision=Verdict.DENY),
        position=st.integers(min_value=0, max_value=10),
        unit=units(),
    )
    def test_unit(self, rule_list: list[Rule], extra: Rule, position: int, unit: Unit) -> None:
        """A unit denied before inserting a deny rule anywhere is still denied after."""
        before = decide(policy_of(rule_list), unit)
        grown = [*rule_list[:position], extra, *rule_list[position:]]
        after = decide(policy_of(grown), unit)
        if not before.allowed:
            assert not after.allowed

    @SETTINGS
    @given(
        rule_list=st.lists(rules(), max_size=8),
        extra=rules(decision=Verdict.DENY),
        position=st.integers(min_value=0, max_value=10),
        direction=st.sampled_from(Direction),
        data=st.data(),
    )
    def test_message(
        self,
        rule_list: list[Rule],
        extra: Rule,
        position: int,
        direction: Direction,
        data: st.DataObject,
    ) -> None:
        """A message denied before inserting a deny rule anywhere is still denied after."""
        header = data.draw(headers(direction))
        before = evaluate(policy_of(rule_list), header, direction)
        grown = [*rule_list[:position], extra, *rule_list[position:]]
        if not before.allowed:
            assert not evaluate(policy_of(grown), header, direction).allowed


class TestCompiledIndex:
    """The bitmask index decides exactly like the reference predicate."""

    @SETTINGS
    @given(rule_list=st.lists(rules(), max_size=12), unit=units())
    def test_first_match_equals_linear_scan(self, rule_list: list[Rule], unit: Unit) -> None:
        """RuleIndex.first returns the first rule in file order whose matches() holds."""
        policy = policy_of(rule_list)
        expected = next((r for r in policy.rules if r.matches(unit)), None)
        assert policy.index.first(unit) is expected


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3))
KEYS = st.sampled_from(("contact_details", "health", "victims", "date", "city", "street", "x"))
json_values = st.recursive(
    JSON_LEAF,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(KEYS, children, max_size=4)
    ),
    max_leaves=20,
)
bodies = st.dictionaries(KEYS, json_values, max_size=5)
redaction_paths = st.lists(
    st.sampled_from(("contact_details", "health", "victims", "date", "street", "*", "x")),
    min_size=1,
    max_size=3,
).map(lambda segs: "/" + "/".join(segs))
redactions = st.one_of(
    st.builds(lambda p: Redaction(op="drop", path=p, rule_id="r"), redaction_paths),
    st.builds(
        lambda p, to: Redaction(op="coarsen", path=p, to=to, rule_id="r"),
        redaction_paths,
        st.sampled_from(("date_to_year", "date_to_month", "location_to_city", "age_to_range")),
    ),
)


class TestRedaction:
    """Redaction removes what it drops and is idempotent."""

    @SETTINGS
    @given(body=bodies, ops=st.lists(redactions, min_size=1, max_size=4))
    def test_dropped_fields_are_gone(self, body: dict[str, Any], ops: list[Redaction]) -> None:
        """After redaction, no path a drop names reaches a value."""
        out = apply_redactions(body, ops)
        for op in ops:
            if op.op == "drop":
                assert not reaches(out, op.path), op.path

    @SETTINGS
    @given(body=bodies, ops=st.lists(redactions, min_size=1, max_size=4))
    def test_idempotent(self, body: dict[str, Any], ops: list[Redaction]) -> None:
        """Applying the same redactions to a redacted body changes nothing."""
        once = apply_redactions(body, ops)
        assert apply_redactions(once, ops) == once

    @SETTINGS
    @given(body=bodies, ops=st.lists(redactions, min_size=1, max_size=4))
    def test_input_untouched(self, body: dict[str, Any], ops: list[Redaction]) -> None:
        """Redaction returns a copy and leaves its input as it was."""
        snapshot = repr(body)
        apply_redactions(body, ops)
        assert repr(body) == snapshot

    @SETTINGS
    @given(body=bodies, path=redaction_paths)
    def test_targets_are_present(self, body: dict[str, Any], path: str) -> None:
        """Every (container, key) a path reaches holds that key."""
        for container, key in targets(body, parse_path(path)):
            if isinstance(container, dict):
                assert key in container
            else:
                assert isinstance(key, int)
                assert key < len(container)


class TestLintSoundness:
    """What the linter calls shadowed really is covered by the earlier rule."""

    @SETTINGS
    @given(outer=rules(), inner=rules(), unit=units())
    def test_covers_is_sound(self, outer: Rule, inner: Rule, unit: Unit) -> None:
        """If covers(outer, inner) then every unit inner matches, outer matches too."""
        if covers(outer, inner, own=OWN, eu=EU) and inner.matches(unit):
            assert outer.matches(unit)

    @SETTINGS
    @given(
        inner=category_conditions,
        outer=category_conditions,
        declared=st.frozensets(st.sampled_from(CATEGORIES)),
    )
    def test_category_implication_is_sound(
        self, inner: CategoryCondition, outer: CategoryCondition, declared: frozenset[str]
    ) -> None:
        """If inner implies outer, no category set satisfies inner but not outer."""
        if categories_imply(inner, outer) and inner.holds(declared):
            assert outer.holds(declared)

    @SETTINGS
    @given(rule=rules())
    def test_rule_covers_itself(self, rule: Rule) -> None:
        """Containment is reflexive (so an exact duplicate rule is reported)."""
        assert covers(rule, rule, own=OWN, eu=EU)


class FakeSchemas:
    """A schema view where top-level members named after a category carry that category."""

    def validate(self, message_type: str, version: int, body: Mapping[str, Any]) -> None:
        return None

    def categories(
        self, message_type: str, version: int, body: Mapping[str, Any]
    ) -> frozenset[str]:
        present = {k for k, v in body.items() if k in CATEGORIES and v not in (None, {}, [], "")}
        victims = body.get("victims")
        if isinstance(victims, list) and any(
            isinstance(v, dict) and v.get("contact_details") for v in victims
        ):
            present.add("contact_details")
        return frozenset(present)


draft_bodies = st.fixed_dictionaries(
    {},
    optional={
        "case_facts": st.just("facts"),
        "contact_details": st.just({"phone": "1"}),
        "health": st.just({"needs": ["x"]}),
        "biometric": st.just({"ref": "1"}),
        "victims": st.lists(st.fixed_dictionaries({"contact_details": st.just("2")}), max_size=2),
    },
)


class TestPreflightPredictsBorder:
    """A message pre-flight allows is allowed by the egress gateway running the same policy."""

    @SETTINGS
    @given(
        rule_list=st.lists(rules(), max_size=8),
        data=st.data(),
        body=draft_bodies,
    )
    def test_preflight_allow_implies_egress_allow(
        self, rule_list: list[Rule], data: st.DataObject, body: dict[str, Any]
    ) -> None:
        """Sealing what pre-flight returns gives a header the egress gateway allows."""
        policy = policy_of(rule_list)
        header = data.draw(headers(Direction.EGRESS))
        outcome = preflight(
            policy,
            header,
            body,
            federation=FEDERATION,
            schemas=FakeSchemas(),
            original_onward=lambda _m: None,
        )
        if outcome.allowed:
            assert outcome.categories is not None
            sealed = replace(header, categories=outcome.categories)
            gateway = evaluate_egress(policy, sealed, federation=FEDERATION)
            assert gateway.allowed, gateway.decision
            assert [d.rule_id for d in gateway.decisions] == [d.rule_id for d in outcome.decisions]
