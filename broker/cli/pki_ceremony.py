"""``casebridge pki`` ceremony verbs: CSR flows between countries, agencies and the secretariat.

Registered by :mod:`broker.cli.pki` into its group (not a command group of its own). Each
handler parses arguments, reads the clock (here, at the edge) and prints what was written and
what to send to whom; the decisions live in :mod:`broker.pki.ceremony`. It never prints key
material, and it never reads a key from anywhere but the ``--dir`` of the party running it.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from broker.core.directory import root_fingerprint
from broker.core.header import FEDERATION_RE
from broker.core.trust import AGENCY_KINDS, cert_kid
from broker.errors import PKIError
from broker.pki import ceremony
from broker.pki.signer import TokenAccess, TokenKeyRef
from broker.pki.store import PkiStore, agency_stem, country_stem

Handler = Callable[[argparse.Namespace], int]
Adder = Callable[..., argparse.ArgumentParser]
DEFAULT_CRL_HOURS: Final = 24 * 7


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _store(args: argparse.Namespace) -> PkiStore:
    directory: Path = args.dir
    return PkiStore.from_env(directory)


def _token(args: argparse.Namespace) -> TokenKeyRef | None:
    uri: str | None = args.pkcs11
    return None if uri is None else TokenKeyRef.parse(uri)


# ----------------------------------------------------------------- handlers ---


def _cmd_request_country(args: argparse.Namespace) -> int:
    if not FEDERATION_RE.fullmatch(args.federation):
        raise PKIError(f"invalid federation id {args.federation!r}")
    store = _store(args)
    token = _token(args)
    made = ceremony.request_country(
        store,
        federation_id=args.federation,
        country=args.code.upper(),
        name=args.name,
        eu=args.eu,
        dns_domains=args.dns_domain,
        ip_networks=tuple(args.ip_network or ()),
        allow_loopback=args.allow_loopback,
        token=token,
        access=None if token is None else TokenAccess.from_env(),
    )
    where = f"token {token.to_uri()}" if token else f"{store.base} (mode 0600)"
    print(f"{args.code.upper()} CA key made here, kept in {where}")
    print("send to the secretariat (public, nothing secret):")
    print(f"  {made.ca_request}")
    print(f"  {made.leaf_request}")
    return 0


def _cmd_sign_country(args: argparse.Namespace) -> int:
    store = _store(args)
    reply = PkiStore(args.reply)
    cert = ceremony.sign_country(
        store,
        country=args.code.upper(),
        ca_request=args.ca_request,
        leaf_request=args.leaf_request,
        name=args.name,
        eu=args.eu,
        reply=reply,
        now=_now(),
        permitted_dns=args.dns_domain,
        permitted_networks=tuple(args.ip_network or ()),
        allow_loopback=args.allow_loopback,
        replace=args.replace,
    )
    print(f"country CA {cert.subject.rfc4514_string()} signed")
    print(f"  reply (public) in {reply.base}: send it back; the root SHA-256 to confirm by phone:")
    print(f"  {root_fingerprint(store.read_cert('root/ca'))}")
    return 0


def _cmd_join(args: argparse.Namespace) -> int:
    store = _store(args)
    did = False
    if args.reply is not None:
        fingerprint = ceremony.install_reply(
            store, PkiStore(args.reply), now=_now(), root_sha256=args.root_sha256
        )
        print(f"reply installed; root SHA-256 {fingerprint}")
        did = True
    if args.directory is not None:
        manifest = ceremony.join(
            store, directory=args.directory, federation_file=args.federation_file, now=_now()
        )
        print(f"directory installed; bundle manifest {manifest}")
        did = True
    if not did:
        raise PKIError("pki join needs --reply and/or --directory")
    return 0


def _cmd_request_agency(args: argparse.Namespace) -> int:
    store = _store(args)
    prefix = ceremony.request_agency(
        store, agency_id=args.agency_id, kind=args.kind, name=args.name, tls=not args.no_tls
    )
    print(f"{args.agency_id}: keys made in {store.base}/agencies/{args.agency_id}/ (mode 0600)")
    print(f"send to your country CA: {prefix}.*.csr.pem")
    return 0


def _cmd_rotate_agreement(args: argparse.Namespace) -> int:
    store = _store(args)
    prefix, kept = ceremony.rotate_agreement(store, agency_id=args.agency_id)
    print(f"{args.agency_id}: new key-agreement key made; the old one kept as {kept}")
    print(f"send to your country CA: {prefix}.agreement.csr.pem")
    print("then list the kept key under keys.previous_agreement in the node settings")
    return 0


def _cmd_sign_agency(args: argparse.Namespace) -> int:
    store = _store(args)
    record = ceremony.sign_agency(store, request=args.request, now=_now())
    signing = store.read_cert(agency_stem(record.agency_id, "signing"))
    print(f"agency {record.agency_id} ({record.kind}, {record.name}) certified")
    print(f"  signing kid     {cert_kid(record.agency_id, signing)}")
    print(f"  certificates    {store.path('agencies/' + record.agency_id)}/")
    return 0


def _cmd_request_hub(args: argparse.Namespace) -> int:
    store = _store(args)
    path = ceremony.request_hub(
        store, host_names=args.host or [], ip_addresses=tuple(args.ip or ())
    )
    print(f"hub key made here; send {path} to the secretariat")
    return 0


def _cmd_sign_hub(args: argparse.Namespace) -> int:
    cert = ceremony.sign_hub(_store(args), request=args.request, now=_now())
    print(f"hub certificate {cert.subject.rfc4514_string()} issued")
    return 0


def _cmd_request_server(args: argparse.Namespace) -> int:
    store = _store(args)
    path = ceremony.request_server(
        store, host_names=args.host or [], ip_addresses=tuple(args.ip or ())
    )
    print(f"server key made here; request {path}")
    return 0


def _cmd_sign_server(args: argparse.Namespace) -> int:
    store = _store(args)
    cert = ceremony.sign_server(store, request=args.request, now=_now())
    print(f"server certificate {cert.subject.rfc4514_string()} issued")
    return 0


def _cmd_crl(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.valid_hours <= 0:
        raise PKIError("--valid-hours must be positive")
    crl = ceremony.sign_crl(store, now=_now(), valid_for=timedelta(hours=args.valid_hours))
    code = ceremony.own_country(store.read_state())
    print(f"CRL signed ({len(list(crl))} entries) -> {store.path(country_stem(code, 'crl'))}.pem")
    return 0


def _cmd_export_country(args: argparse.Namespace) -> int:
    written = ceremony.export_public(_store(args), PkiStore(args.out))
    print(f"{len(written)} public files -> {args.out} (send to the secretariat)")
    return 0


def _cmd_accept_country(args: argparse.Namespace) -> int:
    agencies = ceremony.accept_country(_store(args), PkiStore(args.public), now=_now())
    print(f"accepted {len(agencies)} agencies: {', '.join(agencies) or '(none)'}")
    print("  publish with    casebridge pki directory")
    return 0


def _cmd_leave(args: argparse.Namespace) -> int:
    code = args.code.upper()
    gone = ceremony.remove_country(_store(args), country=code)
    print(f"{code} removed with {len(gone)} agencies: {', '.join(gone) or '(none)'}")
    print("  publish with    casebridge pki directory")
    return 0


# ----------------------------------------------------------------- parsers ---


def _eu(p: argparse.ArgumentParser) -> None:
    eu = p.add_mutually_exclusive_group(required=True)
    eu.add_argument("--eu", dest="eu", action="store_true", help="an EU member state")
    eu.add_argument("--non-eu", dest="eu", action="store_false", help="not an EU member state")


def _names(p: argparse.ArgumentParser, *, what: str) -> None:
    p.add_argument("--dns-domain", action="append", metavar="DOMAIN", help=what)
    p.add_argument(
        "--ip-network",
        action="append",
        type=ipaddress.ip_network,
        metavar="CIDR",
        help="IP network for server certificates (repeatable; default: none)",
    )
    p.add_argument(
        "--allow-loopback", action="store_true", help="localhost/127.0.0.1 names (DEV ONLY)"
    )


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], add: Adder) -> None:
    """Add the ceremony verbs to the ``pki`` group (``add`` is its parser factory)."""
    p = add(
        sub,
        "request-country",
        help_text="(country) make the country CA key here and write CSRs for the secretariat",
        epilog="""
            casebridge pki request-country DE --federation cb-eu --name Germany --eu --dir de/
            CASEBRIDGE_PKCS11_PIN=... casebridge pki request-country DE --federation cb-eu \\
                --name Germany --eu --pkcs11 'pkcs11:token=de-ca;object=de-ca' --dir de/
        """,
        func=_cmd_request_country,
    )
    p.add_argument("code", help="ISO 3166 alpha-2 country code")
    p.add_argument("--federation", required=True, help="federation id (from the secretariat)")
    p.add_argument("--name", required=True, help="country name")
    _eu(p)
    _names(p, what="DNS subtree the country asks for (repeatable; default: its ccTLD)")
    p.add_argument("--pkcs11", metavar="URI", help="make the CA key in a PKCS#11 token")

    p = add(
        sub,
        "sign-country",
        help_text="(secretariat) sign a country's CA and leaf-node CSRs, if they fit",
        epilog="""
            casebridge pki sign-country DE country-de.csr.pem leaf-de.csr.pem --name Germany --eu \\
                --reply reply-de/ --dir secretariat/
        """,
        func=_cmd_sign_country,
    )
    p.add_argument("code", help="the country whose delegation handed over the CSRs")
    p.add_argument("ca_request", type=Path, help="the country CA CSR")
    p.add_argument("leaf_request", type=Path, help="the country server's leaf-node CSR")
    p.add_argument("--name", required=True, help="country name shown in the directory")
    _eu(p)
    _names(p, what="DNS subtree the country may name (repeatable; default: its ccTLD)")
    p.add_argument("--reply", type=Path, required=True, help="directory for the (public) reply")
    p.add_argument("--replace", action="store_true", help="re-key a country that has a CA")

    p = add(
        sub,
        "join",
        help_text="(country) install the secretariat's reply and/or the signed directory",
        epilog="""
            casebridge pki join --reply reply-de/ --root-sha256 <fingerprint> --dir de/
            casebridge pki join --directory directory.jws --federation-file fed.yaml --dir de/
        """,
        func=_cmd_join,
    )
    p.add_argument("--reply", type=Path, help="the reply written by sign-country")
    p.add_argument("--root-sha256", help="root fingerprint confirmed out of band")
    p.add_argument("--directory", type=Path, help="the signed federation directory")
    p.add_argument("--federation-file", type=Path, help="the federation description (YAML)")

    p = add(
        sub,
        "request-agency",
        help_text="(agency) make the agency's keys here and write its CSRs",
        epilog="""
            casebridge pki request-agency de.lka-berlin --kind law_enforcement \\
                --name "LKA Berlin" --dir lka/
        """,
        func=_cmd_request_agency,
    )
    p.add_argument("agency_id", help="agency id <cc>.<name>")
    p.add_argument("--kind", required=True, choices=AGENCY_KINDS, help="agency kind")
    p.add_argument("--name", required=True, help="agency display name")
    p.add_argument("--no-tls", action="store_true", help="no TLS client key")

    p = add(
        sub,
        "rotate-agreement",
        help_text="(agency) new key-agreement key; the old one kept for messages in flight",
        epilog="""
            casebridge pki rotate-agreement de.lka-berlin --dir lka/
            casebridge pki sign-agency lka/requests/agency-de.lka-berlin --dir de/
        """,
        func=_cmd_rotate_agreement,
    )
    p.add_argument("agency_id", help="agency id <cc>.<name>")

    p = add(
        sub,
        "sign-agency",
        help_text="(country) certify an agency's CSRs with the country CA (own agencies only; "
        "an agreement CSR alone rotates that key)",
        epilog="""
            casebridge pki sign-agency lka/requests/agency-de.lka-berlin --dir de/
        """,
        func=_cmd_sign_agency,
    )
    p.add_argument("request", type=Path, help="request prefix (without .<usage>.csr.pem)")

    p = add(
        sub,
        "request-server",
        help_text="(country) make the nats-server TLS key here and write its CSR",
        epilog="""
            casebridge pki request-server --host nats.bka.de --ip 192.0.2.10 --dir de/
        """,
        func=_cmd_request_server,
    )
    p.add_argument("--host", action="append", metavar="NAME", help="DNS name (repeatable)")
    p.add_argument(
        "--ip", action="append", type=ipaddress.ip_address, metavar="ADDR", help="IP address"
    )

    p = add(
        sub,
        "request-hub",
        help_text="(hub) make the hub's TLS key here and write its CSR",
        epilog="""
            casebridge pki request-hub --host hub.casebridge.example --dir hub/
        """,
        func=_cmd_request_hub,
    )
    p.add_argument("--host", action="append", metavar="NAME", help="DNS name (repeatable)")
    p.add_argument(
        "--ip", action="append", type=ipaddress.ip_address, metavar="ADDR", help="IP address"
    )

    p = add(
        sub,
        "sign-hub",
        help_text="(secretariat) certify the hub's CSR with the secretariat CA",
        epilog="""
            casebridge pki sign-hub hub/requests/hub.csr.pem --dir secretariat/
        """,
        func=_cmd_sign_hub,
    )
    p.add_argument("request", type=Path, help="the hub CSR")

    p = add(
        sub,
        "sign-server",
        help_text="(country) certify the server CSR with the country CA",
        epilog="""
            casebridge pki sign-server de/requests/server-de.csr.pem --dir de/
        """,
        func=_cmd_sign_server,
    )
    p.add_argument("request", type=Path, help="the server CSR")

    p = add(
        sub,
        "crl",
        help_text="(country) sign the country CA's CRL",
        epilog="""
            casebridge pki revoke de.lka-berlin --reason key_compromise --dir de/
            casebridge pki crl --dir de/
        """,
        func=_cmd_crl,
    )
    p.add_argument("--valid-hours", type=int, default=DEFAULT_CRL_HOURS, help="CRL lifetime")

    p = add(
        sub,
        "export-country",
        help_text="(country) copy the public material the secretariat needs (no keys)",
        epilog="""
            casebridge pki export-country --out de-public/ --dir de/
        """,
        func=_cmd_export_country,
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")

    p = add(
        sub,
        "accept-country",
        help_text="(secretariat) validate and keep a country's public material",
        epilog="""
            casebridge pki accept-country de-public/ --dir secretariat/
            casebridge pki directory --dir secretariat/
        """,
        func=_cmd_accept_country,
    )
    p.add_argument("public", type=Path, help="what export-country wrote")

    p = add(
        sub,
        "leave",
        help_text="(secretariat) take a leaving country and its agencies out of the directory",
        epilog="""
            casebridge pki leave NL --dir secretariat/
            casebridge pki directory --dir secretariat/
        """,
        func=_cmd_leave,
    )
    p.add_argument("code", help="the country leaving")
