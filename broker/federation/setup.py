"""Set up one country's streams and consumers from a gateway's settings (a chart's init step).

What it is for
    ``casebridge federation streams --settings FILE [--replicas 3]`` runs this in the gateway
    pods of ``helm/casebridge-country`` before the gateway starts: it reads the gateway's own
    settings format (:mod:`broker.gateway.settings`: no key-agreement key, no API token),
    verifies the gateway's directory against the pinned root, takes the country's agencies and
    peer countries from it, connects to the country's NATS with the gateway's certificate (the
    identity with the whole account) and calls
    :func:`broker.federation.streams.ensure_country_streams` and
    :func:`broker.federation.distribution.ensure_published_stream` (the ``PUBLISHED`` stream
    that sources the hub's directory and the peers' policies; both idempotent), with
    ``replicas`` copies of every stream (3 on a clustered country: R3), retrying while the
    servers are still starting (a cluster elects its JetStream leader first). The same calls,
    with the same replicas, as ``casebridge federation up`` (``Federation.ensure_streams``).

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
from broker.federation.distribution import ensure_published_stream
from broker.federation.streams import CLUSTER_REPLICAS, CountryStreams, ensure_country_streams
from broker.gateway.settings import GatewaySettings
from broker.nats import connect, tls_context
from broker.pki.keyfiles import read_bytes, read_certificate

RETRY_SECONDS: Final = 2.0
log = structlog.get_logger("casebridge.federation.setup")


def country_streams(
    settings: GatewaySettings, *, now: datetime, replicas: int = 1
) -> CountryStreams:
    """What to set up, from the verified directory: the country, its peers, its agencies, and
    how many copies of each stream (1, or 3 on a clustered country)."""
    if replicas not in CLUSTER_REPLICAS:
        raise ConfigError(f"streams are kept in 1 or 3 copies, not {replicas}")
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
        replicas=replicas,
    )


async def setup_from_settings(
    settings: GatewaySettings, *, now: datetime, timeout: float, replicas: int = 1
) -> None:
    """Create or update the streams of the gateway's country (its ``PUBLISHED`` stream too);
    retry until ``timeout`` seconds."""
    country = country_streams(settings, now=now, replicas=replicas)
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
                js = nc.jetstream()
                await ensure_country_streams(js, country)
                await ensure_published_stream(
                    js, country.code, country.peers, replicas=country.replicas
                )
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
            replicas=country.replicas,
        )
        return
