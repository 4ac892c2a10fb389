"""Redaction by path: drop and the named coarseners, against plain values and real schemas."""

from __future__ import annotations

from typing import Any

import pytest

from broker.core.policy import Redaction, apply_redactions
from broker.core.policy.redaction import PRECISE_LOCATION_MEMBERS, parse_path, reaches
from broker.loaders import load_schema_registry


def drop(path: str) -> Redaction:
    return Redaction(op="drop", path=path, rule_id="t")


def coarsen(path: str, to: str) -> Redaction:
    return Redaction(op="coarsen", path=path, to=to, rule_id="t")


class TestPaths:
    """Path syntax: JSON pointer escapes and the * wildcard."""

    def test_escapes(self) -> None:
        """~1 is a slash and ~0 a tilde inside a segment."""
        assert parse_path("/a~1b/c~0d/*") == ("a/b", "c~d", "*")

    def test_wildcard_over_arrays_and_objects(self) -> None:
        """* reaches every array item and every object member."""
        body = {"v": [{"x": 1}, {"x": 2}], "m": {"a": {"x": 3}}}
        out = apply_redactions(body, [drop("/v/*/x"), drop("/m/*/x")])
        assert out == {"v": [{}, {}], "m": {"a": {}}}

    def test_numeric_segment_is_not_an_index(self) -> None:
        """A numeric segment names an object member, never an array position."""
        body = {"v": [{"x": 1}], "o": {"0": 1}}
        assert apply_redactions(body, [drop("/v/0"), drop("/o/0")]) == {"v": [{"x": 1}], "o": {}}

    def test_dropping_array_items(self) -> None:
        """/list/* empties the list."""
        assert apply_redactions({"v": [1, 2, 3]}, [drop("/v/*")]) == {"v": []}

    def test_missing_paths_are_ignored(self) -> None:
        """A path that reaches nothing leaves the body as it was."""
        body = {"a": 1}
        assert apply_redactions(body, [drop("/b/c"), coarsen("/z", "date_to_year")]) == body


class TestCoarseners:
    """Each coarsener keeps a valid, less precise value, or drops what it cannot read."""

    @pytest.mark.parametrize(
        ("to", "value", "expected"),
        [
            ("date_to_year", "1999-03-14", "1999"),
            ("date_to_year", "1999-03", "1999"),
            ("date_to_year", "1999", "1999"),
            ("date_to_year", "2026-05-01T10:00:00+02:00", "2026"),
            ("date_to_month", "1999-03-14", "1999-03"),
            ("date_to_month", "1999-03", "1999-03"),
            ("date_to_month", "1999", "1999"),
            ("age_to_range", 4, "0-5"),
            ("age_to_range", 16, "15-17"),
            ("age_to_range", 17, "15-17"),
            ("age_to_range", 18, "18-24"),
            ("age_to_range", 70, "65+"),
            ("age_to_range", "16-20", "16-20"),
        ],
    )
    def test_value(self, to: str, value: Any, expected: Any) -> None:
        """The coarsened value is the expected coarse form."""
        assert apply_redactions({"f": value}, [coarsen("/f", to)]) == {"f": expected}

    @pytest.mark.parametrize(
        ("to", "value"),
        [
            ("date_to_year", "around Easter 1999"),
            ("date_to_year", 1999),
            ("date_to_month", None),
            ("age_to_range", "young"),
            ("age_to_range", True),
            ("age_to_range", -1),
            ("location_to_city", "Beispielstrasse 12, Berlin"),
        ],
    )
    def test_uninterpretable_value_is_dropped(self, to: str, value: Any) -> None:
        """What a coarsener cannot read is removed (fail closed), never passed on."""
        assert apply_redactions({"f": value, "g": 1}, [coarsen("/f", to)]) == {"g": 1}

    def test_location_to_city(self) -> None:
        """Street, postcode, geo and place note go; city, region, country and role stay."""
        place = {
            "country": "DE",
            "region": "Berlin",
            "city": "Berlin",
            "street": "Beispielstrasse 12",
            "postcode": "10115",
            "geo": {"lat": 52.5, "lon": 13.4},
            "place_note": "back door",
            "role": "exploitation",
        }
        out = apply_redactions({"p": place}, [coarsen("/p", "location_to_city")])
        assert out == {
            "p": {"country": "DE", "region": "Berlin", "city": "Berlin", "role": "exploitation"}
        }

    def test_unknown_operation_removes(self) -> None:
        """An operation the redactor does not know removes what it names (fail closed)."""
        odd = Redaction(op="blur", path="/f", rule_id="t")
        assert apply_redactions({"f": 1, "g": 2}, [odd]) == {"g": 2}

    def test_drop_wins_over_coarsen(self) -> None:
        """Coarsening happens first, so a dropped field is gone whatever the order given."""
        body = {"f": "1999-03-14"}
        assert apply_redactions(body, [drop("/f"), coarsen("/f", "date_to_year")]) == {}


class TestAgainstSchemas:
    """Coarsened values stay valid and categories shrink as the schemas annotate them."""

    def test_precise_location_members_match_the_schema(self) -> None:
        """location_to_city removes exactly what common.v1.json annotates precise_location."""
        registry = load_schema_registry()
        annotated = registry.annotated_paths("referral.victim", 1)
        precise = {
            parse_path(p)[-1]
            for p, cats in annotated.items()
            if "precise_location" in cats and p.startswith("/current_location/")
        }
        assert precise == PRECISE_LOCATION_MEMBERS

    def test_coarse_request_stays_valid_and_loses_categories(self) -> None:
        """A request with precise data, coarsened, validates and no longer has those categories."""
        registry = load_schema_registry()
        body = {
            "title": "t",
            "offences": ["forced_labour"],
            "facts": "f",
            "requested_measures": [{"measure": "identify_person", "description": "d"}],
            "due_date": "2026-12-01",
            "urgency": "routine",
            "victims": [
                {
                    "ref": "V1",
                    "date_of_birth": "2010-03-14",
                    "age": 16,
                    "contact": {"phones": ["+49 30 1234567"]},
                    "residence": {"country": "DE", "city": "Berlin", "street": "S 1"},
                }
            ],
        }
        registry.validate("request.assistance", 1, body)
        before = registry.categories("request.assistance", 1, body)
        out = apply_redactions(
            body,
            [
                drop("/victims/*/contact"),
                coarsen("/victims/*/residence", "location_to_city"),
                coarsen("/victims/*/date_of_birth", "date_to_year"),
                coarsen("/victims/*/age", "age_to_range"),
            ],
        )
        registry.validate("request.assistance", 1, out)
        after = registry.categories("request.assistance", 1, out)
        assert before - after == {"contact_details", "precise_location"}
        assert "minor" in after  # the band 15-17 still says minor
        assert reaches(out, "/victims/*/residence/city")
        assert out["victims"][0]["age"] == "15-17"
