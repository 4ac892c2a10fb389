"""The console's pages: sign-in, lists, reading with a purpose, compose, release, directory,
scorecard, audit, live counts; files of messages (upload while composing, download with a
purpose: the streaming and the file list are in :mod:`broker.console.files`).

What it is for
    Thin handlers: read the request, call the node's public methods (``send``, ``explain``,
    ``read``, ``today``) or the store's and :mod:`broker.console.queries`, render a template.
    Every action that changes something or opens content runs under the signed-in person and
    leaves an audit record (through the node, or :meth:`Accounts.audit` for console actions).

What it must never do
    Show an auditor message content, let an officer release a four-eyes message, send to a
    recipient the policy preview denied, or block the event loop on the store (every store
    call runs in a worker thread).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from broker.console import files as console_files
from broker.console import policies, present, queries, scorecard
from broker.console.accounts import LANGUAGES, AccountError, Role, User, check_zone
from broker.console.context import (
    CONSOLE_KEY,
    COUNTS_KEY,
    SESSION_KEY,
    USER_KEY,
    Console,
    forbid,
    page_context,
    session_of,
    set_cookie,
    user_of,
)
from broker.console.forms import Field, attach_errors, build_form, fill_from_body, parse_body
from broker.core.audit import Operation
from broker.core.header import HANDLING_CODES, PURPOSES, TLP_MARKINGS, agency_country
from broker.errors import CasebridgeError, InvalidMessage, PolicyDenied, SchemaInvalid
from broker.node.model import Draft, is_evidence_type, iso

REPLY_TYPES: Final = {
    "request.assistance": "response.assistance",
    "referral.victim": "referral.response",
}
# Sensible defaults per type: (purpose, handling, TLP, due in days or None)
DEFAULTS: Final[Mapping[str, tuple[str, str, str, int | None]]] = {
    "request.assistance": ("investigation", "H2", "AMBER", 14),
    "response.assistance": ("investigation", "H2", "AMBER", None),
    "information.spontaneous": ("investigation", "H2", "AMBER", None),
    "alert.person": ("search_for_person", "H2", "AMBER", None),
    "referral.victim": ("victim_support", "H2", "AMBER", 7),
    "referral.response": ("victim_support", "H2", "AMBER", None),
    "bulletin": ("prevention", "H0", "GREEN", None),
    "statistics.aggregate": ("statistics", "H0", "GREEN", None),
    "feedback": ("evaluation", "H1", "GREEN", None),
    "request.legal_remedy": ("victim_support", "H2", "AMBER", 30),
}
COMPOSABLE_EXCLUDED: Final = frozenset({"correction", "withdrawal"})  # from a message page only


def _console(request: web.Request) -> Console:
    return request.app[CONSOLE_KEY]


async def _counts(request: web.Request) -> queries.Counts:
    console = _console(request)
    found = await asyncio.to_thread(queries.counts, console.node.store, today=console.node.today())
    request[COUNTS_KEY] = found
    return found


async def _render(
    request: web.Request, template: str, status: int = 200, **values: Any
) -> web.Response:
    user: User | None = request.get(USER_KEY)
    if user is not None and user.role is not Role.AUDITOR and COUNTS_KEY not in request:
        await _counts(request)
    return aiohttp_jinja2.render_template(
        template, request, page_context(request, **values), status=status
    )


def _audit(request: web.Request, operation: Operation, detail: str, **more: Any) -> Any:
    console = _console(request)
    return asyncio.to_thread(
        console.accounts.audit, operation, actor=user_of(request).username, detail=detail, **more
    )


def _type_title(console: Console, message_type: str) -> str:
    try:
        versions = console.registry.versions(message_type)
        return str(console.registry.schema(message_type, versions[-1]).get("title", message_type))
    except (InvalidMessage, IndexError):
        return message_type


def _agency_label(console: Console) -> Any:
    directory = console.node.resolver
    names: dict[str, str] = {}
    statuses = getattr(directory, "statuses", None)
    countries = {c.code: c.name for c in getattr(directory, "countries", lambda: ())()}
    if statuses is not None:
        for status in statuses():
            names[status.agency_id] = (
                f"{status.name} ({countries.get(status.country, status.country)})"
            )

    def label(agency_id: str) -> str:
        return names.get(agency_id, agency_id)

    return label


def _helpers(console: Console) -> dict[str, Any]:
    titles = {t: _type_title(console, t) for t in console.registry.types()}
    return {
        "type_title": lambda t: titles.get(t, t),
        "agency_label": _agency_label(console),
        "handling_meaning": present.HANDLING,
        "tlp_meaning": present.TLP,
        "purposes": present.PURPOSES,
        "evidence_words": present.EVIDENCE,
        "kinds": present.KINDS,
    }


# ------------------------------------------------------------------- sign in ---


async def login_form(request: web.Request) -> web.Response:
    console = _console(request)
    if request.get(USER_KEY) is not None:
        raise web.HTTPSeeOther("/")
    session = session_of(request)
    cookie = None
    if session is None:
        cookie, session = console.sessions.new(None)
        request[SESSION_KEY] = session
    response = await _render(request, "login.html", error=None, username="")
    if cookie is not None:
        set_cookie(request, response, cookie)
    return response


async def login(request: web.Request) -> web.Response:
    console = _console(request)
    form = await request.post()
    username = str(form.get("username", ""))[:64].strip().lower()
    password = str(form.get("password", ""))[:1024]
    code = str(form.get("code", ""))[:12].strip()
    result = await asyncio.to_thread(console.accounts.sign_in, username, password, code)
    if result.user is None:
        _ = page_context(request)["_"]
        error = (
            _("Too many failed attempts: this account is locked for a while. Ask a supervisor.")
            if result.refused == "locked"
            else _("User name, password or code not accepted.")
        )
        console.log.info("console_sign_in_refused", refused=result.refused)
        return await _render(request, "login.html", status=401, error=error, username=username)
    old = session_of(request)
    if old is not None:
        console.sessions.end(old)  # a new id at sign-in: no session fixation
    cookie, _session = console.sessions.new(result.user.username)
    raise_to = web.HTTPSeeOther("/")  # the start page of the person's role
    set_cookie(request, raise_to, cookie)
    raise raise_to


async def logout(request: web.Request) -> web.Response:
    console = _console(request)
    session = session_of(request)
    await _audit(request, Operation.ACCESS, "signed out")
    if session is not None:
        console.sessions.end(session)
        console.consulted.pop(session.key, None)
    response = web.HTTPSeeOther("/login")
    response.del_cookie("casebridge_console", path="/")
    raise response


async def preferences(request: web.Request) -> web.Response:
    console = _console(request)
    user = user_of(request)
    form = await request.post()
    zone = str(form.get("time_zone", user.time_zone))
    language = str(form.get("language", user.language))
    if language not in LANGUAGES:
        raise web.HTTPBadRequest(text="unknown language")
    try:
        check_zone(zone)
        await asyncio.to_thread(
            console.accounts.set_preferences, user.username, time_zone=zone, language=language
        )
    except AccountError:
        raise web.HTTPBadRequest(text="unknown time zone or language") from None
    session = session_of(request)
    if session is not None:
        console.sessions.set_language(session, language)
    back = str(form.get("back", "/inbox"))
    # Only a path of this console: never "//host" or "/\\host" (browsers read both as a host).
    local = back.startswith("/") and not back.startswith(("//", "/\\")) and "\\" not in back
    raise web.HTTPSeeOther(back if local else "/inbox")


# --------------------------------------------------------------------- lists ---


def _filters(request: web.Request) -> queries.Filters:
    q = request.query
    try:
        page = max(1, min(int(q.get("page", "1")), 100_000))
    except ValueError:
        page = 1
    return queries.Filters(
        type=q.get("type", "")[:64],
        partner=q.get("partner", "")[:64],
        country=q.get("country", "")[:2],
        overdue=q.get("overdue") == "1",
        awaiting=q.get("awaiting") == "1",
        unread=q.get("unread") == "1",
        q=q.get("q", "")[:100],
        page=page,
    )


async def inbox(request: web.Request) -> web.Response:
    return await _list(request, "inbox")


async def outbox(request: web.Request) -> web.Response:
    return await _list(request, "outbox")


async def awaiting(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/inbox?awaiting=1")


async def inbox_rows(request: web.Request) -> web.Response:
    """The inbox list alone (no page around it): console.js swaps it in when counts change."""
    return await _list(request, "inbox", fragment=True)


async def outbox_rows(request: web.Request) -> web.Response:
    return await _list(request, "outbox", fragment=True)


async def _list(request: web.Request, box: str, *, fragment: bool = False) -> web.Response:
    console = _console(request)
    user = user_of(request)
    if user.role is Role.AUDITOR:
        return await forbid(request, f"list the {box}")
    filters = _filters(request)
    today = console.node.today()
    page = queries.inbox_page if box == "inbox" else queries.outbox_page
    rows, total = await asyncio.to_thread(page, console.node.store, filters, today=today)
    partners = await asyncio.to_thread(queries.partners, console.node.store)
    pages = max(1, -(-total // queries.PAGE))
    return await _render(
        request,
        "_list_body.html" if fragment else "list.html",
        rows_link=f"/{box}/rows?" + urlencode(filters.query()),
        box=box,
        rows=rows,
        total=total,
        filters=filters,
        pages=pages,
        today=today,
        partners=partners,
        countries=sorted({agency_country(p) for p in partners}),
        types=[t for t in console.registry.types() if not is_evidence_type(t)],
        link=lambda **changes: f"/{box}?" + urlencode(filters.query(**changes)),
        **_helpers(console),
    )


async def events(request: web.Request) -> web.Response:
    """Counts for the navigation badges and the newest arrival (polled by console.js)."""
    user = user_of(request)
    if user.role is Role.AUDITOR:
        return web.json_response({})
    found = await _counts(request)
    return web.json_response(
        {
            "unread": found.unread,
            "awaiting": found.awaiting,
            "overdue": found.overdue,
            "newest": found.newest,
        }
    )


# ------------------------------------------------------------------- reading ---


async def message(request: web.Request) -> web.Response:
    console = _console(request)
    user = user_of(request)
    message_id = request.match_info["id"][:64]
    if user.role is Role.AUDITOR:
        return await forbid(request, f"read message {message_id}")
    store = console.node.store
    received = await asyncio.to_thread(store.inbox_message, message_id)
    sent = (
        None if received is not None else await asyncio.to_thread(store.outbox_message, message_id)
    )
    if received is None and (sent is None or is_evidence_type(sent.type)):
        raise web.HTTPNotFound(text="no such message")
    header = received.header if received is not None else sent.header  # type: ignore[union-attr]
    session = session_of(request)
    opened = received is None or (
        session is not None and message_id in console.consulted.get(session.key, set())
    )
    body = (received.body if received is not None else sent.body) if opened else {}  # type: ignore[union-attr]
    mtype = str(header["type"])
    marks = await asyncio.to_thread(queries.marks, store, message_id)
    changed: set[str] = set()
    if opened and received is not None:
        # Corrections from the sender are shown applied (and marked); the stored body stays.
        for mark, by_message_id, _reason, _at in marks:
            if mark != "corrected":
                continue
            correction = await asyncio.to_thread(store.inbox_message, by_message_id)
            if correction is not None:
                body, paths = present.apply_corrections(
                    body, list(correction.body.get("corrections", []))
                )
                changed |= paths
    try:
        schema = console.registry.schema(mtype, int(header.get("type_version", 1)))
        doc = present.document(console.walker, schema, body, frozenset(changed)) if opened else []
    except InvalidMessage:
        doc = []
    trail = await asyncio.to_thread(store.evidence_for, message_id)
    consultations = await asyncio.to_thread(store.consultations, message_id) if received else []
    node_files = console_files.files_of(console.node)
    found = await asyncio.to_thread(node_files.files, message_id) if node_files else []
    files = console_files.rows(found, received=received is not None, opened=opened)
    return await _render(
        request,
        "message.html",
        message_id=message_id,
        header=header,
        received=received,
        sent=sent,
        opened=opened,
        doc=doc,
        trail=trail,
        marks=marks,
        consultations=consultations,
        consultation_purposes=present.CONSULTATION_PURPOSES,
        today=console.node.today(),
        error=None,
        files=files,
        file_error=request.query.get("file_error", "")[:64],
        **_helpers(console),
    )


def _justification(form: MultiDictProxy[Any]) -> str:
    """A consultation's purpose from the form (a listed purpose, a detail, or both)."""
    purpose = str(form.get("purpose", "")).strip()[:200]
    detail = str(form.get("detail", "")).strip()[:500]
    if purpose not in present.CONSULTATION_PURPOSES and not detail:
        return ""
    return f"{purpose}: {detail}" if purpose and detail else (purpose or detail)


async def download_file(request: web.Request) -> web.StreamResponse:
    """Download a file of a message with a purpose: for a received message this is a
    consultation of it (logged by the node, ``read`` evidence the first time); for a sent
    one an audit record. Refused while the file is not verified or is quarantined."""
    console = _console(request)
    user = user_of(request)
    message_id = request.match_info["id"][:64]
    attachment_id = request.match_info["attachment"][:64]
    if user.role is Role.AUDITOR:
        return await forbid(request, f"open a file of message {message_id}")
    node_files = console_files.files_of(console.node)
    if node_files is None:
        raise web.HTTPNotFound(text="this node carries no files")
    store = console.node.store
    received = await asyncio.to_thread(store.inbox_message, message_id)
    sent = (
        None if received is not None else await asyncio.to_thread(store.outbox_message, message_id)
    )
    if received is None and sent is None:
        raise web.HTTPNotFound(text="no such message")
    found = await asyncio.to_thread(node_files.files, message_id)
    match = next((f for f in found if f.manifest.id == attachment_id), None)
    if match is None:
        raise web.HTTPNotFound(text="no such file in this message")
    form = await request.post()
    justification = _justification(form)
    back = f"/messages/{message_id}"
    if not justification:
        raise web.HTTPSeeOther(f"{back}?file_error=purpose#file-{attachment_id}")
    if received is not None and not match.openable:
        await _audit(
            request,
            Operation.ACCESS,
            f"refused: open file {attachment_id} ({match.state}, scan {match.scan})",
            message_id=message_id,
            message_type=received.type,
        )
        raise web.HTTPSeeOther(f"{back}?file_error=blocked#file-{attachment_id}")
    if received is not None:
        try:
            await console.node.read(
                message_id,
                actor=user.username,
                justification=f"{justification} (file {attachment_id})",
            )
        except CasebridgeError as exc:
            raise web.HTTPNotFound(text=exc.detail) from None
    else:
        await _audit(
            request,
            Operation.ACCESS,
            f"opened sent file {attachment_id}",
            justification=justification,
            message_id=message_id,
            message_type=sent.type if sent is not None else None,
        )
    return await console_files.stream(request, node_files, match)


async def upload_file(request: web.Request) -> web.StreamResponse:
    """A file added while composing, streamed into the node's upload (console.js)."""
    console = _console(request)
    user = user_of(request)
    if user.role is Role.AUDITOR:
        return await forbid(request, "upload a file")
    return await console_files.upload(
        request, console.node, username=user.username, uploads=console.uploads
    )


async def open_message(request: web.Request) -> web.Response:
    """Open a received message for reading: the purpose is logged and ``read`` evidence sent."""
    console = _console(request)
    user = user_of(request)
    message_id = request.match_info["id"][:64]
    if user.role is Role.AUDITOR:
        return await forbid(request, f"open message {message_id}")
    form = await request.post()
    purpose = str(form.get("purpose", "")).strip()[:200]
    detail = str(form.get("detail", "")).strip()[:500]
    if purpose not in present.CONSULTATION_PURPOSES and not detail:
        raise web.HTTPSeeOther(f"/messages/{message_id}?missing=purpose")
    justification = f"{purpose}: {detail}" if purpose and detail else (purpose or detail)
    try:
        await console.node.read(message_id, actor=user.username, justification=justification)
    except CasebridgeError as exc:
        raise web.HTTPNotFound(text=exc.detail) from None
    session = session_of(request)
    if session is not None:
        if len(console.consulted) > len(console.sessions):
            # sessions that ended by timeout leave their openings behind: drop those
            for key in [k for k in console.consulted if not console.sessions.alive(k)]:
                del console.consulted[key]
        console.consulted.setdefault(session.key, set()).add(message_id)
    raise web.HTTPSeeOther(f"/messages/{message_id}")


async def thread(request: web.Request) -> web.Response:
    console = _console(request)
    user = user_of(request)
    conversation = request.match_info["conversation"][:64]
    if user.role is Role.AUDITOR:
        return await forbid(request, f"read thread {conversation}")
    items = await asyncio.to_thread(
        queries.thread_items, console.node.store, conversation, agency=console.agency
    )
    if not items:
        raise web.HTTPNotFound(text="no such conversation")
    return await _render(
        request, "thread.html", conversation=conversation, items=items, **_helpers(console)
    )


# ------------------------------------------------------------------- compose ---


def _candidates(console: Console) -> list[dict[str, str]]:
    directory = console.node.resolver
    out = []
    agencies = getattr(directory, "agencies", lambda: ())()
    for keys in agencies:
        if keys.agency_id != console.agency and keys.kind != "gateway":
            out.append(
                {
                    "id": keys.agency_id,
                    "name": keys.name,
                    "country": keys.country,
                    "kind": keys.kind,
                }
            )
    return sorted(out, key=lambda a: (a["country"], a["name"]))


def _task_forces(console: Console) -> list[Any]:
    return list(getattr(console.node.resolver, "task_forces", lambda: ())())


def _form_lists(form: MultiDictProxy[Any] | None) -> dict[str, list[str]] | None:
    if form is None:
        return None
    out: dict[str, list[str]] = {}
    for key, value in form.items():
        if (
            isinstance(value, str)
            and (key.startswith("b") or key.startswith("n"))
            and (key[1:2] == "/" or key in ("b", "n"))
        ):
            out.setdefault(key, []).append(value[:20_000])
    return out


async def compose(request: web.Request) -> web.Response:
    console = _console(request)
    user = user_of(request)
    if user.role is Role.AUDITOR:
        return await forbid(request, "compose a message")
    mtype = request.query.get("type", "")
    reply_to = request.query.get("reply_to", "")[:64]
    draft_id = request.query.get("draft", "")[:32]
    forward = request.query.get("forward", "")[:64]
    if forward:
        return await _forward(request, forward)
    if draft_id:
        saved = await asyncio.to_thread(_load_draft, console, user, draft_id)
        if saved is None:
            raise web.HTTPNotFound(text="no such draft of yours")
        saved_type, typed, saved_state = saved
        schema = console.registry.schema(saved_type, console.registry.versions(saved_type)[-1])
        return await _compose_page(
            request,
            build_form(console.walker, schema, typed),
            {**saved_state, "draft_id": draft_id},
            preview=None,
            errors={},
        )
    original = None
    if reply_to:
        original = await asyncio.to_thread(console.node.store.inbox_message, reply_to)
        if original is None:
            raise web.HTTPNotFound(text="no received message to answer")
        mtype = mtype or REPLY_TYPES.get(original.type, "case.update")
    if not mtype:
        types = [
            {
                "type": t,
                "title": _type_title(console, t),
                "description": str(
                    console.registry.schema(t, console.registry.versions(t)[-1]).get(
                        "description", ""
                    )
                ),
            }
            for t in console.registry.types()
            if not is_evidence_type(t) and t not in COMPOSABLE_EXCLUDED
        ]
        drafts = await asyncio.to_thread(_drafts_of, console, user)
        return await _render(
            request, "pick_type.html", types=types, drafts=drafts, **_helpers(console)
        )
    if mtype not in console.registry.types() or is_evidence_type(mtype):
        raise web.HTTPNotFound(text="unknown message type")
    purpose, handling, tlp, due_days = DEFAULTS.get(mtype, ("investigation", "H2", "AMBER", None))
    due = (console.node.now() + timedelta(days=due_days)).date().isoformat() if due_days else ""
    values: dict[str, list[str]] = {}
    schema = console.registry.schema(mtype, console.registry.versions(mtype)[-1])
    if original is not None:
        purpose = str(original.header.get("purpose", purpose))
        handling = str(original.header.get("handling", handling))
        tlp = str(original.header.get("tlp", tlp))
        if "request_id" in schema.get("properties", {}):
            values = fill_from_body(
                build_form(console.walker, schema), {"request_id": original.message_id}
            )
    if due and "due_date" in schema.get("properties", {}):
        values.setdefault("b/due_date", [due])
    root = build_form(console.walker, schema, values or None)
    state = {
        "type": mtype,
        "reply_to": reply_to,
        "to": [original.sender] if original is not None else [],
        "task_force": "",
        "purpose": purpose,
        "legal_basis": str(original.header.get("legal_basis", "")) if original is not None else "",
        "handling": handling,
        "tlp": tlp,
        "due": due,
        "onward": False,
        "confirm_partial": False,
        "draft_id": "",
        "derived_from": "",
        "attachments": [],
    }
    return await _compose_page(request, root, state, preview=None, errors={})


async def _compose_page(
    request: web.Request,
    root: Field,
    state: dict[str, Any],
    *,
    preview: list[dict[str, Any]] | None,
    errors: dict[str, str],
    status: int = 200,
    notice: str = "",
) -> web.Response:
    console = _console(request)
    mtype = state["type"]
    schema = console.registry.schema(mtype, console.registry.versions(mtype)[-1])
    files = await asyncio.to_thread(console_files.staged, console.node, state["attachments"])
    return await _render(
        request,
        "compose.html",
        files=files,
        carries_files=console_files.files_of(console.node) is not None,
        status=status,
        ok=status < 400,
        root=root,
        state=state,
        schema_title=str(schema.get("title", mtype)),
        schema_description=str(schema.get("description", "")),
        candidates=_candidates(console),
        task_forces=_task_forces(console),
        all_purposes=[p for p in PURPOSES if p != "system"],
        handling_codes=HANDLING_CODES,
        tlp_markings=TLP_MARKINGS,
        preview=preview,
        errors=errors,
        notice=notice,
        four_eyes=console.settings.four_eyes.needs_release(
            handling=state["handling"], tlp=state["tlp"], message_type=mtype
        ),
        **_helpers(console),
    )


def _draft(state: Mapping[str, Any], body: Mapping[str, Any], to: tuple[str, ...]) -> Draft:
    return Draft(
        type=state["type"],
        body=body,
        purpose=state["purpose"],
        handling=state["handling"],
        tlp=state["tlp"],
        legal_basis=state["legal_basis"] or None,
        to=to,
        task_force=state["task_force"] or None,
        due=state["due"] or None,
        in_reply_to=state["reply_to"] or None,
        onward_allowed=state["onward"],
        derived_from=state.get("derived_from") or None,
        attachments=tuple(state.get("attachments", ())),
    )


async def _preview(
    console: Console, state: Mapping[str, Any], body: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Per recipient: what pre-flight (the engine of ``casebridge explain``) would decide."""
    recipients: list[str] = list(state["to"])
    if state["task_force"]:
        try:
            members = console.node.resolver.task_force(state["task_force"], now=console.node.now())
            recipients += [m for m in members if m != console.agency and m not in recipients]
        except (CasebridgeError, AttributeError):
            pass
    if not recipients and state["reply_to"]:
        original = await asyncio.to_thread(console.node.store.inbox_message, state["reply_to"])
        recipients = [original.sender] if original is not None else []
    out = []
    own = agency_country(console.agency)
    held = console.peer_policies()
    for agency in recipients:
        draft = _draft({**state, "task_force": ""}, body, (agency,))
        try:
            decision = await asyncio.to_thread(console.node.explain, draft)
        except CasebridgeError as exc:
            decision = {"allowed": False, "rule_id": exc.reason.value, "reason": exc.detail}
        peer = held.get(agency_country(agency))
        out.append(policies.preview_row(agency, decision, own_country=own, peer_policy=peer))
    return out


def _state_from(form: MultiDictProxy[Any], mtype: str) -> dict[str, Any]:
    def one(name: str, default: str = "", limit: int = 500) -> str:
        value = form.get(name, default)
        return str(value)[:limit].strip() if isinstance(value, str) else default

    return {
        "type": mtype,
        "reply_to": one("reply_to", limit=64),
        "to": [str(v)[:64] for v in form.getall("to", []) if isinstance(v, str)][:200],
        "task_force": one("task_force", limit=64),
        "purpose": one("purpose", "investigation", 64),
        "legal_basis": one("legal_basis"),
        "handling": one("handling", "H2", 4),
        "tlp": one("tlp", "AMBER", 16),
        "due": one("due", limit=10),
        "onward": form.get("onward") == "yes",
        "confirm_partial": form.get("confirm_partial") == "yes",
        "draft_id": one("draft_id", limit=32),
        "derived_from": one("derived_from", limit=64),
        "attachments": [str(v)[:64] for v in form.getall("attachment", []) if isinstance(v, str)][
            :64
        ],
    }


def _own_files(console: Console, user: User, state: dict[str, Any]) -> dict[str, Any]:
    """Keep only the file handles this person uploaded (a form can carry any string)."""
    state["attachments"] = console.uploads.owned(user.username, state["attachments"])
    return state


async def compose_post(request: web.Request) -> web.Response:
    console = _console(request)
    user = user_of(request)
    if user.role is Role.AUDITOR:
        return await forbid(request, "send a message")
    form = await request.post()
    mtype = str(form.get("type", ""))
    if mtype not in console.registry.types() or is_evidence_type(mtype):
        raise web.HTTPBadRequest(text="unknown message type")
    op = str(form.get("op", "preview"))
    schema = console.registry.schema(mtype, console.registry.versions(mtype)[-1])
    state = _own_files(console, user, _state_from(form, mtype))
    root = build_form(console.walker, schema, _form_lists(form), ops=[op])
    if op.startswith("detach:"):
        state["attachments"] = [h for h in state["attachments"] if h != op[len("detach:") :]]
        return await _compose_page(request, root, state, preview=None, errors={})
    if op.startswith(("add:", "remove:")):
        return await _compose_page(request, root, state, preview=None, errors={})
    if op == "save":
        state["draft_id"] = await asyncio.to_thread(
            _save_draft, console, user, mtype, _form_lists(form) or {}, state
        )
        _ = page_context(request)["_"]
        return await _compose_page(
            request, root, state, preview=None, errors={}, notice=_("Draft saved.")
        )
    body = parse_body(root, console.walker, schema)
    errors: dict[str, str] = {}
    _ = page_context(request)["_"]
    schema_errors: list[Any] = []
    try:
        console.registry.validate(mtype, console.registry.versions(mtype)[-1], body)
    except SchemaInvalid as exc:
        schema_errors = list(exc.errors)
    invalid = attach_errors(root, schema_errors)
    if not state["legal_basis"] and not state["reply_to"]:
        errors["legal_basis"] = _("State the legal basis.")
    if not state["to"] and not state["task_force"] and not state["reply_to"]:
        errors["to"] = _("Choose at least one recipient.")
    if (
        state["purpose"] not in PURPOSES
        or state["handling"] not in HANDLING_CODES
        or state["tlp"] not in TLP_MARKINGS
    ):
        errors["markings"] = _("Choose a purpose, handling code and TLP marking from the lists.")
    if invalid or errors:
        return await _compose_page(
            request,
            root,
            state,
            preview=None,
            errors=errors,
            status=422,
            notice=_("Some fields need your attention."),
        )
    preview = await _preview(console, state, body)
    if op != "send":
        return await _compose_page(request, root, state, preview=preview, errors={})
    allowed = tuple(p["agency"] for p in preview if p["allowed"])
    denied = [p for p in preview if not p["allowed"]]
    if not allowed:
        return await _compose_page(
            request,
            root,
            state,
            preview=preview,
            status=422,
            errors={"to": _("Policy allows none of the chosen recipients.")},
        )
    if denied and not state["confirm_partial"]:
        return await _compose_page(
            request,
            root,
            state,
            preview=preview,
            status=422,
            errors={
                "confirm_partial": _(
                    "Some recipients are denied. Confirm that you send to the allowed ones only."
                )
            },
        )
    draft = _draft({**state, "task_force": ""}, body, allowed)
    if state["draft_id"]:
        await asyncio.to_thread(_drop_draft, console, user, state["draft_id"])
    if console.settings.four_eyes.needs_release(
        handling=draft.handling, tlp=draft.tlp, message_type=mtype
    ):
        release_id = await asyncio.to_thread(_hold_for_release, console, user, draft)
        console.uploads.forget(draft.attachments)
        raise web.HTTPSeeOther(f"/releases?held={release_id}")
    try:
        result = await console.node.send(draft, actor=user.username)
    except PolicyDenied as exc:
        return await _compose_page(
            request, root, state, preview=preview, status=422, errors={"to": exc.detail}
        )
    except CasebridgeError as exc:
        return await _compose_page(
            request, root, state, preview=preview, status=422, errors={"send": exc.detail}
        )
    console.uploads.forget(draft.attachments)
    raise web.HTTPSeeOther(f"/messages/{result.message_id}?sent=1")


async def compose_preview(request: web.Request) -> web.Response:
    """The policy preview alone (console.js asks for it as the person types)."""
    console = _console(request)
    user = user_of(request)
    if user.role is Role.AUDITOR:
        return await forbid(request, "preview a message")
    form = await request.post()
    mtype = str(form.get("type", ""))
    if mtype not in console.registry.types() or is_evidence_type(mtype):
        raise web.HTTPBadRequest(text="unknown message type")
    schema = console.registry.schema(mtype, console.registry.versions(mtype)[-1])
    state = _own_files(console, user, _state_from(form, mtype))
    root = build_form(console.walker, schema, _form_lists(form))
    body = parse_body(root, console.walker, schema)
    preview = await _preview(console, state, body)
    return await _render(request, "preview.html", preview=preview, **_helpers(console))


async def _forward(request: web.Request, message_id: str) -> web.Response:
    """Pass a received message on: refused with the reason when its sender did not allow
    onward transfer; otherwise the form comes filled, marked ``derived_from`` (so the policy
    preview applies the sender's onward marking per country, and corrections follow)."""
    console = _console(request)
    original = await asyncio.to_thread(console.node.store.inbox_message, message_id)
    if original is None:
        raise web.HTTPNotFound(text="no received message to forward")
    onward = original.header.get("onward") or {}
    if not onward.get("allowed", False):
        _ = page_context(request)["_"]
        await _audit(
            request,
            Operation.ACCESS,
            "refused: forward a message marked for no onward transfer",
            message_id=message_id,
            message_type=original.type,
        )
        return await _render(
            request,
            "error.html",
            status=403,
            title="403",
            message=_(
                "The sender marked this message for no onward transfer: it cannot be "
                "forwarded. Ask the sender if the case needs it elsewhere."
            ),
        )
    schema = console.registry.schema(original.type, int(original.header.get("type_version", 1)))
    values = fill_from_body(build_form(console.walker, schema), original.body)
    state = {
        "type": original.type,
        "reply_to": "",
        "to": [],
        "task_force": "",
        "purpose": str(original.header.get("purpose", "investigation")),
        "legal_basis": str(original.header.get("legal_basis", "")),
        "handling": str(original.header.get("handling", "H2")),
        "tlp": str(original.header.get("tlp", "AMBER")),
        "due": "",
        "onward": False,
        "confirm_partial": False,
        "draft_id": "",
        "derived_from": message_id,
        "attachments": [],
    }
    root = build_form(console.walker, schema, values)
    return await _compose_page(request, root, state, preview=None, errors={})


# -------------------------------------------------------------------- drafts ---

_STATE_KEYS: Final = (
    "reply_to",
    "to",
    "task_force",
    "purpose",
    "legal_basis",
    "handling",
    "tlp",
    "due",
    "onward",
    "derived_from",
    "attachments",
)


def _save_draft(
    console: Console, user: User, mtype: str, values: dict[str, list[str]], state: dict[str, Any]
) -> str:
    """Keep what the person typed (their own drafts only); returns the draft's id."""
    draft_id = state["draft_id"] or secrets.token_hex(8)
    document = json.dumps({"values": values, "state": {k: state[k] for k in _STATE_KEYS}})
    now = iso(console.node.now())
    with console.node.store.transaction() as db:
        db.execute(
            "INSERT INTO console_drafts (id, author, type, form, updated_at) "
            "VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET form = excluded.form, updated_at = excluded.updated_at "
            "WHERE console_drafts.author = excluded.author",
            (draft_id, user.username, mtype, document, now),
        )
    return draft_id


def _load_draft(
    console: Console, user: User, draft_id: str
) -> tuple[str, dict[str, list[str]], dict[str, Any]] | None:
    row = console.node.store.query(
        lambda db: db.execute(
            "SELECT type, form FROM console_drafts WHERE id = ? AND author = ?",
            (draft_id, user.username),
        ).fetchone()
    )
    if row is None:
        return None
    document = json.loads(row[1])
    state = {
        "derived_from": "",
        "attachments": [],
        **document["state"],
        "type": row[0],
        "confirm_partial": False,
    }
    # The author's own uploads, saved with the draft: theirs again after a restart.
    for handle in state["attachments"]:
        console.uploads.add(user.username, str(handle))
    return row[0], document["values"], state


def _drop_draft(console: Console, user: User, draft_id: str) -> None:
    with console.node.store.transaction() as db:
        db.execute(
            "DELETE FROM console_drafts WHERE id = ? AND author = ?", (draft_id, user.username)
        )


def _drafts_of(console: Console, user: User) -> list[tuple[str, str, str]]:
    return console.node.store.query(
        lambda db: [
            (r[0], r[1], r[2])
            for r in db.execute(
                "SELECT id, type, updated_at FROM console_drafts WHERE author = ? "
                "ORDER BY updated_at DESC LIMIT 100",
                (user.username,),
            ).fetchall()
        ]
    )


# ----------------------------------------------------------- four-eyes release ---


def _hold_for_release(console: Console, user: User, draft: Draft) -> str:
    release_id = secrets.token_hex(8)
    now = console.node.now()
    raw = {
        "type": draft.type,
        "body": dict(draft.body),
        "purpose": draft.purpose,
        "handling": draft.handling,
        "tlp": draft.tlp,
        "legal_basis": draft.legal_basis,
        "to": list(draft.to),
        "due": draft.due,
        "in_reply_to": draft.in_reply_to,
        "onward_allowed": draft.onward_allowed,
        "derived_from": draft.derived_from,
        "attachments": list(draft.attachments),
    }
    summary = f"{draft.type} {draft.handling} TLP:{draft.tlp} to {', '.join(draft.to)}"
    entry = console.accounts.audit_entry(
        Operation.ADMINISTRATION,
        actor=user.username,
        detail=f"held for four-eyes release {release_id}: {summary}",
        message_type=draft.type,
    )
    from broker.node import audit_log  # noqa: PLC0415

    with console.node.store.transaction() as db:
        db.execute(
            "INSERT INTO console_releases (id, author, draft, summary, state, created_at) "
            "VALUES (?, ?, ?, ?, 'waiting', ?)",
            (release_id, user.username, json.dumps(raw), summary, iso(now)),
        )
        audit_log.append(db, [entry], now=now)
    return release_id


def _releases(console: Console) -> list[dict[str, Any]]:
    return console.node.store.query(
        lambda db: [
            dict(
                zip(
                    (
                        "id",
                        "author",
                        "summary",
                        "state",
                        "decided_by",
                        "message_id",
                        "created_at",
                        "decided_at",
                        "draft",
                    ),
                    r,
                    strict=True,
                )
            )
            for r in db.execute(
                "SELECT id, author, summary, state, decided_by, message_id, created_at, "
                "decided_at, draft "
                "FROM console_releases ORDER BY created_at DESC LIMIT 200"
            ).fetchall()
        ]
    )


def _claim_release(console: Console, release_id: str, username: str) -> bool:
    with console.node.store.transaction() as db:
        return (
            db.execute(
                "UPDATE console_releases SET state = 'deciding', decided_by = ? "
                "WHERE id = ? AND state = 'waiting'",
                (username, release_id),
            ).rowcount
            == 1
        )


def _unclaim_release(console: Console, release_id: str) -> None:
    with console.node.store.transaction() as db:
        db.execute(
            "UPDATE console_releases SET state = 'waiting', decided_by = NULL "
            "WHERE id = ? AND state = 'deciding'",
            (release_id,),
        )


async def releases(request: web.Request) -> web.Response:
    console = _console(request)
    user = user_of(request)
    if user.role is Role.AUDITOR:
        return await forbid(request, "see releases")
    items = await asyncio.to_thread(_releases, console)
    for item in items:
        item["draft"] = json.loads(item["draft"])
    return await _render(
        request,
        "releases.html",
        items=items,
        held=request.query.get("held", ""),
        **_helpers(console),
    )


async def decide_release(request: web.Request) -> web.Response:
    console = _console(request)
    user = user_of(request)
    release_id = request.match_info["id"][:32]
    decision = request.match_info["decision"]
    if user.role is not Role.SUPERVISOR:
        return await forbid(request, f"{decision} four-eyes message {release_id}")
    items = {i["id"]: i for i in await asyncio.to_thread(_releases, console)}
    item = items.get(release_id)
    if item is None or item["state"] != "waiting":
        raise web.HTTPNotFound(text="nothing waits under this id")
    if item["author"] == user.username:
        return await forbid(
            request, f"{decision} own message {release_id} (four eyes means two people)"
        )
    raw = json.loads(item["draft"])
    message_id = None
    # Claim it first (one supervisor wins; a second click or a second supervisor finds it
    # taken), so that a message is never sent twice.
    claimed = await asyncio.to_thread(_claim_release, console, release_id, user.username)
    if not claimed:
        raise web.HTTPConflict(text="another supervisor is deciding this message")
    if decision == "release":
        draft = Draft(
            type=raw["type"],
            body=raw["body"],
            purpose=raw["purpose"],
            handling=raw["handling"],
            tlp=raw["tlp"],
            legal_basis=raw["legal_basis"],
            to=tuple(raw["to"]),
            due=raw["due"],
            in_reply_to=raw["in_reply_to"],
            onward_allowed=raw["onward_allowed"],
            derived_from=raw.get("derived_from"),
            attachments=tuple(raw.get("attachments", ())),
        )
        try:
            result = await console.node.send(draft, actor=item["author"])
        except CasebridgeError as exc:
            await asyncio.to_thread(_unclaim_release, console, release_id)
            await _audit(
                request, Operation.ADMINISTRATION, f"release {release_id} failed: {exc.detail}"
            )
            return await _render(request, "error.html", status=422, title="422", message=exc.detail)
        message_id = result.message_id
    now = console.node.now()
    entry = console.accounts.audit_entry(
        Operation.ADMINISTRATION,
        actor=user.username,
        detail=f"four-eyes {'released' if decision == 'release' else 'refused'} {release_id} "
        f"by {user.username} (author {item['author']})",
        message_id=message_id,
        message_type=raw["type"],
    )

    def record() -> None:
        from broker.node import audit_log  # noqa: PLC0415

        with console.node.store.transaction() as db:
            db.execute(
                "UPDATE console_releases SET state = ?, decided_by = ?, message_id = ?, "
                "decided_at = ? WHERE id = ?",
                (
                    "released" if decision == "release" else "refused",
                    user.username,
                    message_id,
                    iso(now),
                    release_id,
                ),
            )
            audit_log.append(db, [entry], now=now)

    await asyncio.to_thread(record)
    raise web.HTTPSeeOther(f"/messages/{message_id}" if message_id else "/releases")


# --------------------------------------------------------- directory, stats ---


async def directory(request: web.Request) -> web.Response:
    console = _console(request)
    resolver = console.node.resolver
    statuses = list(getattr(resolver, "statuses", lambda: ())())
    countries = list(getattr(resolver, "countries", lambda: ())())
    titles = _helpers(console)["type_title"]
    published = {
        code: (
            p.version,
            policies.rules_in_words(
                p,
                type_title=titles,
                kind=lambda k: present.KINDS.get(k, k),
                purpose=lambda k: present.PURPOSES.get(k, k),
            ),
        )
        for code, p in console.peer_policies().items()
    }
    return await _render(
        request,
        "directory.html",
        statuses=statuses,
        countries=countries,
        published=published,
        own_country=agency_country(console.agency),
        task_forces=_task_forces(console),
        **_helpers(console),
    )


def _period(request: web.Request, console: Console) -> tuple[str, str]:
    today = console.node.now().date()
    try:
        since = datetime.fromisoformat(request.query.get("from", "")).date()
    except ValueError:
        since = today - timedelta(days=90)
    try:
        until = datetime.fromisoformat(request.query.get("to", "")).date()
    except ValueError:
        until = today
    return since.isoformat(), until.isoformat()


async def scorecard_page(request: web.Request) -> web.Response:
    console = _console(request)
    since, until = _period(request, console)
    end = (datetime.fromisoformat(until) + timedelta(days=1)).date().isoformat()
    agencies, countries = await asyncio.to_thread(
        scorecard.compute, console.node.store, since=since, until=end, today=console.node.today()
    )
    label = _agency_label(console)
    charts = {
        s.partner: scorecard.chart(s, title=f"Messages by type with {label(s.partner)}")
        for s in agencies
    }
    return await _render(
        request,
        "scorecard.html",
        agencies=agencies,
        countries=countries,
        since=since,
        until=until,
        charts=charts,
        **_helpers(console),
    )


async def scorecard_csv(request: web.Request) -> web.Response:
    console = _console(request)
    since, until = _period(request, console)
    end = (datetime.fromisoformat(until) + timedelta(days=1)).date().isoformat()
    agencies, countries = await asyncio.to_thread(
        scorecard.compute, console.node.store, since=since, until=end, today=console.node.today()
    )
    await _audit(request, Operation.ACCESS, f"scorecard exported {since}..{until}")
    return web.Response(
        text=scorecard.to_csv([*agencies, *countries]),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="scorecard-{since}-{until}.csv"'},
    )


async def audit_page(request: web.Request) -> web.Response:
    console = _console(request)
    user = user_of(request)
    if user.role is Role.OFFICER:
        return await forbid(request, "read the audit log")
    try:
        page = max(1, int(request.query.get("page", "1")))
    except ValueError:
        page = 1
    actor = request.query.get("actor", "")[:64]
    records, total = await asyncio.to_thread(
        queries.audit_page, console.node.store, page=page, actor=actor
    )
    return await _render(
        request,
        "audit.html",
        records=records,
        total=total,
        page=page,
        actor=actor,
        pages=max(1, -(-total // queries.PAGE)),
    )


async def people(request: web.Request) -> web.Response:
    """Accounts of this node (supervisors: change roles, disable, enable/unlock)."""
    console = _console(request)
    user = user_of(request)
    if user.role is not Role.SUPERVISOR:
        return await forbid(request, "see the accounts")
    accounts = await asyncio.to_thread(console.accounts.all)
    return await _render(request, "people.html", accounts=accounts, roles=list(Role))


async def change_person(request: web.Request) -> web.Response:
    """A supervisor changes a role or disables/enables an account (audited under them)."""
    console = _console(request)
    user = user_of(request)
    username = request.match_info["username"][:64]
    action = request.match_info["action"]
    if user.role is not Role.SUPERVISOR:
        return await forbid(request, f"{action} account {username}")
    if username == user.username:
        return await forbid(request, f"{action} own account")
    form = await request.post()
    try:
        if action == "role":
            role = Role(str(form.get("role", "")))
            await asyncio.to_thread(console.accounts.set_role, username, role, by=user.username)
        elif action == "disable":
            await asyncio.to_thread(console.accounts.disable, username, by=user.username)
            console.sessions.end_all(username)
        else:
            await asyncio.to_thread(console.accounts.enable, username, by=user.username)
    except (ValueError, AccountError) as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    raise web.HTTPSeeOther("/people")


async def home(request: web.Request) -> web.Response:
    user = user_of(request)
    raise web.HTTPSeeOther("/audit" if user.role is Role.AUDITOR else "/inbox")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", home)
    r.add_get("/healthz", healthz)
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_post("/preferences", preferences)
    r.add_get("/inbox", inbox)
    r.add_get("/outbox", outbox)
    r.add_get("/inbox/rows", inbox_rows)
    r.add_get("/outbox/rows", outbox_rows)
    r.add_get("/awaiting", awaiting)
    r.add_get("/events", events)
    r.add_get("/messages/{id}", message)
    r.add_post("/messages/{id}/open", open_message)
    r.add_post("/messages/{id}/files/{attachment}", download_file)
    r.add_post("/compose/files", upload_file)
    r.add_get("/threads/{conversation}", thread)
    r.add_get("/compose", compose)
    r.add_post("/compose", compose_post)
    r.add_post("/compose/preview", compose_preview)
    r.add_get("/releases", releases)
    r.add_post("/releases/{id}/{decision:release|refuse}", decide_release)
    r.add_get("/directory", directory)
    r.add_get("/scorecard", scorecard_page)
    r.add_get("/scorecard.csv", scorecard_csv)
    r.add_get("/audit", audit_page)
    r.add_get("/people", people)
    r.add_post("/people/{username}/{action:role|disable|enable}", change_person)


__all__ = ["add_routes", "replace"]
