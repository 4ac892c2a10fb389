"""``casebridge statistics``: aggregate statistics outside the message flow.

``export-htcds BODY.json``: a ``statistics.aggregate`` body (or a stored message holding one
under ``body``) as CSV in HTCDS / CTDC codebook variables (docs/schemas.md), after the same
small-cell and complementary suppression the sender applies (k at least the federation floor),
so an export never discloses more than a message would. It never undoes suppression and never
reads anything but the file named.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from broker.core.htcds import to_htcds
from broker.core.policy.safeguards import effective_k, suppress_small_cells
from broker.errors import ConfigError
from broker.loaders import load_schema_registry

STATS_TYPE = "statistics.aggregate"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "statistics",
        help="aggregate statistics: export to shared data standards",
        description="Work with statistics.aggregate bodies outside the message flow.",
    )
    inner = parser.add_subparsers(dest="statistics_command", metavar="ACTION", required=True)
    export = inner.add_parser(
        "export-htcds",
        help="a statistics body as CSV in HTCDS / CTDC codebook variables",
        description="Validate a statistics.aggregate body, suppress small cells and their "
        "complements at k (never below the federation floor 11), and write one CSV row per "
        "cell in HTCDS variables with count and suppressed columns.",
    )
    export.add_argument("body", type=Path, help="JSON file: the body, or a message with 'body'")
    export.add_argument("--k", type=int, default=0, help="small-cell threshold (default 11)")
    export.add_argument("-o", "--output", type=Path, help="CSV file (default: standard output)")
    export.set_defaults(func=_export)


def _load(path: Path) -> Any:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("body"), dict):
        if data.get("type", STATS_TYPE) != STATS_TYPE:
            raise ConfigError(f"{path}: a {data.get('type')} message, not {STATS_TYPE}")
        return data["body"]
    return data


def export_csv(body: Any, *, k: int = 0) -> str:
    """The CSV text for ``body`` (validated, then suppressed at ``k``)."""
    load_schema_registry().validate(STATS_TYPE, 1, body)
    protected, _ = suppress_small_cells(body, effective_k(k))
    columns, rows = to_htcds(protected)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _export(args: argparse.Namespace) -> int:
    text = export_csv(_load(args.body), k=args.k)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0
