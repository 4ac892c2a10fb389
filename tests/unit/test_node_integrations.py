"""Change feed, API clients, a system's body fetch and derived data through the node's API."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.node import clients, events
from broker.node.api import create_app
from broker.node.service import Node
from broker.node.store import MIGRATIONS, Store
from broker.pki.dev import DevFederation

from .node_world import World, example, world_at

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def draft(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "to": ["nl.politie"],
        "type": "request.assistance",
        "purpose": "investigation",
        "handling": "H2",
        "tlp": "AMBER",
        "legal_basis": "Council Framework Decision 2006/960/JHA",
        "body": example("request.assistance"),
        "due": "2026-12-15",
    }
    value.update(overrides)
    return value


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


Client = TestClient[Any, Any]
Scenario = Callable[[World, Client, Client], Awaitable[None]]


def serve(world: World, scenario: Scenario) -> None:
    """Run ``scenario`` with API clients for de.lka-berlin and nl.politie."""
    de, nl = world.node("de.lka-berlin"), world.node("nl.politie")

    def context(node: Node) -> Callable[[], Any]:
        @asynccontextmanager
        async def lifecycle() -> AsyncIterator[Node]:
            yield node

        return lifecycle

    async def run() -> None:
        async with (
            TestClient(TestServer(create_app(context(de), token=TOKEN))) as de_client,
            TestClient(TestServer(create_app(context(nl), token=TOKEN))) as nl_client,
        ):
            await scenario(world, de_client, nl_client)

    asyncio.run(run())


async def send(de: Client, w: World, **overrides: Any) -> str:
    response = await de.post("/v1/messages", json=draft(**overrides), headers=AUTH)
    assert response.status == 201, await response.text()
    await w.pump()
    return str((await response.json())["message_id"])


async def add_client(node: Client, client_id: str, *scopes: str) -> dict[str, str]:
    response = await node.post(
        "/v1/clients",
        json={
            "client_id": client_id,
            "system": "CMS Synthetic",
            "purpose": "case import",
            "scopes": list(scopes),
        },
        headers=AUTH,
    )
    assert response.status == 201, await response.text()
    token = (await response.json())["token"]
    return {"Authorization": f"Bearer {token}"}


def audit_rows(node: Node, operation: str) -> list[sqlite3.Row]:
    return node.store.query(
        lambda db: db.execute(
            "SELECT actor, detail, peer, justification, message_id FROM audit "
            "WHERE operation = ? ORDER BY seq",
            (operation,),
        ).fetchall()
    )


class TestFeed:
    def test_events_of_a_send_on_both_sides(self, world: World) -> None:
        """A send gives the sender outbox.stored, outbox.acknowledged and evidence.received,
        and the recipient message.received carrying header fields but no body."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            message_id = await send(de, w)
            mine = await (await de.get("/v1/events", headers=AUTH)).json()
            assert [(e["type"], e["message_id"]) for e in mine["events"]] == [
                ("outbox.stored", message_id),
                ("outbox.acknowledged", message_id),
                ("evidence.received", message_id),
            ]
            assert [e["seq"] for e in mine["events"]] == [1, 2, 3]
            assert mine["events"][2]["data"]["kind"] == "delivered"
            theirs = await (await nl.get("/v1/events", headers=AUTH)).json()
            (received,) = theirs["events"]
            assert received["type"] == "message.received"
            assert received["data"]["header"]["purpose"] == "investigation"
            assert "body" not in received["data"]
            assert theirs["next"] == received["seq"]

        serve(world, scenario)

    def test_cursor_paging_returns_each_event_once_in_order(self, world: World) -> None:
        """Paging with after/limit walks the whole feed once, oldest first, without gaps."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            for _ in range(4):
                await send(de, w)
            seen: list[int] = []
            after = 0
            while True:
                page = await (
                    await de.get(f"/v1/events?after={after}&limit=5", headers=AUTH)
                ).json()
                if not page["events"]:
                    break
                seen.extend(e["seq"] for e in page["events"])
                after = page["next"]
            assert seen == list(range(1, 13))
            filtered = await (
                await de.get("/v1/events?types=evidence.received", headers=AUTH)
            ).json()
            assert [e["type"] for e in filtered["events"]] == ["evidence.received"] * 4
            assert filtered["next"] == 12

        serve(world, scenario)

    def test_bad_parameters_and_expired_cursor(self, world: World) -> None:
        """An unknown type or bad limit is a 400; a cursor before purged events is a 410."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            await send(de, w)
            bad = await de.get("/v1/events?types=message.eaten", headers=AUTH)
            assert bad.status == 400
            assert (await de.get("/v1/events?limit=0", headers=AUTH)).status == 400
            node = w.nodes["de.lka-berlin"]
            later = w.clock.now + timedelta(days=events.DEFAULT_RETENTION_DAYS + 1)
            purged = events.purge(node.store, now=later, retention_days=30)
            assert purged == 3
            gone = await de.get("/v1/events?after=0", headers=AUTH)
            assert gone.status == 410
            assert (await gone.json())["error"]["reason"] == "cursor_expired"
            assert (await de.get("/v1/events?after=3", headers=AUTH)).status == 200

        serve(world, scenario)

    def test_stream_resumes_from_last_event_id(self, world: World) -> None:
        """The server-sent-events stream sends every event after Last-Event-ID, with its id."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            await send(de, w)
            await send(de, w)
            headers = {**AUTH, "Last-Event-ID": "4"}
            response = await de.get("/v1/events/stream", headers=headers)
            assert response.status == 200
            ids: list[int] = []
            while len(ids) < 2:
                line = (await response.content.readline()).decode()
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
            assert ids == [5, 6]
            await send(de, w)
            while len(ids) < 5:
                line = (await response.content.readline()).decode()
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
            assert ids == [5, 6, 7, 8, 9]
            response.close()

        serve(world, scenario)

    def test_event_numbers_roll_back_with_their_change(self, tmp_path: Path) -> None:
        """A change that rolls back takes its event number with it: the feed has no gap."""
        with Store(tmp_path / "s.sqlite") as store:
            assert store.schema_version == len(MIGRATIONS)

            def failing_write() -> None:
                with store.transaction() as db:
                    db.execute(
                        "INSERT INTO message_marks (message_id, mark, by_message_id, reason, at) "
                        "VALUES ('m1', 'corrected', 'c1', 'typo', '2026-11-28T12:00:00Z')"
                    )
                    raise RuntimeError("fails after the write")

            with pytest.raises(RuntimeError):
                failing_write()
            with store.transaction() as db:
                db.execute(
                    "INSERT INTO message_marks (message_id, mark, by_message_id, reason, at) "
                    "VALUES ('m2', 'withdrawn', 'w1', 'wrong', '2026-11-28T12:00:00Z')"
                )
            found = store.events_after(0, limit=10)
            assert [(e.seq, e.type, e.message_id) for e in found] == [
                (1, "message.withdrawn", "m2")
            ]


class TestClients:
    def test_scoped_client_reads_feed_but_not_inbox(self, world: World) -> None:
        """A client with only 'events' reads the feed; the inbox is a 403 with an audit entry."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            feed_only = await add_client(nl, "feed-reader", "events")
            assert (await nl.get("/v1/events", headers=feed_only)).status == 200
            refused = await nl.get("/v1/inbox", headers=feed_only)
            assert refused.status == 403
            assert (await refused.json())["error"]["reason"] == "forbidden"
            (row,) = audit_rows(w.nodes["nl.politie"], "refusal")
            assert row["actor"] == "client:feed-reader"
            assert "GET /v1/inbox" in row["detail"]

        serve(world, scenario)

    def test_revoked_and_unknown_tokens_are_401_and_audited(self, world: World) -> None:
        """A revoked client's token and a forged one get 401, each with an audit entry."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            cms = await add_client(nl, "cms", "read")
            assert (await nl.get("/v1/inbox", headers=cms)).status == 200
            revoked = await nl.post("/v1/clients/cms/revoke", headers=AUTH)
            assert revoked.status == 200
            assert (await nl.get("/v1/inbox", headers=cms)).status == 401
            forged = {"Authorization": "Bearer cbc_0123456789abcdef_" + "A" * 43}
            assert (await nl.get("/v1/inbox", headers=forged)).status == 401
            rows = audit_rows(w.nodes["nl.politie"], "refusal")
            assert len(rows) == 2
            assert "client cms is revoked" in rows[0]["detail"]
            assert rows[1]["actor"] == "secret:0123456789abcdef"
            listed = await (await nl.get("/v1/clients", headers=AUTH)).json()
            assert listed["clients"][0]["revoked_at"] is not None
            assert "hash" not in str(listed)

        serve(world, scenario)

    def test_rotation_keeps_the_old_secret_for_the_overlap(self, world: World) -> None:
        """After a rotation both secrets work until the overlap ends; then only the new one."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            old = await add_client(nl, "cms", "read")
            rotated = await nl.post(
                "/v1/clients/cms/rotate", json={"overlap_seconds": 3600}, headers=AUTH
            )
            assert rotated.status == 201
            new = {"Authorization": f"Bearer {(await rotated.json())['token']}"}
            assert (await nl.get("/v1/inbox", headers=old)).status == 200
            assert (await nl.get("/v1/inbox", headers=new)).status == 200
            w.clock.advance(timedelta(seconds=3601))
            assert (await nl.get("/v1/inbox", headers=old)).status == 401
            assert (await nl.get("/v1/inbox", headers=new)).status == 200

        serve(world, scenario)

    def test_system_fetch_is_a_transfer_and_person_read_sends_evidence(self, world: World) -> None:
        """A case system fetching a body is audited as a transfer with its purpose and sends
        no read evidence; POST .../read (person, purpose) logs a consultation and does."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            message_id = await send(de, w)
            cms = await add_client(nl, "cms", "read")
            fetched = await nl.get(f"/v1/messages/{message_id}", headers=cms)
            assert fetched.status == 200
            assert (await fetched.json())["body"] == example("request.assistance")
            await w.pump()
            trail = await (await de.get(f"/v1/messages/{message_id}/evidence", headers=AUTH)).json()
            assert [e["kind"] for e in trail["evidence"]] == ["delivered"]
            (transfer,) = audit_rows(w.nodes["nl.politie"], "transfer")
            assert transfer["peer"] == "system:CMS Synthetic"
            assert transfer["justification"] == "case import"
            assert audit_rows(w.nodes["nl.politie"], "consultation") == []
            read = await nl.post(
                f"/v1/messages/{message_id}/read",
                json={"person": "officer-17", "purpose": "preparing the interview"},
                headers=cms,
            )
            assert read.status == 200, await read.text()
            assert (await read.json())["read_by"] == "officer-17"
            await w.pump()
            trail = await (await de.get(f"/v1/messages/{message_id}/evidence", headers=AUTH)).json()
            assert [e["kind"] for e in trail["evidence"]] == ["delivered", "read"]
            (consulted,) = audit_rows(w.nodes["nl.politie"], "consultation")
            assert consulted["actor"] == "officer-17"

        serve(world, scenario)

    def test_bad_client_requests(self, tmp_path: Path) -> None:
        """A reserved or malformed id, an unknown scope and a second add of an id are refused."""
        from broker.node.errors import BadRequest, NotFound

        now = datetime.fromisoformat("2026-11-28T12:00:00+00:00")
        with Store(tmp_path / "s.sqlite") as store:
            for client_id, scopes in (("node", ["read"]), ("Bad Id", ["read"]), ("x", ["root"])):
                with pytest.raises(BadRequest):
                    clients.add(
                        store, client_id=client_id, system="s", purpose="p", scopes=scopes, now=now
                    )
            issued = clients.add(
                store, client_id="x", system="s", purpose="p", scopes=["read"], now=now
            )
            assert clients.authenticate(store, issued.token, now=now).scopes == {"read"}
            with pytest.raises(BadRequest):
                clients.add(store, client_id="x", system="s", purpose="p", scopes=["read"], now=now)
            with pytest.raises(NotFound):
                clients.rotate(store, "nobody", now=now, overlap=timedelta(0))
            raw = store.query(
                lambda db: db.execute("SELECT hash FROM api_client_secrets").fetchall()
            )
            assert issued.token.encode() not in bytes(raw[0][0])


class TestDerived:
    def test_derived_data_excluded_by_the_source_is_refused(self, world: World) -> None:
        """A message derived from one whose marking excludes UA is refused for ua.npu with the
        onward-transfer rule; to another country it goes, carrying derived_from."""
        world.node("ua.npu")

        async def scenario(w: World, de: Client, nl: Client) -> None:
            source = await send(de, w, onward_allowed=True, onward_exclude=["UA"])
            refused = await nl.post(
                "/v1/messages", json=draft(to=["ua.npu"], derived_from=source), headers=AUTH
            )
            assert refused.status == 403
            error = (await refused.json())["error"]
            assert error["rule_id"] == "builtin.onward-transfer"
            assert "excluded UA" in error["detail"]
            allowed = await nl.post(
                "/v1/messages",
                json=draft(to=["de.lka-berlin"], derived_from=source),
                headers=AUTH,
            )
            assert allowed.status == 201, await allowed.text()
            sent = w.nodes["nl.politie"].store.outbox_message((await allowed.json())["message_id"])
            assert sent is not None
            assert sent.header["derived_from"] == source

        serve(world, scenario)

    def test_source_without_onward_transfer_or_unknown_is_refused(self, world: World) -> None:
        """A source that did not allow onward transfer, or that the node does not hold, refuses
        a derived send abroad (fail closed)."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            source = await send(de, w)
            for source_id in (source, "00000000-0000-4000-8000-00000000ffff"):
                refused = await nl.post(
                    "/v1/messages",
                    json=draft(to=["de.lka-berlin"], derived_from=source_id),
                    headers=AUTH,
                )
                assert refused.status == 403
                assert (await refused.json())["error"]["rule_id"] == "builtin.onward-transfer"

        serve(world, scenario)


class TestRefusalAuditLimit:
    def test_flood_of_bad_tokens_is_audited_up_to_a_rate_then_summarised(
        self, world: World
    ) -> None:
        """Beyond the per-source burst, 401s are counted, not audited one by one; one summary
        audit entry per source and interval says how many; every request still gets 401."""
        from prometheus_client import CollectorRegistry

        from broker.metrics import NodeMetrics
        from broker.node.api_integrations import REFUSALS_KEY
        from broker.node.refusal_limit import RefusalLimiter

        nl = world.node("nl.politie")
        registry = CollectorRegistry()
        metrics = NodeMetrics(registry, country="NL")
        clock = {"now": 0.0}

        @asynccontextmanager
        async def lifecycle() -> AsyncIterator[Node]:
            yield nl

        app = create_app(lifecycle, token=TOKEN, registry=registry, metrics=metrics)
        app[REFUSALS_KEY] = RefusalLimiter(
            burst=3,
            interval=60,
            clock=lambda: clock["now"],
            on_suppressed=metrics.api_refusals_suppressed.inc,
        )
        forged = {"Authorization": "Bearer cbc_0123456789abcdef_" + "A" * 43}

        async def run() -> None:
            async with TestClient(TestServer(app)) as client:
                for _ in range(20):
                    assert (await client.get("/v1/inbox", headers=forged)).status == 401
                assert len(audit_rows(nl, "refusal")) == 3
                clock["now"] = 61.0
                assert (await client.get("/v1/inbox", headers=forged)).status == 401
                rows = audit_rows(nl, "refusal")
                assert len(rows) == 5  # 3 audited, the interval's summary, the new one
                assert rows[3]["actor"] == "source:127.0.0.1"
                assert "17 further refusals" in rows[3]["detail"]
                assert rows[4]["actor"] == "secret:0123456789abcdef"
                for _ in range(5):  # 2 more audited in the new interval, then 3 counted
                    await client.get("/v1/inbox", headers=forged)
            # Stopping the API summarises what was still only counted.
            rows = audit_rows(nl, "refusal")
            assert len(rows) == 8
            assert "3 further refusals" in rows[7]["detail"]

        asyncio.run(run())
        assert registry.get_sample_value("casebridge_api_refusals_suppressed_total") == 20
