"""Who may write published documents, checked against real servers (docs/federation.md,
"Directory and policy distribution"): agencies read but never publish; a country cannot put a
document into another country's stream or the hub's; the secretariat's directory reaches every
country by sourcing."""

from __future__ import annotations

import asyncio

import pytest
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from broker.core import publication as pub
from broker.federation import distribution
from broker.federation.launcher import Federation
from broker.pki.keyfiles import read_bytes
from tests.integration.conftest import connect, run
from tests.integration.e2e_helpers import wait_until


async def _subjects(fed: Federation, agency: str) -> list[str]:
    nc, _log = await connect(fed, agency)
    try:
        js = nc.jetstream()
        found: list[str] = []
        seq = 1
        while True:
            try:
                raw = await js.get_msg(
                    pub.PUBLISHED_STREAM,
                    seq=seq,
                    subject=pub.PUBLISHED_SUBJECTS,
                    next=True,
                    direct=True,
                )
            except JetStreamError:
                return found
            found.append(str(raw.subject))
            seq = int(raw.seq or seq) + 1
    finally:
        await nc.close()


class TestPublicationPermissions:
    """Documents are written only by their owner and travel only by sourcing."""

    def test_agency_reads_but_cannot_publish(self, small_federation: Federation) -> None:
        """An agency's publish on its own country's policy subject is a permissions violation."""

        async def go() -> list[str]:
            nc, log = await connect(small_federation, "de.lka-berlin")
            try:
                await nc.publish(pub.policy_subject("DE"), b"forged")
                await nc.flush()
                await asyncio.sleep(0.3)
                return log.violations()
            finally:
                await nc.close()

        assert any("cb.pub.policy.de" in v for v in run(go()))
        assert run(_subjects(small_federation, "de.lka-berlin")) == []

    def test_country_cannot_write_anothers_documents(self, small_federation: Federation) -> None:
        """UA's gateway publishing DE's policy subject or the directory subject stores nothing
        anywhere; the secretariat's directory reaches both countries."""

        async def forge() -> None:
            nc, _log = await connect(small_federation, "ua.gateway")
            try:
                js = nc.jetstream()
                for subject in (pub.policy_subject("DE"), pub.DIRECTORY_SUBJECT):
                    with pytest.raises((NatsError, JetStreamError)):
                        await js.publish(subject, b"forged", timeout=2)
            finally:
                await nc.close()

        async def publish_directory() -> None:
            nc = await small_federation.connect_secretariat(allow_reconnect=False)
            try:
                await distribution.publish_document(
                    nc.jetstream(),
                    pub.DIRECTORY_SUBJECT,
                    read_bytes(small_federation.settings.directory),
                )
            finally:
                await nc.close()

        run(forge())
        run(publish_directory())
        for agency in ("de.lka-berlin", "ua.npu"):
            wait_until(
                lambda a=agency: run(_subjects(small_federation, a)) == [pub.DIRECTORY_SUBJECT],  # type: ignore[misc]
                20.0,
                what=f"the directory, and nothing else, in {agency}'s country",
            )
