"""``casebridge audit``: verify, export and show a node's audit log (docs/data-protection.md).

* ``verify --node-settings FILE [--gateway-roots FILE]``: the hash chain, every checkpoint the
  node sealed and every root the gateway holds (its SQLite file); names the first broken or
  missing record. Exit 0 when intact, 1 when broken.
* ``export --node-settings FILE --from T --to T --format jsonl|csv [--output FILE]``: the
  records of a period for a data protection officer (never a message body).
* ``show ID --node-settings FILE``: everything that happened to one message here: audit
  records, the evidence trail (from both countries' gateways and the recipients),
  consultations, correction marks and erasures.

Read-only: the store is opened with ``mode=ro``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from broker.core import audit
from broker.core.directory import Directory
from broker.errors import CasebridgeError, ConfigError
from broker.pki.keyfiles import read_bytes, read_certificate


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "audit",
        help="verify, export and show the node's tamper-evident audit log",
        description="The node's audit log: verify its chain and checkpoints, export a period, "
        "show the history of one message (docs/data-protection.md).",
    )
    commands = parser.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    verify = commands.add_parser("verify", help="check chain, checkpoints and gateway roots")
    verify.add_argument("--node-settings", type=Path, required=True)
    verify.add_argument(
        "--gateway-roots", type=Path, help="the national gateway's store (SQLite) holding roots"
    )
    verify.set_defaults(func=_verify)
    export = commands.add_parser("export", help="records of a period, as JSON lines or CSV")
    export.add_argument("--node-settings", type=Path, required=True)
    export.add_argument("--from", dest="since", help="RFC 3339 or YYYY-MM-DD (inclusive)")
    export.add_argument("--to", dest="until", help="RFC 3339 or YYYY-MM-DD (inclusive)")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", type=Path, help="file to write (default: stdout)")
    export.set_defaults(func=_export)
    show = commands.add_parser("show", help="everything that happened to one message")
    show.add_argument("id", help="message id")
    show.add_argument("--node-settings", type=Path, required=True)
    show.set_defaults(func=_show)


def _open(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def verify_store(
    store: Path, *, agency: str, directory: Directory, gateway_roots: Path | None, now: datetime
) -> tuple[audit.Report, int]:
    """The report on ``store`` and how many gateway roots were checked."""
    from broker.gateway.audit import roots_in  # noqa: PLC0415 - only for this command
    from broker.node import audit_log  # noqa: PLC0415

    db = _open(store)
    try:
        stored = audit_log.records(db)
        tokens = audit_log.checkpoint_tokens(db)
    finally:
        db.close()
    if gateway_roots is not None and not gateway_roots.is_file():
        raise ConfigError(f"{gateway_roots}: no such gateway store")
    held = roots_in(gateway_roots, agency) if gateway_roots is not None else []
    checkpoints = []
    for token in [*tokens, *held]:
        keys = directory.signing_key(audit.checkpoint_kid(token), now=now)
        checkpoints.append(audit.open_checkpoint(token, keys.signing_key, node=agency))
    return audit.verify(stored, checkpoints), len(held)


def _settings(path: Path) -> Any:
    from broker.node.settings import load_settings  # noqa: PLC0415 - lazy: fast CLI start

    return load_settings(path, env={"CASEBRIDGE_NODE_TOKEN": "x" * 16})


def _verify(args: argparse.Namespace) -> int:
    settings = _settings(args.node_settings)
    now = datetime.now(UTC)
    directory = Directory.load(
        read_bytes(settings.directory_file), root_cert=read_certificate(settings.root_cert), now=now
    )
    try:
        report, held = verify_store(
            settings.store_path,
            agency=settings.agency,
            directory=directory,
            gateway_roots=args.gateway_roots,
            now=now,
        )
    except CasebridgeError as exc:
        print(f"BROKEN: a checkpoint does not verify: {exc.detail}")
        return 1
    if report.finding is not None:
        print(f"BROKEN: {report.finding}")
        return 1
    print(
        f"OK: {report.records} records, chain intact; {report.checkpoints} checkpoints "
        f"({held} held by the gateway) match, covering up to seq {report.covered_to}"
    )
    return 0


def _bound(text: str | None, *, end: bool) -> str | None:
    if text is None or "T" in text:
        return text
    return f"{text}T23:59:59Z" if end else f"{text}T00:00:00Z"


def _export(args: argparse.Namespace) -> int:
    from broker.node import audit_log  # noqa: PLC0415

    settings = _settings(args.node_settings)
    db = _open(settings.store_path)
    try:
        rows = audit_log.records(
            db, since=_bound(args.since, end=False), until=_bound(args.until, end=True)
        )
    finally:
        db.close()
    out: TextIO = args.output.open("w", encoding="utf-8", newline="") if args.output else sys.stdout
    try:
        items = [{**r.record.to_json(), "chain_hash": r.chain_hash.hex()} for r in rows]
        if args.format == "jsonl":
            for item in items:
                out.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")
        else:
            columns = [*audit.AuditRecord(seq=0, at="", entry=_blank()).to_json(), "chain_hash"]
            writer = csv.DictWriter(out, fieldnames=columns)
            writer.writeheader()
            writer.writerows(items)
    finally:
        if args.output:
            out.close()
    return 0


def _blank() -> audit.AuditEntry:
    return audit.AuditEntry(
        operation=audit.Operation.COLLECTION,
        actor="-",
        actor_kind=audit.ActorKind.SYSTEM,
        agency="-",
    )


def _show(args: argparse.Namespace) -> int:
    from broker.node import audit_log, corrections  # noqa: PLC0415

    settings = _settings(args.node_settings)
    db = _open(settings.store_path)
    db.row_factory = sqlite3.Row
    try:
        records = [r.record.to_json() for r in audit_log.records_about(db, args.id)]
        evidence = [
            # The sealed evidence's wire bytes (kept for evidence bundles) are not for a report.
            {k: v for k, v in dict(r).items() if k != "wire"}
            for r in db.execute(
                "SELECT * FROM evidence WHERE subject_id = ? ORDER BY seq", (args.id,)
            )
        ]
        consulted = [
            dict(r)
            for r in db.execute(
                "SELECT actor, justification, at FROM consultations WHERE message_id = ? "
                "ORDER BY seq",
                (args.id,),
            )
        ]
        lawful = corrections.marks(db, args.id)
    finally:
        db.close()
    document = {
        "message_id": args.id,
        "audit": records,
        "evidence": evidence,
        "consultations": consulted,
        **lawful,
    }
    print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0
