"""One agency's chunks waiting for their message never stall another agency's files.

A chunk whose message has not crossed yet waits on the gateway's consumer (nak with a delay)
until its message is decided. With one consumer for every agency's chunks, an agency that
publishes chunks for a message it never sends while keeping its submission lane busy (so the
gateway cannot conclude the message will not come) filled that consumer's window of pending
chunks, and every other agency's files stopped crossing for as long as it kept that up. The
gateway now reads chunks through one consumer per agency (and per peer country abroad).
Real servers, real gateways and nodes; the hostile agency uses its own credentials.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Final

from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext

from broker.core import attachment_wire as aw
from broker.federation import processes
from broker.federation.attachment_streams import GATEWAY_MAX_ACK_PENDING
from broker.gateway.attachments import LANE_CHECK_SECONDS
from tests.integration.conftest import run
from tests.integration.e2e_helpers import POLICIES, Running, bulletin, wait_until
from tests.integration.test_attachments_e2e import DE, LIMITS, NL, _policies

HOSTILE: Final = "de.fbs-berlin"
DESCRIPTION: Final[dict[str, Any]] = {
    "federation": "e2e-att-lanes",
    "countries": [
        {
            "code": "DE",
            "name": "Germany",
            "eu": True,
            "agencies": [
                {"id": DE, "kind": "law_enforcement", "name": "LKA Berlin"},
                {"id": HOSTILE, "kind": "ngo", "name": "FBS Berlin"},
            ],
        },
        {
            "code": "NL",
            "name": "Netherlands",
            "eu": True,
            "agencies": [{"id": NL, "kind": "law_enforcement", "name": "Politie"}],
        },
    ],
}
# More junk chunks than a gateway consumer lets be pending at once.
JUNK_CHUNKS: Final = GATEWAY_MAX_ACK_PENDING + 500
# Junk submissions that keep the hostile agency's lane busy (throttled at 2/s: ~50 s).
BUSY_SUBMISSIONS: Final = 100
DELIVERY_TIMEOUT: Final = 30.0


async def _junk(js: JetStreamContext, subject: str) -> None:
    """Publish JUNK_CHUNKS chunks of a message that never crosses (500 in flight at a time)."""
    message, attachment = str(uuid.uuid4()), str(uuid.uuid4())
    window = 500
    for start in range(0, JUNK_CHUNKS, window):
        await asyncio.gather(
            *(
                js.publish(
                    subject,
                    b"junk",
                    timeout=10,
                    headers={
                        aw.MESSAGE_HEADER: message,
                        aw.ATTACHMENT_HEADER: attachment,
                        aw.INDEX_HEADER: str(i),
                        "Nats-Msg-Id": aw.chunk_msg_id(attachment, i),
                    },
                )
                for i in range(start, min(start + window, JUNK_CHUNKS))
            )
        )


def _flood(fed: Running) -> None:
    """As HOSTILE: keep its submission lane busy, then publish chunks of a message that is
    never sent."""

    async def go() -> None:
        nc = await fed.fed.connect_as(HOSTILE, allow_reconnect=False)
        try:
            js = nc.jetstream()
            for n in range(BUSY_SUBMISSIONS):
                await js.publish(
                    f"cb.submit.{HOSTILE}", b"not a message", headers={"Nats-Msg-Id": f"j{n}"}
                )
            await _junk(js, aw.att_submit_subject(HOSTILE))
        finally:
            await nc.close()

    run(go())


def _hostile_backlog(fed: Running) -> tuple[int, int]:
    """(chunks pending on the hostile agency's consumer, submissions still in its lane)."""

    async def go() -> tuple[int, int]:
        nc = await fed.fed.connect_gateway("DE")
        try:
            js = nc.jetstream()
            chunks = await js.consumer_info(aw.ATT_SUBMIT_STREAM, aw.att_egress_durable(HOSTILE))
            lane = await js.consumer_info("SUBMIT", f"submit-{HOSTILE.replace('.', '_')}")
            return (
                int(chunks.num_ack_pending + chunks.num_pending),
                int(lane.num_ack_pending + lane.num_pending),
            )
        finally:
            await nc.close()

    return run(go())


def _metrics(fed: Running, process: str) -> dict[str, float]:
    """A node's or a gateway's metrics (Prometheus text from its loopback API), by sample."""
    doc = json.loads((fed.fed.base / processes.SETTINGS_DIR / f"{process}.json").read_text())
    url = f"http://127.0.0.1:{doc['api']['port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _to_legacy_consumers(fed: Running, *, ingress: bool = True) -> None:
    """Put DE's (and NL's, with ``ingress``) chunk consumers back to what earlier versions
    made: one unfiltered consumer per direction."""

    async def go(code: str, stream: str, lanes: list[str], legacy: str) -> None:
        nc = await fed.fed.connect_gateway(code)
        try:
            js = nc.jetstream()
            for durable in lanes:
                await js.delete_consumer(stream, durable)
            await js.add_consumer(
                stream,
                ConsumerConfig(
                    durable_name=legacy,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=15,
                    max_deliver=-1,
                    max_ack_pending=GATEWAY_MAX_ACK_PENDING,
                ),
            )
        finally:
            await nc.close()

    run(
        go(
            "DE",
            aw.ATT_SUBMIT_STREAM,
            [aw.att_egress_durable(DE), aw.att_egress_durable(HOSTILE)],
            aw.LEGACY_EGRESS_DURABLE,
        )
    )
    if ingress:
        run(
            go("NL", aw.ATT_INBOX_STREAM, [aw.att_ingress_durable("DE")], aw.LEGACY_INGRESS_DURABLE)
        )


def _consumer_names(fed: Running, code: str, stream: str) -> list[str]:
    async def go() -> list[str]:
        nc = await fed.fed.connect_gateway(code)
        try:
            return sorted(
                info.config.durable_name or ""
                for info in await nc.jetstream().consumers_info(stream)
            )
        finally:
            await nc.close()

    return run(go())


def _send_file(fed: Running, path: Path, size: int) -> str:
    path.write_bytes(os.urandom(size))
    handle = fed.client(DE).upload_attachment(path, media_type="application/octet-stream")
    sent = fed.client(DE).send(bulletin([NL], attachments=[handle["attachment"]]))
    return str(sent["message_id"])


def _arrives(fed: Running, message_id: str, timeout: float, what: str) -> None:
    wait_until(functools.partial(lambda m: m in fed.inbox_ids(NL), message_id), timeout, what=what)
    assert [f["state"] for f in fed.client(NL).attachments(message_id)] == ["verified"]


def test_the_consumers_of_earlier_versions_are_replaced_and_nothing_is_lost(
    nats_binary: Path, tmp_path: Path
) -> None:
    """Upgrading a country set up by an earlier version (one unfiltered chunk consumer per
    direction): (1) gateways stopped, a file waiting in the old consumers: the stream setup
    replaces them by the per-lane consumers and the file still crosses, verified; (2) DE's
    gateway running on the old consumer when the setup replaces it: the running gateway
    takes up the new lanes and a file sent afterwards crosses."""
    del nats_binary
    fed = Running.start(
        tmp_path / "fed", nodes=[DE, NL], description=DESCRIPTION, policy_dir=_policies(tmp_path)
    )
    lanes = sorted([aw.att_egress_durable(DE), aw.att_egress_durable(HOSTILE)])
    try:
        fed.fed.stop("gateway-de")
        fed.fed.stop("gateway-nl")
        _to_legacy_consumers(fed)
        waiting = _send_file(fed, tmp_path / "waiting.bin", 2 * 1024 * 1024 + 17)
        # Starting a country's gateway again runs its stream setup first.
        fed.restart("gateway-de", country="DE")
        fed.restart("gateway-nl", country="NL")
        assert _consumer_names(fed, "DE", aw.ATT_SUBMIT_STREAM) == lanes
        assert _consumer_names(fed, "NL", aw.ATT_INBOX_STREAM) == [aw.att_ingress_durable("DE")]
        _arrives(fed, waiting, 90, "the waiting file's delivery")

        fed.fed.stop("gateway-de")
        _to_legacy_consumers(fed, ingress=False)
        # Started without the setup (Running.restart would run it first).
        offset = fed.fed.log_file("gateway-de").stat().st_size
        (spec,) = [p for p in fed.fed.settings.processes if p.name == "gateway-de"]
        fed.fed._spawn(spec.name, fed.fed._argv(spec))
        wait_until(
            lambda: "gateway_started" in fed.log_text("gateway-de", offset=offset),
            60,
            what="DE's gateway on the old consumer",
        )
        run(fed.fed.ensure_streams("DE"))  # the setup of the new version, gateway running
        assert _consumer_names(fed, "DE", aw.ATT_SUBMIT_STREAM) == lanes
        after = _send_file(fed, tmp_path / "after-upgrade.bin", 1024 * 1024 + 3)
        _arrives(fed, after, LANE_CHECK_SECONDS + DELIVERY_TIMEOUT, "the file sent after")
    finally:
        for client in fed.clients.values():
            client.close()
        fed.close()


UA: Final = "ua.npu"
THREE: Final[dict[str, Any]] = {
    "federation": "e2e-att-lanes-3",
    "countries": [
        *DESCRIPTION["countries"],
        {
            "code": "UA",
            "name": "Ukraine",
            "eu": False,
            "agencies": [{"id": UA, "kind": "law_enforcement", "name": "NPU"}],
        },
    ],
}


def _three_policies(base: Path) -> Path:
    out = base / "policies"
    out.mkdir()
    for cc in ("de", "nl", "ua"):
        text = (POLICIES / f"{cc}.yaml").read_text(encoding="utf-8").split("\nattachments:")[0]
        (out / f"{cc}.yaml").write_text(
            text + LIMITS.format(cc=cc, max_size=256 * 1024 * 1024), encoding="utf-8"
        )
    return out


def _flood_from_abroad(fed: Running) -> None:
    """As UA's border gateway: chunks of a message that never crosses, into UA's outbox to
    NL (sourced into NL's chunk inbox like any chunk UA lets out)."""

    async def go() -> None:
        nc = await fed.fed.connect_gateway("UA", allow_reconnect=False)
        try:
            js = nc.jetstream()
            await _junk(js, aw.att_out_subject("UA", "NL"))
        finally:
            await nc.close()

    run(go())


def _waiting_from(fed: Running, peer: str) -> int:
    async def go() -> int:
        nc = await fed.fed.connect_gateway("NL")
        try:
            info = await nc.jetstream().consumer_info(
                aw.ATT_INBOX_STREAM, aw.att_ingress_durable(peer)
            )
            return int(info.num_ack_pending + info.num_pending)
        finally:
            await nc.close()

    return run(go())


def test_junk_chunks_of_one_agency_or_country_stall_no_one_else(
    nats_binary: Path, tmp_path: Path
) -> None:
    """An agency of DE publishes chunks of a message it never sends while keeping its own
    lane busy, and UA's border lets chunks of a message that never crosses out to NL: both
    only fill their own lanes (each a full window), and DE's file to NL crosses at once."""
    del nats_binary
    fed = Running.start(
        tmp_path / "fed",
        nodes=[DE, NL],
        description=THREE,
        policy_dir=_three_policies(tmp_path),
        settings={"de.gateway": {"fair_share": {"sender_rate": 2, "sender_burst": 1}}},
    )
    try:
        _flood(fed)
        _flood_from_abroad(fed)
        # The gateways took the junk and hold it waiting (more than one window's worth).
        wait_until(
            lambda: _hostile_backlog(fed)[0] >= JUNK_CHUNKS - 10,
            DELIVERY_TIMEOUT,
            what="the agency's junk chunks waiting at DE",
        )
        wait_until(
            lambda: _waiting_from(fed, "UA") >= JUNK_CHUNKS - 10,
            DELIVERY_TIMEOUT,
            what="UA's junk chunks waiting at NL",
        )
        path = tmp_path / "evidence.bin"
        path.write_bytes(os.urandom(1024 * 1024))
        handle = fed.client(DE).upload_attachment(path, media_type="application/octet-stream")
        started = time.monotonic()
        sent = fed.client(DE).send(bulletin([NL], attachments=[handle["attachment"]]))
        message_id = str(sent["message_id"])
        wait_until(
            functools.partial(lambda m: m in fed.inbox_ids(NL), message_id),
            DELIVERY_TIMEOUT,
            what="the honest file's delivery",
        )
        took = time.monotonic() - started
        junk, lane = _hostile_backlog(fed)
        from_ua = _waiting_from(fed, "UA")
        print(
            f"\nhonest 1 MB file delivered in {took:.2f} s; junk waiting at DE {junk} "
            f"(lane {lane}), from UA at NL {from_ua}"
        )
        # The conditions that stalled every file before held throughout: the junk still
        # waits (each window full) and the hostile agency's lane is still busy.
        assert junk >= GATEWAY_MAX_ACK_PENDING
        assert from_ua >= GATEWAY_MAX_ACK_PENDING
        assert lane > 0
        files = fed.client(NL).attachments(message_id)
        assert [f["state"] for f in files] == ["verified"]
        # What operators see: the junk waiting at both borders, the honest file relayed and
        # verified (chunk bytes are sealed: larger than the file).
        de = _metrics(fed, "de.gateway")
        assert de['casebridge_gateway_chunks_total{direction="egress",outcome="waiting"}'] > 0
        assert de['casebridge_gateway_chunks_total{direction="egress",outcome="relayed"}'] >= 2
        assert de['casebridge_gateway_chunk_bytes_total{direction="egress"}'] > 1024 * 1024
        nl = _metrics(fed, "nl.gateway")
        assert nl['casebridge_gateway_chunks_total{direction="ingress",outcome="waiting"}'] > 0
        assert nl['casebridge_gateway_chunks_total{direction="ingress",outcome="relayed"}'] >= 2
        received = _metrics(fed, NL)
        assert received['casebridge_node_files_total{direction="in",outcome="verified"}'] == 1
        assert received['casebridge_node_file_bytes_total{direction="in"}'] == 1024 * 1024
        wait_until(
            lambda: (
                _metrics(fed, DE).get('casebridge_node_files_total{direction="out",outcome="sent"}')
                == 1
            ),
            DELIVERY_TIMEOUT,
            what="the sent file counted",
        )
    finally:
        for client in fed.clients.values():
            client.close()
        fed.close()
