"""Agreement-key rotation in the core: the recipient's key ring opens messages still in flight
to its previous key during the grace period, and only then."""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from broker.core.directory import Directory
from broker.core.envelope import RecipientIdentity, RetiredAgreementKey, open_message, seal
from broker.core.replay import MemoryReplayStore
from broker.core.schemas import SchemaRegistry
from broker.core.trust import cert_kid
from broker.errors import InvalidMessage, Reason
from broker.loaders import load_schema_registry
from broker.pki import issuing
from broker.pki.dev import DevFederation
from tests.unit.test_envelope_directory import BODY, _header, _sender

AGENCY = "ua.npu"


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return load_schema_registry()


@pytest.fixture(scope="module")
def rotated(
    dev_federation: DevFederation, fixed_now: datetime
) -> tuple[Directory, RecipientIdentity]:
    """ua.npu with a new agreement key (directory serial 2) and its old key in the ring."""
    dev = dev_federation
    old = dev.agency(AGENCY)
    creds = issuing.issue_agency(
        dev.country("UA").ca, agency_id=AGENCY, kind=old.kind, name=old.name, now=fixed_now
    )
    entries = [
        replace(e, agreement_cert=creds.agreement.cert) if e.agency_id == AGENCY else e
        for e in dev.agency_entries()
    ]
    signed = dev.sign_directory(now=fixed_now, serial=2, agencies=entries)
    directory = Directory.load(signed, root_cert=dev.root.cert, now=fixed_now)
    ring = RecipientIdentity(
        agency_id=AGENCY,
        agreement_kid=cert_kid(AGENCY, creds.agreement.cert),
        agreement_key=creds.agreement.key,
        previous=(
            RetiredAgreementKey(
                kid=old.agreement_kid, key=old.agreement.key, until=fixed_now + timedelta(days=1)
            ),
        ),
    )
    return directory, ring


def _seal(dev: DevFederation, resolver: Directory, now: datetime) -> bytes:
    return seal(
        header=_header(dev, now, "de.lka-berlin", [AGENCY]),
        body=BODY,
        sender=_sender(dev, "de.lka-berlin"),
        resolver=resolver,
        now=now,
        salt=secrets.token_bytes(16),
    )


def _open(
    wire: bytes,
    recipient: RecipientIdentity,
    resolver: Directory,
    registry: SchemaRegistry,
    now: datetime,
) -> str:
    return open_message(
        wire,
        recipient=recipient,
        resolver=resolver,
        replay=MemoryReplayStore(),
        validator=registry,
        now=now,
    ).header.id


class TestAgreementRing:
    def test_in_flight_to_the_old_key_opens(
        self,
        dev_federation: DevFederation,
        fixed_now: datetime,
        rotated: tuple[Directory, RecipientIdentity],
        registry: SchemaRegistry,
    ) -> None:
        """A message sealed with the old directory opens with the ring after the rotation."""
        directory, ring = rotated
        wire = _seal(dev_federation, dev_federation.directory, fixed_now)
        later = fixed_now + timedelta(hours=2)
        assert _open(wire, ring, directory, registry, later)

    def test_new_messages_use_the_current_key(
        self,
        dev_federation: DevFederation,
        fixed_now: datetime,
        rotated: tuple[Directory, RecipientIdentity],
        registry: SchemaRegistry,
    ) -> None:
        """A message sealed with the rotated directory opens with the current key, even with no
        previous key left in the ring."""
        directory, ring = rotated
        wire = _seal(dev_federation, directory, fixed_now)
        assert _open(wire, replace(ring, previous=()), directory, registry, fixed_now)

    def test_old_key_gone_after_the_grace_period(
        self,
        dev_federation: DevFederation,
        fixed_now: datetime,
        rotated: tuple[Directory, RecipientIdentity],
        registry: SchemaRegistry,
    ) -> None:
        """Past its ``until`` the retired key no longer opens anything: NOT_ADDRESSED."""
        directory, ring = rotated
        wire = _seal(dev_federation, dev_federation.directory, fixed_now)
        after = fixed_now + timedelta(days=1, seconds=1)
        with pytest.raises(InvalidMessage) as err:
            _open(wire, ring, directory, registry, after)
        assert err.value.reason is Reason.NOT_ADDRESSED

    def test_without_the_ring_the_old_message_is_lost(
        self,
        dev_federation: DevFederation,
        fixed_now: datetime,
        rotated: tuple[Directory, RecipientIdentity],
        registry: SchemaRegistry,
    ) -> None:
        """The failure the ring prevents: the new key alone cannot open an in-flight message."""
        directory, ring = rotated
        wire = _seal(dev_federation, dev_federation.directory, fixed_now)
        with pytest.raises(InvalidMessage) as err:
            _open(wire, replace(ring, previous=()), directory, registry, fixed_now)
        assert err.value.reason is Reason.NOT_ADDRESSED

    def test_ring_order_current_first(self, rotated: tuple[Directory, RecipientIdentity]) -> None:
        """The ring lists the current key first, then retired keys still in their grace."""
        _, ring = rotated
        kids = [kid for kid, _ in ring.ring(ring.previous[0].until)]
        assert kids == [ring.agreement_kid, ring.previous[0].kid]
        later = ring.previous[0].until + timedelta(seconds=1)
        assert [kid for kid, _ in ring.ring(later)] == [ring.agreement_kid]
