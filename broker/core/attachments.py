"""Attachments: the chunked AES-256-GCM file format and its manifests (docs/protocol.md section 17).

Each attachment is encrypted with its own random 256-bit key, one AES-GCM operation per chunk;
the chunk's additional data binds the attachment id, the chunk index and a final-chunk flag, so
a chunk cannot be altered, reordered, dropped, duplicated, truncated away or moved to another
file without failing authentication or the count. Two descriptions of each file travel with
the message:

- the public :class:`Descriptor` (id, media type, size, chunk size, chunk count) in the
  cleartext header, signed by both signatures, so that borders decide on sizes and types;
- the secret :class:`Manifest` (descriptor + name, SHA-256 of the plaintext, key) inside the
  inner JWS, so only recipients can read the file and the sender cannot deny it.

:class:`ChunkSealer` and :class:`ChunkOpener` are streaming state machines: they are fed one
piece at a time and hold at most one chunk, never a whole file. This module never does I/O,
never reads the clock and never draws randomness: ids, keys and nonces are passed in.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.core import jose
from broker.core.ids import is_uuid4
from broker.errors import InvalidMessage, Reason

FORMAT_TAG: Final = b"CBATT1"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
CHUNK_OVERHEAD: Final = NONCE_BYTES + TAG_BYTES
# Powers of two from 16 KiB to 512 KiB: a sealed chunk plus its NATS headers stays well under
# the servers' 1 MiB max_payload, and a fixed menu keeps chunk sizes from being a fingerprint.
CHUNK_SIZES: Final = tuple(1 << n for n in range(14, 20))
# The node's choice (any size of the menu is valid on the wire): the largest, since every
# chunk costs a publish, an acknowledgement and a store record at each of the path's hops
# (100 MB across a border: ~22% less CPU than with 256 KiB, docs/federation.md).
DEFAULT_CHUNK_SIZE: Final = 512 * 1024
MAX_ATTACHMENTS: Final = 32
# The protocol's ceiling; a country's policy sets the real limits (docs/policy.md).
MAX_SIZE: Final = 1 << 34  # 16 GiB
MAX_NAME: Final = 255
MEDIA_TYPE_RE: Final = re.compile(
    r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\Z"
)
# A file name, not a path: no separators, no control characters, not "." or "..".
_NAME_FORBIDDEN: Final = re.compile(r"[/\\\x00-\x1f\x7f]")
DESCRIPTOR_MEMBERS: Final = frozenset({"id", "media_type", "size", "chunk_size", "chunks"})
MANIFEST_MEMBERS: Final = DESCRIPTOR_MEMBERS | {"name", "sha256", "key"}


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunks a file of ``size`` bytes has (an empty file has one, empty, chunk)."""
    return max(1, -(-size // chunk_size))


def chunk_aad(attachment_id: str, index: int, *, final: bool) -> bytes:
    """The additional authenticated data of chunk ``index`` (docs/protocol.md 17.2)."""
    return (
        FORMAT_TAG
        + bytes.fromhex(attachment_id.replace("-", ""))
        + struct.pack(">QB", index, 1 if final else 0)
    )


def _bad(member: str, why: str, reason: Reason = Reason.MALFORMED) -> InvalidMessage:
    return InvalidMessage(reason, f"attachment {member}: {why}")


def _int(value: Any, member: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(member, f"must be an integer in [{low}, {high}]")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class Descriptor:
    """What borders see of one attachment (a member of the header's ``attachments`` list)."""

    id: str
    media_type: str
    size: int
    chunk_size: int
    chunks: int

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not is_uuid4(self.id):
            raise _bad("id", "must be a v4 UUID")
        if not isinstance(self.media_type, str) or not MEDIA_TYPE_RE.fullmatch(self.media_type):
            raise _bad("media_type", "must be a lower-case type/subtype without parameters")
        _int(self.size, "size", 0, MAX_SIZE)
        if self.chunk_size not in CHUNK_SIZES:
            raise _bad("chunk_size", f"must be one of {CHUNK_SIZES}")
        if self.chunks != chunk_count(self.size, self.chunk_size):
            raise _bad("chunks", "does not follow from size and chunk_size")

    @property
    def sealed_size(self) -> int:
        """Bytes on the wire for this file: the plaintext plus each chunk's nonce and tag."""
        return self.size + self.chunks * CHUNK_OVERHEAD

    def chunk_plain_size(self, index: int) -> int:
        """The plaintext length chunk ``index`` must have."""
        if index < self.chunks - 1:
            return self.chunk_size
        return self.size - (self.chunks - 1) * self.chunk_size

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "media_type": self.media_type,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "chunks": self.chunks,
        }


def parse_descriptor(unverified: Any) -> Descriptor:
    """A header ``attachments`` member, strictly checked (unknown members are refused)."""
    if not isinstance(unverified, Mapping) or set(unverified) != DESCRIPTOR_MEMBERS:
        raise _bad("descriptor", f"must be an object with exactly {sorted(DESCRIPTOR_MEMBERS)}")
    return Descriptor(
        id=unverified["id"],
        media_type=unverified["media_type"],
        size=_int(unverified["size"], "size", 0, MAX_SIZE),
        chunk_size=_int(unverified["chunk_size"], "chunk_size", 0, max(CHUNK_SIZES)),
        chunks=_int(unverified["chunks"], "chunks", 1, MAX_SIZE),
    )


def parse_descriptors(unverified: Any) -> tuple[Descriptor, ...]:
    """The header's ``attachments`` list: at most :data:`MAX_ATTACHMENTS`, ids unique."""
    if not isinstance(unverified, list) or not 0 < len(unverified) <= MAX_ATTACHMENTS:
        raise _bad("list", f"must be a non-empty list of at most {MAX_ATTACHMENTS}")
    descriptors = tuple(parse_descriptor(d) for d in unverified)
    if len({d.id for d in descriptors}) != len(descriptors):
        raise _bad("list", "attachment ids must be unique")
    return descriptors


@dataclass(frozen=True, kw_only=True, slots=True)
class Manifest:
    """Everything a recipient needs to read and check one file; travels only in the inner JWS."""

    descriptor: Descriptor
    name: str
    sha256: bytes
    key: bytes

    def __post_init__(self) -> None:
        if (
            not isinstance(self.name, str)
            or not 0 < len(self.name) <= MAX_NAME
            or self.name in (".", "..")
            or _NAME_FORBIDDEN.search(self.name)
        ):
            raise _bad("name", f"must be a file name of 1-{MAX_NAME} chars without separators")
        if len(self.sha256) != 32:
            raise _bad("sha256", "must be 32 bytes")
        if len(self.key) != KEY_BYTES:
            raise _bad("key", f"must be {KEY_BYTES} bytes")

    @property
    def id(self) -> str:
        return self.descriptor.id

    def to_json(self) -> dict[str, Any]:
        return {
            **self.descriptor.to_json(),
            "name": self.name,
            "sha256": jose.b64url_encode(self.sha256),
            "key": jose.b64url_encode(self.key),
        }


def parse_manifest(unverified: Any) -> Manifest:
    """One member of the inner payload's ``attachments`` list, strictly checked."""
    if not isinstance(unverified, Mapping) or set(unverified) != MANIFEST_MEMBERS:
        raise _bad("manifest", f"must be an object with exactly {sorted(MANIFEST_MEMBERS)}")
    for member in ("name", "sha256", "key"):
        if not isinstance(unverified[member], str):
            raise _bad(member, "must be a string")
    return Manifest(
        descriptor=parse_descriptor({k: unverified[k] for k in DESCRIPTOR_MEMBERS}),
        name=unverified["name"],
        sha256=jose.b64url_decode(unverified["sha256"], what="attachment sha256"),
        key=jose.b64url_decode(unverified["key"], what="attachment key"),
    )


def check_manifests(
    descriptors: Sequence[Descriptor], unverified_manifests: Any
) -> tuple[Manifest, ...]:
    """The inner ``attachments`` list, which must describe exactly the header's files, in order.

    A sender that declared one thing to the borders and another to the recipient is refused
    with ``header_mismatch``, like a header that differs between the two layers.
    """
    if not isinstance(unverified_manifests, list):
        raise _bad("manifests", "must be a list")
    manifests = tuple(parse_manifest(m) for m in unverified_manifests)
    if tuple(m.descriptor for m in manifests) != tuple(descriptors):
        raise InvalidMessage(
            Reason.HEADER_MISMATCH, "attachment manifests differ from the header's descriptors"
        )
    return manifests


@dataclass(frozen=True, kw_only=True, slots=True)
class SealedChunk:
    """One chunk as it travels: ``data`` = nonce || AES-GCM ciphertext || tag."""

    attachment_id: str
    index: int
    final: bool
    data: bytes


NonceSource = Callable[[int], bytes]


class ChunkSealer:
    """Streams one file into sealed chunks; holds at most one chunk of plaintext.

    ``feed`` pieces of any size, then ``finish``: a chunk is sealed only once the sealer knows
    whether it is the last one (its final flag is authenticated). ``nonce(index)`` must return
    12 fresh random bytes (``os.urandom``); it is a parameter so that vectors are reproducible.
    """

    def __init__(
        self,
        *,
        attachment_id: str,
        key: bytes,
        nonce: NonceSource,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_size: int = MAX_SIZE,
    ) -> None:
        if not is_uuid4(attachment_id):
            raise _bad("id", "must be a v4 UUID")
        if len(key) != KEY_BYTES:
            raise _bad("key", f"must be {KEY_BYTES} bytes")
        if chunk_size not in CHUNK_SIZES:
            raise _bad("chunk_size", f"must be one of {CHUNK_SIZES}")
        self._id = attachment_id
        self._key = key
        self._aead = AESGCM(key)
        self._nonce = nonce
        self._chunk_size = chunk_size
        self._max_size = max_size
        self._pending = bytearray()
        self._index = 0
        self._size = 0
        self._sha = hashlib.sha256()
        self._done = False

    @property
    def size(self) -> int:
        """Plaintext bytes fed so far."""
        return self._size

    def _seal(self, plain: bytes, *, final: bool) -> SealedChunk:
        nonce = self._nonce(self._index)
        if len(nonce) != NONCE_BYTES:
            raise ValueError("nonce source must return 12 bytes")
        aad = chunk_aad(self._id, self._index, final=final)
        chunk = SealedChunk(
            attachment_id=self._id,
            index=self._index,
            final=final,
            data=nonce + self._aead.encrypt(nonce, plain, aad),
        )
        self._index += 1
        return chunk

    def feed(self, data: bytes) -> Iterator[SealedChunk]:
        """Take the next piece of the file; yield every chunk now known not to be the last."""
        if self._done:
            raise RuntimeError("sealer already finished")
        self._size += len(data)
        if self._size > self._max_size:
            raise _bad("size", f"larger than {self._max_size} bytes", Reason.TOO_LARGE)
        self._sha.update(data)
        self._pending += data
        # Keep the last full chunk back: only more data proves it is not the final one.
        while len(self._pending) > self._chunk_size:
            plain = bytes(self._pending[: self._chunk_size])
            del self._pending[: self._chunk_size]
            yield self._seal(plain, final=False)

    def finish(self, *, name: str, media_type: str) -> tuple[SealedChunk, Manifest]:
        """Seal the final chunk and return it with the file's manifest."""
        if self._done:
            raise RuntimeError("sealer already finished")
        self._done = True
        last = self._seal(bytes(self._pending), final=True)
        self._pending.clear()
        descriptor = Descriptor(
            id=self._id,
            media_type=media_type,
            size=self._size,
            chunk_size=self._chunk_size,
            chunks=self._index,
        )
        manifest = Manifest(
            descriptor=descriptor, name=name, sha256=self._sha.digest(), key=self._key
        )
        return last, manifest


def open_chunk(manifest: Manifest, index: int, data: bytes) -> bytes:
    """Decrypt chunk ``index`` on its own (random access, e.g. a range of a stored file that
    verified whole on arrival). Checks the chunk, not the file: use :class:`ChunkOpener` to
    accept a file."""
    d = manifest.descriptor
    if not 0 <= index < d.chunks or len(data) != d.chunk_plain_size(index) + CHUNK_OVERHEAD:
        raise InvalidMessage(Reason.ATTACHMENT_CHUNK_INVALID, f"chunk {index} of {d.id}: bad size")
    aad = chunk_aad(d.id, index, final=index == d.chunks - 1)
    try:
        return AESGCM(manifest.key).decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], aad)
    except InvalidTag:
        raise InvalidMessage(
            Reason.ATTACHMENT_CHUNK_INVALID, f"chunk {index} of {d.id} does not authenticate"
        ) from None


class ChunkOpener:
    """Checks and decrypts one file's chunks, in order, against its manifest.

    Every failure raises ``InvalidMessage`` with an ``attachment_*`` reason and leaves the
    opener unusable: a file is either verified whole (:meth:`finish`) or refused.
    """

    def __init__(self, manifest: Manifest) -> None:
        self._m = manifest
        self._d = manifest.descriptor
        self._aead = AESGCM(manifest.key)
        self._next = 0
        self._size = 0
        self._sha = hashlib.sha256()
        self._failed = False

    @property
    def next_index(self) -> int:
        """The index of the chunk expected next (= chunks verified so far)."""
        return self._next

    @property
    def complete(self) -> bool:
        return self._next == self._d.chunks

    def _fail(self, reason: Reason, why: str) -> InvalidMessage:
        self._failed = True
        return InvalidMessage(reason, f"attachment {self._d.id} chunk {self._next}: {why}")

    def open(self, index: int, data: bytes) -> bytes:
        """Verify and decrypt chunk ``index`` (which must be the next one); return its plaintext."""
        if self._failed:
            raise InvalidMessage(Reason.ATTACHMENT_CHUNK_INVALID, "opener already failed")
        if self.complete:
            raise self._fail(Reason.ATTACHMENT_SIZE_MISMATCH, "more chunks than declared")
        if index != self._next:
            raise self._fail(
                Reason.ATTACHMENT_CHUNK_INVALID, f"got index {index} (duplicate or out of order)"
            )
        final = index == self._d.chunks - 1
        want = self._d.chunk_plain_size(index) + CHUNK_OVERHEAD
        if len(data) > want:
            raise self._fail(Reason.ATTACHMENT_SIZE_MISMATCH, "larger than declared")
        if len(data) != want:
            raise self._fail(Reason.ATTACHMENT_CHUNK_INVALID, "shorter than declared")
        nonce, sealed = data[:NONCE_BYTES], data[NONCE_BYTES:]
        try:
            plain = self._aead.decrypt(nonce, sealed, chunk_aad(self._d.id, index, final=final))
        except InvalidTag:
            raise self._fail(
                Reason.ATTACHMENT_CHUNK_INVALID, "does not authenticate (altered or misplaced)"
            ) from None
        self._sha.update(plain)
        self._size += len(plain)
        self._next += 1
        return plain

    def finish(self) -> None:
        """Check that every chunk arrived and the whole file matches the manifest's digest."""
        if self._failed:
            raise InvalidMessage(Reason.ATTACHMENT_CHUNK_INVALID, "opener already failed")
        if not self.complete:
            raise self._fail(
                Reason.ATTACHMENT_INCOMPLETE, f"{self._d.chunks - self._next} chunk(s) missing"
            )
        if self._size != self._d.size:  # pragma: no cover - chunk lengths already enforce it
            raise self._fail(Reason.ATTACHMENT_SIZE_MISMATCH, "size differs from the manifest")
        if self._sha.digest() != self._m.sha256:
            raise self._fail(
                Reason.ATTACHMENT_DIGEST_MISMATCH, "plaintext SHA-256 differs from the manifest"
            )
