"""``casebridge conformance``: check an implementation against the conformance vectors.

* ``--impl CMD``: start ``CMD``, feed it every vector (docs/protocol.md section 11.2), print the
  table of mismatches. Exit 0 without mismatch, 1 with mismatches.
* ``--serve``: be the implementation (this project, through ``broker.protocol``): answer
  requests on stdin. ``casebridge conformance --impl "casebridge conformance --serve"``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "conformance",
        help="run the protocol conformance vectors against an implementation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--impl", metavar="CMD", help="command of the implementation under test")
    mode.add_argument(
        "--serve", action="store_true", help="answer requests on stdin (this project)"
    )
    parser.add_argument(
        "--vectors",
        type=Path,
        default=None,
        help="conformance directory (default: tests/vectors/conformance of the checkout)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from broker import conformance, conformance_impl  # noqa: PLC0415 - only this command

    if args.serve:
        return conformance_impl.serve(sys.stdin, sys.stdout)
    base = args.vectors or conformance.default_vector_dir()
    report = conformance.run(args.impl, base)
    for line in conformance.table(report):
        print(line)
    return 0 if report.ok else 1
