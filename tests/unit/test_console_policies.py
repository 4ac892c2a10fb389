"""The console's policy preview and Directory with a partner country's published policy held
by the node: the destination's ingress rule, reason and redactions shown per recipient."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.console.app import create_console_app
from broker.console.settings import ConsoleSettings
from broker.core.policy import Federation, Policy, parse_policy
from broker.node.policy_engine import EnginePolicy
from broker.pki.dev import DevFederation

from .node_world import REGISTRY, World, request_draft, world_at
from .test_console import FAST, Client, people, sign_in

DE_POLICY = b"""country: DE
version: 1
rules:
  - id: de.out.test-all
    reason: Synthetic test rule, everything may leave for NL.
    direction: egress
    decision: allow
"""
# Published by NL: what its border will decide on arrival.
NL_POLICY = b"""country: NL
version: 7
rules:
  - id: nl.in.test-no-assistance-to-police
    reason: Requests for assistance reach the police only through the national desk.
    direction: ingress
    type: request.assistance
    recipient_agency: nl.politie
    decision: deny
  - id: nl.in.test-rest
    reason: Everything else is welcome, without the sender's case reference.
    direction: ingress
    decision: allow
    redact:
      - drop: /case_ref
"""


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def form(token: str, to: list[str]) -> list[tuple[str, str]]:
    fields = {
        "csrf": token,
        "type": "request.assistance",
        "op": "preview",
        "purpose": "investigation",
        "legal_basis": "Council Framework Decision 2006/960/JHA",
        "handling": "H2",
        "tlp": "AMBER",
        "due": "2026-12-15",
        "b/case_ref": "TEST-REF-1",
        "b/title": "Workers at a farm",
        "b/offences": "forced_labour",
        "b/facts": "Workers report withheld passports.",
        "n/requested_measures": "1",
        "b/requested_measures/0/measure": "identify_person",
        "b/requested_measures/0/description": "Identify the farm manager.",
        "b/due_date": "2026-12-15",
        "b/urgency": "routine",
    }
    return [*fields.items(), *(("to", a) for a in to)]


def run_de(world: World, peers: dict[str, Policy], scenario: Any) -> None:
    """Serve the DE console over a DE node whose pre-flight consults ``peers``."""
    engine = EnginePolicy(
        policy=lambda: parse_policy(DE_POLICY),
        federation=lambda: Federation.from_directory(world.fed.directory),
        schemas=REGISTRY,
        original_onward=lambda _m: None,
        peer_policies=lambda: peers,
    )
    de = world.node("de.lka-berlin", preflight=engine.preflight)
    people(de, world)
    app = create_console_app(de, ConsoleSettings(), hasher=FAST, peer_policies=lambda: peers)

    async def run() -> None:
        async with TestClient(TestServer(app)) as client:
            await scenario(client)

    asyncio.run(run())


def row(html: str, agency: str) -> str:
    start = html.index(f'data-recipient="{agency}"')
    return html[start : html.index("</tr>", start)]


class TestPreviewWithPeerPolicy:
    def test_peer_policy_denying_a_type_shows_its_rule_and_reason(self, world: World) -> None:
        """NL's published ingress deny shows in the preview as NL's rule, ours as allowed."""
        peers = {"NL": parse_policy(NL_POLICY)}

        async def scenario(de: Client) -> None:
            token = await sign_in(de, "olga")
            html = await (await de.post("/compose", data=form(token, ["nl.politie"]))).text()
            politie = row(html, "nl.politie")
            assert '<tr class="denied" data-recipient="nl.politie">' in html
            theirs = politie[politie.index('class="theirs"') :]
            assert "nl.in.test-no-assistance-to-police" in theirs
            assert "through the national desk" in theirs
            assert "refuses" in theirs
            ours = politie[politie.index('class="ours"') : politie.index('class="theirs"')]
            assert "de.out.test-all" in ours
            assert "allowed" in ours
            # Sending to the denied recipient is refused, as with our own denials.
            sent = await de.post(
                "/compose",
                data=[
                    (k, v) if k != "op" else ("op", "send") for k, v in form(token, ["nl.politie"])
                ],
                allow_redirects=False,
            )
            assert sent.status != 303

        run_de(world, peers, scenario)

    def test_peer_policy_redaction_is_shown_as_theirs(self, world: World) -> None:
        """An NL rule that allows but drops a field names that field under NL's decision."""
        peers = {"NL": parse_policy(NL_POLICY)}

        async def scenario(de: Client) -> None:
            token = await sign_in(de, "olga")
            html = await (
                await de.post("/compose", data=form(token, ["nl.arbeidsinspectie", "nl.politie"]))
            ).text()
            inspectie = row(html, "nl.arbeidsinspectie")
            assert '<strong class="ok">' in inspectie
            theirs = inspectie[inspectie.index('class="theirs"') :]
            assert "nl.in.test-rest" in theirs
            assert "/case_ref" in theirs
            ours = inspectie[inspectie.index('class="ours"') : inspectie.index('class="theirs"')]
            assert "/case_ref" not in ours

        run_de(world, peers, scenario)

    def test_without_a_published_policy_the_preview_says_the_border_decides(
        self, world: World
    ) -> None:
        """No NL policy held: ours decides the preview and NL is marked as not predicted."""

        async def scenario(de: Client) -> None:
            token = await sign_in(de, "olga")
            html = await (await de.post("/compose", data=form(token, ["nl.politie"]))).text()
            politie = row(html, "nl.politie")
            assert '<strong class="ok">' in politie
            assert "no published policy held here" in politie

        run_de(world, {}, scenario)


class TestDirectoryRules:
    def test_directory_shows_each_published_rule_in_plain_words(self, world: World) -> None:
        """The Directory lists NL's rules: id, what each allows/refuses/removes, and why."""
        peers = {"NL": parse_policy(NL_POLICY)}

        async def scenario(de: Client) -> None:
            await sign_in(de, "olga")
            html = await (await de.get("/directory")).text()
            deny = row_of_rule(html, "nl.in.test-no-assistance-to-police")
            assert "Refuses messages coming into NL from any country" in deny
            assert "to nl.politie" in deny
            assert "national desk" in deny
            allow = row_of_rule(html, "nl.in.test-rest")
            assert "Allows messages coming into NL" in allow
            assert "removes /case_ref" in allow
            assert "(version 7)" in html
            # Countries without a held policy say so rather than showing nothing.
            assert "holds no published policy of this country" in html

        run_de(world, peers, scenario)


def row_of_rule(html: str, rule_id: str) -> str:
    start = html.index(f'data-rule="{rule_id}"')
    return html[start : html.index("</tr>", start)]


def test_node_explain_returns_every_decision_on_a_peer_denial(world: World) -> None:
    """explain denied by NL's published rule names it and still lists our allow and theirs."""
    peers = {"NL": parse_policy(NL_POLICY)}
    engine = EnginePolicy(
        policy=lambda: parse_policy(DE_POLICY),
        federation=lambda: Federation.from_directory(world.fed.directory),
        schemas=REGISTRY,
        original_onward=lambda _m: None,
        peer_policies=lambda: peers,
    )
    de = world.node("de.lka-berlin", preflight=engine.preflight)
    found = de.explain(request_draft(to=("nl.politie",)))
    assert found["allowed"] is False
    assert found["rule_id"] == "nl.in.test-no-assistance-to-police"
    verdicts = {(d["rule_id"], d["verdict"], d["peer"]) for d in found["decisions"]}
    assert verdicts == {
        ("de.out.test-all", "allow", "NL"),
        ("nl.in.test-no-assistance-to-police", "deny", "DE"),
    }
