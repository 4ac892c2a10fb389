"""Wire names: the federation's NATS subjects, streams, durable consumers and inbox prefixes.

They are protocol (a peer implementation must use the same ones), so they live beside the core:
one place for the layout of ``docs/federation.md`` so that the server configuration
(:mod:`broker.federation.natsconf`), the stream setup (:mod:`broker.federation.streams`), the
border gateway and the adapter node agree on every name. Pure string functions: must never do
I/O or import a NATS client.

Country codes are accepted in either case; subjects and domains use lower case, stream names
upper case (``OUT_UA``).
"""

from __future__ import annotations

from typing import Final

ACCOUNT: Final = "CB"
SYSTEM_ACCOUNT: Final = "SYS"

SUBMIT_STREAM: Final = "SUBMIT"
INBOX_STREAM: Final = "INBOX"
DELIVER_STREAM: Final = "DELIVER"
# Signed audit checkpoints of the country's nodes, kept by the gateway (docs/data-protection.md).
AUDIT_STREAM: Final = "AUDIT"
# Key-value bucket of what crossed the border, shared by the country's gateways
# (broker/gateway/crossings.py); its subjects ``$KV.CROSSINGS.>`` never leave the country.
CROSSINGS_BUCKET: Final = "CROSSINGS"
KV_SUBJECTS: Final = "$KV.>"
# Durable consumers of the border gateway (shared by all gateway instances of a country).
# SUBMIT is read through one consumer per agency (gateway_submit_durable); "gateway" is the
# single unfiltered consumer of earlier versions, removed by the stream setup (a work-queue
# stream refuses overlapping consumers).
LEGACY_GATEWAY_SUBMIT_DURABLE: Final = "gateway"
# INBOX is read through one consumer per peer country (gateway_inbox_durable); "gateway-in"
# is the single consumer of earlier versions, replaced by the stream setup.
LEGACY_GATEWAY_INBOX_DURABLE: Final = "gateway-in"
GATEWAY_AUDIT_DURABLE: Final = "gateway-audit"

SUBMIT_SUBJECTS: Final = "cb.submit.>"
DELIVER_SUBJECTS: Final = "cb.deliver.>"
OUT_SUBJECTS: Final = "cb.out.>"
AUDIT_SUBJECTS: Final = "cb.audit.>"
INBOX_ROOT: Final = "_INBOX"


def domain(code: str) -> str:
    """JetStream domain of a country: its lower-case ISO code."""
    return code.lower()


def submit_subject(agency_id: str) -> str:
    """Where agency ``agency_id`` submits its sealed messages: ``cb.submit.<agency>``."""
    return f"cb.submit.{agency_id}"


def deliver_subject(agency_id: str, *, evidence: bool = False) -> str:
    """Where the gateway delivers to ``agency_id``: case messages on ``cb.deliver.<agency>``,
    evidence (``evidence.*`` types) on ``cb.deliver.<agency>.evidence``.

    Two lanes with their own consumers, so a node's incoming case messages never queue
    behind the evidence flowing back about what it sent (a bulk send returns three pieces
    of evidence per message). Which lane a message takes is routing only: a node accepts
    any type on either lane and applies the same checks.
    """
    return f"cb.deliver.{agency_id}.evidence" if evidence else f"cb.deliver.{agency_id}"


def audit_subject(agency_id: str) -> str:
    """Where agency ``agency_id`` publishes its signed audit checkpoints: ``cb.audit.<agency>``."""
    return f"cb.audit.{agency_id}"


def out_stream(peer: str) -> str:
    """Outbox stream towards country ``peer`` (in the sending country): ``OUT_<PEER>``."""
    return f"OUT_{peer.upper()}"


def out_subject(code: str, peer: str) -> str:
    """Subject of the outbox from ``code`` to ``peer``: ``cb.out.<cc>.<peer>``."""
    return f"cb.out.{code.lower()}.{peer.lower()}"


def cross_delivery_prefix(source: str, destination: str) -> str:
    """Deliver prefix of the sourcing consumer from ``source``'s outbox to ``destination``."""
    return f"cb.xd.{source.lower()}.{destination.lower()}"


def domain_api(code: str) -> str:
    """Prefix of a country's JetStream API as seen from other domains: ``$JS.<cc>.API``."""
    return f"$JS.{domain(code)}.API"


def node_durable(agency_id: str, *, evidence: bool = False) -> str:
    """Durable consumer of an agency's node on DELIVER: ``node-<agency with . as _>`` for
    case messages, ``evidence-<agency with . as _>`` for the evidence lane (a distinct prefix,
    so no agency id can produce another agency's consumer name)."""
    prefix = "evidence" if evidence else "node"
    return f"{prefix}-{agency_id.replace('.', '_')}"


def gateway_submit_durable(agency_id: str) -> str:
    """The gateway's durable consumer of one agency's submissions on SUBMIT:
    ``submit-<agency with . as _>`` (filtered on :func:`submit_subject`; agency ids hold no
    ``_``, so no two agencies share a name). One per agency, so that one sender's backlog never
    stands in front of another's message (broker/gateway/fairness.py)."""
    return f"submit-{agency_id.replace('.', '_')}"


def gateway_inbox_durable(peer: str) -> str:
    """The gateway's durable consumer of what peer country ``peer`` sends (INBOX, filtered on
    ``cb.out.<peer>.<cc>``): ``inbox-<peer>``. One per peer, so that one country's backlog never
    stands in front of another's messages."""
    return f"inbox-{peer.lower()}"


def inbox_prefix(agency_id: str) -> str:
    """The reply-inbox prefix an agency must use (``inbox_prefix=`` in nats-py)."""
    return f"{INBOX_ROOT}.{agency_id}"
