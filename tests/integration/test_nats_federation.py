"""The federation layout of docs/federation.md against real nats-server processes (mTLS, loopback).

Permissions: agencies are confined to their own subjects by the country server; countries are
confined by the hub. Certificates from another federation are refused at the TLS handshake.
Store-and-forward: messages published while the destination country or the hub is down arrive
exactly once when it comes back. The CLI starts and stops everything without leftovers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import nats
import pytest
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig

from broker.core import wire as s
from broker.federation.launcher import ClientSettings, Federation, _is_zombie, client_ssl_context
from broker.pki.dev import build_dev_federation
from broker.pki.store import PkiStore, agency_stem
from tests.integration.conftest import EXAMPLE, connect, run

pytestmark = pytest.mark.integration

SHORT = 0.5  # seconds: long enough for a refused request to surely time out on loopback


async def _count(fed: Federation, code: str, stream: str, subject: str | None = None) -> int:
    nc = await fed.connect_gateway(code, allow_reconnect=False)
    try:
        info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
        if subject is None:
            return info.state.messages
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


class TestAgencyPermissions:
    """What an agency may and may not do on its national server."""

    def test_own_submit_and_delivery_work(self, federation: Federation) -> None:
        """An agency submits on its own subject and reads its own DELIVER consumer."""

        async def scenario() -> None:
            agency, log = await connect(federation, "de.fbs-berlin")
            gateway = await federation.connect_gateway("DE", allow_reconnect=False)
            try:
                ack = await agency.jetstream().publish(
                    s.submit_subject("de.fbs-berlin"), b"sealed", headers={"Nats-Msg-Id": "own-1"}
                )
                assert (ack.stream, ack.domain) == (s.SUBMIT_STREAM, "de")
                await gateway.jetstream().publish(s.deliver_subject("de.fbs-berlin"), b"for you")
                sub = await agency.jetstream().pull_subscribe_bind(
                    s.node_durable("de.fbs-berlin"), stream=s.DELIVER_STREAM
                )
                msgs = await sub.fetch(1, timeout=5)
                assert [m.data for m in msgs] == [b"for you"]
                await msgs[0].ack_sync()
                # The evidence lane: its own subject and consumer, readable by the agency too.
                await gateway.jetstream().publish(
                    s.deliver_subject("de.fbs-berlin", evidence=True), b"evidence for you"
                )
                lane = await agency.jetstream().pull_subscribe_bind(
                    s.node_durable("de.fbs-berlin", evidence=True), stream=s.DELIVER_STREAM
                )
                msgs = await lane.fetch(1, timeout=5)
                assert [m.data for m in msgs] == [b"evidence for you"]
                await msgs[0].ack_sync()
                assert log.errors == []
            finally:
                await agency.close()
                await gateway.close()

        run(scenario())

    def test_submit_as_other_agency_refused(self, federation: Federation) -> None:
        """Publishing on another agency's submit subject is refused; nothing lands in SUBMIT."""
        other = s.submit_subject("de.sta-berlin")

        async def scenario() -> None:
            agency, log = await connect(federation, "de.lka-berlin")
            try:
                with pytest.raises(NatsTimeout):
                    await agency.jetstream().publish(other, b"forged", timeout=SHORT)
                assert any(other in v for v in log.violations())
            finally:
                await agency.close()
            assert await _count(federation, "DE", s.SUBMIT_STREAM, other) == 0

        run(scenario())

    def test_publish_to_outbox_refused(self, federation: Federation) -> None:
        """An agency cannot write to cb.out.* (only the gateway may); OUT_UA stays untouched."""
        out = s.out_subject("DE", "UA")

        async def scenario() -> None:
            before = await _count(federation, "DE", s.out_stream("UA"))
            agency, log = await connect(federation, "de.lka-berlin")
            try:
                await agency.publish(out, b"bypass the border")
                with pytest.raises(NatsTimeout):
                    await agency.jetstream().publish(out, b"bypass", timeout=SHORT)
                assert any(out in v for v in log.violations())
            finally:
                await agency.close()
            assert await _count(federation, "DE", s.out_stream("UA")) == before

        run(scenario())

    def test_other_agency_delivery_refused(self, federation: Federation) -> None:
        """Reading, creating or subscribing to another agency's delivery is refused."""
        victim = "de.sta-berlin"

        async def scenario() -> None:
            agency, log = await connect(federation, "de.lka-berlin")
            try:
                js = agency.jetstream()
                for evidence in (False, True):
                    sub = await js.pull_subscribe_bind(
                        s.node_durable(victim, evidence=evidence), stream=s.DELIVER_STREAM
                    )
                    with pytest.raises(NatsTimeout):
                        await sub.fetch(1, timeout=SHORT)
                with pytest.raises(NatsTimeout):
                    await js.add_consumer(
                        s.DELIVER_STREAM,
                        ConsumerConfig(
                            durable_name="spy", filter_subject=s.deliver_subject(victim)
                        ),
                        timeout=SHORT,
                    )
                await agency.subscribe(s.deliver_subject(victim))
                await agency.flush()
                await asyncio.sleep(0.1)
                text = " ".join(log.violations())
                # nats-py lower-cases the server's error text
                assert f"msg.next.deliver.{s.node_durable(victim)}" in text
                assert f"msg.next.deliver.{s.node_durable(victim, evidence=True)}" in text
                assert "create.deliver.spy" in text
                assert f'subscription to "{s.deliver_subject(victim)}"' in text
            finally:
                await agency.close()

        run(scenario())

    def test_peer_domain_api_refused(self, federation: Federation) -> None:
        """An agency cannot call another country's JetStream API ($JS.<peer>.API.>)."""

        async def scenario() -> None:
            agency, log = await connect(federation, "de.lka-berlin")
            try:
                for subject in (
                    f"{s.domain_api('UA')}.STREAM.INFO.{s.out_stream('DE')}",
                    f"{s.domain_api('UA')}.CONSUMER.CREATE.{s.out_stream('DE')}",
                ):
                    with pytest.raises(NatsTimeout):
                        await agency.request(subject, b"{}", timeout=SHORT)
                    assert any(subject.lower() in v for v in log.violations())
            finally:
                await agency.close()

        run(scenario())


class TestHubBorder:
    """The hub lets a country reach only its own mailboxes abroad."""

    def test_country_cannot_reach_other_mailbox_or_stream_api(self, federation: Federation) -> None:
        """NL's gateway gets no answer from DE for DE's OUT_UA or DE's stream API."""

        async def scenario() -> None:
            gateway = await federation.connect_gateway("NL", allow_reconnect=False)
            try:
                for subject in (
                    f"{s.domain_api('DE')}.STREAM.INFO.{s.out_stream('UA')}",
                    f"{s.domain_api('DE')}.CONSUMER.CREATE.{s.out_stream('UA')}",
                    f"{s.domain_api('DE')}.STREAM.DELETE.{s.out_stream('NL')}",
                ):
                    with pytest.raises((NatsTimeout, NoRespondersError)):
                        await gateway.request(subject, b"{}", timeout=SHORT)
                own = f"{s.domain_api('DE')}.STREAM.INFO.{s.out_stream('NL')}"
                with pytest.raises((NatsTimeout, NoRespondersError)):
                    await gateway.request(own, b"", timeout=SHORT)
            finally:
                await gateway.close()
            assert await _count(federation, "DE", s.out_stream("NL")) >= 0  # stream still there

        run(scenario())


class TestForeignCertificate:
    """Only the country's own CA vouches for its clients."""

    def test_other_federation_client_cert_refused_at_tls(
        self, federation: Federation, tmp_path: Path
    ) -> None:
        """The same agency DN issued by another federation's CA is refused in the handshake."""
        rogue = build_dev_federation(
            federation.settings.description.to_pki_spec(), now=datetime.now(UTC)
        )
        store = PkiStore(tmp_path, passphrase=None)
        agency = rogue.agency("de.lka-berlin")
        store.write_certified(
            agency_stem(agency.agency_id, "tls"), agency.tls, [rogue.country("DE").ca.cert]
        )
        real = federation.settings.client("de.lka-berlin")
        forged = ClientSettings(
            **{
                **{f: getattr(real, f) for f in ClientSettings.__dataclass_fields__},
                "tls_cert": store.path(f"{agency_stem(agency.agency_id, 'tls')}-chain.pem"),
                "tls_key": store.path(f"{agency_stem(agency.agency_id, 'tls')}.key"),
            }
        )
        assert (
            agency.tls.cert.subject
            == PkiStore(federation.settings.pki_dir)
            .read_cert(agency_stem("de.lka-berlin", "tls"))
            .subject
        )
        log_file = federation.log_file("DE")
        log_before = log_file.stat().st_size

        async def scenario() -> None:
            with pytest.raises((NatsError, OSError, asyncio.TimeoutError)):
                await nats.connect(
                    servers=[forged.nats_url],
                    tls=client_ssl_context(forged),
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    connect_timeout=2,
                )

        run(scenario())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with log_file.open("rb") as handle:
                handle.seek(log_before)
                tail = handle.read().decode(errors="replace")
            if "TLS handshake error" in tail:
                break
            time.sleep(0.05)
        assert "TLS handshake error" in tail
        assert "certificate" in tail


async def _publish_while_away(fed: Federation, ids: list[str]) -> list[bool]:
    """DE's gateway publishes one message per id into OUT_UA; returns the duplicate flags."""
    nc = await fed.connect_gateway("DE", allow_reconnect=False)
    try:
        js = nc.jetstream()
        flags = []
        for msg_id in ids:
            ack = await js.publish(
                s.out_subject("DE", "UA"), msg_id.encode(), headers={"Nats-Msg-Id": msg_id}
            )
            flags.append(bool(ack.duplicate))
        return flags
    finally:
        await nc.close()


async def _drain_inbox(fed: Federation, expected: int, timeout: float = 45.0) -> list[str]:
    """Everything UA's gateway receives from DE through INBOX (durable inbox-de), acked."""
    nc = await fed.connect_gateway("UA", allow_reconnect=False)
    got: list[str] = []
    try:
        sub = await nc.jetstream().pull_subscribe_bind(
            s.gateway_inbox_durable("DE"), stream=s.INBOX_STREAM
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(10, timeout=0.5)
            except TimeoutError:  # nats-py raises its own or asyncio's, both subclass this
                if len(got) >= expected:
                    break  # nothing more within the fetch timeout: no late duplicate either
                continue
            for msg in msgs:
                got.append((msg.headers or {}).get("Nats-Msg-Id", ""))
                await msg.ack_sync()
        return got
    finally:
        await nc.close()


class TestStoreAndForward:
    """Messages wait in the sender's outbox and arrive exactly once."""

    # one duplicate (m-2)
    IDS: ClassVar[tuple[str, ...]] = ("m-1", "m-2", "m-3", "m-2", "m-4", "m-5")

    def _check(self, fed: Federation) -> None:
        flags = run(_publish_while_away(fed, list(self.IDS)))
        assert flags == [False, False, False, True, False, False]
        assert run(_count(fed, "DE", s.out_stream("UA"))) == 5

    def test_destination_down(self, small_federation: Federation) -> None:
        """UA down for the whole send; UA back: 5 of 5 (not 6) messages, each once."""
        small_federation.stop_country("UA")
        self._check(small_federation)
        small_federation.start_country("UA")
        got = run(_drain_inbox(small_federation, 5))
        assert sorted(got) == ["m-1", "m-2", "m-3", "m-4", "m-5"]

    def test_hub_down(self, small_federation: Federation) -> None:
        """Hub down for the whole send; hub back: 5 of 5 messages, each once."""
        small_federation.stop_hub()
        self._check(small_federation)
        small_federation.start_hub()
        small_federation.wait_leaf("DE")
        small_federation.wait_leaf("UA")
        # nats-server re-creates a stalled source only after ~40 s (measured, 2.15.1).
        got = run(_drain_inbox(small_federation, 5, timeout=75))
        assert sorted(got) == ["m-1", "m-2", "m-3", "m-4", "m-5"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli.federation", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _alive(pid: int) -> bool:
    """Running, i.e. existing and not a zombie (the container's init may reap slowly)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not _is_zombie(pid)


class TestCli:
    """``casebridge federation init/up/status/down`` from the command line."""

    def test_up_down_restart(self, nats_binary: Path, tmp_path: Path) -> None:
        """up starts every server, state survives down/up, down leaves no process or pid file."""
        del nats_binary
        base = tmp_path / "fed"
        init = _cli("init", str(EXAMPLE), str(base))
        assert init.returncode == 0, init.stderr
        # Servers only: running gateways would consume the INBOX this test drains itself.
        Federation.open(base).set_processes([])
        try:
            up = _cli("up", str(base))
            assert up.returncode == 0, up.stderr
            fed = Federation.open(base)
            assert all(row.alive for row in fed.status())
            run(_publish_while_away(fed, ["kept-1"]))
            pids = [row.pid for row in fed.status() if row.pid is not None]
            assert len(pids) == 4

            down = _cli("down", str(base))
            assert down.returncode == 0, down.stderr
            assert not any(_alive(pid) for pid in pids)
            assert list((base / "run").glob("*.pid")) == []

            assert _cli("up", str(base)).returncode == 0
            assert run(_count(fed, "DE", s.out_stream("UA"))) == 1
            got = run(_drain_inbox(fed, 1, timeout=20))
            assert got == ["kept-1"]
            status = _cli("status", str(base))
            assert status.returncode == 0
            assert status.stdout.count(" yes ") == 4
        finally:
            _cli("down", str(base))
        assert list((base / "run").glob("*.pid")) == []
