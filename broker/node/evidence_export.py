"""Export an evidence bundle (broker.core.bundle) from a node's store.

What it is for
    ``casebridge evidence export`` calls :func:`export_bundle`: it gathers the wire bytes of a
    message we sent (outbox) or received (inbox), every evidence message about it (received
    ones as they arrived, ours from the outbox), logs the export as a ``disclosure`` in the
    audit log (actor, justification, whether the body is disclosed), seals an audit checkpoint
    covering that record, proves every audit record about the message against the checkpoint
    covering it, and has the core build and seal the bundle.

The body
    The body travels encrypted to the recipients; it is disclosed only on request
    (``with_body``) and only by a recipient, by adding the decrypted inner JWS: the sender's
    signature over header and body, bound to the outer signature by the commitment. A sender
    keeps no copy of its signed inner content, so it cannot disclose it. Evidence bodies
    addressed to us (ids, digest, time, reason: no personal data) are always disclosed.

What it must never do
    Disclose a body without the exporter asking, or without the disclosure record committed.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509

from broker.core import audit, bundle
from broker.core.envelope import RecipientIdentity, SenderIdentity
from broker.errors import CasebridgeError, ConfigError
from broker.node import audit_log
from broker.node.errors import NotFound
from broker.node.store import Store


def export_bundle(
    store: Store,
    message_id: str,
    *,
    sender: SenderIdentity,
    recipient: RecipientIdentity,
    root_cert: x509.Certificate,
    directory: bytes,
    with_body: bool,
    actor: str | None,
    justification: str,
    now: datetime,
) -> bytes:
    """The bundle file for ``message_id`` (see the module docstring)."""
    agency = sender.agency_id
    sent = store.outbox_message(message_id)
    if sent is not None and not sent.type.startswith("evidence."):
        if not sent.wire:
            raise NotFound(f"the bytes of message {message_id} were erased (retention)")
        role, wire = "sender", sent.wire
    else:
        received = store.received_wire(message_id)
        if received is None:
            raise NotFound(
                f"no bytes of message {message_id} here (not sent or received by {agency}, "
                "received before schema v4, or erased)"
            )
        role, wire = "recipient", received
    inner: bytes | None = None
    if with_body:
        if role == "sender":
            raise ConfigError(
                "only a recipient can disclose the body: the sender keeps no copy of its signed "
                "inner content (export without --with-body, or from a recipient's node)"
            )
        inner = bundle.disclose_inner(wire, recipient)
    items, records = [], []
    for record in store.evidence_for(message_id):
        records.append(record.to_json())
        if record.evidence_id is None:
            continue
        if record.direction == "received":
            ev_wire = store.evidence_wire(record.evidence_id)
            if ev_wire is None:
                continue
            try:
                ev_inner: bytes | None = bundle.disclose_inner(ev_wire, recipient)
            except CasebridgeError:
                ev_inner = None
            items.append(bundle.SignedItem(wire=ev_wire, inner=ev_inner))
        else:
            ours = store.outbox_message(record.evidence_id)
            if ours is not None and ours.wire:
                items.append(bundle.SignedItem(wire=ours.wire))
    entry = audit.AuditEntry(
        operation=audit.Operation.DISCLOSURE,
        actor=actor or agency,
        actor_kind=audit.ActorKind.PERSON if actor else audit.ActorKind.SYSTEM,
        agency=agency,
        justification=justification,
        message_id=message_id,
        message_type=_message_type(store, message_id, role),
        peer=bundle.DISCLOSURE_PEER,
        digest=bundle.wire_digest(wire),
        detail=bundle.disclosure_detail(body_included=inner is not None),
    )
    with store.transaction() as db:
        audit_log.append(db, [entry], now=now)
        audit_log.seal_checkpoint(
            db,
            node=agency,
            sign=lambda cp: audit.sign_checkpoint(cp, sender.signing_key, kid=sender.signing_kid),
            now=now,
        )
    ranges, about, window = store.query(
        lambda db: (
            audit_log.checkpoint_ranges(db),
            audit_log.records_about(db, message_id),
            audit_log.records(db),
        )
    )
    leaves = [r.record.canonical() for r in window]
    proofs = []
    for stored in about:
        seq = stored.record.seq
        found = next((i for i, (first, last, _) in enumerate(ranges) if first <= seq <= last), None)
        if found is None:  # pragma: no cover - the checkpoint above covers every record
            continue
        first, last, _ = ranges[found]
        path = audit.inclusion_proof(leaves[first - 1 : last], seq - first)
        proofs.append(bundle.AuditProof(record=stored.record, checkpoint=found, proof=tuple(path)))
    return bundle.build_bundle(
        message_id=message_id,
        exporter=sender,
        role=role,
        exported_at=now,
        message=bundle.SignedItem(wire=wire, inner=inner),
        evidence=items,
        records=records,
        root_cert=root_cert,
        directory=directory,
        checkpoints=[token for _, _, token in ranges],
        proofs=proofs,
    )


def _message_type(store: Store, message_id: str, role: str) -> str | None:
    if role == "sender":
        sent = store.outbox_message(message_id)
        return sent.type if sent is not None else None
    received = store.inbox_message(message_id)
    return received.type if received is not None else None
