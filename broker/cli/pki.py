"""``casebridge pki``: run a federation PKI kept in a directory on disk (default ``certs/dev``).

The secretariat's tool (root CA, secretariat TLS CA, directory signing) and, in the dev
federation, every country's tool too. Issuing and validation logic lives in
``broker.core.pki`` / ``broker.core.directory``; files in ``broker.pki.store``. This module only
parses arguments, reads the clock (``datetime.now(UTC)``, here at the edge and nowhere else) and
prints. It never prints key material.
"""

from __future__ import annotations

import argparse
import ipaddress
import textwrap
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509

from broker.cli import pki_ceremony
from broker.core import pki
from broker.core.directory import (
    AgencyEntry,
    CountryEntry,
    Directory,
    TaskForce,
    build_directory,
    root_fingerprint,
)
from broker.core.header import AGENCY_RE, COUNTRY_RE, TASK_FORCE_RE, agency_country
from broker.core.trust import AGENCY_KINDS, cert_kid
from broker.errors import ConfigError, PKIError, Reason
from broker.pki import issuing
from broker.pki.signer import Pkcs11Key, TokenAccess, TokenKeyRef
from broker.pki.store import (
    DEFAULT_DIR,
    DIRECTORY_FILE,
    HUB,
    ROOT,
    SECRETARIAT,
    AgencyRecord,
    CountryRecord,
    PkiStore,
    Revocation,
    StoreState,
    TaskForceRecord,
    agency_stem,
    country_stem,
)

REASONS: Final = (
    "unspecified",
    "key_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "privilege_withdrawn",
)
DEFAULT_VALID_HOURS: Final = 24
Handler = Callable[[argparse.Namespace], int]


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _store(args: argparse.Namespace) -> PkiStore:
    directory: Path = args.dir
    return PkiStore.from_env(directory)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain left-aligned text table (``(none)`` when there are no rows)."""
    cells = [[str(c) for c in row] for row in rows]
    if not cells:
        return "  (none)"
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join("  " + line.rstrip() for line in lines)


def _dn(cert: x509.Certificate) -> str:
    """RFC 4514 subject, the form nats-server ``verify_and_map`` matches user names against."""
    return cert.subject.rfc4514_string()


# ----------------------------------------------------------------------- init ---


def _cmd_init(args: argparse.Namespace) -> int:
    store = _store(args)
    if store.exists() and not args.force:
        raise ConfigError(f"a PKI already exists in {store.base} (use --force to replace it)")
    now = _now()
    token = None if args.pkcs11 is None else TokenKeyRef.parse(args.pkcs11)
    root_key = None if token is None else Pkcs11Key.generate(token, TokenAccess.from_env())
    root = issuing.create_root_ca(args.federation_id, now=now, key=root_key)
    hub_domains = tuple(args.hub_domain or ["casebridge.test"])
    secretariat = issuing.issue_secretariat_ca(
        root, now=now, dns_domains=hub_domains, allow_loopback=args.allow_loopback
    )
    if token is None:
        store.write_certified(ROOT, root)
    else:
        store.write_token_ref(ROOT, token)
        store.write_cert(ROOT, root.cert)
    store.write_certified(SECRETARIAT, secretariat)
    store.write_state(
        StoreState(
            federation_id=args.federation_id,
            hub_domains=hub_domains,
            allow_loopback=args.allow_loopback,
        )
    )
    print(f"federation {args.federation_id!r} created in {store.base}")
    until = _when(root.cert.not_valid_after_utc)
    print(f"  root CA         {store.path(ROOT + '.pem')}  (valid until {until})")
    print(f"  root SHA-256    {root_fingerprint(root.cert)}")
    print(f"  secretariat CA  {store.path(SECRETARIAT + '.pem')}")
    print(f"  hub domains     {', '.join(hub_domains)}")
    if args.allow_loopback:
        print("  loopback names allowed for the hub (DEV ONLY)")
    if store.encrypts_keys:
        print("  private keys encrypted with $CASEBRIDGE_KEY_PASSPHRASE")
    return 0


# -------------------------------------------------------------- issue-country ---


def _cmd_issue_country(args: argparse.Namespace) -> int:
    store = _store(args)
    state = store.read_state()
    code: str = args.code.upper()
    if not COUNTRY_RE.fullmatch(code):
        raise PKIError(f"invalid country code {args.code!r} (ISO 3166 alpha-2, e.g. DE)")
    if code in state.countries and not args.force:
        raise PKIError(f"country {code} already exists (--force re-issues its CA)")
    networks: tuple[pki.IPNetwork, ...] = tuple(args.ip_network or [])
    dns = tuple(args.dns_domain) if args.dns_domain else issuing.default_dns_domains(code)
    root = store.read_certified(ROOT)
    ca = issuing.issue_country_ca(
        root,
        country=code,
        now=_now(),
        dns_domains=dns,
        ip_networks=networks,
        allow_loopback=args.allow_loopback,
    )
    store.write_certified(country_stem(code, "ca"), ca)
    store.write_state(
        state.with_country(
            CountryRecord(
                code=code,
                name=args.name,
                eu=args.eu,
                dns_domains=dns,
                ip_networks=tuple(str(n) for n in networks),
                allow_loopback=args.allow_loopback,
            )
        )
    )
    print(f"country CA {code} ({args.name}, {'EU' if args.eu else 'non-EU'}) issued")
    print(f"  certificate     {store.path(country_stem(code, 'ca') + '.pem')}")
    print(f"  DNS subtrees    {', '.join(dns)}")
    if networks:
        print(f"  IP subtrees     {', '.join(str(n) for n in networks)}")
    if args.allow_loopback:
        print("  loopback names allowed (DEV ONLY)")
    return 0


# --------------------------------------------------------------- issue-agency ---


def _supersede(
    state: StoreState, record: AgencyRecord, usages: Iterable[str], now: datetime
) -> StoreState:
    """Revoke (reason superseded) the current certificates of ``usages`` before re-issuing."""
    country = agency_country(record.agency_id)
    revoked = tuple(
        Revocation(
            country=country,
            serial=record.serials[usage],
            revoked_at=now,
            reason="superseded",
            subject=f"{record.agency_id} {usage}",
        )
        for usage in usages
        if usage in record.serials
    )
    return state.with_revocations(revoked)


def _cmd_issue_agency(args: argparse.Namespace) -> int:
    store = _store(args)
    state = store.read_state()
    agency_id: str = args.agency_id
    if not AGENCY_RE.fullmatch(agency_id) or TASK_FORCE_RE.fullmatch(agency_id):
        raise PKIError(
            f"invalid agency id {agency_id!r} (expected <cc>.<name>, e.g. de.lka-berlin)"
        )
    country = agency_country(agency_id)
    if country not in state.countries:
        raise PKIError(f"no country CA for {country}: run `casebridge pki issue-country {country}`")
    now = _now()
    existing = state.agencies.get(agency_id)
    if existing is not None:
        if not args.renew:
            raise PKIError(f"agency {agency_id} exists (--renew re-issues its certificates)")
        state = _supersede(state, existing, existing.serials, now)
    ca = store.read_certified(country_stem(country, "ca"))
    creds = issuing.issue_agency(ca, agency_id=agency_id, kind=args.kind, name=args.name, now=now)
    store.write_certified(agency_stem(agency_id, "signing"), creds.signing)
    store.write_certified(agency_stem(agency_id, "agreement"), creds.agreement)
    serials = {
        "signing": creds.signing.cert.serial_number,
        "agreement": creds.agreement.cert.serial_number,
    }
    tls = None
    if not args.no_tls:
        tls = issuing.issue_agency_tls(
            ca, agency_id=agency_id, kind=args.kind, name=args.name, now=now
        )
        store.write_certified(agency_stem(agency_id, "tls"), tls, [ca.cert])
        serials["tls"] = tls.cert.serial_number
    else:
        store.path(agency_stem(agency_id, "tls") + ".pem").unlink(missing_ok=True)
    record = AgencyRecord(agency_id=agency_id, kind=args.kind, name=args.name, serials=serials)
    store.write_state(state.with_agency(record))
    print(f"agency {agency_id} ({args.kind}, {args.name}) {'renewed' if existing else 'issued'}")
    print(f"  signing kid     {cert_kid(agency_id, creds.signing.cert)}")
    print(f"  agreement kid   {cert_kid(agency_id, creds.agreement.cert)}")
    if tls is not None:
        print(f"  TLS client DN   {_dn(tls.cert)}")
    print(f"  files           {store.path(f'agencies/{agency_id}')}/")
    print("  publish with    casebridge pki directory")
    return 0


# ------------------------------------------------------------------ issue-tls ---


def _ips(values: Sequence[pki.IPAddress] | None) -> tuple[pki.IPAddress, ...]:
    return tuple(values or [])


def _cmd_issue_tls(args: argparse.Namespace) -> int:
    store = _store(args)
    state = store.read_state()
    role: str = args.role
    target: str | None = args.target
    now = _now()
    if role == "hub":
        secretariat = store.read_certified(SECRETARIAT)
        issued = issuing.issue_hub_tls(
            secretariat, host_names=args.host or [], ip_addresses=_ips(args.ip), now=now
        )
        stem, issuer = HUB, secretariat.cert
    elif role in ("server", "leaf"):
        code = (target or "").upper()
        if code not in state.countries:
            raise PKIError(f"{role} needs a known country code as TARGET, got {target!r}")
        if role == "server":
            ca = store.read_certified(country_stem(code, "ca"))
            issued = issuing.issue_server_tls(
                ca, host_names=args.host or [], ip_addresses=_ips(args.ip), now=now
            )
            stem, issuer = country_stem(code, "server"), ca.cert
        else:
            secretariat = store.read_certified(SECRETARIAT)
            issued = issuing.issue_leaf_tls(secretariat, country=code, now=now)
            stem, issuer = country_stem(code, "leaf"), secretariat.cert
    else:
        record = state.agencies.get(target or "")
        if record is None or target is None:
            raise PKIError(f"client needs a known agency id as TARGET, got {target!r}")
        ca = store.read_certified(country_stem(agency_country(target), "ca"))
        issued = issuing.issue_agency_tls(
            ca, agency_id=target, kind=record.kind, name=record.name, now=now
        )
        stem, issuer = agency_stem(target, "tls"), ca.cert
        serials = {**record.serials, "tls": issued.cert.serial_number}
        state = _supersede(state, record, ["tls"], now).with_agency(
            AgencyRecord(
                agency_id=target,
                kind=record.kind,
                name=record.name,
                serials=serials,
                revoked=record.revoked,
            )
        )
    store.write_certified(stem, issued, [issuer])
    store.write_state(state)
    print(f"{role} TLS certificate issued (valid until {_when(issued.cert.not_valid_after_utc)})")
    print(f"  subject DN      {_dn(issued.cert)}")
    print(f"  key / chain     {store.path(stem + '.key')}  {store.path(stem + '-chain.pem')}")
    return 0


# ----------------------------------------------------------------- task-force ---


def _cmd_task_force(args: argparse.Namespace) -> int:
    store = _store(args)
    state = store.read_state()
    tf_id: str = args.task_force_id
    if not TASK_FORCE_RE.fullmatch(tf_id):
        raise PKIError(f"invalid task force id {tf_id!r} (expected tf.<name>)")
    if args.delete:
        if tf_id not in state.task_forces:
            raise PKIError(f"no task force {tf_id}")
        store.write_state(state.without_task_force(tf_id))
        print(f"task force {tf_id} deleted")
        return 0
    if not args.name or not args.member:
        raise PKIError("a task force needs --name and at least one --member")
    unknown = sorted(set(args.member) - set(state.agencies))
    if unknown:
        raise PKIError(f"unknown member agencies {unknown}")
    members = tuple(sorted(set(args.member)))
    record = TaskForceRecord(task_force_id=tf_id, name=args.name, members=members)
    store.write_state(state.with_task_force(record))
    print(f"task force {tf_id} ({args.name}): {', '.join(members)}")
    return 0


# --------------------------------------------------------------------- revoke ---


def _cmd_revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    state = store.read_state()
    record = state.agencies.get(args.agency_id)
    if record is None:
        raise PKIError(f"unknown agency {args.agency_id!r}")
    if record.revoked:
        raise PKIError(f"agency {args.agency_id} is already revoked")
    now = _now()
    country = agency_country(record.agency_id)
    added = tuple(
        Revocation(
            country=country,
            serial=serial,
            revoked_at=now,
            reason=args.reason,
            subject=f"{record.agency_id} {usage}",
        )
        for usage, serial in sorted(record.serials.items())
    )
    revoked = AgencyRecord(
        agency_id=record.agency_id,
        kind=record.kind,
        name=record.name,
        serials=record.serials,
        revoked=True,
    )
    store.write_state(state.with_agency(revoked).with_revocations(added))
    print(f"agency {record.agency_id} revoked ({args.reason}): {len(added)} certificates")
    print("  nothing changes for peers until you run: casebridge pki directory")
    return 0


# ------------------------------------------------------------------ directory ---


def sign_directory(store: PkiStore, *, now: datetime, valid_for: timedelta) -> tuple[bytes, int]:
    """Build CRLs and the directory from the store, sign it; returns (signed bytes, serial)."""
    state = store.read_state()
    if not state.countries:
        raise PKIError("no countries yet: run `casebridge pki issue-country` first")
    root = store.read_certified(ROOT)
    next_update = now + valid_for
    countries = []
    for code, record in sorted(state.countries.items()):
        ca_stem = country_stem(code, "ca")
        ca_cert = store.read_cert(ca_stem)
        if store.has_key(ca_stem):
            # Dev federation: the secretariat also holds this country CA and signs its CRL.
            entries = [
                (r.serial, r.revoked_at, x509.ReasonFlags[r.reason])
                for r in state.revocations
                if r.country == code
            ]
            ca_key = store.read_key(ca_stem)
            crl = issuing.build_crl(ca_key, ca_cert, entries, now, next_update)
            store.write_crl(code, crl)
        else:
            # Ceremony: the country signed its CRL itself (`pki crl`, `pki accept-country`).
            crl = _submitted_crl(store, code)
        countries.append(
            CountryEntry(code=code, name=record.name, eu=record.eu, ca_cert=ca_cert, crl=crl)
        )
    agencies = []
    for agency_id, agency in sorted(state.agencies.items()):
        tls_stem = agency_stem(agency_id, "tls")
        agencies.append(
            AgencyEntry(
                agency_id=agency_id,
                kind=agency.kind,
                name=agency.name,
                signing_cert=store.read_cert(agency_stem(agency_id, "signing")),
                agreement_cert=store.read_cert(agency_stem(agency_id, "agreement")),
                tls_cert=store.read_cert(tls_stem) if store.has(tls_stem) else None,
            )
        )
    task_forces = [
        TaskForce(task_force_id=t.task_force_id, name=t.name, members=t.members)
        for t in state.task_forces.values()
    ]
    serial = state.directory_serial + 1
    signed = build_directory(
        root=root,
        serial=serial,
        issued_at=now,
        next_update=next_update,
        countries=countries,
        agencies=agencies,
        task_forces=task_forces,
    )
    store.write_state(state.with_directory_serial(serial))
    return signed, serial


def _submitted_crl(store: PkiStore, code: str) -> x509.CertificateRevocationList:
    stem = country_stem(code, "crl")
    try:
        return x509.load_pem_x509_crl(store.read_bytes(f"{stem}.pem"))
    except ValueError:
        raise ConfigError(f"{store.path(stem)}.pem is not a PEM CRL") from None


def _cmd_directory(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.valid_hours <= 0:
        raise PKIError("--valid-hours must be positive")
    now = _now()
    signed, serial = sign_directory(store, now=now, valid_for=timedelta(hours=args.valid_hours))
    out: Path = args.out or store.path(DIRECTORY_FILE)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(signed)
    print(f"directory serial {serial} signed, {len(signed)} bytes -> {out}")
    directory = Directory.load(signed, root_cert=store.read_cert(ROOT), now=now)
    print(summary(directory, now=now))
    return 1 if directory.problems else 0


# ----------------------------------------------------------- verify-directory ---


def summary(directory: Directory, *, now: datetime) -> str:
    """A readable report of a loaded directory: countries, agencies, task forces, problems."""
    left = directory.next_update - now
    parts = [
        f"federation {directory.federation_id}  serial {directory.serial}",
        f"issued {_when(directory.issued_at)}  next update {_when(directory.next_update)}"
        f"  ({_hours(left)} left)",
        "",
        "countries:",
        table(
            ("code", "name", "EU", "CA valid until"),
            (
                (
                    c.code,
                    c.name,
                    "yes" if c.eu else "no",
                    _when(directory.country_ca(c.code).not_valid_after_utc),
                )
                for c in directory.countries()
            ),
        ),
        "",
        "agencies:",
        table(
            ("id", "kind", "name", "status"),
            _agency_rows(directory),
        ),
        "",
        "task forces:",
        table(
            ("id", "name", "members"),
            ((t.task_force_id, t.name, ", ".join(t.members)) for t in directory.task_forces()),
        ),
    ]
    if directory.problems:
        parts += [
            "",
            f"PROBLEMS ({len(directory.problems)} entries skipped, lookups of them fail):",
            table(
                ("entry", "reason", "detail"),
                ((p.entry, p.reason.value, _short(p.detail)) for p in directory.problems),
            ),
        ]
    return "\n".join(parts)


def _agency_rows(directory: Directory) -> list[tuple[str, str, str, str]]:
    rows = []
    for entry in directory.statuses():
        if entry.reason is None:
            status = "ok"
        elif entry.reason is Reason.SENDER_REVOKED:
            status = "REVOKED"
        else:
            status = f"SKIPPED ({entry.reason.value})"
        rows.append((entry.agency_id, entry.kind, entry.name, status))
    return rows


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"


def _short(text: str, width: int = 90) -> str:
    return textwrap.shorten(text, width=width, placeholder=" ...")


def _cmd_verify_directory(args: argparse.Namespace) -> int:
    store = _store(args)
    root_path: Path = args.root or store.path(ROOT + ".pem")
    try:
        root = x509.load_pem_x509_certificate(root_path.read_bytes())
        signed = Path(args.file).read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot read {exc.filename}") from None
    except ValueError:
        raise ConfigError(f"{root_path} is not a PEM certificate") from None
    now = _now()
    directory = Directory.load(signed, root_cert=root, now=now)
    print(f"directory {args.file}: signature OK (root SHA-256 {root_fingerprint(root)})")
    print(summary(directory, now=now))
    return 1 if directory.problems else 0


# ----------------------------------------------------------------------- show ---


def _cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    state = store.read_state()
    root = store.read_cert(ROOT)
    print(f"PKI in {store.base}: federation {state.federation_id}")
    print(f"  root CA         valid until {_when(root.not_valid_after_utc)}")
    print(f"  root SHA-256    {root_fingerprint(root)}")
    print(f"  hub domains     {', '.join(state.hub_domains)}")
    print(f"  hub TLS cert    {'issued' if store.has(HUB) else 'not issued'}")
    print(f"  keys encrypted  {'yes' if store.encrypts_keys else 'no (dev)'}")
    print(f"  last directory  serial {state.directory_serial or '-'}")
    print("\ncountries:")
    print(
        table(
            ("code", "name", "EU", "DNS subtrees", "loopback", "server", "leaf"),
            (
                (
                    c.code,
                    c.name,
                    "yes" if c.eu else "no",
                    ", ".join(c.dns_domains),
                    "yes (dev)" if c.allow_loopback else "no",
                    "yes" if store.has(country_stem(c.code, "server")) else "-",
                    "yes" if store.has(country_stem(c.code, "leaf")) else "-",
                )
                for c in sorted(state.countries.values(), key=lambda c: c.code)
            ),
        )
    )
    print("\nagencies:")
    print(
        table(
            ("id", "kind", "name", "certs", "status"),
            (
                (a.agency_id, a.kind, a.name, "+".join(sorted(a.serials)), _status(a))
                for a in sorted(state.agencies.values(), key=lambda a: a.agency_id)
            ),
        )
    )
    print("\ntask forces:")
    print(
        table(
            ("id", "name", "members"),
            (
                (t.task_force_id, t.name, ", ".join(t.members))
                for t in sorted(state.task_forces.values(), key=lambda t: t.task_force_id)
            ),
        )
    )
    print(f"\nrevoked certificates: {len(state.revocations)}")
    return 0


def _status(record: AgencyRecord) -> str:
    return "REVOKED" if record.revoked else "active"


# ------------------------------------------------------------------- parsers ---


_OVERVIEW = """\
A federation PKI: root CA -> country CAs -> agency certificates, plus the NATS TLS
certificates and the signed federation directory. See certs/README.md.

typical dev session:
  casebridge pki init demo --allow-loopback
  casebridge pki issue-country DE --name Germany --eu --allow-loopback
  casebridge pki issue-country UA --name Ukraine --non-eu --allow-loopback
  casebridge pki issue-agency de.lka-berlin --kind law_enforcement --name "LKA Berlin"
  casebridge pki issue-agency ua.npu --kind law_enforcement --name "National Police"
  casebridge pki task-force tf.eastern-route --name "Eastern route" \\
      --member de.lka-berlin --member ua.npu
  casebridge pki issue-tls server DE --host localhost --ip 127.0.0.1
  casebridge pki issue-tls leaf DE
  casebridge pki issue-tls hub --host localhost --ip 127.0.0.1
  casebridge pki directory --valid-hours 24
  casebridge pki verify-directory certs/dev/directory.jws
  casebridge pki revoke de.lka-berlin --reason key_compromise && casebridge pki directory

key ceremony (each party in its own --dir; only CSRs and public files travel;
docs/joining.md):
  secretariat  init, sign-hub, sign-country, accept-country, directory, leave
  country      request-country, join, request-server, sign-server, sign-agency, crl,
               export-country
  agency / hub rotate-agreement, request-agency / request-hub
Root and country CA keys may live in a PKCS#11 token (--pkcs11 pkcs11:token=...;object=...).

Private keys are written with mode 0600, encrypted when $CASEBRIDGE_KEY_PASSPHRASE is set.
"""


def _add(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help_text: str,
    epilog: str,
    func: Handler,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(epilog).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"PKI directory (default: {DEFAULT_DIR})",
    )
    parser.set_defaults(func=func)
    return parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``casebridge pki ...`` to the top-level parser."""
    parser = subparsers.add_parser(
        "pki",
        help="federation PKI: CAs, agency and TLS certificates, the signed directory",
        description=_OVERVIEW,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="pki_command", metavar="COMMAND", required=True)

    p = _add(
        sub,
        "init",
        help_text="create the federation root CA and the secretariat TLS CA",
        epilog="""
            casebridge pki init demo --allow-loopback
            casebridge pki init cb-eu --hub-domain hub.casebridge.example --dir /srv/pki
        """,
        func=_cmd_init,
    )
    p.add_argument("federation_id", help="federation id, e.g. demo (lower-case, digits, -)")
    p.add_argument(
        "--hub-domain",
        action="append",
        metavar="DOMAIN",
        help="DNS subtree the hub's name lies in (repeatable; default casebridge.test)",
    )
    p.add_argument(
        "--allow-loopback",
        action="store_true",
        help="let the hub certificate name localhost/127.0.0.1 (DEV ONLY)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing PKI")
    p.add_argument(
        "--pkcs11",
        metavar="URI",
        help="make the root key in a PKCS#11 token (pkcs11:token=...;object=...; "
        "PIN in $CASEBRIDGE_PKCS11_PIN)",
    )

    p = _add(
        sub,
        "issue-country",
        help_text="issue a country CA, name-constrained to its own country",
        epilog="""
            casebridge pki issue-country DE --name Germany --eu --allow-loopback
            casebridge pki issue-country UA --name Ukraine --non-eu --dns-domain gov.ua
        """,
        func=_cmd_issue_country,
    )
    p.add_argument("code", help="ISO 3166 alpha-2 country code, e.g. DE")
    p.add_argument("--name", required=True, help="country name shown in the directory")
    eu = p.add_mutually_exclusive_group(required=True)
    eu.add_argument("--eu", dest="eu", action="store_true", help="an EU member state")
    eu.add_argument("--non-eu", dest="eu", action="store_false", help="not an EU member state")
    p.add_argument(
        "--dns-domain",
        action="append",
        metavar="DOMAIN",
        help="permitted DNS subtree for the country's hosts (repeatable; default: its ccTLD)",
    )
    p.add_argument(
        "--ip-network",
        action="append",
        type=ipaddress.ip_network,
        metavar="CIDR",
        help="permitted IP network for server certificates (repeatable; default: none)",
    )
    p.add_argument(
        "--allow-loopback",
        action="store_true",
        help="also permit localhost, 127.0.0.0/8 and ::1 (DEV ONLY)",
    )
    p.add_argument("--force", action="store_true", help="re-issue an existing country CA")

    p = _add(
        sub,
        "issue-agency",
        help_text="issue an agency's signing, key-agreement and TLS client certificates",
        epilog="""
            casebridge pki issue-agency de.lka-berlin --kind law_enforcement --name "LKA Berlin"
            casebridge pki issue-agency ua.hotline-ngo --kind ngo --name "Hotline NGO" --no-tls
            casebridge pki issue-agency de.lka-berlin --kind law_enforcement \\
                --name "LKA Berlin" --renew      # new keys; old certificates superseded
        """,
        func=_cmd_issue_agency,
    )
    p.add_argument("agency_id", help="agency id <cc>.<name>; its country CA must exist")
    p.add_argument("--kind", required=True, choices=AGENCY_KINDS, help="agency kind")
    p.add_argument("--name", required=True, help="agency display name (certificate O)")
    p.add_argument("--no-tls", action="store_true", help="do not issue a TLS client certificate")
    p.add_argument(
        "--renew", action="store_true", help="re-issue with new keys, superseding old certs"
    )

    p = _add(
        sub,
        "issue-tls",
        help_text="issue a NATS TLS certificate: server, leaf, client or hub",
        epilog="""
            casebridge pki issue-tls server DE --host nats.bka.de --ip 10.1.2.3
            casebridge pki issue-tls server DE --host localhost --ip 127.0.0.1   # dev
            casebridge pki issue-tls leaf DE          # DE's server dialling the hub
            casebridge pki issue-tls client de.lka-berlin
            casebridge pki issue-tls hub --host hub.casebridge.test

            roles:
              server CC      country nats-server (serverAuth), from the country CA
              leaf CC        country server -> hub leaf-node client (CN=leaf.<cc>), secretariat CA
              client AGENCY  agency node -> national server mTLS (CN=<agency id>), country CA
              hub            hub leaf-node listener (serverAuth), secretariat CA
        """,
        func=_cmd_issue_tls,
    )
    p.add_argument("role", choices=("server", "leaf", "client", "hub"), help="certificate role")
    p.add_argument("target", nargs="?", help="country code (server, leaf) or agency id (client)")
    p.add_argument("--host", action="append", metavar="NAME", help="DNS name (repeatable)")
    p.add_argument(
        "--ip",
        action="append",
        type=ipaddress.ip_address,
        metavar="ADDR",
        help="IP address (repeatable)",
    )

    p = _add(
        sub,
        "task-force",
        help_text="define (or replace, or delete) a task force",
        epilog="""
            casebridge pki task-force tf.eastern-route --name "Eastern route" \\
                --member de.lka-berlin --member ua.npu
            casebridge pki task-force tf.eastern-route --delete
        """,
        func=_cmd_task_force,
    )
    p.add_argument("task_force_id", help="task force id tf.<name>")
    p.add_argument("--name", help="display name")
    p.add_argument("--member", action="append", metavar="AGENCY", help="member (repeatable)")
    p.add_argument("--delete", action="store_true", help="delete the task force")

    p = _add(
        sub,
        "revoke",
        help_text="revoke all of an agency's certificates (effective at the next directory)",
        epilog="""
            casebridge pki revoke de.lka-berlin --reason key_compromise
            casebridge pki directory
        """,
        func=_cmd_revoke,
    )
    p.add_argument("agency_id", help="agency to revoke")
    p.add_argument("--reason", choices=REASONS, default="unspecified", help="CRL reason code")

    p = _add(
        sub,
        "directory",
        help_text="build the CRLs and sign the federation directory with the root key",
        epilog="""
            casebridge pki directory
            casebridge pki directory --valid-hours 168 --out /srv/www/directory.jws
        """,
        func=_cmd_directory,
    )
    p.add_argument("--out", type=Path, help=f"output file (default: <dir>/{DIRECTORY_FILE})")
    p.add_argument(
        "--valid-hours",
        type=int,
        default=DEFAULT_VALID_HOURS,
        help=f"hours until next_update; nodes fail closed after it (default {DEFAULT_VALID_HOURS})",
    )

    p = _add(
        sub,
        "verify-directory",
        help_text="verify a signed directory against the root and print it (exit 1 on problems)",
        epilog="""
            casebridge pki verify-directory certs/dev/directory.jws
            casebridge pki verify-directory directory.jws --root pinned-root.pem
        """,
        func=_cmd_verify_directory,
    )
    p.add_argument("file", help="signed directory (compact JWS)")
    p.add_argument("--root", type=Path, help="pinned root certificate (default: <dir>/root/ca.pem)")

    pki_ceremony.add_commands(sub, _add)

    _add(
        sub,
        "show",
        help_text="show the PKI state: federation, countries, agencies, task forces",
        epilog="""
            casebridge pki show
            casebridge pki show --dir /srv/pki
        """,
        func=_cmd_show,
    )
