"""``casebridge message``: seal, open, border-check and inspect one message, outside a node.

For debugging and interop (docs/protocol.md section 13). Keys and the directory come from
files named by flags; the message from a file or stdin (``-``); results are JSON on stdout.

* ``seal --header H.json --body B.json --agency ID --signing-key KEY``: the wire bytes.
* ``open WIRE --agency ID --agreement-key KEY [--policy NL.yaml]``: every receiving step.
* ``verify-routing WIRE``: steps 1-11, what a border gateway checks.
* ``inspect WIRE``: what the message claims, nothing verified.

Common: ``--root ROOT.pem`` (pinned federation root) and ``--directory DIR.jws`` (signed
directory) for all but ``inspect``; ``--now 2026-11-28T12:00:00Z`` (default: the clock).
Keys are PEM PKCS#8 or a private JWK (JSON). Key ids come from the directory.

Exit status: 0 sealed / accepted / inspected; 1 refused (the JSON names ``reason`` and
``step``); 2 a local problem (unreadable file, bad arguments, a directory that does not load).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk

from broker import protocol
from broker.core.directory import Directory
from broker.core.header import parse_header
from broker.errors import ConfigError
from broker.pki import keyfiles


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "message",
        help="seal, open, verify-routing or inspect one message (debugging, interop)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def trust(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", type=Path, required=True, help="federation root certificate (PEM)")
        p.add_argument("--directory", type=Path, required=True, help="signed directory (JWS)")
        p.add_argument("--now", help="time to check at, RFC 3339 (default: the clock)")

    seal = verbs.add_parser("seal", help="seal a header and body; prints the wire bytes")
    trust(seal)
    seal.add_argument("--header", type=Path, required=True, help="header JSON (section 3)")
    seal.add_argument("--body", type=Path, required=True, help="body JSON")
    seal.add_argument("--agency", required=True, help="the sending agency id")
    seal.add_argument("--signing-key", type=Path, required=True, help="PEM or JWK")
    seal.set_defaults(func=_seal)

    open_ = verbs.add_parser("open", help="every receiving check; prints the outcome")
    trust(open_)
    open_.add_argument("wire", type=Path, help="message file, or - for stdin")
    open_.add_argument("--agency", required=True, help="the receiving agency id")
    open_.add_argument("--agreement-key", type=Path, required=True, help="PEM or JWK")
    open_.add_argument("--policy", type=Path, help="recipient policy YAML (default: honesty only)")
    open_.set_defaults(func=_open)

    route = verbs.add_parser("verify-routing", help="the gateway's checks (steps 1-11)")
    trust(route)
    route.add_argument("wire", type=Path, help="message file, or - for stdin")
    route.set_defaults(func=_verify_routing)

    look = verbs.add_parser("inspect", help="show what a message claims (nothing verified)")
    look.add_argument("wire", type=Path, help="message file, or - for stdin")
    look.set_defaults(func=_inspect)


def _now(args: argparse.Namespace) -> datetime:
    if not args.now:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(args.now.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--now {args.now!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise ConfigError("--now needs a time zone (e.g. Z)")
    return parsed


def _input(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    return keyfiles.read_bytes(path)


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    raw = keyfiles.read_bytes(path)
    if raw.lstrip().startswith(b"{"):
        try:
            key = jwk.JWK(**json.loads(raw)).get_op_key("sign")
        except Exception as exc:  # noqa: BLE001 - any JWK problem is a local configuration fault
            raise ConfigError(f"{path}: not a private JWK ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{path}: not an EC private key")
        return key
    return keyfiles.read_private_key(path)


def _directory(args: argparse.Namespace, now: datetime) -> Directory:
    return protocol.load_directory(
        keyfiles.read_bytes(args.directory),
        root_cert=keyfiles.read_certificate(args.root),
        now=now,
    )


def _json(path: Path) -> Any:
    try:
        return json.loads(_input(path))
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from None


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def _seal(args: argparse.Namespace) -> int:
    now = _now(args)
    directory = _directory(args, now)
    keys = directory.agency(args.agency, now=now)
    wire = protocol.seal(
        header=parse_header(_json(args.header)),
        body=_json(args.body),
        sender=protocol.SenderIdentity(
            agency_id=args.agency, signing_kid=keys.signing_kid, signing_key=_key(args.signing_key)
        ),
        directory=directory,
        now=now,
        schemas=protocol.load_schemas(),
    )
    sys.stdout.buffer.write(wire + b"\n")
    return 0


def _open(args: argparse.Namespace) -> int:
    now = _now(args)
    directory = _directory(args, now)
    schemas = protocol.load_schemas()
    policy = None
    if args.policy is not None:
        from broker.core.policy import (  # noqa: PLC0415 - only with --policy
            Federation,
            evaluate_recipient,
        )
        from broker.loaders import load_policy_file  # noqa: PLC0415 - only with --policy

        loaded = load_policy_file(args.policy)
        federation = Federation.from_directory(directory)

        def policy(opened: protocol.OpenedMessage) -> None:
            evaluate_recipient(
                loaded, opened.header, opened.body, federation=federation, schemas=schemas
            ).decision.raise_if_denied()

    keys = directory.agency(args.agency, now=now)
    outcome = protocol.check(
        _input(args.wire),
        recipient=protocol.RecipientIdentity(
            agency_id=args.agency,
            agreement_kid=keys.agreement_kid,
            agreement_key=_key(args.agreement_key),
        ),
        directory=directory,
        schemas=schemas,
        now=now,
        policy=policy,
    )
    _print(outcome.to_json())
    return 0 if outcome.accepted else 1


def _verify_routing(args: argparse.Namespace) -> int:
    now = _now(args)
    outcome = protocol.check_routing(_input(args.wire), directory=_directory(args, now), now=now)
    _print(outcome.to_json())
    return 0 if outcome.accepted else 1


def _inspect(args: argparse.Namespace) -> int:
    _print(protocol.inspect(_input(args.wire)).to_json())
    return 0
