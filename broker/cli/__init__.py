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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every group, or with group ``only`` alone (see :func:`main`)."""
    parser = argparse.ArgumentParser(
        prog="casebridge",
        description="Casebridge: signed, encrypted, policy-checked case exchange.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in GROUPS if only is None else (only,):
        try:
            module = importlib.import_module(f"broker.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"broker.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    return [
        name
        for action in parser._actions  # argparse exposes its sub-parsers no other way
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    ]


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    # A long-running node or gateway must not carry every other group's imports (PKCS#11,
    # argon2, the PKI ceremony, ...): about 8 MB resident each. Help and errors still list all.
    parser = build_parser(words[0] if words and words[0] in GROUPS else None)
    if words and words[0] not in _commands(parser):
        parser = build_parser()  # e.g. ``focal``: a module name that is not a command
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CasebridgeError as exc:
        print(f"error [{exc.reason.value}]: {exc.detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
