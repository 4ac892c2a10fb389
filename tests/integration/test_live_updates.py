"""Directory and policy published over the federation, applied by running gateways and nodes.

One DE + UA federation (real nats-server processes, both gateways, the LKA, FBS and NPU nodes)
goes through the cases of issue 14 in order, without restarting any gateway or node:

1. FBS revoked and a new directory published (``casebridge directory publish``): messages
   signed with FBS's key are refused by the DE border, the UA border and the NPU node;
2. the older directory published again: refused (rollback), the revocation stays;
3. UA publishes a policy denying bulletins (``casebridge policy publish``): the next bulletin
   is refused by the DE node's pre-flight with UA's new rule id (peer policy), and one sealed
   outside any node by the UA border with the same rule id;
4. a UA policy with a bad signature: refused, counted, the previous one stays in force;
5. the UA server down while a newer directory is published: back, its gateway and node catch up;
6. both restarted afterwards: they start on the directory taken from the federation.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from broker.cli.focal import NodeCallError
from broker.core import publication as pub
from broker.core import wire as s
from broker.core.policy import sign_policy
from broker.federation import distribution
from broker.pki.keyfiles import read_bytes
from broker.pki.store import PkiStore, country_stem
from tests.integration.conftest import run
from tests.integration.e2e_helpers import POLICIES, Running, bulletin, example, wait_until

LKA: Final = "de.lka-berlin"
FBS: Final = "de.fbs-berlin"
NPU: Final = "ua.npu"
# "Within seconds": watchers poll every second; the rest is one trip through the federation.
SWAP: Final = 15.0
# A message crossing two borders on a loaded machine, on top of the swap itself.
TRANSIT: Final = 45.0
SERIAL_1: Final = "directory-serial-1.jws"


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _cli_refused(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0, done.stdout
    return done.stderr


def _events(fed: Running, name: str, event: str, offset: int = 0) -> list[dict[str, Any]]:
    return [e for e in fed.log_events(name, offset=offset) if e.get("event") == event]


def _metric(fed: Running, country: str, name: str, labels: str = "") -> float:
    port = fed.fed.settings.gateways[country].http_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{wanted} not exposed")


def _refused_at_gateway(fed: Running, gateway: str, message_id: str) -> dict[str, Any]:
    found = wait_until(
        lambda: [
            e for e in _events(fed, gateway, "message_refused") if e.get("message_id") == message_id
        ],
        SWAP,
        what=f"{gateway} refusing {message_id}",
    )
    return found[0]


def _ua_version() -> int:
    """The version of the example UA policy every country starts with."""
    found = re.search(r"^version: (\d+)$", (POLICIES / "ua.yaml").read_text("utf-8"), re.M)
    assert found is not None
    return int(found.group(1))


# The versions the tests publish: one newer than the example policy, then one newer still.
NEWER: Final = _ua_version() + 1
NEWEST: Final = NEWER + 1


def _ua_policy(version: int, *, deny_bulletins: bool) -> bytes:
    text = (POLICIES / "ua.yaml").read_text(encoding="utf-8")
    text = text.replace(f"\nversion: {_ua_version()}\n", f"\nversion: {version}\n", 1)
    if deny_bulletins:
        marker = "  # ---------------------------------------------------------------- outgoing"
        rule = (
            "  - id: ua.in.no-bulletins\n"
            "    reason: Bulletins are suspended while the national desk is reorganised.\n"
            "    direction: ingress\n"
            "    type: [bulletin]\n"
            "    decision: deny\n\n"
        )
        text = text.replace(marker, rule + marker, 1)
    return text.encode()


def _sign_ua(fed: Running, yaml: bytes) -> bytes:
    ca = PkiStore(fed.fed.settings.pki_dir).read_certified(country_stem("UA", "ca"))
    return sign_policy(yaml, ca_key=ca.key, ca_cert=ca.cert).encode()


def _bad_signature(signed: bytes) -> bytes:
    """The same compact JWS with one character of its signature changed."""
    head, payload, signature = signed.strip().split(b".")
    middle = len(signature) // 2
    flipped = b"A" if signature[middle : middle + 1] != b"A" else b"B"
    return b".".join((head, payload, signature[:middle] + flipped + signature[middle + 1 :]))


@pytest.fixture(scope="module")
def live(nats_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """DE + UA, both gateways, the LKA and NPU nodes, running for the whole module."""
    del nats_binary
    running = Running.start(tmp_path_factory.mktemp("live") / "fed", nodes=[LKA, NPU])
    # Kept for the rollback case: `pki directory` overwrites the file with each new serial.
    (running.fed.base / SERIAL_1).write_bytes(read_bytes(running.fed.settings.directory))
    try:
        yield running
    finally:
        running.close()


class TestLiveUpdates:
    """Published directories and policies take effect in running processes, or are refused."""

    def test_revocation_published_refused_everywhere(self, live: Running) -> None:
        """FBS revoked in a published directory: both borders and NPU refuse its messages."""
        old_directory = live.directory()
        forged = [
            live.seal_as(FBS, [NPU], example("bulletin"), directory=old_directory) for _ in range(3)
        ]
        pki = str(live.fed.settings.pki_dir)
        _cli("pki", "revoke", FBS, "--reason", "key_compromise", "--dir", pki)
        _cli("pki", "directory", "--dir", pki)
        out = _cli(
            "directory",
            "publish",
            str(live.fed.settings.directory),
            "--federation",
            str(live.fed.base),
        )
        assert "serial 2 published" in out
        for process in ("gateway-de", "gateway-ua", f"node-{NPU}"):
            wait_until(
                lambda p=process: [  # type: ignore[misc]
                    e for e in _events(live, p, "directory_reloaded") if e.get("serial") == 2
                ],
                SWAP,
                what=f"{process} on directory serial 2",
            )
        # DE border (egress): straight onto FBS's submit subject.
        live.publish(FBS, s.submit_subject(FBS), [(forged[0].message_id, forged[0].wire)])
        assert _refused_at_gateway(live, "gateway-de", forged[0].message_id)["reason"] == (
            "sender_revoked"
        )
        # UA border (ingress): as if DE's border had let it through.
        live.publish(
            "de.gateway", s.out_subject("DE", "UA"), [(forged[1].message_id, forged[1].wire)]
        )
        assert _refused_at_gateway(live, "gateway-ua", forged[1].message_id)["reason"] == (
            "sender_revoked"
        )
        # The recipient: past both borders, onto NPU's delivery subject.
        live.publish("ua.gateway", s.deliver_subject(NPU), [(forged[2].message_id, forged[2].wire)])
        (refusal,) = wait_until(
            lambda: [
                r for r in live.rejections(NPU) if r["claimed_message_id"] == forged[2].message_id
            ],
            SWAP,
            what="NPU's refusal",
        )
        assert refusal["reason"] == "sender_revoked"
        assert not {f.message_id for f in forged} & set(live.inbox_ids(NPU))

    def test_older_directory_refused(self, live: Running) -> None:
        """The serial-1 directory published after serial 2: refused, counted, FBS stays revoked."""
        offset = live.fed.log_file("gateway-ua").stat().st_size
        before = _metric(
            live, "UA", "casebridge_directory_load_failures_total", 'reason="rollback"'
        )
        # Validly signed by the root: the CLI publishes it; every receiver refuses it.
        out = _cli(
            "directory", "publish", str(live.fed.base / SERIAL_1),
            "--federation", str(live.fed.base),
        )  # fmt: skip
        assert "serial 1 published" in out
        refused = wait_until(
            lambda: _events(live, "gateway-ua", "directory_refused", offset),
            SWAP,
            what="the UA gateway refusing the older directory",
        )
        assert refused[0]["reason"] == "rollback"
        assert (
            _metric(live, "UA", "casebridge_directory_load_failures_total", 'reason="rollback"')
            == before + 1
        )
        assert _metric(live, "UA", "casebridge_directory_serial_loaded") == 2
        forged = live.seal_as(FBS, [NPU], example("bulletin"), directory=live.directory())
        live.publish("de.gateway", s.out_subject("DE", "UA"), [(forged.message_id, forged.wire)])
        assert _refused_at_gateway(live, "gateway-ua", forged.message_id)["reason"] == (
            "sender_revoked"
        )

    def test_policy_denying_a_type(self, live: Running) -> None:
        """UA publishes a policy denying bulletins: the next one is refused with its rule id."""
        signed = live.fed.base / "ua-v5.policy.jws"
        signed.write_bytes(_sign_ua(live, _ua_policy(NEWER, deny_bulletins=True)))
        out = _cli(
            "policy", "publish", str(signed), "--country", "UA", "--federation", str(live.fed.base)
        )
        assert f"version {NEWER} published" in out
        wait_until(
            lambda: [
                e for e in _events(live, "gateway-ua", "policy_loaded") if e["version"] == NEWER
            ],
            SWAP,
            what=f"the UA gateway on policy version {NEWER}",
        )
        wait_until(
            lambda: [
                e
                for e in _events(live, f"node-{LKA}", "peer_policy_loaded")
                if e["country"] == "UA" and e["version"] == NEWER
            ],
            SWAP,
            what=f"the LKA node holding UA's version {NEWER}",
        )
        # Pre-flight at the sending node shows what the destination will do.
        with pytest.raises(NodeCallError, match="policy_denied") as caught:
            live.client(LKA).call("POST", "/v1/messages", body=bulletin([NPU]))
        assert caught.value.rule_id == "ua.in.no-bulletins"
        explained = live.client(LKA).call("POST", "/v1/explain", body=bulletin([NPU]))
        assert (explained["allowed"], explained["rule_id"]) == (False, "ua.in.no-bulletins")
        # The UA border, for a bulletin that skipped pre-flight.
        forged = live.seal_as(LKA, [NPU], example("bulletin"))
        live.publish(LKA, s.submit_subject(LKA), [(forged.message_id, forged.wire)])
        decided = wait_until(
            lambda: [
                e
                for e in _events(live, "gateway-ua", "border_decision")
                if e.get("message_id") == forged.message_id and e.get("verdict") == "deny"
            ],
            TRANSIT,
            what="the UA border's decision",
        )
        assert decided[0]["rule_id"] == "ua.in.no-bulletins"
        assert forged.message_id not in live.inbox_ids(NPU)

    def test_policy_with_bad_signature_keeps_the_old(self, live: Running) -> None:
        """A UA policy with a bad signature is refused; the version denying bulletins stays."""
        before = _metric(live, "UA", "casebridge_policy_load_failures_total", 'reason="signature"')
        offset = live.fed.log_file("gateway-ua").stat().st_size
        foreign = _bad_signature(_sign_ua(live, _ua_policy(NEWEST, deny_bulletins=False)))

        async def publish() -> None:
            nc = await live.fed.connect_gateway("UA", allow_reconnect=False)
            try:
                await distribution.publish_document(
                    nc.jetstream(), pub.policy_subject("UA"), foreign
                )
            finally:
                await nc.close()

        signed = live.fed.base / "ua-v6-bad-signature.policy.jws"
        signed.write_bytes(foreign)
        refusal = _cli_refused(
            "policy", "publish", str(signed), "--country", "UA", "--federation", str(live.fed.base)
        )
        assert "not published" in refusal  # the CLI checks first; a NATS client need not
        run(publish())
        refused = wait_until(
            lambda: _events(live, "gateway-ua", "policy_refused", offset),
            SWAP,
            what="the UA gateway refusing the badly signed policy",
        )
        assert refused[0]["reason"] == "signature"
        assert refused[0]["keeping_version"] == NEWER
        assert (
            _metric(live, "UA", "casebridge_policy_load_failures_total", 'reason="signature"')
            == before + 1
        )
        assert _metric(live, "UA", "casebridge_policy_last_load_ok") == 0
        assert _metric(live, "UA", "casebridge_policy_version_loaded") == NEWER
        with pytest.raises(NodeCallError) as caught:
            live.client(LKA).call("POST", "/v1/messages", body=bulletin([NPU]))
        assert caught.value.rule_id == "ua.in.no-bulletins"

    def test_cut_off_country_catches_up(self, live: Running) -> None:
        """UA's server down while serial 3 is published; back up, its gateway and node apply it."""
        live.fed.stop_country("UA")
        pki = str(live.fed.settings.pki_dir)
        _cli("pki", "directory", "--dir", pki)
        _cli(
            "directory", "publish", str(live.fed.settings.directory),
            "--federation", str(live.fed.base),
        )  # fmt: skip
        wait_until(
            lambda: [e for e in _events(live, "gateway-de", "directory_reloaded")
                     if e.get("serial") == 3],
            SWAP,
            what="DE on serial 3",
        )  # fmt: skip
        live.fed.start_country("UA")
        for process in ("gateway-ua", f"node-{NPU}"):
            wait_until(
                lambda p=process: [  # type: ignore[misc]
                    e for e in _events(live, p, "directory_reloaded") if e.get("serial") == 3
                ],
                60.0,  # the sourcing consumers are re-created after the leaf reconnects
                what=f"{process} catching up to serial 3",
            )

    def test_restart_after_a_hot_swap(self, live: Running) -> None:
        """Gateway and node restarted after taking serial 3 from the federation start on it
        (kept next to their store), not on the older file their settings name."""
        # The file their settings name goes back to serial 1 (as if never copied around):
        # started from it they would refuse to start (serial 3 accepted before).
        live.fed.settings.directory.write_bytes((live.fed.base / SERIAL_1).read_bytes())
        for name in ("gateway-ua", f"node-{NPU}"):
            live.fed.stop(name)
            live.restart(name, country="UA")
        assert _metric(live, "UA", "casebridge_directory_serial_loaded") == 3
