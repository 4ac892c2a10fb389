"""Subject and consumer names of the federation layout (docs/federation.md)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.core import wire as s
from broker.federation import natsconf

AGENCY = st.from_regex(r"[a-z]{2}\.[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?", fullmatch=True)


def test_delivery_lanes() -> None:
    assert s.deliver_subject("nl.politie") == "cb.deliver.nl.politie"
    assert s.deliver_subject("nl.politie", evidence=True) == "cb.deliver.nl.politie.evidence"
    assert s.node_durable("nl.politie") == "node-nl_politie"
    assert s.node_durable("nl.politie", evidence=True) == "evidence-nl_politie"


@given(AGENCY, AGENCY, st.booleans(), st.booleans())
def test_consumer_names_never_collide(a: str, b: str, lane_a: bool, lane_b: bool) -> None:
    """No agency id, on either lane, yields another agency's (or lane's) consumer name."""
    if (a, lane_a) != (b, lane_b):
        assert s.node_durable(a, evidence=lane_a) != s.node_durable(b, evidence=lane_b)
        assert s.deliver_subject(a, evidence=lane_a) != s.deliver_subject(b, evidence=lane_b)


def test_agency_may_read_both_of_its_lanes_and_nothing_else() -> None:
    allowed = natsconf.agency_permissions("nl.politie").publish
    for lane in (False, True):
        durable = s.node_durable("nl.politie", evidence=lane)
        assert f"$JS.API.CONSUMER.MSG.NEXT.DELIVER.{durable}" in allowed
        assert f"$JS.ACK.DELIVER.{durable}.>" in allowed
    assert not [p for p in allowed if "nl_hulp-ngo" in p or "CREATE" in p]
