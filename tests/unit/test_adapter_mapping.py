"""The mapping adapter: declarative mapping, transforms, row-numbered errors, sending once."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.common import NodeAccess
from adapters.mapping import Export, MappingSpec, RowErrors, main, run
from broker.errors import ConfigError
from broker.pki.dev import DevFederation
from broker.sdk import NodeClient

from .node_world import world_at
from .test_sdk import TOKEN, Served

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "adapters" / "mapping.example.yaml"


@pytest.fixture
def served(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[Served]:
    """de.lka-berlin and nl.politie behind their APIs; stopped after the test."""
    for world in world_at(dev_federation, tmp_path, fixed_now):
        running = Served(world)
        running.start()
        try:
            yield running
        finally:
            running.stop()


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _spec(fields: list[dict[str, Any]], **more: Any) -> MappingSpec:
    raw = {"draft": {"type": "bulletin"}, "fields": fields} | more
    return MappingSpec.parse(raw, base=Path("."))


class TestExampleDryRun:
    def test_seeded_bad_rows_reported_by_number(self) -> None:
        """The example export's dry run prints every row; rows 4, 6 and 7 fail with the
        stage and source of their error, the rest are valid drafts (policy not checked)."""
        out = io.StringIO()
        code = main(EXAMPLE, export=None, dry_run=True, out=out)
        lines = _lines(out)
        rows = {line["row"]: line for line in lines if "row" in line}
        assert code == 1
        assert sorted(rows) == [2, 3, 4, 5, 6, 7, 8, 9]
        assert lines[-1]["summary"]["failed_rows"] == [4, 6, 7]
        assert lines[-1]["summary"]["policy_checked"] is False
        assert rows[4]["errors"] == [
            {
                "stage": "mapping",
                "source": "deadline",
                "detail": "'31.02.2027' is not a date in the format %d.%m.%Y",
            }
        ]
        assert rows[6]["errors"][0]["detail"] == "'MLX' is not in code table offences"
        assert rows[7]["errors"][0]["stage"] == "schema"
        assert "title" in rows[7]["errors"][0]["detail"]
        good = rows[2]["draft"]
        assert good["to"] == ["nl.politie"]
        assert good["due"] == "2027-01-15"
        assert good["body"]["offences"] == [
            "trafficking_in_human_beings",
            "forced_labour",
            "money_laundering",
        ]
        assert good["body"]["requested_measures"][0] == {
            "ref": "M1",
            "measure": "bank_information",
            "description": "Holder and movements since 2026-01-01 of the account used to pay "
            "the workers.",
        }
        assert rows[9]["draft"]["categories"] == ["religion"]


class TestTransforms:
    def test_dates_codes_types_and_lists(self) -> None:
        """Date formats, code tables with a default, split lists and type conversions."""
        spec = _spec(
            [
                {"from": "d", "to": "/body/when", "date": {"from": "%d/%m/%Y", "to": "%Y-%m"}},
                {"from": "c", "to": "/body/kind", "codes": {"A": "alpha", "default": "other"}},
                {"from": "n", "to": "/body/count", "as": "integer"},
                {"from": "b", "to": "/body/flag", "as": "boolean"},
                {"from": "l", "to": "/body/items/-", "split": ";"},
                {"from": "e", "to": "/body/empty", "default": "none"},
                {"from": "x", "to": "/body/skipped"},
            ]
        )
        draft = spec.draft(
            {"d": "05/11/2026", "c": "Z", "n": " 12 ", "b": "ja", "l": "a; b;", "x": ""}
        )
        assert draft["body"] == {
            "when": "2026-11",
            "kind": "other",
            "count": 12,
            "flag": True,
            "items": [["a", "b"]],
            "empty": "none",
        }

    def test_every_bad_value_of_a_row_is_named(self) -> None:
        """A row with several bad values lists each with its source column."""
        spec = _spec(
            [
                {"from": "n", "to": "/body/n", "as": "integer"},
                {"from": "c", "to": "/body/c", "codes": {"A": "alpha"}},
                {"from": "r", "to": "/body/r", "required": True},
            ]
        )
        with pytest.raises(RowErrors) as caught:
            spec.draft({"n": "twelve", "c": "B"})
        assert [(e.source, e.detail) for e in caught.value.errors] == [
            ("n", "'twelve' is not an integer"),
            ("c", "'B' is not in code table of c"),
            ("r", "a value is required"),
        ]

    def test_json_lines_use_pointers_and_bad_lines_fail_alone(self) -> None:
        """JSON-lines sources are JSON pointers; a line that is not an object fails with its
        number and the lines around it still map."""
        spec = MappingSpec(
            constant={"type": "bulletin"},
            fields=_spec([{"from": "/case/title", "to": "/body/title"}]).fields,
            export=Export(path=None, format="jsonl"),
        )
        text = '{"case": {"title": "one"}}\n[1]\n\n{"case": {"title": "three"}}\n{"case": \n'
        out = io.StringIO()
        reports = run(spec, text, dry_run=True, client=None, out=out)
        assert [(r.row, r.ok) for r in reports][:2] == [(1, False), (2, False)]
        assert reports[0].errors[0]["stage"] == "schema"  # mapped, then the schema spoke
        assert reports[0].draft is not None
        assert reports[0].draft["body"]["title"] == "one"
        assert reports[1].errors == [
            {"stage": "mapping", "detail": "a JSON line must hold an object"}
        ]
        assert reports[2].row == 4
        assert reports[2].draft is not None
        assert reports[2].draft["body"]["title"] == "three"
        assert reports[3].row == 5
        assert reports[3].errors[0]["stage"] == "mapping"

    def test_mapping_mistakes_are_configuration_errors(self) -> None:
        """An unknown table, a target that is not a pointer or an unknown member is refused
        when the mapping loads, before any row is read."""
        with pytest.raises(ConfigError, match="no code table"):
            _spec([{"from": "a", "to": "/body/a", "codes": "missing"}])
        with pytest.raises(ConfigError, match="JSON pointer"):
            _spec([{"from": "a", "to": "body.a"}])
        with pytest.raises(ConfigError, match="unknown members"):
            _spec([{"from": "a", "to": "/body/a", "format": "x"}])


class TestSending:
    def test_rows_sent_once_across_runs(self, served: Served, tmp_path: Path) -> None:
        """The valid rows are sent and the bad ones not; running the same export again sends
        nothing new (the same message ids come back)."""
        spec = MappingSpec.load(EXAMPLE)
        spec = MappingSpec(
            constant=spec.constant,
            fields=spec.fields,
            export=spec.export,
            node=NodeAccess(url=served.urls["de.lka-berlin"], token=TOKEN),
        )
        assert spec.export.path is not None
        text = spec.export.path.read_text(encoding="utf-8")
        client = NodeClient(served.urls["de.lka-berlin"], TOKEN, timeout=5)
        first = run(spec, text, dry_run=False, client=client, out=io.StringIO())
        sent = {r.row: r.sent["message_id"] for r in first if r.sent is not None}
        assert sorted(sent) == [2, 3, 5, 8, 9]  # no policy in this node: row 9 passes here
        again = run(spec, text, dry_run=False, client=client, out=io.StringIO())
        assert {r.row: r.sent["message_id"] for r in again if r.sent is not None} == sent
        assert len(served.client("de.lka-berlin").outbox()) == 5
        dry = run(spec, text, dry_run=True, client=client, out=io.StringIO())
        assert all(r.sent is None for r in dry)
        assert all(r.decision is not None for r in dry if r.ok)


class TestCommandLine:
    def test_casebridge_adapter_mapping_dry_run(self) -> None:
        """`casebridge adapter mapping --dry-run` runs from a source checkout, prints the JSON
        lines and exits 1 because rows failed."""
        env = dict(os.environ, PYTHONPATH=str(REPO))
        done = subprocess.run(
            [sys.executable, "-m", "broker.cli", "adapter", "mapping", "--settings",
             str(EXAMPLE), "--dry-run"],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        summary = json.loads(done.stdout.splitlines()[-1])["summary"]
        assert summary["failed_rows"] == [4, 6, 7]

    def test_a_broken_mapping_is_a_configuration_error(self, tmp_path: Path) -> None:
        """A mapping that does not load exits 2 with `error [config_error]`."""
        broken = tmp_path / "m.yaml"
        broken.write_text("fields: []\n")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        done = subprocess.run(
            [sys.executable, "-m", "broker.cli", "adapter", "mapping", "--settings",
             str(broken), "--dry-run"],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 2
        assert "fields must be a non-empty list" in done.stderr
