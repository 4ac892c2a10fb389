"""Both SDKs (``broker.sdk`` and its async twin) on the feed, webhooks, clients, derived data."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.node import webhooks
from broker.pki.dev import DevFederation
from broker.sdk import NodeClient, NodeError, WebhookVerificationError, verify_webhook
from broker.sdk_async import AsyncNodeClient

from .node_world import world_at
from .test_sdk import TOKEN, Served, request_draft


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


class TestSync:
    def test_feed_pages_and_follow(self, served: Served) -> None:
        """`events` pages the feed by cursor; `follow` yields each event once, in order."""
        de = served.client("de.lka-berlin")
        for _ in range(2):
            de.send(request_draft())
            served.pump()
        page = de.events(after=0, limit=4)
        assert [e["seq"] for e in page["events"]] == [1, 2, 3, 4]
        rest = de.events(after=page["next"])
        assert [e["seq"] for e in rest["events"]] == [5, 6]
        followed = list(itertools.islice(de.follow(after=2), 4))
        assert [e["seq"] for e in followed] == [3, 4, 5, 6]
        only = de.events(types=["evidence.received"])
        assert {e["type"] for e in only["events"]} == {"evidence.received"}

    def test_clients_read_report_and_derived_refusal(self, served: Served) -> None:
        """A client issued through the SDK fetches without evidence, reports a reading that
        sends it, and a derived send its source excludes raises with the rule."""
        de, nl = served.client("de.lka-berlin"), served.client("nl.politie")
        sent = de.send(request_draft(onward_allowed=True, onward_exclude=["UA"]))
        served.pump()
        issued = nl.add_client("cms", system="CMS Synthetic", purpose="import", scopes=["read"])
        cms = NodeClient(nl.base_url, issued["token"], timeout=5)
        assert cms.show(sent["message_id"])["body"] == request_draft()["body"]
        report = cms.mark_read(sent["message_id"], person="officer-3", purpose="triage")
        assert report["read_by"] == "officer-3"
        served.pump()
        kinds = [e["kind"] for e in de.evidence(sent["message_id"])["evidence"]]
        assert kinds == ["delivered", "read"]
        rotated = nl.rotate_client("cms", overlap_seconds=0)
        with pytest.raises(NodeError) as old:
            cms.inbox()
        assert old.value.status == 401
        assert NodeClient(nl.base_url, rotated["token"], timeout=5).inbox()
        nl.revoke_client("cms")
        assert nl.clients()[0]["revoked_at"] is not None
        with pytest.raises(NodeError) as refused:
            nl.send(request_draft(to=["ua.npu"], derived_from=sent["message_id"]))
        assert refused.value.rule_id == "builtin.onward-transfer"

    def test_webhook_management(self, served: Served) -> None:
        """Subscriptions are created (secret shown once), listed without it, replayed, removed."""
        nl = served.client("nl.politie")
        created = nl.add_webhook(
            "https://cms.example/hook", system="cms", event_types=["message.received"]
        )
        assert created["secret"].startswith("whsec_")
        (listed,) = nl.webhooks()
        assert "secret" not in listed
        assert nl.replay_webhook(created["subscription_id"]) == 0
        assert nl.webhook_deliveries(created["subscription_id"]) == []
        nl.remove_webhook(created["subscription_id"])
        assert nl.webhooks() == []
        with pytest.raises(NodeError) as missing:
            nl.remove_webhook(created["subscription_id"])
        assert missing.value.status == 404


class TestAsync:
    def test_stream_resumes_and_twin_calls(self, served: Served) -> None:
        """The async client streams the feed from a cursor, pages it, and manages clients and
        webhooks like the synchronous one."""
        de = served.client("de.lka-berlin")
        de.send(request_draft())
        served.pump()

        async def run() -> None:
            async with AsyncNodeClient(served.urls["de.lka-berlin"], TOKEN) as node:
                page = await node.events(after=0)
                assert [e["seq"] for e in page["events"]] == [1, 2, 3]
                stream = node.stream(after=1)
                seen = [(await anext(stream))["seq"] for _ in range(2)]
                assert seen == [2, 3]
                await asyncio.to_thread(de.send, request_draft())
                await asyncio.to_thread(served.pump)
                seen += [(await anext(stream))["seq"] for _ in range(3)]
                assert seen == [2, 3, 4, 5, 6]
                await stream.aclose()
                issued = await node.add_client(
                    "bi", system="BI", purpose="statistics", scopes=["events"]
                )
                assert [c["client_id"] for c in await node.clients()] == ["bi"]
                async with AsyncNodeClient(node.base_url, issued["token"]) as bi:
                    assert (await bi.events(after=5))["events"][0]["seq"] == 6
                    with pytest.raises(NodeError) as forbidden:
                        await bi.inbox()
                    assert forbidden.value.reason == "forbidden"
                hook = await node.add_webhook("http://127.0.0.1:9/hook", system="cms")
                assert [w["subscription_id"] for w in await node.webhooks()] == [
                    hook["subscription_id"]
                ]
                await node.remove_webhook(hook["subscription_id"])

        asyncio.run(run())

    def test_async_send_and_read_report(self, served: Served) -> None:
        """The async client sends a derived draft and reports a reading."""
        de = served.client("de.lka-berlin")
        source = de.send(request_draft(onward_allowed=True))
        served.pump()

        async def run() -> None:
            async with AsyncNodeClient(served.urls["nl.politie"], TOKEN) as nl:
                derived = await nl.send(
                    request_draft(to=["de.lka-berlin"], derived_from=source["message_id"])
                )
                assert derived["state"] == "acknowledged"
                report = await nl.mark_read(source["message_id"], person="p-1", purpose="triage")
                assert report["read_at"] is not None
                with pytest.raises(NodeError) as refused:
                    await nl.send(
                        request_draft(
                            to=["ua.npu"], derived_from="00000000-0000-4000-8000-0000000000ff"
                        )
                    )
                assert refused.value.status == 403
                assert refused.value.rule_id == "builtin.onward-transfer"

        asyncio.run(run())


class TestVerifyWebhook:
    def test_node_signature_verifies_and_forgeries_do_not(self) -> None:
        """A delivery signed by the node verifies; another secret, an altered body, a stale
        timestamp or a missing header raise WebhookVerificationError."""
        secret = webhooks.new_secret()
        event = {"seq": 7, "type": "message.received", "at": "x", "message_id": None, "data": {}}
        body = json.dumps({"type": "message.received", "timestamp": "x", "data": event}).encode()
        now = datetime.now(UTC)
        headers = webhooks.sign(secret, msg_id="evt_f_7", timestamp=now, body=body)
        assert verify_webhook(secret, body, headers)["seq"] == 7
        with pytest.raises(WebhookVerificationError):
            verify_webhook(webhooks.new_secret(), body, headers)
        with pytest.raises(WebhookVerificationError):
            verify_webhook(secret, body.replace(b"7", b"8"), headers)
        with pytest.raises(WebhookVerificationError):
            verify_webhook(secret, body, headers, now=time.time() + 600)
        with pytest.raises(WebhookVerificationError):
            verify_webhook(secret, body, {k: v for k, v in headers.items() if k != "webhook-id"})

    def test_mangled_secret_and_non_event_body_are_verification_errors(self) -> None:
        """A secret that is not whsec_ base64 of 16+ bytes, and a correctly signed body that is
        not a webhook event, raise WebhookVerificationError (never a silent wrong key, never
        a KeyError or ValueError)."""
        secret = webhooks.new_secret()
        now = datetime.now(UTC)
        for bad in ("whsec_!!not-base64!!", "whsec_", "not-a-secret", "whsec_" + "QUJD"):
            body = b"{}"
            headers = webhooks.sign(secret, msg_id="evt_f_1", timestamp=now, body=body)
            with pytest.raises(WebhookVerificationError, match="secret"):
                verify_webhook(bad, body, headers)
        for body in (b"[]", b'{"type": "message.received"}', b'{"data": {}}', b"not json"):
            headers = webhooks.sign(secret, msg_id="evt_f_2", timestamp=now, body=body)
            with pytest.raises(WebhookVerificationError):
                verify_webhook(secret, body, headers)
