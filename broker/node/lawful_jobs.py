"""The node's lawful-processing background jobs: audit checkpoints and the retention purge.

* :func:`checkpoint_once` seals the audit records since the last checkpoint (signed with the
  agency's signing key) and publishes every checkpoint not yet acknowledged on
  ``cb.audit.<agency>``, where the national gateway verifies and keeps it. Run every
  ``audit.checkpoint_seconds`` and once more on shutdown.
* :func:`purge_once` erases bodies past retention (:mod:`broker.node.retention`). Run at
  start-up and daily.

Must never send a checkpoint that is not stored first (a restart resends what was not acked),
nor end on a storage fault (``storage_unavailable``): a failed round is retried, sooner than a
day for the purge.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import structlog

from broker.node import audit_log
from broker.node.errors import StorageUnavailable, TransportUnavailable
from broker.node.retention import PurgeResult, RetentionPolicy, purge
from broker.node.service import Node

DAY_SECONDS: Final = 24 * 3600.0
# After a failed purge (e.g. the disk was full), try again this soon rather than in a day.
RETRY_SECONDS: Final = 300.0
log = structlog.get_logger("casebridge.node.lawful")


def seal(node: Node) -> str | None:
    """Seal a checkpoint over the records since the last one (None: nothing new)."""
    with node.store.transaction() as db:
        return audit_log.seal_checkpoint(
            db, node=node.agency_id, sign=node.sign_audit_checkpoint, now=node.now()
        )


async def checkpoint_once(node: Node) -> int:
    """Seal what is new and publish every unsent checkpoint; how many are still unsent."""
    await asyncio.to_thread(seal, node)
    pending = await asyncio.to_thread(node.store.query, audit_log.unsent_checkpoints)
    left = 0
    for last_seq, token in pending:
        try:
            await node.transport.submit(
                audit_log.audit_subject(node.agency_id),
                token.encode("ascii"),
                audit_log.checkpoint_msg_id(node.agency_id, last_seq),
            )
        except TransportUnavailable:
            left += 1
            continue
        with node.store.transaction() as db:
            audit_log.mark_sent(db, last_seq, now=node.now())
    return left


async def run_checkpoints(node: Node, *, interval: float) -> None:
    """Checkpoint every ``interval`` seconds, forever."""
    while True:
        await asyncio.sleep(interval)
        try:
            left = await checkpoint_once(node)
        except StorageUnavailable as exc:  # retried at the next interval
            log.warning("audit_checkpoint_failed", agency=node.agency_id, error=exc.detail)
            continue
        except Exception:  # a failed round is retried at the next interval
            log.exception("audit_checkpoint_failed", agency=node.agency_id)
            continue
        if left:
            log.warning("audit_checkpoints_unsent", agency=node.agency_id, pending=left)


def purge_once(node: Node, policy: RetentionPolicy) -> PurgeResult:
    """Erase every body past retention, with its erasure records, in one transaction."""
    with node.store.transaction() as db:
        result = purge(db, policy, agency=node.agency_id, now=node.now())
    log.info(
        "retention_purge",
        agency=node.agency_id,
        received=len(result.received),
        sent=len(result.sent),
    )
    return result


async def run_retention(
    node: Node, policy: RetentionPolicy, *, interval: float = DAY_SECONDS
) -> None:
    """Purge at start and then every ``interval`` seconds."""
    while True:
        wait = interval
        try:
            await asyncio.to_thread(purge_once, node, policy)
        except StorageUnavailable as exc:
            log.warning("retention_purge_failed", agency=node.agency_id, error=exc.detail)
            wait = min(interval, RETRY_SECONDS)
        except Exception:
            log.exception("retention_purge_failed", agency=node.agency_id)
            wait = min(interval, RETRY_SECONDS)
        await asyncio.sleep(wait)


async def final_checkpoint(node: Node) -> None:
    """On shutdown: seal and try once to publish (a failure is resent at the next start)."""
    with contextlib.suppress(TransportUnavailable, StorageUnavailable):
        await checkpoint_once(node)
