"""Focal-point commands talking HTTP to a running node: send, inbox, show, reply, status,
explain.

The node is ``--node URL`` (or ``$CASEBRIDGE_NODE``, default ``http://127.0.0.1:8470``) and the
token ``--token`` (or ``$CASEBRIDGE_TOKEN``). Output is a readable table by default and the
node's JSON with ``--json``. Node errors print as ``error [reason]: detail`` (exit status 2).
HTTP goes through :class:`broker.sdk.NodeClient`; this module never reads keys or the node's
database: everything goes through the API.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from broker.core.header import HANDLING_CODES, PURPOSES, TLP_MARKINGS
from broker.sdk import NodeClient
from broker.sdk import NodeError as NodeCallError
from broker.sniff import declared_type_for

DEFAULT_NODE: Final = "http://127.0.0.1:8470"

__all__ = ["DEFAULT_NODE", "NodeCallError", "NodeClient", "register", "table"]


# ------------------------------------------------------------------ output ---


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain text table of ``columns`` (``-`` for empty values)."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _emit(args: argparse.Namespace, document: Any, text: str) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False) if args.json else text)


# ---------------------------------------------------------------- commands ---


def _client(args: argparse.Namespace) -> NodeClient:
    token = args.token or os.environ.get("CASEBRIDGE_TOKEN", "")
    if not token:
        raise NodeCallError("unauthorized", "give --token or set CASEBRIDGE_TOKEN")
    base = args.node or os.environ.get("CASEBRIDGE_NODE", DEFAULT_NODE)
    try:
        return NodeClient(base, token)
    except NodeCallError:
        raise NodeCallError("bad_request", f"--node must be an http(s) URL, not {base!r}") from None


def _body(args: argparse.Namespace) -> dict[str, Any]:
    text = Path(args.file).read_text(encoding="utf-8") if args.file else args.body
    if text is None:
        raise NodeCallError("bad_request", "give the message body with --body JSON or --file")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise NodeCallError("bad_request", f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise NodeCallError("bad_request", "the body must be a JSON object")
    return value


def _draft(args: argparse.Namespace, *, in_reply_to: str | None = None) -> dict[str, Any]:
    draft: dict[str, Any] = {
        "type": args.type,
        "purpose": args.purpose,
        "handling": args.handling,
        "tlp": args.tlp,
        "body": _body(args),
    }
    optional = {
        "to": args.to or None,
        "legal_basis": args.legal_basis,
        "due": args.due,
        "task_force": getattr(args, "task_force", None),
        "categories": args.category or None,
        "in_reply_to": in_reply_to,
        "derived_from": args.derived_from,
        "onward_allowed": True if args.onward_allowed else None,
        "onward_exclude": args.onward_exclude or None,
    }
    draft.update({k: v for k, v in optional.items() if v is not None})
    return draft


def _send_result(args: argparse.Namespace, result: dict[str, Any]) -> int:
    _emit(
        args,
        result,
        f"{result['message_id']}  {result['state']}  conversation {result['conversation']}\n"
        f"categories: {_cell(result['categories'])}  rule: {_cell(result['rule_id'])}"
        + (f"\nredactions: {'; '.join(result['redactions'])}" if result["redactions"] else ""),
    )
    return 0


def _attach(args: argparse.Namespace, client: NodeClient, draft: dict[str, Any]) -> None:
    handles = []
    for name in args.attach or ():
        path = Path(name)
        if not path.is_file():
            raise NodeCallError("bad_request", f"--attach {name}: no such file")
        handles.append(
            client.upload_attachment(path, media_type=declared_type_for(path))["attachment"]
        )
    if handles:
        draft["attachments"] = handles


def _cmd_send(args: argparse.Namespace) -> int:
    client = _client(args)
    draft = _draft(args)
    _attach(args, client, draft)
    # No key given: the client makes one for this send and reuses it on every retry.
    result = client.send(draft, idempotency_key=args.idempotency_key)
    return _send_result(args, dict(result))


def _cmd_reply(args: argparse.Namespace) -> int:
    draft = _draft(args, in_reply_to=args.id)
    return _send_result(args, dict(_client(args).send(draft)))


def _cmd_inbox(args: argparse.Namespace) -> int:
    messages = _client(args).inbox(
        unread=args.unread,
        overdue=args.overdue,
        conversation=args.conversation or None,
        limit=args.limit,
    )
    columns = ("message_id", "type", "sender", "received_at", "due", "overdue", "read_at")
    rows: list[dict[str, Any]] = [dict(m) for m in messages]
    _emit(args, {"messages": rows}, table(rows, columns))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    document = _client(args).show(
        args.id, justification=args.why, actor=args.actor or getpass.getuser()
    )
    fields = ("message_id", "direction", "type", "sender", "conversation", "in_reply_to", "due")
    summary = "\n".join(f"{f}: {_cell(document.get(f))}" for f in fields)
    body = json.dumps(document.get("body"), indent=2, ensure_ascii=False)
    _emit(args, document, f"{summary}\n\n{body}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    document: dict[str, Any] = dict(_client(args).evidence(args.id))
    columns = ("at", "kind", "actor", "reason", "rule_id", "detail")
    head = f"{document['message_id']} ({document['direction']}, {_cell(document['state'])})"
    _emit(args, document, f"{head}\n{table(document['evidence'], columns)}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    document: dict[str, Any] = dict(_client(args).explain(_draft(args)))
    verdict = "ALLOWED" if document["allowed"] else "DENIED"
    lines = [f"{verdict} by {document['rule_id']}: {document['reason']}"]
    if document.get("categories") is not None:
        lines.append(f"categories: {_cell(document['categories'])}")
    lines += [f"redaction: {r}" for r in document.get("redactions", [])]
    _emit(args, document, "\n".join(lines))
    return 0 if document["allowed"] else 1


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            result = func(args)
        except NodeCallError as exc:
            rule = f" (rule {exc.rule_id})" if exc.rule_id else ""
            print(f"error [{exc.reason}]: {exc.detail}{rule}", file=sys.stderr)
            return 2
        return result

    return run


# ---------------------------------------------------------------- parsers ---


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", help=f"node API URL (env CASEBRIDGE_NODE, {DEFAULT_NODE})")
    parser.add_argument("--token", help="node API token (env CASEBRIDGE_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print the node's JSON")


def _draft_options(parser: argparse.ArgumentParser, *, reply: bool) -> None:
    parser.add_argument("--to", action="append", help="recipient agency (repeatable)")
    parser.add_argument("--type", required=True, help="message type, e.g. request.assistance")
    parser.add_argument("--purpose", required=True, choices=PURPOSES)
    parser.add_argument("--handling", required=True, choices=HANDLING_CODES)
    parser.add_argument("--tlp", default="AMBER", choices=TLP_MARKINGS)
    parser.add_argument(
        "--legal-basis", help="legal basis (a reply inherits the original's)" if reply else None
    )
    parser.add_argument("--due", help="due date YYYY-MM-DD (requests)")
    parser.add_argument("--category", action="append", help="extra declared data category")
    parser.add_argument(
        "--derived-from",
        help="id of the received message this one is derived from (onward-transfer rule)",
    )
    parser.add_argument(
        "--onward-allowed",
        action="store_true",
        help="let recipients pass data derived from this message on (default: not allowed)",
    )
    parser.add_argument(
        "--onward-exclude",
        action="append",
        metavar="CC",
        help="country that data derived from this message must never reach (repeatable)",
    )
    if not reply:
        parser.add_argument("--task-force", help="send to every other member of a task force")
        parser.add_argument(
            "--attach",
            action="append",
            metavar="FILE",
            help="attach a file (repeatable; streamed, sealed with its own key)",
        )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--body", help="message body as JSON text")
    source.add_argument("--file", help="file holding the message body JSON")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    send = sub.add_parser("send", help="send a message through the node")
    _draft_options(send, reply=False)
    send.add_argument(
        "--idempotency-key",
        help="repeat-safe key for this submission (default: a fresh one, reused on retries)",
    )
    _common(send)
    send.set_defaults(func=_guard(_cmd_send))

    inbox = sub.add_parser("inbox", help="list received messages")
    inbox.add_argument("--unread", action="store_true")
    inbox.add_argument("--overdue", action="store_true", help="unanswered requests past due")
    inbox.add_argument("--conversation")
    inbox.add_argument("--limit", type=int, default=100)
    _common(inbox)
    inbox.set_defaults(func=_guard(_cmd_inbox))

    show = sub.add_parser("show", help="open a message (received: needs --why; logged)")
    show.add_argument("id")
    show.add_argument("--why", help="justification for opening a received message")
    show.add_argument("--actor", help="who opens it (default: your user name)")
    _common(show)
    show.set_defaults(func=_guard(_cmd_show))

    reply = sub.add_parser("reply", help="reply to a message (same conversation)")
    reply.add_argument("id")
    _draft_options(reply, reply=True)
    _common(reply)
    reply.set_defaults(func=_guard(_cmd_reply))

    status = sub.add_parser("status", help="the evidence trail of a message")
    status.add_argument("id")
    _common(status)
    status.set_defaults(func=_guard(_cmd_status))

    explain = sub.add_parser("explain", help="what policy would decide about a draft")
    _draft_options(explain, reply=False)
    _common(explain)
    explain.set_defaults(func=_guard(_cmd_explain))
