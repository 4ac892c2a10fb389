"""The tamper-evident audit log, without I/O: records, hash chain, Merkle roots, checkpoints.

What it is for
    Every collection, consultation, disclosure, transfer, alteration and erasure of personal
    data is one :class:`AuditRecord` (who, when, why, which message, which peer, the digest of
    the message bytes; never the body). Records are chained: ``h_n = SHA256(h_{n-1} ||
    canonical(record_n))`` from :data:`GENESIS`, so altering, deleting or reordering a row
    breaks the chain at that row. Periodically the node seals a :class:`Checkpoint` over the
    records since the previous one: an RFC 6962 Merkle tree head of their canonical bytes plus
    the chain head, signed as a compact JWS (:data:`CHECKPOINT_TYP`) with the agency's signing
    key and held by the national gateway. A node that rewrites its whole chain (or drops its
    tail) no longer matches the roots the gateway holds.

    :func:`verify` checks records against checkpoints and names the FIRST broken position.

What it must never do
    Read clocks, files or sockets (``now`` and keys are passed in), hold a message body, or
    accept a checkpoint whose signature was not verified (:func:`open_checkpoint` verifies
    before it parses the payload into a :class:`Checkpoint`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec

from broker.core import canonical, jose
from broker.errors import InvalidMessage, Reason

CHECKPOINT_TYP: Final = "casebridge-audit-checkpoint+jws"
CHECKPOINT_VERSION: Final = 1
# Fixed start of every chain: a labelled constant, so a chain cannot be spliced onto another
# hash scheme's genesis by accident.
GENESIS: Final = hashlib.sha256(b"casebridge audit log v1 genesis").digest()
LEAF_PREFIX: Final = b"\x00"
NODE_PREFIX: Final = b"\x01"
MAX_TEXT: Final = 2000


class Operation(StrEnum):
    """What happened to personal data (the processing operations the law requires logged)."""

    COLLECTION = "collection"  # a message was received and stored
    CONSULTATION = "consultation"  # a person opened a received message
    DISCLOSURE = "disclosure"  # a message was sent to an agency (one record per recipient)
    TRANSFER = "transfer"  # a border gateway relayed a message across the border
    REFUSAL = "refusal"  # a border gateway refused to relay a message
    ALTERATION = "alteration"  # a correction or withdrawal was applied to a stored message
    ERASURE = "erasure"  # a body was erased (retention, withdrawal)
    ACCESS = "access"  # console: a person signed in or out, or was refused (broker.console)
    ADMINISTRATION = "administration"  # console: accounts changed, a four-eyes release decided


class ActorKind(StrEnum):
    """Who acted: a named person, or the system itself (node, gateway, purge job)."""

    PERSON = "person"
    SYSTEM = "system"


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditEntry:
    """What the caller knows about one operation; the log adds sequence, time and hash."""

    operation: Operation
    actor: str
    actor_kind: ActorKind
    agency: str
    justification: str | None = None
    message_id: str | None = None
    message_type: str | None = None
    peer: str | None = None
    digest: str | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if not self.actor or not self.agency:
            raise ValueError("an audit entry needs an actor and an agency")
        for name in ("justification", "detail"):
            value = getattr(self, name)
            if value is not None and len(value) > MAX_TEXT:
                object.__setattr__(self, name, value[:MAX_TEXT])


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditRecord:
    """One row of the log: an entry with its sequence number (from 1) and time."""

    seq: int
    at: str  # RFC 3339 UTC, whole seconds
    entry: AuditEntry

    def to_json(self) -> dict[str, Any]:
        """The canonical form's members (also the export format, without the hash)."""
        e = self.entry
        return {
            "seq": self.seq,
            "at": self.at,
            "operation": e.operation.value,
            "actor": e.actor,
            "actor_kind": e.actor_kind.value,
            "agency": e.agency,
            "justification": e.justification,
            "message_id": e.message_id,
            "message_type": e.message_type,
            "peer": e.peer,
            "digest": e.digest,
            "detail": e.detail,
        }

    def canonical(self) -> bytes:
        """The bytes that are chained and that form the record's Merkle leaf."""
        return canonical.dumps({"v": 1, **self.to_json()})

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> AuditRecord:
        return cls(
            seq=int(raw["seq"]),
            at=str(raw["at"]),
            entry=AuditEntry(
                operation=Operation(raw["operation"]),
                actor=str(raw["actor"]),
                actor_kind=ActorKind(raw["actor_kind"]),
                agency=str(raw["agency"]),
                justification=raw.get("justification"),
                message_id=raw.get("message_id"),
                message_type=raw.get("message_type"),
                peer=raw.get("peer"),
                digest=raw.get("digest"),
                detail=raw.get("detail"),
            ),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredRecord:
    """A record as read back from storage, with the chain hash stored next to it."""

    record: AuditRecord
    chain_hash: bytes


def rfc3339(when: datetime) -> str:
    """The log's time format: RFC 3339 UTC with ``Z``, whole seconds."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def chain(previous: bytes, record: AuditRecord) -> bytes:
    """``SHA256(previous || canonical(record))``."""
    return hashlib.sha256(previous + record.canonical()).digest()


def append(previous: bytes, last_seq: int, entry: AuditEntry, *, now: datetime) -> StoredRecord:
    """The next record after ``last_seq`` (whose chain hash is ``previous``)."""
    record = AuditRecord(seq=last_seq + 1, at=rfc3339(now), entry=entry)
    return StoredRecord(record=record, chain_hash=chain(previous, record))


# --------------------------------------------------------------- RFC 6962 Merkle ---


def leaf_hash(data: bytes) -> bytes:
    """``SHA256(0x00 || data)`` (RFC 6962 section 2.1)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA256(0x01 || left || right)``."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2): the RFC's split point."""
    return 1 << ((n - 1).bit_length() - 1)


def _root_of_hashes(leaves: Sequence[bytes]) -> bytes:
    n = len(leaves)
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(_root_of_hashes(leaves[:k]), _root_of_hashes(leaves[k:]))


def merkle_root(data: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of ``data`` (leaf inputs); SHA256 of nothing for no leaves."""
    if not data:
        return hashlib.sha256(b"").digest()
    return _root_of_hashes([leaf_hash(d) for d in data])


def inclusion_proof(data: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``data`` (RFC 6962 section 2.1.1)."""
    if not 0 <= index < len(data):
        raise ValueError("leaf index out of range")

    def path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
        n = len(leaves)
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*path(m, leaves[:k]), _root_of_hashes(leaves[k:])]
        return [*path(m - k, leaves[k:]), _root_of_hashes(leaves[:k])]

    return path(index, [leaf_hash(d) for d in data])


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """True if ``proof`` shows leaf input ``leaf`` at ``index`` in a tree of ``size`` with
    head ``root`` (RFC 9162 section 2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf_hash(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


# -------------------------------------------------------------------- checkpoints ---


@dataclass(frozen=True, kw_only=True, slots=True)
class Checkpoint:
    """A signed statement by ``node``: records ``first_seq..last_seq`` have Merkle root
    ``root`` and the chain hash after ``last_seq`` is ``chain_head``."""

    node: str
    first_seq: int
    last_seq: int
    root: bytes
    chain_head: bytes
    at: str

    @property
    def tree_size(self) -> int:
        return self.last_seq - self.first_seq + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "v": CHECKPOINT_VERSION,
            "node": self.node,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "tree_size": self.tree_size,
            "root": self.root.hex(),
            "chain_head": self.chain_head.hex(),
            "at": self.at,
        }


def make_checkpoint(
    node: str, records: Sequence[StoredRecord], *, now: datetime
) -> Checkpoint | None:
    """The checkpoint over ``records`` (consecutive, oldest first); None if there are none."""
    if not records:
        return None
    return Checkpoint(
        node=node,
        first_seq=records[0].record.seq,
        last_seq=records[-1].record.seq,
        root=merkle_root([r.record.canonical() for r in records]),
        chain_head=records[-1].chain_hash,
        at=rfc3339(now),
    )


def sign_checkpoint(checkpoint: Checkpoint, key: ec.EllipticCurvePrivateKey, *, kid: str) -> str:
    """The checkpoint as a compact JWS signed with the agency's signing key."""
    return jose.sign_compact(
        canonical.dumps(checkpoint.to_json()), key, kid=kid, typ=CHECKPOINT_TYP
    )


def checkpoint_kid(token: str) -> str:
    """The ``kid`` a checkpoint claims (header checked, signature NOT verified): which key
    to look up."""
    return jose.parse_compact(token, typ=CHECKPOINT_TYP, what="audit checkpoint").kid


def open_checkpoint(token: str, key: ec.EllipticCurvePublicKey, *, node: str) -> Checkpoint:
    """Verify a checkpoint's signature with ``key`` (the directory's signing key of ``node``),
    then parse it. Raises ``InvalidMessage`` for any fault."""
    unverified = jose.parse_compact(token, typ=CHECKPOINT_TYP, what="audit checkpoint")
    payload = jose.verify_compact(unverified, key, what="audit checkpoint")
    raw = canonical.loads_strict(payload, what="audit checkpoint")
    checkpoint = _checkpoint_from_json(raw)
    if checkpoint is None:
        raise InvalidMessage(Reason.MALFORMED, "audit checkpoint payload is malformed")
    if checkpoint.node != node:
        raise InvalidMessage(
            Reason.SENDER_MISMATCH, f"checkpoint of {checkpoint.node!r} presented as {node!r}"
        )
    return checkpoint


def _checkpoint_from_json(raw: object) -> Checkpoint | None:
    if not isinstance(raw, dict) or raw.get("v") != CHECKPOINT_VERSION:
        return None
    try:
        checkpoint = Checkpoint(
            node=str(raw["node"]),
            first_seq=int(raw["first_seq"]),
            last_seq=int(raw["last_seq"]),
            root=bytes.fromhex(raw["root"]),
            chain_head=bytes.fromhex(raw["chain_head"]),
            at=str(raw["at"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if checkpoint.tree_size != raw.get("tree_size") or checkpoint.tree_size < 1:
        return None
    return checkpoint


# ------------------------------------------------------------------------ verify ---


class Problem(StrEnum):
    """How a log fails verification."""

    ALTERED = "altered"  # a record's content does not hash to its stored chain hash
    MISSING = "missing"  # a sequence number is skipped: a row was deleted
    REORDERED = "reordered"  # sequence numbers go backwards or repeat
    TRUNCATED = "truncated"  # a checkpoint covers records the log no longer has
    ROOT_MISMATCH = "root_mismatch"  # records (re-chained consistently) differ from a checkpoint
    CHECKPOINT_CONFLICT = "checkpoint_conflict"  # two checkpoints disagree about the same range


@dataclass(frozen=True, kw_only=True, slots=True)
class Finding:
    """The first broken position: the sequence number and what is wrong there."""

    problem: Problem
    seq: int
    detail: str

    def __str__(self) -> str:
        return f"{self.problem.value} at seq {self.seq}: {self.detail}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Report:
    """Result of :func:`verify`: ``finding`` is None when everything checks out."""

    records: int
    checkpoints: int
    covered_to: int  # last sequence number vouched for by a checkpoint (0: none)
    finding: Finding | None = None

    @property
    def ok(self) -> bool:
        return self.finding is None


def _chain_finding(records: Sequence[StoredRecord]) -> tuple[Finding | None, list[bytes]]:
    """Walk the chain; the first finding and the recomputed hashes up to it."""
    previous = GENESIS
    hashes: list[bytes] = []
    seqs = {r.record.seq for r in records}
    for position, stored in enumerate(records, start=1):
        seq = stored.record.seq
        if seq != position:
            if seq > position and position not in seqs:
                return Finding(
                    problem=Problem.MISSING,
                    seq=position,
                    detail=f"record {position} is missing (next present is {seq})",
                ), hashes
            return Finding(
                problem=Problem.REORDERED,
                seq=position,
                detail=f"position {position} holds record {seq}",
            ), hashes
        expected = chain(previous, stored.record)
        if expected != stored.chain_hash:
            return Finding(
                problem=Problem.ALTERED,
                seq=seq,
                detail="content does not match its chain hash (altered or re-chained)",
            ), hashes
        hashes.append(expected)
        previous = expected
    return None, hashes


def verify(records: Sequence[StoredRecord], checkpoints: Sequence[Checkpoint]) -> Report:
    """Check the chain of ``records`` (as stored, in storage order) and every (already
    signature-verified) checkpoint against them. Names the first broken position."""
    finding, _hashes = _chain_finding(records)
    covered = max((c.last_seq for c in checkpoints), default=0)
    candidates: list[Finding] = [finding] if finding is not None else []
    by_range: dict[tuple[int, int], Checkpoint] = {}
    for cp in sorted(checkpoints, key=lambda c: (c.first_seq, c.last_seq)):
        seen = by_range.get((cp.first_seq, cp.last_seq))
        if seen is not None and (seen.root, seen.chain_head) != (cp.root, cp.chain_head):
            candidates.append(
                Finding(
                    problem=Problem.CHECKPOINT_CONFLICT,
                    seq=cp.first_seq,
                    detail=f"two checkpoints for {cp.first_seq}..{cp.last_seq} disagree",
                )
            )
            continue
        by_range[(cp.first_seq, cp.last_seq)] = cp
        if cp.last_seq > len(records):
            candidates.append(
                Finding(
                    problem=Problem.TRUNCATED,
                    seq=len(records) + 1,
                    detail=f"the log ends at {len(records)} but a checkpoint of {cp.at} "
                    f"covers up to {cp.last_seq}",
                )
            )
            continue
        if finding is not None and cp.last_seq >= finding.seq:
            continue  # a root mismatch there follows from the row the chain walk names
        window = records[cp.first_seq - 1 : cp.last_seq]
        if [r.record.seq for r in window] != list(range(cp.first_seq, cp.last_seq + 1)):
            continue  # the chain walk reports the gap or reordering itself
        root = merkle_root([r.record.canonical() for r in window])
        if root != cp.root or window[-1].chain_hash != cp.chain_head:
            # Without the original leaves no single row can be proven altered: the range
            # start is the earliest position the checkpoint no longer vouches for.
            candidates.append(
                Finding(
                    problem=Problem.ROOT_MISMATCH,
                    seq=cp.first_seq,
                    detail=f"records {cp.first_seq}..{cp.last_seq} do not match the "
                    f"checkpoint of {cp.at}",
                )
            )
    first = min(candidates, key=lambda f: f.seq, default=None)
    return Report(
        records=len(records), checkpoints=len(checkpoints), covered_to=covered, finding=first
    )
