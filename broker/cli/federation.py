"""``casebridge federation``: generate a dev federation from its YAML file and run it locally.

``init FILE DIR`` (PKI, signed directory, nats-server configs, ``federation.json``), ``up DIR``
(servers, streams, extra processes), ``down DIR``, ``status DIR``; for parties brought in
through the key ceremony, ``hub-bundle`` and ``from-bundles`` (each server from its own
party's bundle, docs/joining.md). The work is done by
:mod:`broker.federation.launcher`; this module parses arguments, reads the clock and prints.
Also runnable as ``python -m broker.cli.federation``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from broker.errors import CasebridgeError, ConfigError

if TYPE_CHECKING:
    from broker.federation.launcher import Federation


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "federation",
        help="generate and run a dev federation (hub + country nats-servers) on this machine",
        description="Generate a whole dev federation from a YAML description and run it on "
        "loopback. Example: casebridge federation init docs/federation.example.yaml run/fed",
    )
    commands = parser.add_subparsers(dest="federation_command", metavar="COMMAND", required=True)

    init = commands.add_parser(
        "init", help="generate PKI, directory, nats-server configs and federation.json"
    )
    init.add_argument("file", type=Path, help="federation description (YAML)")
    init.add_argument("dir", type=Path, help="directory to generate the federation in")
    init.add_argument("--force", action="store_true", help="replace an existing federation")
    init.add_argument(
        "--policies",
        type=Path,
        default=DEFAULT_POLICIES,
        help="directory with one policy per country, <cc>.yaml, signed at init with each "
        "country's CA key (default: the example policies in docs/policies)",
    )
    init.set_defaults(func=_init)

    hub_bundle = commands.add_parser(
        "hub-bundle",
        help="(secretariat) complete the hub's bundle: public certificates and the directory",
    )
    hub_bundle.add_argument("file", type=Path, help="federation description (YAML)")
    hub_bundle.add_argument(
        "--secretariat", type=Path, required=True, help="the secretariat's PKI directory"
    )
    hub_bundle.add_argument(
        "--hub", type=Path, required=True, help="the hub's directory (request-hub, sign-hub)"
    )
    hub_bundle.set_defaults(func=_hub_bundle)

    from_bundles = commands.add_parser(
        "from-bundles",
        help="settings, nats-server configs and processes for parties that run from bundles",
    )
    from_bundles.add_argument("file", type=Path, help="federation description with addresses")
    from_bundles.add_argument("dir", type=Path, help="directory for settings, configs and data")
    from_bundles.add_argument("--hub", type=Path, required=True, help="the hub's bundle")
    from_bundles.add_argument(
        "--country",
        action="append",
        required=True,
        metavar="CC=DIR",
        help="a country's bundle (repeatable)",
    )
    from_bundles.add_argument(
        "--policies", type=Path, default=DEFAULT_POLICIES, help="<cc>.yaml per country"
    )
    from_bundles.set_defaults(func=_from_bundles)

    only_help = "only these (hub and/or country codes); default: all"
    up = commands.add_parser("up", help="start servers, create streams, start processes")
    up.add_argument("dir", type=Path)
    up.add_argument("--only", nargs="+", metavar="NAME", help=only_help)
    up.set_defaults(func=_up)

    down = commands.add_parser("down", help="stop processes and servers (SIGTERM, then SIGKILL)")
    down.add_argument("dir", type=Path)
    down.add_argument("--only", nargs="+", metavar="NAME", help=only_help)
    down.set_defaults(func=_down)

    status = commands.add_parser("status", help="table of processes: pid, alive, port, URL")
    status.add_argument("dir", type=Path)
    status.set_defaults(func=_status)

    render = commands.add_parser(
        "render-nats",
        help="print the Casebridge part of a Helm chart's values (NATS config of a country or hub)",
        description="Print the `generated` values of helm/casebridge-country (--country CC) or "
        "helm/casebridge-hub (--hub): the nats-server configuration Casebridge generates, "
        "users, permissions and leaf rules included (docs/deploy-kubernetes.md).",
    )
    render.add_argument("file", type=Path, help="federation description (YAML)")
    which = render.add_mutually_exclusive_group(required=True)
    which.add_argument("--country", metavar="CC", help="the country to render")
    which.add_argument("--hub", action="store_true", help="render the hub")
    render.add_argument("--hub-url", help="the hub's leaf-node URL, tls://HOST:PORT (--country)")
    render.add_argument("--servers", type=int, choices=(1, 3), default=1, help="NATS servers")
    render.add_argument("--service", help="NATS StatefulSet and headless Service name")
    render.add_argument(
        "--pki", type=Path, help="read user DNs from these certificates (certs/README.md layout)"
    )
    render.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    render.set_defaults(func=_render_nats)

    streams = commands.add_parser(
        "streams",
        help="create or update a country's streams and consumers (as its gateway; idempotent)",
        description="Connect with a gateway settings file, verify its directory, and create "
        "or update the country's JetStream streams and the consumers of every agency in it.",
    )
    streams.add_argument("--settings", type=Path, required=True, help="gateway settings JSON")
    streams.add_argument(
        "--replicas",
        type=int,
        choices=(1, 3),
        default=1,
        help="copies of every stream: 3 on a clustered country (R3)",
    )
    streams.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to keep retrying the connection"
    )
    streams.set_defaults(func=_streams)


DEFAULT_POLICIES = Path(__file__).resolve().parents[2] / "docs" / "policies"


def _init(args: argparse.Namespace) -> int:
    from broker.federation.launcher import Federation  # noqa: PLC0415 - lazy: fast CLI start
    from broker.federation.processes import prepare  # noqa: PLC0415
    from broker.federation.spec import load_description  # noqa: PLC0415

    description = load_description(args.file)
    fed = Federation.init(description, args.dir, now=datetime.now(UTC), force=args.force)
    endpoints = prepare(fed, policy_dir=args.policies)
    settings = fed.settings
    print(f"federation {settings.federation_id!r} generated in {fed.base}")
    print(f"  settings   {fed.base / 'federation.json'}")
    print(f"  root       {settings.root_cert}")
    print(f"  directory  {settings.directory}")
    print(f"  hub        {settings.hub.url} (leaf nodes {settings.hub.leaf_url})")
    for code, server in settings.countries.items():
        print(f"  {code:<10} {server.url} (monitoring {server.monitor_url})")
    print(f"  {len(settings.nodes)} agency nodes, {len(settings.gateways)} gateways")
    print(f"  bundles    {fed.base / 'bundles'}/<party>: one party's keys each (docs/joining.md)")
    for endpoint in endpoints:
        token = f"settings/{endpoint.settings.stem}.token"
        print(f"  node {endpoint.agency_id:<22} {endpoint.url} (API token in {token})")
    return 0


def _hub_bundle(args: argparse.Namespace) -> int:
    from broker.federation.bundles import write_hub_bundle  # noqa: PLC0415
    from broker.federation.spec import load_description  # noqa: PLC0415
    from broker.pki.store import PkiStore  # noqa: PLC0415

    description = load_description(args.file)
    out = write_hub_bundle(
        PkiStore.from_env(args.secretariat),
        args.hub,
        countries=description.codes,
        description=description,
    )
    print(f"hub bundle completed in {out} (its only key: the hub's own)")
    return 0


def _from_bundles(args: argparse.Namespace) -> int:
    from broker.errors import ConfigError  # noqa: PLC0415
    from broker.federation.bundle_settings import settings_from_bundles  # noqa: PLC0415
    from broker.federation.launcher import Federation, write_settings  # noqa: PLC0415
    from broker.federation.processes import prepare  # noqa: PLC0415
    from broker.federation.spec import load_description  # noqa: PLC0415

    countries: dict[str, Path] = {}
    for item in args.country:
        code, sep, where = str(item).partition("=")
        if not sep or not where:
            raise ConfigError(f"--country {item!r}: expected CC=DIR")
        countries[code.upper()] = Path(where)
    description = load_description(args.file)
    settings = settings_from_bundles(description, args.dir, hub=args.hub, countries=countries)
    settings.base.mkdir(parents=True, exist_ok=True)
    write_settings(settings)
    fed = Federation(settings)
    fed.write_configs()
    endpoints = prepare(fed, policy_dir=args.policies)
    print(f"federation {settings.federation_id!r} set up in {fed.base} from bundles")
    print(f"  hub        {settings.hub.url} from {args.hub}")
    for code, server in settings.countries.items():
        print(f"  {code:<10} {server.url} from {countries[code]}")
    for endpoint in endpoints:
        print(f"  node {endpoint.agency_id:<22} {endpoint.url}")
    return 0


def _up(args: argparse.Namespace) -> int:
    from broker.federation.launcher import Federation  # noqa: PLC0415

    fed = Federation.open(args.dir)
    fed.up(args.only)
    _print_status(fed)
    return 0


def _down(args: argparse.Namespace) -> int:
    from broker.federation.launcher import Federation  # noqa: PLC0415

    fed = Federation.open(args.dir)
    fed.down(args.only)
    _print_status(fed)
    return 0


def _status(args: argparse.Namespace) -> int:
    from broker.federation.launcher import Federation  # noqa: PLC0415

    _print_status(Federation.open(args.dir))
    return 0


def _render_nats(args: argparse.Namespace) -> int:
    from broker.federation import chart  # noqa: PLC0415
    from broker.federation.spec import load_description  # noqa: PLC0415

    description = load_description(args.file)
    if args.hub:
        shape = chart.ClusterShape(service=args.service or "casebridge-hub", replicas=args.servers)
        generated = chart.hub_values(description, shape=shape, pki=args.pki)
    else:
        if not args.hub_url:
            raise ConfigError("--country needs --hub-url tls://HOST:PORT (the hub's leaf port)")
        shape = chart.ClusterShape(service=args.service or "casebridge-nats", replicas=args.servers)
        generated = chart.country_values(
            description, args.country, hub_leaf_url=args.hub_url, shape=shape, pki=args.pki
        )
    text = chart.HEADER + chart.dump_yaml(chart.as_values(generated))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


def _streams(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from broker.federation.setup import setup_from_settings  # noqa: PLC0415
    from broker.gateway.settings import load_gateway_settings  # noqa: PLC0415
    from broker.logs import configure_logging  # noqa: PLC0415

    configure_logging("json")
    settings = load_gateway_settings(args.settings)
    asyncio.run(
        setup_from_settings(
            settings, now=datetime.now(UTC), timeout=args.timeout, replicas=args.replicas
        )
    )
    return 0


def _print_status(fed: Federation) -> None:
    rows = [
        (r.name, r.pid or "-", "yes" if r.alive else "no", r.port or "-", r.url or "-")
        for r in fed.status()
    ]
    headers = ("process", "pid", "alive", "port", "url")
    widths = [max(len(h), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m broker.cli.federation ...`` (same as ``casebridge federation ...``)."""
    parser = argparse.ArgumentParser(prog="casebridge")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(["federation", *(sys.argv[1:] if argv is None else argv)])
    try:
        code: int = args.func(args)
    except CasebridgeError as exc:
        print(f"error [{exc.reason.value}]: {exc.detail}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
