"""The folder adapter against real node APIs (two in-memory nodes behind loopback HTTP)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.common import NodeAccess
from adapters.folder import (
    FAILED,
    INCOMING,
    OUTGOING,
    SENT,
    FolderAdapter,
    FolderSettings,
    Stability,
    files_dir_name,
    idempotency_key,
    is_draft_name,
    safe_file_name,
)
from broker.core import attachment_wire as aw
from broker.core.attachments import parse_manifest
from broker.errors import ConfigError
from broker.node.attachment_transfer import NodeAttachments, receive_chunk, settle_holds
from broker.pki.dev import DevFederation
from broker.sdk import NO_RETRIES, NodeClient

from .node_world import world_at
from .test_sdk import TOKEN, Served, request_draft

LKA = "de.lka-berlin"
POLITIE = "nl.politie"


class Ticks:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[Served]:
    """de.lka-berlin and nl.politie behind their APIs; stopped after the test."""
    for world in world_at(dev_federation, tmp_path, fixed_now):
        running = Served(world)
        running.start()
        try:
            yield running
        finally:
            running.stop()


def _adapter(
    served: Served,
    agency: str,
    root: Path,
    *,
    stable: float = 0.0,
    clock: Ticks | None = None,
    token: str = TOKEN,
) -> FolderAdapter:
    settings = FolderSettings(
        folder=root,
        node=NodeAccess(url=served.urls[agency], token=token),
        stable_seconds=stable,
        receive_seconds=0.0,
    )
    client = NodeClient(served.urls[agency], token, timeout=5, retries=NO_RETRIES)
    adapter = FolderAdapter(settings, client, clock=clock or Ticks())
    adapter.prepare()
    return adapter


def _drop(root: Path, name: str, draft: Any) -> Path:
    """Drop a draft the way the adapter's docs ask a writer to: ``name.part``, then rename, so a
    running adapter (``stable_seconds=0`` trusts the writer) never sees it half-written."""
    path = root / OUTGOING / name
    part = path.with_name(name + ".part")
    part.write_bytes(draft if isinstance(draft, bytes) else json.dumps(draft).encode("utf-8"))
    part.rename(path)
    return path


class TestCompleteFiles:
    def test_growing_file_waits_until_stable(self) -> None:
        """A file whose size or mtime changed within stable_seconds is not complete."""
        clock = Ticks()
        rule = Stability(1.0, clock)
        assert rule.complete({"a.json": (10, 1)}) == []
        clock.now += 0.6
        assert rule.complete({"a.json": (20, 2)}) == []  # still growing: timer restarts
        clock.now += 0.6
        assert rule.complete({"a.json": (20, 2)}) == []
        clock.now += 0.5
        assert rule.complete({"a.json": (20, 2)}) == ["a.json"]

    def test_only_finished_draft_names_count(self) -> None:
        """`*.json` drafts count; `.part` files, hidden temporaries and other names do not."""
        assert is_draft_name("case-17.json")
        assert not is_draft_name("case-17.json.part")
        assert not is_draft_name(".case-17.json")
        assert not is_draft_name("case-17.txt")

    def test_file_half_written_at_start_is_not_sent(self, served: Served, tmp_path: Path) -> None:
        """A draft present when the adapter starts is sent only after it stayed unchanged."""
        clock = Ticks()
        adapter = _adapter(served, LKA, tmp_path / "drop", stable=1.0, clock=clock)
        path = _drop(adapter.root, "r.json", b'{"to": ["nl.pol')
        assert adapter.tick() == []
        path.write_bytes(json.dumps(request_draft()).encode())  # the writer finishes
        os.utime(path, ns=(1, 1))
        clock.now += 0.5
        assert adapter.tick() == []
        clock.now += 1.0
        (outcome,) = adapter.tick()
        assert outcome.fate == "sent"


class TestSending:
    def test_draft_sent_once_and_moved_with_its_result(
        self, served: Served, tmp_path: Path
    ) -> None:
        """A draft is sent, moved to sent/ next to its result, and reaches the recipient."""
        adapter = _adapter(served, LKA, tmp_path / "drop")
        _drop(adapter.root, "r1.json", request_draft())
        (outcome,) = adapter.tick()
        assert outcome.fate == "sent"
        assert not (adapter.root / OUTGOING / "r1.json").exists()
        result = json.loads((adapter.root / SENT / "r1.json.result.json").read_text())
        assert result["result"]["message_id"] == outcome.message_id
        assert (adapter.root / SENT / "r1.json").exists()
        served.pump()
        inbox = served.client(POLITIE).inbox()
        assert [m["message_id"] for m in inbox] == [outcome.message_id]

    def test_resend_after_a_crash_gives_the_first_result(
        self, served: Served, tmp_path: Path
    ) -> None:
        """A draft sent before a crash (still in outgoing/) is sent again with the same key:
        the node answers with the first message, and only one is in the outbox."""
        adapter = _adapter(served, LKA, tmp_path / "drop")
        data = json.dumps(request_draft()).encode()
        first = served.client(LKA).send(json.loads(data), idempotency_key=idempotency_key(data))
        _drop(adapter.root, "r.json", data)
        (outcome,) = adapter.tick()
        assert outcome.message_id == first["message_id"]
        assert [m["message_id"] for m in served.client(LKA).outbox()] == [first["message_id"]]

    def test_same_name_again_does_not_overwrite(self, served: Served, tmp_path: Path) -> None:
        """A second draft under a name already in sent/ lands beside it with a content tag."""
        adapter = _adapter(served, LKA, tmp_path / "drop")
        _drop(adapter.root, "r.json", request_draft())
        adapter.tick()
        _drop(adapter.root, "r.json", request_draft(due="2026-12-20"))
        (outcome,) = adapter.tick()
        assert outcome.moved_to is not None
        assert outcome.moved_to.name != "r.json"
        assert len(list((adapter.root / SENT).glob("r*.result.json"))) == 2

    def test_bad_files_fail_alone_with_their_reasons(self, served: Served, tmp_path: Path) -> None:
        """Malformed, non-object and schema-invalid drafts go to failed/ with the error; the
        good draft after them is still sent in the same pass."""
        adapter = _adapter(served, LKA, tmp_path / "drop")
        _drop(adapter.root, "a-malformed.json", b'{"to": [}')
        _drop(adapter.root, "b-list.json", [1, 2])
        _drop(adapter.root, "c-schema.json", request_draft(body={"nonsense": True}))
        _drop(adapter.root, "d-unknown.json", request_draft() | {"colour": "red"})
        _drop(adapter.root, "e-good.json", request_draft())
        outcomes = {o.name: o for o in adapter.tick()}
        assert {n: o.fate for n, o in outcomes.items()} == {
            "a-malformed.json": "failed",
            "b-list.json": "failed",
            "c-schema.json": "failed",
            "d-unknown.json": "failed",
            "e-good.json": "sent",
        }
        schema = json.loads((adapter.root / FAILED / "c-schema.json.error.json").read_text())
        assert schema["error"]["reason"] == "schema_invalid"
        assert schema["error"]["status"] == 422
        assert schema["error"]["errors"]
        malformed = json.loads((adapter.root / FAILED / "a-malformed.json.error.json").read_text())
        assert malformed["error"]["reason"] == "malformed"
        assert (adapter.root / FAILED / "a-malformed.json").read_bytes() == b'{"to": [}'
        assert list((adapter.root / OUTGOING).iterdir()) == []

    def test_unreachable_node_leaves_the_draft_waiting(self, tmp_path: Path) -> None:
        """With no node listening the draft stays in outgoing/ and the adapter pauses."""
        settings = FolderSettings(
            folder=tmp_path / "drop",
            node=NodeAccess(url="http://127.0.0.1:9", token=TOKEN),
            stable_seconds=0,
            receive=False,
        )
        client = NodeClient("http://127.0.0.1:9", TOKEN, timeout=1, retries=NO_RETRIES)
        adapter = FolderAdapter(settings, client, clock=Ticks())
        adapter.prepare()
        _drop(adapter.root, "r.json", request_draft())
        (outcome,) = adapter.tick()
        assert outcome.fate == "waiting"
        assert outcome.reason == "node_unreachable"
        assert (adapter.root / OUTGOING / "r.json").exists()
        assert adapter.tick() == []  # paused: no hammering

    def test_client_without_send_scope_leaves_drafts_waiting(
        self, served: Served, tmp_path: Path
    ) -> None:
        """A 403 for a missing scope is our configuration's fault: the draft waits in
        outgoing/ instead of failing."""
        system = {
            "client_id": "reader",
            "system": "Synthetic case system",
            "purpose": "reading only",
            "scopes": ["read"],
        }
        token = served.client(LKA).call("POST", "/v1/clients", body=system)["token"]
        adapter = _adapter(served, LKA, tmp_path / "drop", token=token)
        _drop(adapter.root, "r.json", request_draft())
        (outcome,) = adapter.tick()
        assert (outcome.fate, outcome.reason) == ("waiting", "forbidden")
        assert (adapter.root / OUTGOING / "r.json").exists()
        assert list((adapter.root / FAILED).iterdir()) == []


class TestReceiving:
    def test_received_message_written_once_with_its_evidence(
        self, served: Served, tmp_path: Path
    ) -> None:
        """A message received by NL is written to incoming/<id>.json (header, body, evidence
        trail) once, found through the change feed and fetched as a transfer to the case
        system (no `read` evidence); no temporary file is left behind."""
        sent = served.client(LKA).send(request_draft())
        served.pump()
        system = {
            "client_id": "folder",
            "system": "Synthetic file-based case system",
            "purpose": "import received messages",
            "scopes": ["read", "events", "send"],
        }
        token = served.client(POLITIE).call("POST", "/v1/clients", body=system)["token"]
        adapter = _adapter(served, POLITIE, tmp_path / "nl", token=token)
        assert adapter.receive() == 1
        written = adapter.root / INCOMING / f"{sent['message_id']}.json"
        document = json.loads(written.read_text())
        assert document["message"]["body"] == request_draft()["body"]
        assert [e["kind"] for e in document["evidence"]] == ["delivered"]
        assert [p.name for p in (adapter.root / INCOMING).iterdir()] == [written.name]
        assert adapter.receive() == 0
        # A restarted adapter remembers what it wrote, even after the file was taken away.
        written.unlink()
        assert _adapter(served, POLITIE, tmp_path / "nl", token=token).receive() == 0

    def test_expired_cursor_resynchronises_from_the_oldest_retained_event(
        self, served: Served, tmp_path: Path
    ) -> None:
        """After `410 cursor_expired` the adapter goes on from the oldest retained event:
        retained messages are written, those already written are not written again."""
        first = served.client(LKA).send(request_draft())
        served.pump()
        adapter = _adapter(served, POLITIE, tmp_path / "nl")
        assert adapter.receive() == 1
        purged = served.client(LKA).send(request_draft())
        served.pump()
        kept = served.client(LKA).send(request_draft())
        served.pump()
        store = served.world.node(POLITIE).store
        with store.transaction() as db:  # retention purged everything up to `purged`'s event
            db.execute(
                "DELETE FROM events WHERE seq <= (SELECT seq FROM events WHERE message_id = ? "
                "AND type = 'message.received')",
                (purged["message_id"],),
            )
        assert adapter.receive() == 1
        incoming = {p.name for p in (adapter.root / INCOMING).iterdir()}
        assert incoming == {f"{first['message_id']}.json", f"{kept['message_id']}.json"}
        # A cursor from before the purge again (e.g. a restored backup): nothing written twice.
        (adapter.root / ".casebridge" / "cursor").write_text("0", encoding="ascii")
        assert adapter.receive() == 0
        assert adapter.receive() == 0


class TestSettingsAndLock:
    def test_settings_file_is_read_and_checked(self, tmp_path: Path) -> None:
        """Paths are relative to the settings file; the token comes from its file; an unknown
        member is refused."""
        (tmp_path / "token.txt").write_text(TOKEN + "\n")
        path = tmp_path / "folder.yaml"
        path.write_text("folder: drop\nnode: {url: 'http://127.0.0.1:1', token_file: token.txt}\n")
        settings = FolderSettings.load(path)
        assert settings.folder == tmp_path / "drop"
        assert settings.node.token == TOKEN
        assert TOKEN not in repr(settings)
        path.write_text("folder: drop\nstable_second: 1\n")
        with pytest.raises(ConfigError, match="stable_second"):
            FolderSettings.load(path)

    def test_second_adapter_on_one_folder_is_refused(self, tmp_path: Path) -> None:
        """Two adapters on one folder would race: the second is refused while the first runs."""
        settings = FolderSettings(
            folder=tmp_path / "drop", node=NodeAccess(url="http://127.0.0.1:9", token=TOKEN)
        )
        first = FolderAdapter(settings, NodeClient("http://127.0.0.1:9", TOKEN))
        second = FolderAdapter(settings, NodeClient("http://127.0.0.1:9", TOKEN))
        with first.locked(), pytest.raises(ConfigError, match="another folder adapter"):
            second.locked().__enter__()

    def test_run_stops_when_asked(self, served: Served, tmp_path: Path) -> None:
        """`run` watches the folder, sends a dropped draft and returns once stop is set."""
        adapter = _adapter(served, LKA, tmp_path / "drop")
        stop = threading.Event()
        runner = threading.Thread(target=adapter.run, args=(stop,))
        runner.start()
        try:
            _drop(adapter.root, "r.json", request_draft())
            deadline = 200
            while not (adapter.root / SENT / "r.json").exists() and deadline:
                threading.Event().wait(0.05)
                deadline -= 1
            assert (adapter.root / SENT / "r.json").exists()
        finally:
            stop.set()
            runner.join(timeout=10)
        assert not runner.is_alive()


# ------------------------------------------------------------------------ files

PDF = b"%PDF-1.4\n" + b"synthetic statement line\n" * 30_000  # ~750 kB: several chunks
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + b"synthetic pixels" * 500


@pytest.fixture
def served_files(
    dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime
) -> Iterator[Served]:
    """de.lka-berlin and nl.politie carrying files (each with its spool), behind their APIs."""
    for world in world_at(dev_federation, tmp_path, fixed_now):
        running = Served(world, files=True, max_file=1_000_000)
        running.start()
        try:
            yield running
        finally:
            running.stop()


def _drop_files(root: Path, draft_name: str, files: dict[str, bytes]) -> Path:
    """Files first (each ``.part`` then renamed), as the adapter's docs ask."""
    directory = root / OUTGOING / files_dir_name(draft_name)
    directory.mkdir()
    for name, data in files.items():
        part = directory / (name + ".part")
        part.write_bytes(data)
        part.rename(directory / name)
    return directory


def _files(served: Served, agency: str) -> NodeAttachments:
    files = served.world.nodes[agency].attachments
    assert isinstance(files, NodeAttachments)
    return files


def _carry(served: Served) -> None:
    """Deliver messages, then carry DE's sent chunks to NL (what the NATS chunk streams do)
    and settle NL's held messages."""
    served.pump()
    de, nl = _files(served, LKA), _files(served, POLITIE)

    async def carry() -> None:
        rows = de.store.query(
            lambda db: db.execute(
                "SELECT message_id, manifest FROM attachments WHERE direction = 'out' "
                "AND message_id IS NOT NULL"
            ).fetchall()
        )
        for message_id, raw in rows:
            manifest = parse_manifest(json.loads(raw))
            for chunk in de.spool.sealed_chunks(manifest.descriptor):
                headers = {
                    aw.MESSAGE_HEADER: message_id,
                    aw.ATTACHMENT_HEADER: manifest.id,
                    aw.INDEX_HEADER: str(chunk.index),
                }
                receive_chunk(nl, headers, chunk.data)
        await settle_holds(served.world.nodes[POLITIE], nl)

    asyncio.run_coroutine_threadsafe(carry(), served.loop).result(timeout=20)
    served.pump()


def _staged_count(served: Served) -> int:
    return int(
        _files(served, LKA).store.query(
            lambda db: db.execute(
                "SELECT COUNT(*) FROM attachments WHERE direction = 'out'"
            ).fetchone()[0]
        )
    )


class Crash(BaseException):
    """A process dying at a chosen point (not an error the adapter handles)."""


class TestFiles:
    def test_files_beside_the_draft_travel_with_it_and_move_with_it(
        self, served_files: Served, tmp_path: Path
    ) -> None:
        """NAME.files/ is uploaded and sent with NAME.json (types from the content); both
        move to sent/, the result lists each file's digest and handle; NL receives them."""
        adapter = _adapter(served_files, LKA, tmp_path / "drop")
        _drop_files(adapter.root, "r.json", {"statement.pdf": PDF, "photo": PNG})
        _drop(adapter.root, "r.json", request_draft())
        (outcome,) = adapter.tick()
        assert outcome.fate == "sent", outcome
        assert list((adapter.root / OUTGOING).iterdir()) == []
        assert (adapter.root / SENT / "r.files" / "statement.pdf").read_bytes() == PDF
        result = json.loads((adapter.root / SENT / "r.json.result.json").read_text())
        assert result["files_dir"] == "r.files"
        assert [f["file"] for f in result["attachments"]] == ["photo", "statement.pdf"]
        stored = served_files.world.nodes[LKA].store.outbox_message(str(outcome.message_id))
        assert stored is not None
        assert [a["media_type"] for a in stored.header["attachments"]] == [
            "image/png",
            "application/pdf",
        ]
        _carry(served_files)
        listed = served_files.client(POLITIE).attachments(str(outcome.message_id))
        assert [(f["name"], f["state"]) for f in listed] == [
            ("photo", "verified"),
            ("statement.pdf", "verified"),
        ]

    def test_a_draft_whose_files_are_being_written_waits(
        self, served_files: Served, tmp_path: Path
    ) -> None:
        """A `.part` in NAME.files/ holds the draft back; a file added later restarts the
        stability wait; once all is still the draft goes with every file."""
        clock = Ticks()
        adapter = _adapter(served_files, LKA, tmp_path / "drop", stable=1.0, clock=clock)
        directory = _drop_files(adapter.root, "r.json", {"a.pdf": PDF})
        (directory / "b.png.part").write_bytes(PNG)
        _drop(adapter.root, "r.json", request_draft())
        assert adapter.tick() == []
        clock.now += 5
        assert adapter.tick() == []  # still a .part: never complete
        (directory / "b.png.part").rename(directory / "b.png")
        assert adapter.tick() == []
        clock.now += 0.6
        (directory / "c.png").write_bytes(PNG)  # another file arrives: the wait restarts
        assert adapter.tick() == []
        clock.now += 0.6
        assert adapter.tick() == []
        clock.now += 0.5
        (outcome,) = adapter.tick()
        assert outcome.fate == "sent"
        result = json.loads((adapter.root / SENT / "r.json.result.json").read_text())
        assert [f["file"] for f in result["attachments"]] == ["a.pdf", "b.png", "c.png"]

    def test_crash_after_uploads_reuses_them_and_sends_once(
        self, served_files: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Killed after uploading, then after sending, then while moving the files: each
        restart goes on from there; one message, each file uploaded once, nothing lost."""
        adapter = _adapter(served_files, LKA, tmp_path / "drop")
        _drop_files(adapter.root, "r.json", {"a.pdf": PDF, "b.png": PNG})
        _drop(adapter.root, "r.json", request_draft())
        real_call = NodeClient.call

        def dies_on_send(self: NodeClient, method: str, path: str, **kw: Any) -> Any:
            if method == "POST" and path == "/v1/messages":
                raise Crash
            return real_call(self, method, path, **kw)

        with monkeypatch.context() as m:
            m.setattr(NodeClient, "call", dies_on_send)
            with pytest.raises(Crash):
                adapter.tick()
        assert _staged_count(served_files) == 2
        restarted = _adapter(served_files, LKA, tmp_path / "drop")
        with monkeypatch.context() as m:
            m.setattr(FolderAdapter, "_move", lambda *a, **k: (_ for _ in ()).throw(Crash()))
            with pytest.raises(Crash):
                restarted.tick()  # sent, then killed before the draft moved
        assert _staged_count(served_files) == 2  # the recorded handles were reused
        assert len(served_files.client(LKA).outbox()) == 1
        again = _adapter(served_files, LKA, tmp_path / "drop")
        with monkeypatch.context() as m:
            m.setattr(FolderAdapter, "_finish_move", lambda *a, **k: (_ for _ in ()).throw(Crash()))
            with pytest.raises(Crash):
                again.tick()  # the draft moved, killed before its files did
        assert (adapter.root / SENT / "r.json").exists()
        assert (adapter.root / OUTGOING / "r.files").is_dir()
        last = _adapter(served_files, LKA, tmp_path / "drop")
        assert last.tick() == []  # the move is finished; nothing is sent again
        assert list((adapter.root / OUTGOING).iterdir()) == []
        assert (adapter.root / SENT / "r.files" / "b.png").read_bytes() == PNG
        assert len(served_files.client(LKA).outbox()) == 1
        assert _staged_count(served_files) == 2

    def test_refused_files_fail_the_draft_with_the_reason(
        self, served_files: Served, tmp_path: Path
    ) -> None:
        """A file the node refuses (over its size limit), a sub-directory, or handles named
        in the draft: the draft and its files go to failed/ with the reason."""
        adapter = _adapter(served_files, LKA, tmp_path / "drop")
        _drop_files(adapter.root, "big.json", {"huge.pdf": b"%PDF" + b"x" * 1_200_000})
        _drop(adapter.root, "big.json", request_draft())
        nested = _drop_files(adapter.root, "nested.json", {"a.pdf": PDF})
        (nested / "inner").mkdir()
        _drop(adapter.root, "nested.json", request_draft())
        _drop(adapter.root, "named.json", request_draft() | {"attachments": ["x"]})
        outcomes = {o.name: o for o in adapter.tick()}
        assert {n: o.fate for n, o in outcomes.items()} == {
            "big.json": "failed",
            "named.json": "failed",
            "nested.json": "failed",
        }
        big = json.loads((adapter.root / FAILED / "big.json.error.json").read_text())
        assert big["error"]["file"] == "huge.pdf"
        assert big["error"]["status"] == 400
        assert (adapter.root / FAILED / "big.files" / "huge.pdf").exists()
        nested_error = json.loads((adapter.root / FAILED / "nested.json.error.json").read_text())
        assert "inner" in nested_error["error"]["detail"]
        assert list((adapter.root / OUTGOING).iterdir()) == []
        assert served_files.client(LKA).outbox() == []

    def test_received_files_written_beside_the_message_quarantined_withheld(
        self, served_files: Served, tmp_path: Path
    ) -> None:
        """NL writes a message once the scanner decided: the approved file verified into
        incoming/<id>.files/, the quarantined one withheld with the scanner's reason; the
        import (scoped client) is a transfer, the message stays unread."""
        sender = _adapter(served_files, LKA, tmp_path / "de")
        _drop_files(sender.root, "r.json", {"statement.pdf": PDF, "photo.png": PNG})
        _drop(sender.root, "r.json", request_draft())
        (outcome,) = sender.tick()
        nl = _files(served_files, POLITIE)
        nl.scanner = ("synthetic-scanner",)  # decisions recorded by hand below
        _carry(served_files)
        message_id = str(outcome.message_id)
        system = {
            "client_id": "folder",
            "system": "Synthetic file-based case system",
            "purpose": "import received messages",
            "scopes": ["read", "events", "send"],
        }
        token = served_files.client(POLITIE).call("POST", "/v1/clients", body=system)["token"]
        adapter = _adapter(served_files, POLITIE, tmp_path / "nl", token=token)
        assert adapter.receive() == 0  # the scanner has not decided: the message waits
        assert not (adapter.root / INCOMING / f"{message_id}.json").exists()
        by_name = {f.manifest.name: f.manifest.id for f in nl.files(message_id)}
        nl.set_scan(by_name["statement.pdf"], "approved", "approved by the scanner")
        nl.set_scan(by_name["photo.png"], "quarantined", "marker found: synthetic signature")
        assert adapter.receive() == 1
        document = json.loads((adapter.root / INCOMING / f"{message_id}.json").read_text())
        files = {f["name"]: f for f in document["attachments"]}
        assert files["statement.pdf"]["written"] == f"{message_id}.files/statement.pdf"
        assert files["photo.png"]["withheld"] == "quarantined: marker found: synthetic signature"
        assert "written" not in files["photo.png"]
        written = adapter.root / INCOMING / f"{message_id}.files"
        assert [p.name for p in written.iterdir()] == ["statement.pdf"]
        assert (written / "statement.pdf").read_bytes() == PDF
        assert adapter.receive() == 0
        # A case system's import is a transfer, not a person reading: no `read` evidence.
        received = served_files.world.nodes[POLITIE].store.inbox_message(message_id)
        assert received is not None
        assert received.read_at is None

    def test_idempotency_key_covers_the_files(self) -> None:
        """The same draft with other files is another request; without files the key is the
        draft's bytes alone, as before."""
        data = b'{"x": 1}'
        assert idempotency_key(data) == idempotency_key(data, ())
        one = idempotency_key(data, [("a.pdf", 3, "00" * 32)])
        assert one != idempotency_key(data)
        assert one != idempotency_key(data, [("a.pdf", 3, "11" * 32)])

    def test_received_names_cannot_escape_the_folder(self) -> None:
        """A peer's file name loses any path, reserved or hidden part."""
        assert safe_file_name("../../x.pdf", "id") == "x.pdf"
        assert safe_file_name("a:b*?.pdf", "id") == "a_b__.pdf"
        assert safe_file_name("...", "id") == "id"
        assert safe_file_name("x.part", "id") == "id"
