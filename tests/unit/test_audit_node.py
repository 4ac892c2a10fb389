"""The node's audit log, consultation logging, retention purge and corrections (in memory)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from broker.cli.audit import verify_store
from broker.core.audit import Operation, Problem
from broker.node import audit_log, corrections, lawful_jobs
from broker.node.audit_log import AuditUnavailable
from broker.node.errors import JustificationRequired
from broker.node.retention import RetentionPolicy
from broker.node.service import Node
from broker.pki.dev import DevFederation

from .node_world import World, request_draft, world_at


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def operations(node: Node) -> list[tuple[str, str | None, str | None]]:
    rows = node.store.query(audit_log.records)
    return [
        (r.record.entry.operation.value, r.record.entry.message_id, r.record.entry.peer)
        for r in rows
    ]


def exchange(world: World, to: tuple[str, ...] = ("nl.politie",)) -> str:
    de = world.node("de.lka-berlin")
    for agency in to:
        world.node(agency)

    async def run() -> str:
        result = await de.send(request_draft(to=to), actor="officer-de")
        await world.pump()
        return result.message_id

    return asyncio.run(run())


class TestRecords:
    """Each processing operation leaves its record, in the operation's transaction."""

    def test_disclosure_collection_consultation(self, world: World) -> None:
        """Sending logs a disclosure per recipient; receiving a collection; opening a
        consultation with actor and justification."""
        message_id = exchange(world, ("nl.politie", "ua.npu"))
        de, nl = world.nodes["de.lka-berlin"], world.nodes["nl.politie"]
        assert ("disclosure", message_id, "nl.politie") in operations(de)
        assert ("disclosure", message_id, "ua.npu") in operations(de)
        assert operations(nl) == [("collection", message_id, "de.lka-berlin")]
        asyncio.run(nl.read(message_id, actor="officer-nl", justification="case NL-7"))
        last = nl.store.query(audit_log.records)[-1].record
        assert last.entry.operation is Operation.CONSULTATION
        assert (last.entry.actor, last.entry.justification) == ("officer-nl", "case NL-7")

    def test_consultation_without_justification_refused(self, world: World) -> None:
        """Opening without a justification is refused and leaves no consultation."""
        message_id = exchange(world)
        nl = world.nodes["nl.politie"]
        with pytest.raises(JustificationRequired):
            asyncio.run(nl.read(message_id, actor="officer-nl", justification="  "))
        assert [op for op, _, _ in operations(nl)] == ["collection"]
        assert nl.store.consultations(message_id) == []

    def test_audit_failure_fails_the_operation(self, world: World) -> None:
        """When the audit insert fails the read is refused, nothing is marked read."""
        message_id = exchange(world)
        nl = world.nodes["nl.politie"]
        with nl.store.transaction() as db:
            db.execute(
                "CREATE TRIGGER audit_broken BEFORE INSERT ON audit "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        with pytest.raises(AuditUnavailable, match="operation was not performed"):
            asyncio.run(nl.read(message_id, actor="officer-nl", justification="case NL-7"))
        stored = nl.store.inbox_message(message_id)
        assert stored is not None
        assert stored.read_at is None
        assert nl.store.consultations(message_id) == []

    def test_triggers_refuse_update_and_delete(self, world: World) -> None:
        """The audit table refuses UPDATE and DELETE through SQL."""
        exchange(world)
        nl = world.nodes["nl.politie"]
        for sql in ("UPDATE audit SET actor = 'x'", "DELETE FROM audit"):
            with (
                pytest.raises(sqlite3.IntegrityError, match="append-only"),
                nl.store.transaction() as db,
            ):
                db.execute(sql)


class TestCheckpointsAndVerify:
    """Checkpoints go out on cb.audit.<agency>; verify finds file-level tampering."""

    def test_checkpoint_published_and_tamper_found(self, world: World, tmp_path: Path) -> None:
        """A published checkpoint verifies; a row edited behind the triggers is named."""
        message_id = exchange(world)
        nl = world.nodes["nl.politie"]
        asyncio.run(nl.read(message_id, actor="officer-nl", justification="case NL-7"))
        assert asyncio.run(lawful_jobs.checkpoint_once(nl)) == 0
        assert [agency for agency, _ in world.bus.audit] == ["nl.politie"]
        store = tmp_path / "nl.politie.sqlite"
        directory = world.fed.directory
        report, _ = verify_store(
            store, agency="nl.politie", directory=directory, gateway_roots=None, now=world.clock.now
        )
        assert report.ok
        raw = sqlite3.connect(store)
        raw.execute("DROP TRIGGER audit_no_update")
        raw.execute("UPDATE audit SET justification = 'browsing' WHERE seq = 2")
        raw.commit()
        raw.close()
        report, _ = verify_store(
            store, agency="nl.politie", directory=directory, gateway_roots=None, now=world.clock.now
        )
        assert report.finding is not None
        assert (report.finding.problem, report.finding.seq) == (Problem.ALTERED, 2)


class TestRetention:
    """The purge erases bodies past retention and keeps metadata, evidence and records."""

    def test_purge_erases_body_keeps_metadata(self, world: World) -> None:
        """After a year and a day an alert-length retention erases the received body."""
        message_id = exchange(world)
        nl = world.nodes["nl.politie"]
        policy = RetentionPolicy(days={"request.assistance": 365})
        assert lawful_jobs.purge_once(nl, policy).received == ()
        world.clock.advance(timedelta(days=366))
        result = lawful_jobs.purge_once(nl, policy)
        assert result.received == (message_id,)
        stored = nl.store.inbox_message(message_id)
        assert stored is not None
        assert dict(stored.body) == {}
        assert stored.header["id"] == message_id
        assert nl.store.evidence_for(message_id) != []
        last = nl.store.query(audit_log.records)[-1].record.entry
        assert (last.operation, last.message_id) == (Operation.ERASURE, message_id)
        assert lawful_jobs.purge_once(nl, policy).received == ()

    def test_short_retention_refused(self) -> None:
        """A retention shorter than the streams' 90 days is a configuration error."""
        with pytest.raises(Exception, match=">= 90"):
            RetentionPolicy(days={"alert.person": 30})


class TestCorrections:
    """A correction reaches every earlier recipient and marks the original there."""

    def test_correction_and_withdrawal_fan_out(self, world: World) -> None:
        """Both recipients get the correction, then the withdrawal, and mark the original."""
        message_id = exchange(world, ("nl.politie", "ua.npu"))
        de = world.nodes["de.lka-berlin"]

        async def run() -> None:
            await corrections.send_notice(
                de,
                kind="correction",
                message_id=message_id,
                body={
                    "corrections": [{"op": "replace", "path": "/title", "value": "Corrected"}],
                    "reason": "data_entry_error",
                },
                actor="officer-de",
            )
            await world.pump()

        asyncio.run(run())
        for agency in ("nl.politie", "ua.npu"):
            node = world.nodes[agency]
            state = node.store.query(lambda db: corrections.marks(db, message_id))
            assert state["status"] == "corrected", agency
            assert ("alteration", message_id, "de.lka-berlin") in operations(node)

        async def withdraw() -> None:
            await corrections.send_notice(
                de,
                kind="withdrawal",
                message_id=message_id,
                body={"reason": "wrong_recipient", "action_requested": "erase"},
                actor="officer-de",
            )
            await world.pump()

        asyncio.run(withdraw())
        for agency in ("nl.politie", "ua.npu"):
            node = world.nodes[agency]
            state = node.store.query(lambda db: corrections.marks(db, message_id))
            assert state["status"] == "withdrawn"
            assert state["erased"] != []
            stored = node.store.inbox_message(message_id)
            assert stored is not None
            assert dict(stored.body) == {}
