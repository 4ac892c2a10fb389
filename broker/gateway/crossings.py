"""What crossed a country's border, shared by every gateway instance of that country.

What it is for
    The border rules on onward transfer and on evidence (``broker/gateway/border.py``,
    docs/protocol.md 10.1) ask "what do we know of message X?": who sent it, to whom it was
    delivered, its onward marking. Several gateway instances of a country share the work (the
    same durables; with Kubernetes, on different machines), so the answer must not depend on
    which instance relayed X: the records live in the country's JetStream key-value bucket
    ``CROSSINGS`` (key ``<message id>.<direction>``, a JSON list of crossings, one per distinct
    wire digest), kept as long as any message can be (90 days + a day).

    :class:`Border` reads records synchronously (it is sans-io); the gateway's loops fetch the
    records a batch needs (:meth:`SharedCrossings.prefetch`) before deciding it, and write the
    batch's new crossings (:meth:`SharedCrossings.record`) before publishing anything, after
    the audit record. Found records are kept in a bounded local cache; absence is never cached.

    What a batch needs is read from the inputs' unverified headers with a cheap, lenient peek
    (:func:`wanted`: it only chooses what to fetch; the border verifies everything). The
    original of a derived message (``derived_from``) is always fetched: another instance may
    hold a stricter copy's onward marking, and the strictest one rules. The subject of a piece
    of evidence (``in_reply_to``) is not fetched when this instance already holds a record of
    it (it relayed the message): records of other copies could only add ways for that
    evidence to pass, so deciding on the held ones can refuse, never wrongly accept. In the
    common case (the instance that relayed a message sees its evidence) that saves two
    key-value round trips per piece of evidence.

What it must never do
    Decide anything, hold message content, or let a record go unwritten before the message it
    describes is published (a failure here naks the batch: retried, never lost).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.core import wire as s
from broker.core.attachments import parse_descriptor
from broker.core.evidence import is_evidence
from broker.core.header import Onward
from broker.core.ids import is_uuid
from broker.federation.streams import ensure_crossings_bucket
from broker.gateway.border import Crossing, Outcome

DIRECTIONS: Final = ("egress", "ingress")
CACHE_SIZE: Final = 50_000
UPDATE_ATTEMPTS: Final = 5


async def open_bucket(js: JetStreamContext) -> KeyValue:
    """The country's bucket, created if the stream setup of an earlier version did not."""
    await ensure_crossings_bucket(js)
    return await js.key_value(s.CROSSINGS_BUCKET)


def _to_json(c: Crossing) -> dict[str, Any]:
    return {
        "message_id": c.message_id,
        "direction": c.direction,
        "digest": c.digest,
        "sender": c.sender,
        "recipients": list(c.recipients),
        "onward": c.onward.to_json(),
        "exp": c.exp,
        **(
            {"attachments": [d.to_json() for d in c.attachments]}
            if c.attachments is not None
            else {}
        ),
    }


def _from_json(raw: dict[str, Any]) -> Crossing:
    return Crossing(
        message_id=str(raw["message_id"]),
        direction=str(raw["direction"]),
        digest=str(raw["digest"]),
        sender=str(raw["sender"]),
        recipients=tuple(str(r) for r in raw["recipients"]),
        onward=Onward(
            allowed=bool(raw["onward"]["allowed"]),
            exclude=tuple(str(c) for c in raw["onward"]["exclude"]),
        ),
        exp=int(raw["exp"]),
        # Absent on records written before descriptors were kept: not counted.
        attachments=(
            tuple(parse_descriptor(d) for d in raw["attachments"]) if "attachments" in raw else None
        ),
    )


def _decode(value: bytes | None) -> list[Crossing]:
    # Written only by this module, by gateways of this country: not peer input.
    return [_from_json(item) for item in json.loads(value or b"[]")]


@dataclass(frozen=True, kw_only=True, slots=True)
class Wanted:
    """The message ids the border rules may look up for a batch (see the module docstring)."""

    originals: frozenset[str] = frozenset()  # derived_from: always fetched
    subjects: frozenset[str] = frozenset()  # evidence in_reply_to: fetched unless held here


def _claimed_refs(wire: bytes) -> tuple[str | None, str | None]:
    """``(derived_from, in_reply_to of evidence)`` as the unverified header claims them, or
    ``(None, None)`` when it cannot be read. Lenient and cheap on purpose: only to know what
    to fetch, never to decide (the border refuses whatever is malformed)."""
    try:
        outer = json.loads(wire)["outer"]
        payload = outer.split(".", 2)[1]
        header = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["header"]
        derived, kind, subject = header["derived_from"], header["type"], header["in_reply_to"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
        return None, None
    return (
        derived if isinstance(derived, str) and is_uuid(derived) else None,
        subject
        if isinstance(kind, str)
        and is_evidence(kind)
        and isinstance(subject, str)
        and is_uuid(subject)
        else None,
    )


def wanted(data: Iterable[bytes]) -> Wanted:
    """What the border rules may look up for these inputs: what a message is
    ``derived_from``, what a piece of evidence is about (``in_reply_to``)."""
    originals: set[str] = set()
    subjects: set[str] = set()
    for wire in data:
        derived, subject = _claimed_refs(wire)
        if derived is not None:
            originals.add(derived)
        if subject is not None:
            subjects.add(subject)
    return Wanted(originals=frozenset(originals), subjects=frozenset(subjects))


class SharedCrossings:
    """:class:`~broker.gateway.border.CrossingLog` over the ``CROSSINGS`` bucket."""

    def __init__(self, kv: KeyValue | None = None, *, cache_size: int = CACHE_SIZE) -> None:
        self._bucket = kv
        self._cache: OrderedDict[str, dict[tuple[str, str], Crossing]] = OrderedDict()
        self._cache_size = cache_size

    def attach(self, kv: KeyValue) -> None:
        """The bucket, once connected (the border is built before the connection)."""
        self._bucket = kv

    @property
    def _kv(self) -> KeyValue:
        if self._bucket is None:
            raise RuntimeError("crossings bucket not attached")
        return self._bucket

    def crossings(self, message_id: str) -> Sequence[Crossing]:
        found = self._cache.get(message_id)
        return tuple(found.values()) if found else ()

    def _keep(self, crossings: Iterable[Crossing]) -> None:
        for c in crossings:
            rows = self._cache.setdefault(c.message_id, {})
            rows.setdefault((c.direction, c.digest), c)
            self._cache.move_to_end(c.message_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _get(self, key: str) -> list[Crossing]:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return []
        return _decode(entry.value)

    async def prefetch(self, message_ids: Iterable[str] | Wanted) -> None:
        """Fetch the records of ``message_ids`` (both directions, concurrently) into the
        cache; of a :class:`Wanted`, the originals and the subjects not held here already.
        NATS errors propagate: the caller retries the batch later."""
        if isinstance(message_ids, Wanted):
            ids = set(message_ids.originals)
            ids.update(i for i in message_ids.subjects if i not in self._cache)
        else:
            ids = set(message_ids)
        keys = [f"{i}.{d}" for i in sorted(ids) for d in DIRECTIONS]
        if not keys:
            return
        for found in await asyncio.gather(*(self._get(k) for k in keys)):
            self._keep(found)

    async def _add(self, c: Crossing) -> None:
        key = f"{c.message_id}.{c.direction}"
        for _ in range(UPDATE_ATTEMPTS):
            try:
                await self._kv.create(key, json.dumps([_to_json(c)]).encode())
            except KeyWrongLastSequenceError:
                pass  # exists: add this digest to the list (another instance may race us)
            else:
                return
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                continue
            present = _decode(entry.value)
            if any(p.digest == c.digest for p in present):
                return
            value = json.dumps([*map(_to_json, present), _to_json(c)]).encode()
            try:
                await self._kv.update(key, value, last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return
        raise RuntimeError(f"crossing {key} not recorded after {UPDATE_ATTEMPTS} attempts")

    async def record(self, outcomes: Iterable[Outcome]) -> None:
        """Write the crossings of ``outcomes`` (before their outputs are published)."""
        new = [o.crossing for o in outcomes if o.crossing is not None]
        await asyncio.gather(*(self._add(c) for c in new))
        self._keep(new)
