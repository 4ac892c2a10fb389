"""`casebridge clients`, `webhooks`, `events` and `send --derived-from` against a served node."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.cli import main
from broker.errors import ConfigError
from broker.node.events import retention_days

from .node_world import example
from .test_node_cli import TOKEN, node_url, printed_json, world

__all__ = ["node_url", "world"]


def cli(url: str, *args: str) -> list[str]:
    return [*args, "--node", url, "--token", TOKEN, "--json"]


def run(url: str, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    assert main(cli(url, *args)) == 0
    return printed_json(capsys.readouterr().out)


class TestCommands:
    def test_clients_lifecycle(self, node_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        """clients add prints a token once; list shows it without; rotate and revoke work."""
        added = run(
            node_url,
            capsys,
            "clients",
            "add",
            "cms",
            "--system",
            "CMS",
            "--purpose",
            "import",
            "--scope",
            "read",
            "--scope",
            "events",
        )
        assert added["token"].startswith("cbc_")
        listed = run(node_url, capsys, "clients", "list")
        assert listed["clients"][0]["scopes"] == ["read", "events"]
        assert added["token"] not in json.dumps(listed)
        rotated = run(node_url, capsys, "clients", "rotate", "cms", "--overlap", "0")
        assert rotated["token"] != added["token"]
        assert run(node_url, capsys, "clients", "revoke", "cms")["revoked"] is True

    def test_webhooks_and_events(self, node_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        """webhooks add/list/replay/remove and events print the node's answers."""
        created = run(
            node_url,
            capsys,
            "webhooks",
            "add",
            "https://cms.example/hook",
            "--system",
            "CMS",
            "--event",
            "message.received",
        )
        assert created["secret"].startswith("whsec_")
        listed = run(node_url, capsys, "webhooks", "list")
        assert listed["subscriptions"][0]["event_types"] == ["message.received"]
        assert (
            run(node_url, capsys, "webhooks", "replay", created["subscription_id"])["queued"] == 0
        )
        run(node_url, capsys, "webhooks", "remove", created["subscription_id"])
        body = json.dumps(example("request.assistance"))
        sent = run(
            node_url,
            capsys,
            "send",
            "--to",
            "nl.politie",
            "--type",
            "request.assistance",
            "--purpose",
            "investigation",
            "--handling",
            "H2",
            "--legal-basis",
            "FD 2006/960/JHA",
            "--due",
            "2026-12-15",
            "--body",
            body,
            "--onward-allowed",
            "--onward-exclude",
            "UA",
        )
        page = run(node_url, capsys, "events", "--type", "outbox.stored")
        assert [e["message_id"] for e in page["events"]] == [sent["message_id"]]

    def test_derived_send_refused_prints_rule(
        self,
        node_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """send --derived-from an unknown source exits 2 naming builtin.onward-transfer."""
        code = main(
            [
                "send",
                "--to",
                "nl.politie",
                "--type",
                "request.assistance",
                "--purpose",
                "investigation",
                "--handling",
                "H2",
                "--legal-basis",
                "FD 2006/960/JHA",
                "--due",
                "2026-12-15",
                "--body",
                json.dumps(example("request.assistance")),
                "--derived-from",
                "00000000-0000-4000-8000-0000000000aa",
                "--node",
                node_url,
                "--token",
                TOKEN,
            ]
        )
        assert code == 2
        assert "builtin.onward-transfer" in capsys.readouterr().err


class TestSettings:
    def test_event_retention_setting(self) -> None:
        """events.retention_days defaults to 30 and is bounded; other members are refused."""
        assert retention_days(None) == 30
        assert retention_days({"retention_days": 7}) == 7
        for raw in ({"retention_days": 0}, {"days": 7}, {"retention_days": True}, "30"):
            with pytest.raises(ConfigError):
                retention_days(raw)
