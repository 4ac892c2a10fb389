"""The border's chunk relay decision (broker/gateway/attachments.py, plan_chunk)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from broker.core import attachment_wire as aw
from broker.core.attachments import CHUNK_OVERHEAD, Descriptor
from broker.core.header import Onward
from broker.errors import Reason
from broker.gateway.attachments import (
    MAX_CHUNK_BYTES,
    ORPHAN_SECONDS,
    ChunkRefusal,
    chunk_lanes,
    count_chunk,
    plan_chunk,
    wait_delay,
)
from broker.gateway.audit import GatewayLedger
from broker.gateway.border import Crossing
from broker.gateway.crossings import _decode, _to_json
from broker.node import audit_log

MESSAGE = str(uuid.uuid4())
ATTACHMENT = str(uuid.uuid4())
HEADERS = {aw.MESSAGE_HEADER: MESSAGE, aw.ATTACHMENT_HEADER: ATTACHMENT, aw.INDEX_HEADER: "3"}


def _crossing(
    direction: str,
    sender: str,
    *recipients: str,
    attachments: tuple[Descriptor, ...] | None = None,
) -> Crossing:
    return Crossing(
        message_id=MESSAGE,
        direction=direction,
        digest="d",
        sender=sender,
        recipients=recipients,
        onward=Onward(),
        exp=0,
        attachments=attachments,
    )


# 3 full chunks of 16 KiB and a last one of 100 bytes.
FILE = Descriptor(
    id=ATTACHMENT,
    media_type="application/pdf",
    size=3 * 16384 + 100,
    chunk_size=16384,
    chunks=4,
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


def _chunk(index: int, size: int, attachment: str = ATTACHMENT, **changes: Any) -> Any:
    headers = HEADERS | {aw.ATTACHMENT_HEADER: attachment, aw.INDEX_HEADER: str(index)}
    c = _crossing("egress", "de.lka-berlin", "nl.politie", attachments=(FILE,))
    return _plan(crossings=(c,), headers=headers, size=size, **changes)


class TestCounting:
    """The border counts a file's chunks against its message's declared descriptor."""

    def test_every_declared_chunk_of_its_declared_size_is_relayed(self) -> None:
        """Indices 0..chunks-1 with exactly their sealed sizes cross."""
        sizes = [16384 + CHUNK_OVERHEAD] * 3 + [100 + CHUNK_OVERHEAD]
        plans = [_chunk(i, n) for i, n in enumerate(sizes)]
        assert all(p.to == (aw.att_out_subject("DE", "NL"),) for p in plans)
        assert all(p.refused is None for p in plans)

    def test_a_chunk_beyond_the_declared_count_is_refused(self) -> None:
        """An extra chunk (index >= chunks) never crosses: attachment_size_mismatch."""
        plan = _chunk(4, 100 + CHUNK_OVERHEAD)
        assert plan.to == ()
        assert plan.refused is Reason.ATTACHMENT_SIZE_MISMATCH
        assert plan.drop is not None
        assert "beyond" in plan.drop

    def test_an_oversized_or_short_chunk_is_refused(self) -> None:
        """A chunk longer or shorter than its index's declared sealed length is refused."""
        for index, size in ((0, 16384 + CHUNK_OVERHEAD + 1), (3, 16384 + CHUNK_OVERHEAD), (1, 10)):
            plan = _chunk(index, size)
            assert plan.to == ()
            assert plan.refused is Reason.ATTACHMENT_SIZE_MISMATCH

    def test_a_chunk_of_an_undeclared_file_is_refused(self) -> None:
        """A chunk naming a file its message did not declare: attachment_chunk_invalid."""
        plan = _chunk(0, 16384 + CHUNK_OVERHEAD, attachment=str(uuid.uuid4()))
        assert plan.to == ()
        assert plan.refused is Reason.ATTACHMENT_CHUNK_INVALID

    def test_ingress_counts_too(self) -> None:
        """The receiving border applies the same count to chunks from abroad."""
        c = _crossing("ingress", "nl.politie", "de.lka-berlin", attachments=(FILE,))
        headers = HEADERS | {aw.INDEX_HEADER: "7"}
        plan = _plan(
            direction="ingress",
            subject=aw.att_out_subject("NL", "DE"),
            crossings=(c,),
            headers=headers,
            size=100 + CHUNK_OVERHEAD,
        )
        assert plan.refused is Reason.ATTACHMENT_SIZE_MISMATCH

    def test_records_without_descriptors_are_not_counted(self) -> None:
        """A record from before descriptors were kept (None) lets the chunk through as before;
        an empty tuple (a message that declared no file) refuses it."""
        assert count_chunk([_crossing("egress", "a", "b")], ATTACHMENT, 9, 5) is None
        none_declared = _crossing("egress", "a", "b", attachments=())
        assert count_chunk([none_declared], ATTACHMENT, 0, 5) is not None

    def test_oversized_before_any_lookup_carries_a_reason(self) -> None:
        """A chunk over the largest sealed size is refused with attachment_size_mismatch."""
        assert _plan(size=MAX_CHUNK_BYTES + 1).refused is Reason.ATTACHMENT_SIZE_MISMATCH


class TestCrossingRecords:
    def test_descriptors_survive_the_shared_record(self) -> None:
        """The CROSSINGS record keeps the declared descriptors; an old record without them
        reads back as not known (None)."""
        c = _crossing("egress", "de.lka-berlin", "nl.politie", attachments=(FILE,))
        assert _decode(json.dumps([_to_json(c)]).encode()) == [c]
        old = _to_json(_crossing("egress", "de.lka-berlin", "nl.politie"))
        assert "attachments" not in old
        assert _decode(json.dumps([old]).encode())[0].attachments is None


class TestRefusalAudit:
    def test_a_refused_chunk_is_logged_once_per_file_and_reason(self, tmp_path: Path) -> None:
        """The gateway's audit log gets one refusal entry with the reason code per file and
        reason, however many bad chunks of that file come."""
        ledger = GatewayLedger(tmp_path / "gateway.sqlite", agency="de.gateway")
        now = datetime(2026, 12, 3, tzinfo=UTC)

        def refusal(index: int, reason: Reason) -> ChunkRefusal:
            return ChunkRefusal(
                direction="egress",
                message_id=MESSAGE,
                attachment_id=ATTACHMENT,
                index=index,
                reason=reason,
                detail=f"chunk {index}",
                peer="de.lka-berlin",
                exp=int(now.timestamp()) + 3600,
            )

        try:
            assert ledger.record_chunk_refusal(refusal(4, Reason.ATTACHMENT_SIZE_MISMATCH), now=now)
            assert not ledger.record_chunk_refusal(
                refusal(5, Reason.ATTACHMENT_SIZE_MISMATCH), now=now
            )
            assert ledger.record_chunk_refusal(refusal(0, Reason.ATTACHMENT_CHUNK_INVALID), now=now)
            db = sqlite3.connect(tmp_path / "gateway.sqlite")
            entries = [r.record.entry for r in audit_log.records_about(db, MESSAGE)]
            db.close()
        finally:
            ledger.close()
        assert [e.operation.value for e in entries] == ["refusal", "refusal"]
        assert [e.justification for e in entries] == [
            "egress: attachment chunk attachment_size_mismatch",
            "egress: attachment chunk attachment_chunk_invalid",
        ]
        assert entries[0].peer == "de.lka-berlin"
        assert entries[0].detail == "chunk 4"


class _Msg:
    """The parts of a fetched JetStream message the relay uses, recording its settlement."""

    def __init__(self, index: int, size: int) -> None:
        self.subject = aw.att_submit_subject("de.lka-berlin")
        self.headers = HEADERS | {aw.INDEX_HEADER: str(index)}
        self.data = bytes(size)
        self.metadata = SimpleNamespace(timestamp=NOW, num_delivered=1)
        self.settled: list[str] = []

    async def term(self) -> None:
        self.settled.append("term")

    async def nak(self, delay: float) -> None:
        self.settled.append("nak")

    async def ack(self) -> None:
        self.settled.append("ack")


NOW = datetime(2026, 12, 3, tzinfo=UTC)


class TestRelayRefusal:
    def _settle(self, msg: _Msg, refused: Any) -> str:
        from broker.gateway.attachments import _settle
        from broker.gateway.crossings import SharedCrossings

        crossings = SharedCrossings()
        crossings._keep([_crossing("egress", "de.lka-berlin", "nl.politie", attachments=(FILE,))])
        relays: list[Any] = []

        async def go() -> str:
            # No JetStream: the lane is not asked, the message's record is held.
            outcome = await _settle(
                None,  # type: ignore[arg-type]
                msg,  # type: ignore[arg-type]
                direction="egress",
                code="DE",
                crossings=crossings,
                now=NOW,
                idle={},
                relays=relays,
                refused=refused,
            )
            for r in relays:
                r.close()  # not published here
            return outcome

        return asyncio.run(go())

    def test_a_refused_chunk_is_logged_before_it_is_let_go(self) -> None:
        """The refusal reaches the audit callback (code, chunk, peer, exp) before the chunk
        is terminated."""
        logged: list[ChunkRefusal] = []
        msg = _Msg(4, 100 + CHUNK_OVERHEAD)

        async def refused(r: ChunkRefusal) -> None:
            assert msg.settled == []
            logged.append(r)

        assert self._settle(msg, refused) == "refused"
        assert msg.settled == ["term"]
        (r,) = logged
        assert (r.reason, r.index, r.peer, r.exp) == (
            Reason.ATTACHMENT_SIZE_MISMATCH,
            4,
            "de.lka-berlin",
            0,
        )

    def test_a_refusal_that_cannot_be_logged_is_not_let_go(self) -> None:
        """If the audit log cannot be written the chunk is not terminated (the relay loop
        offers it again): nothing is refused unlogged."""
        msg = _Msg(4, 100 + CHUNK_OVERHEAD)

        async def refused(r: ChunkRefusal) -> None:
            raise sqlite3.OperationalError("database is locked")

        with pytest.raises(sqlite3.OperationalError):
            self._settle(msg, refused)
        assert msg.settled == []

    def test_a_declared_chunk_is_relayed_not_logged(self) -> None:
        """A chunk within its declared file is queued for relay; the callback is not called."""
        msg = _Msg(1, 16384 + CHUNK_OVERHEAD)

        async def refused(r: ChunkRefusal) -> None:
            raise AssertionError(r)

        assert self._settle(msg, refused) == "relayed"


class _Consumers:
    """A JetStream double that lists consumers of a stream by name."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    async def consumers_info(self, stream: str) -> list[Any]:
        return [SimpleNamespace(config=SimpleNamespace(durable_name=n)) for n in self.names]


def _lanes(names: list[str], direction: str, agencies: list[str]) -> list[tuple[str, bool]]:
    found = asyncio.run(
        chunk_lanes(_Consumers(names), direction=direction, agencies=agencies)  # type: ignore[arg-type]
    )
    return [(lane.durable, lane.create is not None) for lane in found]


class TestLanes:
    """One consumer (and loop) per sender: one agency's waiting chunks never fill another's."""

    def test_every_agency_gets_its_own_egress_lane_created_when_missing(self) -> None:
        lanes = _lanes(["att-egress-de_lka-berlin"], "egress", ["de.lka-berlin", "de.sta-berlin"])
        assert lanes == [("att-egress-de_lka-berlin", False), ("att-egress-de_sta-berlin", True)]

    def test_a_lane_no_longer_in_the_directory_is_still_read(self) -> None:
        """A revoked agency's chunks must still be taken and dropped, not left to pile up."""
        lanes = _lanes(["att-egress-de_gone"], "egress", ["de.lka-berlin"])
        assert lanes == [("att-egress-de_gone", False), ("att-egress-de_lka-berlin", True)]

    def test_the_single_consumer_of_earlier_versions_is_read_until_replaced(self) -> None:
        # No per-agency consumer can be made beside it (a work queue refuses overlaps).
        assert _lanes(["att-egress"], "egress", ["de.lka-berlin"]) == [("att-egress", False)]
        assert _lanes(["att-ingress"], "ingress", []) == [("att-ingress", False)]

    def test_ingress_lanes_are_the_per_peer_consumers(self) -> None:
        lanes = _lanes(["att-ingress-nl", "att-ingress-ua", "other"], "ingress", ["de.x"])
        assert lanes == [("att-ingress-nl", False), ("att-ingress-ua", False)]

    def test_names_cannot_collide(self) -> None:
        assert aw.att_egress_durable("de.lka-berlin") == "att-egress-de_lka-berlin"
        assert aw.att_ingress_durable("NL") == "att-ingress-nl"
        assert aw.att_egress_durable("de.x") != aw.LEGACY_EGRESS_DURABLE


class TestWaitDelay:
    def test_starts_short_and_backs_off_to_a_bound(self) -> None:
        delays = [wait_delay(n) for n in range(1, 16)]
        assert delays[0] == 0.25
        assert delays == sorted(delays)
        assert max(delays) == 30.0
        assert wait_delay(0) == 0.25  # a missing delivery count reads as the first
