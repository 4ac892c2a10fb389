"""Every node API route takes exactly the query parameters docs/openapi.yaml lists: anything
else (a misspelt flag, a parameter given twice) is a 400, never silently ignored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from broker.node.api import create_app
from broker.node.api_parsing import QUERY_PARAMETERS
from broker.node.service import Node
from broker.pki.dev import DevFederation

from .node_world import World, world_at

OPENAPI: Final = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
TOKEN: Final = "q" * 32
AUTH: Final = {"Authorization": f"Bearer {TOKEN}"}


def documented() -> dict[tuple[str, str], frozenset[str]]:
    """(method, path) -> the query parameters the OpenAPI description gives it."""
    spec = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    shared = spec["components"]["parameters"]
    found: dict[tuple[str, str], frozenset[str]] = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            names = set()
            for given in operation.get("parameters", []):
                parameter = shared[given["$ref"].rsplit("/", 1)[1]] if "$ref" in given else given
                if parameter["in"] == "query":
                    names.add(parameter["name"])
            found[(method.upper(), path)] = frozenset(names)
    return found


def test_the_table_is_the_openapi_description() -> None:
    """The node's table of query parameters equals what docs/openapi.yaml documents."""
    spec = documented()
    assert {k: v for k, v in spec.items() if v} == QUERY_PARAMETERS


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def serve(world: World, scenario: Callable[[TestClient[Any, Any]], Any]) -> None:
    node = world.node("nl.politie")

    @asynccontextmanager
    async def lifecycle() -> AsyncIterator[Node]:
        yield node

    async def run() -> None:
        async with TestClient(TestServer(create_app(lifecycle, token=TOKEN))) as client:
            await scenario(client)

    asyncio.run(run())


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/v1/inbox?unraed=1", "unknown query parameter 'unraed'"),
        ("/v1/outbox?limit=5&limit=6", "'limit' given more than once"),
        ("/v1/events?after=0&cursor=3", "unknown query parameter 'cursor'"),
        ("/v1/clients?all=1", "(takes: none)"),
        ("/healthz?verbose=1", "unknown query parameter 'verbose'"),
    ],
)
def test_unknown_or_repeated_parameters_are_refused(world: World, path: str, detail: str) -> None:
    """A parameter the route does not take, or one given twice, is a 400 saying which."""

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.get(path, headers=AUTH)
        assert answer.status == 400
        error = (await answer.json())["error"]
        assert error["reason"] == "bad_request"
        assert detail in error["detail"]

    serve(world, scenario)


def test_known_parameters_still_work(world: World) -> None:
    """The documented parameters are answered as before."""

    async def scenario(client: TestClient[Any, Any]) -> None:
        for path in ("/v1/inbox?unread=1&limit=5", "/v1/outbox?pending=0", "/v1/events?after=0"):
            answer = await client.get(path, headers=AUTH)
            assert answer.status == 200, (path, await answer.text())

    serve(world, scenario)


def test_unauthenticated_requests_learn_nothing_about_parameters(world: World) -> None:
    """Without a token the answer is 401 whatever the query holds."""

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.get("/v1/inbox?unraed=1")
        assert answer.status == 401

    serve(world, scenario)
