"""Multi-host: the hub and each country in their own Linux network namespace, own address.

The test builds the network itself (docs/federation.md, "Multi-host test"): namespaces
``<tag>-hub``, ``<tag>-de``, ``<tag>-ua`` with addresses 192.0.2.1, .2, .3 (documentation
range, on these links only), a bridge in a namespace of its own (``<tag>-lan``: a bridge in
the host namespace would be subject to the host's bridge netfilter rules) joined by one veth
per party. The test's own namespace gets no address on that network (the host may use the
same range): it reaches the node APIs by running a small client inside their namespace. Every
party resolves the hub by name (``/etc/netns/<ns>/hosts``, which ``ip netns exec`` mounts over
``/etc/hosts``) and dials it across the bridge with a hub certificate for that name; country
servers, gateways and nodes are started by ``casebridge federation up --only ...`` run with
``ip netns exec``, so each country's processes live in its namespace. Everything is removed
afterwards, also on failure. Skipped (with the reason) only where namespaces cannot be created;
never under CI=true.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pytest

from broker.federation import processes
from broker.federation.launcher import Federation
from broker.federation.spec import parse_description
from broker.pki import issuing
from broker.pki.store import HUB, SECRETARIAT, PkiStore
from tests.integration.e2e_helpers import DESCRIPTION, POLICIES, bulletin, wait_until

HUB_NAME: Final = "hub.casebridge.test"
ADDRESSES: Final = {"hub": "192.0.2.1", "de": "192.0.2.2", "ua": "192.0.2.3"}
# Run inside a namespace to reach a node's API there (the test's own namespace gets no
# address on the test network: the host may use the same range on its own interfaces).
CALL: Final = (
    "import json, sys\n"
    "from broker.sdk import NodeClient\n"
    "url, token, method, path, body = sys.argv[1:6]\n"
    "doc = NodeClient(url, token).call(method, path, body=json.loads(body) if body else None)\n"
    "print(json.dumps(doc))\n"
)
LKA: Final = "de.lka-berlin"
NPU: Final = "ua.npu"
TIMEOUT: Final = 60.0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@dataclass(frozen=True, kw_only=True, slots=True)
class Api:
    """Where a node's API listens (inside its country's namespace) and its token."""

    party: str
    url: str
    token: str


@dataclass
class Network:
    """The namespaces, links and hosts files of one test; :meth:`remove` undoes all of it."""

    tag: str
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def ns(self, party: str) -> str:
        return f"{self.tag}-{party}"

    def build(self) -> None:
        lan = self.ns("lan")
        _ip("netns", "add", lan)
        self.namespaces.append(lan)
        _ip("-n", lan, "link", "add", "br0", "type", "bridge")
        _ip("-n", lan, "link", "set", "br0", "up")
        for party, address in ADDRESSES.items():
            ns = self.ns(party)
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            port = f"{self.tag}{party}"[:15]
            _ip(
                "link",
                "add",
                port,
                "netns",
                lan,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            _ip("-n", lan, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            hosts = Path("/etc/netns") / ns / "hosts"
            hosts.parent.mkdir(parents=True, exist_ok=True)
            hosts.write_text(f"127.0.0.1 localhost\n{ADDRESSES['hub']} {HUB_NAME}\n")

    def remove(self) -> None:
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)

    def run_in(self, party: str, *argv: str, check: bool = True) -> str | None:
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns(party), *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"{argv} in {party}: {done.stderr[-2000:]}"
        return done.stdout if done.returncode == 0 else None

    def call(
        self, api: Api, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """A node API call made from inside the node's namespace (None if it failed)."""
        out = self.run_in(
            api.party,
            sys.executable,
            "-c",
            CALL,
            api.url,
            api.token,
            method,
            path,
            json.dumps(body) if body is not None else "",
            check=False,
        )
        return None if out is None else dict(json.loads(out))


@contextlib.contextmanager
def network() -> Iterator[Network]:
    """The test network, removed on the way out whatever happened."""
    net = Network(tag=f"cb{os.getpid() % 100000}")
    try:
        net.build()
    except (subprocess.CalledProcessError, OSError, FileNotFoundError) as exc:
        net.remove()
        detail = str(exc)
        if isinstance(exc, subprocess.CalledProcessError):
            detail = exc.stderr.decode(errors="replace")
        if _ci():
            pytest.fail(f"network namespaces must work in CI: {detail}")
        pytest.skip(f"cannot create network namespaces here (needs root and iproute2): {detail}")
    try:
        yield net
    finally:
        net.remove()


def _prepare(base: Path) -> tuple[Federation, dict[str, Api]]:
    """A DE + UA federation whose hub is ``hub.casebridge.test``, with the LKA and NPU nodes."""
    fed = Federation.init(parse_description(dict(DESCRIPTION)), base, now=datetime.now(UTC))
    store = PkiStore(fed.settings.pki_dir, passphrase=None)
    secretariat = store.read_certified(SECRETARIAT)
    hub_tls = issuing.issue_hub_tls(secretariat, host_names=(HUB_NAME,), now=datetime.now(UTC))
    store.write_certified(HUB, hub_tls, [secretariat.cert])
    settings = json.loads((base / "federation.json").read_text())
    settings["hub"]["host"] = HUB_NAME
    (base / "federation.json").write_text(json.dumps(settings))
    fed = Federation.open(base)
    endpoints = processes.prepare(fed, policy_dir=POLICIES)
    wanted = {LKA, NPU}
    clients = {
        e.agency_id: Api(party=e.agency_id.split(".", 1)[0], url=e.url, token=e.token)
        for e in endpoints
        if e.agency_id in wanted
    }
    fed.set_processes(
        [
            p
            for p in fed.settings.processes
            if p.name.startswith("gateway-") or p.name.removeprefix("node-") in wanted
        ]
    )
    return fed, clients


def _log(fed: Federation, name: str) -> str:
    path = fed.log_file(name)
    return path.read_text(errors="replace") if path.exists() else ""


def _inbox(fed: Federation, agency: str) -> list[str]:
    path = fed.base / processes.STORE_DIR / f"{agency}.sqlite"
    if not path.exists():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [str(r[0]) for r in con.execute("SELECT id FROM inbox")]
    finally:
        con.close()


class TestMultiHost:
    """Each party on its own address in its own namespace; messages and evidence flow."""

    def test_countries_and_hub_in_their_own_namespaces(
        self, nats_binary: Path, tmp_path: Path
    ) -> None:
        """LKA (DE ns) -> NPU (UA ns) through the hub (hub ns): delivered, evidence back."""
        del nats_binary
        with network() as net:
            fed, clients = _prepare(tmp_path / "fed")
            try:
                cli = [sys.executable, "-m", "broker.cli", "federation", "up", str(fed.base)]
                net.run_in("hub", *cli, "--only", "hub")
                net.run_in("de", *cli, "--only", "DE")
                net.run_in("ua", *cli, "--only", "UA")
                for agency, api in clients.items():
                    # The log first (no process spawned per poll), then the API once.
                    wait_until(
                        lambda a=agency: "node_started" in _log(fed, f"node-{a}"),  # type: ignore[misc]
                        TIMEOUT,
                        what=f"node {agency} started",
                    )
                    wait_until(lambda a=api: net.call(a, "GET", "/readyz"), TIMEOUT, what="ready")  # type: ignore[misc]
                sent = net.call(clients[LKA], "POST", "/v1/messages", bulletin([NPU]))
                assert sent is not None
                message_id = str(sent["message_id"])
                wait_until(lambda: message_id in _inbox(fed, NPU), TIMEOUT, what="NPU inbox")

                def trail() -> set[tuple[str, str]]:
                    time.sleep(0.5)  # each look is a process started in the namespace
                    found = net.call(clients[LKA], "GET", f"/v1/messages/{message_id}/evidence")
                    entries = found["evidence"] if found is not None else []
                    return {(e["kind"], e["actor"]) for e in entries}

                wait_until(
                    lambda: ("delivered", NPU) in trail(), TIMEOUT, what="delivered evidence at LKA"
                )
                assert {
                    ("relay_accepted", "de.gateway"),
                    ("relay_accepted", "ua.gateway"),
                } <= trail()
            finally:
                Federation.open(fed.base).close()
