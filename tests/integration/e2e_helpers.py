"""Helpers for the end-to-end tests: a running federation with gateways and nodes, and probes.

:class:`Running` wraps a :class:`~broker.federation.launcher.Federation` started with its border
gateways and agency nodes (``broker.federation.processes.prepare``), the nodes' HTTP clients,
and the probes the tests assert with: a node's inbox read from its SQLite file (read-only, so
it works while the node runs and after it was killed), the message ids held in a stream, the
lines of a process log. Messages can also be sealed here with an agency's real keys, to play a
sender that bypasses its node (bulk runs, replays, a revoked agency).

Every wait polls with a deadline (:func:`wait_until`); nothing sleeps a fixed time.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml
from nats.js.errors import NotFoundError

from broker.cli.focal import NodeCallError, NodeClient
from broker.core import canonical
from broker.core import wire as s
from broker.core.directory import Directory
from broker.core.envelope import SenderIdentity, seal
from broker.core.header import Header
from broker.core.peek import unverified_header
from broker.core.trust import cert_kid
from broker.federation import processes
from broker.federation.launcher import Federation
from broker.federation.spec import parse_description
from broker.pki.keyfiles import read_bytes, read_certificate, read_private_key
from tests.integration.conftest import run

T = TypeVar("T")

REPO: Final = Path(__file__).resolve().parents[2]
POLICIES: Final = REPO / "docs" / "policies"
EXAMPLES: Final = REPO / "schemas" / "examples"
POLL: Final = 0.05
START_TIMEOUT: Final = 30.0

# DE and UA only (NL would be three more processes on a 2-core runner): police, prosecutor
# and a counselling NGO in Germany, the National Police in Ukraine.
DESCRIPTION: Final[dict[str, Any]] = {
    "federation": "e2e",
    "countries": [
        {
            "code": "DE",
            "name": "Germany",
            "eu": True,
            "agencies": [
                {"id": "de.lka-berlin", "kind": "law_enforcement", "name": "LKA Berlin"},
                {"id": "de.sta-berlin", "kind": "prosecutor", "name": "StA Berlin"},
                {"id": "de.fbs-berlin", "kind": "ngo", "name": "FBS Berlin"},
            ],
        },
        {
            "code": "UA",
            "name": "Ukraine",
            "eu": False,
            "agencies": [{"id": "ua.npu", "kind": "law_enforcement", "name": "National Police"}],
        },
    ],
}


def wait_until(predicate: Callable[[], T], timeout: float, *, what: str) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)


def example(name: str) -> dict[str, Any]:
    """A body from ``schemas/examples``."""
    loaded: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    return loaded


def bulletin(to: Sequence[str], **changes: Any) -> dict[str, Any]:
    """A draft bulletin (no personal data: every border lets it through)."""
    draft: dict[str, Any] = {
        "to": list(to),
        "type": "bulletin",
        "purpose": "prevention",
        "handling": "H1",
        "tlp": "GREEN",
        "legal_basis": "Directive 2011/36/EU, Art. 18",
        "body": example("bulletin"),
    }
    return draft | changes


def request_de_ua() -> dict[str, Any]:
    """The draft request DE police -> UA police of ``docs/policies/drafts`` (victims' data)."""
    raw = yaml.safe_load((POLICIES / "drafts" / "request-de-ua.yaml").read_text(encoding="utf-8"))
    return {
        "to": raw["recipients"],
        "type": raw["type"],
        "purpose": raw["purpose"],
        "handling": raw["handling"],
        "tlp": raw["tlp"],
        "legal_basis": raw["legal_basis"],
        "body": raw["body"],
    }


@dataclass(frozen=True, slots=True)
class Sealed:
    """A message sealed outside any node: its id and wire bytes."""

    message_id: str
    wire: bytes


@dataclass
class Running:
    """A started federation with gateways and (some) nodes; see the module docstring."""

    fed: Federation
    clients: dict[str, NodeClient]
    _directory: Directory | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def start(
        cls,
        base: Path,
        *,
        nodes: Iterable[str],
        no_policy: Iterable[str] = (),
        description: Mapping[str, Any] = DESCRIPTION,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        policy_dir: Path = POLICIES,
    ) -> Running:
        """Init under ``base``, start hub, servers, every gateway and the ``nodes`` given.

        ``no_policy``: nodes whose settings name no country policy (documented: the node
        then only checks honesty and the border gateways decide everything else).
        ``description``: the federation (default: DE + UA, :data:`DESCRIPTION`).
        ``settings``: top-level members merged into a node's settings file, per agency
        (e.g. ``{"audit": {"checkpoint_seconds": 1}}``).
        """
        fed = Federation.init(parse_description(dict(description)), base, now=datetime.now(UTC))
        endpoints = processes.prepare(fed, policy_dir=policy_dir)
        wanted = set(nodes)
        dropped = set(no_policy)
        changes: dict[str, dict[str, Any]] = {a: {} for a in dropped}
        for agency, members in (settings or {}).items():
            changes.setdefault(agency, {}).update(members)
        for agency, members in changes.items():
            path = base / processes.SETTINGS_DIR / f"{agency}.json"
            doc = json.loads(path.read_text(encoding="utf-8"))
            if agency in dropped:
                del doc["policy"]
            doc.update(members)
            path.write_text(json.dumps(doc), encoding="utf-8")
        fed.set_processes(
            [
                p
                for p in fed.settings.processes
                if p.name.startswith("gateway-") or p.name.removeprefix("node-") in wanted
            ]
        )
        clients = {
            e.agency_id: NodeClient(e.url, e.token) for e in endpoints if e.agency_id in wanted
        }
        running = cls(fed=fed, clients=clients)
        try:
            fed.up()
            running.wait_started()
        except BaseException:
            running.close()
            raise
        return running

    def close(self) -> None:
        """Kill every process (state is thrown away with the directory; no clean stop needed)."""
        for client in self.clients.values():
            client.close()
        for row in self.fed.status():
            if row.alive:
                self.fed.stop(row.name, kill=True)
        self.fed.close()

    def wait_started(self, names: Iterable[str] | None = None) -> None:
        """Wait until the given processes (default: all) run and are ready."""
        for spec in self.fed.settings.processes:
            if names is None or spec.name in names:
                self._wait_process(spec.name, log_offset=0)

    def _wait_process(self, name: str, *, log_offset: int) -> None:
        if name.startswith("node-"):
            client = self.clients[name.removeprefix("node-")]
            wait_until(lambda: _ready(client), START_TIMEOUT, what=f"{name} ready")
        elif name.startswith("gateway-"):
            wait_until(
                lambda: "gateway_started" in self.log_text(name, offset=log_offset),
                START_TIMEOUT,
                what=f"{name} started",
            )

    def restart(self, name: str, *, country: str) -> None:
        """Start again whatever of ``country`` is not running (after ``stop``/``kill -9``)."""
        log = self.fed.log_file(name)
        offset = log.stat().st_size if log.exists() else 0
        self.fed.up(only=[country])
        self._wait_process(name, log_offset=offset)

    # ---------------------------------------------------------------------- probes

    def client(self, agency: str) -> NodeClient:
        return self.clients[agency]

    def log_text(self, name: str, *, offset: int = 0) -> str:
        path = self.fed.log_file(name)
        if not path.exists():
            return ""
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")

    def log_events(self, name: str, *, offset: int = 0) -> list[dict[str, Any]]:
        """The JSON log events of process ``name`` from byte ``offset`` (other lines skipped)."""
        events = []
        for line in self.log_text(name, offset=offset).splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue  # a line cut by a concurrent write
        return events

    def delivered_log_count(self, agency: str) -> Counter[str]:
        """How often the node logged ``message_delivered`` per message id (all its runs)."""
        counts: Counter[str] = Counter()
        for event in self.log_events(f"node-{agency}"):
            if event.get("event") == "message_delivered":
                counts[str(event.get("message_id"))] += 1
        return counts

    def store_path(self, agency: str) -> Path:
        return self.fed.base / processes.STORE_DIR / f"{agency}.sqlite"

    def inbox_ids(self, agency: str) -> list[str]:
        """Every message id in the agency's inbox (the application's view), read-only."""
        return self._query(agency, "SELECT id FROM inbox")

    def outbox_states(self, agency: str) -> dict[str, str]:
        """State of every non-evidence message in the agency's outbox."""
        rows = self._query(
            agency, "SELECT id || ' ' || state FROM outbox WHERE type NOT LIKE ?", "evidence.%"
        )
        return dict(r.split(" ", 1) for r in rows)

    def evidence_sent_about(self, agency: str, message_id: str) -> list[str]:
        """Ids of the evidence messages the agency's node sealed about ``message_id``."""
        return self._query(agency, "SELECT id FROM outbox WHERE in_reply_to = ?", message_id)

    def _query(self, agency: str, sql: str, *args: str) -> list[str]:
        path = self.store_path(agency)
        if not path.exists():
            return []
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return [str(row[0]) for row in con.execute(sql, args)]
        finally:
            con.close()

    def evidence(self, agency: str, message_id: str) -> list[dict[str, Any]]:
        """The evidence trail of ``message_id`` at ``agency``'s node (its API)."""
        trail: list[dict[str, Any]] = self.client(agency).call(
            "GET", f"/v1/messages/{message_id}/evidence"
        )["evidence"]
        return trail

    def rejections(self, agency: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.client(agency).call(
            "GET", "/v1/rejections", query={"limit": "1000"}
        )["rejections"]
        return found

    def stream_messages(self, country: str, stream: str) -> list[tuple[str, bytes]]:
        """(message id from the unverified header, data) of every message kept in a stream."""

        async def read() -> list[tuple[str, bytes]]:
            nc = await self.fed.connect_gateway(country, allow_reconnect=False)
            try:
                js = nc.jetstream()
                state = (await js.stream_info(stream)).state
                out: list[tuple[str, bytes]] = []
                if not state.messages:
                    return out
                for seq in range(state.first_seq, state.last_seq + 1):
                    try:
                        raw = await js.get_msg(stream, seq)
                    except NotFoundError:
                        continue  # acked from a work queue
                    data = raw.data or b""
                    header = unverified_header(data)
                    out.append((header.id if header is not None else "", data))
                return out
            finally:
                await nc.close()

        return run(read())

    def stream_ids(self, country: str, stream: str) -> list[str]:
        return [msg_id for msg_id, _ in self.stream_messages(country, stream)]

    def wire_of(self, country: str, stream: str, message_id: str) -> bytes:
        """The exact wire bytes of ``message_id`` as kept in a stream."""
        for msg_id, data in self.stream_messages(country, stream):
            if msg_id == message_id:
                return data
        raise AssertionError(f"{message_id} not in {country} {stream}")

    def publish(self, as_agency: str, subject: str, items: Sequence[tuple[str, bytes]]) -> None:
        """Publish (Nats-Msg-Id, data) pairs on ``subject`` as ``as_agency``, acked by JetStream."""

        async def go() -> None:
            nc = await self.fed.connect_as(as_agency, allow_reconnect=False)
            try:
                js = nc.jetstream()
                for msg_id, data in items:
                    await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=5)
            finally:
                await nc.close()

        run(go())

    # ---------------------------------------------------------------------- sealing

    def directory(self) -> Directory:
        if self._directory is None:
            self._directory = Directory.load(
                read_bytes(self.fed.settings.directory),
                root_cert=read_certificate(self.fed.settings.root_cert),
                now=datetime.now(UTC),
            )
        return self._directory

    def seal_as(
        self,
        sender: str,
        recipients: Sequence[str],
        body: dict[str, Any],
        *,
        directory: Directory | None = None,
        **header: Any,
    ) -> Sealed:
        """Seal a bulletin (or ``type=...``) as ``sender`` with its real keys, bypassing nodes."""
        keys = self.fed.settings.client(sender)
        identity = SenderIdentity(
            agency_id=sender,
            signing_kid=cert_kid(sender, read_certificate(keys.signing_cert)),
            signing_key=read_private_key(keys.signing_key),
        )
        now = datetime.now(UTC)
        iat = int(now.timestamp())
        fields: dict[str, Any] = {
            "fed": self.fed.settings.federation_id,
            "id": str(uuid.uuid4()),
            "type": "bulletin",
            "type_version": 1,
            "conversation": str(uuid.uuid4()),
            "sender": sender,
            "recipients": tuple(sorted(recipients)),
            "handling": "H1",
            "tlp": "GREEN",
            "purpose": "prevention",
            "legal_basis": "Directive 2011/36/EU, Art. 18",
            "categories": (),
            "iat": iat,
            "exp": iat + int(timedelta(days=7).total_seconds()),
        }
        built = Header(**(fields | header)).validate()
        wire = seal(
            header=built,
            body=body,
            sender=identity,
            resolver=directory or self.directory(),
            now=now,
            salt=secrets.token_bytes(16),
        )
        return Sealed(message_id=built.id, wire=wire)


def _ready(client: NodeClient) -> bool:
    try:
        client.call("GET", "/readyz")
    except NodeCallError:
        return False
    return True


def tamper(wire: bytes) -> bytes:
    """The same message with one character of its JWE changed (still well-formed JSON)."""
    doc = json.loads(wire)
    jwe: str = doc["jwe"]
    middle = len(jwe) // 2
    while jwe[middle] == ".":
        middle += 1
    doc["jwe"] = jwe[:middle] + ("A" if jwe[middle] != "A" else "B") + jwe[middle + 1 :]
    return canonical.dumps(doc)


def subject_out(origin: str, peer: str) -> str:
    return s.out_subject(origin, peer)
