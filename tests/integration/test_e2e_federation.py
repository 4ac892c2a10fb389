"""End to end on real processes: nats-servers, border gateways and agency nodes (HTTP API).

What the issue "The federation" asks to prove about faults: store-and-forward across a
destination or hub outage, no loss and no double delivery through ``kill -9`` of a country
server, a gateway and the receiving node in a 2,000-message run, refusal (with evidence naming
the reason) of tampered, replayed and revoked-sender messages, and policy denials that never
reach the destination. "Delivered to the application" is the receiving node's inbox;
"acknowledged to a sender" is its outbox state ``acknowledged`` (or, for messages published
by the test itself, the JetStream ack of the submit).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from broker.cli.focal import NodeCallError
from broker.core import wire as s
from broker.federation.launcher import ProcessSpec, free_port
from broker.node.store import Store
from broker.sdk import NodeClient, NodeError
from tests.integration.e2e_helpers import (
    Running,
    Sealed,
    bulletin,
    example,
    request_de_ua,
    tamper,
    wait_until,
)

pytestmark = pytest.mark.integration

LKA: Final = "de.lka-berlin"
STA: Final = "de.sta-berlin"
FBS: Final = "de.fbs-berlin"
NPU: Final = "ua.npu"
DELIVERY: Final = 20.0  # seconds: one message across the federation takes well under one
# nats-server re-creates a stalled stream source only ~40 s after the hub is back (measured).
AFTER_HUB_OUTAGE: Final = 90.0


def _kinds(trail: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["kind"], e["actor"]) for e in trail}


@pytest.fixture(scope="module")
def shared(nats_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """DE + UA with both gateways and the LKA, FBS (no node policy) and NPU nodes running."""
    del nats_binary
    running = Running.start(
        tmp_path_factory.mktemp("e2e") / "fed", nodes=[LKA, FBS, NPU], no_policy=[FBS]
    )
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def fresh(nats_binary: Path, tmp_path: Path) -> Iterator[Running]:
    """A new DE + UA federation with the LKA and NPU nodes, which the test may break."""
    del nats_binary
    running = Running.start(tmp_path / "fed", nodes=[LKA, NPU])
    try:
        yield running
    finally:
        running.close()


def _send(fed: Running, sender: str, draft: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = fed.client(sender).call("POST", "/v1/messages", body=draft)
    return result


def _delivered(fed: Running, agency: str, message_id: str) -> None:
    wait_until(
        lambda: message_id in fed.inbox_ids(agency), DELIVERY, what=f"{message_id} at {agency}"
    )


def _barrier(fed: Running) -> None:
    """Send LKA -> NPU and wait for it: everything published on the path before is settled.

    The UA gateway and the NPU node each handle their stream in order, so once a later
    message is in the inbox, every earlier one has been decided.
    """
    _delivered(fed, NPU, _send(fed, LKA, bulletin([NPU]))["message_id"])


# ------------------------------------------------------------------------ happy path ---


class TestHappyPath:
    """DE police -> UA police through both borders, and the answer back."""

    def test_request_delivered_once_with_evidence_and_reply(self, shared: Running) -> None:
        """Delivered once; trail relay_accepted DE, UA, delivered NPU; the reply joins it."""
        sent = _send(shared, LKA, request_de_ua())
        assert sent["state"] == "acknowledged"
        assert sent["rule_id"] == "de.out.partner-police"
        request_id, conversation = sent["message_id"], sent["conversation"]
        _delivered(shared, NPU, request_id)
        inbox = shared.client(NPU).call("GET", "/v1/inbox", query={"conversation": conversation})
        assert [m["message_id"] for m in inbox["messages"]] == [request_id]
        assert inbox["messages"][0]["digest"] == sent["digest"]

        expected = {
            ("relay_accepted", "de.gateway"),
            ("relay_accepted", "ua.gateway"),
            ("delivered", NPU),
        }

        def complete() -> list[dict[str, Any]]:
            trail = shared.evidence(LKA, request_id)
            return trail if _kinds(trail) >= expected else []

        trail = wait_until(complete, DELIVERY, what="the evidence trail")
        assert _kinds(trail) == expected
        assert all(e["digest_matches"] for e in trail)
        assert all(e["reason"] is None for e in trail)

        reply_body = example("response.assistance") | {"request_id": request_id}
        reply = _send(
            shared,
            NPU,
            {
                "in_reply_to": request_id,
                "type": "response.assistance",
                "purpose": "investigation",
                "handling": "H2",
                "tlp": "AMBER",
                "body": reply_body,
            },
        )
        assert reply["conversation"] == conversation
        _delivered(shared, LKA, reply["message_id"])
        thread = shared.client(LKA).call("GET", f"/v1/threads/{conversation}")["messages"]
        # Sorted: the thread orders by second-resolution times, so the two may tie.
        assert sorted((m["direction"], m["message_id"]) for m in thread) == [
            ("received", reply["message_id"]),
            ("sent", request_id),
        ]
        (received,) = [m for m in thread if m["direction"] == "received"]
        assert received["in_reply_to"] == request_id
        assert shared.inbox_ids(NPU).count(request_id) == 1


# -------------------------------------------------------------------------- refusals ---


class TestTamperedAndReplayed:
    """Bytes that are not what the sender signed, or that were already delivered."""

    def test_tampered_on_the_wire_refused_by_destination_gateway(self, shared: Running) -> None:
        """A tampered copy in DE's OUT_UA: ua.gateway refuses digest_mismatch; inbox unchanged."""
        sent = _send(shared, LKA, bulletin([NPU]))
        message_id = sent["message_id"]
        _delivered(shared, NPU, message_id)
        forged = tamper(shared.wire_of("DE", s.out_stream("UA"), message_id))
        shared.publish("de.gateway", s.out_subject("DE", "UA"), [(f"{message_id}-x", forged)])

        def refused() -> list[dict[str, Any]]:
            trail = shared.evidence(LKA, message_id)
            return [e for e in trail if e["kind"] == "relay_rejected"]

        (evidence,) = wait_until(refused, DELIVERY, what="relay_rejected from ua.gateway")
        assert evidence["actor"] == "ua.gateway"
        assert evidence["reason"] == "digest_mismatch"
        assert evidence["digest_matches"] is False
        _barrier(shared)
        assert shared.inbox_ids(NPU).count(message_id) == 1
        # The gateway stopped it: the node never saw the forged bytes.
        assert not [r for r in shared.rejections(NPU) if r["claimed_message_id"] == message_id]

    def test_tampered_delivery_refused_by_node(self, shared: Running) -> None:
        """Forged bytes put straight on NPU's delivery subject: the node refuses, with evidence."""
        sent = _send(shared, LKA, bulletin([NPU]))
        message_id = sent["message_id"]
        _delivered(shared, NPU, message_id)
        forged = tamper(shared.wire_of("DE", s.out_stream("UA"), message_id))
        shared.publish("ua.gateway", s.deliver_subject(NPU), [(f"{message_id}-x:{NPU}", forged)])

        def rejected() -> list[dict[str, Any]]:
            return [e for e in shared.evidence(LKA, message_id) if e["kind"] == "rejected"]

        (evidence,) = wait_until(rejected, DELIVERY, what="rejected evidence from ua.npu")
        assert (evidence["actor"], evidence["reason"]) == (NPU, "digest_mismatch")
        assert evidence["digest_matches"] is False
        (refusal,) = [r for r in shared.rejections(NPU) if r["claimed_message_id"] == message_id]
        assert (refusal["reason"], refusal["claimed_sender"]) == ("digest_mismatch", LKA)
        assert shared.inbox_ids(NPU).count(message_id) == 1

    def test_replay_refused_by_node_and_deduplicated_at_border(self, shared: Running) -> None:
        """A delivered message published again is never delivered twice: a copy of the same
        bytes is acknowledged (no refusal: JetStream may store copies after a restart), its id
        sealed again with other bytes is refused as `replay` with evidence."""
        sent = _send(shared, LKA, bulletin([NPU]))
        message_id = sent["message_id"]
        _delivered(shared, NPU, message_id)
        original = shared.wire_of("DE", s.out_stream("UA"), message_id)

        # Through the border with a new Nats-Msg-Id: the UA gateway relays it again, and the
        # DELIVER stream's duplicate window drops it (same derived id) before the node.
        shared.publish("de.gateway", s.out_subject("DE", "UA"), [(f"{message_id}-again", original)])
        _barrier(shared)
        assert not [r for r in shared.rejections(NPU) if r["claimed_message_id"] == message_id]

        # Straight to the node with a new id (past any window): the node's own record
        # recognises the very bytes it accepted and acknowledges the copy.
        offset = shared.fed.log_file(f"node-{NPU}").stat().st_size
        shared.publish("ua.gateway", s.deliver_subject(NPU), [(f"{message_id}-copy", original)])
        wait_until(
            lambda: [
                e
                for e in shared.log_events(f"node-{NPU}", offset=offset)
                if e.get("event") == "duplicate_acknowledged"
            ],
            DELIVERY,
            what="the copy acknowledged by ua.npu",
        )
        assert not [r for r in shared.rejections(NPU) if r["claimed_message_id"] == message_id]

        # The same id sealed again by its sender (other bytes): the replay store refuses it.
        replayed = shared.seal_as(LKA, [NPU], example("bulletin"), id=message_id)
        shared.publish(
            "ua.gateway", s.deliver_subject(NPU), [(f"{message_id}-replay", replayed.wire)]
        )

        def rejected() -> list[dict[str, Any]]:
            return [e for e in shared.evidence(LKA, message_id) if e["kind"] == "rejected"]

        (evidence,) = wait_until(rejected, DELIVERY, what="rejected (replay) from ua.npu")
        assert (evidence["actor"], evidence["reason"]) == (NPU, "replay")
        assert evidence["digest_matches"] is False  # not the bytes we sent
        assert shared.inbox_ids(NPU).count(message_id) == 1
        assert shared.delivered_log_count(NPU)[message_id] == 1


class TestPolicyDenied:
    """A message the origin border refuses never leaves the origin country."""

    def test_egress_denial_never_reaches_destination(self, shared: Running) -> None:
        """NGO -> foreign police with victims' identities: relay_rejected with the rule id."""
        # The FBS node runs without a country policy, so only its border can stop it.
        sent = _send(shared, FBS, request_de_ua())
        assert sent["state"] == "acknowledged"
        message_id = sent["message_id"]

        def refused() -> list[dict[str, Any]]:
            trail = shared.evidence(FBS, message_id)
            return [e for e in trail if e["kind"] == "relay_rejected"]

        (evidence,) = wait_until(refused, DELIVERY, what="relay_rejected from de.gateway")
        assert evidence["actor"] == "de.gateway"
        assert evidence["reason"] == "policy_denied"
        assert evidence["rule_id"] == "de.out.ngo-no-police-abroad"
        _barrier(shared)
        assert message_id not in shared.stream_ids("DE", s.out_stream("UA"))
        assert message_id not in shared.stream_ids("UA", s.INBOX_STREAM)
        assert message_id not in shared.inbox_ids(NPU)
        assert not [r for r in shared.rejections(NPU) if r["claimed_message_id"] == message_id]

    def test_node_policy_refuses_before_anything_is_sent(self, shared: Running) -> None:
        """With its policy the LKA node refuses special categories abroad: 403 and the rule id."""
        draft = request_de_ua()
        draft["categories"] = ["ethnic_origin"]
        before = set(shared.outbox_states(LKA))
        with pytest.raises(NodeCallError, match="policy_denied") as caught:
            _send(shared, LKA, draft)
        assert caught.value.rule_id == "de.out.special-categories"
        assert set(shared.outbox_states(LKA)) == before


class TestRevokedSender:
    """An agency revoked in a new signed directory can no longer deliver anything."""

    @staticmethod
    def _revoke(fed: Running, agency: str) -> None:
        pki = str(fed.fed.settings.pki_dir)
        for args in (("revoke", agency, "--reason", "key_compromise"), ("directory",)):
            done = subprocess.run(
                [sys.executable, "-m", "broker.cli", "pki", *args, "--dir", pki],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stderr

    def test_revoked_sender_refused_at_border_and_node(
        self, nats_binary: Path, tmp_path: Path
    ) -> None:
        """Signed with a revoked key: sender_revoked at the DE gateway and at the NPU node."""
        del nats_binary
        fed = Running.start(tmp_path / "fed", nodes=[FBS, NPU])
        try:
            old_directory = fed.directory()
            forged = fed.seal_as(FBS, [NPU], example("bulletin"), directory=old_directory)
            self._revoke(fed, FBS)
            # Gateways reload the directory only every 30 s and nodes read it at start:
            # restart them (the FBS node keeps the old directory, as a stale or stolen node).
            for name, country in (
                ("gateway-de", "DE"),
                ("gateway-ua", "UA"),
                (f"node-{NPU}", "UA"),
            ):
                fed.fed.stop(name)
                fed.restart(name, country=country)

            # 1. The revoked agency's own node still sends; its border refuses it.
            offset = fed.fed.log_file("gateway-de").stat().st_size
            sent = _send(fed, FBS, bulletin([NPU]))
            assert sent["state"] == "acknowledged"
            refused = wait_until(
                lambda: [
                    event
                    for event in fed.log_events("gateway-de", offset=offset)
                    if event.get("event") == "message_refused"
                    and event.get("message_id") == sent["message_id"]
                ],
                DELIVERY,
                what="the DE gateway's refusal",
            )
            assert refused[0]["reason"] == "sender_revoked"
            assert sent["message_id"] not in fed.stream_ids("DE", s.out_stream("UA"))

            # 2. The same key past both borders, straight onto NPU's delivery subject.
            fed.publish("ua.gateway", s.deliver_subject(NPU), [(forged.message_id, forged.wire)])
            (refusal,) = wait_until(
                lambda: [
                    r for r in fed.rejections(NPU) if r["claimed_message_id"] == forged.message_id
                ],
                DELIVERY,
                what="NPU's refusal",
            )
            assert (refusal["reason"], refusal["claimed_sender"]) == ("sender_revoked", FBS)
            assert forged.message_id not in fed.inbox_ids(NPU)
            assert sent["message_id"] not in fed.inbox_ids(NPU)
            # No evidence is sealed to a revoked agency (the refusal stays a local record).
            assert fed.evidence_sent_about(NPU, forged.message_id) == []
        finally:
            fed.close()


# ----------------------------------------------------------------- store and forward ---


class TestStoreAndForward:
    """The destination country or the hub away for the whole send; everything arrives once."""

    COUNT: Final = 20

    def _send_batch(self, fed: Running) -> list[str]:
        ids = []
        for i in range(self.COUNT):
            sent = _send(fed, LKA, bulletin([NPU], legal_basis=f"Directive 2011/36/EU #{i}"))
            assert sent["state"] == "acknowledged"
            ids.append(sent["message_id"])
        assert {fed.outbox_states(LKA)[i] for i in ids} == {"acknowledged"}
        return ids

    def _check_once(self, fed: Running, ids: list[str], timeout: float) -> None:
        wait_until(
            lambda: set(ids) <= set(fed.inbox_ids(NPU)), timeout, what="every message at NPU"
        )
        _barrier(fed)
        counts = fed.delivered_log_count(NPU)
        assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)

    def test_destination_country_down(self, fresh: Running) -> None:
        """UA (server, gateway, node) down for the whole send; back: each message once."""
        fresh.fed.down(only=["UA"])
        ids = self._send_batch(fresh)
        wait_until(
            lambda: set(ids) <= set(fresh.stream_ids("DE", s.out_stream("UA"))),
            DELIVERY,
            what="every message in DE's OUT_UA",
        )
        fresh.fed.up(only=["UA"])
        fresh.wait_started([f"node-{NPU}"])
        self._check_once(fresh, ids, DELIVERY)

    def test_hub_down(self, fresh: Running) -> None:
        """The hub down for the whole send; back: each message once (after source recovery)."""
        fresh.fed.stop_hub()
        ids = self._send_batch(fresh)
        fresh.fed.start_hub()
        fresh.fed.wait_leaf("DE")
        fresh.fed.wait_leaf("UA")
        self._check_once(fresh, ids, AFTER_HUB_OUTAGE)


# ----------------------------------------------------------------------- crash run ---


class _Publisher(threading.Thread):
    """Seals ``count`` bulletins as the STA agency and submits them as it would (same bytes,
    same Nats-Msg-Id, retried until JetStream acks); ``acked`` is what the sender was told."""

    def __init__(self, fed: Running, count: int, *, chunk: int = 50) -> None:
        super().__init__(name="publisher", daemon=True)
        self.fed, self.count, self.chunk = fed, count, chunk
        self.acked: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    async def _main(self) -> None:
        body = example("bulletin")
        nc = await self.fed.fed.connect_as(STA)
        try:
            js = nc.jetstream()
            for start in range(0, self.count, self.chunk):
                batch = [
                    self.fed.seal_as(STA, [NPU], body)
                    for _ in range(min(self.chunk, self.count - start))
                ]
                await asyncio.gather(*(self._submit(js, m) for m in batch))
        finally:
            await nc.close()

    async def _submit(self, js: Any, message: Sealed) -> None:
        subject = s.submit_subject(STA)
        deadline = time.monotonic() + 60
        while True:
            try:
                await js.publish(
                    subject, message.wire, headers={"Nats-Msg-Id": message.message_id}, timeout=5
                )
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            self.acked.append(message.message_id)
            return


class TestCrashRun:
    """kill -9 of the UA gateway, the receiving node and the UA server in a 2,000-message run."""

    COUNT: Final = 2000
    TIMEOUT: Final = 180.0  # the run takes ~100 s on 2 cores; a crash adds the 30 s ack wait

    def test_nothing_lost_nothing_twice(
        self, nats_binary: Path, tmp_path: Path, record_property: Any
    ) -> None:
        """Every acknowledged message is in the inbox exactly once after both crashes."""
        del nats_binary
        fed = Running.start(tmp_path / "fed", nodes=[NPU])
        try:
            started = time.monotonic()
            publisher = _Publisher(fed, self.COUNT)
            publisher.start()
            crashes = (("gateway-ua", 300), (f"node-{NPU}", 900), ("UA", 1400))
            for name, threshold in crashes:
                wait_until(
                    lambda: len(fed.inbox_ids(NPU)) >= threshold,  # noqa: B023 - called at once
                    self.TIMEOUT,
                    what=f"{threshold} deliveries before killing {name}",
                )
                fed.fed.stop(name, kill=True)
                if name == "UA":
                    fed.fed.start_country("UA")
                else:
                    fed.restart(name, country="UA")
            publisher.join(self.TIMEOUT)
            assert publisher.error is None, repr(publisher.error)
            assert len(publisher.acked) == self.COUNT
            acked = set(publisher.acked)
            wait_until(
                lambda: acked <= set(fed.inbox_ids(NPU)),
                self.TIMEOUT,
                what="every acknowledged message at NPU",
            )
            elapsed = time.monotonic() - started
            record_property("messages_per_second", round(self.COUNT / elapsed, 1))
            print(f"\n{self.COUNT} messages in {elapsed:.1f}s: {self.COUNT / elapsed:.1f}/s")

            fed.fed.stop(f"node-{NPU}")
            store = Store(fed.store_path(NPU))
            try:
                inbox = [m.message_id for m in store.list_inbox(limit=10 * self.COUNT)]
                refused = store.list_rejections(limit=10 * self.COUNT)
            finally:
                store.close()
            assert len(inbox) == len(set(inbox)) == self.COUNT
            assert set(inbox) == acked
            # kill -9 of the country server can lose JetStream's de-duplication state for the
            # last writes, so a gateway redelivery may put a second copy on DELIVER: the node
            # must refuse it as a replay of a message it already holds, and nothing else.
            assert all(r.reason == "replay" and r.message_id in acked for r in refused), [
                (r.reason, r.message_id) for r in refused
            ]
            assert len(refused) <= len(crashes) * 64  # at most one fetch batch per crash
            # The inbox's primary key is the guarantee; the log shows no second delivery event
            # either (a kill -9 between commit and log line can leave an id with none).
            counts = fed.delivered_log_count(NPU)
            assert max(counts[i] for i in acked) == 1
            assert sum(1 for i in acked if counts[i] == 1) >= self.COUNT - len(crashes)
        finally:
            fed.close()


class TestSenderCrash:
    """kill -9 of the SENDING node in the middle of a run of API sends."""

    COUNT: Final = 150
    TIMEOUT: Final = 180.0

    def test_every_answered_send_arrives_once(self, nats_binary: Path, tmp_path: Path) -> None:
        """Sends answered by the node's API (acknowledged or queued) before and after a kill -9
        of the sending node all arrive exactly once; the restarted node resubmits its outbox."""
        del nats_binary
        fed = Running.start(tmp_path / "fed", nodes=[LKA, NPU])
        answered: list[str] = []
        failed: list[str] = []
        stop = threading.Event()

        def sender() -> None:
            client = NodeClient(fed.client(LKA).base_url, fed.client(LKA).token, timeout=10)
            try:
                for _ in range(self.COUNT):
                    if stop.is_set():
                        return
                    try:
                        answered.append(client.send(request_de_ua())["message_id"])
                    except NodeError as exc:  # the node is down: counted, the run goes on
                        failed.append(exc.reason)
                        time.sleep(0.2)
            finally:
                client.close()

        threads = [threading.Thread(target=sender, daemon=True) for _ in range(3)]
        try:
            for thread in threads:
                thread.start()
            wait_until(lambda: len(answered) >= 60, self.TIMEOUT, what="60 answered sends")
            fed.fed.stop(f"node-{LKA}", kill=True)
            fed.restart(f"node-{LKA}", country="DE")
            for thread in threads:
                thread.join(self.TIMEOUT)
            assert len(answered) > 100
            sent = set(answered)
            assert len(sent) == len(answered)
            wait_until(
                lambda: sent <= set(fed.inbox_ids(NPU)),
                self.TIMEOUT,
                what="every answered send in NPU's inbox",
            )
            wait_until(
                lambda: all(
                    state == "acknowledged"
                    for i, state in fed.outbox_states(LKA).items()
                    if i in sent
                ),
                self.TIMEOUT,
                what="every answered send acknowledged at LKA after the restart",
            )
            inbox = fed.inbox_ids(NPU)
            assert len(inbox) == len(set(inbox))
            # Sends cut off by the kill may have been stored (and so delivered) without an
            # answer; nothing else arrives.
            assert set(inbox) <= set(fed.outbox_states(LKA))
            counts = fed.delivered_log_count(NPU)
            assert max(counts[i] for i in sent) == 1
        finally:
            stop.set()
            fed.close()


class TestGatewaysSideBySide:
    """Two UA gateways on the same durables: both take work, and kill -9 of one loses nothing."""

    BATCH: Final = 100
    TIMEOUT: Final = 120.0  # includes the 30 s ack wait after the kill

    def _decided(self, fed: Running, name: str) -> int:
        return sum(
            1
            for e in fed.log_events(name)
            if e.get("event") == "border_decision" and e.get("direction") == "ingress"
        )

    def test_second_gateway_shares_the_work_and_takes_over(
        self, nats_binary: Path, tmp_path: Path
    ) -> None:
        del nats_binary
        fed = Running.start(tmp_path / "fed", nodes=[NPU])
        try:
            # The second instance: same identity and durables, its own metrics port and ledger.
            settings = fed.fed.settings.base / "settings"
            doc = json.loads((settings / "ua.gateway.json").read_text(encoding="utf-8"))
            doc["api"]["port"] = free_port()
            doc["store"] = "../store/ua.gateway-2.sqlite"
            (settings / "ua.gateway-2.json").write_text(json.dumps(doc), encoding="utf-8")
            first = next(p for p in fed.fed.settings.processes if p.name == "gateway-ua")
            second = ProcessSpec(
                name="gateway-ua-2",
                argv=(*first.argv[:-1], str(settings / "ua.gateway-2.json")),
                country="UA",
            )
            fed.fed.set_processes([*fed.fed.settings.processes, second])

            def send(count: int) -> set[str]:
                publisher = _Publisher(fed, count)
                publisher.run()  # in this thread
                assert publisher.error is None, repr(publisher.error)
                return set(publisher.acked)

            def delivered(ids: set[str]) -> bool:
                return ids <= set(fed.inbox_ids(NPU))

            alone = send(self.BATCH)
            wait_until(lambda: delivered(alone), self.TIMEOUT, what="first batch")
            fed.restart("gateway-ua-2", country="UA")
            shared = send(self.BATCH)
            wait_until(lambda: delivered(shared), self.TIMEOUT, what="second batch")
            assert self._decided(fed, "gateway-ua-2") > 0  # it took part of the work

            # kill -9 one of them while a third batch is on its way: the other one takes it
            # all, including what the dead one had fetched but not acked (after the ack wait).
            publisher = _Publisher(fed, self.BATCH)
            publisher.start()
            fed.fed.stop("gateway-ua", kill=True)
            publisher.join(self.TIMEOUT)
            assert publisher.error is None, repr(publisher.error)
            late = set(publisher.acked)
            wait_until(lambda: delivered(late), self.TIMEOUT, what="third batch")
            inbox = fed.inbox_ids(NPU)
            assert len(inbox) == len(set(inbox)) == 3 * self.BATCH
            assert set(inbox) == alone | shared | late
            assert self._decided(fed, "gateway-ua") >= self.BATCH

            # NPU's `delivered` evidence leaves through whichever instance takes it: each must
            # know what the other let in (the crossings are shared through the country's
            # JetStream bucket, not kept per instance), so none is refused as unknown.
            def egress() -> list[dict[str, Any]]:
                return [
                    e
                    for name in ("gateway-ua", "gateway-ua-2")
                    for e in fed.log_events(name)
                    if e.get("event") == "border_decision" and e.get("direction") == "egress"
                ]

            wait_until(
                lambda: len(egress()) >= 3 * self.BATCH, self.TIMEOUT, what="evidence egress"
            )
            refused = [e for e in egress() if e.get("verdict") != "allow"]
            assert refused == []
            assert {e["rule_id"] for e in egress()} == {"ua.evidence"}
        finally:
            fed.close()
