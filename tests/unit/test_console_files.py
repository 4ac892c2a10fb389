"""Files in the console: uploaded while composing (streamed into the node), checked by the
policy preview with their rule, listed on the message page, downloaded as a consultation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.console.app import create_console_app
from broker.console.files import (
    Uploads,
    clean_name,
    content_disposition,
    human_size,
    rows,
    type_mismatch,
)
from broker.console.i18n import translations
from broker.console.settings import ConsoleSettings, FourEyes
from broker.core import attachment_wire as aw
from broker.core.attachments import Manifest, parse_manifest
from broker.core.policy import Federation, parse_policy
from broker.node.attachment_transfer import (
    FileState,
    NodeAttachments,
    receive_chunk,
    settle_holds,
)
from broker.node.attachments import AttachmentSpool
from broker.node.policy_engine import EnginePolicy
from broker.node.service import Node
from broker.node.store import Store
from broker.pki.dev import DevFederation

from .node_world import REGISTRY, World, request_draft, world_at
from .test_console import FAST, Client, audit_details, people, sign_in

DE = "de.lka-berlin"
NL = "nl.politie"
DE_POLICY = b"""country: DE
version: 1
rules:
  - id: de.out.test-all
    reason: Synthetic test rule, everything may leave for NL.
    direction: egress
    decision: allow
attachments:
  - id: de.att.test-documents
    reason: Synthetic test limit, PDFs and photos up to 1 MiB.
    direction: egress
    decision: allow
    max_count: 2
    max_size: 1048576
    media_types: [application/pdf, image/png]
"""
# A tiny PNG: signature and an IHDR chunk are enough for the sniffer.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + os.urandom(3000)
PDF = b"%PDF-1.4\n" + b"synthetic statement " * 40_000  # ~800 kB: several chunks


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def node_with_files(world: World, agency: str, **more: Any) -> tuple[Node, NodeAttachments]:
    store = Store(world.tmp / f"{agency}.sqlite")
    files = NodeAttachments(store, AttachmentSpool(world.tmp / f"{agency}.attachments"))
    node = world.node(agency, store=store, attachments=files, **more)
    people(node, world)
    return node, files


def de_policy(world: World) -> EnginePolicy:
    return EnginePolicy(
        policy=lambda: parse_policy(DE_POLICY),
        federation=lambda: Federation.from_directory(world.fed.directory),
        schemas=REGISTRY,
        original_onward=lambda _m: None,
        peer_policies=dict,
    )


def compose_form(token: str, *handles: str, op: str = "preview") -> list[tuple[str, str]]:
    fields = {
        "csrf": token,
        "type": "request.assistance",
        "op": op,
        "to": NL,
        "purpose": "investigation",
        "legal_basis": "Council Framework Decision 2006/960/JHA",
        "handling": "H2",
        "tlp": "AMBER",
        "due": "2026-12-15",
        "b/title": "Workers at a farm",
        "b/offences": "forced_labour",
        "b/facts": "Workers report withheld passports.",
        "n/requested_measures": "1",
        "b/requested_measures/0/measure": "identify_person",
        "b/requested_measures/0/description": "Identify the farm manager.",
        "b/due_date": "2026-12-15",
        "b/urgency": "routine",
    }
    return [*fields.items(), *(("attachment", h) for h in handles)]


async def upload(client: Client, token: str | None, data: bytes, name: str, media_type: str) -> Any:
    headers = {"Content-Type": "application/octet-stream"}
    if token is not None:
        headers["X-CSRF-Token"] = token
    return await client.post(
        "/compose/files", params={"name": name, "media_type": media_type}, data=data,
        headers=headers,
    )  # fmt: skip


def serve(
    world: World, scenario: Any, *nodes: Node, settings: ConsoleSettings | None = None
) -> None:
    async def run() -> None:
        clients = [
            TestClient(
                TestServer(create_console_app(n, settings or ConsoleSettings(), hasher=FAST))
            )
            for n in nodes
        ]
        for c in clients:
            await c.start_server()
        try:
            await scenario(*clients)
        finally:
            for c in clients:
                await c.close()

    asyncio.run(run())


def row_of(html: str, marker: str) -> str:
    start = html.index(marker)
    return html[start : html.index("</tr>", start)]


async def deliver_files(de_files: NodeAttachments, nl: Node, nl_files: NodeAttachments) -> None:
    """Carry the sent files' chunks from DE's spool to NL (what the NATS chunk streams do),
    then settle NL's held message."""
    sent = de_files.store.query(
        lambda db: db.execute(
            "SELECT message_id, manifest FROM attachments WHERE direction = 'out'"
        ).fetchall()
    )
    for message_id, raw in sent:
        manifest: Manifest = parse_manifest(json.loads(raw))
        for chunk in de_files.spool.sealed_chunks(manifest.descriptor):
            headers = {
                aw.MESSAGE_HEADER: message_id,
                aw.ATTACHMENT_HEADER: manifest.id,
                aw.INDEX_HEADER: str(chunk.index),
            }
            assert receive_chunk(nl_files, headers, chunk.data) == "ack"
    await settle_holds(nl, nl_files)


async def pieces(data: bytes) -> AsyncIterator[bytes]:
    for at in range(0, len(data), 50_000):
        yield data[at : at + 50_000]


class TestHelpers:
    def test_sizes_read_like_a_browser_shows_them(self) -> None:
        """Byte counts in decimal units with one decimal."""
        assert human_size(532) == "532 B"
        assert human_size(1_400_000) == "1.4 MB"
        assert human_size(3_000_000_000) == "3.0 GB"

    def test_names_lose_paths_control_and_quote_characters(self) -> None:
        """A peer's file name cannot smuggle a path, a header break or a hidden name."""
        assert clean_name("../../etc/passwd") == "passwd"
        assert clean_name('a"b\r\nc;.pdf') == "a_b__c_.pdf"
        assert clean_name("..hidden") == "hidden"
        assert clean_name("") == "file"
        header = content_disposition("Überweisung 2026.pdf")
        assert header.startswith('attachment; filename="_berweisung 2026.pdf"')
        assert "filename*=UTF-8''%C3%9Cberweisung%202026.pdf" in header

    def test_mismatch_only_when_the_content_says_otherwise(self) -> None:
        """Unknown content is no mismatch; another recognised type is."""
        assert not type_mismatch("text/plain", None)
        assert not type_mismatch("image/PNG", "image/png")
        assert type_mismatch("image/png", "application/pdf")

    def test_uploads_belong_to_their_author(self) -> None:
        """Only handles a person uploaded are theirs; forgotten ones are nobody's."""
        uploads = Uploads()
        uploads.add("olga", "a")
        uploads.add("sven", "b")
        assert uploads.owned("olga", ["b", "a", "a", "zzz"]) == ["a"]
        uploads.forget(["a"])
        assert uploads.owned("olga", ["a"]) == []

    def test_rows_hide_names_until_opened_and_say_why_a_file_is_blocked(
        self, tmp_path: Path, fixed_now: datetime
    ) -> None:
        """Before opening only type and size show; quarantine and refusal carry their reason."""
        store = Store(tmp_path / "n.sqlite")
        files = NodeAttachments(store, AttachmentSpool(tmp_path / "att"), scanner=("true",))
        try:
            m = asyncio.run(
                files.upload(pieces(PDF), name="b.pdf", media_type="image/png", now=fixed_now)
            )
            quarantined = FileState(
                manifest=m, state="verified", reason=None, detail=None,
                sniffed="application/pdf", scan="quarantined", scan_reason="marker found",
            )  # fmt: skip
            refused = FileState(
                manifest=m, state="refused", reason="attachment_digest_mismatch",
                detail="digest differs",
            )  # fmt: skip
            closed = rows([quarantined, refused], received=True, opened=False)
            assert [r["name"] for r in closed] == ["", ""]
            assert closed[0]["mismatch"] is True
            assert closed[0]["openable"] is False
            assert closed[0]["blocked"] == "marker found"
            assert closed[1]["blocked"] == "attachment_digest_mismatch: digest differs"
            opened = rows([quarantined], received=True, opened=True)
            assert opened[0]["name"] == "b.pdf"
            assert opened[0]["size"] == len(PDF)
        finally:
            store.close()


class TestCompose:
    def test_upload_preview_send_and_download_own_file(self, world: World) -> None:
        """A streamed upload is staged sealed; the preview allows it within the attachment
        limits; the sent message carries the file; the sender downloads it as an attachment."""
        de, de_files = node_with_files(world, DE, preflight=de_policy(world).preflight)

        async def scenario(client: Client) -> None:
            token = await sign_in(client, "olga")
            answer = await upload(client, token, PDF, "statement.pdf", "application/pdf")
            assert answer.status == 201, await answer.text()
            found = await answer.json()
            handle = found["attachment"]
            assert found["size"] == len(PDF)
            assert found["media_type"] == "application/pdf"
            sealed = (de_files.spool.root / "outgoing" / f"{handle}.sealed").read_bytes()
            assert b"synthetic statement" not in sealed
            page = await client.post("/compose", data=compose_form(token, handle))
            html = await page.text()
            assert "statement.pdf" in html
            assert f'name="attachment" value="{handle}"' in html
            allowed = row_of(html, f'data-recipient="{NL}"')
            assert "allowed" in allowed
            assert "denied" not in allowed
            sent = await client.post(
                "/compose", data=compose_form(token, handle, op="send"), allow_redirects=False
            )
            assert sent.status == 303, await sent.text()
            message_id = sent.headers["Location"].split("/")[2].split("?")[0]
            stored = de.store.outbox_message(message_id)
            assert stored is not None
            assert [a["id"] for a in stored.header["attachments"]] == [handle]
            view = await (await client.get(f"/messages/{message_id}")).text()
            assert "statement.pdf" in row_of(view, f'data-file="{handle}"')
            refused = await client.post(
                f"/messages/{message_id}/files/{handle}", data={"csrf": token},
                allow_redirects=False,
            )  # fmt: skip
            assert refused.status == 303
            assert "file_error=purpose" in refused.headers["Location"]
            got = await client.post(
                f"/messages/{message_id}/files/{handle}",
                data={"csrf": token, "purpose": "Checking the case file"},
            )
            assert got.status == 200
            assert await got.read() == PDF
            assert got.headers["Content-Type"] == "application/octet-stream"
            assert got.headers["Content-Length"] == str(len(PDF))
            assert got.headers["Content-Disposition"].startswith(
                'attachment; filename="statement.pdf"'
            )
            assert got.headers["X-Content-Type-Options"] == "nosniff"
            assert "sandbox" in got.headers["Content-Security-Policy"]
            assert any(
                f"opened sent file {handle}" in d[2] for d in audit_details(de) if d[1] == "olga"
            )

        serve(world, scenario, de)

    def test_forbidden_type_is_refused_with_its_rule_and_reason(self, world: World) -> None:
        """A ZIP is not among the allowed types: preview and send name the rule and why."""
        de, _files = node_with_files(world, DE, preflight=de_policy(world).preflight)

        async def scenario(client: Client) -> None:
            token = await sign_in(client, "olga")
            answer = await upload(client, token, b"PK\x03\x04" + os.urandom(500), "x.zip",
                                  "application/zip")  # fmt: skip
            handle = (await answer.json())["attachment"]
            page = await client.post("/compose", data=compose_form(token, handle))
            row = row_of(await page.text(), f'data-recipient="{NL}"')
            assert "denied" in row
            assert "de.att.test-documents" in row
            assert "PDFs and photos up to 1 MiB" in row
            assert "application/zip" in row
            sent = await client.post(
                "/compose", data=compose_form(token, handle, op="send"), allow_redirects=False
            )
            assert sent.status == 422
            assert "Policy allows none of the chosen recipients." in await sent.text()
            assert de.store.list_outbox() == []

        serve(world, scenario, de)

    def test_uploads_need_the_token_and_stay_their_authors(self, world: World) -> None:
        """No CSRF token: 403 and nothing staged. Another person's handle in a form is
        ignored: it is not shown, previewed or sent."""
        de, de_files = node_with_files(world, DE, preflight=de_policy(world).preflight)

        async def scenario(olga: Client) -> None:
            token = await sign_in(olga, "olga")
            forged = await upload(olga, None, PNG, "p.png", "image/png")
            assert forged.status == 403
            assert list((de_files.spool.root / "outgoing").iterdir()) == []
            handle = (await (await upload(olga, token, PNG, "p.png", "image/png")).json())[
                "attachment"
            ]
            await olga.post("/logout", data={"csrf": token})
            sven_token = await sign_in(olga, "sven")
            page = await olga.post("/compose", data=compose_form(sven_token, handle))
            assert handle not in await page.text()
            sent = await olga.post(
                "/compose", data=compose_form(sven_token, handle, op="send"),
                allow_redirects=False,
            )  # fmt: skip
            assert sent.status == 303
            message_id = sent.headers["Location"].split("/")[2].split("?")[0]
            stored = de.store.outbox_message(message_id)
            assert stored is not None
            assert not stored.header.get("attachments")

        serve(world, scenario, de)


class TestStreaming:
    def test_upload_and_download_never_hold_the_file_in_memory(self, world: World) -> None:
        """32 MiB up through the console and back down peak far below the file size
        (tracemalloc over client and server, both in this process)."""
        de, _files = node_with_files(world, DE)
        size = 32 * 1024 * 1024
        piece = os.urandom(64 * 1024)

        async def body() -> AsyncIterator[bytes]:
            for _ in range(size // len(piece)):
                yield piece

        async def scenario(client: Client) -> None:
            token = await sign_in(client, "olga")
            tracemalloc.start()
            try:
                answer = await client.post(
                    "/compose/files", params={"name": "big.bin", "media_type": "video/mp4"},
                    data=body(), headers={"X-CSRF-Token": token},
                )  # fmt: skip
                handle = (await answer.json())["attachment"]
                _, up_peak = tracemalloc.get_traced_memory()
                assert answer.status == 201
                sent = await de.send(request_draft(attachments=(handle,)))
                tracemalloc.reset_peak()
                got = await client.post(
                    f"/messages/{sent.message_id}/files/{handle}",
                    data={"csrf": token, "purpose": "Checking the case file"},
                )
                received = hashlib.sha256()
                async for chunk in got.content.iter_chunked(256 * 1024):
                    received.update(chunk)
                _, down_peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            expected = hashlib.sha256()
            for _ in range(size // len(piece)):
                expected.update(piece)
            assert received.hexdigest() == expected.hexdigest()
            assert up_peak < 8 * 1024 * 1024, up_peak
            assert down_peak < 8 * 1024 * 1024, down_peak

        serve(world, scenario, de)

    def test_a_file_over_the_node_limit_is_refused_with_the_limit(self, world: World) -> None:
        """Over the node's attachments.max_size: 413 and the limit in words, nothing staged."""
        store = Store(world.tmp / "de-small.sqlite")
        files = NodeAttachments(store, AttachmentSpool(world.tmp / "small"), max_size=100_000)
        de = world.node(DE, store=store, attachments=files)
        people(de, world)

        async def scenario(client: Client) -> None:
            token = await sign_in(client, "olga")
            answer = await upload(client, token, PDF, "statement.pdf", "application/pdf")
            assert answer.status == 413
            assert "100.0 kB" in (await answer.json())["error"]
            assert list((files.spool.root / "outgoing").iterdir()) == []

        serve(world, scenario, de)


class TestDraftsAndRelease:
    def test_files_stay_with_a_saved_draft_and_a_four_eyes_release(self, world: World) -> None:
        """A saved draft keeps its files; Remove (without script) takes one off; a request
        that waits for four eyes waits with its file and the supervisor's release sends it."""
        de, _files = node_with_files(world, DE, preflight=de_policy(world).preflight)

        async def scenario(client: Client) -> None:
            token = await sign_in(client, "olga")
            pdf = (await (await upload(client, token, PDF, "a.pdf", "application/pdf")).json())[
                "attachment"
            ]
            png = (await (await upload(client, token, PNG, "b.png", "image/png")).json())[
                "attachment"
            ]
            saved = await client.post("/compose", data=compose_form(token, pdf, png, op="save"))
            draft_id = re.search(r'name="draft_id" value="([0-9a-f]+)"', await saved.text())
            assert draft_id is not None
            again = await (await client.get(f"/compose?draft={draft_id.group(1)}")).text()
            assert "a.pdf" in again
            assert "b.png" in again
            removed = await client.post(
                "/compose", data=compose_form(token, pdf, png, op=f"detach:{png}")
            )
            page = await removed.text()
            assert f'value="{pdf}"' in page
            assert f'value="{png}"' not in page
            held = await client.post(
                "/compose", data=compose_form(token, pdf, op="send"), allow_redirects=False
            )
            assert held.status == 303
            assert held.headers["Location"].startswith("/releases?held=")
            release_id = held.headers["Location"].split("=")[1]
            assert de.store.list_outbox() == []
            await client.post("/logout", data={"csrf": token})
            sven = await sign_in(client, "sven")
            done = await client.post(
                f"/releases/{release_id}/release", data={"csrf": sven}, allow_redirects=False
            )
            assert done.status == 303
            message_id = done.headers["Location"].split("/")[2]
            stored = de.store.outbox_message(message_id)
            assert stored is not None
            assert [a["id"] for a in stored.header["attachments"]] == [pdf]

        four_eyes = FourEyes(types=("request.assistance",))
        serve(world, scenario, de, settings=ConsoleSettings(four_eyes=four_eyes))


class TestReceived:
    def test_received_files_listed_and_downloaded_as_a_consultation(self, world: World) -> None:
        """NL sees type, size and the sniffed-type mismatch before opening; a download asks
        a purpose, is logged as a consultation and streams the verified bytes; a quarantined
        file says why and cannot be downloaded."""
        de, de_files = node_with_files(world, DE)
        nl, nl_files = node_with_files(world, NL)
        nl_files.scanner = ("scanner",)  # scans are recorded by hand below

        async def scenario(client: Client) -> None:
            good = await de_files.upload(
                pieces(PDF), name="statement.pdf", media_type="image/png", now=world.clock()
            )
            bad = await de_files.upload(
                pieces(PNG), name="photo.png", media_type="image/png", now=world.clock()
            )
            sent = await de.send(request_draft(attachments=(good.id, bad.id)))
            await world.pump()
            assert nl.store.inbox_message(sent.message_id) is None  # held for its files
            await deliver_files(de_files, nl, nl_files)
            assert nl.store.inbox_message(sent.message_id) is not None
            nl_files.set_scan(good.id, "approved", "approved by the scanner")
            nl_files.set_scan(bad.id, "quarantined", "marker found: synthetic test signature")
            token = await sign_in(client, "olga")
            page = await (await client.get(f"/messages/{sent.message_id}")).text()
            first = row_of(page, f'data-file="{good.id}"')
            assert "statement.pdf" not in first  # a name is content: after opening only
            assert "image/png" in first
            assert "application/pdf" in first
            assert "differs from the declared type" in first
            assert "800.0 kB" in first or "kB" in first
            second = row_of(page, f'data-file="{bad.id}"')
            assert "quarantined" in second
            assert "marker found: synthetic test signature" in second
            assert f"/files/{bad.id}" not in second
            missing = await client.post(
                f"/messages/{sent.message_id}/files/{good.id}", data={"csrf": token},
                allow_redirects=False,
            )  # fmt: skip
            assert missing.status == 303
            assert nl.store.consultations(sent.message_id) == []
            got = await client.post(
                f"/messages/{sent.message_id}/files/{good.id}",
                data={"csrf": token, "purpose": "Handling this request", "detail": "case 17"},
            )
            assert got.status == 200
            assert await got.read() == PDF
            assert got.headers["Content-Length"] == str(len(PDF))
            logged = nl.store.consultations(sent.message_id)
            assert len(logged) == 1
            assert logged[0][0] == "olga"
            assert logged[0][1] == f"Handling this request: case 17 (file {good.id})"
            blocked = await client.post(
                f"/messages/{sent.message_id}/files/{bad.id}",
                data={"csrf": token, "purpose": "Handling this request"},
                allow_redirects=False,
            )
            assert blocked.status == 303
            assert "file_error=blocked" in blocked.headers["Location"]
            assert len(nl.store.consultations(sent.message_id)) == 1
            await client.post("/logout", data={"csrf": token})
            auditor_token = await sign_in(client, "ada")
            refused = await client.post(
                f"/messages/{sent.message_id}/files/{good.id}",
                data={"csrf": auditor_token, "purpose": "Supervisor review"},
            )
            assert refused.status == 403

        serve(world, scenario, nl)


class TestLanguage:
    TEXTS = (
        "Files",
        "Add files",
        "Uploading",
        "uploaded",
        "Upload refused:",
        "Declared type",
        "Content looks like",
        "differs from the declared type",
        "Size",
        "Verification",
        "Scan",
        "quarantined",
        "Quarantined by the scanner:",
        "Download",
        "Downloading is a consultation: your purpose is recorded.",
        "State why you open this file: choose a purpose or write details.",
    )

    @pytest.mark.parametrize("language", ["de", "uk"])
    def test_every_shipped_language_translates_the_file_texts(self, language: str) -> None:
        """German and Ukrainian translate what the console says about files."""
        gettext = translations(language).gettext
        assert [t for t in self.TEXTS if gettext(t) == t] == []
