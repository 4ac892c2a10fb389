"""Storage faults of the node's store: typed once, answered truthfully, survived by the loops.

A "full disk" is SQLite's own SQLITE_FULL, made deterministic with ``PRAGMA max_page_count``
(the database may not grow past its current size); a store "locked beyond the busy timeout"
is a second real connection holding the write lock.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from broker.node import lawful_jobs
from broker.node.api import create_app
from broker.node.errors import BadRequest, StorageUnavailable
from broker.node.model import OutboxState
from broker.node.observe import StoreCollector
from broker.node.retention import RetentionPolicy
from broker.node.service import Node
from broker.node.store import Store
from broker.pki.dev import DevFederation

from .node_world import World, request_draft, world_at

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DE = "de.lka-berlin"
EPOCH = datetime.fromtimestamp(0, tz=UTC)


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def make_full(store: Store) -> None:
    """The database may not grow any more: the next write that needs a page is SQLITE_FULL."""
    pages = store.query(lambda db: int(db.execute("PRAGMA page_count").fetchone()[0]))
    store.query(lambda db: db.execute(f"PRAGMA max_page_count = {pages}").fetchone())


def free_space(store: Store) -> None:
    store.query(lambda db: db.execute("PRAGMA max_page_count = 1073741823").fetchone())


@contextmanager
def write_locked(store: Store) -> Iterator[None]:
    """Another connection holds the write lock; the store gives up after 50 ms (SQLITE_BUSY)."""
    store.query(lambda db: db.execute("PRAGMA busy_timeout = 50").fetchone())
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


def fresh_store(world: World) -> Store:
    return Store(world.tmp / f"{DE}.sqlite", probe_interval=0)


def pending_ids(store: Store) -> list[str]:
    return [m.message_id for m in store.list_outbox(include_evidence=True, pending_only=True)]


class _FailingCommit:
    """The store's connection, except that the next COMMIT fails with SQLite ``code``."""

    def __init__(self, db: sqlite3.Connection, code: int, message: str) -> None:
        self._db, self._code, self._message = db, code, message
        self.armed = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.armed:
            self.armed = False
            exc = sqlite3.OperationalError(self._message)
            exc.sqlite_errorcode = self._code
            raise exc
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


class TestStoreEdge:
    def test_full_database_is_storage_unavailable_and_nothing_is_stored(self, world: World) -> None:
        """SQLITE_FULL becomes StorageUnavailable (503, not_stored): the send left no trace,
        readiness says storage_unavailable, and both recover once space returns."""
        de = world.node(DE, store=fresh_store(world))
        make_full(de.store)

        with pytest.raises(StorageUnavailable) as caught:
            asyncio.run(de.send(request_draft()))
        assert caught.value.reason.value == "storage_unavailable"
        assert caught.value.http_status == 503
        assert caught.value.outcome == "not_stored"
        assert de.store.list_outbox(include_evidence=True) == []
        assert world.bus.submissions == []
        assert de.store.write_failures == 1
        ready, why = de.ready()
        assert not ready
        assert why.startswith("storage_unavailable:")
        assert "full" in why

        free_space(de.store)
        assert de.ready() == (True, "ready")
        result = asyncio.run(de.send(request_draft()))
        assert result.state is OutboxState.ACKNOWLEDGED
        assert de.store.write_failures == 1  # the probe is not counted as a failed write

    @pytest.mark.parametrize(
        ("code", "message", "outcome"),
        [(13, "database or disk is full", "not_stored"), (10, "disk I/O error", "unknown")],
    )
    def test_a_failed_commit_is_rolled_back(
        self,
        world: World,
        monkeypatch: pytest.MonkeyPatch,
        code: int,
        message: str,
        outcome: str,
    ) -> None:
        """A COMMIT that raises leaves no transaction open and nothing of it stored; an I/O
        error at commit is reported as an unknown outcome."""
        store = fresh_store(world)
        try:
            failing = _FailingCommit(store._db, code, message)
            monkeypatch.setattr(store, "_db", failing)
            with pytest.raises(StorageUnavailable) as caught, store.transaction() as db:
                db.execute("INSERT INTO replay (id, expires_at) VALUES ('m-1', 1)")
            assert caught.value.outcome == outcome
            assert not store._db.in_transaction
            assert not store.seen("m-1", now=EPOCH)
            assert store.remember("m-2", expires_at=2, now=EPOCH)
            assert store.writable() == (True, "ok")
        finally:
            store.close()

    def test_locked_beyond_the_busy_timeout_is_storage_unavailable(self, world: World) -> None:
        """A write lock held elsewhere past the busy timeout is a storage fault, not a crash."""
        store = fresh_store(world)
        try:
            with write_locked(store), pytest.raises(StorageUnavailable, match="locked"):
                store.remember("m-1", expires_at=1, now=EPOCH)
            assert store.remember("m-1", expires_at=1, now=EPOCH)
        finally:
            store.close()

    def test_sql_errors_are_not_storage_faults(self, world: World) -> None:
        """A faulty statement (our bug) is not disguised as a storage fault."""
        store = fresh_store(world)
        try:
            with pytest.raises(sqlite3.OperationalError), store.transaction() as db:
                db.execute("INSERT INTO no_such_table VALUES (1)")
            assert store.write_failures == 0
            assert store.writable() == (True, "ok")
        finally:
            store.close()


def serve(node: Node, scenario: Callable[[TestClient[Any, Any]], Any]) -> None:
    @asynccontextmanager
    async def lifecycle() -> AsyncIterator[Node]:
        yield node

    async def run() -> None:
        async with TestClient(TestServer(create_app(lifecycle, token=TOKEN))) as client:
            await scenario(client)

    asyncio.run(run())


class TestApiUnderStorageFaults:
    def test_disk_full_answers_503_json_and_readiness_tells_the_truth(self, world: World) -> None:
        """While the store is full: 503 storage_unavailable with Retry-After, nothing stored
        or sent, /readyz 503; once space returns the same keyed request stores it once."""
        de = world.node(DE, store=fresh_store(world))
        world.node("nl.politie")
        body = {
            "to": ["nl.politie"],
            "type": "request.assistance",
            "purpose": "investigation",
            "handling": "H2",
            "legal_basis": "Council Framework Decision 2006/960/JHA",
            "body": request_draft().body,
            "due": "2026-12-15",
        }

        async def scenario(client: TestClient[Any, Any]) -> None:
            make_full(de.store)
            headers = {**AUTH, "Idempotency-Key": "case-9-1"}
            response = await client.post("/v1/messages", json=body, headers=headers)
            assert response.status == 503
            assert response.headers["Retry-After"].isdigit()
            error = (await response.json())["error"]
            assert error["reason"] == "storage_unavailable"
            assert "nothing was stored" in error["detail"]
            assert de.store.list_outbox(include_evidence=True) == []
            assert world.bus.submissions == []
            ready = await client.get("/readyz")
            assert ready.status == 503
            assert (await ready.json())["reason"] == "storage_unavailable"

            free_space(de.store)
            ready = await client.get("/readyz")
            assert ready.status == 200
            again = await client.post("/v1/messages", json=body, headers=headers)
            assert again.status == 201
            once = await client.post("/v1/messages", json=body, headers=headers)
            assert (await once.json())["message_id"] == (await again.json())["message_id"]
            assert len([s for s in world.bus.submissions if s.accepted]) == 1

        serve(de, scenario)

    def test_an_acknowledgement_the_store_cannot_record_is_answered_truthfully(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """JetStream acknowledged but the store could not record it: the API says
        acknowledged (true), the store still says submitted, the outbox loop records it later,
        and the recipient gets the message once."""
        de = world.node(DE, store=fresh_store(world))
        world.node("nl.politie")
        other = sqlite3.connect(de.store.path, isolation_level=None)
        de.store.query(lambda db: db.execute("PRAGMA busy_timeout = 50").fetchone())
        submit = de.transport.submit

        async def submit_then_lock(*args: Any, **kwargs: Any) -> None:
            await submit(*args, **kwargs)
            other.execute("BEGIN IMMEDIATE")

        monkeypatch.setattr(de.transport, "submit", submit_then_lock)
        try:
            result = asyncio.run(de.send(request_draft()))
            assert result.state is OutboxState.ACKNOWLEDGED
            other.execute("ROLLBACK")
            stored = de.store.outbox_message(result.message_id)
            assert stored is not None
            assert stored.state is OutboxState.SUBMITTED
            monkeypatch.setattr(de.transport, "submit", submit)
            assert asyncio.run(de.flush_outbox()) == 0
            stored = de.store.outbox_message(result.message_id)
            assert stored is not None
            assert stored.state is OutboxState.ACKNOWLEDGED
        finally:
            other.close()
        asyncio.run(world.pump())
        inbox = world.nodes["nl.politie"].store.list_inbox()
        assert [m.message_id for m in inbox] == [result.message_id]


class TestLoopsUnderStorageFaults:
    def test_outbox_loop_survives_a_locked_store_and_resumes_by_itself(self, world: World) -> None:
        """The outbox loop keeps running while the store cannot write (one log event, not
        one per message), readiness says so, and it sends the backlog once writes work."""
        de = world.node(DE, store=fresh_store(world), sleep=asyncio.sleep)
        world.transport(DE).connected = False
        for _ in range(3):
            assert asyncio.run(de.send(request_draft())).state is OutboxState.QUEUED
        assert world.bus.submissions == []
        queued = pending_ids(de.store)
        assert len(queued) == 3
        world.transport(DE).connected = True

        async def scenario() -> list[MutableMapping[str, Any]]:
            with capture_logs() as logs:
                loop = asyncio.create_task(de.run_outbox(interval=0.05))
                try:
                    with write_locked(de.store):
                        await asyncio.sleep(0.8)
                        assert not loop.done()
                        assert sorted(pending_ids(de.store)) == sorted(queued)
                        ready, why = await asyncio.to_thread(de.ready)
                        assert not ready
                        assert why.startswith("storage_unavailable:")
                    deadline = time.monotonic() + 10
                    while pending_ids(de.store) and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    assert pending_ids(de.store) == []
                    assert not loop.done()
                    assert (await asyncio.to_thread(de.ready))[0]
                finally:
                    loop.cancel()
                    with suppress(asyncio.CancelledError):
                        await loop
            return logs

        logs = asyncio.run(scenario())
        events = [e["event"] for e in logs]
        assert events.count("outbox_store_failed") == 1
        assert events.count("outbox_store_recovered") == 1
        assert sorted(s.msg_id for s in world.bus.submissions if s.accepted) == sorted(queued)


class TestStoreMetrics:
    def test_failed_writes_and_free_space_are_exported(self, world: World) -> None:
        """The store collector counts failed writes and reports its filesystem's free bytes."""
        store = fresh_store(world)
        registry = CollectorRegistry()
        registry.register(StoreCollector(store))
        try:
            assert registry.get_sample_value("casebridge_node_store_write_failures_total") == 0
            make_full(store)
            with pytest.raises(StorageUnavailable), store.transaction() as db:
                db.execute("INSERT INTO replay (id, expires_at) VALUES (?, 1)", ("x" * 9000,))
            assert registry.get_sample_value("casebridge_node_store_write_failures_total") == 1
            free = registry.get_sample_value("casebridge_node_store_free_bytes")
            assert free is not None
            assert abs(free - shutil.disk_usage(world.tmp).free) < 64 * 1024 * 1024
        finally:
            store.close()

    def test_retention_and_checkpoint_jobs_survive_a_locked_store(self, world: World) -> None:
        """The retention purge and the audit checkpoint job keep running through storage
        faults (logged without a traceback) and work again once the store can write."""
        de = world.node(DE, store=fresh_store(world))
        asyncio.run(de.send(request_draft()))

        async def scenario() -> list[MutableMapping[str, Any]]:
            with capture_logs() as logs:
                jobs = [
                    asyncio.create_task(
                        lawful_jobs.run_retention(de, RetentionPolicy(), interval=0.05)
                    ),
                    asyncio.create_task(lawful_jobs.run_checkpoints(de, interval=0.05)),
                ]
                try:
                    with write_locked(de.store):
                        await asyncio.sleep(0.5)
                        assert not any(job.done() for job in jobs)
                    await asyncio.sleep(0.5)
                    assert not any(job.done() for job in jobs)
                finally:
                    for job in jobs:
                        job.cancel()
                    for job in jobs:
                        with suppress(asyncio.CancelledError):
                            await job
            return logs

        logs = asyncio.run(scenario())
        failed = [e for e in logs if e["event"].endswith("_failed")]
        assert {e["event"] for e in failed} == {"retention_purge_failed", "audit_checkpoint_failed"}
        assert all("exc_info" not in e for e in failed)
        assert all("locked" in e["error"] for e in failed)
        last_purge = max(i for i, e in enumerate(logs) if e["event"] == "retention_purge")
        last_failure = max(i for i, e in enumerate(logs) if e["event"] == "retention_purge_failed")
        assert last_purge > last_failure
        assert world.bus.audit  # a checkpoint was published once writes worked again


class _FailingOutboxCommit:
    """The store's connection, except that the COMMIT of the next transaction that stores an
    outbox row fails with SQLITE_FULL (whatever other transactions commit around it)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._outbox = False
        self.failed = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("BEGIN"):
            self._outbox = False
        elif sql.lstrip().startswith("INSERT INTO outbox"):
            self._outbox = True
        elif sql == "COMMIT" and self._outbox and not self.failed:
            self.failed = True
            exc = sqlite3.OperationalError("database or disk is full")
            exc.sqlite_errorcode = 13
            raise exc
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


class TestFilesUnderStorageFaults:
    def test_a_send_that_cannot_be_stored_leaves_its_files_to_send_again(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The files of a draft are bound to its message in the message's own outbox commit:
        a send refused for a storage fault leaves them uploaded, and the next send of the same
        draft takes them (not 'expired or already sent')."""
        from broker.node.attachment_transfer import NodeAttachments
        from broker.node.attachments import AttachmentSpool

        store = fresh_store(world)
        files = NodeAttachments(store, AttachmentSpool(world.tmp / f"{DE}.attachments"))
        de = world.node(DE, store=store, attachments=files)

        async def pieces() -> AsyncIterator[bytes]:
            yield b"%PDF-1.7 synthetic scan of a case file\n" * 50

        manifest = asyncio.run(
            files.upload(pieces(), name="scan.pdf", media_type="application/pdf", now=de.now())
        )
        draft = request_draft(attachments=(manifest.id,))
        failing = _FailingOutboxCommit(store._db)
        monkeypatch.setattr(store, "_db", failing)
        with pytest.raises(StorageUnavailable):
            asyncio.run(de.send(draft))
        assert failing.failed
        assert store.list_outbox(include_evidence=True) == []
        assert [m.id for m in files.staged_manifests([manifest.id])] == [manifest.id]

        result = asyncio.run(de.send(draft))
        assert result.state is OutboxState.ACKNOWLEDGED
        with pytest.raises(BadRequest, match="already sent"):
            files.staged_manifests([manifest.id])
