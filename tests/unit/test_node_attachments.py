"""The node's attachment spool: staged sealed, received verified, resumable, read by range."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from broker.core.attachments import CHUNK_OVERHEAD, Manifest, SealedChunk
from broker.errors import InvalidMessage, Reason
from broker.node.attachments import AttachmentSpool, ChunkAhead

CHUNK = 16 * 1024


def _pieces(data: bytes, size: int = 5000) -> Iterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


def _stage(spool: AttachmentSpool, data: bytes) -> Manifest:
    return spool.stage(
        _pieces(data),
        attachment_id=str(uuid.uuid4()),
        key=os.urandom(32),
        name="statement.pdf",
        media_type="application/pdf",
        chunk_size=CHUNK,
        max_size=1 << 30,
    )


@pytest.fixture
def sender(tmp_path: Path) -> AttachmentSpool:
    return AttachmentSpool(tmp_path / "sender")


@pytest.fixture
def receiver(tmp_path: Path) -> AttachmentSpool:
    return AttachmentSpool(tmp_path / "receiver")


def _chunks(spool: AttachmentSpool, m: Manifest) -> list[SealedChunk]:
    return list(spool.sealed_chunks(m.descriptor))


class TestStaging:
    def test_staged_file_is_sealed_at_rest_and_reads_back(self, sender: AttachmentSpool) -> None:
        """A staged file holds only ciphertext, and reads back to the uploaded bytes."""
        data = os.urandom(3 * CHUNK + 100)
        m = _stage(sender, data)
        stored = (sender.root / "outgoing" / f"{m.id}.sealed").read_bytes()
        assert len(stored) == m.descriptor.sealed_size
        assert data[:64] not in stored
        assert b"".join(sender.read(m)) == data

    def test_upload_cut_off_leaves_nothing(self, sender: AttachmentSpool) -> None:
        """An upload whose source fails half-way leaves no staged file behind."""
        attachment_id = str(uuid.uuid4())

        def cut() -> Iterator[bytes]:
            yield os.urandom(2 * CHUNK)
            raise ConnectionResetError("client went away")

        with pytest.raises(ConnectionResetError):
            sender.stage(
                cut(), attachment_id=attachment_id, key=os.urandom(32), name="x.pdf",
                media_type="application/pdf", chunk_size=CHUNK, max_size=1 << 30,
            )  # fmt: skip
        assert not sender.staged(attachment_id)
        assert list((sender.root / "outgoing").iterdir()) == []

    def test_staging_never_holds_the_file_in_memory(self, sender: AttachmentSpool) -> None:
        """Staging 24 MiB from a generator peaks far below the file size (tracemalloc)."""
        size = 24 * 1024 * 1024
        piece = os.urandom(64 * 1024)
        tracemalloc.start()
        try:
            m = sender.stage(
                (piece for _ in range(size // len(piece))), attachment_id=str(uuid.uuid4()),
                key=os.urandom(32), name="big.bin", media_type="application/octet-stream",
                chunk_size=256 * 1024, max_size=1 << 30,
            )  # fmt: skip
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert m.descriptor.size == size
        assert peak < 4 * 1024 * 1024


class TestReceiving:
    def test_all_chunks_make_a_verified_file(
        self, sender: AttachmentSpool, receiver: AttachmentSpool
    ) -> None:
        """Chunks received in order verify, and only the last makes the file readable."""
        data = os.urandom(2 * CHUNK + 7)
        m = _stage(sender, data)
        chunks = _chunks(sender, m)
        for c in chunks[:-1]:
            assert not receiver.receive(m, c.index, c.data).verified
            with pytest.raises(FileNotFoundError):
                list(receiver.read(m))
        assert receiver.receive(m, chunks[-1].index, chunks[-1].data).verified
        assert hashlib.sha256(b"".join(receiver.read(m))).digest() == m.sha256

    def test_restart_mid_file_resumes_from_what_was_kept(
        self, sender: AttachmentSpool, receiver: AttachmentSpool
    ) -> None:
        """After a crash (new spool, torn write left behind) the transfer resumes and verifies."""
        data = os.urandom(4 * CHUNK + 1)
        m = _stage(sender, data)
        chunks = _chunks(sender, m)
        for c in chunks[:2]:
            receiver.receive(m, c.index, c.data)
        with (receiver.root / "incoming" / f"{m.id}.part").open("ab") as f:
            f.write(chunks[2].data[:1000])  # torn write of chunk 2 at the crash
        restarted = AttachmentSpool(receiver.root)
        assert restarted.progress(m.descriptor).received == 2
        restarted.receive(m, 1, chunks[1].data)  # redelivered: already kept, same bytes
        for c in chunks[2:]:
            restarted.receive(m, c.index, c.data)
        assert b"".join(restarted.read(m)) == data

    def test_altered_chunk_is_refused_and_nothing_is_kept(
        self, sender: AttachmentSpool, receiver: AttachmentSpool
    ) -> None:
        """A chunk with one bit flipped is refused (attachment_chunk_invalid); the part is gone."""
        m = _stage(sender, os.urandom(2 * CHUNK))
        chunks = _chunks(sender, m)
        receiver.receive(m, 0, chunks[0].data)
        bad = bytearray(chunks[1].data)
        bad[100] ^= 1
        with pytest.raises(InvalidMessage) as info:
            receiver.receive(m, 1, bytes(bad))
        assert info.value.reason == Reason.ATTACHMENT_CHUNK_INVALID
        assert list((receiver.root / "incoming").iterdir()) == []

    def test_a_chunk_ahead_is_not_kept_until_the_gap_is_filled(
        self, sender: AttachmentSpool, receiver: AttachmentSpool
    ) -> None:
        """A chunk arriving before an earlier one is handed back (ChunkAhead), then accepted."""
        data = os.urandom(3 * CHUNK)
        m = _stage(sender, data)
        chunks = _chunks(sender, m)
        receiver.receive(m, 0, chunks[0].data)
        with pytest.raises(ChunkAhead) as info:
            receiver.receive(m, 2, chunks[2].data)
        assert info.value.expected == 1
        for c in chunks[1:]:
            receiver.receive(m, c.index, c.data)
        assert b"".join(receiver.read(m)) == data

    def test_a_kept_index_with_other_bytes_is_refused(
        self, sender: AttachmentSpool, receiver: AttachmentSpool
    ) -> None:
        """A second, different chunk 0 is refused, not silently ignored."""
        m = _stage(sender, os.urandom(2 * CHUNK))
        chunks = _chunks(sender, m)
        receiver.receive(m, 0, chunks[0].data)
        with pytest.raises(InvalidMessage) as info:
            receiver.receive(m, 0, chunks[1].data)
        assert info.value.reason == Reason.ATTACHMENT_CHUNK_INVALID

    def test_digest_mismatch_refuses_the_whole_file(
        self, sender: AttachmentSpool, receiver: AttachmentSpool
    ) -> None:
        """Chunks that authenticate but whose plaintext differs from the manifest's digest fail."""
        m = _stage(sender, os.urandom(CHUNK + 5))
        lying = replace(m, sha256=bytes(32))
        chunks = _chunks(sender, m)
        receiver.receive(lying, 0, chunks[0].data)
        with pytest.raises(InvalidMessage) as info:
            receiver.receive(lying, 1, chunks[1].data)
        assert info.value.reason == Reason.ATTACHMENT_DIGEST_MISMATCH
        assert not receiver.progress(m.descriptor).verified

    def test_chunk_longer_than_declared_is_a_size_mismatch(
        self, sender: AttachmentSpool, receiver: AttachmentSpool
    ) -> None:
        """A final chunk carrying more bytes than the manifest declares is refused."""
        m = _stage(sender, os.urandom(CHUNK + 5))
        chunks = _chunks(sender, m)
        receiver.receive(m, 0, chunks[0].data)
        with pytest.raises(InvalidMessage) as info:
            receiver.receive(m, 1, chunks[1].data + b"more")
        assert info.value.reason == Reason.ATTACHMENT_SIZE_MISMATCH


class TestRanges:
    @pytest.mark.parametrize(
        ("start", "end"),
        [(0, 1), (CHUNK - 1, CHUNK + 1), (5, 3 * CHUNK + 50), (2 * CHUNK, 2 * CHUNK), (7, None)],
    )
    def test_range_reads_return_exactly_the_bytes_asked(
        self, sender: AttachmentSpool, start: int, end: int | None
    ) -> None:
        """Any byte range reads back exactly that slice of the plaintext."""
        data = os.urandom(3 * CHUNK + 50)
        m = _stage(sender, data)
        assert b"".join(sender.read(m, start=start, end=end)) == data[start:end]

    def test_range_read_notices_an_altered_stored_chunk(self, sender: AttachmentSpool) -> None:
        """A stored chunk altered on disk is refused on read, not returned."""
        m = _stage(sender, os.urandom(2 * CHUNK))
        path = sender.root / "outgoing" / f"{m.id}.sealed"
        raw = bytearray(path.read_bytes())
        raw[CHUNK + CHUNK_OVERHEAD + 50] ^= 1
        path.write_bytes(bytes(raw))
        assert len(b"".join(sender.read(m, end=CHUNK))) == CHUNK
        with pytest.raises(InvalidMessage):
            list(sender.read(m, start=CHUNK))


class TestRecords:
    def test_files_follow_their_message_erasure(self, tmp_path: Path) -> None:
        """Once a message is in the erasure register, its files, records and keys are gone."""
        import asyncio
        from datetime import UTC, datetime

        from broker.node.attachment_transfer import NodeAttachments
        from broker.node.store import Store

        store = Store(tmp_path / "node.sqlite")
        files = NodeAttachments(store, AttachmentSpool(tmp_path / "node.attachments"))
        now = datetime(2026, 12, 2, tzinfo=UTC)

        async def pieces() -> AsyncIterator[bytes]:
            yield os.urandom(3 * CHUNK)

        manifest = asyncio.run(
            files.upload(pieces(), name="a.pdf", media_type="application/pdf", now=now)
        )
        message_id = str(uuid.uuid4())
        files.bind(message_id, [manifest])
        assert files.erase_erased() == 0
        assert files.spool.staged(manifest.id)
        with store.transaction() as db:
            db.execute(
                "INSERT INTO erasures (message_id, direction, at, why) VALUES (?, 'sent', ?, ?)",
                (message_id, now.isoformat(), "retention: test"),
            )
        assert files.erase_erased() == 1
        assert not files.spool.staged(manifest.id)
        assert files.files(message_id) == []
        store.close()

    def test_uploads_never_sent_expire_and_bound_ones_stay(self, tmp_path: Path) -> None:
        """An upload not bound to a message within the staged time is removed (record and
        file); a bound one is kept; binding an expired upload is refused, never silent."""
        import asyncio
        from datetime import UTC, datetime, timedelta

        from broker.node.attachment_transfer import NodeAttachments
        from broker.node.errors import NotFound
        from broker.node.store import Store

        store = Store(tmp_path / "node.sqlite")
        files = NodeAttachments(
            store, AttachmentSpool(tmp_path / "node.attachments"), staged_ttl=timedelta(hours=2)
        )
        start = datetime(2026, 12, 2, 8, tzinfo=UTC)

        async def pieces() -> AsyncIterator[bytes]:
            yield os.urandom(CHUNK + 7)

        def upload(at: datetime) -> Manifest:
            return asyncio.run(
                files.upload(pieces(), name="scan.pdf", media_type="application/pdf", now=at)
            )

        abandoned, sent, recent = upload(start), upload(start), upload(start + timedelta(hours=1))
        files.bind(str(uuid.uuid4()), [sent])
        assert files.expire_staged(start + timedelta(hours=1, minutes=59)) == []
        assert files.expire_staged(start + timedelta(hours=2, seconds=1)) == [abandoned.id]
        assert not files.spool.staged(abandoned.id)
        assert files.spool.staged(sent.id)
        assert files.spool.staged(recent.id)
        with pytest.raises(NotFound, match="expired or already sent"):
            files.bind(str(uuid.uuid4()), [recent, abandoned])
        # The failed bind changed nothing: the recent upload is still staged and can be sent.
        assert [m.id for m in files.staged_manifests([recent.id])] == [recent.id]
        assert files.expire_staged(start + timedelta(hours=3, seconds=1)) == [recent.id]
        store.close()


class _Transport:
    """Records publishes; fails the ``fail_at``-th one (once); tracks publishes in flight."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.published: list[tuple[str, int]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._fail_at = fail_at
        self._calls = 0

    async def submit(
        self, subject: str, data: bytes, msg_id: str, *, headers: dict[str, str]
    ) -> None:
        import asyncio

        from broker.core import attachment_wire as aw

        self._calls += 1
        call = self._calls
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # an acknowledgement comes back later
            if call == self._fail_at:
                raise ConnectionError("publish not acknowledged")
            self.published.append((msg_id, int(headers[aw.INDEX_HEADER])))
        finally:
            self.in_flight -= 1


class _Files:
    """The two things the sender uses of NodeAttachments: the spool and progress saves."""

    def __init__(self, spool: AttachmentSpool) -> None:
        self.spool = spool
        self.saves: list[tuple[int, bool]] = []

    def mark_sent(self, attachment_id: str, sent: int, *, done: bool, size: int = 0) -> None:
        del attachment_id, size
        self.saves.append((sent, done))


class TestSending:
    CHUNKS = 150  # more than SAVE_EVERY, not a multiple of the window

    def _send(
        self, sender: AttachmentSpool, transport: _Transport, files: _Files, start: int, m: Manifest
    ) -> int:
        import asyncio
        from types import SimpleNamespace

        from broker.node.attachment_transfer import _send_file

        node = SimpleNamespace(agency_id="de.lka-berlin", transport=transport)
        return asyncio.run(_send_file(node, files, str(uuid.uuid4()), m, start))  # type: ignore[arg-type]

    def test_every_chunk_is_published_once_in_order_within_the_window(
        self, sender: AttachmentSpool
    ) -> None:
        """All chunks go out in index order, never more than the window in flight, and the
        progress saves end with the whole file marked sent."""
        from broker.node.attachment_transfer import SAVE_EVERY, upload_window

        m = _stage(sender, os.urandom(self.CHUNKS * CHUNK - 10))
        transport, files = _Transport(), _Files(sender)
        assert self._send(sender, transport, files, 0, m) == self.CHUNKS
        assert [i for _, i in transport.published] == list(range(self.CHUNKS))
        assert [msg_id for msg_id, _ in transport.published][3] == f"{m.id}.3"
        assert 1 < transport.most_in_flight <= upload_window(CHUNK)
        assert files.saves[-1] == (self.CHUNKS, True)
        assert all(not done for _, done in files.saves[:-1])
        assert len(files.saves) <= self.CHUNKS // SAVE_EVERY + 1

    def test_a_fault_resumes_from_the_last_saved_point_and_loses_nothing(
        self, sender: AttachmentSpool
    ) -> None:
        """A publish that fails part-way raises; what was saved was acknowledged, and
        resuming from it publishes the rest (a few chunks again, never one missing)."""
        m = _stage(sender, os.urandom(self.CHUNKS * CHUNK - 10))
        transport, files = _Transport(fail_at=100), _Files(sender)
        with pytest.raises(ConnectionError):
            self._send(sender, transport, files, 0, m)
        saved = files.saves[-1][0] if files.saves else 0
        acknowledged = {i for _, i in transport.published}
        assert set(range(saved)) <= acknowledged
        assert 99 not in acknowledged  # the 100th publish failed
        assert saved <= 99
        assert self._send(sender, transport, files, saved, m) == self.CHUNKS - saved
        assert {i for _, i in transport.published} == set(range(self.CHUNKS))
        assert files.saves[-1] == (self.CHUNKS, True)


class _Quiet:
    """What the upload loop uses of NodeAttachments, with nothing to send: counts its looks."""

    def __init__(self) -> None:
        from broker.node.attachment_transfer import BUSY_SECONDS

        self.bound_at = -BUSY_SECONDS
        self.on_bound: Any = lambda: None
        self.looks = 0

    def to_send(self) -> list[Any]:
        self.looks += 1
        return []

    def erase_erased(self) -> None:
        return


class TestUploadLoop:
    def test_files_bound_on_a_quiet_node_wake_the_loop_at_once(self) -> None:
        """Idle, the loop looks every ``interval``; binding files (from the send path's worker
        thread) wakes it at once instead of leaving the first file of a quiet node waiting up
        to ``interval`` behind its message."""
        import asyncio
        import threading
        import time
        from types import SimpleNamespace

        from broker.node.attachment_transfer import run_uploads

        files = _Quiet()

        async def go() -> float:
            loop = asyncio.create_task(run_uploads(SimpleNamespace(), files, interval=30.0))  # type: ignore[arg-type]
            while files.looks < 1:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # the loop is in its idle wait now
            started = time.monotonic()

            def bind() -> None:
                files.bound_at = time.monotonic()
                files.on_bound()

            threading.Thread(target=bind).start()
            while files.looks < 2 and time.monotonic() - started < 5:
                await asyncio.sleep(0.01)
            loop.cancel()
            return time.monotonic() - started

        assert asyncio.run(go()) < 1.0
        assert files.looks >= 2


class TestWaiting:
    def test_a_chunk_ahead_of_its_message_is_offered_again_soon_then_less_often(self) -> None:
        """The first waits are short (the message is usually just behind), growing to the
        bound: a small file is not held up by a fixed two-second wait."""
        from broker.node.attachment_transfer import WAIT_FOR_MESSAGE, wait_delay

        delays = [wait_delay(n) for n in range(1, 12)]
        assert delays[0] <= 0.1
        assert delays == sorted(delays)
        assert delays[-1] == WAIT_FOR_MESSAGE


class TestSettings:
    @pytest.mark.parametrize("bad", [0, -1, True, "24", None])
    def test_staged_hours_must_be_a_positive_number(self, bad: object) -> None:
        """``attachments.staged_hours``: a positive number of hours, nothing else."""
        from broker.errors import ConfigError
        from broker.node.attachment_scan import AttachmentSettings

        with pytest.raises(ConfigError, match="staged_hours"):
            AttachmentSettings.from_json({"staged_hours": bad})

    def test_staged_hours_default_and_given(self) -> None:
        """24 hours unless the settings say otherwise; unknown members are still refused."""
        from broker.errors import ConfigError
        from broker.node.attachment_scan import AttachmentSettings

        assert AttachmentSettings.from_json(None).staged_hours == 24.0
        assert AttachmentSettings.from_json({"staged_hours": 1.5}).staged_hours == 1.5
        with pytest.raises(ConfigError):
            AttachmentSettings.from_json({"staged_hour": 2})
