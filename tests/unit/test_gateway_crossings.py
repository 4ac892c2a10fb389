"""What a gateway fetches from the CROSSINGS bucket before deciding a batch.

``wanted`` reads the inputs' unverified headers (only to choose what to fetch); ``prefetch``
fetches the originals of derived messages always and the subjects of evidence only when this
instance holds no record of them. The bucket is a recording double here (the key-value
protocol is exercised against real nats-server processes in tests/integration).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from broker.core.header import Onward
from broker.gateway.border import Crossing
from broker.gateway.crossings import SharedCrossings, Wanted, wanted


def wire(**header: Any) -> bytes:
    """A message as the peek sees it: only the outer payload's header matters."""
    fields = {"type": "request.assistance", "derived_from": None, "in_reply_to": None}
    fields.update(header)
    payload = base64.urlsafe_b64encode(json.dumps({"header": fields}).encode()).rstrip(b"=")
    return json.dumps({"jwe": "x", "outer": f"h.{payload.decode()}.s", "v": 1}).encode()


def crossing(message_id: str) -> Crossing:
    return Crossing(
        message_id=message_id,
        direction="egress",
        digest="d",
        sender="de.lka-berlin",
        recipients=("nl.politie",),
        onward=Onward(allowed=True, exclude=()),
        exp=2_000_000_000,
    )


@dataclass
class RecordingBucket:
    """Answers every get with "no such key" and remembers the keys asked for."""

    asked: list[str] = field(default_factory=list)

    async def get(self, key: str) -> Any:
        self.asked.append(key)
        raise KeyNotFoundError


class TestWanted:
    def test_originals_and_evidence_subjects_are_told_apart(self) -> None:
        """derived_from is an original; in_reply_to is a subject only for evidence."""
        original, subject, reply_to = (str(uuid.uuid4()) for _ in range(3))
        found = wanted(
            [
                wire(derived_from=original),
                wire(type="evidence.delivered", in_reply_to=subject),
                wire(type="response.assistance", in_reply_to=reply_to),
            ]
        )
        assert found == Wanted(originals=frozenset({original}), subjects=frozenset({subject}))

    def test_unreadable_or_odd_inputs_name_nothing(self) -> None:
        """Garbage, a header without the members, or ids that are not UUIDs: nothing to fetch
        (the border refuses such inputs itself)."""
        found = wanted(
            [
                b"\x00garbage",
                b'{"outer": 5}',
                json.dumps({"outer": "a.b"}).encode(),
                wire(derived_from="../etc", type="evidence.read", in_reply_to=["x"]),
            ]
        )
        assert found == Wanted()


class TestPrefetch:
    def test_held_subjects_are_not_fetched_again(self) -> None:
        """A subject this instance holds a record of is not fetched; an unknown one is
        fetched in both directions."""
        held, unknown = str(uuid.uuid4()), str(uuid.uuid4())
        bucket = RecordingBucket()
        shared = SharedCrossings(cast(KeyValue, bucket))
        shared._keep([crossing(held)])
        asyncio.run(shared.prefetch(Wanted(subjects=frozenset({held, unknown}))))
        assert sorted(bucket.asked) == [f"{unknown}.egress", f"{unknown}.ingress"]

    def test_originals_are_always_fetched(self) -> None:
        """Another instance may hold a stricter copy's onward marking: an original is fetched
        even when a record of it is held here."""
        held = str(uuid.uuid4())
        bucket = RecordingBucket()
        shared = SharedCrossings(cast(KeyValue, bucket))
        shared._keep([crossing(held)])
        asyncio.run(shared.prefetch(Wanted(originals=frozenset({held}))))
        assert sorted(bucket.asked) == [f"{held}.egress", f"{held}.ingress"]
        assert shared.crossings(held) == (crossing(held),)
