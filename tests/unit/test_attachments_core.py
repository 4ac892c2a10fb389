"""The attachment format (broker/core/attachments.py): chunks, manifests, vectors, envelope."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from broker.core import jose
from broker.core.attachments import (
    CHUNK_OVERHEAD,
    ChunkOpener,
    ChunkSealer,
    Descriptor,
    Manifest,
    SealedChunk,
    chunk_count,
    parse_manifest,
)
from broker.core.envelope import open_message, seal, verify_routing
from broker.core.header import parse_header
from broker.core.replay import MemoryReplayStore
from broker.core.schemas import SchemaRegistry
from broker.errors import InvalidMessage, Reason
from broker.loaders import load_schema_registry
from tests.vectors.generate_attachments import plaintext

from . import forge
from .forge import NOW, World

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "attachments"
VALID = sorted(VECTORS.glob("valid-*.json"))
INVALID = sorted(VECTORS.glob("invalid-*.json"))
CHUNK = 16 * 1024
ID = "11111111-2222-4333-8444-555555555555"


def _seal(
    data: bytes, *, piece: int = 1000, key: bytes = b"k" * 32
) -> tuple[list[SealedChunk], Manifest]:
    sealer = ChunkSealer(
        attachment_id=ID, key=key, nonce=lambda _: os.urandom(12), chunk_size=CHUNK
    )
    chunks: list[SealedChunk] = []
    for at in range(0, len(data), piece):
        chunks += sealer.feed(data[at : at + piece])
    last, manifest = sealer.finish(name="photo.jpg", media_type="image/jpeg")
    return [*chunks, last], manifest


def _open_all(manifest: Manifest, chunks: list[tuple[int, bytes]]) -> bytes:
    opener = ChunkOpener(manifest)
    out = b"".join(opener.open(i, data) for i, data in chunks)
    opener.finish()
    return out


class TestRoundTrip:
    @pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
    def test_any_size_round_trips(self, size: int) -> None:
        """A file of any size seals into the declared chunk count and opens to the same bytes."""
        data = os.urandom(size)
        chunks, manifest = _seal(data)
        assert len(chunks) == manifest.descriptor.chunks == chunk_count(size, CHUNK)
        assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
        assert manifest.sha256 == hashlib.sha256(data).digest()
        assert _open_all(manifest, [(c.index, c.data) for c in chunks]) == data

    def test_sealer_emits_chunks_as_data_arrives(self) -> None:
        """The sealer holds back at most one chunk: more data releases the chunk before it."""
        sealer = ChunkSealer(
            attachment_id=ID, key=b"k" * 32, nonce=lambda _: os.urandom(12), chunk_size=CHUNK
        )
        assert list(sealer.feed(b"a" * CHUNK)) == []
        out = list(sealer.feed(b"a"))
        assert [c.index for c in out] == [0]
        out = list(sealer.feed(b"a" * (5 * CHUNK)))
        assert [c.index for c in out] == [1, 2, 3, 4, 5]
        assert all(len(c.data) == CHUNK + CHUNK_OVERHEAD for c in out)

    def test_each_file_has_its_own_key(self) -> None:
        """The same plaintext under two keys gives unrelated chunks; a wrong key cannot open it."""
        data = os.urandom(100)
        chunks, manifest = _seal(data)
        _, other = _seal(data, key=b"o" * 32)
        wrong = Manifest(
            descriptor=manifest.descriptor, name="x", sha256=manifest.sha256, key=other.key
        )
        with pytest.raises(InvalidMessage) as info:
            ChunkOpener(wrong).open(0, chunks[0].data)
        assert info.value.reason == Reason.ATTACHMENT_CHUNK_INVALID

    def test_sealer_refuses_beyond_its_size_limit(self) -> None:
        """A sealer given a maximum size refuses the byte that passes it (too_large)."""
        sealer = ChunkSealer(
            attachment_id=ID,
            key=b"k" * 32,
            nonce=lambda _: os.urandom(12),
            chunk_size=CHUNK,
            max_size=10,
        )
        with pytest.raises(InvalidMessage) as info:
            list(sealer.feed(b"x" * 11))
        assert info.value.reason == Reason.TOO_LARGE


class TestOpenerRefuses:
    def test_chunk_larger_than_declared(self) -> None:
        """A final chunk longer than the manifest's size allows is refused as a size mismatch."""
        chunks, manifest = _seal(os.urandom(CHUNK + 10))
        opener = ChunkOpener(manifest)
        opener.open(0, chunks[0].data)
        with pytest.raises(InvalidMessage) as info:
            opener.open(1, chunks[1].data + b"extra")
        assert info.value.reason == Reason.ATTACHMENT_SIZE_MISMATCH

    def test_failed_opener_stays_failed(self) -> None:
        """After one refusal the opener refuses everything, even the right next chunk."""
        chunks, manifest = _seal(os.urandom(2 * CHUNK + 1))
        opener = ChunkOpener(manifest)
        with pytest.raises(InvalidMessage):
            opener.open(1, chunks[1].data)
        with pytest.raises(InvalidMessage):
            opener.open(0, chunks[0].data)
        with pytest.raises(InvalidMessage):
            opener.finish()


class TestManifest:
    def test_descriptor_refuses_inconsistent_counts(self) -> None:
        """A descriptor whose chunk count does not follow from size and chunk size is malformed."""
        with pytest.raises(InvalidMessage) as info:
            Descriptor(id=ID, media_type="image/jpeg", size=CHUNK + 1, chunk_size=CHUNK, chunks=1)
        assert info.value.reason == Reason.MALFORMED

    @pytest.mark.parametrize("name", ["", "a/b", "..", "x\x00y", "a\\b", "n" * 256])
    def test_names_are_file_names_not_paths(self, name: str) -> None:
        """A manifest name with separators, control characters or dot-dirs is refused."""
        _, manifest = _seal(b"abc")
        doc = manifest.to_json() | {"name": name}
        with pytest.raises(InvalidMessage):
            parse_manifest(doc)

    def test_manifest_json_round_trips(self) -> None:
        """A manifest survives its JSON form unchanged."""
        _, manifest = _seal(b"abc")
        assert parse_manifest(json.loads(json.dumps(manifest.to_json()))) == manifest


class TestVectors:
    def test_vector_set_is_marked_test_only(self) -> None:
        """Valid and invalid attachment vectors are shipped and say they are test-only."""
        assert len(VALID) >= 2
        assert len(INVALID) >= 8
        assert all("TEST-ONLY" in json.loads(p.read_text())["warning"] for p in VALID + INVALID)

    @pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
    def test_valid_vector_opens(self, path: Path) -> None:
        """Each valid vector opens to the documented plaintext with the stated digest."""
        doc = json.loads(path.read_text())
        manifest = parse_manifest(doc["manifest"])
        chunks = [(c["index"], jose.b64url_decode(c["data"], what="chunk")) for c in doc["chunks"]]
        data = _open_all(manifest, chunks)
        assert data == plaintext(manifest.descriptor.size)
        assert hashlib.sha256(data).hexdigest() == doc["plaintext_sha256"]

    @pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
    def test_invalid_vector_is_refused_with_its_reason(self, path: Path) -> None:
        """Each invalid vector (altered, reordered, dropped, swapped) is refused with its code."""
        doc = json.loads(path.read_text())
        manifest = parse_manifest(doc["manifest"])
        arrived = [
            # Fed in arrival order: position, not the index the sender stamped on it.
            (position, jose.b64url_decode(c["data"], what="chunk"))
            for position, c in enumerate(doc["chunks"])
        ]
        with pytest.raises(InvalidMessage) as info:
            _open_all(manifest, arrived)
        assert info.value.reason.value == doc["reason"]


@pytest.fixture(scope="module")
def world() -> World:
    return forge.make_world()


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return load_schema_registry()


def _body() -> dict[str, Any]:
    examples = Path(__file__).resolve().parents[2] / "schemas" / "examples"
    loaded: dict[str, Any] = json.loads((examples / "bulletin.json").read_text())
    return loaded


class TestEnvelope:
    def _sealed(self, world: World, manifests: list[Manifest], declared: list[Descriptor]) -> bytes:
        h = forge.header()
        h = type(h)(**{**{f: getattr(h, f) for f in h.__slots__}, "attachments": tuple(declared)})
        return seal(
            header=h,
            body=_body(),
            sender=world["de.lka-berlin"].sender,
            resolver=world.resolver,
            now=NOW,
            salt=os.urandom(16),
            attachments=manifests,
        )

    def test_recipient_gets_manifests_border_sees_only_descriptors(
        self, world: World, registry: SchemaRegistry
    ) -> None:
        """Borders see sizes and types in the header; only the recipient gets names and keys."""
        _, manifest = _seal(os.urandom(CHUNK + 5))
        wire = self._sealed(world, [manifest], [manifest.descriptor])
        routed = verify_routing(wire, resolver=world.resolver, now=NOW)
        assert routed.header.attachments == (manifest.descriptor,)
        assert jose.b64url_encode(manifest.key).encode() not in wire
        assert b"photo.jpg" not in wire
        opened = open_message(
            wire,
            recipient=world["nl.politie-nec"].recipient,
            resolver=world.resolver,
            replay=MemoryReplayStore(),
            validator=registry,
            now=NOW,
        )
        assert opened.attachments == (manifest,)

    def test_header_without_attachments_keeps_its_old_form(self) -> None:
        """A header with no attachments has no 'attachments' member (earlier vectors still hold)."""
        assert "attachments" not in forge.header().to_json()

    def test_seal_refuses_manifests_that_differ_from_the_header(self, world: World) -> None:
        """Sealing with manifests other than the header's descriptors is header_mismatch."""
        _, manifest = _seal(b"abc")
        _, other = _seal(b"abcd")
        with pytest.raises(InvalidMessage) as info:
            self._sealed(world, [other], [manifest.descriptor])
        assert info.value.reason == Reason.HEADER_MISMATCH

    def test_header_refuses_bad_descriptors(self) -> None:
        """A header whose attachments list is malformed is refused as header_invalid."""
        doc = forge.header().to_json()
        doc["attachments"] = [
            {"id": ID, "media_type": "image/jpeg", "size": -1, "chunk_size": CHUNK, "chunks": 1}
        ]
        with pytest.raises(InvalidMessage) as info:
            parse_header(doc)
        assert info.value.reason == Reason.HEADER_INVALID
        doc["attachments"] = []
        with pytest.raises(InvalidMessage):
            parse_header(doc)
