"""The border's chunk relay decision (broker/gateway/attachments.py, plan_chunk)."""

from __future__ import annotations

import uuid
from typing import Any

from broker.core import attachment_wire as aw
from broker.core.header import Onward
from broker.gateway.attachments import MAX_CHUNK_BYTES, ORPHAN_SECONDS, plan_chunk
from broker.gateway.border import Crossing

MESSAGE = str(uuid.uuid4())
ATTACHMENT = str(uuid.uuid4())
HEADERS = {aw.MESSAGE_HEADER: MESSAGE, aw.ATTACHMENT_HEADER: ATTACHMENT, aw.INDEX_HEADER: "3"}


def _crossing(direction: str, sender: str, *recipients: str) -> Crossing:
    return Crossing(
        message_id=MESSAGE,
        direction=direction,
        digest="d",
        sender=sender,
        recipients=recipients,
        onward=Onward(),
        exp=0,
    )


def _plan(**changes: Any) -> Any:
    args: dict[str, Any] = {
        "direction": "egress",
        "code": "DE",
        "subject": aw.att_submit_subject("de.lka-berlin"),
        "headers": HEADERS,
        "size": 1000,
        "crossings": (),
        "age_seconds": 1.0,
        "deliveries": 1,
        "lane_idle": False,
    }
    return plan_chunk(**(args | changes))


class TestEgress:
    def test_follows_its_message_to_every_peer_country(self) -> None:
        """A chunk of a relayed message goes to the outbox of each recipient country, not home."""
        c = _crossing("egress", "de.lka-berlin", "nl.politie", "ua.npu", "de.sta-berlin")
        plan = _plan(crossings=(c,))
        assert plan.to == (aw.att_out_subject("DE", "NL"), aw.att_out_subject("DE", "UA"))

    def test_another_agencys_message_does_not_carry_it(self) -> None:
        """A chunk naming a message another agency sent is not relayed (it waits, then drops)."""
        c = _crossing("egress", "de.sta-berlin", "nl.politie")
        assert _plan(crossings=(c,)).to == ()
        assert _plan(crossings=(c,), lane_idle=True).drop is not None

    def test_waits_for_its_message_with_growing_delay(self) -> None:
        """No crossing yet and the lane busy: wait, longer on every offer, bounded."""
        delays = [_plan(deliveries=n).delay for n in (1, 2, 3, 20)]
        assert delays[0] < delays[1] < delays[2] <= delays[3] <= 30

    def test_orphans_are_dropped(self) -> None:
        """No crossing and the agency's lane idle (or an hour passed): the chunk is dropped."""
        assert _plan(lane_idle=True).drop is not None
        assert _plan(age_seconds=ORPHAN_SECONDS + 1).drop is not None

    def test_malformed_or_oversized_chunks_are_dropped(self) -> None:
        """Missing routing headers or a chunk over the largest sealed size never cross."""
        assert _plan(headers={}).drop is not None
        assert _plan(headers=HEADERS | {aw.INDEX_HEADER: "-1"}).drop is not None
        c = _crossing("egress", "de.lka-berlin", "nl.politie")
        assert _plan(crossings=(c,), size=MAX_CHUNK_BYTES + 1).drop is not None


class TestIngress:
    def test_delivered_to_the_local_recipients_only(self) -> None:
        """A chunk from NL goes to this country's recipients of its message."""
        c = _crossing("ingress", "nl.politie", "de.lka-berlin", "ua.npu")
        plan = _plan(direction="ingress", subject=aw.att_out_subject("NL", "DE"), crossings=(c,))
        assert plan.to == (aw.att_deliver_subject("de.lka-berlin"),)

    def test_a_chunk_from_another_country_than_its_message_waits(self) -> None:
        """A message that came from NL does not carry chunks arriving from UA."""
        c = _crossing("ingress", "nl.politie", "de.lka-berlin")
        plan = _plan(direction="ingress", subject=aw.att_out_subject("UA", "DE"), crossings=(c,))
        assert plan.to == ()
        assert plan.delay is not None
