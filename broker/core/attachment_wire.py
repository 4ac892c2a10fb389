"""NATS names of the attachment chunk path (docs/federation.md, "Attachments").

Chunks travel the same sovereign path as messages, in streams of their own so that bulk file
traffic never stands in front of a message and keeps its own limits:

    node --cb.att.submit.<agency>--> ATT_SUBMIT (work queue)
      gateway (egress, consumer ``att-egress-<agency>``) --cb.att.out.<cc>.<p>--> ATT_OUT_<P>
        <== sourced across the hub by <p>'s ATT_INBOX ($JS.<cc>.API, deliver cb.xa.<cc>.<p>)
      gateway of <p> (ingress, ``att-ingress-<cc>``) --cb.att.deliver.<agency>--> ATT_DELIVER
        node (consumer ``att-<agency>``)

Pure string functions and constants; the lead may fold them into the core's wire module.
Never does I/O.
"""

from __future__ import annotations

from typing import Final

ATT_SUBMIT_STREAM: Final = "ATT_SUBMIT"
ATT_INBOX_STREAM: Final = "ATT_INBOX"
ATT_DELIVER_STREAM: Final = "ATT_DELIVER"
ATT_SUBJECTS: Final = "cb.att.>"
ATT_SUBMIT_SUBJECTS: Final = "cb.att.submit.>"
ATT_DELIVER_SUBJECTS: Final = "cb.att.deliver.>"
# The gateway reads chunks through one consumer per agency (egress) and per peer country
# (ingress): chunks waiting for their message stay pending on their own lane's consumer, so one
# sender's waiting (or junk) chunks never fill the window every other sender's files need.
# "att-egress" / "att-ingress" are the single unfiltered consumers of earlier versions, removed
# by the stream setup (a work-queue stream refuses overlapping consumers).
LEGACY_EGRESS_DURABLE: Final = "att-egress"
LEGACY_INGRESS_DURABLE: Final = "att-ingress"
EGRESS_DURABLE_PREFIX: Final = "att-egress-"
INGRESS_DURABLE_PREFIX: Final = "att-ingress-"

# NATS headers of a chunk. The values are routing only: the recipient authenticates the chunk
# with the manifest (AAD = attachment id, index, final flag), never with these.
MESSAGE_HEADER: Final = "Cb-Message"
ATTACHMENT_HEADER: Final = "Cb-Attachment"
INDEX_HEADER: Final = "Cb-Chunk"


def att_submit_subject(agency_id: str) -> str:
    return f"cb.att.submit.{agency_id}"


def att_out_stream(peer: str) -> str:
    return f"ATT_OUT_{peer.upper()}"


def att_out_subject(code: str, peer: str) -> str:
    return f"cb.att.out.{code.lower()}.{peer.lower()}"


def att_cross_delivery_prefix(source: str, destination: str) -> str:
    return f"cb.xa.{source.lower()}.{destination.lower()}"


def att_egress_durable(agency_id: str) -> str:
    """The gateway's consumer of one agency's chunks on ATT_SUBMIT (filtered on
    :func:`att_submit_subject`): ``att-egress-<agency with . as _>``."""
    return f"{EGRESS_DURABLE_PREFIX}{agency_id.replace('.', '_')}"


def att_ingress_durable(peer: str) -> str:
    """The gateway's consumer of the chunks peer country ``peer`` sends (ATT_INBOX, filtered on
    ``cb.att.out.<peer>.<cc>``): ``att-ingress-<peer>``."""
    return f"{INGRESS_DURABLE_PREFIX}{peer.lower()}"


def att_deliver_subject(agency_id: str) -> str:
    return f"cb.att.deliver.{agency_id}"


def att_node_durable(agency_id: str) -> str:
    """The node's consumer of its chunks on ATT_DELIVER (``att-<agency with . as _>``)."""
    return f"att-{agency_id.replace('.', '_')}"


def chunk_msg_id(attachment_id: str, index: int) -> str:
    """Nats-Msg-Id of a chunk: the same chunk republished after a failure is a duplicate."""
    return f"{attachment_id}.{index}"
