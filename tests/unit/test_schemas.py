"""The message catalogue (schemas/) and its registry (broker.core.schemas).

Every example is checked by both validators independently of the registry (jsonschema and
jsonschema-rs built here from the files), so a registry bug cannot hide a schema bug.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # ships no py.typed marker
import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from broker.core import schemas as schemas_module
from broker.core.header import DATA_CATEGORIES
from broker.core.schemas import SCHEMA_BASE, SchemaRegistry, schema_id_for
from broker.errors import InvalidMessage, Reason, SchemaInvalid, SchemaRegistryError
from broker.loaders import load_documents, load_schema_registry

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLE_DIR = SCHEMA_DIR / "examples"

MESSAGE_TYPES = frozenset(
    {
        "information.spontaneous",
        "request.assistance",
        "response.assistance",
        "coordination.interview",
        "referral.victim",
        "referral.response",
        "report.confidential",
        "alert.person",
        "bulletin",
        "request.legal_remedy",
        "case.update",
        "aftercare.handover",
        "statistics.aggregate",
        "feedback",
        "correction",
        "withdrawal",
        "evidence.relay_accepted",
        "evidence.relay_rejected",
        "evidence.delivered",
        "evidence.rejected",
        "evidence.read",
    }
)
# The cooperation catalogue and hit/no-hit lookups (issue 19; tests/unit/test_catalogue_areas.py).
MESSAGE_TYPES |= {
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
}
# Files this catalogue owns (schemas/ also holds other components' schemas, e.g. policy).
OWN_FILES = frozenset({f"{t}.v1.json" for t in MESSAGE_TYPES} | {"common.v1.json"})

# What each example really contains: reviewed by hand, so a schema change that moves a
# category shows up here.
EXPECTED_CATEGORIES: dict[str, frozenset[str]] = {
    "aftercare.handover": frozenset({"case_facts", "contact_details", "health", "victim_identity"}),
    "alert.person": frozenset({"biometric", "case_facts", "minor", "victim_identity"}),
    "alert.person.2": frozenset({"case_facts", "criminal_record", "suspect_identity"}),
    "bulletin": frozenset(),
    "bulletin.2": frozenset(),
    "case.update": frozenset({"case_facts", "minor", "suspect_identity"}),
    "coordination.interview": frozenset({"case_facts", "health", "victim_identity"}),
    "correction": frozenset({"suspect_identity"}),
    "evidence.delivered": frozenset(),
    "evidence.read": frozenset(),
    "evidence.rejected": frozenset(),
    "evidence.relay_accepted": frozenset(),
    "evidence.relay_rejected": frozenset(),
    "feedback": frozenset(),
    "feedback.2": frozenset(),
    "information.spontaneous": frozenset(
        {
            "case_facts",
            "communications",
            "contact_details",
            "financial",
            "minor",
            "precise_location",
            "suspect_identity",
            "victim_identity",
        }
    ),
    "information.spontaneous.2": frozenset({"case_facts", "communications"}),
    "referral.response": frozenset(),
    "referral.victim": frozenset(
        {"case_facts", "contact_details", "health", "immigration_status", "victim_identity"}
    ),
    "referral.victim.2": frozenset({"case_facts", "minor"}),
    "report.confidential": frozenset(
        {"case_facts", "contact_details", "precise_location", "reporter_identity"}
    ),
    "report.confidential.2": frozenset({"case_facts"}),
    "request.assistance": frozenset({"case_facts", "financial", "suspect_identity"}),
    "request.assistance.2": frozenset({"case_facts", "minor", "victim_identity"}),
    "request.legal_remedy": frozenset(
        {"case_facts", "contact_details", "financial", "victim_identity"}
    ),
    "response.assistance": frozenset(
        {"case_facts", "criminal_record", "precise_location", "suspect_identity"}
    ),
    "response.assistance.2": frozenset(),
    "statistics.aggregate": frozenset({"aggregate_statistics"}),
    "withdrawal": frozenset(),
    # issue 19
    "brief.policy": frozenset({"case_facts"}),
    "capacity.query": frozenset(),
    "capacity.update": frozenset(),
    "feedback.survivor": frozenset(),
    "feedback.survivor.2": frozenset({"minor"}),
    "lookup.answer": frozenset(),
    "lookup.answer.2": frozenset(),
    "lookup.query": frozenset({"case_facts", "suspect_identity"}),
    "meeting.minutes": frozenset({"case_facts"}),
    "meeting.notice": frozenset({"precise_location"}),
    "response.legal_remedy": frozenset({"case_facts", "financial"}),
    "review.partnership": frozenset({"case_facts"}),
}
# Agency ids the examples may use: all fictitious.
FICTITIOUS_AGENCIES = frozenset(
    {
        "de.lka-berlin",
        "de.fz-arbeit-berlin",
        "nl.politie-nec",
        "nl.comensha",
        "ro.diicot",
        "ro.anitp",
        "ro.casa-speranta",
        "ua.npu-ctd",
        "ua.nadiya-centre",
    }
)
_AGENCY_RE = re.compile(r"^[a-z]{2}\.[a-z0-9][a-z0-9-]{0,62}$")
_DELETE = object()


# ------------------------------------------------------------------ helpers ---


@cache
def registry() -> SchemaRegistry:
    return load_schema_registry(SCHEMA_DIR)


@cache
def documents() -> dict[str, Any]:
    return load_documents(SCHEMA_DIR)


@cache
def _py_registry() -> Registry[Any]:
    return Registry().with_resources(
        (doc["$id"], DRAFT202012.create_resource(doc)) for doc in documents().values()
    )


@cache
def py_validator(message_type: str) -> Any:
    return jsonschema.Draft202012Validator(
        documents()[f"{message_type}.v1.json"],
        registry=_py_registry(),
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


@cache
def rs_validator(message_type: str) -> jsonschema_rs.Validator:
    resources = [(doc["$id"], doc) for doc in documents().values()]
    return jsonschema_rs.validator_for(
        documents()[f"{message_type}.v1.json"],
        validate_formats=True,
        registry=jsonschema_rs.Registry(resources),
        offline=True,
    )


def verdict(message_type: str, body: object) -> SchemaInvalid | None:
    """The registry's refusal of ``body``, or None if it accepts it."""
    try:
        registry().validate(message_type, 1, body)
    except SchemaInvalid as exc:
        return exc
    return None


def pointer(parts: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def py_paths(message_type: str, body: Any) -> set[str]:
    return {pointer(e.absolute_path) for e in py_validator(message_type).iter_errors(body)}


def rs_paths(message_type: str, body: Any) -> set[str]:
    return {pointer(e.instance_path) for e in rs_validator(message_type).iter_errors(body)}


def example_names() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in EXAMPLE_DIR.glob("*.json"))


def type_of(example: str) -> str:
    return re.sub(r"\.[0-9]+$", "", example)


@cache
def _example_text(name: str) -> str:
    return (EXAMPLE_DIR / f"{name}.json").read_text(encoding="utf-8")


def example(name: str) -> Any:
    """A fresh copy of an example body."""
    return json.loads(_example_text(name))


def edit(body: Any, path: str, value: Any = _DELETE) -> Any:
    """A copy of ``body`` with the value at JSON pointer ``path`` replaced (or deleted)."""
    out = copy.deepcopy(body)
    *parents, last = [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]]
    node = out
    for token in parents:
        node = node[int(token)] if isinstance(node, list) else node[token]
    key: Any = int(last) if isinstance(node, list) else last
    if value is _DELETE:
        del node[key]
    else:
        node[key] = value
    return out


def subschemas(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema object inside a document (including under $defs), with its location."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            if key in {"enum", "const", "x-data-category-when", "examples", "default"}:
                continue
            if key in {"properties", "$defs", "patternProperties", "dependentSchemas"}:
                for name, sub in value.items():
                    yield from subschemas(sub, f"{where}/{key}/{name}")
            elif isinstance(value, dict | list):
                yield from subschemas(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from subschemas(item, f"{where}/{index}")


def types_of(schema: dict[str, Any]) -> set[str]:
    declared = schema.get("type", [])
    return {declared} if isinstance(declared, str) else set(declared)


# ---------------------------------------------------------------- catalogue ---


class TestCatalogue:
    def test_registry_knows_exactly_the_catalogue(self) -> None:
        """Every message type of DESIGN.md section 3 has a schema, and no other type exists."""
        assert set(registry().types()) == MESSAGE_TYPES
        assert all(registry().versions(t) == (1,) for t in MESSAGE_TYPES)

    @pytest.mark.parametrize("file_name", sorted(OWN_FILES))
    def test_schema_passes_the_metaschema(self, file_name: str) -> None:
        """Each schema file is a valid JSON Schema 2020-12 document (pure-Python check)."""
        doc = documents()[file_name]
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(doc)

    @pytest.mark.parametrize("file_name", sorted(OWN_FILES))
    def test_id_matches_file_name(self, file_name: str) -> None:
        """``$id`` is https://schemas.casebridge.org/<type>/v<N>.json for <type>.v<N>.json."""
        name, version = file_name.removesuffix(".json").rsplit(".v", 1)
        assert documents()[file_name]["$id"] == f"{SCHEMA_BASE}{name}/v{version}.json"
        assert documents()[file_name]["x-version"] == int(version)

    @pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
    def test_message_schema_describes_itself(self, message_type: str) -> None:
        """A message schema has a title, a description, x-message-type and x-version 1."""
        doc = registry().schema(message_type, 1)
        assert doc["title"]
        assert doc["description"]
        assert doc["x-message-type"] == message_type
        assert doc["x-version"] == 1
        assert registry().schema_id(message_type, 1) == schema_id_for(message_type, 1)

    @pytest.mark.parametrize("file_name", sorted(OWN_FILES))
    def test_input_is_bounded_and_closed(self, file_name: str) -> None:
        """Objects are closed, strings have maxLength (or enum/const), arrays have maxItems."""
        problems = []
        for where, schema in subschemas(documents()[file_name]):
            kinds = types_of(schema)
            closed = (
                schema.get("additionalProperties") is False
                or schema.get("unevaluatedProperties") is False
            )
            if "object" in kinds and not closed and not schema.get("x-mixin"):
                problems.append(f"{where}: open object")
            if "string" in kinds and not {"maxLength", "enum", "const"} & set(schema):
                problems.append(f"{where}: unbounded string")
            if "array" in kinds and "maxItems" not in schema:
                problems.append(f"{where}: unbounded array")
        assert problems == []

    @pytest.mark.parametrize("file_name", sorted(OWN_FILES))
    def test_data_categories_are_known(self, file_name: str) -> None:
        """Every x-data-category value is one of header.DATA_CATEGORIES."""
        used: set[str] = set()
        for _, schema in subschemas(documents()[file_name]):
            raw = schema.get("x-data-category")
            if raw is not None:
                used.update([raw] if isinstance(raw, str) else raw)
        assert used <= set(DATA_CATEGORIES)

    @pytest.mark.parametrize("file_name", sorted(OWN_FILES))
    def test_refs_stay_inside_the_catalogue(self, file_name: str) -> None:
        """Every $ref is local (#/...) or absolute into schemas.casebridge.org: nothing to fetch."""
        refs = [s["$ref"] for _, s in subschemas(documents()[file_name]) if "$ref" in s]
        assert all(r.startswith(("#/", SCHEMA_BASE)) for r in refs)

    def test_unused_categories_are_deliberate(self) -> None:
        """Every data category has a field somewhere, except three the catalogue leaves out."""
        used: set[str] = set()
        for message_type in MESSAGE_TYPES:
            for cats in registry().annotated_paths(message_type, 1).values():
                used |= cats
        # No field for these on purpose (see docs/schemas.md): religion, ethnic origin, sex life.
        assert set(DATA_CATEGORIES) - used == {"ethnic_origin", "religion", "sexual_life"}


# ----------------------------------------------------------------- examples ---


class TestExamples:
    def test_every_type_has_an_example(self) -> None:
        """schemas/examples holds at least one body per message type, and nothing else."""
        assert {type_of(n) for n in example_names()} == MESSAGE_TYPES
        assert set(example_names()) == set(EXPECTED_CATEGORIES)

    @pytest.mark.parametrize("name", example_names())
    def test_example_is_valid_for_both_validators(self, name: str) -> None:
        """jsonschema and jsonschema-rs both accept the example, and so does the registry."""
        body = example(name)
        assert py_paths(type_of(name), body) == set()
        assert rs_paths(type_of(name), body) == set()
        registry().validate(type_of(name), 1, body)

    @pytest.mark.parametrize("name", example_names())
    def test_example_categories(self, name: str) -> None:
        """categories() of each example is exactly the reviewed set."""
        assert registry().categories(type_of(name), 1, example(name)) == EXPECTED_CATEGORIES[name]

    @pytest.mark.parametrize("name", example_names())
    def test_example_uses_only_fictitious_agencies(self, name: str) -> None:
        """Agency ids in examples come from the fictitious set (no real unit is named)."""
        strings = re.findall(r'"([^"]*)"', (EXAMPLE_DIR / f"{name}.json").read_text())
        agencies = {s for s in strings if _AGENCY_RE.match(s) and not s.endswith(".gateway")}
        assert agencies <= FICTITIOUS_AGENCIES


# ------------------------------------------------------------ invalid bodies ---

# (example, JSON pointer to change, new value or _DELETE, expected error path, keyword)
INVALID: list[tuple[str, str, Any, str, str]] = [
    ("information.spontaneous", "/items", _DELETE, "", "required"),
    ("request.assistance", "/due_date", "2026-02-30", "/due_date", "format"),
    ("request.assistance", "/due_date", "30.04.2026", "/due_date", "pattern"),
    (
        "information.spontaneous",
        "/victims/0/nickname",
        "Ani",
        "/victims/0",
        "unevaluatedProperties",
    ),
    ("bulletin", "/priority", "high", "", "additionalProperties"),
    (
        "information.spontaneous",
        "/items/0/evaluation/source_reliability",
        "E",
        "/items/0/evaluation/source_reliability",
        "enum",
    ),
    ("report.confidential", "/narrative", "x" * 20001, "/narrative", "maxLength"),
    ("correction", "/corrections/0/path", "suspects/0", "/corrections/0/path", "pattern"),
    ("correction", "/corrections/2/value", "x", "/corrections/2/value", "not"),
    (
        "information.spontaneous",
        "/victims/0/date_of_birth",
        "2004-13",
        "/victims/0/date_of_birth",
        "pattern",
    ),
    ("response.assistance", "/request_id", "not-a-uuid", "/request_id", "pattern"),
    (
        "information.spontaneous",
        "/victims/0/nationalities/0",
        "XX",
        "/victims/0/nationalities/0",
        "enum",
    ),
    ("information.spontaneous", "/victims/0/age", 131, "/victims/0/age", "maximum"),
    ("statistics.aggregate", "/cells/0/suppressed", True, "/cells/0/count", "type"),
    ("statistics.aggregate", "/cells/0/count", -1, "/cells/0/count", "minimum"),
    ("response.assistance.2", "/declined", _DELETE, "", "required"),
    ("alert.person", "/person_of_interest", {}, "/person_of_interest", "not"),
    ("feedback", "/ratings/overall", "4", "/ratings/overall", "type"),
    ("evidence.rejected", "/subject_digest", "abc", "/subject_digest", "pattern"),
    ("evidence.rejected", "/rule_id", _DELETE, "", "required"),
    (
        "request.assistance",
        "/contact_point/email",
        "lka42 at example",
        "/contact_point/email",
        "pattern",
    ),
    ("referral.victim", "/consent/scope", [], "/consent/scope", "minItems"),
    ("request.assistance", "/urgency_reason", _DELETE, "", "required"),
]


class TestInvalidBodies:
    @pytest.mark.parametrize(
        ("name", "path", "value", "error_path", "keyword"),
        INVALID,
        ids=[f"{n}:{p}:{k}" for n, p, _, _, k in INVALID],
    )
    def test_refused_by_both_validators_at_the_path(
        self, name: str, path: str, value: Any, error_path: str, keyword: str
    ) -> None:
        """Both engines refuse the body at the path; the registry reports that path first."""
        body = edit(example(name), path, value)
        assert error_path in py_paths(type_of(name), body)
        assert error_path in rs_paths(type_of(name), body)
        with pytest.raises(SchemaInvalid) as caught:
            registry().validate(type_of(name), 1, body)
        assert caught.value.errors[0].path == error_path
        assert keyword in {d.validator for d in caught.value.errors if d.path == error_path}
        assert caught.value.reason == Reason.SCHEMA_INVALID

    def test_every_missing_member_is_listed(self) -> None:
        """Several missing required members give one detail each."""
        with pytest.raises(SchemaInvalid) as caught:
            registry().validate("withdrawal", 1, {})
        messages = {d.message for d in caught.value.errors if d.validator == "required"}
        assert messages == {
            "missing required member 'withdrawn_message_id'",
            "missing required member 'reason'",
            "missing required member 'action_requested'",
        }

    def test_errors_never_echo_body_content(self) -> None:
        """No error message or path repeats a value or odd member name from the body."""
        sentinel = "Zorica-Secretescu"
        body = edit(example("information.spontaneous"), "/victims/0/family_name", sentinel * 20)
        body = edit(body, "/victims/0/date_of_birth", sentinel)
        body = edit(body, f"/victims/1/{sentinel} name", "x")
        with pytest.raises(SchemaInvalid) as caught:
            registry().validate("information.spontaneous", 1, body)
        assert len(caught.value.errors) >= 3
        assert sentinel not in str(caught.value)
        assert all(
            sentinel not in d.message and sentinel not in d.path for d in caught.value.errors
        )

    def test_unexpected_member_names_that_look_like_fields_are_named(self) -> None:
        """An unexpected member named like a field is listed, to help the integrator."""
        body = edit(example("bulletin"), "/priority", "high")
        with pytest.raises(SchemaInvalid) as caught:
            registry().validate("bulletin", 1, body)
        assert "'priority'" in caught.value.errors[0].message

    def test_error_count_is_bounded(self) -> None:
        """A body with hundreds of violations yields a bounded list of details."""
        body = {"cells": [{"key": [], "count": -1}] * 300}
        with pytest.raises(SchemaInvalid) as caught:
            registry().validate("statistics.aggregate", 1, body)
        assert 1 <= len(caught.value.errors) <= schemas_module.MAX_ERRORS

    def test_disagreement_fails_closed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """If the explanation pass finds nothing where jsonschema-rs refused, it still refuses."""
        monkeypatch.setattr(schemas_module._Explainer, "explain", lambda self, body: [])
        with pytest.raises(SchemaInvalid) as caught:
            registry().validate("withdrawal", 1, {})
        assert caught.value.errors[0].validator == "schema"

    def test_non_json_value_is_refused(self) -> None:
        """A Python value JSON cannot hold (a set) is refused as schema-invalid, not a crash."""
        body = edit(example("withdrawal"), "/reason", {"sent_in_error"})
        with pytest.raises(SchemaInvalid):
            registry().validate("withdrawal", 1, body)

    @pytest.mark.parametrize(
        ("message_type", "version"), [("request.nonexistent", 1), ("request.assistance", 2)]
    )
    def test_unknown_type_or_version(self, message_type: str, version: int) -> None:
        """validate, categories and schema refuse an unknown type or version with UNKNOWN_TYPE."""
        calls: list[Callable[[], object]] = [
            lambda: registry().validate(message_type, version, {}),
            lambda: registry().categories(message_type, version, {}),
            lambda: registry().schema(message_type, version),
        ]
        for call in calls:
            with pytest.raises(InvalidMessage) as caught:
                call()
            assert caught.value.reason == Reason.UNKNOWN_TYPE


class TestCorrection:
    def test_unknown_corrected_type_is_refused(self) -> None:
        """A correction of a type and version the registry does not know is refused."""
        body = edit(example("correction"), "/corrected_type_version", 7)
        with pytest.raises(SchemaInvalid) as caught:
            registry().validate("correction", 1, body)
        assert caught.value.errors[0].path == "/corrected_type"

    def test_path_outside_the_corrected_schema_is_refused(self) -> None:
        """A well-formed pointer naming no field of the corrected type is refused at its index."""
        body = edit(example("correction"), "/corrections/1/path", "/items/1/credibility")
        with pytest.raises(SchemaInvalid) as caught:
            registry().validate("correction", 1, body)
        assert [d.path for d in caught.value.errors] == ["/corrections/1/path"]

    @pytest.mark.parametrize("path", ["/victims/-", "/victims/12/aliases/0", "/summary"])
    def test_paths_into_the_corrected_schema_are_accepted(self, path: str) -> None:
        """Array indices, the append token and plain members all resolve."""
        body = edit(example("correction"), "/corrections/0/path", path)
        registry().validate("correction", 1, body)

    @pytest.mark.parametrize(
        ("path", "value", "expected"),
        [
            ("/victims/0/family_name", "Exemplu", {"victim_identity"}),
            ("/victims/0", {"is_minor": True, "gender": "female"}, {"minor"}),
            ("/suspects/1/contact", {"phones": ["+40 700 000 999"]}, {"contact_details"}),
            ("/locations/0/street", "Voorbeeldstraat 14", {"precise_location"}),
            ("/items/0/evaluation/source_reliability", "A", set()),
            ("/victims/0/given_names", "", set()),
        ],
    )
    def test_new_values_carry_their_target_categories(
        self, path: str, value: Any, expected: set[str]
    ) -> None:
        """A corrected value counts with the categories it has at its path in the target type."""
        body = {
            **example("correction"),
            "corrections": [{"op": "replace", "path": path, "value": value}],
        }
        assert registry().categories("correction", 1, body) == expected

    def test_categories_of_enclosing_locations_count(self) -> None:
        """Correcting a member inside an annotated object counts that object's category too."""
        body = {
            "corrected_message_id": "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d",
            "corrected_type": "report.confidential",
            "corrected_type_version": 1,
            "corrections": [{"op": "replace", "path": "/reporter/organisation", "value": "Bakery"}],
            "reason": "factual_error",
        }
        registry().validate("correction", 1, body)
        assert registry().categories("correction", 1, body) == {"reporter_identity"}


# --------------------------------------------------------------- coarsening ---

REDACTABLE = frozenset(DATA_CATEGORIES) - {"case_facts", "aggregate_statistics"}


def drop_all(body: Any, segments: list[str]) -> None:
    """Remove every value a path pattern (``*`` = every array item) reaches, in place."""
    head, *rest = segments
    if head == "*":
        if isinstance(body, list):
            if rest:
                for item in body:
                    drop_all(item, rest)
            else:
                body.clear()
    elif isinstance(body, dict) and head in body:
        if rest:
            drop_all(body[head], rest)
        else:
            del body[head]


class TestCoarsening:
    @pytest.mark.parametrize("dob", ["1998-04-17", "1998-04", "1998"])
    def test_date_of_birth_in_every_precision(self, dob: str) -> None:
        """A person's date of birth may be a day, a month or a year."""
        body = edit(example("information.spontaneous"), "/victims/0/date_of_birth", dob)
        registry().validate("information.spontaneous", 1, body)

    def test_age_band_is_valid_and_still_a_minor(self) -> None:
        """An age coarsened to a band validates and still counts as minor below 18."""
        body = edit(example("case.update"), "/victims/0/age", "15-17")
        body = edit(body, "/victims/0/is_minor", _DELETE)
        registry().validate("case.update", 1, body)
        assert "minor" in registry().categories("case.update", 1, body)

    def test_coarse_location_is_valid_and_not_precise(self) -> None:
        """A location cut down to city, region and country validates and is not precise."""
        body = example("information.spontaneous")
        body["locations"] = [
            {k: v for k, v in loc.items() if k in {"city", "region", "country"}}
            for loc in body["locations"]
        ]
        registry().validate("information.spontaneous", 1, body)
        assert "precise_location" not in registry().categories("information.spontaneous", 1, body)

    @pytest.mark.parametrize("name", example_names())
    def test_dropping_any_redactable_path_keeps_the_body_valid(self, name: str) -> None:
        """Dropping every annotated path but case facts and statistics leaves a valid body."""
        message_type = type_of(name)
        for path, cats in registry().annotated_paths(message_type, 1).items():
            if cats & REDACTABLE:
                body = example(name)
                drop_all(body, path.split("/")[1:])
                registry().validate(message_type, 1, body)

    def test_report_without_reporter(self) -> None:
        """A confidential report stripped of its reporter validates and has no reporter identity."""
        body = edit(example("report.confidential"), "/reporter", _DELETE)
        registry().validate("report.confidential", 1, body)
        assert "reporter_identity" not in registry().categories("report.confidential", 1, body)

    def test_suppressed_cells(self) -> None:
        """Suppressed cells ({count: null, suppressed: true}) and bare null counts validate."""
        body = example("statistics.aggregate")
        body["cells"][0] = {"key": ["female", "adult", "sexual"], "count": None, "suppressed": True}
        body["cells"][1]["count"] = None  # what the small-cells safeguard's suppress op leaves
        registry().validate("statistics.aggregate", 1, body)


# --------------------------------------------------------------- categories ---


class TestCategories:
    @pytest.mark.parametrize(
        ("member", "value", "minor"),
        [
            ("is_minor", True, True),
            ("is_minor", False, False),
            ("age", 17, True),
            ("age", 18, False),
            ("age", "15-17", True),
            ("age", "18-24", False),
            ("age", "65+", False),
        ],
    )
    def test_minor_rule(self, member: str, value: Any, minor: bool) -> None:
        """minor counts for is_minor true, an age of 17 or less, or a band starting below 18."""
        body: dict[str, Any] = {
            "case_ref": "X-1",
            "update_kind": "other",
            "status": "open",
            "summary": "s",
        }
        body["victims"] = [{member: value}]
        registry().validate("case.update", 1, body)
        assert ("minor" in registry().categories("case.update", 1, body)) is minor

    @pytest.mark.parametrize("empty", [None, "", [], {}])
    def test_empty_values_carry_no_category(self, empty: Any) -> None:
        """null, "", [] and {} at an annotated location do not count."""
        body: dict[str, Any] = {
            "case_ref": "X-1",
            "update_kind": "other",
            "status": "open",
            "summary": "s",
        }
        body["suspects"] = [{"aliases": empty, "contact": empty, "given_names": empty}]
        assert registry().categories("case.update", 1, body) == {"case_facts"}

    def test_category_follows_the_role(self) -> None:
        """The same name is victim identity under victims and suspect identity under suspects."""
        base = {"case_ref": "X-1", "update_kind": "other", "status": "open", "summary": "s"}
        as_victim = {**base, "victims": [{"family_name": "Exemplu"}]}
        as_suspect = {**base, "suspects": [{"family_name": "Exemplu"}]}
        assert registry().categories("case.update", 1, as_victim) == {
            "case_facts",
            "victim_identity",
        }
        assert registry().categories("case.update", 1, as_suspect) == {
            "case_facts",
            "suspect_identity",
        }

    def test_annotated_paths_use_pointer_patterns(self) -> None:
        """annotated_paths lists JSON-pointer patterns with * for items, and their categories."""
        paths = registry().annotated_paths("information.spontaneous", 1)
        assert paths["/victims/*/date_of_birth"] == {"victim_identity"}
        assert paths["/suspects/*/date_of_birth"] == {"suspect_identity"}
        assert paths["/victims/*/is_minor"] == {"minor"}
        assert paths["/locations/*/geo"] == {"precise_location"}
        assert paths["/suspects/*/bank_accounts/*"] == {"financial"}
        assert registry().annotated_paths("report.confidential", 1)["/reporter"] == {
            "reporter_identity"
        }
        assert registry().annotated_paths("statistics.aggregate", 1) == {
            "/cells": {"aggregate_statistics"}
        }

    @pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
    def test_annotated_paths_exist(self, message_type: str) -> None:
        """Every annotated pattern is one of the type's path patterns."""
        annotated = set(registry().annotated_paths(message_type, 1))
        assert annotated <= registry().path_patterns(message_type, 1)

    def test_path_patterns_follow_refs_and_branches(self) -> None:
        """path_patterns includes members reached through $ref, allOf and if/then."""
        paths = registry().path_patterns("alert.person", 1)
        assert {"/victim/date_of_birth", "/person_of_interest/vehicles/*/registration"} <= paths
        assert "/last_seen/location/street" in paths


# ------------------------------------------------------------------ loading ---


def copy_schemas(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    target.mkdir()
    for name in OWN_FILES:
        shutil.copy(SCHEMA_DIR / name, target / name)
    return target


def rewrite(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


class TestLoading:
    def test_default_directory_from_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without a path, load() reads $CASEBRIDGE_SCHEMAS."""
        target = copy_schemas(tmp_path)
        (target / "withdrawal.v1.json").unlink()
        monkeypatch.setenv("CASEBRIDGE_SCHEMAS", str(target))
        assert "withdrawal" not in load_schema_registry().types()

    def test_default_directory_is_the_repository(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without a path or the variable, load() reads the repository's schemas/."""
        monkeypatch.delenv("CASEBRIDGE_SCHEMAS", raising=False)
        assert set(load_schema_registry().types()) == MESSAGE_TYPES

    @pytest.mark.parametrize(
        ("file_name", "change", "complaint"),
        [
            ("bulletin.v1.json", lambda d: d.update(type="objekt"), "not a valid 2020-12 schema"),
            ("bulletin.v1.json", lambda d: d.update({"$id": f"{SCHEMA_BASE}x/v1.json"}), "$id"),
            ("bulletin.v1.json", lambda d: d.update({"x-version": 2}), "x-version"),
            ("bulletin.v1.json", lambda d: d.update({"x-message-type": "other"}), "x-message-type"),
            (
                "bulletin.v1.json",
                lambda d: d["properties"]["title"].update({"x-data-category": "gossip"}),
                "unknown data categories",
            ),
            (
                "bulletin.v1.json",
                lambda d: d["properties"]["title"].update({"x-data-category-when": True}),
                "without x-data-category",
            ),
            (
                "bulletin.v1.json",
                lambda d: d.update(additionalProperties={"x-data-category": "health"}),
                "under additionalProperties",
            ),
            (
                "bulletin.v1.json",
                lambda d: d["properties"]["title"].update({"$ref": "#/$defs/nope"}),
                "unresolvable",
            ),
        ],
    )
    def test_bad_schema_is_refused_with_its_file_name(
        self,
        tmp_path: Path,
        file_name: str,
        change: Callable[[dict[str, Any]], None],
        complaint: str,
    ) -> None:
        """A broken schema file stops loading with SchemaRegistryError naming the file."""
        target = copy_schemas(tmp_path)
        rewrite(target / file_name, change)
        with pytest.raises(SchemaRegistryError) as caught:
            load_schema_registry(target)
        assert caught.value.reason == Reason.SCHEMA_REGISTRY
        assert caught.value.detail.startswith(f"{file_name}: ")
        assert complaint in caught.value.detail

    def test_recursive_reference_is_refused(self, tmp_path: Path) -> None:
        """A $ref cycle cannot be compiled into a category tree and is refused at load."""
        target = copy_schemas(tmp_path)
        rewrite(
            target / "common.v1.json",
            lambda d: d["$defs"]["witness"]["properties"].update(
                {"friend": {"$ref": "#/$defs/witness"}}
            ),
        )
        with pytest.raises(SchemaRegistryError, match=r"recursive \$ref"):
            load_schema_registry(target)

    def test_duplicate_members_are_refused(self, tmp_path: Path) -> None:
        """A schema file with a duplicated JSON member is refused, naming the file."""
        target = copy_schemas(tmp_path)
        (target / "feedback.v1.json").write_text('{"a": 1, "a": 2}', encoding="utf-8")
        with pytest.raises(SchemaRegistryError, match=r"^schema_registry: feedback\.v1\.json"):
            load_schema_registry(target)

    @pytest.mark.parametrize("file_name", ["notes.json", "bulletin.json", "Bulletin.v1.json"])
    def test_unexpected_file_names_are_refused(self, tmp_path: Path, file_name: str) -> None:
        """Every JSON file in the directory must be named <type>.v<N>.json."""
        target = copy_schemas(tmp_path)
        (target / file_name).write_text("{}", encoding="utf-8")
        with pytest.raises(SchemaRegistryError, match="file name"):
            load_schema_registry(target)

    def test_missing_directory(self, tmp_path: Path) -> None:
        """A directory that does not exist, or holds no schema, is a registry error."""
        with pytest.raises(SchemaRegistryError):
            load_schema_registry(tmp_path / "absent")
        with pytest.raises(SchemaRegistryError):
            load_schema_registry(tmp_path)

    def test_core_import_stays_sans_io(self) -> None:
        """Importing the registry loads no asyncio, nats or aiohttp."""
        code = (
            "import sys, broker.core.schemas;"
            "print([m for m in ('asyncio', 'nats', 'aiohttp') if m in sys.modules])"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "[]"


# --------------------------------------------------------------- properties ---

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["1998", "15-17", "2026-04-30", "DE", "victim", "+40 700 000 123"])
)
member_names = st.sampled_from(
    [
        "victims",
        "suspects",
        "victim",
        "reporter",
        "cells",
        "age",
        "is_minor",
        "contact",
        "corrections",
        "path",
        "value",
        "corrected_type",
        "street",
        "given_names",
        "items",
    ]
) | st.text(max_size=8)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(member_names, children, max_size=5)
    ),
    max_leaves=25,
)


def locations(body: Any, where: str = "") -> Iterator[str]:
    """Every JSON pointer inside ``body`` (not the root)."""
    if isinstance(body, dict):
        items: Any = body.items()
    elif isinstance(body, list):
        items = enumerate(body)
    else:
        return
    for key, value in items:
        here = f"{where}/{str(key).replace('~', '~0').replace('/', '~1')}"
        yield here
        yield from locations(value, here)


class TestProperties:
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(message_type=st.sampled_from(sorted(MESSAGE_TYPES)), body=json_values)
    def test_arbitrary_json_never_breaks_the_registry(self, message_type: str, body: Any) -> None:
        """On any JSON value, validate raises only SchemaInvalid and categories stays known."""
        refusal = verdict(message_type, body)
        assert refusal is None or refusal.errors
        assert registry().categories(message_type, 1, body) <= set(DATA_CATEGORIES)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data(), name=st.sampled_from(example_names()))
    def test_mutated_examples_get_one_verdict(self, data: st.DataObject, name: str) -> None:
        """After a random edit, both engines and the registry agree on validity."""
        body = example(name)
        path = data.draw(st.sampled_from(sorted(locations(body))))
        value = data.draw(st.just(_DELETE) | json_values)
        mutated = edit(body, path, value)
        message_type = type_of(name)
        python_ok = not py_paths(message_type, mutated)
        assert rs_validator(message_type).is_valid(mutated) is python_ok
        registry_ok = verdict(message_type, mutated) is None
        # correction adds a check of its own (paths must exist in the corrected type).
        assert registry_ok is python_ok or (message_type == "correction" and not registry_ok)
        assert registry().categories(message_type, 1, mutated) <= set(DATA_CATEGORIES)
