"""The reference webhook receiver: the pattern integrators copy to connect a case system.

What it does
    Listens (aiohttp) for the node's webhooks (Standard Webhooks: ``webhook-id``,
    ``webhook-timestamp``, ``webhook-signature``), and for each request:

    1. verifies it before reading anything else: the timestamp within ``tolerance_seconds``
       of now (default 300 s, the convention's), and a ``v1`` HMAC-SHA256 signature made with
       the subscription's secret over ``id.timestamp.body`` (``standardwebhooks`` computes it;
       the comparison is constant-time). A forged request (no or wrong signature, another
       secret, a changed body or id) or a replayed one (a timestamp older than the tolerance)
       is refused with ``401`` and logged, and nothing is stored;
    2. de-duplicates by ``webhook-id``: the node delivers at least once, so a retry of an
       event already stored is answered ``200`` and ignored;
    3. for ``message.received``, fetches the message (header and body) from the node with its
       own client credentials (a ``read``-scope API client: the node records a *transfer to the
       case system*, not a person's reading), then stores the event and the message in one
       SQLite transaction -- the "case system" (tables ``events``, ``messages``). When the
       node cannot be reached it answers ``503``: the node retries later, nothing is lost.

    A person who then opens the message in the case system is reported back with
    ``POST /v1/messages/{id}/read`` (``person``, ``purpose``), which sends ``read`` evidence.

Settings (``casebridge adapter webhook-receiver --settings FILE``)::

    listen: {host: 127.0.0.1, port: 8480, path: /casebridge/webhooks}
    secret_file: webhook-secret.txt      # the whsec_... the subscription was given
    node: {url: "http://127.0.0.1:8470", token_file: client-token.txt}
    database: case-system.sqlite
    tolerance_seconds: 300

What it must never do
    Store, fetch or act on anything before the signature and timestamp are verified, store an
    event twice, answer 2xx for an event it did not store, or log a secret or a body.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from broker.errors import ConfigError
from broker.sdk import (
    NodeClient,
    NodeError,
    WebhookVerificationError,
    verify_webhook_delivery,
    webhook_signer,
)

from .common import NodeAccess, load_document, node_access, reject_unknown

DEFAULT_TOLERANCE: Final = 300
MAX_BODY: Final = 256 * 1024
# webhook-id: printable ASCII without spaces or commas; the node's are evt_<feed>_<seq>.
_ID: Final = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,255}")
_TIMESTAMP: Final = re.compile(r"[0-9]{1,12}")
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    webhook_id TEXT PRIMARY KEY,
    seq INTEGER,
    type TEXT NOT NULL,
    message_id TEXT,
    data TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    sender TEXT NOT NULL,
    conversation TEXT NOT NULL,
    header TEXT NOT NULL,
    body TEXT NOT NULL,
    imported_at TEXT NOT NULL
);
"""
log = structlog.get_logger("casebridge.adapters.webhook_receiver")


class Refused(Exception):
    """A request that is not a verified webhook (forged, replayed, malformed)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ReceiverSettings:
    """The receiver's settings (see the module docstring)."""

    secret: str
    node: NodeAccess
    database: Path
    host: str = "127.0.0.1"
    port: int = 8480
    path: str = "/casebridge/webhooks"
    tolerance_seconds: int = DEFAULT_TOLERANCE

    def __repr__(self) -> str:
        return f"ReceiverSettings(database={self.database!s}, port={self.port})"

    @classmethod
    def load(cls, path: Path) -> ReceiverSettings:
        raw = load_document(path)
        reject_unknown(
            raw, {"listen", "secret_file", "node", "database", "tolerance_seconds"}, str(path)
        )
        base = path.parent
        listen = raw.get("listen", {})
        if not isinstance(listen, dict):
            raise ConfigError(f"{path}: listen must be a mapping")
        reject_unknown(listen, {"host", "port", "path"}, f"{path}: listen")
        secret_file = raw.get("secret_file")
        if not isinstance(secret_file, str):
            raise ConfigError(f"{path}: secret_file (the subscription's whsec_ secret) is required")
        try:
            secret = (base / secret_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"secret_file {secret_file}: cannot read ({exc.strerror})") from None
        database = raw.get("database")
        if not isinstance(database, str):
            raise ConfigError(f"{path}: database (the SQLite file) is required")
        tolerance = raw.get("tolerance_seconds", DEFAULT_TOLERANCE)
        if (
            isinstance(tolerance, bool)
            or not isinstance(tolerance, int)
            or not 1 <= tolerance <= 300
        ):
            # Longer than the convention's 5 minutes widens the replay window for nothing.
            raise ConfigError("tolerance_seconds must be an integer from 1 to 300")
        port = listen.get("port", 8480)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError("listen.port must be a port number")
        settings = cls(
            secret=secret,
            node=node_access(raw.get("node"), base=base),
            database=base / database,
            host=str(listen.get("host", "127.0.0.1")),
            port=port,
            path=str(listen.get("path", "/casebridge/webhooks")),
            tolerance_seconds=tolerance,
        )
        verifier(settings.secret)  # a malformed secret fails at start, not per request
        return settings


def verifier(secret: str) -> Webhook:
    """The Standard Webhooks signer of ``secret`` (:func:`broker.sdk.webhook_signer`: checked
    strictly, a mangled secret fails at start)."""
    try:
        return webhook_signer(secret)
    except WebhookVerificationError as exc:
        raise ConfigError(exc.detail) from None


def verify(
    webhook: Webhook,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime,
    tolerance_seconds: int,
) -> tuple[str, dict[str, Any]]:
    """``(webhook-id, payload)`` of a verified request, else :class:`Refused` saying why: the
    SDK's one verification (:func:`broker.sdk.verify_webhook_delivery`: timestamp window first,
    then every ``v1`` signature in constant time, only then the body)."""
    try:
        return verify_webhook_delivery(
            webhook, body, headers, now=now.timestamp(), tolerance=tolerance_seconds
        )
    except WebhookVerificationError as exc:
        raise Refused(exc.detail) from None


class CaseSystem:
    """The SQLite "case system" the receiver writes into (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def seen(self, webhook_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM events WHERE webhook_id = ?", (webhook_id,))
            return row.fetchone() is not None

    def store(
        self,
        webhook_id: str,
        payload: Mapping[str, Any],
        message: Mapping[str, Any] | None,
        *,
        at: str,
    ) -> bool:
        """Store the event (and its message) in one transaction; False if it was there."""
        data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
        assert isinstance(data, dict)  # noqa: S101 - narrowed just above
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                inserted = self._db.execute(
                    "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        webhook_id,
                        data.get("seq"),
                        str(payload["type"]),
                        data.get("message_id"),
                        json.dumps(payload, sort_keys=True),
                        at,
                    ),
                ).rowcount
                if inserted and message is not None:
                    header = message.get("header") or {}
                    self._db.execute(
                        "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            message["message_id"],
                            str(message.get("type")),
                            str(message.get("sender")),
                            str(message.get("conversation")),
                            json.dumps(header, sort_keys=True),
                            json.dumps(message.get("body"), sort_keys=True),
                            at,
                        ),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return bool(inserted)

    def close(self) -> None:
        with self._lock:
            self._db.close()


SETTINGS_KEY: Final = web.AppKey("receiver_settings", ReceiverSettings)
CASES_KEY: Final = web.AppKey("case_system", CaseSystem)
CLIENT_KEY: Final = web.AppKey("node_client", NodeClient)
WEBHOOK_KEY: Final = web.AppKey("webhook", Webhook)
Clock = Callable[[], datetime]
CLOCK_KEY: Final[web.AppKey[Clock]] = web.AppKey("clock")


def create_app(
    settings: ReceiverSettings,
    *,
    client: NodeClient | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> web.Application:
    """The receiver: ``POST {path}`` for webhooks, ``GET /healthz``."""
    app = web.Application(client_max_size=MAX_BODY)
    app[SETTINGS_KEY] = settings
    app[WEBHOOK_KEY] = verifier(settings.secret)
    app[CLOCK_KEY] = clock

    async def resources(app: web.Application) -> Any:
        app[CASES_KEY] = CaseSystem(settings.database)
        app[CLIENT_KEY] = client or settings.node.client()
        yield
        app[CLIENT_KEY].close()
        app[CASES_KEY].close()

    app.cleanup_ctx.append(resources)
    app.router.add_post(settings.path, _receive)
    app.router.add_get("/healthz", _healthz)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _receive(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS_KEY]
    now = app[CLOCK_KEY]()
    body = await request.read()
    try:
        webhook_id, payload = verify(
            app[WEBHOOK_KEY],
            request.headers,
            body,
            now=now,
            tolerance_seconds=settings.tolerance_seconds,
        )
    except Refused as exc:
        log.warning("webhook_refused", why=str(exc), remote=request.remote)
        return web.json_response(
            {"error": {"reason": "unauthorized", "detail": str(exc)}}, status=401
        )
    cases = app[CASES_KEY]
    if await asyncio.to_thread(cases.seen, webhook_id):
        log.info("webhook_duplicate", webhook_id=webhook_id)
        return web.json_response({"webhook_id": webhook_id, "duplicate": True})
    message = None
    data = payload.get("data")
    message_id = data.get("message_id") if isinstance(data, dict) else None
    if payload["type"] == "message.received" and isinstance(message_id, str):
        try:
            message = await asyncio.to_thread(app[CLIENT_KEY].show, message_id)
        except NodeError as exc:
            # Not stored, so not acknowledged: the node delivers the event again later.
            log.warning("webhook_fetch_failed", webhook_id=webhook_id, reason=exc.reason)
            return web.json_response(
                {"error": {"reason": "node_unreachable", "detail": exc.reason}},
                status=503,
                headers={"Retry-After": "10"},
            )
    stored = await asyncio.to_thread(
        cases.store, webhook_id, payload, message, at=now.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    log.info(
        "webhook_stored" if stored else "webhook_duplicate",
        webhook_id=webhook_id,
        type=payload["type"],
    )
    return web.json_response({"webhook_id": webhook_id, "duplicate": not stored})


def main(settings_path: Path) -> int:
    """``casebridge adapter webhook-receiver``: serve until SIGINT/SIGTERM."""
    settings = ReceiverSettings.load(settings_path)
    log.info("webhook_receiver_started", port=settings.port, path=settings.path)
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        print=None,
        handle_signals=True,
    )
    return 0
