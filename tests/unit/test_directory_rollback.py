"""A directory older than one already accepted is refused after a restart and at a reload,
so a revocation cannot be undone by putting an old (still unexpired) file back."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from broker.core.directory import Directory
from broker.gateway.audit import GatewayLedger
from broker.gateway.runner import _Holder
from broker.node.store import Store
from broker.pki.dev import DevFederation


class TestRememberedSerial:
    def test_node_store_remembers_the_highest_serial(self, tmp_path: Path) -> None:
        """The node store starts at 0 and never lowers the serial it remembers."""
        store = Store(tmp_path / "node.sqlite")
        try:
            assert store.directory_serial() == 0
            store.accept_directory_serial(5)
            store.accept_directory_serial(3)
            assert store.directory_serial() == 5
        finally:
            store.close()
        reopened = Store(tmp_path / "node.sqlite")
        try:
            assert reopened.directory_serial() == 5
        finally:
            reopened.close()

    def test_gateway_ledger_remembers_the_highest_serial(self, tmp_path: Path) -> None:
        """The gateway ledger does the same, across reopenings of the file."""
        ledger = GatewayLedger(tmp_path / "gw.sqlite", agency="de.gateway")
        try:
            assert ledger.directory_serial() == 0
            ledger.accept_directory_serial(7)
            ledger.accept_directory_serial(2)
        finally:
            ledger.close()
        again = GatewayLedger(tmp_path / "gw.sqlite", agency="de.gateway")
        try:
            assert again.directory_serial() == 7
        finally:
            again.close()


class TestGatewayReload:
    def test_older_file_is_refused_newer_is_taken_and_remembered(
        self, tmp_path: Path, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A running gateway keeps serial 3 when serial 2 is put in place (the revocation in
        3 stays), takes serial 4 and reports it to be remembered."""
        path = tmp_path / "directory.jws"
        path.write_bytes(
            dev_federation.sign_directory(now=fixed_now, serial=3, revoked=["de.sta-berlin"])
        )
        remembered: list[int] = []
        holder = _Holder(
            path=path,
            root_pem=tmp_path / "root.pem",
            directory=Directory.load(
                path.read_bytes(), root_cert=dev_federation.root.cert, now=fixed_now
            ),
            mtime=path.stat().st_mtime,
            accepted=remembered.append,
        )
        (tmp_path / "root.pem").write_bytes(
            dev_federation.root.cert.public_bytes(serialization.Encoding.PEM)
        )
        path.write_bytes(dev_federation.sign_directory(now=fixed_now, serial=2))
        os.utime(path, (1, 1))
        holder.refresh(fixed_now)
        assert holder.directory.serial == 3
        assert remembered == []
        path.write_bytes(dev_federation.sign_directory(now=fixed_now, serial=4))
        os.utime(path, (2, 2))
        holder.refresh(fixed_now)
        assert holder.directory.serial == 4
        assert remembered == [4]
