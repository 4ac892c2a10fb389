"""Attachment files of a node: sealed at upload, kept sealed at rest, verified on arrival.

What it is for
    The node's file edge for docs/protocol.md section 17. A directory next to the SQLite
    store holds every file only in its sealed form (the chunks exactly as they travel: AES-GCM
    under the file's own key), so a file is as protected at rest as on the wire:

    - ``outgoing/<id>.sealed``: staged by an upload before the message is sent; read back
      chunk by chunk to publish;
    - ``incoming/<id>.part``: chunks received so far, each verified before it is written;
      renamed to ``incoming/<id>.sealed`` only once the whole file verified (every chunk and
      the plaintext SHA-256). A file is never readable as delivered before that rename.

    Every chunk has a fixed place in its file (``index * (chunk_size + 28)``), so no framing is
    stored, progress after a crash is the length of the ``.part`` file (a torn last write is cut
    off), and a range of plaintext is read by decrypting only the chunks it touches.

What it must never do
    Hold more than one chunk of a file in memory, show an unverified file as delivered,
    write plaintext to disk, or decide anything about messages (the node's loops do). Calls
    block (file I/O): async callers run them in a thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from broker.core.attachments import (
    CHUNK_OVERHEAD,
    ChunkOpener,
    ChunkSealer,
    Descriptor,
    Manifest,
    SealedChunk,
    open_chunk,
)
from broker.errors import InvalidMessage, Reason

OUTGOING: Final = "outgoing"
INCOMING: Final = "incoming"


def sealed_offset(descriptor: Descriptor, index: int) -> int:
    """Where chunk ``index`` starts in a sealed file."""
    return index * (descriptor.chunk_size + CHUNK_OVERHEAD)


def sealed_length(descriptor: Descriptor, index: int) -> int:
    return descriptor.chunk_plain_size(index) + CHUNK_OVERHEAD


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChunkAhead(Exception):
    """A chunk arrived before an earlier one of its file: not kept; offer it again later (the
    transport may reorder; a chunk that stays missing is the caller's refusal to make)."""

    def __init__(self, expected: int) -> None:
        super().__init__(f"chunk {expected} not received yet")
        self.expected = expected


@dataclass(frozen=True, kw_only=True, slots=True)
class Progress:
    """How far an incoming file is: chunks verified and kept, out of ``chunks``."""

    attachment_id: str
    received: int
    chunks: int
    verified: bool


class Staging:
    """An outgoing file being written: ``write`` sealed chunks, then ``commit`` (durable,
    renamed into place) or ``abort`` (nothing left)."""

    def __init__(self, part: Path, final: Path) -> None:
        self._part = part
        self._final = final
        self._file: BinaryIO | None = part.open("xb")

    def write(self, data: bytes) -> None:
        assert self._file is not None  # noqa: S101 - not after commit or abort
        self._file.write(data)

    def commit(self) -> None:
        assert self._file is not None  # noqa: S101 - once
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self._part.rename(self._final)
        _fsync_dir(self._final.parent)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._part.unlink(missing_ok=True)


class AttachmentSpool:
    """The node's attachment directory (``<store dir>/attachments`` by default)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / OUTGOING).mkdir(parents=True, exist_ok=True, mode=0o700)
        (root / INCOMING).mkdir(parents=True, exist_ok=True, mode=0o700)
        # Openers of files being received, by id: they carry the running SHA-256, which
        # cannot be saved; after a restart it is rebuilt from the kept chunks (_resume).
        self._openers: dict[str, ChunkOpener] = {}
        # Parts written but not yet fsynced (receive(durable=False)); flush() makes them durable.
        self._dirty: set[str] = set()

    # ----------------------------------------------------------------- sending ---

    def _outgoing(self, attachment_id: str) -> Path:
        return self.root / OUTGOING / f"{attachment_id}.sealed"

    def stage(
        self,
        pieces: Iterable[bytes],
        *,
        attachment_id: str,
        key: bytes,
        name: str,
        media_type: str,
        chunk_size: int,
        max_size: int,
        nonce: Callable[[int], bytes] = lambda _: os.urandom(12),
    ) -> Manifest:
        """Seal ``pieces`` (the upload, in any piece sizes) to ``outgoing/<id>.sealed``.

        An upload cut off half-way (``pieces`` raises) or over ``max_size`` leaves no file.
        """
        sealer = ChunkSealer(
            attachment_id=attachment_id,
            key=key,
            nonce=nonce,
            chunk_size=chunk_size,
            max_size=max_size,
        )
        final = self._outgoing(attachment_id)
        part = final.with_suffix(".part")
        try:
            with part.open("xb") as out:
                for piece in pieces:
                    for chunk in sealer.feed(piece):
                        out.write(chunk.data)
                last, manifest = sealer.finish(name=name, media_type=media_type)
                out.write(last.data)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        part.rename(final)
        _fsync_dir(final.parent)
        return manifest

    def open_staging(self, attachment_id: str) -> Staging:
        """A staged file written chunk by chunk by an async upload (:meth:`stage` is the
        same for a synchronous source)."""
        final = self._outgoing(attachment_id)
        return Staging(final.with_suffix(".part"), final)

    def staged(self, attachment_id: str) -> bool:
        return self._outgoing(attachment_id).exists()

    def sealed_chunks(
        self, descriptor: Descriptor, *, start: int = 0
    ) -> Generator[SealedChunk, None, None]:
        """The staged file's chunks from ``start`` on, read one at a time."""
        with self._outgoing(descriptor.id).open("rb") as f:
            f.seek(sealed_offset(descriptor, start))
            for index in range(start, descriptor.chunks):
                data = f.read(sealed_length(descriptor, index))
                yield SealedChunk(
                    attachment_id=descriptor.id,
                    index=index,
                    final=index == descriptor.chunks - 1,
                    data=data,
                )

    # --------------------------------------------------------------- receiving ---

    def _part(self, attachment_id: str) -> Path:
        return self.root / INCOMING / f"{attachment_id}.part"

    def _incoming(self, attachment_id: str) -> Path:
        return self.root / INCOMING / f"{attachment_id}.sealed"

    def progress(self, descriptor: Descriptor) -> Progress:
        verified = self._incoming(descriptor.id).exists()
        received = descriptor.chunks if verified else self._kept(descriptor)
        return Progress(
            attachment_id=descriptor.id,
            received=received,
            chunks=descriptor.chunks,
            verified=verified,
        )

    def _kept(self, descriptor: Descriptor) -> int:
        try:
            size = self._part(descriptor.id).stat().st_size
        except FileNotFoundError:
            return 0
        # Every chunk but the last is full size, and the last completes the file (it is
        # renamed then), so a .part holds only full chunks; a torn write is the remainder.
        return min(size // (descriptor.chunk_size + CHUNK_OVERHEAD), descriptor.chunks)

    def _resume(self, manifest: Manifest) -> ChunkOpener:
        """The opener of a file being received, rebuilt from its kept chunks if needed."""
        opener = self._openers.get(manifest.id)
        if opener is not None:
            return opener
        opener = ChunkOpener(manifest)
        kept = self._kept(manifest.descriptor)
        part = self._part(manifest.id)
        if part.exists():
            with part.open("r+b") as f:
                for index in range(kept):
                    opener.open(index, f.read(sealed_length(manifest.descriptor, index)))
                f.truncate(sealed_offset(manifest.descriptor, kept))  # drop a torn write
        self._openers[manifest.id] = opener
        return opener

    def receive(
        self, manifest: Manifest, index: int, data: bytes, *, durable: bool = True
    ) -> Progress:
        """Verify chunk ``index`` and keep it; verify the whole file after its last chunk.

        A chunk already kept with the same bytes (a redelivery after a crash between the
        write and the ack) is accepted again without effect. Any failure raises
        ``InvalidMessage`` with an ``attachment_*`` reason and discards the partial file.
        ``durable=False``: the write is made durable by the next :meth:`flush` (one fsync for
        a batch; acknowledge the chunks only after it). A whole file is always durable.
        """
        d = manifest.descriptor
        if self._incoming(d.id).exists():
            self._same_as_kept(self._incoming(d.id), d, index, data)
            return self.progress(d)
        opener = self._resume(manifest)
        if index < opener.next_index:
            self._same_as_kept(self._part(d.id), d, index, data)
            return self.progress(d)
        if opener.next_index < index < d.chunks:
            raise ChunkAhead(opener.next_index)
        try:
            opener.open(index, data)
            with self._part(d.id).open("ab") as f:
                f.write(data)
                f.flush()
                if durable or opener.complete:
                    os.fsync(f.fileno())
                else:
                    self._dirty.add(d.id)
            if opener.complete:
                opener.finish()
                self._dirty.discard(d.id)
                self._part(d.id).rename(self._incoming(d.id))
                _fsync_dir(self._incoming(d.id).parent)
                self._openers.pop(d.id, None)
        except InvalidMessage:
            self.discard(d.id)
            raise
        return self.progress(d)

    def _same_as_kept(self, path: Path, d: Descriptor, index: int, data: bytes) -> None:
        if index >= d.chunks:
            raise InvalidMessage(
                Reason.ATTACHMENT_SIZE_MISMATCH, f"attachment {d.id}: chunk {index} beyond the end"
            )
        with path.open("rb") as f:
            f.seek(sealed_offset(d, index))
            if f.read(sealed_length(d, index)) != data:
                self.discard(d.id)
                raise InvalidMessage(
                    Reason.ATTACHMENT_CHUNK_INVALID,
                    f"attachment {d.id}: chunk {index} arrived twice with different bytes",
                )

    def flush(self) -> None:
        """Make every write of ``receive(durable=False)`` durable."""
        while self._dirty:
            attachment_id = self._dirty.pop()
            try:
                fd = os.open(self._part(attachment_id), os.O_RDONLY)
            except FileNotFoundError:
                continue  # refused and discarded meanwhile
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def discard(self, attachment_id: str) -> None:
        """Forget an incoming file, verified or not (refusal, retention, erasure)."""
        self._openers.pop(attachment_id, None)
        self._part(attachment_id).unlink(missing_ok=True)
        self._incoming(attachment_id).unlink(missing_ok=True)

    def erase(self, attachment_id: str) -> None:
        """Remove every trace of a file, sent or received (retention and erasure)."""
        self.discard(attachment_id)
        self._outgoing(attachment_id).unlink(missing_ok=True)

    # ----------------------------------------------------------------- reading ---

    def read(
        self, manifest: Manifest, *, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """Plaintext bytes ``[start, end)`` of a verified incoming (or staged outgoing) file,
        decrypting only the chunks the range touches, one at a time."""
        d = manifest.descriptor
        end = d.size if end is None else min(end, d.size)
        if not 0 <= start <= end:
            raise ValueError("bad range")
        path = self._incoming(d.id)
        if not path.exists():
            path = self._outgoing(d.id)
        if not path.exists():
            raise FileNotFoundError(d.id)
        if start == end:
            return
        first, last = start // d.chunk_size, (end - 1) // d.chunk_size
        with path.open("rb") as f:
            f.seek(sealed_offset(d, first))
            for index in range(first, last + 1):
                plain = open_chunk(manifest, index, _read_exactly(f, sealed_length(d, index)))
                base = index * d.chunk_size
                yield plain[max(start - base, 0) : min(end - base, len(plain))]


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise InvalidMessage(Reason.ATTACHMENT_INCOMPLETE, "stored file is shorter than declared")
    return data
