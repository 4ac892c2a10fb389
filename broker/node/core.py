"""The node's decisions, with no I/O of their own: the node in the shape of ``gateway/border.py``.

What it is for
    :class:`NodeCore` decides; :class:`broker.node.service.Node` (the thin shell) feeds it and
    carries out what it returns, around the NATS transport, the HTTP API and the SQLite store.

    * :meth:`NodeCore.prepare` (:meth:`~NodeCore.clear` + :meth:`~NodeCore.seal`): a case
      worker's draft becomes a policy-cleared, sealed message, or ``PolicyDenied`` /
      ``SchemaInvalid`` / ``BadRequest`` before anything is stored.
    * :meth:`NodeCore.on_delivery`: the bytes of one delivery become a :class:`Settlement`: the
      one store write that settles it (a delivered message, received evidence, or a refusal),
      the evidence to send back once it is committed, and the decision events (log lines,
      metrics) to emit after the commit. Our own faults and transient ones are raised, never
      settled: a peer never receives evidence for a fault of ours.
    * :meth:`NodeCore.evidence`: ``delivered`` / ``rejected`` / ``read`` evidence, built by the
      one builder the gateways use too (:func:`broker.core.evidence.build_evidence`).

    It reads the store only through :class:`NodeView` (replay store, earlier receipts, the
    outbox), as the border reads its crossings: the shell decides when and where (a worker
    thread, inside a batch's transaction).

What it must never do
    Write anything, import asyncio, nats, aiohttp or sqlite3, read a clock (``now`` is passed
    in) or draw an id or salt except through the injected sources; answer evidence with
    evidence; send evidence to a sender whose signature did not verify.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Protocol

from broker.core import jose
from broker.core.attachments import Descriptor, Manifest
from broker.core.envelope import (
    DEFAULT_LIMITS,
    Limits,
    OpenedMessage,
    RecipientIdentity,
    SenderIdentity,
    authenticated_header,
    open_message,
    seal,
)
from broker.core.evidence import EvidenceKind, Subject, build_evidence
from broker.core.header import Header, Onward, agency_country, parse_header
from broker.core.peek import unverified_header
from broker.core.trust import KeyResolver
from broker.errors import CasebridgeError, InvalidMessage, LocalError, PolicyDenied, Reason
from broker.node import derived
from broker.node.errors import BadRequest, NotFound
from broker.node.model import (
    Draft,
    EvidenceRecord,
    InboxMessage,
    OutboxMessage,
    Receipt,
    Rejection,
    SealedRecord,
    SentSubject,
    is_evidence_type,
    iso,
)
from broker.node.policy import Clearance, HonestyCheck, Preflight, RecipientCheck

# Refusals that say our side is not ready (not that the peer's message is bad): retry later.
TRANSIENT_REASONS: Final = frozenset({Reason.DIRECTORY_STALE})
GATEWAY_KIND: Final = "gateway"


class Schemas(Protocol):
    """What the node needs from ``broker.core.schemas.SchemaRegistry``."""

    def validate(self, message_type: str, version: int, body: object) -> None: ...

    def categories(self, message_type: str, version: int, body: object) -> frozenset[str]: ...


class NodeView(Protocol):
    """What the decisions read of the node's store (``broker.node.store.Store`` is one)."""

    def processed(self, receipt: Receipt) -> bool: ...

    def quarantined(self, receipt: Receipt) -> bool: ...

    def settled_or_held(self, receipt: Receipt, *, held_counts: bool = True) -> bool: ...

    def seen(self, message_id: str, *, now: datetime) -> bool: ...

    def accepted_copy(self, digest: str) -> bool: ...

    def accepted_evidence(self, message_id: str) -> bool: ...

    def outbox_message(self, message_id: str) -> OutboxMessage | None: ...

    def sent_subject(self, message_id: str) -> SentSubject | None: ...

    def inbox_message(self, message_id: str) -> InboxMessage | None: ...


def wire_digest(data: bytes) -> str:
    """Digest of wire bytes as evidence names them (base64url SHA-256)."""
    return jose.sha256_b64url(data)


# ------------------------------------------------------------------ outputs ---


class Outcome(StrEnum):
    """What a delivery came to."""

    SETTLED_BEFORE = "settled_before"  # a lost ack (or in the quarantine): acknowledge only
    DELIVERED = "delivered"
    EVIDENCE = "evidence"  # evidence about a message of ours, recorded (or dropped)
    REJECTED = "rejected"
    DUPLICATE = "duplicate"  # a copy of something accepted before: acknowledge only
    HELD = "held"  # opened, its files not verified yet: kept (no evidence) until they are


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreDelivery:
    """Write: the message, its receipt and replay entry, and our ``delivered`` evidence."""

    header: Mapping[str, Any]
    body: Mapping[str, Any]
    receipt: Receipt
    replay_expires_at: int
    now: datetime
    evidence: EvidenceRecord
    sealed: SealedRecord | None
    wire: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreEvidence:
    """Write: evidence received about a message of ours (``evidence`` None: dropped)."""

    message_id: str
    receipt: Receipt
    replay_expires_at: int
    now: datetime
    evidence: EvidenceRecord | None
    wire: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreRejection:
    """Write: the refusal, and the ``rejected`` evidence we produce (if any)."""

    rejection: Rejection
    now: datetime
    evidence: EvidenceRecord | None
    sealed: SealedRecord | None


@dataclass(frozen=True, kw_only=True, slots=True)
class HoldDelivery:
    """Write: keep an opened message whose files have not all verified (no evidence, no
    replay entry: it is decided again from its wire bytes once they have,
    broker/node/attachment_transfer.py)."""

    opened: OpenedMessage
    receipt: Receipt
    wire: bytes
    now: datetime


class FilesView(Protocol):
    """What the core reads of the node's files of messages (the attachment spool)."""

    def files_ready(self, opened: OpenedMessage) -> bool: ...


Write = StoreDelivery | StoreEvidence | StoreRejection | HoldDelivery


@dataclass(frozen=True, kw_only=True, slots=True)
class Delivered:
    """Event: a message was delivered to this agency."""

    message_id: str
    sender: str
    type: str
    trace: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Refused:
    """Event: a delivery was refused (claimed values: not verified)."""

    claimed_message_id: str | None
    claimed_sender: str | None
    reason: str
    rule_id: str | None
    trace: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class EvidenceReceived:
    """Event: evidence about a message of ours was recorded."""

    kind: str
    subject_id: str
    subject_created_at: str
    actor: str
    at: str


@dataclass(frozen=True, kw_only=True, slots=True)
class EvidenceDropped:
    """Event: evidence that is not about a message of ours, or from nobody involved."""

    subject_id: str
    why: str


@dataclass(frozen=True, kw_only=True, slots=True)
class EvidenceNotSealed:
    """Event: evidence we owe could not be sealed (e.g. its addressee left the directory)."""

    subject_id: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class DuplicateAcknowledged:
    """Event: a copy of something accepted before, acknowledged and nothing else."""

    claimed_message_id: str | None
    sequence: int


Event = (
    Delivered
    | Refused
    | EvidenceReceived
    | EvidenceDropped
    | EvidenceNotSealed
    | DuplicateAcknowledged
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Settlement:
    """What one delivery comes to: the write that settles it (None: nothing to write), the
    evidence to submit after the commit and the ack, and the events to emit after the commit.
    ``opened``: how opening went, for the metric (None: not opened, settled before)."""

    outcome: Outcome
    write: Write | None = None
    sealed: SealedRecord | None = None
    events: tuple[Event, ...] = ()
    opened: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Produced:
    """Evidence we produce: the local record, the sealed message (None: it cannot be sent, the
    record says why) and the events to emit."""

    record: EvidenceRecord
    sealed: SealedRecord | None
    events: tuple[Event, ...] = ()


class _PendingReplay:
    """The replay store as :func:`open_message` sees it: ``remember`` only notes the id; the
    store writes it inside the delivery's commit, so a crash never leaves an id remembered for
    a message that was not stored."""

    def __init__(self, view: NodeView) -> None:
        self._view = view
        self.expires_at: int | None = None
        # The answer of the one store read, for the same id and time: open_message asks
        # ``seen`` first and ``remember`` last, with nothing written in between (the write
        # comes later, in the delivery's transaction, which re-checks the id itself).
        self._answered: tuple[str, datetime, bool] | None = None

    def seen(self, message_id: str, *, now: datetime) -> bool:
        if self._answered is not None and self._answered[:2] == (message_id, now):
            return self._answered[2]
        seen = self._view.seen(message_id, now=now)
        self._answered = (message_id, now, seen)
        return seen

    def remember(self, message_id: str, *, expires_at: int, now: datetime) -> bool:
        if self.seen(message_id, now=now):
            return False
        self.expires_at = expires_at
        return True


# --------------------------------------------------------------------- core ---


class NodeCore:
    """One agency's decisions. Every collaborator is injected; see the module docstring."""

    def __init__(
        self,
        *,
        sender: SenderIdentity,
        recipient: RecipientIdentity,
        resolver: KeyResolver,
        schemas: Schemas,
        view: NodeView,
        preflight: Preflight,
        recipient_check: RecipientCheck | None = None,
        new_id: Callable[[], str],
        salt: Callable[[], bytes],
        lifetime: timedelta = timedelta(days=30),
        limits: Limits = DEFAULT_LIMITS,
        files: FilesView | None = None,
    ) -> None:
        if sender.agency_id != recipient.agency_id:
            raise BadRequest("signing and decryption identities belong to different agencies")
        self.agency_id = sender.agency_id
        self._sender = sender
        self._recipient = recipient
        self.resolver = resolver
        self._schemas = schemas
        self._view = view
        self._preflight = preflight
        # Public: fault tests replace it (tests/integration/test_poison.py).
        self.recipient_check = recipient_check or HonestyCheck(schemas)
        self._new_id = new_id
        self._salt = salt
        self._lifetime = lifetime
        self._limits = limits
        # The attachment spool (None: this node carries no files; a message with files is
        # refused).
        self.files = files

    # -------------------------------------------------------------------- send

    def draft_header(
        self, draft: Draft, now: datetime, *, files: tuple[Descriptor, ...] = ()
    ) -> Header:
        """The header of ``draft``: recipients (of a reply, of a task force), conversation,
        legal basis, lifetime. Raises ``BadRequest``/``NotFound`` for an unusable draft."""
        if is_evidence_type(draft.type):
            raise BadRequest("evidence is produced by the node, never submitted")
        conversation = self._new_id()
        recipients = tuple(draft.to)
        legal_basis = draft.legal_basis
        if draft.in_reply_to is not None:
            original: Mapping[str, Any]
            received = self._view.inbox_message(draft.in_reply_to)
            if received is not None:
                original = received.header
                default_to: tuple[str, ...] = (received.sender,)
            else:
                sent = self._view.outbox_message(draft.in_reply_to)
                if sent is None or is_evidence_type(sent.type):
                    raise NotFound(f"no message {draft.in_reply_to} to reply to")
                original = sent.header
                default_to = tuple(sent.header["recipients"])
            conversation = str(original["conversation"])
            recipients = recipients or default_to
            legal_basis = legal_basis or str(original["legal_basis"])
        if draft.task_force is not None:
            members = self.resolver.task_force(draft.task_force, now=now)
            recipients = tuple(m for m in members if m != self.agency_id)
        if not recipients:
            raise BadRequest("a message needs recipients (to, task_force, or in_reply_to)")
        if not legal_basis:
            raise BadRequest("legal_basis is required")
        iat = int(now.timestamp())
        return Header(
            fed=self.resolver.federation_id,
            id=self._new_id(),
            type=draft.type,
            type_version=draft.type_version,
            conversation=conversation,
            in_reply_to=draft.in_reply_to,
            sender=self.agency_id,
            recipients=tuple(sorted(set(recipients))),
            task_force=draft.task_force,
            handling=draft.handling,
            tlp=draft.tlp,
            purpose=draft.purpose,
            legal_basis=legal_basis,
            categories=tuple(sorted(set(draft.categories))),
            onward=Onward(allowed=draft.onward_allowed, exclude=draft.onward_exclude),
            derived_from=draft.derived_from,
            iat=iat,
            exp=iat + int(self._lifetime.total_seconds()),
            due=draft.due,
            attachments=files,
        ).validate()

    def clear(
        self, draft: Draft, now: datetime, *, files: tuple[Descriptor, ...] = ()
    ) -> tuple[Header, Clearance]:
        """Build the header of a draft and run pre-flight on it (raises ``PolicyDenied``).
        ``files``: the descriptors of the draft's uploaded files, in order."""
        header = self.draft_header(draft, now, files=files)
        derived.refuse_excluded(header, self._original_onward)
        clearance = self._preflight(header, draft.body)
        return replace(header, categories=clearance.categories), clearance

    def _original_onward(self, message_id: str) -> Onward | None:
        """The onward marking of a message we received (None: not one of ours)."""
        found = self._view.inbox_message(message_id)
        return parse_header(found.header).onward if found is not None else None

    def seal(
        self,
        header: Header,
        body: Mapping[str, Any],
        now: datetime,
        *,
        attachments: Sequence[Manifest] = (),
    ) -> SealedRecord:
        """Seal ``body`` under ``header`` for its recipients (``attachments``: the manifests
        of the files ``header.attachments`` declares, in the same order)."""
        wire = seal(
            header=header,
            body=body,
            sender=self._sender,
            resolver=self.resolver,
            now=now,
            salt=self._salt(),
            attachments=attachments,
        )
        return SealedRecord(header=header.to_json(), body=body, wire=wire, digest=wire_digest(wire))

    def prepare(self, draft: Draft, now: datetime) -> tuple[Header, Clearance, SealedRecord]:
        """A draft cleared by pre-flight and sealed: ready for the outbox."""
        header, clearance = self.clear(draft, now)
        return header, clearance, self.seal(header, clearance.body, now)

    # ---------------------------------------------------------------- evidence

    def evidence(
        self,
        kind: EvidenceKind,
        subject: Subject,
        now: datetime,
        *,
        reason: str | None = None,
        rule_id: str | None = None,
        detail: str | None = None,
    ) -> Produced:
        """The local record of evidence we produce, and the sealed message carrying it (None
        when the subject's sender cannot be addressed: the record says why)."""
        record = EvidenceRecord(
            subject_id=subject.message_id,
            kind=kind,
            actor=self.agency_id,
            at=iso(now),
            reason=reason,
            rule_id=rule_id,
            detail=detail,
        )
        try:
            header, body = build_evidence(
                federation_id=self.resolver.federation_id,
                kind=kind,
                subject=subject,
                actor=self.agency_id,
                message_id=self._new_id(),
                now=now,
                reason=reason,
                rule_id=rule_id,
                detail=detail or "",
                lifetime=self._lifetime,
            )
            self._schemas.validate(header.type, header.type_version, body)
            sealed = self.seal(header, body, now)
        except CasebridgeError as exc:
            note = f"evidence not sent to {subject.sender}: {exc.reason.value}"
            return Produced(
                record=replace(record, detail=f"{detail}; {note}" if detail else note),
                sealed=None,
                events=(EvidenceNotSealed(subject_id=subject.message_id, reason=exc.reason.value),),
            )
        return Produced(record=replace(record, evidence_id=sealed.message_id), sealed=sealed)

    # ----------------------------------------------------------------- receive

    def on_delivery(
        self,
        data: bytes,
        receipt: Receipt,
        now: datetime,
        *,
        trace: str | None = None,
        retry: bool = False,
    ) -> Settlement:
        """Decide one delivery (see the module docstring). A delivery settled before, or one
        in the quarantine (in an operator's hands: a lost ack brought it back), is settled
        already. ``retry``: an operator's retry of a quarantined delivery (its quarantine
        entry does not count). Raises our own and transient faults."""
        if self._view.settled_or_held(receipt, held_counts=not retry):
            return Settlement(outcome=Outcome.SETTLED_BEFORE)
        pending = _PendingReplay(self._view)
        try:
            opened = open_message(
                data,
                recipient=self._recipient,
                resolver=self.resolver,
                replay=pending,
                validator=self._schemas,
                now=now,
                limits=self._limits,
                admit=self._admit,
            )
            if pending.expires_at is None:  # pragma: no cover - open_message always remembers
                raise InvalidMessage(Reason.REPLAY, "replay store was not consulted")
            if is_evidence_type(opened.header.type):
                return self._accept_evidence(opened, receipt, pending.expires_at, now, wire=data)
            return self._accept(opened, receipt, pending.expires_at, now, trace, wire=data)
        except CasebridgeError as exc:
            if isinstance(exc, LocalError) or exc.reason in TRANSIENT_REASONS:
                raise
            if exc.reason is Reason.REPLAY:
                duplicate = self._copy_of_accepted(data, receipt, now)
                if duplicate is not None:
                    return duplicate
            return self._reject(data, receipt, exc, now, trace)

    def _copy_of_accepted(self, data: bytes, receipt: Receipt, now: datetime) -> Settlement | None:
        """Whether a delivery refused as a replay is only a copy of what we already accepted:
        the same bytes (JetStream stored a republication again, e.g. after a server restart
        lost its duplicate window), or a border gateway's evidence decided again (the same
        derived id, sealed anew). Such a copy is acknowledged and nothing else: no rejection,
        no ``rejected`` evidence, no replay alarm. Anything else with a known id is a replay."""
        duplicate = self._view.accepted_copy(receipt.digest)
        if not duplicate:
            header = authenticated_header(
                data, resolver=self.resolver, now=now, limits=self._limits
            )
            duplicate = (
                header is not None
                and is_evidence_type(header.type)
                and self._view.accepted_evidence(header.id)
            )
        if not duplicate:
            return None
        claimed = unverified_header(data)
        return Settlement(
            outcome=Outcome.DUPLICATE,
            events=(
                DuplicateAcknowledged(
                    claimed_message_id=claimed.id if claimed is not None else None,
                    sequence=receipt.sequence,
                ),
            ),
            opened="duplicate",
        )

    def _admit(self, opened: OpenedMessage) -> None:
        if not is_evidence_type(opened.header.type):
            self.recipient_check(opened)

    def _accept(
        self,
        opened: OpenedMessage,
        receipt: Receipt,
        expires_at: int,
        now: datetime,
        trace: str | None,
        *,
        wire: bytes,
    ) -> Settlement:
        header = opened.header
        if opened.attachments:
            # Delivered only once every file verified (docs/protocol.md 17.3): until then the
            # message is held, without evidence; a refused file refuses it (files_ready raises).
            if self.files is None:
                raise InvalidMessage(Reason.POLICY_DENIED, "this node accepts no attachments")
            if not self.files.files_ready(opened):
                return Settlement(
                    outcome=Outcome.HELD,
                    write=HoldDelivery(opened=opened, receipt=receipt, wire=wire, now=now),
                    opened="accepted",
                )
        produced = self.evidence(
            EvidenceKind.DELIVERED, Subject.of(header, opened.routed.digest), now
        )
        return Settlement(
            outcome=Outcome.DELIVERED,
            write=StoreDelivery(
                header=header.to_json(),
                body=opened.body,
                receipt=receipt,
                replay_expires_at=expires_at,
                now=now,
                evidence=produced.record,
                sealed=produced.sealed,
                wire=wire,
            ),
            sealed=produced.sealed,
            events=(
                *produced.events,
                Delivered(
                    message_id=header.id, sender=header.sender, type=header.type, trace=trace
                ),
            ),
            opened="accepted",
        )

    def _reject(
        self,
        data: bytes,
        receipt: Receipt,
        exc: CasebridgeError,
        now: datetime,
        trace: str | None,
    ) -> Settlement:
        claimed = unverified_header(data)
        rule_id = exc.rule_id if isinstance(exc, PolicyDenied) else None
        rejection = Rejection(
            digest=receipt.digest,
            sequence=receipt.sequence,
            message_id=claimed.id if claimed is not None else None,
            sender=claimed.sender if claimed is not None else None,
            type=claimed.type if claimed is not None else None,
            reason=exc.reason.value,
            rule_id=rule_id,
            detail=exc.detail,
            at=iso(now),
        )
        record: EvidenceRecord | None = None
        sealed: SealedRecord | None = None
        events: tuple[Event, ...] = ()
        # Evidence only to a sender whose signature verified: junk merely naming an agency
        # as its sender must not make us send signed evidence to that agency.
        sender = authenticated_header(data, resolver=self.resolver, now=now, limits=self._limits)
        if sender is not None and not is_evidence_type(sender.type):
            produced = self.evidence(
                EvidenceKind.REJECTED,
                Subject.of(sender, receipt.digest),
                now,
                reason=exc.reason.value,
                rule_id=rule_id,
                detail=exc.detail,
            )
            record, sealed, events = produced.record, produced.sealed, produced.events
        elif claimed is not None and not is_evidence_type(claimed.type):
            record = EvidenceRecord(
                subject_id=claimed.id,
                kind=EvidenceKind.REJECTED,
                actor=self.agency_id,
                at=iso(now),
                reason=exc.reason.value,
                rule_id=rule_id,
                detail=f"{exc.detail}; evidence not sent to {claimed.sender}: "
                "its signature did not verify",
            )
        return Settlement(
            outcome=Outcome.REJECTED,
            write=StoreRejection(rejection=rejection, now=now, evidence=record, sealed=sealed),
            sealed=sealed,
            events=(
                *events,
                Refused(
                    claimed_message_id=rejection.message_id,
                    claimed_sender=rejection.sender,
                    reason=rejection.reason,
                    rule_id=rule_id,
                    trace=trace,
                ),
            ),
            opened="refused",
        )

    def _accept_evidence(
        self,
        opened: OpenedMessage,
        receipt: Receipt,
        expires_at: int,
        now: datetime,
        *,
        wire: bytes,
    ) -> Settlement:
        header, body = opened.header, opened.body
        kind = EvidenceKind(header.type.removeprefix("evidence."))
        subject_id = str(body["subject_message_id"])
        subject = self._view.sent_subject(subject_id)
        record: EvidenceRecord | None = None
        event: Event
        if subject is None or is_evidence_type(subject.type):
            event = EvidenceDropped(subject_id=subject_id, why="not a message we sent")
        elif not self.may_attest(opened, subject):
            event = EvidenceDropped(subject_id=subject_id, why="sender not involved")
        else:
            record = EvidenceRecord(
                subject_id=subject_id,
                kind=kind,
                actor=str(body["actor"]),
                at=str(body["at"]),
                reason=body.get("reason"),
                rule_id=body.get("rule_id"),
                detail=body.get("detail"),
                evidence_id=header.id,
                direction="received",
                digest_matches=body["subject_digest"] == subject.digest,
            )
            event = EvidenceReceived(
                kind=kind.value,
                subject_id=subject_id,
                subject_created_at=subject.created_at,
                actor=str(body["actor"]),
                at=str(body["at"]),
            )
        return Settlement(
            outcome=Outcome.EVIDENCE,
            write=StoreEvidence(
                message_id=header.id,
                receipt=receipt,
                replay_expires_at=expires_at,
                now=now,
                evidence=record,
                wire=wire,
            ),
            events=(event,),
            opened="accepted",
        )

    @staticmethod
    def may_attest(opened: OpenedMessage, subject: OutboxMessage | SentSubject) -> bool:
        """Evidence about our message comes from one of its recipients, or from a border
        gateway of a country it passes through."""
        producer = opened.header.sender
        if producer in subject.header["recipients"]:
            return True
        countries = {agency_country(subject.header["sender"]["agency"])}
        countries.update(subject.header["countries"])
        return opened.routed.sender.kind == GATEWAY_KIND and agency_country(producer) in countries
