"""``casebridge evidence``: export a message's proof for a third party, and verify it offline.

* ``export ID --settings FILE [--out FILE] [--with-body] [--actor NAME] [--justification TEXT]``:
  one self-contained bundle file (docs/protocol.md, "Evidence bundles"): the message's wire
  bytes, every evidence message about it, the signed directory with certificates and CRLs,
  the audit records about it with inclusion proofs against a signed checkpoint. The export is
  logged in the node's audit log as a disclosure (with whether the body is included).
* ``verify BUNDLE [--root ROOT_CERT]``: checks everything offline (no node, no network, no
  settings) and prints a plain report. Exit 0 when every check passes, 1 otherwise (each
  failed check named with its reason), 2 for an unusable command line or file.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from broker.core.bundle import BundleReport, verify_bundle
from broker.pki.keyfiles import read_bytes, read_certificate


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "evidence",
        help="export a message's proof for a third party; verify such a bundle offline",
        description="Evidence bundles: what a court, prosecutor or data-protection authority "
        "can check without a running node (docs/protocol.md, 'Evidence bundles').",
    )
    commands = parser.add_subparsers(dest="evidence_command", metavar="COMMAND", required=True)
    export = commands.add_parser("export", help="write the bundle of one message")
    export.add_argument("id", help="message id (sent or received by this node)")
    export.add_argument("--settings", type=Path, required=True, help="the node's settings file")
    export.add_argument("--out", type=Path, help="bundle file to write (default: stdout)")
    export.add_argument(
        "--with-body",
        action="store_true",
        help="disclose the signed body too (recipients only; logged as such)",
    )
    export.add_argument("--actor", help="who exports (logged; default: the node itself)")
    export.add_argument(
        "--justification",
        default="evidence bundle for a third party",
        help="why (logged in the audit log)",
    )
    export.set_defaults(func=_export)
    verify = commands.add_parser("verify", help="check a bundle offline and print a report")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--root", type=Path, help="the federation root certificate (PEM) to pin")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=_verify)


def _export(args: argparse.Namespace) -> int:
    # Lazy: the verifier must start without the node's dependencies.
    from broker.core.envelope import RecipientIdentity, SenderIdentity  # noqa: PLC0415
    from broker.core.trust import cert_kid  # noqa: PLC0415
    from broker.node.evidence_export import export_bundle  # noqa: PLC0415
    from broker.node.settings import load_settings  # noqa: PLC0415
    from broker.node.store import Store  # noqa: PLC0415
    from broker.pki.keyfiles import read_private_key  # noqa: PLC0415

    settings = load_settings(args.settings, env={"CASEBRIDGE_NODE_TOKEN": "x" * 16})
    agency = settings.agency
    signing_cert = read_certificate(settings.keys.signing_cert)
    agreement_cert = read_certificate(settings.keys.agreement_cert)
    with Store(settings.store_path) as store:
        data = export_bundle(
            store,
            args.id,
            sender=SenderIdentity(
                agency_id=agency,
                signing_kid=cert_kid(agency, signing_cert),
                signing_key=read_private_key(settings.keys.signing_key),
            ),
            recipient=RecipientIdentity(
                agency_id=agency,
                agreement_kid=cert_kid(agency, agreement_cert),
                agreement_key=read_private_key(settings.keys.agreement_key),
            ),
            root_cert=read_certificate(settings.root_cert),
            directory=read_bytes(settings.directory_file),
            with_body=args.with_body,
            actor=args.actor,
            justification=args.justification,
            now=datetime.now(UTC),
        )
    if args.out is None:
        sys.stdout.buffer.write(data + b"\n")
    else:
        args.out.write_bytes(data)
        print(f"wrote {args.out} ({len(data)} bytes)", file=sys.stderr)
    return 0


def _verify(args: argparse.Namespace) -> int:
    data = read_bytes(args.bundle)
    root = read_certificate(args.root) if args.root is not None else None
    report = verify_bundle(data, root_cert=root, now=datetime.now(UTC))
    if args.json:
        print(json.dumps(report_json(report), indent=2, ensure_ascii=False))
    else:
        print(render(report))
    return 0 if report.ok else 1


def report_json(report: BundleReport) -> dict[str, object]:
    """The report as a JSON document (for tooling)."""
    return {
        "ok": report.ok,
        "message_id": report.message_id,
        "exporter": report.exporter,
        "exported_at": report.exported_at,
        "root_pinned": report.root_pinned,
        "root_fingerprint": report.root_fingerprint,
        "header": report.header,
        "digest": report.digest,
        "body": report.body,
        "evidence": [
            {
                "kind": e.kind,
                "actor": e.actor,
                "signed_at": e.signed_at,
                "at": e.at,
                "reason": e.reason,
                "rule_id": e.rule_id,
                "digest_bound": e.digest_bound,
            }
            for e in report.evidence
        ],
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks],
    }


def _outcome(report: BundleReport) -> str:
    kinds = {e.kind for e in report.evidence}
    if "rejected" in kinds or "relay_rejected" in kinds:
        return "REFUSED"
    if "read" in kinds:
        return "DELIVERED and READ"
    if "delivered" in kinds:
        return "DELIVERED"
    if "relay_accepted" in kinds:
        return "RELAYED (no delivery evidence in the bundle)"
    return "no evidence of delivery in the bundle"


def render(report: BundleReport) -> str:
    """The plain-text report: the facts (only what verified), then every check."""
    lines = [
        f"Evidence bundle for message {report.message_id}: "
        + ("VERIFIED" if report.ok else "NOT VERIFIED")
    ]
    if not report.root_pinned and report.root_fingerprint is not None:
        lines.append(
            "  WARNING: no --root given; the bundle's own root was trusted "
            f"(fingerprint {report.root_fingerprint}): compare it out of band"
        )
    h = report.header
    if h is not None:
        sender = h["sender"]["agency"]
        when = datetime.fromtimestamp(int(h["iat"]), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        lines += [
            "",
            f"  What:  a {h['type']} message (id {h['id']}, conversation {h['conversation']})",
            f"  From:  {sender}",
            f"  To:    {', '.join(h['recipients'])}"
            + (f" (task force {h['task_force']})" if h.get("task_force") else ""),
            f"  When:  signed at {when}",
            f"  Why:   purpose {h['purpose']}; legal basis: {h['legal_basis']}",
            f"  Marks: handling {h['handling']}, TLP {h['tlp']}; data categories: "
            + (", ".join(h["categories"]) or "none declared"),
            f"  Bytes: SHA-256 {report.digest}",
            f"  Outcome: {_outcome(report)}",
        ]
        for e in report.evidence:
            extra = f", reason {e.reason} (rule {e.rule_id})" if e.reason else ""
            stated = f", stating {e.at}" if e.at else ""
            lines.append(f"    - {e.kind} by {e.actor}, signed {e.signed_at}{stated}{extra}")
        if report.body is not None:
            lines.append("  Body (disclosed by the exporter, signed by the sender):")
            body = json.dumps(report.body, indent=2, ensure_ascii=False, sort_keys=True)
            lines += [f"    {line}" for line in body.splitlines()]
        else:
            lines.append("  Body: not disclosed")
    if report.exporter is not None:
        lines.append(f"  Exported by {report.exporter} at {report.exported_at}")
    lines += ["", "Checks:"]
    for check in report.checks:
        lines.append(f"  [{'OK' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
    failures = report.failures
    if failures:
        lines += [
            "",
            f"FAILED: {len(failures)} check(s): "
            + "; ".join(f"{c.name}: {c.detail}" for c in failures),
        ]
    return "\n".join(lines)
