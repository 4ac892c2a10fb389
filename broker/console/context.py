"""The console's request context: security headers and session middlewares, roles, the
catalogue, page context shared by every view (the factory is :mod:`broker.console.app`).

What it is for
    :func:`broker.console.app.create_console_app` builds the application around a running
    :class:`~broker.node.service.Node`; :func:`broker.console.app.serving_console` runs it on
    its own listener (the node runtime starts it when the settings have a ``console`` section).
    Every response carries a Content-Security-Policy without ``unsafe-inline`` (scripts and
    styles are static files), ``nosniff``, ``frame-ancestors 'none'`` and ``no-store``. Every
    state-changing request must carry the session's CSRF token (403 and an audit record
    otherwise, nothing changed). Pages other than sign-in need a live session of an enabled
    account; the person's role is read from the store on every request (a disabled account stops
    at once).

What it must never do
    Serve a page without those headers, act on a POST without its token, or take the acting
    person from anything but the server-side session.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import aiohttp_jinja2
import structlog
from aiohttp import web
from argon2 import PasswordHasher

from broker.console.accounts import Accounts, Role, User
from broker.console.files import Uploads
from broker.console.forms import SchemaWalker
from broker.console.i18n import LANGUAGE_NAMES, local_time, translations
from broker.console.queries import Counts
from broker.console.sessions import COOKIE, Session, Sessions
from broker.console.settings import ConsoleSettings
from broker.core.audit import Operation
from broker.core.policy import Policy
from broker.core.schemas import SchemaRegistry
from broker.loaders import default_schema_dir, load_documents
from broker.node.service import Node

HERE: Final = Path(__file__).resolve().parent
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
PUBLIC: Final = frozenset({"/login", "/healthz"})
UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Console:
    """Everything the views share: the node, settings, accounts, sessions, catalogue."""

    node: Node
    settings: ConsoleSettings
    accounts: Accounts
    sessions: Sessions
    registry: SchemaRegistry
    walker: SchemaWalker
    consulted: dict[str, set[str]] = field(default_factory=dict)  # session key -> message ids
    uploads: Uploads = field(default_factory=Uploads)  # file handles -> who uploaded them
    # The peer countries' published policies the node holds now (hot-swapped: read per use).
    peer_policies: Callable[[], Mapping[str, Policy]] = field(default=lambda: {})
    log: Any = field(default_factory=lambda: structlog.get_logger("casebridge.console"))

    @property
    def agency(self) -> str:
        return self.node.agency_id


CONSOLE_KEY: Final = web.AppKey("console", Console)
SESSION_KEY: Final = web.RequestKey("console_session", Session)
USER_KEY: Final = web.RequestKey("console_user", User)
COUNTS_KEY: Final = web.RequestKey("console_counts", Counts)


@functools.cache
def _catalogue() -> tuple[SchemaRegistry, SchemaWalker]:
    """The message catalogue, compiled once per process (the files ship with the package)."""
    documents = load_documents(default_schema_dir())
    schemas = [d for d in documents.values() if isinstance(d, dict)]
    return SchemaRegistry.from_documents(documents), SchemaWalker(schemas)


def console_state(
    node: Node,
    settings: ConsoleSettings,
    *,
    hasher: PasswordHasher | None = None,
    peer_policies: Callable[[], Mapping[str, Policy]] | None = None,
) -> Console:
    registry, walker = _catalogue()
    return Console(
        peer_policies=peer_policies if peer_policies is not None else dict,
        node=node,
        settings=settings,
        accounts=Accounts(
            node.store,
            agency=node.agency_id,
            clock=node.now,
            lockout_attempts=settings.lockout_attempts,
            lockout_minutes=settings.lockout_minutes,
            **({"hasher": hasher} if hasher is not None else {}),
        ),
        sessions=Sessions(
            idle=timedelta(minutes=settings.idle_minutes),
            absolute=timedelta(hours=settings.absolute_hours),
            clock=node.now,
        ),
        registry=registry,
        walker=walker,
    )


# --------------------------------------------------------------- request state ---


def session_of(request: web.Request) -> Session | None:
    found: Session | None = request.get(SESSION_KEY)
    return found


def user_of(request: web.Request) -> User:
    user: User | None = request.get(USER_KEY)
    if user is None:  # the middleware lets no request without a user reach a view
        raise web.HTTPUnauthorized()
    return user


def set_cookie(request: web.Request, response: web.StreamResponse, cookie: str) -> None:
    console = request.app[CONSOLE_KEY]
    response.set_cookie(
        COOKIE,
        cookie,
        httponly=True,
        secure=console.settings.tls,
        samesite="Strict",
        path="/",
        max_age=console.settings.absolute_hours * 3600,
    )


def language_of(request: web.Request) -> str:
    session = session_of(request)
    user: User | None = request.get(USER_KEY)
    if session is not None and session.language:
        return session.language
    if user is not None:
        return user.language
    accepted = request.headers.get("Accept-Language", "")[:2].lower()
    return accepted if accepted in LANGUAGE_NAMES else "en"


def gettext_for(request: web.Request) -> Callable[[str], str]:
    return translations(language_of(request)).gettext


# ---------------------------------------------------------------- middlewares ---


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, errors included (a signal runs for exceptions turned into responses)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def sessions_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = request.app[CONSOLE_KEY]
    if request.path.startswith("/static/"):
        return await handler(request)
    session = console.sessions.get(request.cookies.get(COOKIE))
    if session is not None and session.username is not None:
        user = await _to_thread(console.accounts.get, session.username)
        if user is None or user.disabled:
            console.sessions.end(session)
            session = None
        else:
            request[USER_KEY] = user
    if session is not None:
        request[SESSION_KEY] = session
    if request.method in UNSAFE_METHODS:
        token = request.headers.get("X-CSRF-Token")
        if token is None and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            form = await request.post()
            value = form.get("csrf")
            token = value if isinstance(value, str) else None
        if session is None or not session.csrf_ok(token):
            actor = session.username if session is not None and session.username else None
            if actor is not None:
                await _to_thread(
                    console.accounts.audit,
                    Operation.ACCESS,
                    actor=actor,
                    detail=f"refused: {request.method} {request.path} without a valid CSRF token",
                )
            return _error_page(
                request,
                403,
                "The form has expired or did not come from this console. "
                "Reload the page and try again.",
            )
    if request.path not in PUBLIC and request.get(USER_KEY) is None:
        if request.path == "/events":
            raise web.HTTPUnauthorized(text="sign in")
        raise web.HTTPSeeOther("/login")
    started = time.perf_counter()
    response = await handler(request)
    # Server-Timing: what the page cost here (bench/console.py reads it; browsers show it)
    response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


async def _to_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


def type_title(registry: SchemaRegistry, message_type: str) -> str:
    """A message type in plain words: its schema's title (the type name if unknown)."""
    versions = registry.versions(message_type)
    if not versions:
        return message_type
    return str(registry.schema(message_type, versions[-1]).get("title", message_type))


def _error_page(request: web.Request, status: int, text: str) -> web.Response:
    return aiohttp_jinja2.render_template(
        "error.html", request, page_context(request, title=str(status), message=text), status=status
    )


def refuse(request: web.Request, action: str) -> web.Response:
    """A role refusal: 403 page; the audit record is written by the caller (:func:`forbid`)."""
    _ = gettext_for(request)
    return _error_page(request, 403, _("Your role does not allow this.") + f" ({action})")


async def forbid(request: web.Request, action: str) -> web.Response:
    """Refuse an action the person's role does not allow, with an audit record under them."""
    console = request.app[CONSOLE_KEY]
    user = user_of(request)
    await _to_thread(
        console.accounts.audit,
        Operation.ACCESS,
        actor=user.username,
        detail=f"refused for role {user.role.value}: {action}",
    )
    return refuse(request, action)


def allowed(user: User, *roles: Role) -> bool:
    return user.role in roles


# ------------------------------------------------------------------ templates ---


def page_context(request: web.Request, **values: Any) -> dict[str, Any]:
    console = request.app[CONSOLE_KEY]
    user: User | None = request.get(USER_KEY)
    session = session_of(request)
    zone = user.time_zone if user is not None else console.settings.time_zone
    context: dict[str, Any] = {
        "_": gettext_for(request),
        "user": user,
        "csrf": session.csrf if session is not None else "",
        "agency": console.agency,
        "language": language_of(request),
        "languages": LANGUAGE_NAMES,
        "when": lambda v: local_time(v, zone),
        "day": lambda v: local_time(v, zone, with_time=False),
        "path": request.path,
        "counts": request.get(COUNTS_KEY),
        "Role": Role,
    }
    context.update(values)
    return context
