"""The shipped operations artefacts: dashboards as generated, alert rules valid and tested."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from broker.ops import dashboards
from tests.promtools import require

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "ops" / "prometheus" / "alerts_test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"


def _anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of every heading."""
    found = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^a-z0-9 _-]", "", text).replace(" ", "-"))
    return found


class TestDashboards:
    def test_committed_json_is_the_generator_output(self) -> None:
        """ops/grafana/dashboards holds exactly what broker.ops.dashboards generates."""
        committed = {
            p.name: p.read_text(encoding="utf-8") for p in dashboards.OUT_DIR.glob("*.json")
        }
        assert committed == dashboards.rendered()

    def test_uids_are_fixed_and_every_query_uses_the_datasource_variable(self) -> None:
        """Each dashboard has its own uid and a datasource variable every target refers to."""
        uids = [d.uid for d in dashboards.DASHBOARDS]
        assert len(set(uids)) == len(uids) == 4
        for name, text in dashboards.rendered().items():
            doc = json.loads(text)
            assert name == f"{doc['uid']}.json"
            assert [v["name"] for v in doc["templating"]["list"]] == ["datasource"]
            for panel in doc["panels"]:
                assert panel["datasource"]["uid"] == "${datasource}"
                assert panel["targets"], panel["title"]
                assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])

    def test_every_dashboard_is_explained_in_the_operations_guide(self) -> None:
        """docs/operations.md names every dashboard uid."""
        text = OPERATIONS.read_text(encoding="utf-8")
        assert all(d.uid in text for d in dashboards.DASHBOARDS)


class TestAlertRules:
    def test_promtool_check_rules_passes(self) -> None:
        """promtool accepts the rule file."""
        done = subprocess.run(
            [str(require("promtool")), "check", "rules", str(ALERTS)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def test_promtool_rule_unit_tests_pass(self) -> None:
        """Alerts fire on the synthetic series of alerts_test.yml and stay quiet otherwise."""
        done = subprocess.run(
            [str(require("promtool")), "test", "rules", ALERT_TESTS.name],
            capture_output=True,
            text=True,
            check=False,
            cwd=ALERT_TESTS.parent,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def test_every_alert_has_a_runbook_section(self) -> None:
        """Each alert's runbook_url points at a heading of docs/operations.md."""
        anchors = _anchors(OPERATIONS.read_text(encoding="utf-8"))
        rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
        assert len(rules) >= 10
        for rule in rules:
            url = rule["annotations"]["runbook_url"]
            assert url == f"docs/operations.md#{rule['alert'].lower()}"
            assert rule["alert"].lower() in anchors, rule["alert"]
