"""The console's aiohttp application: the factory that wires the request context
(:mod:`broker.console.context`: security middlewares, sessions, roles) to the pages
(:mod:`broker.console.views`), templates and static files, and the listener.

What it must never do: serve a page without the security headers and session checks, or
listen beyond loopback without TLS unless the settings explicitly allow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from argon2 import PasswordHasher

from broker.console import views
from broker.console.context import (
    CONSOLE_KEY,
    HERE,
    console_state,
    security_headers,
    sessions_middleware,
    type_title,
)
from broker.console.notify import run_notices
from broker.console.settings import ConsoleSettings
from broker.core.policy import Policy
from broker.node.service import Node


def create_console_app(
    node: Node,
    settings: ConsoleSettings,
    *,
    hasher: PasswordHasher | None = None,
    peer_policies: Callable[[], Mapping[str, Policy]] | None = None,
) -> web.Application:
    """The console application for ``node`` (routes in :mod:`broker.console.views`).
    ``hasher``: argon2id parameters (tests use cheap ones; default: argon2-cffi's).
    ``peer_policies``: the partner countries' published policies the node holds now."""
    app = web.Application(middlewares=[sessions_middleware], client_max_size=2 * 1024 * 1024)
    app[CONSOLE_KEY] = console_state(node, settings, hasher=hasher, peer_policies=peer_policies)
    app.on_response_prepare.append(security_headers)
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=True,  # a peer's text is always text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    app.router.add_static("/static/", HERE / "static", append_version=True)
    views.add_routes(app)
    return app


def _ssl_context(settings: ConsoleSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


@contextlib.asynccontextmanager
async def serving_console(
    node: Node,
    settings: ConsoleSettings,
    *,
    peer_policies: Callable[[], Mapping[str, Policy]] | None = None,
) -> AsyncIterator[web.AppRunner]:
    """The console listening on ``settings.host:port`` for as long as the context lasts."""
    app = create_console_app(node, settings, peer_policies=peer_policies)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, ssl_context=_ssl_context(settings))
        await site.start()
        structlog.get_logger("casebridge.console").info(
            "console_started", agency=node.agency_id, url=settings.url
        )
        notices = None
        if settings.smtp is not None:
            console = app[CONSOLE_KEY]
            notices = asyncio.create_task(
                run_notices(
                    store=node.store,
                    accounts=console.accounts,
                    smtp=settings.smtp,
                    agency=node.agency_id,
                    url=settings.url,
                    title_of=lambda t: type_title(console.registry, t),
                    today=node.today,
                ),
                name="console-notices",
            )
        try:
            yield runner
        finally:
            if notices is not None:
                notices.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await notices
    finally:
        await runner.cleanup()
