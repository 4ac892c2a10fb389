"""Sealing and opening against the real signed federation directory (X.509 chains, CRLs)."""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from broker.core.directory import Directory
from broker.core.envelope import (
    OpenedMessage,
    RecipientIdentity,
    SenderIdentity,
    open_message,
    seal,
)
from broker.core.header import Header
from broker.core.replay import MemoryReplayStore
from broker.core.schemas import SchemaRegistry
from broker.core.trust import KeyResolver
from broker.errors import InvalidMessage, Reason
from broker.loaders import load_schema_registry
from broker.pki.dev import DevFederation

BODY = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "examples" / "bulletin.json").read_text()
)


def _sender(dev: DevFederation, agency_id: str) -> SenderIdentity:
    a = dev.agency(agency_id)
    return SenderIdentity(agency_id=agency_id, signing_kid=a.signing_kid, signing_key=a.signing.key)


def _recipient(dev: DevFederation, agency_id: str) -> RecipientIdentity:
    a = dev.agency(agency_id)
    return RecipientIdentity(
        agency_id=agency_id, agreement_kid=a.agreement_kid, agreement_key=a.agreement.key
    )


def _header(
    dev: DevFederation,
    now: datetime,
    sender: str,
    recipients: list[str],
    task_force: str | None = None,
) -> Header:
    t = int(now.timestamp())
    return Header(
        fed=dev.federation_id,
        id=str(uuid.uuid4()),
        type="bulletin",
        type_version=1,
        conversation=str(uuid.uuid4()),
        sender=sender,
        recipients=tuple(sorted(recipients)),
        handling="H1",
        tlp="GREEN",
        purpose="prevention",
        legal_basis="Council Framework Decision 2006/960/JHA",
        categories=(),
        iat=t,
        exp=t + 86400,
        task_force=task_force,
    )


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return load_schema_registry()


def _seal(
    dev: DevFederation,
    now: datetime,
    sender: str,
    recipients: list[str],
    *,
    resolver: KeyResolver | None = None,
    task_force: str | None = None,
) -> bytes:
    return seal(
        header=_header(dev, now, sender, recipients, task_force),
        body=BODY,
        sender=_sender(dev, sender),
        resolver=resolver or dev.directory,
        now=now,
        salt=secrets.token_bytes(16),
    )


def _open(
    dev: DevFederation,
    registry: SchemaRegistry,
    wire: bytes,
    agency_id: str,
    now: datetime,
    *,
    resolver: KeyResolver | None = None,
) -> OpenedMessage:
    return open_message(
        wire,
        recipient=_recipient(dev, agency_id),
        resolver=resolver or dev.directory,
        replay=MemoryReplayStore(),
        validator=registry,
        now=now,
    )


class TestWithDirectory:
    def test_cross_border_round_trip(
        self, dev_federation: DevFederation, registry: SchemaRegistry, fixed_now: datetime
    ) -> None:
        """A DE police message opens at the UA police with keys from the signed directory."""
        wire = _seal(dev_federation, fixed_now, "de.lka-berlin", ["ua.npu"])
        assert _open(dev_federation, registry, wire, "ua.npu", fixed_now).body == BODY

    def test_task_force_via_directory(
        self, dev_federation: DevFederation, registry: SchemaRegistry, fixed_now: datetime
    ) -> None:
        """A task-force message to the directory's task force opens at every other member."""
        members = dev_federation.directory.task_force("tf.eastern-route", now=fixed_now)
        others = [m for m in members if m != "de.lka-berlin"]
        wire = _seal(
            dev_federation, fixed_now, "de.lka-berlin", others, task_force="tf.eastern-route"
        )
        for member in others:
            assert _open(dev_federation, registry, wire, member, fixed_now).body == BODY

    def test_revoked_sender_refused(
        self, dev_federation: DevFederation, registry: SchemaRegistry, fixed_now: datetime
    ) -> None:
        """After the sender's revocation is published, its messages are refused."""
        wire = _seal(dev_federation, fixed_now, "nl.politie", ["de.lka-berlin"])
        later = fixed_now + timedelta(minutes=5)
        revoked = Directory.load(
            dev_federation.sign_directory(now=later, revoked=["nl.politie"], serial=3),
            root_cert=dev_federation.root.cert,
            now=later,
        )
        with pytest.raises(InvalidMessage) as info:
            _open(dev_federation, registry, wire, "de.lka-berlin", later, resolver=revoked)
        assert info.value.reason == Reason.SENDER_REVOKED

    def test_stale_directory_fails_closed(
        self, dev_federation: DevFederation, registry: SchemaRegistry, fixed_now: datetime
    ) -> None:
        """Past the directory's next update, nothing opens."""
        wire = _seal(dev_federation, fixed_now, "de.lka-berlin", ["ua.npu"])
        stale = dev_federation.directory.next_update + timedelta(seconds=1)
        with pytest.raises(InvalidMessage) as info:
            _open(dev_federation, registry, wire, "ua.npu", stale)
        assert info.value.reason == Reason.DIRECTORY_STALE

    def test_foreign_federation_directory(
        self, dev_federation: DevFederation, registry: SchemaRegistry, fixed_now: datetime
    ) -> None:
        """A message from another federation (other root) does not open: its signer is unknown."""
        from broker.pki.dev import DEMO_SPEC, build_dev_federation

        other = build_dev_federation(DEMO_SPEC, now=fixed_now)
        wire = _seal(other, fixed_now, "de.lka-berlin", ["ua.npu"])
        with pytest.raises(InvalidMessage) as info:
            _open(dev_federation, registry, wire, "ua.npu", fixed_now)
        assert info.value.reason in (Reason.UNKNOWN_SENDER, Reason.FOREIGN_FEDERATION)
