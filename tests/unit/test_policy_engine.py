"""The engine at each point: pre-flight rounds and refusals, recipient checks, decisions."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.header import DATA_CATEGORIES, HANDLING_CODES, PURPOSES, TLP_MARKINGS, Header
from broker.core.policy import (
    Builtin,
    Decision,
    Federation,
    Point,
    Policy,
    Verdict,
    evaluate_egress,
    evaluate_ingress,
    evaluate_recipient,
    parse_policy,
    preflight,
)
from broker.errors import PolicyDenied, Reason, SchemaInvalid
from broker.loaders import load_policy_file
from broker.pki.dev import DevFederation
from tests.unit.test_policy_cases import case_federation, make_header, registry

REPO = Path(__file__).resolve().parents[2]
FEDERATION = case_federation()

REQUEST: dict[str, Any] = {
    "title": "Identify a recruiter",
    "offences": ["trafficking_in_human_beings"],
    "facts": "Two workers were recruited through an online job offer.",
    "requested_measures": [{"measure": "identify_person", "description": "Identify him."}],
    "due_date": "2026-12-15",
    "urgency": "routine",
    "victims": [{"ref": "V1", "contact": {"phones": ["+49 30 1234567"]}}],
    "suspects": [{"ref": "S1", "contact": {"phones": ["+380 44 0000000"]}}],
}


def policy(rules: str, country: str = "DE") -> Policy:
    text = f"country: {country}\nversion: 1\nrules:\n" + textwrap.indent(
        textwrap.dedent(rules), "  "
    )
    return parse_policy(text.encode("utf-8"))


def run_preflight(p: Policy, header: Header, body: dict[str, Any], **kw: Any) -> Any:
    return preflight(
        p,
        header,
        body,
        federation=FEDERATION,
        schemas=registry(),
        original_onward=kw.pop("original_onward", lambda _m: None),
        category_paths=registry().annotated_paths,
        **kw,
    )


class TestPreflight:
    """Sender-side evaluation on the draft body."""

    def test_invalid_draft_raises(self) -> None:
        """A draft its schema refuses is not a policy question: SchemaInvalid is raised."""
        with pytest.raises(SchemaInvalid):
            run_preflight(policy("[]"), make_header(), {"title": "only"})

    def test_rounds_until_the_deciding_rule_is_stable(self) -> None:
        """A rule that redacts its own trigger away hands over to the next rule, like the border."""
        p = policy(
            """\
            - id: strip-contact
              reason: Contact details never leave; strip them.
              direction: egress
              categories: {any: [contact_details]}
              decision: allow
              redact: [{drop: /victims/*/contact}, {drop: /suspects/*/contact}]
              removes: [contact_details]
            - id: requests
              reason: Requests to the EU.
              direction: egress
              peer: eu
              type: "request.*"
              decision: allow
            """
        )
        outcome = run_preflight(p, make_header(), REQUEST)
        assert outcome.allowed
        assert outcome.decision.rule_id == "requests"
        assert [r.rule_id for r in outcome.decision.redactions] == ["strip-contact"] * 2
        assert "contact_details" not in (outcome.categories or ())
        sealed = replace(make_header(), categories=outcome.categories)
        assert evaluate_egress(p, sealed, federation=FEDERATION).decision.rule_id == "requests"

    def test_incomplete_redaction_is_refused_by_its_rule(self) -> None:
        """If a rule's redactions leave a category it removes, pre-flight refuses by that rule."""
        p = policy(
            """\
            - id: victims-contact
              reason: Victims' contact details stay here.
              direction: egress
              decision: allow
              redact: [{drop: /victims/*/contact}]
              removes: [contact_details]
            """
        )
        outcome = run_preflight(p, make_header(), REQUEST)
        assert outcome.decision.verdict is Verdict.DENY
        assert outcome.decision.rule_id == "victims-contact"
        assert "not applied" in outcome.decision.reason

    def test_redaction_breaking_the_schema_is_refused_by_its_rule(self) -> None:
        """Dropping a required field makes pre-flight refuse, naming the rule that dropped it."""
        p = policy(
            """\
            - id: no-facts
              reason: Facts stay here.
              direction: egress
              decision: allow
              redact: [{drop: /facts}]
            """
        )
        outcome = run_preflight(p, make_header(), REQUEST)
        assert outcome.decision.verdict is Verdict.DENY
        assert outcome.decision.rule_id == "no-facts"
        assert "no longer be valid" in outcome.decision.reason

    def test_extra_declarations_are_kept(self) -> None:
        """A category declared by hand (e.g. a minor in free text) stays declared."""
        p = policy("- {id: all, reason: r, direction: egress, decision: allow}")
        header = make_header(categories=["minor"])
        outcome = run_preflight(p, header, REQUEST)
        assert "minor" in (outcome.categories or ())

    def test_extra_declaration_a_rule_removes_is_refused(self) -> None:
        """A hand-declared category a rule must remove cannot be redacted away: refused."""
        p = policy(
            """\
            - id: no-health
              reason: Health data stays here.
              direction: egress
              decision: allow
              redact: [{drop: /victims/*/health}]
              removes: [health]
            """
        )
        outcome = run_preflight(p, make_header(categories=["health"]), REQUEST)
        assert outcome.decision.rule_id == "no-health"
        assert not outcome.allowed

    def test_unknown_original_is_refused(self) -> None:
        """A derived draft whose original the node does not know is refused (fail closed)."""
        p = policy("- {id: all, reason: r, direction: egress, decision: allow}")
        header = make_header(derived_from="11111111-1111-4111-8111-111111111111")
        outcome = run_preflight(p, header, REQUEST)
        assert outcome.decision.rule_id == Builtin.ONWARD_TRANSFER

    def test_wrong_country(self) -> None:
        """Pre-flight with another country's policy is refused as out of scope."""
        outcome = run_preflight(policy("[]", country="NL"), make_header(), REQUEST)
        assert outcome.decision.rule_id == Builtin.SCOPE

    def test_draft_is_not_modified(self) -> None:
        """Pre-flight works on a copy: the caller's draft keeps everything."""
        p = policy(
            "- {id: all, reason: r, direction: egress, decision: allow, redact: [{drop: /victims}]}"
        )
        draft = {**REQUEST, "victims": [dict(v) for v in REQUEST["victims"]]}
        outcome = run_preflight(p, make_header(), draft)
        assert "victims" in draft
        assert outcome.body is not None
        assert "victims" not in outcome.body


class TestRecipient:
    """The receiving node's own checks."""

    def test_domestic_message_only_needs_honesty(self) -> None:
        """A domestic message passes with builtin.domestic once honesty holds."""
        header = make_header(recipients=["de.sta"], categories=["case_facts", "contact_details"])
        outcome = evaluate_recipient(
            policy("[]"), header, REQUEST, federation=FEDERATION, schemas=registry()
        )
        assert outcome.decision.rule_id == Builtin.DOMESTIC

    def test_honesty_names_the_undeclared_categories(self) -> None:
        """The honesty refusal says which categories were not declared."""
        header = make_header(categories=["case_facts"])
        outcome = evaluate_recipient(
            policy("- {id: a, reason: r, direction: ingress, decision: allow}", "NL"),
            header,
            REQUEST,
            federation=FEDERATION,
            schemas=registry(),
        )
        assert outcome.decision.rule_id == Builtin.HONESTY
        assert "contact_details" in outcome.decision.reason
        assert outcome.decision.point is Point.RECIPIENT

    def test_honesty_failure_has_its_own_reason_code(self) -> None:
        """Honesty failures carry category_undeclared (protocol step 18), still with the rule id."""
        header = make_header(categories=["case_facts"])
        outcome = evaluate_recipient(
            policy("[]", "NL"), header, REQUEST, federation=FEDERATION, schemas=registry()
        )
        with pytest.raises(PolicyDenied) as info:
            outcome.decision.raise_if_denied()
        assert info.value.reason is Reason.CATEGORY_UNDECLARED
        assert info.value.rule_id == Builtin.HONESTY
        assert str(info.value).startswith("category_undeclared: [builtin.honesty]")


class TestDecision:
    """Decision values."""

    def test_raise_if_denied(self) -> None:
        """A denial raises PolicyDenied carrying the rule id; an allow does not raise."""
        denied = Decision(verdict=Verdict.DENY, rule_id="x.y", reason="no", point=Point.EGRESS)
        with pytest.raises(PolicyDenied) as info:
            denied.raise_if_denied()
        assert info.value.rule_id == "x.y"
        assert info.value.reason is Reason.POLICY_DENIED
        assert info.value.http_status == 403
        replace(denied, verdict=Verdict.ALLOW).raise_if_denied()

    def test_json_form(self) -> None:
        """to_json names verdict, rule, reason, point, peer, recipient and redactions."""
        outcome = evaluate_egress(
            policy("- {id: a, reason: ok, direction: egress, decision: allow}"),
            make_header(),
            federation=FEDERATION,
        )
        assert outcome.decision.to_json() == {
            "verdict": "allow",
            "rule_id": "a",
            "reason": "ok",
            "point": "egress",
            "reason_code": None,
            "peer": "NL",
            "recipient": "nl.police",
            "redactions": [],
        }


class TestFederation:
    """The engine's view of the federation directory."""

    def test_from_directory(self, dev_federation: DevFederation) -> None:
        """EU flags and agency kinds come from the verified directory; unknown agencies: None."""
        federation = Federation.from_directory(dev_federation.directory)
        assert federation.eu == {"DE": True, "NL": True, "UA": False}
        assert federation.agency_kind("ua.npu") == "law_enforcement"
        assert federation.agency_kind("nl.hulp-ngo") == "ngo"
        assert federation.agency_kind("fr.nobody") is None


# ---------------------------------------------------- never raises on valid input ---

DEMO_POLICIES = {
    p.stem.upper(): load_policy_file(p) for p in (REPO / "docs/policies").glob("*.yaml")
}
DEMO_AGENCIES = (
    "de.lka-berlin",
    "de.sta-berlin",
    "de.fbs-berlin",
    "nl.politie",
    "nl.hulp-ngo",
    "nl.arbeidsinspectie",
    "ua.npu",
    "ua.pgo",
    "ua.hotline-ngo",
    "fr.police",
)


@st.composite
def demo_headers(draw: st.DrawFn) -> Header:
    sender = draw(st.sampled_from(DEMO_AGENCIES))
    recipients = draw(
        st.lists(
            st.sampled_from([a for a in DEMO_AGENCIES if a != sender]),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    return Header(
        fed="demo",
        id="22222222-2222-4222-8222-222222222222",
        type=draw(st.sampled_from(registry().types())),
        type_version=1,
        conversation="22222222-2222-4222-8222-222222222222",
        sender=sender,
        recipients=tuple(sorted(recipients)),
        handling=draw(st.sampled_from(HANDLING_CODES)),
        tlp=draw(st.sampled_from(TLP_MARKINGS)),
        purpose=draw(st.sampled_from(PURPOSES)),
        legal_basis="test",
        categories=tuple(sorted(draw(st.frozensets(st.sampled_from(DATA_CATEGORIES))))),
        derived_from=draw(st.sampled_from((None, "11111111-1111-4111-8111-111111111111"))),
        iat=1,
        exp=2,
    ).validate()


class TestNeverRaises:
    """Border evaluation returns a decision for every header the parser accepts."""

    @settings(max_examples=150, deadline=None)
    @given(header=demo_headers(), country=st.sampled_from(sorted(DEMO_POLICIES)))
    def test_gateways(self, header: Header, country: str) -> None:
        """Egress and ingress with the example policies decide (allow or deny), never raise."""
        demo = Federation(eu={"DE": True, "NL": True, "UA": False}, agency_kind=lambda _a: None)
        for outcome in (
            evaluate_egress(DEMO_POLICIES[country], header, federation=demo),
            evaluate_egress(
                DEMO_POLICIES[country], header, federation=demo, original_onward=lambda _m: None
            ),
            evaluate_ingress(DEMO_POLICIES[country], header, federation=demo),
        ):
            assert outcome.decision.verdict in (Verdict.ALLOW, Verdict.DENY)
            assert outcome.decision.rule_id


class TestSansIo:
    """The policy core stays free of I/O frameworks."""

    def test_import_loads_no_io_framework(self) -> None:
        """Importing broker.core.policy loads neither asyncio, nats, aiohttp nor metrics/logging."""
        code = (
            "import sys, broker.core.policy\n"
            "bad = {'asyncio', 'nats', 'aiohttp', 'prometheus_client', 'structlog'}\n"
            "print(sorted(bad & set(sys.modules)))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
        )
        assert result.stdout.strip() == "[]"
