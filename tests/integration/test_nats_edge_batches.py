"""The NATS edge's batch helpers against a real nats-server: ``lean_fetch`` gives the same
batches nats-py's fetch gives (every message once, in order, nothing left pending), only
without a task per message; ``BatchPublisher`` reports per publication what ``js.publish``
would have raised."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from broker.nats import BatchPublisher, lean_fetch

from .conftest import run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(nats_binary: Path, tmp_path: Path) -> Iterator[str]:
    """A bare JetStream server on loopback (no TLS: this is about the client's fetch)."""
    port = _free_port()
    process = subprocess.Popen(
        [str(nats_binary), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


class TestLeanFetch:
    def test_batches_hold_every_message_once_in_order(self, server: str) -> None:
        """Messages published before and during fetches come out once each, in stream order,
        in batches of at most the asked size; nothing stays pending in the subscription, and
        an empty lane still times out as nats-py's fetch does."""

        async def scenario() -> tuple[list[bytes], list[int], int]:
            nc = await nats.connect(server)
            try:
                js = nc.jetstream()
                await js.add_stream(name="LEAN", subjects=["lean.>"])
                await js.add_consumer(
                    "LEAN", ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT)
                )
                sub = lean_fetch(await js.pull_subscribe_bind(durable="d", stream="LEAN"))
                for i in range(50):
                    await js.publish("lean.a", str(i).encode())
                got: list[bytes] = []
                sizes: list[int] = []
                while len(got) < 120:
                    if len(got) == 50:
                        for i in range(50, 120):
                            await js.publish("lean.a", str(i).encode())
                    batch = await sub.fetch(16, timeout=2)
                    sizes.append(len(batch))
                    for msg in batch:
                        got.append(msg.data)
                        await msg.ack()
                with pytest.raises(nats.errors.TimeoutError):
                    await sub.fetch(16, timeout=0.3)
                return got, sizes, sub.pending_bytes
            finally:
                await nc.close()

        got, sizes, pending = run(scenario())
        assert got == [str(i).encode() for i in range(120)]
        assert max(sizes) <= 16
        assert pending == 0


class TestBatchPublisher:
    def test_each_publication_gets_its_own_outcome(self, server: str) -> None:
        """Stored (and a de-duplicated copy) is None; a subject no stream takes is
        NoStreamResponseError; a subject NATS refuses is its error; the others of the batch
        are stored all the same, each once."""

        async def scenario() -> tuple[list[BaseException | None], list[bytes]]:
            nc = await nats.connect(server)
            try:
                js = nc.jetstream()
                await js.add_stream(name="PUB", subjects=["pub.>"])
                publisher = BatchPublisher(nc)
                outcomes = await publisher.publish_all(
                    [
                        ("pub.a", b"one", {"Nats-Msg-Id": "1"}),
                        ("nostream.a", b"lost", {"Nats-Msg-Id": "2"}),
                        ("pub.a", b"one again", {"Nats-Msg-Id": "1"}),
                        ("", b"bad subject", {"Nats-Msg-Id": "3"}),
                        ("pub.b", b"two", {"Nats-Msg-Id": "4"}),
                    ],
                    timeout=5,
                )
                sub = await js.pull_subscribe("pub.>", durable="check")
                stored = [m.data for m in await sub.fetch(10, timeout=1)]
                return outcomes, stored
            finally:
                await nc.close()

        outcomes, stored = run(scenario())
        assert outcomes[0] is None
        assert isinstance(outcomes[1], nats.js.errors.NoStreamResponseError)
        assert outcomes[2] is None  # the duplicate window: stored once, acknowledged again
        assert isinstance(outcomes[3], nats.errors.BadSubjectError)
        assert outcomes[4] is None
        assert stored == [b"one", b"two"]
