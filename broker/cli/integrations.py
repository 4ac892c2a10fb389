"""Commands for connecting case systems, over the node's API: ``casebridge webhooks``,
``casebridge clients`` and ``casebridge events``.

``webhooks add|list|remove|replay|deliveries`` manage webhook subscriptions; ``clients
add|list|rotate|revoke`` manage per-system API clients (a new token is printed once);
``events`` prints a page of the change feed. The node and token come from ``--node`` /
``--token`` (or ``$CASEBRIDGE_NODE`` / ``$CASEBRIDGE_TOKEN``) as for the focal-point commands;
the token must hold the ``admin`` scope (the node's settings token does). Never reads the
node's database or keys.
"""

from __future__ import annotations

import argparse
from typing import Any

from broker.cli.focal import _client, _common, _emit, _guard, table
from broker.node.clients import SCOPES
from broker.node.events import EVENT_TYPES


def _webhook_add(args: argparse.Namespace) -> int:
    created = dict(
        _client(args).add_webhook(
            args.url, system=args.system, event_types=args.event or (), after=args.after
        )
    )
    _emit(
        args,
        created,
        f"{created['subscription_id']}  {created['url']}\n"
        f"secret (shown once, verify deliveries with it): {created['secret']}",
    )
    return 0


def _webhook_list(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for sub in _client(args).webhooks():
        counts = sub.get("deliveries", {})
        rows.append({**sub, **{k: counts.get(k, 0) for k in ("pending", "failed", "delivered")}})
    columns = ("subscription_id", "system", "url", "event_types", "pending", "failed", "delivered")
    _emit(args, {"subscriptions": rows}, table(rows, columns))
    return 0


def _webhook_remove(args: argparse.Namespace) -> int:
    _client(args).remove_webhook(args.id)
    _emit(args, {"subscription_id": args.id, "removed": True}, f"{args.id} removed")
    return 0


def _webhook_replay(args: argparse.Namespace) -> int:
    count = _client(args).replay_webhook(args.id, after=args.after)
    _emit(args, {"subscription_id": args.id, "queued": count}, f"{count} deliveries queued")
    return 0


def _webhook_deliveries(args: argparse.Namespace) -> int:
    rows = _client(args).webhook_deliveries(args.id, state=args.state, limit=args.limit)
    columns = ("seq", "state", "attempts", "last_error", "delivered_at")
    _emit(args, {"deliveries": rows}, table(rows, columns))
    return 0


def _client_add(args: argparse.Namespace) -> int:
    issued = dict(
        _client(args).add_client(
            args.client_id, system=args.system, purpose=args.purpose, scopes=args.scope
        )
    )
    _emit(args, issued, f"{issued['client_id']} token (shown once): {issued['token']}")
    return 0


def _client_list(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = [dict(c) for c in _client(args).clients()]
    columns = ("client_id", "system", "purpose", "scopes", "created_at", "revoked_at")
    _emit(args, {"clients": rows}, table(rows, columns))
    return 0


def _client_rotate(args: argparse.Namespace) -> int:
    issued = dict(_client(args).rotate_client(args.client_id, overlap_seconds=args.overlap))
    _emit(args, issued, f"{issued['client_id']} new token (shown once): {issued['token']}")
    return 0


def _client_revoke(args: argparse.Namespace) -> int:
    _client(args).revoke_client(args.client_id)
    _emit(args, {"client_id": args.client_id, "revoked": True}, f"{args.client_id} revoked")
    return 0


def _events(args: argparse.Namespace) -> int:
    page = _client(args).events(after=args.after, limit=args.limit, types=args.type or ())
    rows: list[dict[str, Any]] = [dict(e) for e in page["events"]]
    text = table(rows, ("seq", "type", "at", "message_id")) + f"\nnext cursor: {page['next']}"
    _emit(args, page, text)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hooks = sub.add_parser("webhooks", help="webhook subscriptions of case systems")
    verbs = hooks.add_subparsers(dest="verb", metavar="VERB", required=True)
    add = verbs.add_parser("add", help="subscribe a URL (prints its secret once)")
    add.add_argument("url")
    add.add_argument("--system", required=True, help="the case system it belongs to")
    add.add_argument("--event", action="append", choices=EVENT_TYPES, help="(repeatable)")
    add.add_argument("--after", type=int, help="start after this event (default: from now)")
    add.set_defaults(func=_guard(_webhook_add))
    listing = verbs.add_parser("list", help="subscriptions and their delivery counts")
    listing.set_defaults(func=_guard(_webhook_list))
    remove = verbs.add_parser("remove", help="delete a subscription and its queue")
    remove.add_argument("id")
    remove.set_defaults(func=_guard(_webhook_remove))
    replay = verbs.add_parser("replay", help="queue failed deliveries again (or from --after)")
    replay.add_argument("id")
    replay.add_argument("--after", type=int, help="every retained event after this one")
    replay.set_defaults(func=_guard(_webhook_replay))
    deliveries = verbs.add_parser("deliveries", help="a subscription's deliveries")
    deliveries.add_argument("id")
    deliveries.add_argument("--state", choices=("pending", "delivered", "failed"))
    deliveries.add_argument("--limit", type=int, default=100)
    deliveries.set_defaults(func=_guard(_webhook_deliveries))
    for parser in (add, listing, remove, replay, deliveries):
        _common(parser)

    clients = sub.add_parser("clients", help="per-system API clients and their tokens")
    verbs = clients.add_subparsers(dest="verb", metavar="VERB", required=True)
    add = verbs.add_parser("add", help="register a client (prints its token once)")
    add.add_argument("client_id")
    add.add_argument("--system", required=True, help="the case system it stands for")
    add.add_argument("--purpose", required=True, help="why it fetches data (audited)")
    add.add_argument("--scope", action="append", required=True, choices=SCOPES)
    add.set_defaults(func=_guard(_client_add))
    listing = verbs.add_parser("list", help="registered clients")
    listing.set_defaults(func=_guard(_client_list))
    rotate = verbs.add_parser("rotate", help="a new token; the old one lives for --overlap")
    rotate.add_argument("client_id")
    rotate.add_argument("--overlap", type=int, help="seconds the old token stays valid (24 h)")
    rotate.set_defaults(func=_guard(_client_rotate))
    revoke = verbs.add_parser("revoke", help="end every token of a client now")
    revoke.add_argument("client_id")
    revoke.set_defaults(func=_guard(_client_revoke))
    for parser in (add, listing, rotate, revoke):
        _common(parser)

    feed = sub.add_parser("events", help="a page of the node's change feed")
    feed.add_argument("--after", type=int, default=0, help="cursor: the last seq seen")
    feed.add_argument("--limit", type=int, default=100)
    feed.add_argument("--type", action="append", choices=EVENT_TYPES, help="(repeatable)")
    _common(feed)
    feed.set_defaults(func=_guard(_events))
