"""Attachments across a real federation (DE -> NL): delivered verified, or refused with a code."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest

from broker.core import attachment_wire as aw
from broker.core.attachments import (
    DEFAULT_CHUNK_SIZE,
    ChunkSealer,
    Manifest,
    SealedChunk,
    chunk_count,
)
from broker.core.envelope import SenderIdentity, seal
from broker.core.header import Header
from broker.core.trust import cert_kid
from broker.federation import processes
from broker.node import audit_log
from broker.pki.keyfiles import read_certificate, read_private_key
from broker.sdk import NodeClient, NodeError
from tests.integration.conftest import run
from tests.integration.e2e_helpers import POLICIES, Running, bulletin, wait_until

DE: Final = "de.lka-berlin"
NL: Final = "nl.politie"
DESCRIPTION: Final[dict[str, Any]] = {
    "federation": "e2e-att",
    "countries": [
        {
            "code": "DE",
            "name": "Germany",
            "eu": True,
            "agencies": [{"id": DE, "kind": "law_enforcement", "name": "LKA Berlin"}],
        },
        {
            "code": "NL",
            "name": "Netherlands",
            "eu": True,
            "agencies": [{"id": NL, "kind": "law_enforcement", "name": "Politie"}],
        },
    ],
}
LIMITS: Final = """
attachments:
  - id: {cc}.att.files
    reason: Documents and photos up to 256 MiB travel with case messages.
    direction: any
    decision: allow
    max_count: 4
    max_size: {max_size}
    media_types: [application/pdf, "image/*", application/octet-stream]
"""
DELIVERY_TIMEOUT: Final = 90.0
# A missing chunk is waited for about 165 s before the file is refused (GAP_ATTEMPTS in
# broker/node/attachment_transfer.py), so its refusal needs a longer wait than a delivery.
GAP_REFUSAL_TIMEOUT: Final = 300.0
MARKER: Final = b"SYNTHETIC-MALWARE-MARKER"
# The NL node's scanner: quarantines a file holding MARKER, approves anything else.
SCANNER: Final = [
    sys.executable,
    "-c",
    "import sys; data = open(sys.argv[1], 'rb').read(); "
    f"sys.exit(print('marker found: synthetic test signature') or 1) if {MARKER!r} in data "
    "else sys.exit(0)",
]
JUSTIFICATION: Final = "Case 2026/77: reviewing the evidence files"


def _policies(base: Path, max_size: int = 256 * 1024 * 1024) -> Path:
    out = base / "policies"
    out.mkdir()
    for cc in ("de", "nl"):
        text = (POLICIES / f"{cc}.yaml").read_text(encoding="utf-8")
        # The shipped attachment limits are replaced by the test's (octet-streams, 256 MiB).
        text = text.split("\nattachments:")[0]
        (out / f"{cc}.yaml").write_text(
            text + LIMITS.format(cc=cc, max_size=max_size), encoding="utf-8"
        )
    return out


@pytest.fixture(scope="module")
def fed(nats_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """DE and NL, one node each, with policies that let PDFs and images cross."""
    del nats_binary
    base = tmp_path_factory.mktemp("att")
    running = Running.start(
        base / "fed",
        nodes=[DE, NL],
        description=DESCRIPTION,
        policy_dir=_policies(base),
        settings={NL: {"attachments": {"scanner": SCANNER}}},
    )
    try:
        yield running
    finally:
        _close(running)


def _close(running: Running) -> None:
    for client in running.clients.values():
        client.close()
    running.close()


def _file(path: Path, size: int, head: bytes = b"") -> str:
    """A synthetic file of ``size`` bytes (random after ``head``); its SHA-256 hex."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        f.write(head)
        digest.update(head)
        left = size - len(head)
        while left > 0:
            piece = os.urandom(min(left, 1 << 20))
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def _send_with(fed: Running, handles: list[str]) -> str:
    result = fed.client(DE).send(bulletin([NL], attachments=handles))
    return str(result["message_id"])


def _delivered(fed: Running, message_id: str) -> bool:
    return message_id in fed.inbox_ids(NL)


def _approved(fed: Running, message_id: str) -> list[dict[str, Any]]:
    """The files of a delivered message, once the NL scanner approved every one."""

    def approved() -> list[dict[str, Any]]:
        found = fed.client(NL).attachments(message_id)
        return found if all(f["scan"] == "approved" for f in found) else []

    return wait_until(approved, DELIVERY_TIMEOUT, what="scanner approval")


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


class TestDelivery:
    def test_photo_and_pdf_arrive_verified_and_download_by_range(
        self, fed: Running, tmp_path: Path
    ) -> None:
        """A message with a photo and a PDF is delivered only with both files verified."""
        photo, pdf = tmp_path / "photo.png", tmp_path / "statement.pdf"
        photo_sha = _file(photo, 700_000, b"\x89PNG\r\n\x1a\n")
        pdf_sha = _file(pdf, 1_500_000, b"%PDF-1.7\n")
        client = fed.client(DE)
        handles = [
            client.upload_attachment(photo, media_type="image/png")["attachment"],
            client.upload_attachment(pdf, media_type="application/pdf")["attachment"],
        ]
        message_id = _send_with(fed, handles)
        wait_until(lambda: _delivered(fed, message_id), DELIVERY_TIMEOUT, what="delivery")

        files = _approved(fed, message_id)
        assert [(f["name"], f["state"], f["media_type"], f["sniffed_type"]) for f in files] == [
            ("photo.png", "verified", "image/png", "image/png"),
            ("statement.pdf", "verified", "application/pdf", "application/pdf"),
        ]
        for f, want in zip(files, (photo_sha, pdf_sha), strict=True):
            out = tmp_path / f"got-{f['id']}"
            fed.client(NL).download_attachment(
                message_id, f["id"], out, justification=JUSTIFICATION
            )
            assert _sha(out) == want
        part = tmp_path / "part"
        fed.client(NL).download_attachment(
            message_id, handles[1], part, justification=JUSTIFICATION, start=5, end=300_005
        )
        with pdf.open("rb") as original:
            original.seek(5)
            assert part.read_bytes() == original.read(300_000)
        kinds = wait_until(
            lambda: {e["kind"] for e in fed.evidence(DE, message_id)} >= {"delivered"},
            DELIVERY_TIMEOUT,
            what="delivered evidence",
        )
        assert kinds

    def test_case_systems_send_and_import_files_with_their_own_scopes(
        self, fed: Running, tmp_path: Path
    ) -> None:
        """A DE case system with only ``send`` uploads a file and sends it; an NL one with only
        ``read`` imports it: audited as a transfer to that system, no ``read`` evidence."""
        statement = tmp_path / "statement.pdf"
        want = _file(statement, 200_000, b"%PDF-1.7\n")
        sender_token = fed.client(DE).add_client(
            "cms-out", system="CMS Synthetic DE", purpose="case export", scopes=["send"]
        )["token"]
        importer_token = fed.client(NL).add_client(
            "cms-in", system="CMS Synthetic NL", purpose="case import", scopes=["read"]
        )["token"]
        with (
            NodeClient(fed.client(DE).base_url, sender_token) as sender,
            NodeClient(fed.client(NL).base_url, importer_token) as importer,
        ):
            with pytest.raises(NodeError) as refused:  # listing files needs the read scope
                sender.attachments(str(uuid.uuid4()))
            assert refused.value.reason == "forbidden"
            handle = sender.upload_attachment(statement, media_type="application/pdf")
            draft = bulletin([NL], attachments=[handle["attachment"]])
            message_id = str(sender.send(draft)["message_id"])
            wait_until(lambda: _delivered(fed, message_id), DELIVERY_TIMEOUT, what="delivery")
            (found,) = _approved(fed, message_id)
            assert importer.download_attachment(message_id, found["id"], tmp_path / "got") > 0
        assert _sha(tmp_path / "got") == want
        con = sqlite3.connect(f"file:{fed.store_path(NL)}?mode=ro", uri=True, timeout=10)
        try:
            rows = con.execute(
                "SELECT operation, actor, peer, justification, detail FROM audit "
                "WHERE message_id = ? ORDER BY seq",
                (message_id,),
            ).fetchall()
        finally:
            con.close()
        transfers = [r for r in rows if r[0] == "transfer"]
        assert [r[1:4] for r in transfers] == [("cms-in", "system:CMS Synthetic NL", "case import")]
        assert found["id"] in transfers[0][4]
        assert not [r for r in rows if r[0] == "consultation"]
        assert "read" not in {e["kind"] for e in fed.evidence(DE, message_id)}

    def test_cli_send_attach_sends_each_file_with_its_sniffed_type(
        self, fed: Running, tmp_path: Path
    ) -> None:
        """`casebridge send --attach A --attach B` uploads both and sends them with the message."""
        photo, pdf = tmp_path / "photo.jpg", tmp_path / "doc.pdf"
        _file(photo, 30_000, b"\x89PNG\r\n\x1a\n")  # a PNG, whatever its name says
        _file(pdf, 20_000, b"%PDF-1.7\n")
        body = tmp_path / "body.json"
        body.write_text(json.dumps(bulletin([NL])["body"]), encoding="utf-8")
        client = fed.client(DE)
        env = {**os.environ, "CASEBRIDGE_TOKEN": client.token}
        done = subprocess.run(
            [sys.executable, "-m", "broker.cli", "send", "--node", client.base_url, "--json",
             "--to", NL, "--type", "bulletin", "--purpose", "prevention", "--handling", "H1",
             "--tlp", "GREEN", "--legal-basis", "Directive 2011/36/EU, Art. 18",
             "--file", str(body), "--attach", str(photo), "--attach", str(pdf)],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        message_id = json.loads(done.stdout)["message_id"]
        wait_until(lambda: _delivered(fed, message_id), DELIVERY_TIMEOUT, what="delivery")
        files = fed.client(NL).attachments(message_id)
        assert [(f["name"], f["media_type"]) for f in files] == [
            ("photo.jpg", "image/png"),
            ("doc.pdf", "application/pdf"),
        ]

    def test_file_the_scanner_rejects_is_quarantined_with_its_reason(
        self, fed: Running, tmp_path: Path
    ) -> None:
        """A delivered file the scanner flags cannot be downloaded; the reason is shown."""
        doc = tmp_path / "scan.pdf"
        doc.write_bytes(b"%PDF-1.7\n" + os.urandom(5000) + MARKER + os.urandom(5000))
        handle = fed.client(DE).upload_attachment(doc, media_type="application/pdf")
        message_id = _send_with(fed, [handle["attachment"]])
        wait_until(lambda: _delivered(fed, message_id), DELIVERY_TIMEOUT, what="delivery")
        files = wait_until(
            lambda: [
                f for f in fed.client(NL).attachments(message_id) if f["scan"] == "quarantined"
            ],
            DELIVERY_TIMEOUT,
            what="quarantine",
        )
        assert files[0]["scan_reason"] == "marker found: synthetic test signature"
        with pytest.raises(NodeError) as info:
            fed.client(NL).download_attachment(
                message_id, handle["attachment"], tmp_path / "x", justification=JUSTIFICATION
            )
        assert "synthetic test signature" in str(info.value)

    def test_policy_forbidden_type_is_refused_before_sending(
        self, fed: Running, tmp_path: Path
    ) -> None:
        """A file type the policy does not list is refused at pre-flight with the rule id."""
        archive = tmp_path / "bundle.zip"
        _file(archive, 1000, b"PK\x03\x04")
        handle = fed.client(DE).upload_attachment(archive, media_type="application/zip")
        with pytest.raises(NodeError) as info:
            _send_with(fed, [handle["attachment"]])
        assert info.value.reason == "policy_denied"
        assert "de.att.files" in json.dumps(info.value.__dict__, default=str)


# ---------------------------------------------------------------- hostile sender ---


def _identity(fed: Running, agency: str) -> SenderIdentity:
    keys = fed.fed.settings.client(agency)
    return SenderIdentity(
        agency_id=agency,
        signing_kid=cert_kid(agency, read_certificate(keys.signing_cert)),
        signing_key=read_private_key(keys.signing_key),
    )


def _sealed_file(data: bytes, chunk_size: int = 16384) -> tuple[list[SealedChunk], Manifest]:
    sealer = ChunkSealer(
        attachment_id=str(uuid.uuid4()),
        key=os.urandom(32),
        nonce=lambda _: os.urandom(12),
        chunk_size=chunk_size,
    )
    chunks = list(sealer.feed(data))
    last, manifest = sealer.finish(name="scan.pdf", media_type="application/pdf")
    return [*chunks, last], manifest


def _hostile_send(fed: Running, manifest: Manifest, chunks: list[tuple[int, bytes]]) -> str:
    """Seal a bulletin with ``manifest`` as DE (its real keys, bypassing its node) and publish
    it and the given (index, data) chunks as DE would."""
    now = datetime.now(UTC)
    iat = int(now.timestamp())
    header = Header(
        fed=fed.fed.settings.federation_id,
        id=str(uuid.uuid4()),
        type="bulletin",
        type_version=1,
        conversation=str(uuid.uuid4()),
        sender=DE,
        recipients=(NL,),
        handling="H1",
        tlp="GREEN",
        purpose="prevention",
        legal_basis="Directive 2011/36/EU, Art. 18",
        categories=(),
        iat=iat,
        exp=iat + int(timedelta(days=7).total_seconds()),
        attachments=(manifest.descriptor,),
    )
    wire = seal(
        header=header,
        body=bulletin([NL])["body"],
        sender=_identity(fed, DE),
        resolver=fed.directory(),
        now=now,
        salt=secrets.token_bytes(16),
        attachments=[manifest],
    )

    async def go() -> None:
        nc = await fed.fed.connect_as(DE, allow_reconnect=False)
        try:
            js = nc.jetstream()
            await js.publish(f"cb.submit.{DE}", wire, headers={"Nats-Msg-Id": header.id}, timeout=5)
            for n, (index, data) in enumerate(chunks):
                await js.publish(
                    aw.att_submit_subject(DE),
                    data,
                    timeout=5,
                    headers={
                        aw.MESSAGE_HEADER: header.id,
                        aw.ATTACHMENT_HEADER: manifest.id,
                        aw.INDEX_HEADER: str(index),
                        "Nats-Msg-Id": f"{manifest.id}.{n}",
                    },
                )
        finally:
            await nc.close()

    run(go())
    return header.id


def _refusal(fed: Running, message_id: str, timeout: float = DELIVERY_TIMEOUT) -> str:
    def found() -> str | None:
        for r in fed.rejections(NL):
            if r["claimed_message_id"] == message_id:
                return str(r["reason"])
        return None

    return str(wait_until(found, timeout, what=f"refusal of {message_id}"))


def _border_refusals(fed: Running, country: str, message_id: str) -> list[str]:
    """The justifications of the refusals a country's gateway logged about ``message_id``."""
    path = fed.fed.base / processes.STORE_DIR / f"{country.lower()}.gateway.sqlite"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        found = audit_log.records_about(db, message_id)
    finally:
        db.close()
    return [
        str(r.record.entry.justification)
        for r in found
        if r.record.entry.operation.value == "refusal"
    ]


class TestRefusals:
    DATA: Final = bytes(range(256)) * 200  # 51,200 bytes: 4 chunks of 16 KiB

    @pytest.mark.parametrize(
        ("case", "reason"),
        [
            ("altered", "attachment_chunk_invalid"),
            # A missing chunk is waited for (~165 s: a reordering in transit must heal).
            pytest.param("missing", "attachment_chunk_invalid", marks=pytest.mark.slow),
            ("digest", "attachment_digest_mismatch"),
        ],
    )
    def test_bad_file_refuses_the_message_with_its_code(
        self, fed: Running, case: str, reason: str
    ) -> None:
        """Each corruption of a file ends in a refusal with its reason code, never a delivery."""
        chunks, manifest = _sealed_file(self.DATA)
        sent = [(c.index, c.data) for c in chunks]
        if case == "altered":
            bad = bytearray(sent[1][1])
            bad[50] ^= 1
            sent[1] = (1, bytes(bad))
        elif case == "missing":
            del sent[1]
        elif case == "digest":
            manifest = replace(manifest, sha256=hashlib.sha256(b"other").digest())
        message_id = _hostile_send(fed, manifest, sent)
        timeout = GAP_REFUSAL_TIMEOUT if case == "missing" else DELIVERY_TIMEOUT
        assert _refusal(fed, message_id, timeout) == reason, fed.rejections(NL)[:1]
        assert not _delivered(fed, message_id)

    def test_a_chunk_beyond_the_declared_count_is_refused_at_the_border(self, fed: Running) -> None:
        """An extra chunk (index past the declared count) never leaves DE: the DE gateway logs
        a refusal with its code; the declared chunks still make a verified file at NL."""
        chunks, manifest = _sealed_file(self.DATA)
        sent = [(c.index, c.data) for c in chunks]
        sent.append((len(chunks), chunks[0].data))
        message_id = _hostile_send(fed, manifest, sent)
        wait_until(lambda: _delivered(fed, message_id), DELIVERY_TIMEOUT, what="delivery")
        files = fed.client(NL).attachments(message_id)
        assert [f["state"] for f in files] == ["verified"]
        refusals = wait_until(
            lambda: _border_refusals(fed, "DE", message_id), DELIVERY_TIMEOUT, what="audit"
        )
        assert refusals == ["egress: attachment chunk attachment_size_mismatch"]

    def test_a_file_larger_than_declared_never_crosses(self, fed: Running) -> None:
        """A last chunk longer than its descriptor says is refused at the sending border (one
        audit entry with the code); NL never shows the message as delivered."""
        chunks, manifest = _sealed_file(self.DATA)
        sent = [(c.index, c.data) for c in chunks]
        sent[-1] = (sent[-1][0], sent[-1][1] + b"x" * 10)
        message_id = _hostile_send(fed, manifest, sent)
        refusals = wait_until(
            lambda: _border_refusals(fed, "DE", message_id), DELIVERY_TIMEOUT, what="audit"
        )
        assert refusals == ["egress: attachment chunk attachment_size_mismatch"]
        part = fed.store_path(NL).with_suffix(".attachments") / "incoming" / f"{manifest.id}.part"
        # The three good chunks may have arrived; the bad one never did.
        wait_until(
            lambda: part.exists() and part.stat().st_size == 3 * (16384 + 28),
            DELIVERY_TIMEOUT,
            what="the declared chunks at NL",
        )
        assert not _delivered(fed, message_id)

    def test_reordered_chunks_still_make_a_verified_file(self, fed: Running) -> None:
        """Chunks published out of order are put back in order: delivered, verified."""
        chunks, manifest = _sealed_file(self.DATA)
        sent = [(c.index, c.data) for c in chunks]
        sent[1], sent[2] = sent[2], sent[1]
        message_id = _hostile_send(fed, manifest, sent)
        wait_until(lambda: _delivered(fed, message_id), DELIVERY_TIMEOUT, what="delivery")
        files = fed.client(NL).attachments(message_id)
        assert [f["state"] for f in files] == ["verified"]

    def test_duplicated_index_ends_verified_or_refused_never_corrupt(self, fed: Running) -> None:
        """A second chunk 1 with other bytes: the border keeps one copy per index (Nats-Msg-Id);
        whichever arrived first decides: a verified file, or a refusal with its code."""
        chunks, manifest = _sealed_file(self.DATA)
        sent = [(c.index, c.data) for c in chunks]
        sent.insert(2, (1, sent[2][1]))  # index 1 again, with chunk 2's bytes

        message_id = _hostile_send(fed, manifest, sent)

        def settled() -> str | None:
            if _delivered(fed, message_id):
                return "delivered"
            reasons = [
                str(r["reason"])
                for r in fed.rejections(NL)
                if r["claimed_message_id"] == message_id
            ]
            return reasons[0] if reasons else None

        outcome = wait_until(settled, DELIVERY_TIMEOUT, what="delivery or refusal")
        assert outcome in ("delivered", "attachment_chunk_invalid")
        if outcome == "delivered":
            files = fed.client(NL).attachments(message_id)
            assert [f["state"] for f in files] == ["verified"]
            assert files[0]["sha256"] == manifest.to_json()["sha256"]


class TestFaults:
    def test_receiving_node_killed_mid_file_still_delivers_it_verified(
        self, fed: Running, tmp_path: Path
    ) -> None:
        """kill -9 of the NL node while chunks arrive ends in a delivered, verified file."""
        big = tmp_path / "interview.bin"
        want = _file(big, 24 * 1024 * 1024)
        handle = fed.client(DE).upload_attachment(big, media_type="application/octet-stream")
        message_id = _send_with(fed, [handle["attachment"]])
        spool = fed.store_path(NL).with_suffix(".attachments") / "incoming"
        wait_until(
            lambda: any(p.suffix == ".part" and p.stat().st_size > 0 for p in spool.glob("*")),
            DELIVERY_TIMEOUT,
            what="NL node half-way through the file",
        )
        fed.fed.stop(f"node-{NL}", kill=True)
        assert not _delivered(fed, message_id)
        fed.restart(f"node-{NL}", country="NL")
        wait_until(lambda: _delivered(fed, message_id), DELIVERY_TIMEOUT, what="delivery")
        _approved(fed, message_id)
        out = tmp_path / "got"
        fed.client(NL).download_attachment(
            message_id, handle["attachment"], out, justification=JUSTIFICATION
        )
        assert _sha(out) == want
        shutil.rmtree(tmp_path, ignore_errors=True)

    def test_sending_node_killed_mid_file_resumes_and_delivers_it_verified(
        self, fed: Running, tmp_path: Path
    ) -> None:
        """kill -9 of the DE node while it publishes a file (after a saved point, before the
        end): restarted, it publishes again from that point (chunks sent since come again, as
        duplicates) and NL ends with the delivered, verified file."""
        big = tmp_path / "recording.bin"
        want = _file(big, 96 * 1024 * 1024)
        handle = fed.client(DE).upload_attachment(big, media_type="application/octet-stream")
        attachment = handle["attachment"]
        message_id = _send_with(fed, [attachment])

        def publishing() -> bool:
            rows = fed._query(
                DE, "SELECT sent || ' ' || state FROM attachments WHERE id = ?", attachment
            )
            sent, state = rows[0].split() if rows else ("0", "")
            return int(sent) > 0 and state == "bound"

        wait_until(publishing, DELIVERY_TIMEOUT, what="DE node past a saved point")
        fed.fed.stop(f"node-{DE}", kill=True)
        fed.restart(f"node-{DE}", country="DE")
        wait_until(lambda: _delivered(fed, message_id), DELIVERY_TIMEOUT, what="delivery")
        _approved(fed, message_id)
        out = tmp_path / "got"
        fed.client(NL).download_attachment(
            message_id, handle["attachment"], out, justification=JUSTIFICATION
        )
        assert _sha(out) == want
        shutil.rmtree(tmp_path, ignore_errors=True)


# ------------------------------------------------------------- big file, outage ---

RSS_LIMIT: Final = 100 * 1024 * 1024


def _rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class MemoryWatch:
    """Samples the resident memory of every federation process from /proc, in a thread."""

    def __init__(self, fed: Running) -> None:
        self.fed = fed
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for row in self.fed.fed.status():
                if row.pid is None:
                    continue
                rss = _rss(row.pid)
                if rss is not None:
                    self.peak[row.name] = max(self.peak.get(row.name, 0), rss)
            self._stop.wait(0.1)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _outage_transfer(base: Path, size: int) -> None:
    running = Running.start(
        base / "fed", nodes=[DE, NL], description=DESCRIPTION, policy_dir=_policies(base)
    )
    try:
        big = base / "recording.bin"
        want = _file(big, size)
        with MemoryWatch(running) as watch:
            handle = running.client(DE).upload_attachment(
                big, media_type="application/octet-stream"
            )
            message_id = _send_with(running, [handle["attachment"]])
            part = (
                running.store_path(NL).with_suffix(".attachments")
                / "incoming"
                / (f"{handle['attachment']}.part")
            )
            wait_until(
                lambda: part.exists() and part.stat().st_size > size // 4,
                DELIVERY_TIMEOUT,
                what="a quarter of the file at NL",
            )
            running.fed.stop_country("NL")
            assert not _delivered(running, message_id)
            running.fed.start_country("NL")
            wait_until(
                lambda: _delivered(running, message_id), 4 * DELIVERY_TIMEOUT, what="delivery"
            )
            out = base / "got"
            running.client(NL).download_attachment(
                message_id, handle["attachment"], out, justification=JUSTIFICATION
            )
            assert _sha(out) == want
        over = {name: rss for name, rss in watch.peak.items() if rss >= RSS_LIMIT}
        assert watch.peak, "no process was measured"
        assert over == {}, f"resident memory over 100 MB: {over} (all: {watch.peak})"
    finally:
        _close(running)


def _inbox_state(running: Running, code: str) -> tuple[int, int]:
    """(chunks held, last sequence) of a country's ATT_INBOX."""

    async def read() -> tuple[int, int]:
        nc = await running.fed.connect_gateway(code)
        try:
            info = await nc.jetstream().stream_info(aw.ATT_INBOX_STREAM)
        finally:
            await nc.close()
        return info.state.messages, info.state.last_seq

    return run(read())


class TestChunkInbox:
    def test_emptied_chunk_inbox_does_not_source_again_after_a_restart(
        self, nats_binary: Path, tmp_path: Path
    ) -> None:
        """ATT_INBOX is a work queue: once a file crossed it holds nothing, and after the NL
        server restarts it goes on from where it was in DE's outbox (the next file's chunks
        arrive; the first file's are not sourced again)."""
        del nats_binary
        running = Running.start(
            tmp_path / "fed",
            nodes=[DE, NL],
            description=DESCRIPTION,
            policy_dir=_policies(tmp_path),
        )
        try:
            sourced = 0
            for n, size in enumerate((3 * 1024 * 1024, 1024 * 1024)):
                if n == 1:
                    running.fed.stop_country("NL")
                    running.fed.start_country("NL")
                path = tmp_path / f"file-{n}"
                _file(path, size)
                handle = running.client(DE).upload_attachment(
                    path, media_type="application/octet-stream"
                )
                message_id = _send_with(running, [handle["attachment"]])
                wait_until(
                    functools.partial(_delivered, running, message_id),
                    DELIVERY_TIMEOUT,
                    what="delivery",
                )
                sourced += chunk_count(size, DEFAULT_CHUNK_SIZE)
                wait_until(
                    lambda: _inbox_state(running, "NL")[0] == 0,
                    DELIVERY_TIMEOUT,
                    what="an empty chunk inbox",
                )
                assert _inbox_state(running, "NL") == (0, sourced)
        finally:
            _close(running)


class TestOutage:
    def test_nl_server_down_mid_transfer_resumes_and_memory_stays_low(
        self, nats_binary: Path, tmp_path: Path
    ) -> None:
        """20 MB DE -> NL, NL server stopped part-way and restarted: delivered with the right
        digest; every process stays under 100 MB resident throughout (from /proc)."""
        del nats_binary
        _outage_transfer(tmp_path, 20 * 1024 * 1024)

    @pytest.mark.slow
    @pytest.mark.xfail(
        reason="issue 18, open: nats-server keeps every file-store block written or read in the "
        "last 10 s, so a country server's heap grows with the transfer rate (docs/federation.md, "
        "Attachments, Memory); last runs: DE 121-247 MiB, NL 72-187 MiB (bound 100 MiB), every "
        "Python process under it; the file was delivered with a matching digest",
        strict=False,
    )
    def test_200mb_with_nl_server_down_mid_transfer(
        self, nats_binary: Path, tmp_path: Path
    ) -> None:
        """The same with 200 MB (the issue's acceptance size)."""
        del nats_binary
        _outage_transfer(tmp_path, 200 * 1024 * 1024)
