"""The adapters on a real federation: DE and NL servers, hub, gateways and nodes (issue 15).

The folder adapter runs as its own process (``casebridge adapter folder``) and is killed with
SIGKILL mid-way through a batch: after a restart every draft reaches NL exactly once.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from broker.node.webhooks import new_secret, sign
from tests.integration.e2e_helpers import REPO, Running, bulletin, example, wait_until

EXAMPLE_MAPPING: Final = REPO / "docs" / "adapters" / "mapping.example.yaml"

pytestmark = pytest.mark.integration

LKA: Final = "de.lka-berlin"
POLITIE: Final = "nl.politie"
DE_NL: Final[dict[str, Any]] = {
    "federation": "adapters",
    "countries": [
        {
            "code": "DE",
            "name": "Germany",
            "eu": True,
            "agencies": [{"id": LKA, "kind": "law_enforcement", "name": "LKA Berlin"}],
        },
        {
            "code": "NL",
            "name": "Netherlands",
            "eu": True,
            "agencies": [{"id": POLITIE, "kind": "law_enforcement", "name": "Politie"}],
        },
    ],
}


@pytest.fixture(scope="module")
def de_nl(nats_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """DE + NL with both gateways and the LKA and Politie nodes, for this module's tests."""
    del nats_binary
    running = Running.start(
        tmp_path_factory.mktemp("adapters"),
        nodes=[LKA, POLITIE],
        description=DE_NL,
        # Retries every 0.2-2 s (a receiver back after a pause gets its events within seconds),
        # up to 100 times: a 30 s pause must not park them (12 attempts would, in about 12 s).
        settings={
            POLITIE: {
                "webhooks": {
                    "backoff_base_seconds": 0.2,
                    "backoff_max_seconds": 2,
                    "max_attempts": 100,
                }
            }
        },
    )
    try:
        yield running
    finally:
        running.close()


class Adapter:
    """One `casebridge adapter folder` process over ``root`` for ``agency``'s node."""

    def __init__(self, fed: Running, agency: str, root: Path, *, receive: bool) -> None:
        client = fed.client(agency)
        root.mkdir(parents=True, exist_ok=True)
        token = _system_client(
            fed, agency, f"folder-{root.parent.parent.name[-6:]}", ["send", "read", "events"]
        )
        (root.parent / f"{agency}.token").write_text(token)
        self.settings = root.parent / f"{agency}-folder.yaml"
        self.settings.write_text(
            yaml.safe_dump(
                {
                    "folder": root.name,
                    "node": {"url": client.base_url, "token_file": f"{agency}.token"},
                    "stable_seconds": 0.2,
                    "receive": receive,
                    "receive_seconds": 0.5,
                }
            )
        )
        self.root = root
        self.log = root.parent / f"{agency}-folder.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("CASEBRIDGE_TOKEN", None)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "broker.cli", "adapter", "folder", "--settings",
                 str(self.settings)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in (self.root / "sent").glob("*.result.json")]

    def waiting(self) -> list[str]:
        outgoing = self.root / "outgoing"
        return [p.name for p in outgoing.iterdir()] if outgoing.exists() else []


def _system_client(fed: Running, agency: str, name: str, scopes: list[str]) -> str:
    """A new API client of ``agency``'s node for a case system; its token."""
    client_id = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:60]
    issued = fed.client(agency).call(
        "POST",
        "/v1/clients",
        body={
            "client_id": client_id,
            "system": f"Synthetic case system {name}",
            "purpose": "import received messages into the case file",
            "scopes": scopes,
        },
    )
    return str(issued["token"])


FILES_EVERY: Final = 20  # every 20th draft carries files (b-NNNN.files/)


def _files_for(i: int) -> dict[str, bytes]:
    """The synthetic files of draft ``i``: a PDF of about 300 kB and a small PNG."""
    pdf = b"%PDF-1.4\n" + f"synthetic statement {i}\n".encode() * 12_000
    png = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + i.to_bytes(4, "big") * 2_000
    return {"statement.pdf": pdf, "photo.png": png}


def _drop_bulletins(root: Path, count: int, tag: str) -> None:
    """``count`` distinct bulletins, each written as ``.part`` and renamed (the convention);
    every :data:`FILES_EVERY`-th with files beside it, written first."""
    outgoing = root / "outgoing"
    outgoing.mkdir(parents=True, exist_ok=True)
    body = example("bulletin")
    for i in range(count):
        draft = bulletin([POLITIE], body=body | {"title": f"Adapter bulletin {tag} {i:04d}"})
        if i % FILES_EVERY == 0:
            files = outgoing / f"b-{i:04d}.files"
            files.mkdir()
            for name, data in _files_for(i).items():
                (files / f"{name}.part").write_bytes(data)
                (files / f"{name}.part").rename(files / name)
        part = outgoing / f"b-{i:04d}.json.part"
        part.write_text(json.dumps(draft))
        part.rename(outgoing / f"b-{i:04d}.json")


def _folder_exactly_once(fed: Running, tmp_path: Path, count: int) -> None:
    """Drop ``count`` drafts, SIGKILL the adapter after about a quarter was sent, restart it:
    every draft reaches NL once, with the ids the adapter reported."""
    before_nl = set(fed.inbox_ids(POLITIE))
    before_de = set(fed.outbox_states(LKA))
    de = Adapter(fed, LKA, tmp_path / "de" / "drop", receive=False)
    nl = Adapter(fed, POLITIE, tmp_path / "nl" / "drop", receive=True)
    _drop_bulletins(de.root, count, tmp_path.name)
    started = time.monotonic()
    try:
        nl.start()
        de.start()
        wait_until(
            lambda: len(list((de.root / "sent").glob("*.result.json"))) >= count // 4,
            60,
            what="a quarter of the drafts sent",
        )
        de.kill()
        left = de.waiting()
        print(f"\nkilled with {count - len(left)} of {count} drafts moved to sent/")
        assert left, "the adapter finished before it was killed: nothing was tested"
        de.start()
        wait_until(lambda: not de.waiting(), 120, what="outgoing/ empty after the restart")
        results = de.results()
        sent_ids = [r["result"]["message_id"] for r in results]
        assert len(results) == count
        assert len(set(sent_ids)) == count
        assert list((de.root / "failed").iterdir()) == []
        wait_until(
            lambda: len(set(fed.inbox_ids(POLITIE)) - before_nl) >= count,
            120,
            what=f"{count} messages in NL's inbox",
        )
        arrived = [i for i in fed.inbox_ids(POLITIE) if i not in before_nl]
        assert sorted(arrived) == sorted(sent_ids)  # each once, and only those
        created = set(fed.outbox_states(LKA)) - before_de
        assert created == set(sent_ids)  # the DE node sealed each draft once
        # NL's folder adapter writes each received message to incoming/ once.
        wait_until(
            lambda: len(list((nl.root / "incoming").glob("*.json"))) >= count,
            120,
            what="NL incoming/ files",
        )
        written = sorted(p.stem for p in (nl.root / "incoming").glob("*.json"))
        assert written == sorted(sent_ids)
        # Imported by a system client: a transfer to the case system, no `read` evidence.
        sample = json.loads((nl.root / "incoming" / f"{sent_ids[0]}.json").read_text())
        assert [e["kind"] for e in sample["evidence"]] == ["delivered"]
        # Drafts with files: each file uploaded once, sent with its draft, moved with it, and
        # written verified beside the message in NL.
        with_files = [r for r in results if "attachments" in r]
        assert len(with_files) == len(range(0, count, FILES_EVERY))
        for result in with_files:
            i = int(result["file"].removeprefix("b-").removesuffix(".json"))
            message_id = result["result"]["message_id"]
            assert (de.root / "sent" / result["files_dir"] / "photo.png").exists()
            written_files = nl.root / "incoming" / f"{message_id}.files"
            for name, data in _files_for(i).items():
                assert (written_files / name).read_bytes() == data, (message_id, name)
        bound = fed._query(
            LKA, "SELECT COUNT(*) FROM attachments WHERE direction = 'out' AND message_id != ''"
        )
        assert bound == [str(2 * len(with_files))]  # each file sent once, with its draft
        staged = fed._query(LKA, "SELECT COUNT(*) FROM attachments WHERE direction = 'out'")
        # An upload whose handle the kill kept from being recorded stays staged, never sent.
        print(f"{staged[0]} files uploaded for {bound[0]} sent")
        print(f"{count} drafts through kill -9 in {time.monotonic() - started:.1f} s")
    finally:
        de.stop()
        nl.stop()


def test_folder_adapter_kill_9_exactly_once(de_nl: Running, tmp_path: Path) -> None:
    """200 drafts dropped in DE reach NL exactly once although the adapter is SIGKILLed
    mid-way and restarted; NL's folder adapter writes each to incoming/ once. (About 15 s
    on a loaded 2-core machine: in the normal suite.)"""
    _folder_exactly_once(de_nl, tmp_path, 200)


def test_mapping_dry_run_reports_seeded_rows_with_policy(de_nl: Running, tmp_path: Path) -> None:
    """The example mapping's dry run through DE's node reports rows 4, 6 and 7 (mapping and
    schema) and row 9 (DE's policy, with its rule id) by number, and sends nothing."""
    client = de_nl.client(LKA)
    mapping = yaml.safe_load(EXAMPLE_MAPPING.read_text(encoding="utf-8"))
    (tmp_path / "token").write_text(client.token)
    mapping["node"] = {"url": client.base_url, "token_file": "token"}
    mapping["export"]["path"] = str(EXAMPLE_MAPPING.parent / mapping["export"]["path"])
    settings = tmp_path / "mapping.yaml"
    settings.write_text(yaml.safe_dump(mapping))
    before = set(de_nl.outbox_states(LKA))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", "adapter", "mapping", "--settings", str(settings),
         "--dry-run"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    summary = lines[-1]["summary"]
    assert summary["failed_rows"] == [4, 6, 7, 9]
    assert summary["policy_checked"] is True
    rows = {line["row"]: line for line in lines[:-1]}
    assert [e["stage"] for e in rows[4]["errors"]] == ["mapping"]
    assert [e["stage"] for e in rows[7]["errors"]] == ["schema"]
    (policy,) = rows[9]["errors"]
    assert policy["stage"] == "policy"
    assert policy["rule_id"] == "de.out.special-categories"
    assert rows[2]["decision"]["allowed"] is True
    assert set(de_nl.outbox_states(LKA)) == before


class ReceiverProcess:
    """`casebridge adapter webhook-receiver` for NL, subscribed to NL's node."""

    def __init__(self, fed: Running, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        node = fed.client(POLITIE)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        last = int(node.call("GET", "/v1/events", query={"after": "0", "limit": "1"})["last"])
        subscription = node.call(
            "POST",
            "/v1/webhooks",
            body={
                "system": "Synthetic case system (reference receiver)",
                "url": f"http://127.0.0.1:{self.port}/casebridge/webhooks",
                "event_types": ["message.received"],
                "after": last,
            },
        )
        self.secret = str(subscription["secret"])
        (base / "secret").write_text(self.secret)
        (base / "token").write_text(_system_client(fed, POLITIE, f"receiver-{base.name}", ["read"]))
        self.database = base / "case-system.sqlite"
        self.settings = base / "receiver.yaml"
        self.settings.write_text(
            yaml.safe_dump(
                {
                    "listen": {"port": self.port},
                    "secret_file": "secret",
                    "node": {"url": node.base_url, "token_file": "token"},
                    "database": "case-system.sqlite",
                }
            )
        )
        self.log = base / "receiver.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "broker.cli", "adapter", "webhook-receiver",
                 "--settings", str(self.settings)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        wait_until(self._up, 30, what="the receiver listening")

    def _up(self) -> bool:
        try:
            return self.post(b"", {})[0] == 401
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("POST", "/casebridge/webhooks", body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def imported(self) -> list[str]:
        if not self.database.exists():
            return []
        con = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)
        try:
            return [str(r[0]) for r in con.execute("SELECT message_id FROM messages")]
        finally:
            con.close()

    def events(self) -> list[str]:
        con = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)
        try:
            return [str(r[0]) for r in con.execute("SELECT webhook_id FROM events")]
        finally:
            con.close()


def _send_bulletins(fed: Running, count: int, tag: str) -> list[str]:
    body = example("bulletin")
    return [
        str(
            fed.client(LKA).call(
                "POST",
                "/v1/messages",
                body=bulletin([POLITIE], body=body | {"title": f"Webhook bulletin {tag} {i}"}),
            )["message_id"]
        )
        for i in range(count)
    ]


def _receiver_through_a_pause(fed: Running, tmp_path: Path, pause: float) -> None:
    receiver = ReceiverProcess(fed, tmp_path / "receiver")
    try:
        receiver.start()
        first = _send_bulletins(fed, 10, "before")
        wait_until(
            lambda: set(first) <= set(receiver.imported()), 60, what="the first ten imported"
        )
        receiver.stop()
        second = _send_bulletins(fed, 10, "during")
        wait_until(
            lambda: set(second) <= set(fed.inbox_ids(POLITIE)), 60, what="NL received the rest"
        )
        time.sleep(pause)  # the receiver stays down while the node retries
        back = time.monotonic()
        receiver.start()
        wait_until(lambda: set(second) <= set(receiver.imported()), 60, what="the rest imported")
        print(f"\nafter a {pause:.0f} s stop, caught up in {time.monotonic() - back:.1f} s")
        imported = receiver.imported()
        assert sorted(imported) == sorted(first + second)  # each once (and nothing else)
        assert len(receiver.events()) == len(set(receiver.events())) == 20

        # A forged request (another secret), a replay outside the window and a redelivery of
        # a stored event, against the running receiver.
        event = fed.client(POLITIE).call(
            "GET", "/v1/events", query={"after": "0", "limit": "1000", "types": "message.received"}
        )["events"]
        mine = next(e for e in event if e["message_id"] == first[0])
        body = json.dumps(
            {"type": mine["type"], "timestamp": mine["at"], "data": mine},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        webhook_id = next(w for w in receiver.events() if w.endswith(f"_{mine['seq']}"))
        now = datetime.now(UTC)
        forged = sign(new_secret(), msg_id=webhook_id, timestamp=now, body=body)
        assert receiver.post(body, forged)[0] == 401
        replayed = sign(
            receiver.secret, msg_id=webhook_id, timestamp=now - timedelta(minutes=10), body=body
        )
        assert receiver.post(body, replayed)[0] == 401
        again = sign(receiver.secret, msg_id=webhook_id, timestamp=now, body=body)
        status, answer = receiver.post(body, again)
        assert status == 200
        assert json.loads(answer)["duplicate"] is True
        assert sorted(receiver.imported()) == sorted(first + second)
        refused = [
            line for line in receiver.log.read_text().splitlines() if "webhook_refused" in line
        ]
        assert len(refused) >= 2
    finally:
        receiver.stop()


def test_reference_receiver_through_a_pause(de_nl: Running, tmp_path: Path) -> None:
    """NL's reference receiver, stopped for 5 s while messages arrive, imports every
    message.received once after it is back; it refuses a forged and a replayed webhook and
    answers a redelivery as a duplicate without storing it again."""
    _receiver_through_a_pause(de_nl, tmp_path, 5.0)


@pytest.mark.slow
def test_reference_receiver_through_a_30_s_pause(de_nl: Running, tmp_path: Path) -> None:
    """The same with the receiver stopped for 30 s (the acceptance figure)."""
    _receiver_through_a_pause(de_nl, tmp_path, 30.0)
