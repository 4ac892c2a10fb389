"""A country-server restart must never make Casebridge say something untrue (issue 11, item 1).

JetStream forgets the duplicate ids of work-queue streams (``SUBMIT``, ``DELIVER``) when a
server restarts, even cleanly, so a republication with the same ``Nats-Msg-Id`` after the
restart (a gateway or node whose confirmation was lost at the shutdown) is stored again. The
recipient must recognise the copy of a message it already accepted and acknowledge it: no
``rejected`` evidence, no replay refusal, no second copy for the application.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Final

import pytest

from broker.core import wire as s
from tests.integration.conftest import run
from tests.integration.e2e_helpers import Running, bulletin, wait_until

pytestmark = pytest.mark.integration

LKA: Final = "de.lka-berlin"
STA: Final = "de.sta-berlin"
NPU: Final = "ua.npu"
DELIVERY: Final = 30.0


def _wire(fed: Running, agency: str, message_id: str) -> bytes:
    con = sqlite3.connect(f"file:{fed.store_path(agency)}?mode=ro", uri=True, timeout=10)
    try:
        (wire,) = con.execute("SELECT wire FROM outbox WHERE id = ?", (message_id,)).fetchone()
    finally:
        con.close()
    return bytes(wire)


def _publish(fed: Running, *, as_gateway: str | None, as_agency: str | None, **kw: Any) -> bool:
    """Publish one message with its Nats-Msg-Id; True if JetStream called it a duplicate."""

    async def go() -> bool:
        if as_gateway is not None:
            nc = await fed.fed.connect_gateway(as_gateway, allow_reconnect=False)
        else:
            assert as_agency is not None
            nc = await fed.fed.connect_as(as_agency, allow_reconnect=False)
        try:
            ack = await nc.jetstream().publish(
                kw["subject"], kw["data"], headers={"Nats-Msg-Id": kw["msg_id"]}, timeout=10
            )
            return bool(ack.duplicate)
        finally:
            await nc.close()

    return run(go())


def test_copies_after_a_server_restart_are_not_refused(nats_binary: Path, tmp_path: Path) -> None:
    """After a clean restart of DE's server, the sending node's and the gateway's
    republications of delivered messages (same ids) reach STA and NPU again; both acknowledge
    the copies: one copy each in the inbox, no rejection, no `rejected` evidence for LKA."""
    del nats_binary
    fed = Running.start(tmp_path / "fed", nodes=[LKA, STA, NPU])
    try:
        sent = {
            r: str(fed.client(LKA).call("POST", "/v1/messages", body=bulletin([r]))["message_id"])
            for r in (STA, NPU)
        }
        for recipient, message_id in sent.items():
            wait_until(
                lambda r=recipient, i=message_id: i in fed.inbox_ids(r),  # type: ignore[misc]
                DELIVERY,
                what=f"first delivery to {recipient}",
            )
        fed.fed.stop_country("DE")
        fed.fed.up(only=["DE"])
        fed.wait_started()

        domestic = _wire(fed, LKA, sent[STA])
        duplicates = [
            # the DE gateway whose publish confirmation was lost at the shutdown
            _publish(
                fed,
                as_gateway="DE",
                as_agency=None,
                subject=s.deliver_subject(STA),
                msg_id=f"{sent[STA]}:{STA}",
                data=domestic,
            ),
            # LKA's node whose submit confirmation was lost (both messages)
            *(
                _publish(
                    fed,
                    as_gateway=None,
                    as_agency=LKA,
                    subject=s.submit_subject(LKA),
                    msg_id=message_id,
                    data=_wire(fed, LKA, message_id),
                )
                for message_id in sent.values()
            ),
        ]
        print(f"\nJetStream called the republications duplicates: {duplicates}")

        # A barrier through the same lanes: everything published before is settled.
        for recipient in (STA, NPU):
            after = str(
                fed.client(LKA).call("POST", "/v1/messages", body=bulletin([recipient]))[
                    "message_id"
                ]
            )
            wait_until(
                lambda r=recipient, i=after: i in fed.inbox_ids(r),  # type: ignore[misc]
                DELIVERY,
                what=f"the barrier to {recipient}",
            )
        wait_until(
            lambda: all(
                "delivered" in [e["kind"] for e in fed.evidence(LKA, i)] for i in sent.values()
            ),
            DELIVERY,
            what="delivered evidence",
        )
        for recipient, message_id in sent.items():
            assert fed.inbox_ids(recipient).count(message_id) == 1
            assert fed.rejections(recipient) == []
            assert "rejected" not in [e["kind"] for e in fed.evidence(LKA, message_id)]
        copies = [
            e
            for name in (f"node-{STA}", f"node-{NPU}")
            for e in fed.log_events(name)
            if e.get("event") == "duplicate_acknowledged"
        ]
        # The gateway's republication to DELIVER was stored again (the restart lost the work
        # queue's duplicate ids) and acknowledged as a copy; with a server that remembered,
        # there would be nothing to acknowledge.
        if not duplicates[0]:
            assert copies
    finally:
        fed.close()
