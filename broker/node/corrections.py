"""Corrections and withdrawals: fanned out to every earlier recipient, applied on receipt.

Sending (:func:`send_notice`)
    A ``correction`` or ``withdrawal`` about message X goes to every agency X was disclosed
    to, and every agency a message derived from X (``derived_from`` = X) was disclosed to,
    read from the disclosure records of the audit log (and the outbox recipients, for messages
    older than the log). The case worker names X; the node finds the recipients.

Receiving (:func:`on_delivery`, a hook run inside the delivery's transaction)
    The delivery's ``collection`` record is written; for a correction or withdrawal from the
    sender of X (or of a message derived from X), X is marked ``corrected``/``withdrawn``, an
    ``alteration`` record is written and, for a withdrawal asking for ``erase``, the body is
    erased (``erasure`` record). A notice from anyone else marks nothing.

Must never let an agency mark a message it did not send.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, Protocol

from broker.core.audit import ActorKind, AuditEntry, Operation, rfc3339
from broker.node import audit_log, retention
from broker.node.audit_log import Within
from broker.node.errors import BadRequest, NotFound
from broker.node.model import Draft, SendResult, is_evidence_type
from broker.node.store import Store

CORRECTION: Final = "correction"
WITHDRAWAL: Final = "withdrawal"
TARGET_FIELD: Final = {CORRECTION: "corrected_message_id", WITHDRAWAL: "withdrawn_message_id"}
MARK: Final = {CORRECTION: "corrected", WITHDRAWAL: "withdrawn"}


def recipients_of(db: sqlite3.Connection, message_id: str, *, agency: str) -> list[str]:
    """Every agency ``message_id`` or a message derived from it was disclosed to."""
    derived = [
        str(r[0])
        for r in db.execute(
            "SELECT id FROM outbox WHERE json_extract(header, '$.derived_from') = ?",
            (message_id,),
        )
    ]
    ids = [message_id, *derived]
    marks = ", ".join("?" * len(ids))
    peers = {
        str(r[0])
        for r in db.execute(
            "SELECT DISTINCT peer FROM audit WHERE operation = 'disclosure' "  # noqa: S608 - placeholders only
            f"AND message_id IN ({marks})",
            ids,
        )
    }
    for (recipients,) in db.execute(
        f"SELECT json_extract(header, '$.recipients') FROM outbox WHERE id IN ({marks})",  # noqa: S608 - placeholders only
        ids,
    ):
        if recipients:
            peers.update(str(r) for r in json.loads(recipients))
    peers.discard(agency)
    return sorted(peers)


class NoticeSender(Protocol):
    """What sending a notice needs of the node (:class:`broker.node.service.Node` is one):
    named here so that this module, which the node imports for its delivery hook, never
    imports the node back (no import cycle)."""

    agency_id: str
    store: Store

    async def send(self, draft: Draft, *, actor: str | None = None) -> SendResult: ...


async def send_notice(
    node: NoticeSender,
    *,
    kind: str,
    message_id: str,
    body: Mapping[str, Any],
    actor: str | None,
) -> SendResult:
    """Send a correction or withdrawal about ``message_id`` to every earlier recipient."""
    if kind not in TARGET_FIELD:
        raise BadRequest(f"kind must be {CORRECTION} or {WITHDRAWAL}")
    sent = await asyncio.to_thread(node.store.outbox_message, message_id)
    received = await asyncio.to_thread(node.store.inbox_message, message_id)
    original = sent.header if sent is not None else received.header if received else None
    if original is None or is_evidence_type(str(original["type"])):
        raise NotFound(f"no message {message_id} to correct or withdraw")
    recipients = await asyncio.to_thread(
        node.store.query, lambda db: recipients_of(db, message_id, agency=node.agency_id)
    )
    if not recipients:
        raise BadRequest(f"message {message_id} was not disclosed to any agency")
    full = {**body, TARGET_FIELD[kind]: message_id}
    if kind == CORRECTION:
        full.setdefault("corrected_type", original["type"])
        full.setdefault("corrected_type_version", original["type_version"])
    draft = Draft(
        type=kind,
        body=full,
        purpose=str(original["purpose"]),
        handling=str(original["handling"]),
        tlp=str(original["tlp"]),
        legal_basis=str(original["legal_basis"]),
        to=tuple(recipients),
        in_reply_to=message_id,
    )
    return await node.send(draft, actor=actor)


def on_delivery(
    header: Mapping[str, Any], body: Mapping[str, Any], digest: str, *, agency: str, now: datetime
) -> Within:
    """The audit (and, for notices, marking) work of one delivery, inside its transaction."""

    def run(db: sqlite3.Connection) -> None:
        audit_log.append(db, [audit_log.collection(header, digest, agency=agency)], now=now)
        kind = str(header["type"])
        if kind in TARGET_FIELD:
            _apply(db, kind, header, body, agency=agency, now=now)

    return run


def _apply(
    db: sqlite3.Connection,
    kind: str,
    header: Mapping[str, Any],
    body: Mapping[str, Any],
    *,
    agency: str,
    now: datetime,
) -> None:
    target = str(body[TARGET_FIELD[kind]])
    sender = str(header["sender"]["agency"])
    rows = db.execute(
        "SELECT id, type, digest FROM inbox WHERE sender = ? AND id != ? "
        "AND (id = ? OR json_extract(header, '$.derived_from') = ?)",
        (sender, header["id"], target, target),
    ).fetchall()
    reason = str(body.get("reason", "other"))
    action = body.get("action_requested")
    for message_id, message_type, message_digest in rows:
        db.execute(
            "INSERT INTO message_marks (message_id, mark, by_message_id, reason, action, at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (message_id, MARK[kind], header["id"], reason, action, rfc3339(now)),
        )
        why = f"{kind} {header['id']} from {sender}: {reason}"
        audit_log.append(
            db,
            [
                AuditEntry(
                    operation=Operation.ALTERATION,
                    actor=agency,
                    actor_kind=ActorKind.SYSTEM,
                    agency=agency,
                    justification=why,
                    message_id=str(message_id),
                    message_type=str(message_type),
                    peer=sender,
                    digest=str(message_digest),
                    detail=f"marked {MARK[kind]}",
                )
            ],
            now=now,
        )
        if kind == WITHDRAWAL and action == "erase":
            retention.erase_received(db, str(message_id), why=why, agency=agency, now=now)


def marks(db: sqlite3.Connection, message_id: str) -> dict[str, Any]:
    """What the API shows about a message's lawful-processing state."""
    rows = db.execute(
        "SELECT mark, by_message_id, reason, action, at FROM message_marks "
        "WHERE message_id = ? ORDER BY seq",
        (message_id,),
    ).fetchall()
    history = [
        {"mark": r[0], "by_message_id": r[1], "reason": r[2], "action": r[3], "at": r[4]}
        for r in rows
    ]
    states = {h["mark"] for h in history}
    status = "withdrawn" if "withdrawn" in states else "corrected" if states else "current"
    erased = retention.erasures(db, message_id)
    return {"status": status, "marks": history, "erased": erased}
