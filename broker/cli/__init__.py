"""The ``casebridge`` command line: one sub-command group per module in this package.

Each group module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (``Callable[[argparse.Namespace], int]``) as the handler. Errors from the
Casebridge tree are printed as ``error [reason]: detail`` with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from broker.errors import CasebridgeError

# Modules under broker.cli that contribute sub-commands, in help order.
GROUPS = (
    "pki",
    "policy",
    "federation",
    "gateway",
    "node",
    "focal",
    "audit",
    "message",
    "conformance",
    "evidence",
    "demo",
    "directory",
    "integrations",
    "adapter",
    "users",
    "statistics",
    "lookup",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casebridge",
        description="Casebridge: signed, encrypted, policy-checked case exchange.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in GROUPS:
        try:
            module = importlib.import_module(f"broker.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"broker.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CasebridgeError as exc:
        print(f"error [{exc.reason.value}]: {exc.detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
