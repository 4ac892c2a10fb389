"""A node's attachments end to end: upload, send behind the message, receive, hold, settle.

What it is for
    - **Upload** (API, before sending): a file is sealed into the spool as it streams in
      (:class:`~broker.node.attachments.AttachmentSpool`) and recorded as ``staged``; the
      handle is its attachment id. A draft names handles; the node puts their descriptors in
      the header and their manifests in the inner payload (docs/protocol.md section 17).
    - **Send** (:func:`run_uploads`): once JetStream acknowledged the message, its files'
      chunks are published on ``cb.att.submit.<agency>`` from the spool, a sliding window of
      1 MiB in flight, progress saved every 64 chunks, so a restart resumes from the last saved
      point (Nats-Msg-Id per chunk makes a republished chunk a duplicate; the recipient takes
      a chunk it has with the same bytes as one).
    - **Receive**: a message with files that passed every check is *held* (no inbox entry, no
      evidence) and acknowledged; chunks arriving on the node's own consumer
      (:func:`run_chunk_feed`) are verified into the spool. When every file verified, the held
      message is settled again through the node's normal path: stored and ``delivered``
      evidence; when a file fails, it is refused there with the file's reason code and
      ``rejected`` evidence. A message whose files never complete is refused
      (``attachment_incomplete``) when it expires.

What it must never do
    Show a message as delivered before every file verified, hold a whole file in memory,
    write SQL outside the tables of :data:`MIGRATION`, or refuse a message for a fault of ours
    (a store or NATS failure retries; only peer faults become refusals).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import structlog

from broker.core import attachment_wire as aw
from broker.core.attachments import (
    DEFAULT_CHUNK_SIZE,
    ChunkSealer,
    Manifest,
    SealedChunk,
    parse_manifest,
)
from broker.core.envelope import OpenedMessage
from broker.core.header import Header
from broker.errors import InvalidMessage, Reason
from broker.node.attachment_scan import APPROVED, PENDING, scan
from broker.node.attachments import AttachmentSpool, ChunkAhead
from broker.node.errors import BadRequest, NotFound
from broker.node.model import Receipt, iso
from broker.node.store import Store
from broker.sniff import HEAD_BYTES, sniff_bytes

if TYPE_CHECKING:
    from broker.node.service import Node

log = structlog.get_logger("casebridge.node.attachments")

# Tables (store migration 6, broker/node/store.py): ``attachments`` (one row per file, sent
# or received; the manifest with its key is kept like a message body, in the store) and
# ``attachment_holds`` (messages accepted but not delivered until their files verified).

STAGED: Final = "staged"
BOUND: Final = "bound"
SENT: Final = "sent"
RECEIVING: Final = "receiving"
VERIFIED: Final = "verified"
REFUSED: Final = "refused"
# An upload not sent with a message within this time is removed by the hold sweeps.
DEFAULT_STAGED_TTL: Final = timedelta(hours=24)
# Chunk bytes in flight per file (publishes not yet acknowledged: what the sender holds; 2
# chunks of 512 KiB, 4 of 256 KiB), and how many acknowledged chunks between two saves of
# its progress (a restart resends at most these).
UPLOAD_WINDOW_BYTES: Final = 1 << 20
SAVE_EVERY: Final = 64


def upload_window(chunk_size: int) -> int:
    """Chunk publishes in flight for a file of ``chunk_size`` chunks."""
    return max(1, UPLOAD_WINDOW_BYTES // chunk_size)


FEED_BATCH: Final = 4
FEED_TIMEOUT: Final = 1.0
# A chunk whose message is not here yet waits; chunks travel behind their message, so this
# only covers the two consumers' lag.
WAIT_FOR_MESSAGE: Final = 2.0
BUSY_SECONDS: Final = 30.0
BUSY_POLL: Final = 0.05
# A chunk ahead of a missing one is offered again up to this many times (about 165 s with
# gap_delay): longer than a gateway takes to offer a chunk again after a fault (its consumers
# ack_wait is 15 s), so a reordering in transit heals; a file whose sender skipped a chunk is
# refused after that.
GAP_ATTEMPTS: Final = 20


def _manifest(row: sqlite3.Row | tuple[Any, ...], column: int = 0) -> Manifest:
    return parse_manifest(json.loads(row[column]))


@dataclass(frozen=True, kw_only=True, slots=True)
class FileState:
    """One file of a message, as the API shows it (never the key)."""

    manifest: Manifest
    state: str
    reason: str | None
    detail: str | None
    sniffed: str | None = None  # what the content looks like (broker/sniff.py)
    scan: str | None = None  # None (no scanner), pending, approved or quarantined
    scan_reason: str | None = None

    @property
    def openable(self) -> bool:
        """May a person download it: verified, and approved by the scanner if there is one."""
        return self.state == VERIFIED and self.scan in (None, APPROVED)

    def to_json(self) -> dict[str, Any]:
        d = self.manifest.descriptor
        return {
            "id": d.id,
            "name": self.manifest.name,
            "media_type": d.media_type,
            "size": d.size,
            "sha256": self.manifest.to_json()["sha256"],
            "state": self.state,
            "reason": self.reason,
            "detail": self.detail,
            "sniffed_type": self.sniffed,
            "scan": self.scan,
            "scan_reason": self.scan_reason,
        }


class NodeAttachments:
    """The node's attachment records (own tables in the node's store) and its spool."""

    def __init__(
        self,
        store: Store,
        spool: AttachmentSpool,
        *,
        max_size: int = 1 << 32,
        scanner: Sequence[str] = (),
        scan_timeout: float = 120.0,
        staged_ttl: timedelta = DEFAULT_STAGED_TTL,
    ) -> None:
        self.store = store
        self.spool = spool
        self.max_size = max_size
        self.staged_ttl = staged_ttl
        self.scanner = tuple(scanner)
        self.scan_timeout = scan_timeout
        # When files were last bound to a message being sent: the upload loop then looks for
        # the message's acknowledgement often, so that the files follow it at once.
        self.bound_at = -BUSY_SECONDS
        # Called (from whichever thread binds) when files were bound: wakes the upload loop
        # out of its idle wait (set by :func:`run_uploads`).
        self.on_bound: Callable[[], None] = lambda: None
        # Counts a file that ended one way: (direction ``in``/``out``, outcome ``sent``,
        # ``verified`` or ``refused``, plaintext bytes; 0 when refused) — the node's metrics.
        self.on_file: Callable[[str, str, int], None] = lambda _d, _o, _n: None
        # Files being received (only this node's chunk loop changes their state): no store
        # read per chunk.
        self._receiving: dict[str, tuple[str, Manifest]] = {}

    def _one(self, sql: str, *args: object) -> Any:
        return self.store.query(lambda db: db.execute(sql, args).fetchone())

    # ---------------------------------------------------------------- upload ---

    async def upload(
        self,
        pieces: AsyncIterator[bytes],
        *,
        name: str,
        media_type: str,
        now: datetime,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Manifest:
        """Seal a streamed upload into the spool and record it as staged; the handle is its
        id. A cut-off upload or one over the size limit leaves nothing."""
        attachment_id = str(uuid.uuid4())
        try:
            sealer = ChunkSealer(
                attachment_id=attachment_id,
                key=os.urandom(32),
                nonce=lambda _: os.urandom(12),
                chunk_size=chunk_size,
                max_size=self.max_size,
            )
            staging = self.spool.open_staging(attachment_id)
        except InvalidMessage as exc:
            raise BadRequest(exc.detail) from None
        try:
            async for piece in pieces:
                for chunk in sealer.feed(piece):
                    await asyncio.to_thread(staging.write, chunk.data)
            last, manifest = sealer.finish(name=name, media_type=media_type)
            await asyncio.to_thread(staging.write, last.data)
            await asyncio.to_thread(staging.commit)
        except BaseException as exc:
            staging.abort()
            if isinstance(exc, InvalidMessage):
                raise BadRequest(exc.detail) from None
            raise
        await asyncio.to_thread(self._record_staged, manifest, now)
        return manifest

    def _record_staged(self, manifest: Manifest, now: datetime) -> None:
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO attachments (id, direction, manifest, state, created_at) "
                "VALUES (?, 'out', ?, ?, ?)",
                (manifest.id, json.dumps(manifest.to_json()), STAGED, iso(now)),
            )

    def staged_manifests(self, handles: Sequence[str]) -> tuple[Manifest, ...]:
        """The manifests of ``handles`` (uploaded here, not yet sent), in the given order."""
        if len(set(handles)) != len(handles):
            raise BadRequest("an attachment is named twice")
        found: list[Manifest] = []
        for handle in handles:
            row = self._one(
                "SELECT manifest, state FROM attachments WHERE id = ? AND direction = 'out'",
                handle,
            )
            if row is None:
                raise NotFound(f"no uploaded attachment {handle}")
            if row[1] != STAGED:
                raise BadRequest(f"attachment {handle} was already sent with another message")
            found.append(_manifest(row))
        return tuple(found)

    def manifests_for(self, header: Header) -> tuple[Manifest, ...]:
        """The manifests to seal with ``header`` (its descriptors' files, uploaded here)."""
        if not header.attachments:
            return ()
        manifests = self.staged_manifests([d.id for d in header.attachments])
        if tuple(m.descriptor for m in manifests) != header.attachments:
            raise BadRequest("attachment descriptors differ from the uploads")
        return manifests

    def bind(self, message_id: str, manifests: Sequence[Manifest]) -> None:
        """Mark uploads as the files of ``message_id`` (to send once it is acknowledged)."""
        with self.store.transaction() as db:
            self.bind_within(db, message_id, manifests)
        self.bound()

    def bind_within(
        self, db: sqlite3.Connection, message_id: str, manifests: Sequence[Manifest]
    ) -> None:
        """:meth:`bind` inside the caller's transaction (the node's outbox commit: the files
        are bound exactly when the message is stored); call :meth:`bound` after the commit."""
        for position, m in enumerate(manifests):
            bound = db.execute(
                "UPDATE attachments SET message_id = ?, position = ?, state = ? "
                "WHERE id = ? AND direction = 'out' AND state = ?",
                (message_id, position, BOUND, m.id, STAGED),
            ).rowcount
            if bound != 1:  # expired (or taken by another send) since it was checked
                raise NotFound(f"no uploaded attachment {m.id} (expired or already sent)")

    def bound(self) -> None:
        """Files were bound (committed): the upload loop looks for their message at once."""
        self.bound_at = time.monotonic()
        self.on_bound()

    def expire_staged(self, now: datetime) -> list[str]:
        """Uploads never sent within :attr:`staged_ttl` (a draft refused or abandoned, a
        client that never sent): their records and sealed files removed; their ids."""
        cutoff = iso(now - self.staged_ttl)
        rows = self.store.query(
            lambda db: db.execute(
                "SELECT id FROM attachments WHERE direction = 'out' AND state = ? "
                "AND message_id IS NULL AND created_at < ?",
                (STAGED, cutoff),
            ).fetchall()
        )
        expired: list[str] = []
        for (attachment_id,) in rows:
            with self.store.transaction() as db:
                gone = db.execute(
                    "DELETE FROM attachments WHERE id = ? AND state = ? AND message_id IS NULL",
                    (attachment_id, STAGED),
                ).rowcount
            if gone:  # the record first: a file without a record is never sent
                self.spool.erase(attachment_id)
                expired.append(attachment_id)
        return expired

    # --------------------------------------------------------------- sending ---

    def to_send(self) -> list[tuple[str, Manifest, int]]:
        """(message id, manifest, chunks already sent) of every file whose message JetStream
        has acknowledged and whose chunks are not all sent."""
        rows = self.store.query(
            lambda db: db.execute(
                "SELECT a.message_id, a.manifest, a.sent FROM attachments a "
                "JOIN outbox o ON o.id = a.message_id "
                "WHERE a.direction = 'out' AND a.state = ? AND o.state = 'acknowledged' "
                "ORDER BY a.created_at, a.position",
                (BOUND,),
            ).fetchall()
        )
        return [(r[0], _manifest(r, 1), int(r[2])) for r in rows]

    def mark_sent(self, attachment_id: str, sent: int, *, done: bool, size: int = 0) -> None:
        """Save how many chunks of a file were acknowledged (``done``: all; ``size``: its
        plaintext bytes, counted then)."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE attachments SET sent = ?, state = ? WHERE id = ?",
                (sent, SENT if done else BOUND, attachment_id),
            )
        if done:
            self.on_file("out", "sent", size)

    # ------------------------------------------------------------- receiving ---

    def files_ready(self, opened: OpenedMessage) -> bool:
        """Whether every file of ``opened`` verified; raises the first refused file's
        ``InvalidMessage`` (the message is then refused with that reason)."""
        ready = True
        for m in opened.attachments:
            row = self._one(
                "SELECT state, reason, detail, message_id, manifest FROM attachments "
                "WHERE id = ? AND direction = 'in'",
                m.id,
            )
            if row is not None and (row[3] != opened.header.id or _manifest(row, 4) != m):
                # Another message already claimed this attachment id: a replayed or forged
                # manifest; its chunks cannot be told apart, so this message is refused.
                raise InvalidMessage(
                    Reason.ATTACHMENT_CHUNK_INVALID, f"attachment id {m.id} already in use"
                )
            if row is None or row[0] == RECEIVING:
                ready = False
            elif row[0] == REFUSED:
                raise InvalidMessage(Reason(row[1]), row[2] or "")
        return ready

    def hold(self, opened: OpenedMessage, receipt: Receipt, wire: bytes, now: datetime) -> None:
        """Keep an accepted message until its files verified (runs in the delivery's
        transaction: a message is held exactly when its delivery is acknowledged)."""
        with self.store.transaction() as db:
            for position, m in enumerate(opened.attachments):
                db.execute(
                    "INSERT OR IGNORE INTO attachments (id, direction, message_id, position, "
                    "manifest, state, created_at) VALUES (?, 'in', ?, ?, ?, ?, ?)",
                    (
                        m.id,
                        opened.header.id,
                        position,
                        json.dumps(m.to_json()),
                        RECEIVING,
                        iso(now),
                    ),
                )
            db.execute(
                "INSERT OR IGNORE INTO attachment_holds (message_id, wire, digest, sequence, "
                "exp, held_at) VALUES (?, ?, ?, ?, ?, ?)",
                (opened.header.id, wire, receipt.digest, receipt.sequence, opened.header.exp,
                 iso(now)),
            )  # fmt: skip

    def incoming(self, attachment_id: str) -> tuple[str, Manifest, str] | None:
        cached = self._receiving.get(attachment_id)
        if cached is not None:
            return cached[0], cached[1], RECEIVING
        row = self.store.query(
            lambda db: db.execute(
                "SELECT message_id, manifest, state FROM attachments "
                "WHERE id = ? AND direction = 'in'",
                (attachment_id,),
            ).fetchone()
        )
        if row is None:
            return None
        found = (row[0], _manifest(row, 1), row[2])
        if found[2] == RECEIVING:
            self._receiving[attachment_id] = (found[0], found[1])
        return found

    def set_state(
        self, attachment_id: str, state: str, *, reason: str | None = None, detail: str = ""
    ) -> None:
        self._receiving.pop(attachment_id, None)
        with self.store.transaction() as db:
            changed = db.execute(
                "UPDATE attachments SET state = ?, reason = ?, detail = ? WHERE id = ? "
                "AND state != ?",
                (state, reason, detail or None, attachment_id, state),
            ).rowcount
        if changed and state == REFUSED:
            self.on_file("in", "refused", 0)

    def verified(self, manifest: Manifest) -> None:
        """A received file verified whole: record its sniffed type; queue it for the scanner."""
        self._receiving.pop(manifest.id, None)
        head = b"".join(self.spool.read(manifest, end=HEAD_BYTES))
        with self.store.transaction() as db:
            db.execute(
                "UPDATE attachments SET state = ?, sniffed = ?, scan = ? WHERE id = ?",
                (VERIFIED, sniff_bytes(head), PENDING if self.scanner else None, manifest.id),
            )
        self.on_file("in", "verified", manifest.descriptor.size)

    def to_scan(self) -> list[Manifest]:
        rows = self.store.query(
            lambda db: db.execute(
                "SELECT manifest FROM attachments WHERE direction = 'in' AND state = ? "
                "AND scan = ?",
                (VERIFIED, PENDING),
            ).fetchall()
        )
        return [_manifest(r) for r in rows]

    def set_scan(self, attachment_id: str, result: str, reason: str) -> None:
        with self.store.transaction() as db:
            db.execute(
                "UPDATE attachments SET scan = ?, scan_reason = ? WHERE id = ?",
                (result, reason, attachment_id),
            )

    def held(self, message_id: str) -> tuple[bytes, Receipt] | None:
        row = self.store.query(
            lambda db: db.execute(
                "SELECT wire, digest, sequence FROM attachment_holds WHERE message_id = ?",
                (message_id,),
            ).fetchone()
        )
        return None if row is None else (bytes(row[0]), Receipt(digest=row[1], sequence=row[2]))

    def settled_holds(self) -> list[str]:
        """Held messages whose files are all verified, or one refused."""
        rows = self.store.query(
            lambda db: db.execute(
                "SELECT h.message_id FROM attachment_holds h WHERE NOT EXISTS ("
                "SELECT 1 FROM attachments a WHERE a.message_id = h.message_id "
                "AND a.direction = 'in' AND a.state = ?) OR EXISTS ("
                "SELECT 1 FROM attachments a WHERE a.message_id = h.message_id "
                "AND a.direction = 'in' AND a.state = ?)",
                (RECEIVING, REFUSED),
            ).fetchall()
        )
        return [r[0] for r in rows]

    def expire_holds(self, now: datetime) -> list[str]:
        """Mark the files of held messages past their expiry as incomplete; their ids."""
        rows = self.store.query(
            lambda db: db.execute(
                "SELECT message_id FROM attachment_holds WHERE exp < ?",
                (int(now.timestamp()),),
            ).fetchall()
        )
        for (message_id,) in rows:
            with self.store.transaction() as db:
                incomplete = db.execute(
                    "UPDATE attachments SET state = ?, reason = ?, detail = ? "
                    "WHERE message_id = ? AND direction = 'in' AND state = ?",
                    (
                        REFUSED,
                        Reason.ATTACHMENT_INCOMPLETE.value,
                        "the message expired before its files arrived",
                        message_id,
                        RECEIVING,
                    ),
                ).rowcount
            for _ in range(incomplete):
                self.on_file("in", "refused", 0)
        if rows:
            self._receiving.clear()  # their states changed in the store
        return [r[0] for r in rows]

    def release(self, message_id: str) -> None:
        """The held message was settled (delivered or refused): drop the hold, and the
        files of a refused message."""
        with self.store.transaction() as db:
            db.execute("DELETE FROM attachment_holds WHERE message_id = ?", (message_id,))
        refused = self.store.query(
            lambda db: db.execute(
                "SELECT 1 FROM rejections WHERE message_id = ? LIMIT 1", (message_id,)
            ).fetchone()
        )
        if refused is not None:
            for f in self.files(message_id):
                self.spool.discard(f.manifest.id)

    # ------------------------------------------------------------- reading ---

    def files(self, message_id: str) -> list[FileState]:
        rows = self.store.query(
            lambda db: db.execute(
                "SELECT manifest, state, reason, detail, sniffed, scan, scan_reason "
                "FROM attachments WHERE message_id = ? ORDER BY position",
                (message_id,),
            ).fetchall()
        )
        return [
            FileState(
                manifest=_manifest(r),
                state=r[1],
                reason=r[2],
                detail=r[3],
                sniffed=r[4],
                scan=r[5],
                scan_reason=r[6],
            )
            for r in rows
        ]

    def erase_erased(self) -> int:
        """Files follow their message's erasure (retention purge, withdrawal): the files of
        every message in the erasure register are removed with their records and keys."""
        rows = self.store.query(
            lambda db: db.execute(
                "SELECT DISTINCT a.message_id FROM attachments a "
                "JOIN erasures e ON e.message_id = a.message_id "
                "AND e.direction = CASE a.direction WHEN 'in' THEN 'received' ELSE 'sent' END "
                "LIMIT 100"
            ).fetchall()
        )
        return sum(self.erase(r[0]) for r in rows)

    def erase(self, message_id: str) -> int:
        """Retention and erasure: remove a message's files and their records."""
        found = self.files(message_id)
        for f in found:
            self.spool.erase(f.manifest.id)
        with self.store.transaction() as db:
            db.execute("DELETE FROM attachments WHERE message_id = ?", (message_id,))
        return len(found)


# ------------------------------------------------------------------- loops ---


async def send_files(node: Node, files: NodeAttachments) -> int:
    """Publish the chunks of every acknowledged message's unsent files; chunks published."""
    published = 0
    for message_id, manifest, sent in await asyncio.to_thread(files.to_send):
        published += await _send_file(node, files, message_id, manifest, sent)
    return published


async def _send_file(
    node: Node, files: NodeAttachments, message_id: str, manifest: Manifest, sent: int
) -> int:
    """Publish one file's chunks from ``sent`` on: a sliding window of :func:`upload_window`
    publishes in flight, their acknowledgements taken in order, progress saved every
    :data:`SAVE_EVERY` acknowledged chunks and at the end. A fault raises after the chunks in
    flight settled; the next attempt resumes from the last saved point (the chunks after it
    are published again: the recipient takes a chunk it has as a duplicate)."""
    d = manifest.descriptor
    headers = {aw.MESSAGE_HEADER: message_id, aw.ATTACHMENT_HEADER: d.id}
    subject = aw.att_submit_subject(node.agency_id)
    chunks = files.spool.sealed_chunks(d, start=sent)
    in_flight: collections.deque[asyncio.Task[None]] = collections.deque()
    window = upload_window(d.chunk_size)
    done = saved = sent
    try:
        while done < d.chunks:
            batch = await asyncio.to_thread(_take, chunks, window)
            for c in batch:
                if len(in_flight) >= window:
                    await in_flight.popleft()
                    done += 1
                # Tasks start in creation order: the chunks are published in index order.
                in_flight.append(
                    asyncio.ensure_future(
                        node.transport.submit(
                            subject,
                            c.data,
                            aw.chunk_msg_id(d.id, c.index),
                            headers={**headers, aw.INDEX_HEADER: str(c.index)},
                        )
                    )
                )
            if not batch:
                while in_flight:
                    await in_flight.popleft()
                    done += 1
            if done - saved >= SAVE_EVERY or done >= d.chunks:
                await asyncio.to_thread(
                    functools.partial(
                        files.mark_sent, d.id, done, done=done >= d.chunks, size=d.size
                    )
                )
                saved = done
    finally:
        # A fault (or cancellation) leaves nothing publishing behind the caller's back.
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        chunks.close()
    return done - sent


def _take(chunks: Iterator[SealedChunk], n: int) -> list[SealedChunk]:
    return [c for _, c in zip(range(n), chunks, strict=False)]


async def run_uploads(node: Node, files: NodeAttachments, *, interval: float = 1.0) -> None:
    """Send files behind their acknowledged messages, and remove the files of erased
    messages, forever; faults retry."""
    # Idle, the loop looks every ``interval``; files bound to a message wake it at once, and
    # for BUSY_SECONDS after that it looks every BUSY_POLL for the message's acknowledgement
    # (the first file of a quiet node would otherwise wait up to ``interval`` to leave).
    bound = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed (the node is stopping)
            loop.call_soon_threadsafe(bound.set)

    files.on_bound = wake
    while True:
        try:
            if await send_files(node, files) == 0:
                await asyncio.to_thread(files.erase_erased)
                if time.monotonic() - files.bound_at < BUSY_SECONDS:
                    await asyncio.sleep(BUSY_POLL)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(bound.wait(), timeout=interval)
                bound.clear()
        except Exception as exc:  # noqa: BLE001 - transport or store fault: retried
            log.warning("attachment_send_failed", error=repr(exc))
            await asyncio.sleep(interval)


@dataclass(slots=True)
class _Held:
    """A held message handed back to the node's settlement path (a Delivery)."""

    data: bytes
    sequence: int
    headers: Mapping[str, str]
    attempts: int = 1
    evidence: bool = False

    async def ack(self) -> None:
        return None

    async def nak(self, delay: float) -> None:
        return None

    async def term(self) -> None:
        return None


async def settle_holds(node: Node, files: NodeAttachments) -> int:
    """Settle every held message whose files are done (verified, or one refused/expired)."""
    await asyncio.to_thread(files.expire_holds, node.now())
    count = 0
    for message_id in await asyncio.to_thread(files.settled_holds):
        held = await asyncio.to_thread(files.held, message_id)
        if held is None:
            continue
        wire, receipt = held
        await node.handle(_Held(data=wire, sequence=receipt.sequence, headers={}))
        if await asyncio.to_thread(node.store.processed, receipt):
            await asyncio.to_thread(files.release, message_id)
            count += 1
    return count


def wait_delay(attempts: int) -> float:
    """How long a chunk whose message is not held here yet waits before it is offered again:
    short at first (the message is usually a few hundred milliseconds behind, on the node's
    message lane), then longer, up to :data:`WAIT_FOR_MESSAGE`."""
    return float(min(0.1 * 2 ** max(attempts - 1, 0), WAIT_FOR_MESSAGE))


def gap_delay(attempts: int) -> float:
    """How long a chunk that arrived ahead of a missing one waits before it is offered again."""
    return float(min(0.5 * 2 ** max(attempts - 1, 0), 10.0))


def receive_chunk(
    files: NodeAttachments,
    headers: Mapping[str, str],
    data: bytes,
    *,
    attempts: int = 1,
    durable: bool = True,
) -> str:
    """Verify one chunk into the spool: ``ack``, ``wait`` (its message or an earlier chunk is
    not here yet) or ``done`` (refused or already settled: acknowledge and forget). A chunk
    still ahead of a missing one after :data:`GAP_ATTEMPTS` offers refuses the file."""
    attachment_id = headers.get(aw.ATTACHMENT_HEADER, "")
    index = headers.get(aw.INDEX_HEADER, "")
    if not index.isdigit():
        return "done"
    found = files.incoming(attachment_id)
    if found is None:
        return "wait"
    _message_id, manifest, state = found
    if state != RECEIVING:
        return "done"
    try:
        try:
            files.spool.receive(manifest, int(index), data, durable=durable)
        except ChunkAhead as ahead:
            if attempts < GAP_ATTEMPTS:
                return "gap"
            raise InvalidMessage(
                Reason.ATTACHMENT_CHUNK_INVALID,
                f"attachment {attachment_id}: chunk {ahead.expected} missing "
                f"(chunk {index} arrived {attempts} times without it)",
            ) from None
    except InvalidMessage as exc:
        files.set_state(attachment_id, REFUSED, reason=exc.reason.value, detail=exc.detail)
        log.warning("attachment_refused", attachment=attachment_id, reason=exc.reason.value)
        return "done"
    if files.spool.progress(manifest.descriptor).verified:
        files.verified(manifest)
    return "ack"


def receive_batch(
    files: NodeAttachments, items: Sequence[tuple[Mapping[str, str], bytes, int]]
) -> list[str | Exception]:
    """Receive a fetch batch (one worker-thread hop, one fsync per file touched); the outcome
    of each chunk, or the exception (ours) that kept it from being settled."""
    outcomes: list[str | Exception] = []
    for headers, data, attempts in items:
        try:
            outcomes.append(receive_chunk(files, headers, data, attempts=attempts, durable=False))
        except Exception as exc:  # noqa: BLE001 - settled by the caller (offered again)
            outcomes.append(exc)
    try:
        files.spool.flush()
    except OSError as exc:
        return [exc for _ in outcomes]  # nothing acknowledged: every chunk comes again
    return outcomes


async def run_chunk_feed(node: Node, files: NodeAttachments, feed: Any) -> None:
    """Receive this agency's chunks (``feed``: :class:`NatsChunkFeed`), forever."""
    async for batch in feed.batches():
        touched = False
        items = [(dict(m.headers or {}), m.data, m.metadata.num_delivered or 1) for m in batch]
        results = await asyncio.to_thread(receive_batch, files, items)
        for msg, (_, _, attempts), result in zip(batch, items, results, strict=True):
            outcome = "wait" if isinstance(result, Exception) else result
            if isinstance(result, Exception):
                # Ours (store, disk): offered again later, never refused for it.
                log.warning("chunk_not_settled", error=repr(result))
            try:
                if outcome == "wait":
                    await msg.nak(delay=wait_delay(attempts))
                elif outcome == "gap":
                    await msg.nak(delay=gap_delay(attempts))
                else:
                    await msg.ack()
                    touched = True
            except Exception as exc:  # noqa: BLE001 - NATS: the chunk comes back after ack_wait
                log.warning("chunk_not_settled", error=repr(exc))
        if touched:
            try:
                await settle_holds(node, files)
            except Exception as exc:  # noqa: BLE001 - retried at the next chunk or sweep
                log.warning("holds_not_settled", error=repr(exc))


async def run_hold_sweeps(node: Node, files: NodeAttachments, *, interval: float = 60.0) -> None:
    """Refuse held messages whose files can no longer complete (expired), even when no chunk
    arrives any more; and settle any hold a crash left settled but not released."""
    while True:
        await asyncio.sleep(interval)
        try:
            await settle_holds(node, files)
        except Exception as exc:  # noqa: BLE001 - retried at the next sweep
            log.warning("holds_not_settled", error=repr(exc))
        try:
            expired = await asyncio.to_thread(files.expire_staged, node.now())
            if expired:
                log.info("staged_uploads_expired", count=len(expired))
        except Exception as exc:  # noqa: BLE001 - retried at the next sweep
            log.warning("staged_uploads_not_expired", error=repr(exc))


async def run_scans(files: NodeAttachments, *, interval: float = 1.0) -> None:
    """Hand every verified received file to the scanner once (approve or quarantine)."""
    while True:
        try:
            for manifest in await asyncio.to_thread(files.to_scan):
                result, reason = await asyncio.to_thread(
                    functools.partial(
                        scan,
                        files.spool,
                        manifest,
                        argv=files.scanner,
                        timeout=files.scan_timeout,
                    )
                )
                await asyncio.to_thread(files.set_scan, manifest.id, result, reason)
                log.info("attachment_scanned", attachment=manifest.id, result=result)
        except Exception as exc:  # noqa: BLE001 - store fault: retried
            log.warning("attachment_scan_failed", error=repr(exc))
        await asyncio.sleep(interval)


class NatsChunkFeed:
    """The node's own connection for chunks (bulk traffic never delays its message lanes)."""

    def __init__(self, settings: Any) -> None:
        self._settings = settings
        self._nc: Any = None

    async def batches(self) -> AsyncIterator[list[Any]]:
        # The NATS edge is imported on first use, as runtime.nats_transport does.
        from broker.nats import connect, tls_context  # noqa: PLC0415

        nats = self._settings.nats
        self._nc = await connect(
            nats.url,
            tls=tls_context(ca_file=nats.ca_file, cert_file=nats.cert_file, key_file=nats.key_file),
            inbox_prefix=f"_INBOX.{self._settings.agency}",
            name=f"node {self._settings.agency} attachments",
        )
        js = self._nc.jetstream()
        sub = None
        ahead: asyncio.Task[list[Any]] | None = None
        try:
            while True:
                try:
                    if sub is None:
                        sub = await js.pull_subscribe_bind(
                            durable=aw.att_node_durable(self._settings.agency),
                            stream=aw.ATT_DELIVER_STREAM,
                        )
                    if ahead is None:
                        ahead = asyncio.ensure_future(sub.fetch(FEED_BATCH, timeout=FEED_TIMEOUT))
                    batch = await ahead
                except TimeoutError:
                    ahead = None
                    continue
                except Exception as exc:  # noqa: BLE001 - NATS faults: retried forever
                    ahead = None
                    log.warning("chunk_fetch_failed", error=repr(exc))
                    await asyncio.sleep(0.5)
                    continue
                # The next batch is fetched while this one is verified and written: at most
                # two batches held (2 x FEED_BATCH chunks).
                ahead = asyncio.ensure_future(sub.fetch(FEED_BATCH, timeout=FEED_TIMEOUT))
                yield batch
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
