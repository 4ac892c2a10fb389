"""Writes the attachment test vectors (tests/vectors/attachments/, docs/protocol.md 17.5).

TEST-ONLY: the key and nonces are fixed so that anyone can reproduce every byte; a real sealer
draws both from the operating system's random source. Run from the repository root:

    PYTHONPATH=$PWD python -m tests.vectors.generate_attachments
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Final

from broker.core import jose
from broker.core.attachments import ChunkSealer, Manifest, SealedChunk

HERE: Final = Path(__file__).resolve().parent / "attachments"
TEST_ONLY: Final = "TEST-ONLY key and nonces for Casebridge attachment vectors. Never use them."
KEY: Final = bytes(range(32))
OTHER_KEY: Final = bytes(range(32, 64))
ID: Final = "6f1c2d3e-4a5b-4c6d-8e7f-8091a2b3c4d5"
OTHER_ID: Final = "0a1b2c3d-4e5f-4a6b-9c7d-8e9fa0b1c2d3"
CHUNK: Final = 16 * 1024
SIZE: Final = 40_000  # three chunks: 16384 + 16384 + 7232


def plaintext(size: int) -> bytes:
    """The vectors' plaintext: byte i is i mod 251 (documented, so nobody needs the file)."""
    return bytes(i % 251 for i in range(size))


def nonce(index: int) -> bytes:
    """TEST-ONLY fixed nonces: 0xA5 repeated, then the index."""
    return b"\xa5" * 8 + index.to_bytes(4, "big")


def seal_file(
    data: bytes, *, attachment_id: str, key: bytes, name: str, media_type: str
) -> tuple[list[SealedChunk], Manifest]:
    sealer = ChunkSealer(attachment_id=attachment_id, key=key, nonce=nonce, chunk_size=CHUNK)
    chunks = list(sealer.feed(data))
    last, manifest = sealer.finish(name=name, media_type=media_type)
    return [*chunks, last], manifest


def _chunks(chunks: list[SealedChunk]) -> list[dict[str, Any]]:
    return [
        {"index": c.index, "final": c.final, "data": jose.b64url_encode(c.data)} for c in chunks
    ]


def _doc(manifest: Manifest, chunks: list[SealedChunk], size: int, **expect: Any) -> dict[str, Any]:
    return {
        "warning": TEST_ONLY,
        "plaintext": f"byte i = i mod 251, {size} bytes",
        "plaintext_sha256": hashlib.sha256(plaintext(size)).hexdigest(),
        "manifest": manifest.to_json(),
        "chunks": _chunks(chunks),
        **expect,
    }


def main() -> None:
    HERE.mkdir(exist_ok=True)
    data = plaintext(SIZE)
    chunks, manifest = seal_file(
        data, attachment_id=ID, key=KEY, name="scan-0001.pdf", media_type="application/pdf"
    )
    other, _ = seal_file(
        data, attachment_id=OTHER_ID, key=KEY, name="other.pdf", media_type="application/pdf"
    )
    empty_chunks, empty_manifest = seal_file(
        b"", attachment_id=ID, key=KEY, name="empty.txt", media_type="text/plain"
    )
    wrong_digest = Manifest(
        descriptor=manifest.descriptor, name=manifest.name, sha256=bytes(32), key=KEY
    )
    altered = bytearray(chunks[1].data)
    altered[40] ^= 0x01
    flipped = SealedChunk(attachment_id=ID, index=1, final=False, data=bytes(altered))
    # The last chunk re-sealed without its final flag: a truncation attempt.
    truncated, _ = seal_file(
        data[: 2 * CHUNK + 1], attachment_id=ID, key=KEY, name="x", media_type="application/pdf"
    )
    cases: dict[str, tuple[Manifest, list[SealedChunk], str]] = {
        "invalid-altered": (manifest, [chunks[0], flipped, chunks[2]], "attachment_chunk_invalid"),
        "invalid-reordered": (
            manifest,
            [chunks[0], chunks[2], chunks[1]],
            "attachment_chunk_invalid",
        ),
        "invalid-duplicated": (
            manifest,
            [chunks[0], chunks[0], chunks[1], chunks[2]],
            "attachment_chunk_invalid",
        ),
        "invalid-missing-last": (manifest, chunks[:2], "attachment_incomplete"),
        "invalid-swapped-between-files": (
            manifest,
            [chunks[0], other[1], chunks[2]],
            "attachment_chunk_invalid",
        ),
        "invalid-extra-chunk": (manifest, [*chunks, chunks[2]], "attachment_size_mismatch"),
        "invalid-final-chunk-from-shorter-file": (
            manifest,
            [chunks[0], chunks[1], truncated[2]],
            "attachment_chunk_invalid",
        ),
        "invalid-digest-mismatch": (wrong_digest, chunks, "attachment_digest_mismatch"),
    }
    files = {
        "valid-three-chunks": _doc(manifest, chunks, SIZE),
        "valid-empty": _doc(empty_manifest, empty_chunks, 0),
    }
    for name, (m, cs, reason) in cases.items():
        files[name] = _doc(m, cs, SIZE, reason=reason)
    for name, doc in files.items():
        (HERE / f"{name}.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
