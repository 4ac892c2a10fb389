"""``casebridge demo``: the sample traffic demo (see README)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the demo: dev PKI + sample messages sealed, routed and opened",
        description="Generate a dev PKI under --pki-dir and push sample messages of several "
        "types through seal -> gateway check -> open, printing what happened.",
    )
    parser.add_argument(
        "--pki-dir", type=Path, default=Path("certs/dev"), help="where the dev PKI is written"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from broker.demo_offline import format_table, run  # noqa: PLC0415 - lazy: fast CLI start

    now = datetime.now(UTC)
    rows = run(out_dir=args.pki_dir, now=now)
    print(f"Dev PKI written to {args.pki_dir}/ (root -> DE, NL, UA country CAs -> agencies)\n")
    print(format_table(rows))
    print("\nEvery message: inner ES256 JWS -> JWE (ECDH-ES+A256KW, A256GCM) -> outer ES256 JWS;")
    print("gateways checked the outer layer only; recipients verified, decrypted, validated.")
    return 0
