"""The node's local HTTP API (aiohttp): submit, inbox, outbox, messages, evidence, threads.

What it is for
    Case workers' tools (the ``casebridge`` focal-point CLI, scripts, a case system) talk to
    their own node over loopback. Every route except ``/healthz`` and ``/readyz`` needs the
    node's API token (``Authorization: Bearer <token>``); ``/metrics`` (Prometheus text, when
    the app is given a registry) is open like the probes: it holds counts, never content.
    Errors are JSON
    ``{"error": {"reason", "detail", "rule_id"?, "errors"?}}`` with the status of the error
    tree. The routes are described in ``docs/openapi.yaml`` and ``docs/node-api.md``.

The edge
    Whatever a client sends, the answer is a JSON document: undecodable input (a body that is
    not UTF-8 JSON, lone surrogate escapes, an ``X-Actor`` outside its syntax, a justification
    that is not UTF-8) is ``400 bad_request``; a body over the limit ``413 too_large``; a body
    that does not arrive within the body timeout (a false ``Content-Length``, a client that
    stops sending) ``408`` and the connection is closed; a 503 carries ``Retry-After``; any
    unexpected exception is ``500 internal_error`` with an ``api_internal_error`` log event.
    (Malformed HTTP framing, e.g. a control character in a header, is refused with a 400 by
    aiohttp's parser before any handler runs.)

What it must never do
    Hold state outside the app (no globals: the node comes from a ``cleanup_ctx`` and lives
    under :data:`NODE_KEY`), show a received message's content without a justification (that
    opening is logged and produces ``read`` evidence), or put message content in logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from broker.core import canonical
from broker.errors import CasebridgeError, PolicyDenied, Reason, SchemaInvalid
from broker.metrics import REGISTRY_KEY, NodeMetrics, metrics_response
from broker.node import api_integrations, attachment_api, corrections
from broker.node.api_parsing import (
    BODY_TIMEOUT_KEY,
    DEFAULT_BODY_TIMEOUT,
    MAX_BODY,
)
from broker.node.api_parsing import actor as _actor
from broker.node.api_parsing import json_body as _json_body
from broker.node.api_parsing import message_id as _id
from broker.node.errors import (
    BadRequest,
    InternalError,
    NodeError,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
)
from broker.node.model import Draft, OutboxState
from broker.node.service import Node

NODE_KEY: Final = web.AppKey("node", Node)
TOKEN_KEY: Final = web.AppKey("token", str)
PUBLIC_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})
METRICS_KEY: Final = web.AppKey("node_metrics", NodeMetrics)
MAX_LIMIT: Final = 1000
DEFAULT_ACTOR: Final = "api"
# For the server (``web.AppRunner(app, **SERVER_OPTIONS)``): a connection that has not
# completed a request's headers within this many seconds is closed (aiohttp's default is an
# hour).
SERVER_OPTIONS: Final[Mapping[str, Any]] = {"keepalive_timeout": 15.0}
DEFAULT_RETRY_AFTER: Final = 10
# Idempotency-Key: 1-255 printable ASCII characters.
IDEMPOTENCY_KEY_PATTERN: Final = re.compile(r"[\x20-\x7e]{1,255}")
MAX_JUSTIFICATION: Final = 2000
# C0 and C1 control characters (and DEL): never in a justification.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
log = structlog.get_logger("casebridge.node.api")
_DRAFT_FIELDS: Final = frozenset(
    {
        "to",
        "type",
        "type_version",
        "purpose",
        "handling",
        "tlp",
        "legal_basis",
        "body",
        "due",
        "in_reply_to",
        "task_force",
        "categories",
        "onward_allowed",
        "onward_exclude",
        "derived_from",
        "attachments",
    }
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NodeContext = Callable[[], AbstractAsyncContextManager[Node]]


def error_json(exc: CasebridgeError) -> dict[str, Any]:
    """The API's error document for any Casebridge or node error."""
    error: dict[str, Any] = {"reason": exc.reason.value, "detail": exc.detail}
    if isinstance(exc, PolicyDenied):
        error["rule_id"] = exc.rule_id
    if isinstance(exc, SchemaInvalid):
        error["errors"] = [
            {"path": e.path, "validator": e.validator, "message": e.message} for e in exc.errors
        ]
    return {"error": error}


def _error_response(exc: CasebridgeError) -> web.Response:
    headers = {}
    if exc.http_status == 503:
        retry = exc.retry_after if isinstance(exc, NodeError) else None
        headers["Retry-After"] = str(retry or DEFAULT_RETRY_AFTER)
    return web.json_response(error_json(exc), status=exc.http_status, headers=headers)


async def _answer_and_close(request: web.Request, exc: CasebridgeError) -> web.StreamResponse:
    """Answer, then close the connection at once: the rest of the body is never read (aiohttp
    would otherwise linger reading it), so this connection cannot carry another request."""
    response = _error_response(exc)
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the transport flushes the answer, then closes
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer is JSON: Casebridge errors keep their status, aiohttp's HTTP errors
    become error documents, anything unexpected is a logged ``500 internal_error``."""
    try:
        return await handler(request)
    except (RequestTimeout, PayloadTooLarge) as exc:
        return await _answer_and_close(request, exc)
    except CasebridgeError as exc:
        return _error_response(exc)
    except web.HTTPNotFound:
        return _error_response(NotFound(f"no route {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as exc:
        # 405 with Allow (RFC 9110), still an error document with reason bad_request.
        refused = _error_response(BadRequest(f"{request.method} is not allowed on {request.path}"))
        refused.set_status(405)
        refused.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return refused
    except web.HTTPRequestEntityTooLarge:
        too_large = PayloadTooLarge(f"the request body exceeds {MAX_BODY} bytes")
        return await _answer_and_close(request, too_large)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are answers, not errors
        reason = Reason.BAD_REQUEST if exc.status < 500 else Reason.INTERNAL_ERROR
        document = {"error": {"reason": reason.value, "detail": exc.reason}}
        return web.json_response(document, status=exc.status)
    except UnicodeError:
        # Text that is not Unicode got past a check: still the client's input, never a 500.
        return _error_response(BadRequest("the request holds text that is not valid Unicode"))
    except Exception as exc:
        log.exception(
            "api_internal_error",
            method=request.method,
            route=_route(request),
            error=type(exc).__name__,
        )
        return _error_response(
            InternalError("unexpected fault in the node (logged as api_internal_error)")
        )


def _route(request: web.Request) -> str:
    """The route template (``/v1/messages/{id}``), never the path: ids are not labels."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in PUBLIC_PATHS:
        # The settings token (built-in client ``node``) or a registered client with the
        # route's scope; refusals are audited (broker.node.api_integrations).
        await api_integrations.authenticate(
            request, node=request.app[NODE_KEY], settings_token=request.app[TOKEN_KEY]
        )
    return await handler(request)


@web.middleware
async def _measure(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS_KEY]
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        route = _route(request)
        metrics.http_requests.labels(route=route, method=request.method, status=str(status)).inc()
        metrics.http_seconds.labels(route=route).observe(time.perf_counter() - started)


async def _metrics(request: web.Request) -> web.Response:
    return await metrics_response(request.app[REGISTRY_KEY])


def create_app(
    node_context: NodeContext,
    *,
    token: str,
    registry: CollectorRegistry | None = None,
    metrics: NodeMetrics | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> web.Application:
    """The API application. ``node_context`` builds the node (and its background tasks) on
    start-up and tears it down on clean-up; ``token`` is the node's API bearer token.
    ``registry``: serve it on ``GET /metrics``; ``metrics``: count requests by route;
    ``body_timeout``: seconds a client has to send a request body."""
    if len(token) < 16:
        raise BadRequest("the API token must be at least 16 characters")
    middlewares: list[Any] = [_errors, _auth]
    if metrics is not None:
        middlewares.insert(0, _measure)
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[TOKEN_KEY] = token
    app[BODY_TIMEOUT_KEY] = body_timeout
    if metrics is not None:
        app[METRICS_KEY] = metrics
    if registry is not None:
        app[REGISTRY_KEY] = registry
        app.router.add_get("/metrics", _metrics)

    async def node_lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with node_context() as node:
            app[NODE_KEY] = node
            yield

    app.cleanup_ctx.append(node_lifecycle)
    api_integrations.setup(app, NODE_KEY, metrics=metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_post("/v1/messages", _submit)
    app.router.add_post("/v1/explain", _explain)
    app.router.add_get("/v1/inbox", _inbox)
    app.router.add_get("/v1/outbox", _outbox)
    app.router.add_get("/v1/rejections", _rejections)
    app.router.add_get("/v1/messages/{id}", _message)
    app.router.add_get("/v1/messages/{id}/evidence", _evidence)
    app.router.add_get("/v1/threads/{conversation}", _thread)
    app.router.add_post("/v1/messages/{id}/correction", _notice)
    app.router.add_post("/v1/messages/{id}/withdrawal", _notice)
    app.router.add_post("/v1/attachments", _attachment_upload)
    app.router.add_get("/v1/messages/{id}/attachments", _attachment_list)
    app.router.add_get("/v1/messages/{id}/attachments/{attachment}", _attachment_get)
    app.router.add_get("/v1/quarantine", _quarantine)
    app.router.add_post("/v1/quarantine/{id}/retry", _quarantine_retry)
    app.router.add_delete("/v1/quarantine/{id}", _quarantine_drop)
    return app


# ------------------------------------------------------------------ parsing ---


def _justification(request: web.Request) -> str:
    """``X-Justification`` or the ``justification`` query parameter, as strict UTF-8 text:
    bytes that are not UTF-8 are refused, never stored as replacement characters."""
    value = request.headers.get("X-Justification")
    try:
        if value:
            value.encode("utf-8")  # undecodable header bytes arrive as lone surrogates
        else:
            # aiohttp decodes the query leniently (U+FFFD for bad bytes): decode it here.
            pairs = urllib.parse.parse_qsl(
                request.rel_url.raw_query_string, encoding="utf-8", errors="strict"
            )
            value = next((v for k, v in reversed(pairs) if k == "justification"), "")
    except UnicodeError:
        raise BadRequest("the justification is not valid UTF-8 text") from None
    if len(value) > MAX_JUSTIFICATION or _CONTROL.search(value):
        raise BadRequest(
            f"the justification must be at most {MAX_JUSTIFICATION} characters "
            "without control characters"
        )
    return value


def _str(raw: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = raw.get(name)
    if value is None:
        if required:
            raise BadRequest(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def _str_list(raw: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = raw.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{name} must be a string or a list of strings")
    return tuple(value)


def parse_draft(raw: Mapping[str, Any]) -> Draft:
    """A :class:`Draft` from the JSON of ``POST /v1/messages`` (unknown members refused)."""
    unknown = sorted(set(raw) - _DRAFT_FIELDS)
    if unknown:
        raise BadRequest(f"unknown members {unknown}")
    body = raw.get("body")
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    type_version = raw.get("type_version", 1)
    if not isinstance(type_version, int) or isinstance(type_version, bool):
        raise BadRequest("type_version must be an integer")
    onward = raw.get("onward_allowed", False)
    if not isinstance(onward, bool):
        raise BadRequest("onward_allowed must be a boolean")
    return Draft(
        type=_str(raw, "type", required=True) or "",
        body=body,
        purpose=_str(raw, "purpose", required=True) or "",
        handling=_str(raw, "handling", required=True) or "",
        tlp=_str(raw, "tlp") or "AMBER",
        legal_basis=_str(raw, "legal_basis"),
        to=_str_list(raw, "to"),
        task_force=_str(raw, "task_force"),
        type_version=type_version,
        due=_str(raw, "due"),
        in_reply_to=_str(raw, "in_reply_to"),
        categories=_str_list(raw, "categories"),
        onward_allowed=onward,
        onward_exclude=_str_list(raw, "onward_exclude"),
        derived_from=_str(raw, "derived_from"),
        attachments=_str_list(raw, "attachments"),
    )


_TRUE: Final = frozenset({"1", "true", "yes"})
_FALSE: Final = frozenset({"0", "false", "no"})


def _flag(request: web.Request, name: str) -> bool:
    """A boolean query flag; absent is false. Anything else than these words is a 400, never
    silently false (``unread=null`` must not list every message as if asked for all)."""
    text = request.query.get(name)
    if text is None:
        return False
    if text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    raise BadRequest(f"{name} must be true or false (or 1 or 0)")


def _conversation(request: web.Request) -> str | None:
    text = request.query.get("conversation")
    if text is not None and not _UUID.fullmatch(text):
        raise BadRequest("conversation must be a UUID")
    return text


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", "100")
    if not text.isdigit() or not 0 < int(text) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


# ------------------------------------------------------------------- routes ---


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    # A thread: readiness may probe the store with a write.
    ready, why = await asyncio.to_thread(request.app[NODE_KEY].ready)
    document = {"status": "ready" if ready else "not_ready", "detail": why}
    if why.startswith(f"{Reason.STORAGE_UNAVAILABLE.value}:"):
        document["reason"] = Reason.STORAGE_UNAVAILABLE.value
    headers = {} if ready else {"Retry-After": str(DEFAULT_RETRY_AFTER)}
    return web.json_response(document, status=200 if ready else 503, headers=headers)


async def _submit(request: web.Request) -> web.Response:
    raw = await _json_body(request)
    draft = parse_draft(raw)
    key = request.headers.get("Idempotency-Key")
    idempotency = None
    actor = _actor(request)
    if key is not None:
        if IDEMPOTENCY_KEY_PATTERN.fullmatch(key) is None:
            raise BadRequest("Idempotency-Key must be 1-255 printable ASCII characters")
        digest = hashlib.sha256(canonical.dumps(raw)).hexdigest()
        idempotency = (key, digest)
    result = await request.app[NODE_KEY].send(draft, idempotency=idempotency, actor=actor)
    status = 201 if result.state is OutboxState.ACKNOWLEDGED else 202
    return web.json_response(result.to_json(), status=status)


async def _explain(request: web.Request) -> web.Response:
    draft = parse_draft(await _json_body(request))
    return web.json_response(request.app[NODE_KEY].explain(draft))


async def _inbox(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    today = node.today()
    messages = node.store.list_inbox(
        unread=_flag(request, "unread"),
        overdue_before=today if _flag(request, "overdue") else None,
        conversation=_conversation(request),
        limit=_limit(request),
    )
    return web.json_response(
        {"messages": [m.to_json(today=today, with_body=False) for m in messages]}
    )


async def _outbox(request: web.Request) -> web.Response:
    messages = request.app[NODE_KEY].store.list_outbox(
        include_evidence=_flag(request, "evidence"),
        pending_only=_flag(request, "pending"),
        limit=_limit(request),
    )
    return web.json_response({"messages": [m.to_json(with_body=False) for m in messages]})


async def _rejections(request: web.Request) -> web.Response:
    found = request.app[NODE_KEY].store.list_rejections(limit=_limit(request))
    return web.json_response({"rejections": [r.to_json() for r in found]})


async def _message(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    message_id = _id(request)
    sent = node.store.outbox_message(message_id)
    lawful = node.store.query(lambda db: corrections.marks(db, message_id))
    if sent is not None:
        return web.json_response({"direction": "sent", **sent.to_json(), **lawful})
    if node.store.inbox_message(message_id) is None:
        raise NotFound(f"no message {message_id}")
    who = api_integrations.principal(request)
    if not who.builtin:
        # A case system importing the body: a transfer to it, not a person's consultation.
        fetched = await api_integrations.system_fetch(node, message_id, who)
        return web.json_response(
            {
                "direction": "received",
                **fetched.to_json(today=node.today(), with_body=True),
                **lawful,
            }
        )
    justification = _justification(request)
    actor = _actor(request) or DEFAULT_ACTOR
    received = await node.read(message_id, actor=actor, justification=justification)
    return web.json_response(
        {
            "direction": "received",
            **received.to_json(today=node.today(), with_body=True),
            **lawful,
        }
    )


async def _attachment_upload(request: web.Request) -> web.Response:
    return await attachment_api.upload(request, request.app[NODE_KEY])


async def _attachment_list(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    message_id = _id(request)
    if (
        node.store.outbox_message(message_id) is None
        and node.store.inbox_message(message_id) is None
    ):
        raise NotFound(f"no message {message_id}")
    return await attachment_api.listing(request, node, message_id)


async def _attachment_get(request: web.Request) -> web.StreamResponse:
    """A file of a message; for a received one, opening it is reading the message (audited;
    a case system's client fetching it is a transfer to that system, as for the body)."""
    node = request.app[NODE_KEY]
    message_id = _id(request)
    received = node.store.outbox_message(message_id) is None
    if received:
        if node.store.inbox_message(message_id) is None:
            raise NotFound(f"no message {message_id}")
        who = api_integrations.principal(request)
        if who.builtin:
            actor = _actor(request) or DEFAULT_ACTOR
            await node.read(message_id, actor=actor, justification=_justification(request))
        else:
            # A case system importing the file: a transfer to it, as for the message's body.
            await api_integrations.system_fetch(node, message_id, who)
    return await attachment_api.download(
        request, node, message_id, request.match_info["attachment"], received=received
    )


async def _evidence(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    message_id = _id(request)
    sent = node.store.outbox_message(message_id)
    received = node.store.inbox_message(message_id)
    if sent is None and received is None:
        raise NotFound(f"no message {message_id}")
    trail = node.store.evidence_for(message_id)
    return web.json_response(
        {
            "message_id": message_id,
            "direction": "sent" if sent is not None else "received",
            "state": sent.state.value if sent is not None else None,
            "evidence": [e.to_json() for e in trail],
        }
    )


async def _thread(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    conversation = _id(request, "conversation")
    received, sent = node.store.thread(conversation)
    if not received and not sent:
        raise NotFound(f"no conversation {conversation}")
    today = node.today()
    items = [
        {"direction": "received", "at": m.received_at, **m.to_json(today=today, with_body=False)}
        for m in received
    ] + [{"direction": "sent", "at": m.created_at, **m.to_json(with_body=False)} for m in sent]
    return web.json_response({"conversation": conversation, "messages": thread_order(items)})


def thread_order(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Oldest first by local time (sent: created, received: received), which is causal on one
    node; within the same second (times have second resolution) a reply comes after the
    message it answers (reply depth), then by message id for a stable order."""
    parent = {str(i["message_id"]): i.get("in_reply_to") for i in items}

    def depth(message_id: str) -> int:
        seen: set[str] = set()
        while (up := parent.get(message_id)) is not None and up in parent and up not in seen:
            seen.add(message_id)
            message_id = str(up)
        return len(seen)

    return sorted(
        items,
        key=lambda i: (str(i["at"]), depth(str(i["message_id"])), str(i["message_id"])),
    )


def _quarantine_id(request: web.Request) -> int:
    value = request.match_info["id"]
    if not value.isdigit() or len(value) > 18:
        raise NotFound(f"no quarantined delivery {value[:64]}")
    return int(value)


async def _quarantine(request: web.Request) -> web.Response:
    items = await asyncio.to_thread(
        request.app[NODE_KEY].store.list_quarantine, limit=_limit(request)
    )
    return web.json_response({"quarantine": [i.to_json() for i in items]})


async def _quarantine_retry(request: web.Request) -> web.Response:
    actor = request.headers.get("X-Actor") or DEFAULT_ACTOR
    result = await request.app[NODE_KEY].retry_quarantined(_quarantine_id(request), actor=actor)
    return web.json_response(result)


async def _quarantine_drop(request: web.Request) -> web.Response:
    justification = request.headers.get("X-Justification") or request.query.get("justification", "")
    actor = request.headers.get("X-Actor") or DEFAULT_ACTOR
    item_id = _quarantine_id(request)
    await request.app[NODE_KEY].drop_quarantined(item_id, actor=actor, justification=justification)
    return web.json_response({"id": item_id, "dropped": True})


async def _notice(request: web.Request) -> web.Response:
    """A correction or withdrawal of a message, sent to every agency it was disclosed to."""
    kind = request.path.rsplit("/", 1)[-1]
    result = await corrections.send_notice(
        request.app[NODE_KEY],
        kind=kind,
        message_id=_id(request),
        body=await _json_body(request),
        actor=_actor(request),
    )
    status = 201 if result.state is OutboxState.ACKNOWLEDGED else 202
    return web.json_response(result.to_json(), status=status)
