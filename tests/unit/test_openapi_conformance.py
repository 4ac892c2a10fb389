"""The OpenAPI description (docs/openapi.yaml) checked against a running node with schemathesis:
no 5xx, every status documented, every response conforms to its schema. The node has a lookup
settings file, so the hit/no-hit routes (/v1/lookups*) are served and checked too."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from broker.node.api import create_app
from broker.node.lookup_api import add_lookups
from broker.node.service import Node
from broker.pki.dev import DevFederation

from .node_world import ManualClock, World

OPENAPI: Final = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
TOKEN: Final = "o" * 32
# Bounded for `make test`: a few examples per operation (CI may raise it).
EXAMPLES: Final = 5

CHECKS: Final = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,
    ignored_auth,
]

loaded = schemathesis.openapi.from_path(OPENAPI)
# Valid requests (positive mode): the node's answers to them must all conform. (Invalid
# requests are the subject of tests/unit/test_node_edge.py and the fuzz tests.)
loaded.config.generation.update(modes=[GenerationMode.POSITIVE], max_examples=EXAMPLES)
# The stream never ends (a test client would wait for its end forever): covered by the SDK tests.
schema = loaded.exclude(path="/v1/events/stream")


@pytest.fixture(scope="module")
def node_url(
    dev_federation: DevFederation, tmp_path_factory: pytest.TempPathFactory, fixed_now: datetime
) -> Iterator[str]:
    """nl.politie, holding one received message, served on a loopback port, with lookups
    configured (a pairwise key with DE)."""
    tmp = tmp_path_factory.mktemp("oas")
    world = World(fed=dev_federation, tmp=tmp, clock=ManualClock(fixed_now))
    (tmp / "nl-de.key").write_text(base64.urlsafe_b64encode(bytes(range(32))).decode())
    lookup_file = tmp / "lookup.json"
    lookup_file.write_text(
        json.dumps({"partners": {"DE": {"key_id": "de-nl.2026", "secret_file": "nl-de.key"}}})
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    nl = world.node("nl.politie")
    world.node("de.lka-berlin")

    async def serve() -> tuple[web.AppRunner, str]:
        @asynccontextmanager
        async def lifecycle() -> AsyncIterator[Node]:
            yield nl

        app = create_app(lifecycle, token=TOKEN)
        add_lookups(app, lookup_file, store_path=tmp / "nl.politie.sqlite")
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"

    runner, url = asyncio.run_coroutine_threadsafe(serve(), loop).result(timeout=10)
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        world.close()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms(case: Any, node_url: str) -> None:
    """Every operation answers generated requests without a 5xx, with a documented status
    and a body that conforms to the description."""
    case.call_and_validate(
        base_url=node_url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        # Not positive_data_acceptance: a schema-valid draft may still be refused for its
        # content (message schema, policy, recipients), which no OpenAPI schema expresses.
        checks=CHECKS,
    )
