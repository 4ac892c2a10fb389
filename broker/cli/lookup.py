"""``casebridge lookup``: hit/no-hit lookups through the node API, and the pairwise secret.

* ``register --kind K --reference R``: index an identifier of one of our records;
* ``query --to AGENCY --kind K [--wait]``: ask an agency abroad; prints the query id, or the
  answer with ``--wait``;
* ``answer ID``, ``log``: the answer to a query, the node's lookup log;
* ``new-secret FILE``: a fresh 32-byte pairwise secret (base64url, file mode 0600) for the
  two countries' lookup settings (docs/protocol.md, "Hit/no-hit lookup").

The identifier is read from ``--value-file`` or typed at a hidden prompt, never taken from
the command line (it would stay in the shell history and the process list), and is never
printed. Everything else goes through :class:`broker.sdk.NodeClient`.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import os
import secrets
from pathlib import Path

from broker.cli.focal import NodeCallError, _client, _common, _emit, _guard, table
from broker.core.lookup import KINDS


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "lookup",
        help="hit/no-hit lookups: register identifiers, ask an agency abroad",
        description="Hit/no-hit lookups through the node (identifiers are keyed by the node "
        "before anything leaves it; a hit returns a reference and an agency to contact).",
    )
    inner = parser.add_subparsers(dest="lookup_command", metavar="ACTION", required=True)

    reg = inner.add_parser("register", help="index an identifier of one of our records")
    _identifier(reg)
    reg.add_argument("--reference", required=True, help="our record reference (returned on a hit)")
    reg.add_argument("--actor", help="who registers it (default: your user name)")
    _common(reg)
    reg.set_defaults(func=_guard(_register))

    query = inner.add_parser("query", help="ask an agency abroad whether it holds a record")
    query.add_argument("--to", required=True, help="the agency asked, e.g. de.lka-berlin")
    _identifier(query)
    query.add_argument("--case-ref", help="our case reference (logged by both sides)")
    query.add_argument("--why", help="purpose note (logged by both sides)")
    query.add_argument("--actor", help="who asks (default: your user name)")
    query.add_argument("--wait", action="store_true", help="wait for the answer (10 s)")
    _common(query)
    query.set_defaults(func=_guard(_query))

    answer = inner.add_parser("answer", help="the answer to one of our queries")
    answer.add_argument("id")
    _common(answer)
    answer.set_defaults(func=_guard(_answer))

    log = inner.add_parser("log", help="the node's lookup log (no identifiers in it)")
    _common(log)
    log.set_defaults(func=_guard(_log))

    secret = inner.add_parser("new-secret", help="write a fresh pairwise lookup secret")
    secret.add_argument("file", type=Path)
    secret.set_defaults(func=_new_secret)


def _identifier(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument(
        "--value-file",
        type=Path,
        help="file holding the identifier (default: typed at a hidden prompt); name_dob is "
        "'<names>|YYYY-MM-DD'",
    )


def _value(args: argparse.Namespace) -> str:
    source: Path | None = args.value_file
    value: str
    if source is not None:
        try:
            value = source.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise NodeCallError("bad_request", f"--value-file unreadable: {exc.strerror}") from None
    else:
        value = getpass.getpass(f"{args.kind} (not shown): ").strip()
    if not value:
        raise NodeCallError("bad_request", "no identifier given")
    return value


def _actor(args: argparse.Namespace) -> str:
    return str(args.actor or getpass.getuser())


def _register(args: argparse.Namespace) -> int:
    client = _client(args)
    result = client.lookup_register(args.kind, _value(args), args.reference, actor=_actor(args))
    partners = ", ".join(result["partners"]) or "no partner country"
    _emit(args, result, f"{args.reference}: {args.kind} indexed for {partners}")
    return 0


def _query(args: argparse.Namespace) -> int:
    client = _client(args)
    query_id = client.lookup_query(
        args.to,
        [(args.kind, _value(args))],
        case_ref=args.case_ref,
        purpose_note=args.why,
        actor=_actor(args),
    )
    if not args.wait:
        _emit(args, {"query_id": query_id}, query_id)
        return 0
    return _show(args, client.lookup_wait(query_id))


def _answer(args: argparse.Namespace) -> int:
    return _show(args, _client(args).lookup_answer(args.id))


def _show(args: argparse.Namespace, answer: dict[str, object]) -> int:
    hits = answer.get("hits") or []
    text = f"{answer['query_id']}: {answer['status']}"
    if isinstance(hits, list) and hits:
        text += "\n" + table(hits, ["probe", "reference", "agency"])
        text += "\nFollow up with an ordinary request.assistance quoting the reference."
    _emit(args, answer, text)
    return 0


def _log(args: argparse.Namespace) -> int:
    entries = _client(args).lookup_log()
    columns = ["at", "event", "query_id", "counterpart", "purpose", "probes", "result", "actor"]
    _emit(args, entries, table(entries, columns))
    return 0


def _new_secret(args: argparse.Namespace) -> int:
    path: Path = args.file
    text = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode() + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)
    print(f"{path}: new pairwise lookup secret (give it to the partner country out of band)")
    return 0
