"""The chunk streams' configurations and their idempotent setup (no server: a recording double)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from nats.js.api import RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError

from broker.core import attachment_wire as aw
from broker.federation.attachment_streams import (
    attachment_stream_configs,
    ensure_attachment_streams,
)


class _JetStream:
    """Streams by name; records creations and updates; every consumer exists."""

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
        return None


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
