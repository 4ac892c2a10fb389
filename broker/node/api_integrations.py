"""The API for case systems: credentials and scopes, the change feed, webhooks, clients.

What it is for
    :func:`authenticate` is the API's authentication step: the node's settings token is the
    built-in client ``node`` (every scope); any other bearer token must be a registered
    client's (:mod:`broker.node.clients`) holding the scope of the route
    (:func:`required_scope`). A refusal is ``401`` (unknown, expired or revoked) or ``403``
    (out of scope), and each is written to the audit log (``refusal``, with the route and the
    secret id the token claimed, never the token); ``401``s are audited one by one up to a
    per-source rate (:mod:`broker.node.refusal_limit`), the rest counted and summarised in
    one audit entry per source and interval. :func:`setup` adds the routes of the feed
    (``/v1/events``, ``/v1/events/stream``), webhooks, clients, and a person's reading
    reported by a case system (``POST /v1/messages/{id}/read``).

What it must never do
    Let a case system's fetch count as a person's consultation (it is a transfer to that
    system: no justification asked, no ``read`` evidence), put a body in an event, or echo
    a token except when issuing it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp_sse import sse_response

from broker.core.audit import AuditEntry
from broker.errors import CasebridgeError
from broker.metrics import NodeMetrics
from broker.node import clients, events, webhooks
from broker.node.api_parsing import ACTOR_PATTERN, json_body, message_id
from broker.node.clients import BUILTIN, Principal
from broker.node.errors import BadRequest, NotFound, Unauthorized
from broker.node.model import InboxMessage
from broker.node.refusal_limit import RefusalLimiter, Suppressed
from broker.node.service import Node

PRINCIPAL: Final = web.RequestKey("principal", Principal)  # who made the request
SIGNAL_KEY: Final = web.AppKey("event_signal", events.EventSignal)
REFUSALS_KEY: Final = web.AppKey("refusal_limiter", RefusalLimiter)
STREAM_PAGE: Final = 200
STREAM_WAIT: Final = 15.0
log = structlog.get_logger("casebridge.node.api")

# Route (canonical) and method -> the scope it needs; routes not listed need "admin".
_SCOPES: Final[dict[tuple[str, str], str]] = {
    ("POST", "/v1/messages"): "send",
    ("POST", "/v1/explain"): "send",
    ("POST", "/v1/messages/{id}/correction"): "send",
    ("POST", "/v1/messages/{id}/withdrawal"): "send",
    ("GET", "/v1/inbox"): "read",
    ("GET", "/v1/outbox"): "read",
    ("GET", "/v1/rejections"): "read",
    ("GET", "/v1/messages/{id}"): "read",
    ("GET", "/v1/messages/{id}/evidence"): "read",
    ("GET", "/v1/threads/{conversation}"): "read",
    ("POST", "/v1/messages/{id}/read"): "read",
    ("POST", "/v1/attachments"): "send",
    ("GET", "/v1/messages/{id}/attachments"): "read",
    ("GET", "/v1/messages/{id}/attachments/{attachment}"): "read",
    ("GET", "/v1/events"): "events",
    ("GET", "/v1/events/stream"): "events",
    ("POST", "/v1/lookups"): "lookup",
    ("GET", "/v1/lookups/{id}"): "lookup",
    ("POST", "/v1/lookups/index"): "lookup-index",
    ("DELETE", "/v1/lookups/index/{reference}"): "lookup-index",
}


def required_scope(method: str, route: str) -> str:
    """The scope a route needs (``admin`` unless listed)."""
    return _SCOPES.get((method, route), "admin")


def principal(request: web.Request) -> Principal:
    """Who made this request (set by :func:`authenticate`)."""
    found: Principal = request.get(PRINCIPAL, BUILTIN)
    return found


async def authenticate(request: web.Request, *, node: Node, settings_token: str) -> None:
    """Authenticate and authorise ``request``; raise 401/403 after auditing the refusal."""
    given = request.headers.get("Authorization", "")
    scheme, _, token = given.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and hmac.compare_digest(
        token.encode("utf-8", "replace"), settings_token.encode("utf-8")
    ):
        request[PRINCIPAL] = BUILTIN
        return
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    claimed = clients.claimed_client(token) if scheme.lower() == "bearer" else None
    who: Principal | None = None
    try:
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send Authorization: Bearer <API client token>")
        who = await asyncio.to_thread(clients.authenticate, node.store, token, now=node.now())
        if resource is not None:
            who.require(required_scope(request.method, route))
    except CasebridgeError as exc:
        actor = f"client:{who.client_id}" if who is not None else f"secret:{claimed or 'none'}"
        limiter = request.app.get(REFUSALS_KEY)
        entries: list[AuditEntry] = []
        if limiter is not None:  # intervals over first: a new refusal starts a new one
            entries.extend(_summary(node.agency_id, s) for s in limiter.ended())
        source = request.remote or "unknown"
        if limiter is None or not isinstance(exc, Unauthorized) or limiter.admit(source):
            entries.append(
                clients.refusal(
                    agency=node.agency_id,
                    client=actor,
                    route=route,
                    method=request.method,
                    reason=f"{exc.reason.value}: {exc.detail}",
                )
            )
        await _audit(node, entries)
        log.info("api_refused", route=route, status=exc.http_status, client=actor)
        raise
    request[PRINCIPAL] = who


async def _audit(node: Node, entries: list[AuditEntry]) -> None:
    if not entries:
        return
    try:
        await asyncio.to_thread(clients.record, node.store, entries, now=node.now())
    except CasebridgeError as audit_exc:  # the refusal stands; say the record is missing
        log.warning("api_refusal_not_audited", error=audit_exc.reason.value)


def _summary(agency: str, suppressed: Suppressed) -> AuditEntry:
    """One audit entry for the refusals of a source not audited one by one."""
    return clients.refusal(
        agency=agency,
        client=f"source:{suppressed.source}",
        route="(any route)",
        method="(any method)",
        reason=(
            f"unauthorized: {suppressed.count} further refusals from this source within "
            f"{suppressed.interval_seconds:g} s, not audited one by one (rate limit)"
        ),
    )


def setup(
    app: web.Application, node_key: web.AppKey[Node], *, metrics: NodeMetrics | None = None
) -> None:
    """Add the routes of this module, the feed's wake-up signal and the refusal audit's rate
    limit to ``app``."""
    counter = metrics.api_refusals_suppressed if metrics is not None else None
    app[REFUSALS_KEY] = RefusalLimiter(on_suppressed=counter.inc if counter else None)

    async def signal(app: web.Application) -> AsyncIterator[None]:
        wake = events.EventSignal()
        wake.attach(app[node_key].store)
        app[SIGNAL_KEY] = wake
        yield
        wake.detach()
        # What is still counted is summarised before the node closes its store.
        ended = app[REFUSALS_KEY].ended(everything=True)
        await _audit(app[node_key], [_summary(app[node_key].agency_id, s) for s in ended])

    app.cleanup_ctx.append(signal)
    handlers = _Handlers(node_key)
    app.router.add_get("/v1/events", handlers.events)
    app.router.add_get("/v1/events/stream", handlers.stream)
    app.router.add_post("/v1/messages/{id}/read", handlers.read)
    app.router.add_get("/v1/webhooks", handlers.webhooks)
    app.router.add_post("/v1/webhooks", handlers.webhook_add)
    app.router.add_delete("/v1/webhooks/{id}", handlers.webhook_remove)
    app.router.add_post("/v1/webhooks/{id}/replay", handlers.webhook_replay)
    app.router.add_get("/v1/webhooks/{id}/deliveries", handlers.webhook_deliveries)
    app.router.add_get("/v1/clients", handlers.clients)
    app.router.add_post("/v1/clients", handlers.client_add)
    app.router.add_post("/v1/clients/{id}/rotate", handlers.client_rotate)
    app.router.add_post("/v1/clients/{id}/revoke", handlers.client_revoke)


async def system_fetch(
    node: Node, message_id: str, who: Principal, *, attachment: str | None = None
) -> InboxMessage:
    """A received message's body (or, with ``attachment``, that file of it) handed to a case
    system: audited as a transfer to that system with the client's purpose; the message is
    not marked read, no evidence is sent."""
    message = await asyncio.to_thread(node.store.inbox_message, message_id)
    if message is None:
        raise NotFound(f"no received message {message_id}")
    entry = clients.transfer(
        agency=node.agency_id,
        principal=who,
        message_id=message_id,
        message_type=message.type,
        digest_=message.digest,
        **(
            {}
            if attachment is None
            else {
                "detail": f"file {attachment} fetched by a case system over the API "
                "(no read evidence)"
            }
        ),
    )
    await asyncio.to_thread(clients.record, node.store, [entry], now=node.now())
    return message


def _connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


# ------------------------------------------------------------------ parsing ---


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(text)


def _types(request: web.Request) -> tuple[str, ...]:
    text = request.query.get("types", "")
    return events.check_types([t for t in text.split(",") if t]) if text else ()


async def _json(request: web.Request) -> dict[str, Any]:

    if not request.can_read_body:
        return {}
    return await json_body(request)


def _text(raw: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = raw.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string")
    return value


def _strings(raw: dict[str, Any], name: str) -> list[str]:
    value = raw.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{name} must be a list of strings")
    return value


def _known(raw: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise BadRequest(f"unknown members {unknown}")


def _cursor(value: object, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"{name} must be a non-negative integer")
    return value


# ------------------------------------------------------------------- routes ---


class _Handlers:
    def __init__(self, node_key: web.AppKey[Node]) -> None:
        self._key = node_key

    async def events(self, request: web.Request) -> web.Response:
        node = request.app[self._key]
        page = await asyncio.to_thread(
            events.read_page,
            node.store,
            after=_int(request, "after", 0, 0, 2**62),
            limit=_int(request, "limit", 100, 1, events.MAX_PAGE),
            types=_types(request),
        )
        return web.json_response(page.to_json())

    async def stream(self, request: web.Request) -> web.StreamResponse:
        node = request.app[self._key]
        wake = request.app[SIGNAL_KEY]
        resume = request.headers.get("Last-Event-ID")
        if resume is not None:
            if not resume.isdigit() or len(resume) > 18:
                raise BadRequest("Last-Event-ID must be an event sequence number")
            after = int(resume)
        else:
            after = _int(request, "after", 0, 0, 2**62)
        types = _types(request)
        # Checked before the stream starts: an expired cursor is a 410 JSON answer.
        page = await asyncio.to_thread(
            events.read_page, node.store, after=after, limit=STREAM_PAGE, types=types
        )
        async with sse_response(request) as response:
            while _connected(request):
                for event in page.events:
                    await response.send(
                        json.dumps(events.event_json(event), separators=(",", ":")),
                        id=str(event.seq),
                        event=event.type,
                    )
                after = page.next
                if len(page.events) < STREAM_PAGE:
                    # Short waits: a client that went away is noticed within a second (aiohttp
                    # does not cancel a handler when its client disconnects).
                    for _ in range(int(STREAM_WAIT)):
                        if await wake.wait(1.0) or not _connected(request):
                            break
                try:
                    page = await asyncio.to_thread(
                        events.read_page, node.store, after=after, limit=STREAM_PAGE, types=types
                    )
                except CasebridgeError as exc:
                    # Purged under a slow reader, or the store failed: end the stream; the
                    # client's reconnection gets the error as a JSON answer (410, 503).
                    log.info("event_stream_ended", reason=exc.reason.value)
                    break
        return response

    async def read(self, request: web.Request) -> web.Response:
        """A person's reading, reported by a case system: consultation + ``read`` evidence."""
        node = request.app[self._key]
        read_id = message_id(request)
        raw = await _json(request)
        _known(raw, {"person", "purpose"})
        person = _text(raw, "person") or ""
        purpose = _text(raw, "purpose") or ""
        if ACTOR_PATTERN.fullmatch(person) is None:
            raise BadRequest("person must be 1-128 printable ASCII characters")
        if len(purpose) > 2000 or not purpose.isprintable():
            raise BadRequest("purpose must be at most 2000 printable characters")
        who = principal(request)
        message = await node.read(
            read_id, actor=person, justification=f"{purpose} (reported by {who.client_id})"
        )
        return web.json_response(
            {
                "message_id": message.message_id,
                "read_at": message.read_at,
                "read_by": message.read_by,
            }
        )

    async def webhooks(self, request: web.Request) -> web.Response:
        found = await asyncio.to_thread(request.app[self._key].store.list_subscriptions)
        return web.json_response({"subscriptions": found})

    async def webhook_add(self, request: web.Request) -> web.Response:
        node = request.app[self._key]
        raw = await _json(request)
        _known(raw, {"system", "url", "event_types", "after"})
        created = await asyncio.to_thread(
            webhooks.add,
            node.store,
            system=_text(raw, "system") or "",
            url=_text(raw, "url") or "",
            event_types=_strings(raw, "event_types"),
            after=_cursor(raw.get("after"), "after"),
            now=node.now(),
        )
        return web.json_response(created, status=201)

    async def webhook_remove(self, request: web.Request) -> web.Response:
        subscription_id = request.match_info["id"]
        await asyncio.to_thread(webhooks.remove, request.app[self._key].store, subscription_id)
        return web.json_response({"subscription_id": subscription_id, "removed": True})

    async def webhook_replay(self, request: web.Request) -> web.Response:
        node = request.app[self._key]
        raw = await _json(request)
        _known(raw, {"after"})
        subscription_id = request.match_info["id"]
        count = await asyncio.to_thread(
            webhooks.replay,
            node.store,
            subscription_id,
            after=_cursor(raw.get("after"), "after"),
            now=node.now(),
        )
        return web.json_response({"subscription_id": subscription_id, "queued": count})

    async def webhook_deliveries(self, request: web.Request) -> web.Response:
        store = request.app[self._key].store
        subscription_id = request.match_info["id"]
        state = request.query.get("state")
        if state not in (None, "pending", "delivered", "failed"):
            raise BadRequest("state must be pending, delivered or failed")
        listed = await asyncio.to_thread(
            store.list_deliveries,
            subscription_id,
            state=state,
            limit=_int(request, "limit", 100, 1, 1000),
        )
        return web.json_response({"subscription_id": subscription_id, "deliveries": listed})

    async def clients(self, request: web.Request) -> web.Response:
        found = await asyncio.to_thread(clients.listed, request.app[self._key].store)
        return web.json_response({"clients": [c.to_json() for c in found]})

    async def client_add(self, request: web.Request) -> web.Response:
        node = request.app[self._key]
        raw = await _json(request)
        _known(raw, {"client_id", "system", "purpose", "scopes"})
        issued = await asyncio.to_thread(
            clients.add,
            node.store,
            client_id=_text(raw, "client_id") or "",
            system=_text(raw, "system") or "",
            purpose=_text(raw, "purpose") or "",
            scopes=_strings(raw, "scopes"),
            now=node.now(),
        )
        return web.json_response(issued.to_json(), status=201)

    async def client_rotate(self, request: web.Request) -> web.Response:
        node = request.app[self._key]
        raw = await _json(request)
        _known(raw, {"overlap_seconds"})
        overlap = raw.get("overlap_seconds", int(clients.DEFAULT_OVERLAP.total_seconds()))
        if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap <= 2592000:
            raise BadRequest("overlap_seconds must be an integer from 0 to 2592000 (30 days)")
        issued = await asyncio.to_thread(
            clients.rotate,
            node.store,
            request.match_info["id"],
            now=node.now(),
            overlap=timedelta(seconds=overlap),
        )
        return web.json_response(issued.to_json(), status=201)

    async def client_revoke(self, request: web.Request) -> web.Response:
        node = request.app[self._key]
        client_id = request.match_info["id"]
        await asyncio.to_thread(clients.revoke, node.store, client_id, now=node.now())
        return web.json_response({"client_id": client_id, "revoked": True})
