"""``casebridge policy``: check, explain, sign and verify country policy files.

* ``check FILE...``  — validate (schema, line numbers) and lint (unreachable, shadowed,
  unknown types and paths, unverifiable redactions). Exit 0 clean (notes allowed), 1 findings,
  2 a file refused.
* ``explain --draft FILE --from CC --to CC`` — what pre-flight, both border gateways and the
  receiving node would decide about a draft, why, and the redacted body.
* ``sign FILE`` — sign with the country CA key (from ``--pki`` or ``--key``/``--cert``).
* ``verify FILE`` — check a signed policy against the country CA and the federation root.

The engine lives in ``broker.core.policy``; this module parses arguments, reads files and the
clock (here at the edge only) and prints.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.core import pki
from broker.core.directory import Directory
from broker.core.header import COUNTRY_RE, Header, Onward, agency_country
from broker.core.jose import b64url_decode
from broker.core.policy import (
    Decision,
    Federation,
    Outcome,
    Policy,
    Severity,
    evaluate_egress,
    evaluate_ingress,
    evaluate_recipient,
    lint,
    parse_policy,
    preflight,
    sign_policy,
    verify_policy,
)
from broker.core.policy.signing import policy_kid, unverified_policy_country
from broker.core.schemas import SchemaRegistry
from broker.errors import (
    CasebridgeError,
    ConfigError,
    InvalidMessage,
    PolicyError,
    PolicyProblem,
)
from broker.loaders import default_schema_dir, load_policy_file, load_schema_registry
from broker.pki.dev import DEMO_SPEC
from broker.pki.store import DIRECTORY_FILE, ROOT, PkiStore, country_stem

DEFAULT_POLICIES: Final = Path("docs/policies")
PLACEHOLDER_ID: Final = "00000000-0000-4000-8000-000000000000"
_JWS_RE: Final = re.compile(rb"^\s*[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\s*$")
_DRAFT_KEYS: Final = frozenset(
    {
        "type",
        "type_version",
        "sender",
        "recipients",
        "handling",
        "tlp",
        "purpose",
        "legal_basis",
        "categories",
        "derived_from",
        "original_onward",
        "onward",
        "body",
    }
)
Handler = Callable[[argparse.Namespace], int]


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or 'unreadable'}") from None


def _schemas(args: argparse.Namespace) -> SchemaRegistry:
    directory: Path | None = args.schemas
    return load_schema_registry(directory or default_schema_dir())


# ----------------------------------------------------------------- federation ---


def _demo_federation() -> Federation:
    kinds = {a.agency_id: a.kind for c in DEMO_SPEC.countries for a in c.agencies}
    return Federation(eu={c.code: c.eu for c in DEMO_SPEC.countries}, agency_kind=kinds.get)


def _directory(pki_dir: Path) -> Directory:
    store = PkiStore.from_env(pki_dir)
    root = store.read_cert(ROOT)
    return Directory.load(store.read_bytes(DIRECTORY_FILE), root_cert=root, now=_now())


def _federation(args: argparse.Namespace) -> tuple[Federation, str, Mapping[str, Sequence[str]]]:
    """The federation view, a description of its source, and agencies by country.

    With ``--pki`` the verified signed directory is used; if it cannot be loaded (e.g. it
    expired) the PKI's own records are used instead, and the source line says so: these
    are planning tools, the gateways themselves only ever use the verified directory.
    """
    pki_dir: Path | None = args.pki
    if pki_dir is None:
        agencies = {c.code: tuple(a.agency_id for a in c.agencies) for c in DEMO_SPEC.countries}
        return _demo_federation(), "built-in demo federation (no --pki)", agencies
    try:
        directory = _directory(pki_dir)
    except InvalidMessage as exc:
        return _state_federation(pki_dir, f"{exc.reason.value}: {exc.detail}")
    by_country: dict[str, list[str]] = {}
    for agency in directory.agencies():
        by_country.setdefault(agency.country, []).append(agency.agency_id)
    source = f"directory {pki_dir / DIRECTORY_FILE} (serial {directory.serial})"
    return Federation.from_directory(directory), source, by_country


def _state_federation(
    pki_dir: Path, why: str
) -> tuple[Federation, str, Mapping[str, Sequence[str]]]:
    state = PkiStore.from_env(pki_dir).read_state()
    kinds = {a.agency_id: a.kind for a in state.agencies.values() if not a.revoked}
    by_country: dict[str, list[str]] = {}
    for agency_id in sorted(kinds):
        by_country.setdefault(agency_country(agency_id), []).append(agency_id)
    federation = Federation(
        eu={c.code: c.eu for c in state.countries.values()}, agency_kind=kinds.get
    )
    return federation, f"PKI records in {pki_dir} (directory not usable: {why})", by_country


# ---------------------------------------------------------------------- check ---


def _is_signed(data: bytes) -> bool:
    return _JWS_RE.match(data) is not None


def _load_any(path: Path, data: bytes, args: argparse.Namespace) -> tuple[Policy, str]:
    """A policy from YAML or a signed file; the second value says how it was checked."""
    if not _is_signed(data):
        return parse_policy(data, source=str(path)), "unsigned YAML"
    pki_dir: Path | None = args.pki
    token = data.decode("ascii").strip()
    if pki_dir is None:
        # Without the federation root the signature cannot be checked: say so, lint anyway.
        payload = token.split(".")[1]
        return (
            parse_policy(b64url_decode(payload, what="policy payload"), source=str(path)),
            "signed, signature NOT checked (give --pki to check it)",
        )
    cc = _signer(path, token)
    store = PkiStore.from_env(pki_dir)
    policy = verify_policy(
        token,
        ca_cert=store.read_cert(country_stem(cc, "ca")),
        root_cert=store.read_cert(ROOT),
        now=_now(),
        source=str(path),
    )
    return policy, f"signature valid ({cc} CA)"


def _signer(path: Path, token: str) -> str:
    cc = unverified_policy_country(token)
    if cc is None:
        raise PolicyError(
            str(path), [PolicyProblem(line=None, message="not a signed Casebridge policy")]
        )
    return cc


def _print_refusal(exc: PolicyError, out: TextIO) -> None:
    for problem in exc.problems:
        where = f"{exc.source}:{problem.line}" if problem.line is not None else exc.source
        print(f"{where}: error: {problem.message}", file=out)


def _cmd_check(args: argparse.Namespace) -> int:
    catalogue = None if args.no_catalogue else _schemas(args)
    federation, _, _ = _federation(args)
    worst = 0
    for path in args.files:
        try:
            policy, how = _load_any(path, _read(path), args)
        except PolicyError as exc:
            _print_refusal(exc, sys.stdout)
            print(f"{path}: REFUSED", file=sys.stdout)
            worst = 2
            continue
        findings = lint(policy, eu=federation.eu, catalogue=catalogue)
        for finding in findings:
            print(f"{path}:{finding}")
        warnings = sum(1 for f in findings if f.severity is Severity.WARNING)
        notes = len(findings) - warnings
        print(
            f"{path}: {policy.country} v{policy.version}, {len(policy.rules)} rules, {how}: "
            f"{warnings} warning(s), {notes} note(s)"
        )
        if warnings:
            worst = max(worst, 1)
    return worst


# -------------------------------------------------------------------- explain ---


def _draft(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(_read(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or "body" not in raw or "type" not in raw:
        raise ConfigError(f"{path}: a draft is a mapping with at least type and body")
    unknown = sorted(set(raw) - _DRAFT_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown draft members {unknown}")
    return raw


def _pick(
    agencies: Iterable[str], federation: Federation, kind: str | None, what: str, cc: str
) -> str:
    for agency in agencies:
        if kind is None or federation.agency_kind(agency) == kind:
            return agency
    raise ConfigError(f"no {kind or ''} agency in {cc} for the {what}; name it in the draft")


def _onward(raw: object, what: str) -> Onward:
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} must be a mapping with allowed and exclude")
    return Onward(
        allowed=bool(raw.get("allowed", False)), exclude=tuple(sorted(raw.get("exclude", ())))
    )


def _header(
    draft: Mapping[str, Any],
    args: argparse.Namespace,
    federation: Federation,
    agencies: Mapping[str, Sequence[str]],
) -> Header:
    src: str = args.source
    dst: str = args.destination
    sender = draft.get("sender") or _pick(
        agencies.get(src, ()), federation, args.sender_kind, "sender", src
    )
    if agency_country(sender) != src:
        raise ConfigError(f"the draft's sender {sender} is not in {src} (--from)")
    recipients = [r for r in draft.get("recipients") or () if agency_country(r) == dst]
    if not recipients:
        if draft.get("recipients"):
            raise ConfigError(f"the draft names no recipient in {dst} (--to)")
        recipients = [
            _pick(agencies.get(dst, ()), federation, args.recipient_kind, "recipient", dst)
        ]
    header = Header(
        fed="explain",
        id=PLACEHOLDER_ID,
        type=draft["type"],
        type_version=int(draft.get("type_version", 1)),
        conversation=PLACEHOLDER_ID,
        sender=sender,
        recipients=tuple(sorted(recipients)),
        handling=draft.get("handling", "H1"),
        tlp=draft.get("tlp", "AMBER"),
        purpose=draft.get("purpose", "investigation"),
        legal_basis=draft.get("legal_basis", "(not given)"),
        categories=tuple(sorted(draft.get("categories") or ())),
        derived_from=draft.get("derived_from"),
        onward=_onward(draft.get("onward", {}), "onward"),
        iat=0,
        exp=1,
    )
    try:
        return header.validate()
    except CasebridgeError as exc:
        raise ConfigError(f"draft header: {exc.detail}") from None


def _policy_for(directory: Path, cc: str) -> Policy:
    return load_policy_file(directory / f"{cc.lower()}.yaml")


def _kind(federation: Federation, agency: str) -> str:
    return federation.agency_kind(agency) or "unknown kind"


def _decision_lines(decisions: Sequence[Decision], indent: str = "   ") -> list[str]:
    lines: list[str] = []
    for d in decisions:
        target = f" -> {d.recipient}" if d.recipient else ""
        lines.append(f"{indent}{d.verdict.value.upper():5}  rule {d.rule_id}{target}")
        lines.append(f"{indent}       {d.reason}")
    return lines


def _text_report(
    *,
    header: Header,
    federation: Federation,
    federation_source: str,
    policies: tuple[Policy, Policy],
    outcomes: Mapping[str, Outcome],
    draft_categories: frozenset[str],
) -> str:
    origin, destination = policies
    pre = outcomes["preflight"]
    recipients = ", ".join(f"{r} ({_kind(federation, r)})" for r in header.recipients)
    lines = [
        f"Draft     {header.type} v{header.type_version}, {header.handling}, TLP:{header.tlp}, "
        f"purpose {header.purpose}",
        f"From      {header.sender} ({_kind(federation, header.sender)}, {header.sender_country})",
        f"To        {recipients}",
        f"Policies  {origin.country} v{origin.version} ({origin.source}), "
        f"{destination.country} v{destination.version} ({destination.source})",
        f"Federation {federation_source}",
        "",
        f"1. Pre-flight at the sending node ({origin.country} policy, and "
        f"{destination.country}'s ingress rules)",
        *_decision_lines(pre.decisions),
    ]
    if pre.decision.redactions:
        lines.append("   Redactions applied to the body:")
        width = max(len(r.path + (f" to {r.to}" if r.to else "")) for r in pre.decision.redactions)
        for r in pre.decision.redactions:
            what = r.path + (f" to {r.to}" if r.to else "")
            lines.append(f"     {r.op:<8} {what:<{width}}  [{r.rule_id}]")
    declared = tuple(pre.categories or ())
    removed = sorted(draft_categories - set(declared))
    label = "Categories to declare:" if pre.allowed else "Categories of the draft:"
    lines.append(f"   {label} {', '.join(declared) or '(none)'}")
    if removed:
        lines.append(f"   Removed by redaction:  {', '.join(removed)}")
    verdict = "would be sealed and sent" if pre.allowed else "is refused: nothing is sent"
    lines.append(f"   => the message {verdict}")
    lines += [
        "",
        f"2. Border gateway {origin.country}, egress to {destination.country} (signed header only)",
        *_decision_lines(outcomes["egress"].decisions),
        "",
        f"3. Border gateway {destination.country}, ingress from {origin.country} "
        "(signed header only)",
        *_decision_lines(outcomes["ingress"].decisions),
        "",
        f"4. Receiving node ({destination.country} policy, honesty check on the body)",
        *_decision_lines(outcomes["recipient"].decisions),
        "",
        "Redacted body:" if pre.allowed else "Body as far as pre-flight got (not sent):",
    ]
    body = json.dumps(pre.body, indent=2, ensure_ascii=False)
    lines += ["   " + line for line in body.splitlines()]
    return "\n".join(lines)


def _cmd_explain(args: argparse.Namespace) -> int:
    for flag in ("source", "destination"):
        value: str = getattr(args, flag)
        if not COUNTRY_RE.fullmatch(value):
            raise ConfigError(f"--{'from' if flag == 'source' else 'to'} must be a country code")
    federation, federation_source, agencies = _federation(args)
    draft = _draft(args.draft)
    header = _header(draft, args, federation, agencies)
    registry = _schemas(args)
    origin = _policy_for(args.policies, args.source)
    destination = _policy_for(args.policies, args.destination)
    body = draft["body"]
    registry.validate(header.type, header.type_version, body)
    original = (
        _onward(draft["original_onward"], "original_onward") if "original_onward" in draft else None
    )
    pre = preflight(
        origin,
        header,
        body,
        federation=federation,
        schemas=registry,
        original_onward=lambda _message_id: original,
        category_paths=registry.annotated_paths,
        peer_policies={destination.country: destination},
    )
    sealed = replace(header, categories=pre.categories or header.categories)
    sealed_body = pre.body if pre.body is not None else body
    outcomes = {
        "preflight": pre,
        "egress": evaluate_egress(
            origin, sealed, federation=federation, original_onward=lambda _m: original
        ),
        "ingress": evaluate_ingress(destination, sealed, federation=federation),
        "recipient": evaluate_recipient(
            destination, sealed, sealed_body, federation=federation, schemas=registry
        ),
    }
    if args.format == "json":
        out = {
            "header": sealed.to_json(),
            "policies": {
                p.country: {"version": p.version, "digest": p.digest, "source": p.source}
                for p in (origin, destination)
            },
            **{
                point: {
                    "decision": o.decision.to_json(),
                    "decisions": [d.to_json() for d in o.decisions],
                }
                for point, o in outcomes.items()
            },
            "body": sealed_body,
        }
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(
            _text_report(
                header=sealed,
                federation=federation,
                federation_source=federation_source,
                policies=(origin, destination),
                outcomes=outcomes,
                draft_categories=registry.categories(header.type, header.type_version, body),
            )
        )
    return 0 if all(o.allowed for o in outcomes.values()) else 1


# ---------------------------------------------------------------- sign/verify ---


def _signing_material(
    args: argparse.Namespace, country: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if args.key is not None or args.cert is not None:
        if args.key is None or args.cert is None:
            raise ConfigError("--key and --cert go together")
        try:
            key = serialization.load_pem_private_key(_read(args.key), password=None)
            cert = x509.load_pem_x509_certificate(_read(args.cert))
        except (TypeError, ValueError):
            raise ConfigError("cannot read --key/--cert (PEM; encrypted keys: use --pki)") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("--key is not an EC private key")
        return key, cert
    certified = PkiStore.from_env(args.pki).read_certified(country_stem(country, "ca"))
    return certified.key, certified.cert


def _cmd_sign(args: argparse.Namespace) -> int:
    path: Path = args.file
    data = _read(path)
    policy = parse_policy(data, source=str(path))
    key, cert = _signing_material(args, policy.country)
    token = sign_policy(data, ca_key=key, ca_cert=cert, source=str(path))
    out: Path = args.output or path.with_suffix(".jws")
    out.write_text(token + "\n", encoding="ascii")
    kid = policy_kid(pki.country_of(cert), cert)
    print(f"signed {policy.country} v{policy.version} ({len(policy.rules)} rules) -> {out}")
    print(f"kid {kid}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    path: Path = args.file
    data = _read(path)
    token = data.decode("ascii", errors="replace").strip()
    cc = _signer(path, token)
    store = PkiStore.from_env(args.pki)
    policy = verify_policy(
        token,
        ca_cert=store.read_cert(country_stem(cc, "ca")),
        root_cert=store.read_cert(ROOT),
        now=_now(),
        source=str(path),
    )
    print(
        f"{path}: valid policy of {policy.country} v{policy.version}, {len(policy.rules)} "
        f"rules, signed by the {cc} CA (sha256 {policy.digest})"
    )
    return 0


def _guard(handler: Handler) -> Handler:
    """Print a refused policy with every problem and its line before the generic error line."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except PolicyError as exc:
            if exc.problems and (len(exc.problems) > 1 or exc.problems[0].line is not None):
                _print_refusal(exc, sys.stderr)
            raise

    return run


# ------------------------------------------------------------------- register ---


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pki",
        type=Path,
        metavar="DIR",
        help="PKI directory (root CA, country CAs, signed directory); default: built-in demo",
    )
    parser.add_argument(
        "--schemas", type=Path, metavar="DIR", help="message schemas (default: schemas/)"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``casebridge policy ...`` to the top-level parser."""
    parser = subparsers.add_parser(
        "policy",
        help="country policies: check, explain a draft, sign, verify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)

    p = sub.add_parser("check", help="validate and lint policy files (YAML or signed)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument(
        "--no-catalogue", action="store_true", help="do not check types and paths against schemas"
    )
    _common(p)
    p.set_defaults(func=_guard(_cmd_check))

    p = sub.add_parser(
        "explain", help="what every evaluation point would decide about a draft, and why"
    )
    p.add_argument("--draft", type=Path, required=True, metavar="FILE", help="draft (YAML/JSON)")
    p.add_argument("--from", dest="source", required=True, metavar="CC", help="sender country")
    p.add_argument("--to", dest="destination", required=True, metavar="CC", help="destination")
    p.add_argument(
        "--policies",
        type=Path,
        default=DEFAULT_POLICIES,
        metavar="DIR",
        help="directory with <cc>.yaml policy files (default: docs/policies)",
    )
    p.add_argument("--sender-kind", metavar="KIND", help="pick the sender by kind if not named")
    p.add_argument(
        "--recipient-kind", metavar="KIND", help="pick the recipient by kind if not named"
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    _common(p)
    p.set_defaults(func=_guard(_cmd_explain))

    p = sub.add_parser("sign", help="sign a policy file with its country CA key")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("-o", "--output", type=Path, metavar="OUT", help="default: FILE with .jws")
    p.add_argument("--pki", type=Path, default=Path("certs/dev"), metavar="DIR")
    p.add_argument("--key", type=Path, metavar="PEM", help="country CA key (instead of --pki)")
    p.add_argument("--cert", type=Path, metavar="PEM", help="country CA certificate")
    p.set_defaults(func=_guard(_cmd_sign))

    p = sub.add_parser("verify", help="verify a signed policy against the federation root")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--pki", type=Path, default=Path("certs/dev"), metavar="DIR")
    p.set_defaults(func=_guard(_cmd_verify))

    # Imported here: publishing needs NATS, the other policy commands do not.
    from broker.cli.directory import add_policy_publish  # noqa: PLC0415

    add_policy_publish(sub)
