"""Focal-point commands talking HTTP to a running node: send, inbox, show, reply, status,
explain.

The node is ``--node URL`` (or ``$CASEBRIDGE_NODE``, default ``http://127.0.0.1:8470``) and the
token ``--token`` (or ``$CASEBRIDGE_TOKEN``). Output is a readable table by default and the
node's JSON with ``--json``. Node errors print as ``error [reason]: detail`` (exit status 2).
This module never reads keys or the node's database: everything goes through the API.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from broker.core.header import HANDLING_CODES, PURPOSES, TLP_MARKINGS

DEFAULT_NODE: Final = "http://127.0.0.1:8470"
TIMEOUT: Final = 30.0


class NodeCallError(Exception):
    """The node answered with an error document (or could not be reached)."""

    def __init__(self, reason: str, detail: str, rule_id: str | None = None) -> None:
        self.reason, self.detail, self.rule_id = reason, detail, rule_id
        super().__init__(f"{reason}: {detail}")


class NodeClient:
    """A minimal JSON client of the node API (stdlib only)."""

    def __init__(self, base: str, token: str) -> None:
        parsed = urllib.parse.urlsplit(base)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise NodeCallError("bad_request", f"--node must be an http(s) URL, not {base!r}")
        self.base = base.rstrip("/")
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        url = self.base + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - scheme checked in __init__
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 - scheme checked in __init__
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
            except (ValueError, KeyError, TypeError):
                raise NodeCallError("http_error", f"HTTP {exc.code} from the node") from None
            raise NodeCallError(
                str(error.get("reason")), str(error.get("detail")), error.get("rule_id")
            ) from None
        except urllib.error.URLError as exc:
            raise NodeCallError("node_unreachable", f"{self.base}: {exc.reason}") from None


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
    return NodeClient(args.node or os.environ.get("CASEBRIDGE_NODE", DEFAULT_NODE), token)


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


def _cmd_send(args: argparse.Namespace) -> int:
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    result = _client(args).call("POST", "/v1/messages", body=_draft(args), headers=headers)
    return _send_result(args, result)


def _cmd_reply(args: argparse.Namespace) -> int:
    draft = _draft(args, in_reply_to=args.id)
    return _send_result(args, _client(args).call("POST", "/v1/messages", body=draft))


def _cmd_inbox(args: argparse.Namespace) -> int:
    query = {"limit": str(args.limit)}
    for flag in ("unread", "overdue"):
        if getattr(args, flag):
            query[flag] = "1"
    if args.conversation:
        query["conversation"] = args.conversation
    document = _client(args).call("GET", "/v1/inbox", query=query)
    columns = ("message_id", "type", "sender", "received_at", "due", "overdue", "read_at")
    _emit(args, document, table(document["messages"], columns))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    headers = {"X-Actor": args.actor or getpass.getuser()}
    if args.why:
        headers["X-Justification"] = args.why
    document = _client(args).call("GET", f"/v1/messages/{args.id}", headers=headers)
    fields = ("message_id", "direction", "type", "sender", "conversation", "in_reply_to", "due")
    summary = "\n".join(f"{f}: {_cell(document.get(f))}" for f in fields)
    body = json.dumps(document.get("body"), indent=2, ensure_ascii=False)
    _emit(args, document, f"{summary}\n\n{body}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    document = _client(args).call("GET", f"/v1/messages/{args.id}/evidence")
    columns = ("at", "kind", "actor", "reason", "rule_id", "detail")
    head = f"{document['message_id']} ({document['direction']}, {_cell(document['state'])})"
    _emit(args, document, f"{head}\n{table(document['evidence'], columns)}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    document = _client(args).call("POST", "/v1/explain", body=_draft(args))
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
    if not reply:
        parser.add_argument("--task-force", help="send to every other member of a task force")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--body", help="message body as JSON text")
    source.add_argument("--file", help="file holding the message body JSON")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    send = sub.add_parser("send", help="send a message through the node")
    _draft_options(send, reply=False)
    send.add_argument("--idempotency-key", help="repeat-safe key for this submission")
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
