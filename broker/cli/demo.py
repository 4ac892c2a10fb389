"""``casebridge demo``: the federation demo on real servers (default) or the in-process one.

``casebridge demo`` runs :mod:`broker.demo.federation` (hub, DE/NL/UA servers, gateways and
nodes on loopback, scripted traffic, a table; it keeps running until Ctrl-C unless
``--no-wait``); ``casebridge demo --offline`` runs :mod:`broker.demo.offline` (no servers).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the demo: a whole federation on this machine with scripted traffic",
        description="Start a dev federation (hub; DE, NL in the EU; UA outside it; border "
        "gateways; police and NGO nodes) under --dir, send one message of every type through "
        "the node APIs (plus a task-force message, a policy refusal, a redaction and a message "
        "to a country that is down), print what happened, and keep it running until Ctrl-C. "
        "--offline: the in-process demo (seal -> gateway check -> open, no servers).",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(".demo"),
        help="where the demo federation is generated (wiped at start; default .demo)",
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="stop everything right after the table"
    )
    parser.add_argument(
        "--offline", action="store_true", help="the in-process demo: no servers, no network"
    )
    parser.add_argument(
        "--pki-dir",
        type=Path,
        default=Path("certs/dev"),
        help="--offline: where the dev PKI is written",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.offline:
        return _offline(args)
    from broker.demo.federation import run  # noqa: PLC0415 - lazy: fast CLI start

    outcomes = run(args.dir, wait=not args.no_wait, out=sys.stdout)
    return 0 if outcomes and all(o.complete() for o in outcomes) else 1


def _offline(args: argparse.Namespace) -> int:
    from broker.demo.offline import format_table, run  # noqa: PLC0415 - lazy: fast CLI start

    now = datetime.now(UTC)
    rows = run(out_dir=args.pki_dir, now=now)
    print(f"Dev PKI written to {args.pki_dir}/ (root -> DE, NL, UA country CAs -> agencies)\n")
    print(format_table(rows))
    print("\nEvery message: inner ES256 JWS -> JWE (ECDH-ES+A256KW, A256GCM) -> outer ES256 JWS;")
    print("gateways checked the outer layer only; recipients verified, decrypted, validated.")
    return 0
