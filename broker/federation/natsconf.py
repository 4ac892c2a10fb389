"""nats-server configuration text for the federation hub and each country server.

Pure functions: values in (:class:`HubConf`, :class:`CountryConf`), configuration text out. The
layout and the permissions are the ones of ``docs/federation.md``; every permission list is
built by a small function of its own so that tests and the docs can check them.

- Hub: relay only (no JetStream). Leaf-node listener with mTLS against the secretariat CA and
  ``verify_and_map``: each country's leaf certificate DN is a user of account ``CB`` whose
  publish/subscribe permissions let through only that country's cross-border traffic.
- Country: JetStream domain ``<cc>``, client port with mTLS against the country CA only and
  ``verify_and_map`` (agencies and the gateway are users named by their certificate DN), one
  leaf remote to the hub bound to account ``CB`` with deny rules as a second line of defence.
- Every server has an HTTP monitoring port (``/healthz``, ``/varz``, ``/leafz``...).

This module never reads files or starts anything; strings are quoted with ``json.dumps`` (the
nats-server configuration format accepts JSON strings).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from broker.core import attachment_wire as aw
from broker.core import publication as pub
from broker.core import wire as s
from broker.errors import ConfigError

TLS_TIMEOUT_SECONDS: Final = 2
# Inbox prefix of the secretariat's publishing client on the hub (``_INBOX.secretariat``).
PUBLISHER_INBOX: Final = "secretariat"
# The hub keeps directories only: a small, fixed JetStream budget.
HUB_JETSTREAM_MAX_FILE: Final = "256M"
# Reply subjects nats-server uses for JetStream API requests across domains (stream sourcing).
CROSS_DOMAIN_REPLIES: Final = "$JSC.R.>"
# Flow-control replies of the push consumers that stream sourcing creates in the peer domain.
FLOW_CONTROL: Final = "$JS.FC.>"
# Local streams whose consumers must never be created from outside the country.
LOCAL_STREAMS: Final = (
    s.SUBMIT_STREAM,
    s.INBOX_STREAM,
    s.DELIVER_STREAM,
    s.AUDIT_STREAM,
    aw.ATT_SUBMIT_STREAM,
    aw.ATT_INBOX_STREAM,
    aw.ATT_DELIVER_STREAM,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class TlsFiles:
    """Certificate (chain) presented, its key, and the CA file peers are verified against."""

    cert_file: Path
    key_file: Path
    ca_file: Path


@dataclass(frozen=True, kw_only=True, slots=True)
class CertUser:
    """A user mapped from a TLS certificate: who it is and the certificate subject DN."""

    name: str
    dn: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Listen:
    """Host and ports of one server."""

    host: str
    client_port: int
    http_port: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterConf:
    """One member of a country's NATS cluster: its number, cluster port and its peers' routes.

    ``routes``: ``host:port`` of the other members (a list of every member is fine too: a
    server ignores a route to itself). Routes are mutual TLS with ``tls`` (the country's
    server certificate, verified against the country CA) and ``verify_and_map``: a route is
    accepted only from a certificate whose identity is ``route_dn`` (the server certificate's
    subject DN), so neither a stranger nor an agency's certificate of the same CA joins the
    country's cluster (and its JetStream domain), and nothing crosses a route in clear.
    ``server_name_env``: take the server's name from that environment variable (``POD_NAME``
    in a StatefulSet, where every member shares one configuration); default
    ``cb-<domain>-<member>``."""

    name: str
    member: int
    port: int
    routes: Sequence[str]
    tls: TlsFiles
    route_dn: str
    server_name_env: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class HubConf:
    """Everything the hub configuration is made of. ``leaf_users``: one per country code.

    ``store_dir`` (with ``publisher``): the hub keeps the signed directories the secretariat
    publishes (JetStream domain ``hub``, stream ``DIRECTORY``, nothing else); ``publisher`` is
    the secretariat's certificate user, the only one that may publish them. Without them the
    hub is relay only, as before."""

    federation_id: str
    listen: Listen
    leaf_port: int
    tls: TlsFiles
    leaf_users: Sequence[CertUser]
    store_dir: Path | None = None
    publisher: CertUser | None = None
    cluster: ClusterConf | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class CountryConf:
    """Everything a country server configuration is made of."""

    federation_id: str
    code: str
    listen: Listen
    store_dir: Path
    tls: TlsFiles
    leaf_tls: TlsFiles
    hub_leaf_url: str
    peers: Sequence[str]
    agencies: Sequence[CertUser]
    gateway: CertUser
    cluster: ClusterConf | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Permissions:
    """Allow lists of one user (anything not listed is refused)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


# ------------------------------------------------------------ permission lists ---


def agency_permissions(agency_id: str) -> Permissions:
    """An agency may submit on its own subject and read its own pre-created DELIVER consumer.

    No consumer create/delete, no stream API: the consumer ``node-<agency>`` is created by the
    federation setup (:mod:`broker.federation.streams`), so an agency cannot point a push
    consumer's deliver subject at ``cb.out.*`` or read anyone else's messages. Replies (JetStream
    acks, pulled messages) arrive under its own inbox prefix only.
    """
    consumers = []
    for evidence in (False, True):  # the case-message lane and the evidence lane
        durable = s.node_durable(agency_id, evidence=evidence)
        api = f"$JS.API.CONSUMER.%s.{s.DELIVER_STREAM}.{durable}"
        consumers += [api % "INFO", api % "MSG.NEXT", f"$JS.ACK.{s.DELIVER_STREAM}.{durable}.>"]
    # Attachment chunks (docs/federation.md, "Attachments"): own chunk subject, own consumer.
    durable = aw.att_node_durable(agency_id)
    api = f"$JS.API.CONSUMER.%s.{aw.ATT_DELIVER_STREAM}.{durable}"
    consumers += [api % "INFO", api % "MSG.NEXT", f"$JS.ACK.{aw.ATT_DELIVER_STREAM}.{durable}.>"]
    return Permissions(
        publish=(
            s.submit_subject(agency_id),
            aw.att_submit_subject(agency_id),
            s.audit_subject(agency_id),  # signed audit checkpoints for the gateway
            *consumers,
            # Read-only: the directory and policies in force (public federation material),
            # by direct get; no consumer, no publish on cb.pub.>.
            *published_read(),
        ),
        subscribe=(f"{s.inbox_prefix(agency_id)}.>",),
    )


def published_read() -> tuple[str, ...]:
    """Direct gets on the country's ``PUBLISHED`` stream (what a node reads to follow the
    directory and the policies; broker/federation/distribution.py)."""
    api = f"$JS.API.DIRECT.GET.{pub.PUBLISHED_STREAM}"
    return (api, f"{api}.>")


def publication_permissions(code: str, peers: Sequence[str]) -> Permissions:
    """What the hub lets country ``code``'s leaf connection do for publications.

    publish: create the sourcing consumer on the hub's ``DIRECTORY`` and on each peer's
    ``PUBLISHED``, deliver from its own ``PUBLISHED`` (``cb.xp.<code>.>``). subscribe: consumer
    creates on its own ``PUBLISHED`` (peers sourcing its policy), deliveries addressed to it
    (``cb.xp.*.<code>.>``). It can never publish on ``cb.pub.>``: its policy is published in
    its own domain and travels by sourcing, so no country writes another's document."""
    me = code.lower()
    hub = f"$JS.{pub.HUB_DOMAIN}.API.CONSUMER.CREATE.{pub.HUB_DIRECTORY_STREAM}"
    publish = [hub, f"{hub}.>"]
    for peer in peers:
        theirs = f"{s.domain_api(peer)}.CONSUMER.CREATE.{pub.PUBLISHED_STREAM}"
        publish += [theirs, f"{theirs}.>"]
    mine = f"{s.domain_api(me)}.CONSUMER.CREATE.{pub.PUBLISHED_STREAM}"
    publish.append(f"{pub.PUBLICATION_DELIVERY_ROOT}.{me}.>")
    subscribe = [mine, f"{mine}.>", f"{pub.PUBLICATION_DELIVERY_ROOT}.*.{me}.>"]
    return Permissions(publish=tuple(publish), subscribe=tuple(subscribe))


def publisher_permissions() -> Permissions:
    """The secretariat's user on the hub: publish directories, manage and read ``DIRECTORY``.
    Replies come to ``_INBOX.secretariat`` (connect with that inbox prefix)."""
    api = "$JS.API"
    stream = pub.HUB_DIRECTORY_STREAM
    return Permissions(
        publish=(
            pub.DIRECTORY_SUBJECT,
            f"{api}.INFO",
            f"{api}.STREAM.INFO.{stream}",
            f"{api}.STREAM.CREATE.{stream}",
            f"{api}.STREAM.UPDATE.{stream}",
            f"{api}.DIRECT.GET.{stream}",
            f"{api}.DIRECT.GET.{stream}.>",
        ),
        subscribe=(f"{s.INBOX_ROOT}.{PUBLISHER_INBOX}.>",),
    )


def hub_leaf_permissions(code: str, peers: Sequence[str]) -> Permissions:
    """What country ``code``'s leaf connection may send to and receive from the hub.

    publish: create the sourcing consumer on each peer's ``OUT_<CODE>`` (both the plain and the
    filtered create subject), deliver from its own outboxes (``cb.xd.<code>.>``), cross-domain
    API replies and flow control. subscribe: consumer creates on its own outboxes towards each
    peer, deliveries addressed to it (``cb.xd.*.<code>.>``), replies and flow control.
    """
    me = code.upper()
    publish: list[str] = []
    subscribe: list[str] = []
    for peer in peers:
        theirs = f"{s.domain_api(peer)}.CONSUMER.CREATE.{s.out_stream(me)}"
        mine = f"{s.domain_api(me)}.CONSUMER.CREATE.{s.out_stream(peer)}"
        publish += [theirs, f"{theirs}.>"]
        subscribe += [mine, f"{mine}.>"]
        # The same for the attachment chunk outboxes (ATT_OUT_*), sourced by ATT_INBOX.
        theirs = f"{s.domain_api(peer)}.CONSUMER.CREATE.{aw.att_out_stream(me)}"
        mine = f"{s.domain_api(me)}.CONSUMER.CREATE.{aw.att_out_stream(peer)}"
        publish += [theirs, f"{theirs}.>"]
        subscribe += [mine, f"{mine}.>"]
    publish += [f"cb.xd.{s.domain(me)}.>", CROSS_DOMAIN_REPLIES, FLOW_CONTROL]
    subscribe += [f"cb.xd.*.{s.domain(me)}.>", CROSS_DOMAIN_REPLIES, FLOW_CONTROL]
    published = publication_permissions(code, peers)
    publish += published.publish
    subscribe += published.subscribe
    publish += [f"cb.xa.{s.domain(me)}.>"]
    subscribe += [f"cb.xa.*.{s.domain(me)}.>"]
    return Permissions(publish=tuple(publish), subscribe=tuple(subscribe))


def leaf_deny_imports(code: str) -> tuple[str, ...]:
    """What a country server refuses to take from the hub, whatever the hub lets through.

    Of its own domain API only consumer creation on ``OUT_*`` is let in; local application
    subjects, the local (non-domain) API, acks and inboxes never come from abroad.
    """
    api = s.domain_api(code)
    own_api = [
        f"{api}.INFO",
        f"{api}.STREAM.>",
        f"{api}.ACCOUNT.>",
        f"{api}.META.>",
        f"{api}.SERVER.>",
        f"{api}.DIRECT.>",
        f"{api}.CONSUMER.DURABLE.>",
        f"{api}.CONSUMER.DELETE.>",
        f"{api}.CONSUMER.INFO.>",
        f"{api}.CONSUMER.LIST.>",
        f"{api}.CONSUMER.NAMES.>",
        f"{api}.CONSUMER.MSG.>",
        f"{api}.CONSUMER.PAUSE.>",
        f"{api}.CONSUMER.UNPIN.>",
        f"{api}.CONSUMER.LEADER.>",
    ]
    for stream in LOCAL_STREAMS:
        own_api += [f"{api}.CONSUMER.CREATE.{stream}", f"{api}.CONSUMER.CREATE.{stream}.>"]
    return (
        *own_api,
        "$JS.API.>",
        "$JS.ACK.>",
        s.SUBMIT_SUBJECTS,
        s.DELIVER_SUBJECTS,
        s.OUT_SUBJECTS,
        s.AUDIT_SUBJECTS,
        s.KV_SUBJECTS,
        # Publications travel only by sourcing (cb.xp.*), never as plain subjects.
        pub.PUBLISHED_SUBJECTS,
        f"{s.INBOX_ROOT}.>",
        aw.ATT_SUBJECTS,
    )


def leaf_deny_exports() -> tuple[str, ...]:
    """What a country server never sends to the hub (submissions, deliveries, raw outboxes)."""
    return (
        s.SUBMIT_SUBJECTS,
        s.DELIVER_SUBJECTS,
        s.OUT_SUBJECTS,
        s.AUDIT_SUBJECTS,
        s.KV_SUBJECTS,
        pub.PUBLISHED_SUBJECTS,
        f"{s.INBOX_ROOT}.>",
        "$JS.API.>",
        "$JS.ACK.>",
        aw.ATT_SUBJECTS,
    )


# ------------------------------------------------------------------ rendering ---


def _q(value: str | Path) -> str:
    return json.dumps(str(value), ensure_ascii=False)


def _strings(values: Sequence[str], indent: str) -> str:
    inner = "".join(f"{indent}  {_q(v)}\n" for v in values)
    return f"[\n{inner}{indent}]"


def _tls_block(tls: TlsFiles, indent: str, *, verify_and_map: bool) -> str:
    lines = [
        f"cert_file: {_q(tls.cert_file)}",
        f"key_file: {_q(tls.key_file)}",
        f"ca_file: {_q(tls.ca_file)}",
        f"timeout: {TLS_TIMEOUT_SECONDS}",
    ]
    if verify_and_map:
        # Client certificate required and verified; its subject DN is the user name.
        lines.append("verify_and_map: true")
    body = "".join(f"{indent}  {line}\n" for line in lines)
    return f"{{\n{body}{indent}}}"


def _user(user: CertUser, perms: Permissions | None, indent: str) -> str:
    head = f"{indent}# {user.name}\n{indent}{{ user: {_q(user.dn)}"
    if perms is None:
        return head + " }\n"
    inner = indent + "    "
    return (
        f"{head}, permissions: {{\n"
        f"{inner}publish: {{ allow: {_strings(perms.publish, inner)} }}\n"
        f"{inner}subscribe: {{ allow: {_strings(perms.subscribe, inner)} }}\n"
        f"{indent}}} }}\n"
    )


def _header(what: str, federation_id: str) -> str:
    return (
        f"# Casebridge federation {federation_id!r}: {what}.\n"
        "# Generated by `casebridge federation init/up` from the federation file and the PKI;\n"
        "# regenerated at every `up`, so do not edit. Layout: docs/federation.md.\n"
    )


def render_hub(conf: HubConf) -> str:
    """The hub's configuration: relay only, per-country leaf users mapped from certificates."""
    listen = conf.listen
    codes = [u.name for u in conf.leaf_users]
    users = "".join(
        _user(u, hub_leaf_permissions(u.name, [c for c in codes if c != u.name]), "      ")
        for u in conf.leaf_users
    )
    jetstream = ""
    account_js = ""
    if conf.store_dir is not None:
        jetstream = (
            "# Only the signed directories the secretariat publishes (stream DIRECTORY).\n"
            f"jetstream {{\n  store_dir: {_q(conf.store_dir)}\n"
            f"  domain: {_q(pub.HUB_DOMAIN)}\n  max_file_store: {HUB_JETSTREAM_MAX_FILE}\n}}\n"
        )
        account_js = "    jetstream: enabled\n"
    if conf.publisher is not None:
        users += _user(conf.publisher, publisher_permissions(), "      ")
    what = (
        "hub (relay only, no JetStream)"
        if conf.store_dir is None
        else f"hub (relay; JetStream domain {pub.HUB_DOMAIN!r} for the directory only)"
    )
    return (
        _header(what, conf.federation_id) + f"server_name: {_server_name('cb-hub', conf.cluster)}\n"
        f"listen: {_q(f'{listen.host}:{listen.client_port}')}\n"
        f"http: {_q(f'{listen.host}:{listen.http_port}')}\n"
        "# Clients too must present a secretariat-issued certificate that maps to a user.\n"
        f"tls {_tls_block(conf.tls, '', verify_and_map=True)}\n"
        f"{jetstream}"
        f"{_cluster_block(conf.cluster, listen.host, 'the hub')}"
        "accounts {\n"
        f"  {s.SYSTEM_ACCOUNT} {{ }}\n"
        f"  {s.ACCOUNT} {{\n"
        f"{account_js}"
        "    # One user per country: its leaf-node certificate DN. The permissions are the\n"
        "    # border: what the country may send into the hub and receive from it.\n"
        "    users: [\n"
        f"{users}"
        "    ]\n"
        "  }\n"
        "}\n"
        f"system_account: {s.SYSTEM_ACCOUNT}\n"
        "leafnodes {\n"
        f"  listen: {_q(f'{listen.host}:{conf.leaf_port}')}\n"
        "  # Only the secretariat CA vouches for a country's leaf connection (certs/README.md).\n"
        f"  tls {_tls_block(conf.tls, '  ', verify_and_map=True)}\n"
        "}\n"
    )


def _cluster_block(cluster: ClusterConf | None, host: str, what: str) -> str:
    if cluster is None:
        return ""
    routes = [f"nats-route://{r}" for r in cluster.routes]
    return (
        f"# One of {what}'s clustered servers: routes to the other members, mutual TLS\n"
        "# against its CA; only the servers' certificate DN may route.\n"
        "cluster {\n"
        f"  name: {_q(cluster.name)}\n"
        f"  listen: {_q(f'{host}:{cluster.port}')}\n"
        f"  tls {_tls_block(cluster.tls, '  ', verify_and_map=True)}\n"
        f"  authorization {{ user: {_q(cluster.route_dn)} }}\n"
        f"  routes: {_strings(routes, '  ')}\n"
        "}\n"
    )


def _server_name(single: str, cluster: ClusterConf | None) -> str:
    if cluster is None:
        return _q(single)
    if cluster.server_name_env is not None:
        if not cluster.server_name_env.isidentifier():
            raise ConfigError(f"{cluster.server_name_env!r} is not an environment variable name")
        # Unquoted: nats-server expands a $VARIABLE from the environment only outside quotes.
        return f"${cluster.server_name_env}"
    return _q(f"{single}-{cluster.member}")


def render_country(conf: CountryConf) -> str:
    """A country server's configuration: its JetStream domain, agencies, gateway, leaf remote."""
    listen = conf.listen
    dom = s.domain(conf.code)
    users = "".join(_user(a, agency_permissions(a.name), "      ") for a in conf.agencies) + _user(
        conf.gateway, None, "      "
    )
    remote_tls = _tls_block(conf.leaf_tls, "      ", verify_and_map=False)
    return (
        _header(f"country server {conf.code} (JetStream domain {dom!r})", conf.federation_id)
        + f"server_name: {_server_name(f'cb-{dom}', conf.cluster)}\n"
        f"listen: {_q(f'{listen.host}:{listen.client_port}')}\n"
        f"http: {_q(f'{listen.host}:{listen.http_port}')}\n"
        "# Agencies and the gateway: mTLS against this country's CA only (certs/README.md).\n"
        f"tls {_tls_block(conf.tls, '', verify_and_map=True)}\n"
        f"jetstream {{\n  store_dir: {_q(conf.store_dir)}\n  domain: {_q(dom)}\n}}\n"
        + _cluster_block(conf.cluster, listen.host, f"country {conf.code}")
        + "accounts {\n"
        f"  {s.SYSTEM_ACCOUNT} {{ }}\n"
        f"  {s.ACCOUNT} {{\n"
        "    jetstream: enabled\n"
        "    # Agencies: own submit subject, own DELIVER consumer, own reply inbox. The\n"
        "    # gateway (last) has the whole account.\n"
        "    users: [\n"
        f"{users}"
        "    ]\n"
        "  }\n"
        "}\n"
        f"system_account: {s.SYSTEM_ACCOUNT}\n"
        "leafnodes {\n"
        "  remotes: [\n"
        "    {\n"
        f"      url: {_q(conf.hub_leaf_url)}\n"
        f"      account: {s.ACCOUNT}\n"
        f"      tls {remote_tls}\n"
        "      # Second line of defence, enforced here whatever the hub lets through.\n"
        f"      deny_imports: {_strings(leaf_deny_imports(conf.code), '      ')}\n"
        f"      deny_exports: {_strings(leaf_deny_exports(), '      ')}\n"
        "    }\n"
        "  ]\n"
        "}\n"
    )
