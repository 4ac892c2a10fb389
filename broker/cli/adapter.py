"""``casebridge adapter NAME --settings FILE``: run one of the adapters to a case system.

* ``folder``: the watched drop folder (``adapters/folder.py``); runs until SIGINT/SIGTERM.
* ``mapping``: turn a case system's export into drafts (``adapters/mapping.py``); ``--dry-run``
  prints every draft and every error with its row number and sends nothing.
* ``webhook-receiver``: the reference receiver of the node's webhooks
  (``adapters/webhook_receiver.py``); runs until SIGINT/SIGTERM.

Settings formats: ``docs/integrators.md``. The adapters are installed as ``broker.adapters``;
in a source checkout they are the top-level ``adapters`` package.

What it must never do
    Hold an adapter's logic (it lives in the adapter's module) or print a token.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from broker.logs import LOG_FORMATS, configure_logging

# Where the adapters are: installed (package-dir maps adapters/ to broker.adapters) first, then
# a source checkout run with PYTHONPATH at its root.
_PACKAGES = ("broker.adapters", "adapters")


def adapter_module(name: str) -> ModuleType:
    """The module of adapter ``name`` (``folder``, ``mapping``, ``webhook_receiver``)."""
    for package in _PACKAGES:
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name not in (package, f"{package}.{name}"):
                raise  # a dependency of the adapter is missing: say so
    raise ModuleNotFoundError(f"no adapter module {name!r} (looked in {', '.join(_PACKAGES)})")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "adapter",
        help="run an adapter to a case system (folder, mapping, webhook-receiver)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = parser.add_subparsers(dest="adapter", metavar="NAME", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--settings", type=Path, required=True, help="the adapter's settings file")
        p.add_argument("--log-format", choices=LOG_FORMATS, default="json")

    folder = names.add_parser(
        "folder", help="watched drop folder (outgoing/ sent/ failed/ incoming/)"
    )
    common(folder)
    folder.set_defaults(func=_folder)

    mapping = names.add_parser("mapping", help="a case system's export (CSV, JSON lines) as drafts")
    common(mapping)
    mapping.add_argument("--input", type=Path, help="the export file (default: from the settings)")
    mapping.add_argument(
        "--dry-run", action="store_true", help="print every draft and error; send nothing"
    )
    mapping.set_defaults(func=_mapping)

    receiver = names.add_parser(
        "webhook-receiver", help="reference receiver of the node's webhooks"
    )
    common(receiver)
    receiver.set_defaults(func=_webhook_receiver)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, frame: Any) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def _folder(args: argparse.Namespace) -> int:
    configure_logging(args.log_format)
    folder = adapter_module("folder")
    settings = folder.FolderSettings.load(args.settings)
    with settings.node.client() as client:
        folder.FolderAdapter(settings, client).run(_stop_on_signals())
    return 0


def _mapping(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, stream=sys.stderr)
    mapping = adapter_module("mapping")
    code: int = mapping.main(args.settings, export=args.input, dry_run=args.dry_run, out=sys.stdout)
    return code


def _webhook_receiver(args: argparse.Namespace) -> int:
    configure_logging(args.log_format)
    receiver = adapter_module("webhook_receiver")
    code: int = receiver.main(args.settings)
    return code
