"""The chunk streams' configurations and their idempotent setup (no server: a recording double)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from nats.js.api import ConsumerConfig, DeliverPolicy, RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError

from broker.core import attachment_wire as aw
from broker.federation.attachment_streams import (
    attachment_stream_configs,
    ensure_attachment_streams,
)


class _JetStream:
    """Streams by name; records creations and updates; every consumer exists but those of
    earlier versions."""

    def __init__(self, existing: dict[str, StreamConfig]) -> None:
        self.streams = dict(existing)
        self.added: list[StreamConfig] = []
        self.updated: list[StreamConfig] = []

    async def stream_info(self, name: str) -> Any:
        if name not in self.streams:
            raise NotFoundError
        return SimpleNamespace(config=self.streams[name])

    async def add_stream(self, config: StreamConfig) -> None:
        self.added.append(config)
        self.streams[config.name or ""] = config

    async def update_stream(self, config: StreamConfig) -> None:
        self.updated.append(config)

    async def consumer_info(self, stream: str, durable: str) -> None:
        if durable in (aw.LEGACY_EGRESS_DURABLE, aw.LEGACY_INGRESS_DURABLE):
            raise NotFoundError

    async def delete_consumer(self, stream: str, durable: str) -> None:
        raise NotFoundError


class TestChunkStreams:
    def test_only_the_outbox_keeps_what_it_carries(self) -> None:
        """Submissions, the inbox and deliveries are work queues (a chunk is gone once
        relayed, so is its cached block); the outbox keeps limits retention (read by the
        peer's sourcing consumer, which does not acknowledge)."""
        retention = {c.name: c.retention for c in attachment_stream_configs("DE", ["NL"])}
        assert retention == {
            aw.ATT_SUBMIT_STREAM: RetentionPolicy.WORK_QUEUE,
            aw.att_out_stream("NL"): RetentionPolicy.LIMITS,
            aw.ATT_INBOX_STREAM: RetentionPolicy.WORK_QUEUE,
            aw.ATT_DELIVER_STREAM: RetentionPolicy.WORK_QUEUE,
        }

    def test_an_inbox_made_with_limits_retention_keeps_it(self) -> None:
        """Setting up over an ATT_INBOX created before it became a work queue updates it with
        its own retention (which cannot change in place) instead of failing or recreating it."""
        old = next(c for c in attachment_stream_configs("DE", ["NL"]) if c.name == "ATT_INBOX")
        old.retention = RetentionPolicy.LIMITS
        js = _JetStream({aw.ATT_INBOX_STREAM: old})
        asyncio.run(
            ensure_attachment_streams(js, code="DE", peers=["NL"], agencies=["de.lka-berlin"])  # type: ignore[arg-type]
        )
        (inbox,) = [c for c in js.updated if c.name == aw.ATT_INBOX_STREAM]
        assert inbox.retention is RetentionPolicy.LIMITS
        assert aw.ATT_INBOX_STREAM not in {c.name for c in js.added}
        fresh = _JetStream({})
        asyncio.run(
            ensure_attachment_streams(fresh, code="DE", peers=["NL"], agencies=["de.lka-berlin"])  # type: ignore[arg-type]
        )
        (made,) = [c for c in fresh.added if c.name == aw.ATT_INBOX_STREAM]
        assert made.retention is RetentionPolicy.WORK_QUEUE


class _WithLegacy(_JetStream):
    """Streams as given, and the single unfiltered chunk consumers of earlier versions."""

    def __init__(self, existing: dict[str, StreamConfig], ack_floor: int) -> None:
        super().__init__(existing)
        self.legacy = {
            (aw.ATT_SUBMIT_STREAM, aw.LEGACY_EGRESS_DURABLE),
            (aw.ATT_INBOX_STREAM, aw.LEGACY_INGRESS_DURABLE),
        }
        self.ack_floor = ack_floor
        self.consumers: dict[str, ConsumerConfig] = {}
        self.deleted: list[tuple[str, str]] = []

    async def consumer_info(self, stream: str, durable: str) -> Any:
        if (stream, durable) in self.legacy:
            return SimpleNamespace(ack_floor=SimpleNamespace(stream_seq=self.ack_floor))
        if durable in self.consumers:
            return SimpleNamespace(config=self.consumers[durable])
        raise NotFoundError

    async def delete_consumer(self, stream: str, durable: str) -> None:
        if (stream, durable) not in self.legacy:
            raise NotFoundError
        self.legacy.discard((stream, durable))
        self.deleted.append((stream, durable))

    async def add_consumer(self, stream: str, config: ConsumerConfig) -> None:
        # A work queue refuses overlapping consumers: the legacy one must be gone first.
        assert not any(s == stream for s, _ in self.legacy), f"{stream}: overlapping consumers"
        self.consumers[config.durable_name or ""] = config


def _set_up(retention: RetentionPolicy) -> _WithLegacy:
    configs = {c.name or "": c for c in attachment_stream_configs("DE", ["NL", "UA"])}
    configs[aw.ATT_INBOX_STREAM].retention = retention
    js = _WithLegacy(configs, ack_floor=41)
    asyncio.run(
        ensure_attachment_streams(
            js,  # type: ignore[arg-type]
            code="DE",
            peers=["NL", "UA"],
            agencies=["de.lka-berlin", "de.sta-berlin"],
        )
    )
    return js


class TestLegacyConsumers:
    def test_replaced_by_one_consumer_per_agency_and_per_peer(self) -> None:
        js = _set_up(RetentionPolicy.WORK_QUEUE)
        assert sorted(js.deleted) == sorted(
            [
                (aw.ATT_SUBMIT_STREAM, aw.LEGACY_EGRESS_DURABLE),
                (aw.ATT_INBOX_STREAM, aw.LEGACY_INGRESS_DURABLE),
            ]
        )
        filters = {
            name: c.filter_subject for name, c in js.consumers.items() if name.startswith("att-")
        }
        assert filters == {
            "att-egress-de_lka-berlin": "cb.att.submit.de.lka-berlin",
            "att-egress-de_sta-berlin": "cb.att.submit.de.sta-berlin",
            "att-ingress-nl": "cb.att.out.nl.de",
            "att-ingress-ua": "cb.att.out.ua.de",
            "att-de_lka-berlin": "cb.att.deliver.de.lka-berlin",
            "att-de_sta-berlin": "cb.att.deliver.de.sta-berlin",
        }

    def test_a_work_queue_inbox_delivers_all_that_is_left(self) -> None:
        """Everything still in a work-queue inbox is unrelayed (JetStream also refuses any
        other start on a work queue)."""
        js = _set_up(RetentionPolicy.WORK_QUEUE)
        for peer in ("nl", "ua"):
            config = js.consumers[f"att-ingress-{peer}"]
            assert config.deliver_policy is DeliverPolicy.ALL
            assert config.opt_start_seq is None

    def test_a_limits_inbox_starts_after_the_old_ack_floor(self) -> None:
        """A limits inbox keeps what was relayed: starting from its first chunk would relay
        all of it again."""
        js = _set_up(RetentionPolicy.LIMITS)
        for peer in ("nl", "ua"):
            config = js.consumers[f"att-ingress-{peer}"]
            assert config.deliver_policy is DeliverPolicy.BY_START_SEQUENCE
            assert config.opt_start_seq == 42
