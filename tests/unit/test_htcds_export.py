"""HTCDS / CTDC export of aggregate statistics (broker.core.htcds, casebridge statistics)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main
from broker.cli.statistics import export_csv
from broker.core.htcds import EXPLOITATION_FLAGS, ExportRefused, to_htcds
from broker.errors import SchemaInvalid
from tests.unit.test_schemas import EXAMPLE_DIR, example


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


class TestMapping:
    def test_demo_statistics_export(self) -> None:
        """The demo's statistics at k = 15 export in HTCDS codes, withheld cells kept withheld."""
        rows = rows_of(export_csv(example("statistics.aggregate"), k=15))
        assert len(rows) == len(example("statistics.aggregate")["cells"])
        assert {r["gender"] for r in rows} == {"Female", "Male"}
        assert {r["majorityStatus"] for r in rows} == {"Adult", "Minor"}
        assert {r["yearOfRegistration"] for r in rows} == {"2025"}
        for row in rows:
            assert sum(int(row[f]) for f in EXPLOITATION_FLAGS) == 1
            assert (row["count"] == "") == (row["suppressed"] == "1")
            assert row["count"] == "" or int(row["count"]) >= 15

    def test_floor_k_keeps_large_cells(self) -> None:
        """At the federation floor the criminal-exploitation cells stay disclosed, unchanged."""
        rows = rows_of(export_csv(example("statistics.aggregate")))
        shown = {
            (r["gender"], r["majorityStatus"], r["count"]) for r in rows if r["suppressed"] == "0"
        }
        assert ("Female", "Adult", "23") in shown
        assert ("Male", "Minor", "44") in shown
        assert all(int(c) >= 11 for *_, c in shown)

    def test_unmapped_dimension_is_refused_by_name(self) -> None:
        """A dimension HTCDS has no variable for is named in the refusal, never dropped."""
        body = example("statistics.aggregate")
        body["dimensions"][0]["name"] = "shoe_size"
        with pytest.raises(ExportRefused, match="shoe_size"):
            to_htcds(body)

    @pytest.mark.parametrize(("dimension", "value"), [(0, "robot"), (1, "teen"), (2, "unlisted")])
    def test_unmapped_value_is_refused(self, dimension: int, value: str) -> None:
        """A value without an HTCDS code is refused (no guessing)."""
        body = example("statistics.aggregate")
        body["cells"][0]["key"][dimension] = value
        with pytest.raises(ExportRefused):
            to_htcds(body)

    def test_population_must_be_victims(self) -> None:
        """HTCDS describes victims: suspect statistics are refused."""
        body = example("statistics.aggregate")
        body["population"] = "suspects"
        with pytest.raises(ExportRefused, match="victims"):
            to_htcds(body)

    def test_age_bands_and_citizenship(self) -> None:
        """ageBroad bands and ISO citizenship map to the codebook's spellings."""
        body: dict[str, Any] = {
            "dataset": "test.synthetic",
            "population": "identified_victims",
            "period": {"start": "2024-01-01", "end": "2024-12-31"},
            "dimensions": [{"name": "age_band"}, {"name": "citizenship"}],
            "cells": [
                {"key": ["9-17", "ua"], "count": 30},
                {"key": ["48+", "RO"], "count": None, "suppressed": True},
            ],
            "k_threshold": 11,
        }
        _, rows = to_htcds(body)
        assert [(r["ageBroad"], r["citizenship"]) for r in rows] == [("9--17", "UA"), ("48+", "RO")]
        assert [(r["count"], r["suppressed"]) for r in rows] == [("30", "0"), ("", "1")]


class TestCommand:
    def test_cli_writes_the_csv(self, tmp_path: Path) -> None:
        """casebridge statistics export-htcds writes the same CSV the function returns."""
        out = tmp_path / "htcds.csv"
        source = EXAMPLE_DIR / "statistics.aggregate.json"
        assert main(["statistics", "export-htcds", str(source), "--k", "15", "-o", str(out)]) == 0
        assert out.read_text() == export_csv(example("statistics.aggregate"), k=15)

    def test_cli_accepts_a_stored_message(self, tmp_path: Path, capsys: Any) -> None:
        """A stored message with the body under 'body' exports like the body itself."""
        message = tmp_path / "message.json"
        message.write_text(
            json.dumps({"type": "statistics.aggregate", "body": example("statistics.aggregate")})
        )
        assert main(["statistics", "export-htcds", str(message)]) == 0
        assert capsys.readouterr().out == export_csv(example("statistics.aggregate"))

    def test_unsuppressed_input_is_protected_first(self) -> None:
        """A raw body with small counts never reaches the CSV with them."""
        body = example("statistics.aggregate")
        body["cells"][4] = {"key": ["female", "minor", "labour"], "count": 3}
        rows = rows_of(export_csv(body))
        assert all(r["count"] == "" or int(r["count"]) >= 11 for r in rows)

    def test_invalid_body_is_refused(self) -> None:
        """A body its schema refuses is not exported."""
        body = example("statistics.aggregate")
        del body["cells"]
        with pytest.raises(SchemaInvalid):
            export_csv(body)
