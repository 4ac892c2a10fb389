"""The focal-point CLI against a node API served on a loopback port in a background thread."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from broker.cli import main
from broker.node.api import create_app
from broker.node.service import Node
from broker.pki.dev import DevFederation

from .lossy_proxy import LossyProxy
from .node_world import World, example, world_at

TOKEN = "c" * 32


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


@pytest.fixture
def node_url(world: World) -> Iterator[str]:
    """de.lka-berlin's API on a free loopback port; nl.politie receives on the same bus."""
    node = world.node("de.lka-berlin")
    world.node("nl.politie")
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []

    @asynccontextmanager
    async def lifecycle() -> AsyncIterator[Node]:
        yield node

    runner = web.AppRunner(create_app(lifecycle, token=TOKEN))

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port.append(runner.addresses[0][1])
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield f"http://127.0.0.1:{port[0]}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def printed_json(out: str) -> Any:
    # The node runs in this process and logs to stdout too: the CLI's document starts at "{".
    return json.loads(out[out.index("\n{") + 1 :] if not out.startswith("{") else out)


def cli(node_url: str, *args: str) -> list[str]:
    return [*args, "--node", node_url, "--token", TOKEN]


class TestFocalCli:
    def test_send_then_status_as_json(
        self, node_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`send --file` submits through the node; `status --json` shows the acknowledged state."""
        body = tmp_path / "body.json"
        body.write_text(json.dumps(example("request.assistance")))
        common = ["--type", "request.assistance", "--purpose", "investigation"]
        common += ["--handling", "H2", "--legal-basis", "FD 2006/960/JHA", "--file", str(body)]
        assert main(cli(node_url, "send", "--to", "nl.politie", *common, "--json")) == 0
        sent: dict[str, Any] = printed_json(capsys.readouterr().out)
        assert sent["state"] == "acknowledged"
        assert main(cli(node_url, "status", sent["message_id"], "--json")) == 0
        status = printed_json(capsys.readouterr().out)
        assert (status["message_id"], status["state"]) == (sent["message_id"], "acknowledged")

    def test_send_retries_a_lost_answer_with_one_key(
        self,
        world: World,
        node_url: str,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """`send` without --idempotency-key makes a key and reuses it when the node's answer is
        lost: the retry returns the stored message, nothing is sent twice."""
        body = tmp_path / "body.json"
        body.write_text(json.dumps(example("request.assistance")))
        common = ["--type", "request.assistance", "--purpose", "investigation"]
        common += ["--handling", "H2", "--legal-basis", "FD 2006/960/JHA", "--file", str(body)]
        with LossyProxy(int(node_url.rsplit(":", 1)[1])) as proxy:
            assert main(cli(proxy.url, "send", "--to", "nl.politie", *common, "--json")) == 0
        sent: dict[str, Any] = printed_json(capsys.readouterr().out)
        keys = [
            line
            for head in proxy.requests
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"idempotency-key:")
        ]
        assert len(keys) == 2
        assert keys[0] == keys[1]
        outbox = world.nodes["de.lka-berlin"].store.list_outbox()
        assert [m.message_id for m in outbox] == [sent["message_id"]]

    def test_errors_print_reason_and_exit_2(
        self, node_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A node error prints `error [reason]: detail` and exits with status 2."""
        unknown = "00000000-0000-4000-8000-999999999999"
        assert main(cli(node_url, "status", unknown)) == 2
        assert "error [not_found]" in capsys.readouterr().err

    def test_inbox_prints_a_table(self, node_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        """`inbox` prints a table header even when empty."""
        assert main(cli(node_url, "inbox")) == 0
        assert "MESSAGE_ID  TYPE" in capsys.readouterr().out
