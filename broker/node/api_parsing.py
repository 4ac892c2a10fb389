"""Request parsing shared by the node's HTTP handlers (broker/node/api.py and the modules
that add routes to it): the body within its size and time limits, strict JSON objects, the
``X-Actor`` header and message ids in paths.

What it must never do: accept a body beyond its limits, parse JSON leniently (duplicate keys,
lone surrogates), or let a malformed actor name into the audit log.
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
