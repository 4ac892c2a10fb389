"""Attachment settings, the scanner hook and the content sniff."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

from broker.core.attachments import Manifest
from broker.errors import ConfigError
from broker.node.attachment_scan import APPROVED, QUARANTINED, AttachmentSettings, scan
from broker.node.attachments import AttachmentSpool
from broker.sniff import declared_type_for, sniff_bytes

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.7\n" + b"x" * 64


def _staged(tmp_path: Path, data: bytes) -> tuple[AttachmentSpool, Manifest]:
    spool = AttachmentSpool(tmp_path / "spool")
    manifest = spool.stage(
        [data], attachment_id=str(uuid.uuid4()), key=os.urandom(32), name="f.bin",
        media_type="application/octet-stream", chunk_size=16384, max_size=1 << 20,
    )  # fmt: skip
    return spool, manifest


class TestSettings:
    def test_defaults_without_member(self) -> None:
        """No attachments member: no scanner, the default size limit."""
        assert AttachmentSettings.from_json(None).scanner == ()

    @pytest.mark.parametrize(
        "raw", [{"scanner": "clamscan"}, {"max_size": -1}, {"unknown": 1}, {"scanner": [""]}]
    )
    def test_bad_members_are_refused(self, raw: dict[str, object]) -> None:
        """A scanner that is not an argv list, a negative size or an unknown member is refused."""
        with pytest.raises(ConfigError):
            AttachmentSettings.from_json(raw)


class TestScanner:
    def test_exit_zero_approves(self, tmp_path: Path) -> None:
        """A scanner exiting 0 approves; the plaintext copy is gone afterwards."""
        spool, manifest = _staged(tmp_path, b"harmless")
        argv = [sys.executable, "-c", "import sys; sys.exit(0)"]
        assert scan(spool, manifest, argv=argv, timeout=30)[0] == APPROVED
        assert list((spool.root / "scan").iterdir()) == []

    def test_the_scanner_sees_the_plaintext_and_its_output_is_the_reason(
        self, tmp_path: Path
    ) -> None:
        """The scanner reads the decrypted file; its first output line is the quarantine reason."""
        spool, manifest = _staged(tmp_path, b"abc SIGNATURE def")
        code = (
            "import sys; d = open(sys.argv[1], 'rb').read(); "
            "print('found SIGNATURE') if b'SIGNATURE' in d else None; "
            "sys.exit(1 if b'SIGNATURE' in d else 0)"
        )
        result = scan(spool, manifest, argv=[sys.executable, "-c", code], timeout=30)
        assert result == (QUARANTINED, "found SIGNATURE")

    def test_a_scanner_that_hangs_quarantines(self, tmp_path: Path) -> None:
        """No answer within the timeout quarantines the file (fail closed)."""
        spool, manifest = _staged(tmp_path, b"x")
        argv = [sys.executable, "-c", "import time; time.sleep(30)"]
        result = scan(spool, manifest, argv=argv, timeout=0.5)
        assert result[0] == QUARANTINED
        assert "no answer" in result[1]


class TestSniff:
    def test_content_decides_over_the_name(self, tmp_path: Path) -> None:
        """A PNG named .pdf is declared image/png; unknown bytes fall back to the name."""
        fake = tmp_path / "photo.pdf"
        fake.write_bytes(PNG)
        assert declared_type_for(fake) == "image/png"
        text = tmp_path / "notes.txt"
        text.write_bytes(b"plain words")
        assert declared_type_for(text) == "text/plain"
        assert sniff_bytes(PDF) == "application/pdf"
        assert sniff_bytes(b"plain words") is None
