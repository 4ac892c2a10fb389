"""Listening ports of a local federation are chosen outside the kernel's ephemeral range, so an
outgoing connection can never take a port between ``federation init`` and the server binding."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from broker.federation.launcher import free_port

RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@pytest.mark.skipif(not RANGE.exists(), reason="no Linux ephemeral port range to stay out of")
def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    low = int(RANGE.read_text().split()[0])
    ports = [free_port() for _ in range(60)]
    assert len(set(ports)) == len(ports)
    assert all(10_000 <= p < low for p in ports), (low, ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # really free
