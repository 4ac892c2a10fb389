"""HTTP routes for hit/no-hit lookups, added to the node API when lookups are configured.

Routes (bearer token as for the rest of the API; ``X-Actor`` names who acts):

* ``POST /v1/lookups`` ``{"to", "identifiers": [{"kind", "value"}], "purpose"?, "case_ref"?,
  "purpose_note"?}`` -> ``{"query_id", "state"}``: the identifiers are keyed before they leave
  this process.
* ``GET /v1/lookups/{query_id}`` -> ``{"status": pending|hit|no_hit|refused, "hits": [...]}``.
* ``POST /v1/lookups/index`` ``{"kind", "value", "reference"}``: register an identifier of a
  record (stored only keyed); ``DELETE /v1/lookups/index/{reference}``.
* ``GET /v1/lookups/log``: the lookup log (no identifiers in it).

It must never echo an identifier back, in a response or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from broker.node import api_integrations
from broker.node.api import NODE_KEY
from broker.node.api_parsing import actor as _actor
from broker.node.api_parsing import json_body as _json_body
from broker.node.errors import BadRequest, NotFound
from broker.node.lookup import LookupService, LookupSettings, LookupStore

LOOKUP_KEY: Final = web.AppKey("lookups", LookupService)


def add_lookups(app: web.Application, settings_file: Path, *, store_path: Path) -> None:
    """Answer and send lookups from this app: routes, and the answering loop while it runs."""
    settings = LookupSettings.load(settings_file)
    index = settings.index_path or store_path.with_suffix(".lookup.sqlite")

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store = LookupStore(index)
        service = LookupService(app[NODE_KEY], settings, store)
        app[LOOKUP_KEY] = service
        task = asyncio.create_task(service.run(), name="lookups")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            store.close()

    app.cleanup_ctx.append(lifecycle)  # after the node's: starts once the node runs
    app.router.add_post("/v1/lookups", _query)
    app.router.add_get("/v1/lookups/log", _log)
    app.router.add_post("/v1/lookups/index", _register)
    app.router.add_delete("/v1/lookups/index/{reference}", _unregister)
    app.router.add_get("/v1/lookups/{id}", _answer)


def _text(raw: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = raw.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > 500:
        raise BadRequest(f"{name} must be a string of 1-500 characters")
    return value


async def _query(request: web.Request) -> web.Response:
    raw = await _json_body(request)
    identifiers = raw.get("identifiers")
    if not isinstance(identifiers, list) or not identifiers:
        raise BadRequest("identifiers must be a non-empty list of {kind, value}")
    pairs: list[tuple[str, str]] = []
    for item in identifiers:
        if not isinstance(item, dict) or set(item) != {"kind", "value"}:
            raise BadRequest("each identifier is {kind, value}")
        pairs.append((str(_text(item, "kind")), str(_text(item, "value"))))
    result = await request.app[LOOKUP_KEY].query(
        str(_text(raw, "to")),
        pairs,
        purpose=_text(raw, "purpose", required=False) or "investigation",
        case_ref=_text(raw, "case_ref", required=False),
        purpose_note=_text(raw, "purpose_note", required=False),
        actor=_requester(request),
    )
    return web.json_response(result, status=201)


def _requester(request: web.Request) -> str | None:
    """Who asks or registers: with the settings token the person in ``X-Actor``; with an API
    client the client itself (``client:<id>``): a case system is logged and rate-limited as
    one requester, whatever name it puts in ``X-Actor``."""
    who = api_integrations.principal(request)
    if who.builtin:
        return _actor(request)
    return f"client:{who.client_id}"


async def _answer(request: web.Request) -> web.Response:
    service = request.app[LOOKUP_KEY]
    query_id = request.match_info["id"]
    return web.json_response(await asyncio.to_thread(service.answer_to, query_id))


async def _register(request: web.Request) -> web.Response:
    raw = await _json_body(request)
    if set(raw) != {"kind", "value", "reference"}:
        raise BadRequest("register {kind, value, reference}")
    result = await request.app[LOOKUP_KEY].register(
        str(_text(raw, "kind")),
        str(_text(raw, "value")),
        str(_text(raw, "reference")),
        actor=_requester(request),
    )
    return web.json_response(result, status=201)


async def _unregister(request: web.Request) -> web.Response:
    removed = await request.app[LOOKUP_KEY].unregister(request.match_info["reference"])
    if not removed:
        raise NotFound("no such reference in the lookup index")
    return web.json_response({"removed": removed})


async def _log(request: web.Request) -> web.Response:
    entries = await asyncio.to_thread(request.app[LOOKUP_KEY].store.entries)
    return web.json_response({"entries": [e.to_json() for e in entries]})
