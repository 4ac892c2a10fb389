"""Set up one country's streams and consumers from a gateway's settings (a chart's init step).

What it is for
    ``casebridge federation streams --settings FILE`` runs this in the gateway pods of
    ``helm/casebridge-country`` before the gateway starts: it verifies the gateway's directory
    against the pinned root, takes the country's agencies and peer countries from it, connects
    to the country's NATS with the gateway's certificate (the identity with the whole account)
    and calls :func:`broker.federation.streams.ensure_country_streams` (idempotent), retrying
    while the servers are still starting (a cluster elects its JetStream leader first).

What it must never do
    Delete or shrink anything the setup does not own, or take agencies from anywhere but a
    verified directory.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Final

import structlog
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from broker.core import wire as subjects
from broker.core.directory import Directory
from broker.core.header import agency_country
from broker.errors import CasebridgeError, ConfigError
from broker.federation.streams import CountryStreams, ensure_country_streams
from broker.nats import connect, tls_context
from broker.node.settings import Settings
from broker.pki.keyfiles import read_bytes, read_certificate

RETRY_SECONDS: Final = 2.0
log = structlog.get_logger("casebridge.federation.setup")


def country_streams(settings: Settings, *, now: datetime) -> CountryStreams:
    """What to set up, from the verified directory: the country, its peers, its agencies."""
    directory = Directory.load(
        read_bytes(settings.directory_file),
        root_cert=read_certificate(settings.root_cert),
        now=now,
    )
    code = agency_country(settings.agency)
    if directory.agency_kind(settings.agency) != "gateway":
        raise ConfigError(f"{settings.agency} is not a border gateway in the directory")
    return CountryStreams(
        code=code,
        peers=[c.code for c in directory.countries() if c.code != code],
        agencies=[a.agency_id for a in directory.agencies(code) if a.kind != "gateway"],
    )


async def setup_from_settings(settings: Settings, *, now: datetime, timeout: float) -> None:
    """Create or update the streams of the gateway's country; retry until ``timeout`` seconds."""
    country = country_streams(settings, now=now)
    tls = tls_context(
        ca_file=settings.nats.ca_file,
        cert_file=settings.nats.cert_file,
        key_file=settings.nats.key_file,
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            nc = await connect(
                settings.nats.url,
                tls=tls,
                inbox_prefix=subjects.inbox_prefix(settings.agency),
                name=f"setup {settings.agency}",
            )
            try:
                await ensure_country_streams(nc.jetstream(), country)
            finally:
                await nc.close()
        except (CasebridgeError, NatsError, JetStreamError, OSError, TimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise ConfigError(f"stream setup on {settings.nats.url} failed: {exc!r}") from exc
            log.warning("stream_setup_retry", error=repr(exc))
            await asyncio.sleep(RETRY_SECONDS)
            continue
        log.info(
            "streams_ready",
            country=country.code,
            peers=list(country.peers),
            agencies=len(country.agencies),
        )
        return
