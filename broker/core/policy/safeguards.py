"""Built-in safeguards: protections no country policy can switch off.

* ``builtin.reporter-identity``: the reporter of a ``report.confidential`` never leaves the
  origin country. Pre-flight strips every field annotated ``reporter_identity``; a border or
  recipient seeing that category declared on such a report crossing a border denies it.
* ``builtin.small-cells``: ``statistics.aggregate`` cells with a count from 1 to k-1 are
  suppressed at the sender (count null, suppressed true), then complementary cells until no
  suppressed cell can be derived from row/column totals (:mod:`broker.core.statistics`); a
  recipient refuses a body that still has a small cell. k is the federation floor 11, or higher
  if the policy says so.
* ``builtin.onward-transfer``: a message derived from a received one may not go to a country
  the original's onward marking excludes, nor anywhere abroad if onward transfer is not
  allowed; unknown original at the sender means deny (fail closed).
* ``builtin.red-h3-explicit``: TLP:RED or H3 crosses a border only under an allow rule that
  names the recipient agency exactly (no wildcard).
* ``builtin.honesty``: the recipient refuses a body holding a category the header does not declare.

Pure functions over plain values; no I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

from broker.core.header import Onward
from broker.core.policy.model import DEFAULT_SMALL_CELL_K, Builtin, Redaction
from broker.core.statistics import suppress_complements

REPORT_TYPE: Final = "report.confidential"
STATS_TYPE: Final = "statistics.aggregate"
REPORTER_CATEGORY: Final = "reporter_identity"
# Used when the schema registry cannot list annotated paths: the member schemas/
# report.confidential.v1.json annotates reporter_identity.
DEFAULT_REPORTER_PATHS: Final = ("/reporter",)
RED: Final = "RED"
H3: Final = "H3"


def effective_k(*policy_ks: int) -> int:
    """The k to apply: the highest of the federation floor and every policy's own k."""
    return max((DEFAULT_SMALL_CELL_K, *policy_ks))


def reporter_redactions(paths: Mapping[str, frozenset[str]] | None) -> tuple[Redaction, ...]:
    """Drop operations removing every field annotated ``reporter_identity``."""
    found = sorted(p for p, cats in (paths or {}).items() if REPORTER_CATEGORY in cats)
    return tuple(
        Redaction(op="drop", path=p, rule_id=Builtin.REPORTER_IDENTITY)
        for p in (found or DEFAULT_REPORTER_PATHS)
    )


def _small(count: object, k: int) -> bool:
    return isinstance(count, int) and not isinstance(count, bool) and 0 < count < k


def small_cells(body: Mapping[str, Any], k: int) -> int:
    """How many cells of a statistics body disclose a count from 1 to k-1."""
    cells = body.get("cells")
    if not isinstance(cells, list):
        return 0
    return sum(1 for c in cells if isinstance(c, dict) and _small(c.get("count"), k))


def suppress_small_cells(body: Mapping[str, Any], k: int) -> tuple[dict[str, Any], int]:
    """A copy of ``body`` with small cells suppressed and ``k_threshold`` raised to ``k``."""
    out: dict[str, Any] = copy.deepcopy(dict(body))
    cells = out.get("cells")
    changed = 0
    if isinstance(cells, list):
        for cell in cells:
            if isinstance(cell, dict) and _small(cell.get("count"), k):
                cell["count"] = None
                cell["suppressed"] = True
                changed += 1
    # Complementary suppression (issue 19): withheld cells must not be derivable from totals.
    out, complements = suppress_complements(out)
    changed += complements
    threshold = out.get("k_threshold")
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < k:
        out["k_threshold"] = k
    return out, changed


def small_cells_redaction(k: int) -> Redaction:
    """The record of suppression, as it appears in a decision's redactions."""
    return Redaction(
        op="suppress", path="/cells/*/count", to=f"below_{k}", rule_id=Builtin.SMALL_CELLS
    )


def onward_refusal(original: Onward | None, peer: str, message_id: str) -> str | None:
    """Why a message derived from ``message_id`` may not go to ``peer``, or None if it may."""
    if original is None:
        return f"derived from message {message_id}, which this node does not know (fail closed)"
    if not original.allowed:
        return f"derived from message {message_id}, whose sender did not allow onward transfer"
    if peer in original.exclude:
        return f"derived from message {message_id}, whose sender excluded {peer}"
    return None


def red_or_h3(tlp: str, handling: str) -> bool:
    return tlp == RED or handling == H3
