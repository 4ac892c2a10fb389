"""``casebridge directory publish`` and ``casebridge policy publish``: put signed material into
the federation (docs/operations.md, "Publishing a directory or a policy").

- ``directory publish FILE``: the secretariat publishes a signed directory on the hub
  (stream ``DIRECTORY``, created on first use with ``--replicas`` copies); every country's
  ``PUBLISHED`` stream sources it, and gateways and nodes hot-swap it within seconds
  (broker/federation/distribution.py).
- ``policy publish FILE --country CC``: a country publishes its signed policy into its own
  ``PUBLISHED`` stream; its gateway and nodes apply it, peers' nodes use it in pre-flight.

Both verify the document first (the root for a directory; the country CA as listed in the
directory for a policy) and refuse to publish what the receivers would refuse, so a typo never
reaches the federation; receivers check again anyway. Connection: ``--federation DIR`` (a
federation made by ``casebridge federation init``: the secretariat's publisher certificate, or
the country's gateway identity) or explicit ``--url --cert --key --ca``.

This module never signs anything and never holds a key other than the TLS client key it is
given.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from nats.errors import Error as NatsError

from broker.core import publication as pub
from broker.core.directory import Directory
from broker.core.policy import parse_policy
from broker.core.policy.signing import verify_policy_payload
from broker.errors import ConfigError, PolicyError
from broker.federation import distribution
from broker.federation.launcher import Federation
from broker.nats import quiet_tls_eof_warning
from broker.pki.keyfiles import read_bytes, read_certificate


def _tls(args: argparse.Namespace) -> ssl.SSLContext:
    if args.cert is None or args.key is None or args.ca is None:
        raise ConfigError("--url needs --cert, --key and --ca")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(args.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.load_cert_chain(str(args.cert), str(args.key))
    return context


async def _publish(
    connect: Any, subject: str, signed: bytes, *, hub_replicas: int | None = None
) -> int:
    try:
        nc = await connect()
    except (NatsError, OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot connect: {exc!r}") from None
    try:
        js = nc.jetstream()
        if hub_replicas is not None:
            # The hub's DIRECTORY stream is the secretariat's (its publisher user may create
            # it): made on first publication, so a hub installed by its chart needs no
            # setup step of its own; idempotent afterwards.
            await distribution.ensure_hub_stream(js, replicas=hub_replicas)
        return await distribution.publish_document(js, subject, signed)
    except (NatsError, TimeoutError) as exc:
        raise ConfigError(f"publish not acknowledged: {exc!r}") from None
    finally:
        await nc.close()


def _explicit(args: argparse.Namespace, inbox_prefix: str) -> Any:
    async def connect() -> Any:
        quiet_tls_eof_warning()
        return await nats.connect(
            servers=str(args.url).split(","),
            tls=_tls(args),
            inbox_prefix=inbox_prefix,
            allow_reconnect=False,
            connect_timeout=5,
        )

    return connect


def _root(args: argparse.Namespace, fed: Federation | None) -> Path:
    if args.root is not None:
        return Path(args.root)
    if fed is not None:
        return fed.settings.root_cert
    raise ConfigError("--root (the pinned federation root certificate) is needed")


def _cmd_directory_publish(args: argparse.Namespace) -> int:
    signed = read_bytes(args.file)
    fed = Federation.open(args.federation) if args.federation is not None else None
    directory = Directory.load(
        signed, root_cert=read_certificate(_root(args, fed)), now=datetime.now(UTC)
    )
    if fed is not None:
        connect: Any = lambda: fed.connect_secretariat(allow_reconnect=False)  # noqa: E731
    elif args.url is not None:
        connect = _explicit(args, "_INBOX.secretariat")
    else:
        raise ConfigError("give --federation DIR or --url/--cert/--key/--ca")
    seq = asyncio.run(_publish(connect, pub.DIRECTORY_SUBJECT, signed, hub_replicas=args.replicas))
    print(f"directory serial {directory.serial} published (hub DIRECTORY sequence {seq})")
    return 0


def _cmd_policy_publish(args: argparse.Namespace) -> int:
    code = str(args.country).upper()
    signed = read_bytes(args.file)
    fed = Federation.open(args.federation) if args.federation is not None else None
    now = datetime.now(UTC)
    root = read_certificate(_root(args, fed))
    directory_file = args.directory or (fed.settings.directory if fed is not None else None)
    if directory_file is None:
        raise ConfigError("--directory (the signed directory in force) is needed")
    directory = Directory.load(read_bytes(directory_file), root_cert=root, now=now)
    try:
        signer, payload = verify_policy_payload(
            signed,
            ca_cert=directory.country_ca(code),
            root_cert=root,
            now=now,
            source=str(args.file),
        )
        policy = parse_policy(payload, source=str(args.file))
    except PolicyError as exc:
        raise ConfigError(f"not published: {exc.detail}") from None
    if not policy.country == signer == code:
        raise ConfigError(f"not published: the policy is {policy.country}'s, signed by {signer}")
    if fed is not None:
        connect: Any = lambda: fed.connect_gateway(code, allow_reconnect=False)  # noqa: E731
    elif args.url is not None:
        connect = _explicit(args, args.inbox_prefix)
    else:
        raise ConfigError("give --federation DIR or --url/--cert/--key/--ca")
    seq = asyncio.run(_publish(connect, pub.policy_subject(code), signed))
    print(f"policy {code} version {policy.version} published (PUBLISHED sequence {seq})")
    return 0


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--federation", type=Path, metavar="DIR", help="a federation from `federation init`"
    )
    parser.add_argument("--root", type=Path, metavar="PEM", help="pinned federation root")
    parser.add_argument("--url", metavar="URL[,URL]", help="NATS server(s), tls://host:port")
    parser.add_argument("--cert", type=Path, metavar="PEM", help="TLS client certificate chain")
    parser.add_argument("--key", type=Path, metavar="PEM", help="TLS client key")
    parser.add_argument("--ca", type=Path, metavar="PEM", help="CA the server is verified with")


def add_policy_publish(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``casebridge policy publish`` (called by :mod:`broker.cli.policy`)."""
    p = sub.add_parser("publish", help="publish a signed policy into the federation")
    p.add_argument("file", type=Path, metavar="FILE", help="signed policy (.jws)")
    p.add_argument("--country", required=True, metavar="CC")
    p.add_argument("--directory", type=Path, metavar="FILE", help="signed directory in force")
    p.add_argument(
        "--inbox-prefix", default="_INBOX", help="reply prefix the NATS user may subscribe to"
    )
    _connection_options(p)
    p.set_defaults(func=_cmd_policy_publish)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``casebridge directory ...`` to the top-level parser."""
    parser = subparsers.add_parser(
        "directory",
        help="the federation directory: publish a signed directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="directory_command", metavar="COMMAND", required=True)
    p = sub.add_parser("publish", help="publish a signed directory on the hub")
    p.add_argument("file", type=Path, metavar="FILE", help="signed directory (directory.jws)")
    p.add_argument(
        "--replicas",
        type=int,
        choices=(1, 3),
        default=1,
        help="copies of the hub's DIRECTORY stream if it is created now (3 on a 3-server hub)",
    )
    _connection_options(p)
    p.set_defaults(func=_cmd_directory_publish)
