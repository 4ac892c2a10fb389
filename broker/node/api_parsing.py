"""Request parsing shared by the node's HTTP handlers (broker/node/api.py and the modules
that add routes to it): the body within its size and time limits, strict JSON objects, the
``X-Actor`` header, message ids in paths and which query parameters a route takes.

What it must never do: accept a body beyond its limits, parse JSON leniently (duplicate keys,
lone surrogates), let a malformed actor name into the audit log, or ignore a query parameter
it does not know (a misspelt ``unraed=1`` would answer as if nothing had been asked).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Final

from aiohttp import web

from broker.core import canonical
from broker.errors import InvalidMessage
from broker.node.errors import BadRequest, NotFound, PayloadTooLarge, RequestTimeout

MAX_BODY: Final = 2 * 1024 * 1024
# Seconds a client has to deliver a request body once its headers arrived.
DEFAULT_BODY_TIMEOUT: Final = 10.0
BODY_TIMEOUT_KEY: Final = web.AppKey("body_timeout", float)
# Who acts (X-Actor): 1-128 printable ASCII characters, no leading or trailing space.
ACTOR_PATTERN: Final = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,126}[\x21-\x7e])?")
# The query parameters each route takes (method, route template), as docs/openapi.yaml
# describes them (a unit test holds the two equal); a route not listed takes none.
QUERY_PARAMETERS: Final[dict[tuple[str, str], frozenset[str]]] = {
    ("GET", "/v1/inbox"): frozenset({"unread", "overdue", "conversation", "limit"}),
    ("GET", "/v1/outbox"): frozenset({"pending", "evidence", "limit"}),
    ("GET", "/v1/rejections"): frozenset({"limit"}),
    ("GET", "/v1/quarantine"): frozenset({"limit"}),
    ("DELETE", "/v1/quarantine/{id}"): frozenset({"justification"}),
    ("GET", "/v1/messages/{id}"): frozenset({"justification"}),
    ("GET", "/v1/messages/{id}/attachments/{attachment}"): frozenset({"justification"}),
    ("POST", "/v1/attachments"): frozenset({"name", "media_type"}),
    ("GET", "/v1/events"): frozenset({"after", "limit", "types"}),
    ("GET", "/v1/events/stream"): frozenset({"after", "types"}),
    ("GET", "/v1/webhooks/{id}/deliveries"): frozenset({"state", "limit"}),
}
# Routes whose parameters are never named back (a lookup's identifier must never be echoed,
# even one put by mistake where a parameter name goes).
_SILENT_PREFIX: Final = "/v1/lookups"


def check_query(request: web.Request, route: str) -> None:
    """Refuse (400) a query parameter ``route`` does not take, or one given twice."""
    query = request.query
    if not query:
        return
    method = "GET" if request.method == "HEAD" else request.method
    allowed = QUERY_PARAMETERS.get((method, route), frozenset())
    unknown = sorted(set(query) - allowed)
    silent = route.startswith(_SILENT_PREFIX)
    if unknown:
        if silent:
            raise BadRequest(f"{method} {route} takes no query parameters")
        named = ", ".join(repr(name[:40]) for name in unknown[:5])
        takes = ", ".join(sorted(allowed)) or "none"
        raise BadRequest(f"unknown query parameter {named} for {method} {route} (takes: {takes})")
    repeated = sorted(name for name in set(query) if len(query.getall(name)) > 1)
    if repeated:
        raise BadRequest(f"query parameter {repeated[0]!r} given more than once")


async def read_body(request: web.Request) -> bytes:
    """The request body, within the size limit and the body timeout."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge(f"the request body exceeds {MAX_BODY} bytes")
    timeout = request.app[BODY_TIMEOUT_KEY]
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s") from None


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request)
    try:
        # Also refuses a lone surrogate escape ("\ud800"), which would parse into a str that
        # is not Unicode text (loads_strict checks the decoded value when one is escaped).
        value = canonical.loads_strict(raw, what="request")
    except InvalidMessage as exc:
        raise BadRequest(f"request body is not valid JSON: {exc.detail}") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


def actor(request: web.Request) -> str | None:
    """``X-Actor`` (who acts), checked against :data:`ACTOR_PATTERN`; None when absent."""
    value = request.headers.get("X-Actor")
    if not value:
        return None
    if ACTOR_PATTERN.fullmatch(value) is None:
        raise BadRequest(
            "X-Actor must be 1-128 printable ASCII characters "
            "(no control characters, no leading or trailing space)"
        )
    return value


def message_id(request: web.Request, name: str = "id") -> str:
    value = request.match_info[name]
    if len(value) != 36:
        raise NotFound(f"no message {value[:64]}")
    return value
