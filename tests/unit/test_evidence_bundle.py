"""Evidence bundles: exported from a real node store, verified offline, alterations caught."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from broker.cli import main
from broker.core import audit, canonical, jose
from broker.core.bundle import BUNDLE_TYP, BundleReport, verify_bundle
from broker.core.envelope import RecipientIdentity, SenderIdentity
from broker.errors import ConfigError
from broker.node import audit_log, retention
from broker.node.errors import NotFound
from broker.node.evidence_export import export_bundle
from broker.node.service import Node
from broker.pki.dev import DevFederation

from .node_world import World, example, request_draft, world_at

SENDER, RECIPIENT = "de.lka-berlin", "nl.politie"


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def identities(fed: DevFederation, agency_id: str) -> tuple[SenderIdentity, RecipientIdentity]:
    agency = fed.agency(agency_id)
    return (
        SenderIdentity(
            agency_id=agency_id, signing_kid=agency.signing_kid, signing_key=agency.signing.key
        ),
        RecipientIdentity(
            agency_id=agency_id,
            agreement_kid=agency.agreement_kid,
            agreement_key=agency.agreement.key,
        ),
    )


def export(world: World, node: Node, message_id: str, *, with_body: bool = False) -> bytes:
    sender, recipient = identities(world.fed, node.agency_id)
    return export_bundle(
        node.store,
        message_id,
        sender=sender,
        recipient=recipient,
        root_cert=world.fed.root.cert,
        directory=world.fed.directory_bytes,
        with_body=with_body,
        actor="dpo@example.test",
        justification="court order 12/2026 (synthetic)",
        now=world.clock.now,
    )


def exchanged(world: World) -> str:
    """de sends a request to nl; nl stores it and a person reads it: delivered + read evidence."""
    de, nl = world.node(SENDER), world.node(RECIPIENT)

    async def run() -> str:
        result = await de.send(request_draft())
        await world.pump()
        world.clock.advance(timedelta(minutes=5))
        await nl.read(result.message_id, actor="officer-1", justification="case work")
        await world.pump()
        world.clock.advance(timedelta(minutes=5))
        return result.message_id

    return asyncio.run(run())


def verify(world: World, data: bytes, *, pinned: bool = True) -> BundleReport:
    root = world.fed.root.cert if pinned else None
    return verify_bundle(data, root_cert=root, now=world.clock.now + timedelta(days=3650))


def reseal(world: World, data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """Alter the bundle and seal it again with the exporter's own key: a lying exporter."""
    whole = json.loads(data)
    bundle = whole["bundle"]
    change(bundle)
    sender, _ = identities(world.fed, bundle["exporter"])
    head, _, sig = jose.sign_compact(
        canonical.dumps(bundle), sender.signing_key, kid=sender.signing_kid, typ=BUNDLE_TYP
    ).split(".")
    return canonical.dumps({"bundle": bundle, "seal": f"{head}..{sig}"})


def failed(report: BundleReport) -> dict[str, str]:
    return {c.name: c.detail for c in report.failures}


class TestExportAndVerify:
    def test_sender_bundle_verifies_offline(self, world: World) -> None:
        """The sender's bundle verifies: who sent what to whom, delivered and read, digest bound."""
        message_id = exchanged(world)
        report = verify(world, export(world, world.nodes[SENDER], message_id))
        assert report.ok, failed(report)
        assert report.header is not None
        assert report.header["sender"]["agency"] == SENDER
        assert report.header["recipients"] == [RECIPIENT]
        assert [(e.kind, e.actor, e.digest_bound) for e in report.evidence] == [
            ("delivered", RECIPIENT, True),
            ("read", RECIPIENT, True),
        ]
        assert report.body is None
        operations = [r["operation"] for r in report.audit_records]
        assert operations == ["disclosure", "disclosure"]  # the sending, then this export

    def test_recipient_bundle_discloses_the_signed_body(self, world: World) -> None:
        """A recipient's bundle with the body proves the sender signed exactly that body."""
        message_id = exchanged(world)
        report = verify(world, export(world, world.nodes[RECIPIENT], message_id, with_body=True))
        assert report.ok, failed(report)
        assert report.body == example("request.assistance")
        assert {e.kind for e in report.evidence} == {"delivered", "read"}
        assert [r["operation"] for r in report.audit_records] == [
            "collection",
            "consultation",
            "disclosure",
        ]

    def test_sender_cannot_disclose_a_body(self, world: World) -> None:
        """The sender keeps no signed inner content: --with-body from the sender is refused."""
        message_id = exchanged(world)
        with pytest.raises(ConfigError, match="only a recipient"):
            export(world, world.nodes[SENDER], message_id, with_body=True)

    def test_export_is_logged_as_a_disclosure_with_the_body_choice(self, world: World) -> None:
        """Each export is an audit record naming the actor, the reason and the body choice."""
        message_id = exchanged(world)
        nl = world.nodes[RECIPIENT]
        export(world, nl, message_id)
        export(world, nl, message_id, with_body=True)
        records = nl.store.query(lambda db: audit_log.records_about(db, message_id))
        exports = [r.record.entry for r in records if r.record.entry.peer == "evidence-bundle"]
        assert [(e.actor, e.detail) for e in exports] == [
            ("dpo@example.test", "evidence bundle exported; body included: no"),
            ("dpo@example.test", "evidence bundle exported; body included: yes"),
        ]
        assert all(e.justification == "court order 12/2026 (synthetic)" for e in exports)

    def test_unpinned_root_is_reported(self, world: World) -> None:
        """Without a pinned root the checks run on the bundle's root and the report says so."""
        message_id = exchanged(world)
        report = verify(world, export(world, world.nodes[SENDER], message_id), pinned=False)
        assert report.ok
        assert not report.root_pinned
        assert next(c for c in report.checks if c.name == "root").detail.startswith("NOT PINNED")

    def test_received_wire_bytes_are_stored(self, world: World) -> None:
        """Schema v4 keeps the bytes of received messages and received evidence."""
        message_id = exchanged(world)
        nl, de = world.nodes[RECIPIENT], world.nodes[SENDER]
        assert nl.store.received_wire(message_id) is not None
        trail = de.store.evidence_for(message_id)
        assert all(de.store.evidence_wire(e.evidence_id or "") for e in trail)

    def test_erasing_a_body_erases_its_received_bytes(self, world: World) -> None:
        """Retention erases the received wire bytes with the body: nothing left to export."""
        message_id = exchanged(world)
        nl = world.nodes[RECIPIENT]
        with nl.store.transaction() as db:
            assert retention.erase_received(
                db, message_id, why="retention", agency=RECIPIENT, now=world.clock.now
            )
        assert nl.store.received_wire(message_id) is None
        with pytest.raises(NotFound):
            export(world, nl, message_id)


class TestTampering:
    @pytest.fixture
    def bundle(self, world: World) -> bytes:
        message_id = exchanged(world)
        return export(world, world.nodes[RECIPIENT], message_id, with_body=True)

    def test_any_altered_byte_fails_with_a_reason(self, world: World, bundle: bytes) -> None:
        """Changing one byte anywhere (sampled, plus every region) makes verification fail."""
        text = bundle.decode("ascii")
        regions = [
            text.index('"der":"') + 40,  # a certificate
            text.index('"directory":"') + 500,  # the signed directory
            text.index('"wire":"') + 300,  # the message bytes
            text.index('"inner":"') + 200,  # the disclosed body
            text.index('"proof":["') + 12,  # an inclusion proof
            text.index('"checkpoints":["') + 100,  # a checkpoint
            text.index('"root_cert":"') + 60,  # the root
            text.index('"seal":"') + 20,  # the seal's header
            len(text) - 5,  # the seal's signature
            text.index('"records":[') + 30,  # the node's (unsigned) evidence records
        ]
        rng = random.Random(12)  # noqa: S311 - a reproducible sample, not a secret
        positions = sorted({*regions, *rng.sample(range(len(bundle)), 60)})
        for position in positions:
            for replacement in {ord("A"), ord("0"), ord("}")} - {bundle[position]}:
                altered = bundle[:position] + bytes([replacement]) + bundle[position + 1 :]
                report = verify(world, altered)
                assert not report.ok, f"byte {position} -> {chr(replacement)} went unnoticed"
                assert all(c.detail for c in report.failures)

    def test_removed_certificate_fails(self, world: World, bundle: bytes) -> None:
        """Dropping one party's certificate fails, even when the exporter reseals the bundle."""
        plain = json.loads(bundle)
        plain["bundle"]["pki"]["certificates"].pop(0)
        assert not verify(world, canonical.dumps(plain)).ok  # the seal breaks

        def drop_sender_signing(b: dict[str, Any]) -> None:
            certs = b["pki"]["certificates"]
            b["pki"]["certificates"] = [
                c for c in certs if (c["subject"], c["usage"]) != (SENDER, "signing")
            ]

        report = verify(world, reseal(world, bundle, drop_sender_signing))
        assert set(failed(report)) == {"certificates"}
        assert f"signing certificate of {SENDER}" in failed(report)["certificates"]

    def test_a_lying_exporter_is_caught(self, world: World, bundle: bytes) -> None:
        """Resealed alterations fail at the check that covers them, naming the reason."""

        def other_body(b: dict[str, Any]) -> None:
            b["body_included"] = False
            b["message"]["inner"] = None

        def swapped_wire(b: dict[str, Any]) -> None:
            b["message"]["wire"] = b["evidence"][0]["wire"]

        def forged_record(b: dict[str, Any]) -> None:
            b["audit"]["records"][0]["record"]["actor"] = "someone-else"

        def no_disclosure(b: dict[str, Any]) -> None:
            b["audit"]["records"].pop()

        def dropped_evidence_inner(b: dict[str, Any]) -> None:
            inner = jose.b64url_decode(b["evidence"][0]["wire"], what="w")
            b["evidence"][0]["wire"] = jose.b64url_encode(inner.replace(b'"v":1', b'"v":2'))

        cases: list[tuple[Callable[[dict[str, Any]], None], str, str]] = [
            (other_body, "disclosure logged", "not in the proven audit records"),
            (swapped_wire, "message", "another message"),
            (forged_record, "audit[0]", "not in the checkpoint's tree"),
            (no_disclosure, "disclosure logged", "not in the proven audit records"),
            (dropped_evidence_inner, "evidence[0]", "malformed"),
        ]
        for change, check, reason in cases:
            report = verify(world, reseal(world, bundle, change))
            assert check in failed(report), (change.__name__, failed(report))
            assert reason in failed(report)[check], (change.__name__, failed(report))

    def test_another_root_is_refused(self, world: World, bundle: bytes) -> None:
        """A bundle checked against another pinned certificate fails at the root check."""
        other = world.fed.country("DE").ca.cert
        report = verify_bundle(bundle, root_cert=other, now=world.clock.now)
        assert set(failed(report)) == {"root"}

    def test_a_checkpoint_not_signed_by_the_exporter_fails(
        self, world: World, bundle: bytes
    ) -> None:
        """A checkpoint signed by another agency does not vouch for the exporter's records."""
        other, _ = identities(world.fed, SENDER)

        def foreign(b: dict[str, Any]) -> None:
            token = b["audit"]["checkpoints"][-1]
            cp = json.loads(
                jose.parse_compact(token, typ=audit.CHECKPOINT_TYP, what="c").unverified_payload
            )
            b["audit"]["checkpoints"][-1] = jose.sign_compact(
                canonical.dumps(cp),
                other.signing_key,
                kid=other.signing_kid,
                typ=audit.CHECKPOINT_TYP,
            )

        report = verify(world, reseal(world, bundle, foreign))
        names = set(failed(report))
        assert any(n.startswith("checkpoint[") for n in names), failed(report)


class TestCli:
    def test_verify_prints_a_report_and_exits_by_the_result(
        self, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`casebridge evidence verify` exits 0 with a plain report, 1 naming a failed check."""
        message_id = exchanged(world)
        bundle = tmp_path / "bundle.json"
        bundle.write_bytes(export(world, world.nodes[SENDER], message_id))
        root = tmp_path / "root.pem"
        root.write_bytes(world.fed.root.cert.public_bytes(Encoding.PEM))
        assert main(["evidence", "verify", str(bundle), "--root", str(root)]) == 0
        report = capsys.readouterr().out
        assert f"Evidence bundle for message {message_id}: VERIFIED" in report
        assert "Outcome: DELIVERED and READ" in report
        assert main(["evidence", "verify", str(bundle), "--root", str(root), "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert document["ok"] is True
        assert [e["kind"] for e in document["evidence"]] == ["delivered", "read"]
        data = bundle.read_bytes()
        bundle.write_bytes(data.replace(b'"role":"sender"', b'"role":"recipient"'))
        assert main(["evidence", "verify", str(bundle), "--root", str(root)]) == 1
        assert "[FAIL] seal: [bad_signature]" in capsys.readouterr().out
