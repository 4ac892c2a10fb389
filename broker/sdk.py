"""A small, typed, synchronous Python client of a node's local HTTP API (docs/node-api.md).

What it is for
    Scripts, case systems, the focal-point CLI (:mod:`broker.cli.focal`), the federation demo
    and the benchmark talk to *their own* node through :class:`NodeClient`: send a draft,
    list the inbox and outbox, open a message (with a justification), read its evidence trail,
    explain what pre-flight would decide; follow the change feed, manage webhooks and API
    clients, report a person's reading, verify a webhook delivery (:func:`verify_webhook`).
    Standard library only (``urllib``): no dependency. :mod:`broker.sdk_async` is its aiohttp
    twin with the same types.

Errors
    Everything that goes wrong raises one :class:`NodeError`, carrying the node's stable
    ``reason`` code, its ``detail``, the ``rule_id`` of a policy denial, the schema ``errors``
    and the HTTP ``status`` (``None`` when the node could not be reached at all: reason
    ``node_unreachable``; ``http_error`` when a response was not the node's error document).

Safe retries
    Every :meth:`NodeClient.send` carries an ``Idempotency-Key`` (a fresh random one per
    logical send unless the caller gives one) and is retried with that same key when the node
    cannot be reached, times out or answers 503 (``Retry-After`` honoured, bounded), with
    exponential backoff: a retry never creates a second message. Reads are retried alike.

What it must never do
    Read keys or the node's database, or log message content: everything goes through the API.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import http.client
import json
import os
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final, NotRequired, TypedDict, cast

from standardwebhooks.webhooks import Webhook

DEFAULT_TIMEOUT: Final = 30.0
# What a retry may fix: the node was unreachable (or timed out), or it said 503.
_RETRIED_REASONS: Final = frozenset({"node_unreachable"})
_RETRIED_STATUSES: Final = frozenset({503})

__all__ = [
    "DEFAULT_TIMEOUT",
    "NO_RETRIES",
    "ApiClient",
    "Draft",
    "Event",
    "EventPage",
    "EvidenceEntry",
    "EvidenceTrail",
    "Explanation",
    "InboxEntry",
    "IssuedSecret",
    "NodeClient",
    "NodeError",
    "OutboxEntry",
    "ReadReport",
    "Readiness",
    "Rejection",
    "Retries",
    "SendResult",
    "Thread",
    "WebhookSubscription",
    "WebhookVerificationError",
    "events_query",
    "new_idempotency_key",
    "verify_webhook",
    "verify_webhook_delivery",
    "webhook_signer",
]


# ---------------------------------------------------------------- documents ---


class Draft(TypedDict):
    """A message to send (``POST /v1/messages``, ``POST /v1/explain``)."""

    type: str
    purpose: str
    handling: str
    body: dict[str, Any]
    tlp: NotRequired[str]
    to: NotRequired[list[str]]
    type_version: NotRequired[int]
    legal_basis: NotRequired[str]
    due: NotRequired[str]
    in_reply_to: NotRequired[str]
    task_force: NotRequired[str]
    categories: NotRequired[list[str]]
    onward_allowed: NotRequired[bool]
    onward_exclude: NotRequired[list[str]]
    derived_from: NotRequired[str]
    attachments: NotRequired[list[str]]  # handles from upload_attachment


class SendResult(TypedDict):
    """What the node answered to a submission."""

    message_id: str
    conversation: str
    state: str
    digest: str
    categories: list[str]
    rule_id: str
    redactions: list[str]


class Explanation(TypedDict):
    """What pre-flight would decide about a draft (nothing is sealed or sent)."""

    allowed: bool
    rule_id: str
    reason: str
    categories: NotRequired[list[str]]
    redactions: NotRequired[list[str]]
    decisions: NotRequired[list[dict[str, Any]]]
    recipients: NotRequired[list[str]]


class InboxEntry(TypedDict):
    """A received message (``body`` and ``header`` only when opened with :meth:`show`)."""

    message_id: str
    type: str
    sender: str
    conversation: str
    in_reply_to: str | None
    due: str | None
    overdue: bool
    answered: bool
    received_at: str
    read_at: str | None
    digest: str
    direction: NotRequired[str]
    header: NotRequired[dict[str, Any]]
    body: NotRequired[dict[str, Any]]


class OutboxEntry(TypedDict):
    """A sent message and its submission state."""

    message_id: str
    type: str
    recipients: list[str]
    conversation: str
    in_reply_to: str | None
    due: str | None
    state: str
    attempts: int
    created_at: str
    updated_at: str
    last_error: str | None
    digest: str
    direction: NotRequired[str]
    header: NotRequired[dict[str, Any]]
    body: NotRequired[dict[str, Any]]


class EvidenceEntry(TypedDict):
    """One event of an evidence trail (``relay_accepted``, ``delivered``, ``read``...)."""

    subject_message_id: str | None
    kind: str
    actor: str
    at: str
    reason: str | None
    rule_id: str | None
    detail: str | None
    evidence_message_id: str | None
    direction: str
    digest_matches: bool | None


class EvidenceTrail(TypedDict):
    """The evidence trail of one message."""

    message_id: str
    direction: str
    state: str | None
    evidence: list[EvidenceEntry]


class Thread(TypedDict):
    """Every sent and received message of a conversation, in time order."""

    conversation: str
    messages: list[dict[str, Any]]


class Rejection(TypedDict):
    """A delivery the node refused."""

    digest: str
    sequence: int
    claimed_message_id: str | None
    claimed_sender: str | None
    claimed_type: str | None
    reason: str
    rule_id: str | None
    detail: str | None
    at: str


class Readiness(TypedDict):
    """``/readyz``: ``status`` is ``ready`` or ``not_ready``; ``detail`` says why."""

    status: str
    detail: str


class Event(TypedDict):
    """One change-feed event (``GET /v1/events``, the stream, a webhook's ``data``)."""

    seq: int
    type: str
    at: str
    message_id: str | None
    data: dict[str, Any]


class EventPage(TypedDict):
    """A page of the feed: ``next`` is the cursor to ask with next time."""

    feed: str
    events: list[Event]
    next: int
    last: int


class WebhookSubscription(TypedDict):
    """A webhook subscription (``secret`` only in the answer that created it)."""

    subscription_id: str
    system: str
    url: str
    event_types: list[str]
    cursor: int
    secret: NotRequired[str]
    created_at: NotRequired[str]
    deliveries: NotRequired[dict[str, int]]


class IssuedSecret(TypedDict):
    """A client's new token (shown once, when issued or rotated)."""

    client_id: str
    secret_id: str
    token: str


class ApiClient(TypedDict):
    """A registered API client (never with a secret)."""

    client_id: str
    system: str
    purpose: str
    scopes: list[str]
    created_at: str
    revoked_at: str | None
    secrets: list[dict[str, Any]]


class ReadReport(TypedDict):
    """The answer to a person's reading reported by a case system."""

    message_id: str
    read_at: str | None
    read_by: str | None


# ------------------------------------------------------------------- errors ---


class NodeError(Exception):
    """The node answered with an error document, or could not be reached.

    ``status`` is the HTTP status (``None``: unreachable). ``rule_id`` is set for policy
    denials; ``errors`` lists schema errors (``path``, ``validator``, ``message``).
    """

    def __init__(
        self,
        reason: str,
        detail: str,
        rule_id: str | None = None,
        *,
        status: int | None = None,
        errors: Sequence[Mapping[str, Any]] = (),
        retry_after: float | None = None,
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.rule_id = rule_id
        self.status = status
        self.errors = tuple(errors)
        self.retry_after = retry_after
        super().__init__(f"{reason}: {detail}")

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (unreachable, timed out, 503)."""
        return self.reason in _RETRIED_REASONS or self.status in _RETRIED_STATUSES


@dataclass(frozen=True, kw_only=True, slots=True)
class Retries:
    """How :class:`NodeClient` retries: ``attempts`` in all (1: never retry), waiting
    ``initial_delay`` seconds, then ``factor`` times longer each time, at most ``max_delay``
    (a node's ``Retry-After`` is honoured up to ``max_delay``)."""

    attempts: int = 4
    initial_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        backoff = self.initial_delay * self.factor ** (attempt - 1)
        return float(min(self.max_delay, max(backoff, retry_after or 0.0)))


NO_RETRIES: Final = Retries(attempts=1)


# ------------------------------------------------------------------- client ---


class NodeClient:
    """A client of one node's API: ``NodeClient("http://127.0.0.1:8470", token)``.

    ``retries``: see :class:`Retries` (``NO_RETRIES`` to see every failure at once);
    ``sleep`` waits between attempts (injected by tests)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: Retries = Retries(),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise NodeError("bad_request", f"the node URL must be http(s), not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._https = parsed.scheme == "https"
        self._netloc = parsed.netloc
        self._prefix = parsed.path.rstrip("/")
        # One kept-alive connection per thread (http.client connections are not thread-safe);
        # all of them listed, so close() (or the client's end) closes every one.
        self._local = threading.local()
        self._open: dict[http.client.HTTPConnection, threading.Thread] = {}
        self._open_lock = threading.Lock()
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self._sleep = sleep

    def __repr__(self) -> str:
        # Never the token.
        return f"NodeClient({self.base_url!r})"

    # ------------------------------------------------------------ messages

    def send(
        self, draft: Draft | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> SendResult:
        """Submit ``draft``; raises :class:`NodeError` (``policy_denied`` with ``rule_id``...).

        One logical send: every retry carries the same ``idempotency_key`` (a random one when
        not given), so the node stores the message at most once."""
        key = idempotency_key or new_idempotency_key()
        headers = {"Idempotency-Key": key}
        return cast(
            SendResult,
            self.call("POST", "/v1/messages", body=draft, headers=headers, retry=True),
        )

    def explain(self, draft: Draft | Mapping[str, Any]) -> Explanation:
        """What pre-flight would decide about ``draft`` (``allowed``, ``rule_id``, ...)."""
        return cast(Explanation, self.call("POST", "/v1/explain", body=draft, retry=True))

    def inbox(
        self,
        *,
        unread: bool = False,
        overdue: bool = False,
        conversation: str | None = None,
        limit: int | None = None,
    ) -> list[InboxEntry]:
        """Received messages, newest first, without bodies."""
        query = {"unread": "1" if unread else None, "overdue": "1" if overdue else None}
        query |= {"conversation": conversation, "limit": None if limit is None else str(limit)}
        document = self.call("GET", "/v1/inbox", query=query)
        return cast(list[InboxEntry], document["messages"])

    def outbox(
        self, *, pending: bool = False, evidence: bool = False, limit: int | None = None
    ) -> list[OutboxEntry]:
        """Sent messages with their state (``evidence=True``: include evidence we sent)."""
        query = {
            "pending": "1" if pending else None,
            "evidence": "1" if evidence else None,
            "limit": None if limit is None else str(limit),
        }
        document = self.call("GET", "/v1/outbox", query=query)
        return cast(list[OutboxEntry], document["messages"])

    def show(
        self, message_id: str, *, justification: str | None = None, actor: str | None = None
    ) -> dict[str, Any]:
        """One message. Opening a *received* one needs a ``justification`` and is logged."""
        headers = {}
        if justification:
            headers["X-Justification"] = justification
        if actor:
            headers["X-Actor"] = actor
        return cast(
            dict[str, Any], self.call("GET", _path("messages", message_id), headers=headers)
        )

    def evidence(self, message_id: str) -> EvidenceTrail:
        """The evidence trail of a sent or received message."""
        return cast(EvidenceTrail, self.call("GET", _path("messages", message_id) + "/evidence"))

    def thread(self, conversation: str) -> Thread:
        """Every sent and received message of ``conversation``."""
        return cast(Thread, self.call("GET", _path("threads", conversation)))

    def rejections(self, *, limit: int | None = None) -> list[Rejection]:
        """Deliveries this node refused."""
        query = {"limit": None if limit is None else str(limit)}
        return cast(list[Rejection], self.call("GET", "/v1/rejections", query=query)["rejections"])

    def mark_read(self, message_id: str, *, person: str, purpose: str) -> ReadReport:
        """Report that ``person`` read a received message (for ``purpose``): the node logs the
        consultation and, the first time, sends ``read`` evidence. (Fetching the body with a
        case system's credentials does neither: that is a transfer to the case system.)"""
        body = {"person": person, "purpose": purpose}
        path = _path("messages", message_id) + "/read"
        return cast(ReadReport, self.call("POST", path, body=body, retry=True))

    # ---------------------------------------------------------------- feed

    def events(
        self, *, after: int = 0, limit: int | None = None, types: Sequence[str] = ()
    ) -> EventPage:
        """Events after the cursor ``after``, oldest first (``types``: only these)."""
        return cast(
            EventPage, self.call("GET", "/v1/events", query=events_query(after, limit, types))
        )

    def follow(
        self, *, after: int = 0, types: Sequence[str] = (), poll: float = 1.0
    ) -> Iterator[Event]:
        """Every event after ``after``, forever, each once and in order (polling the feed;
        the async client streams instead). Keep the last ``seq`` to resume."""
        while True:
            page = self.events(after=after, limit=1000, types=types)
            yield from page["events"]
            after = page["next"]
            if not page["events"]:
                self._sleep(poll)

    # ------------------------------------------------------------ webhooks

    def add_webhook(
        self, url: str, *, system: str, event_types: Sequence[str] = (), after: int | None = None
    ) -> WebhookSubscription:
        """Subscribe ``url``; the answer's ``secret`` verifies deliveries (shown once)."""
        body: dict[str, Any] = {"url": url, "system": system, "event_types": list(event_types)}
        if after is not None:
            body["after"] = after
        return cast(WebhookSubscription, self.call("POST", "/v1/webhooks", body=body))

    def webhooks(self) -> list[WebhookSubscription]:
        return cast(list[WebhookSubscription], self.call("GET", "/v1/webhooks")["subscriptions"])

    def remove_webhook(self, subscription_id: str) -> None:
        self.call("DELETE", _path("webhooks", subscription_id), retry=True)

    def replay_webhook(self, subscription_id: str, *, after: int | None = None) -> int:
        """Queue again the failed deliveries (or every retained event after ``after``)."""
        body = {} if after is None else {"after": after}
        path = _path("webhooks", subscription_id) + "/replay"
        return int(self.call("POST", path, body=body, retry=True)["queued"])

    def webhook_deliveries(
        self, subscription_id: str, *, state: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        query = {"state": state, "limit": None if limit is None else str(limit)}
        path = _path("webhooks", subscription_id) + "/deliveries"
        return cast(list[dict[str, Any]], self.call("GET", path, query=query)["deliveries"])

    # ------------------------------------------------------------- clients

    def add_client(
        self, client_id: str, *, system: str, purpose: str, scopes: Sequence[str]
    ) -> IssuedSecret:
        body = {
            "client_id": client_id,
            "system": system,
            "purpose": purpose,
            "scopes": list(scopes),
        }
        return cast(IssuedSecret, self.call("POST", "/v1/clients", body=body))

    def clients(self) -> list[ApiClient]:
        return cast(list[ApiClient], self.call("GET", "/v1/clients")["clients"])

    def rotate_client(self, client_id: str, *, overlap_seconds: int | None = None) -> IssuedSecret:
        body = {} if overlap_seconds is None else {"overlap_seconds": overlap_seconds}
        return cast(
            IssuedSecret, self.call("POST", _path("clients", client_id) + "/rotate", body=body)
        )

    def revoke_client(self, client_id: str) -> None:
        self.call("POST", _path("clients", client_id) + "/revoke", retry=True)

    # ------------------------------------------------------------- lookups

    def lookup_register(
        self, kind: str, value: str, reference: str, *, actor: str | None = None
    ) -> dict[str, Any]:
        """Index an identifier of one of our records (the node stores it keyed only)."""
        headers = {"X-Actor": actor} if actor else None
        body = {"kind": kind, "value": value, "reference": reference}
        return cast(
            dict[str, Any], self.call("POST", "/v1/lookups/index", body=body, headers=headers)
        )

    def lookup_unregister(self, reference: str) -> int:
        """Remove every indexed identifier of ``reference``; how many entries went."""
        answer = self.call("DELETE", _path("lookups/index", reference))
        return int(answer["removed"])

    def lookup_query(
        self,
        to: str,
        identifiers: Sequence[tuple[str, str]],
        *,
        purpose: str = "investigation",
        case_ref: str | None = None,
        purpose_note: str | None = None,
        actor: str | None = None,
    ) -> str:
        """Ask ``to`` (an agency abroad) whether it holds records matching (kind, value)
        pairs; the node keys them before they leave. The query id."""
        body: dict[str, Any] = {
            "to": to,
            "identifiers": [{"kind": k, "value": v} for k, v in identifiers],
            "purpose": purpose,
        }
        if case_ref:
            body["case_ref"] = case_ref
        if purpose_note:
            body["purpose_note"] = purpose_note
        headers = {"X-Actor": actor} if actor else None
        return str(self.call("POST", "/v1/lookups", body=body, headers=headers)["query_id"])

    def lookup_answer(self, query_id: str) -> dict[str, Any]:
        """``{"status": pending|hit|no_hit|refused, "hits": [{probe, reference, agency}]}``."""
        return cast(dict[str, Any], self.call("GET", _path("lookups", query_id)))

    def lookup_wait(
        self, query_id: str, *, timeout: float = 10.0, interval: float = 0.05
    ) -> dict[str, Any]:
        """Poll :meth:`lookup_answer` until it is no longer pending (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.lookup_answer(query_id)
            if answer["status"] != "pending" or time.monotonic() >= deadline:
                return answer
            self._sleep(interval)

    def lookup_log(self) -> list[dict[str, Any]]:
        """The node's lookup log, newest first (no identifiers in it)."""
        return cast(list[dict[str, Any]], self.call("GET", "/v1/lookups/log")["entries"])

    # -------------------------------------------------------------- health

    def health(self) -> bool:
        """Whether the node process answers ``/healthz`` (asked once, never retried)."""
        try:
            return bool(self.call("GET", "/healthz", retry=False).get("status") == "ok")
        except NodeError:
            return False

    def ready(self) -> Readiness:
        """``/readyz`` as a document (never raises for ``503 not_ready``)."""
        try:
            return cast(Readiness, self.call("GET", "/readyz", retry=False))
        except NodeError as exc:
            if exc.status == 503 and exc.reason == "not_ready":
                return {"status": "not_ready", "detail": exc.detail}
            raise

    # ----------------------------------------------------------------- raw

    # --------------------------------------------------------- attachments

    def upload_attachment(
        self, path: str | os.PathLike[str], *, media_type: str, name: str | None = None
    ) -> dict[str, Any]:
        """Stream the file at ``path`` to the node (never read whole); the answer's
        ``attachment`` is the handle to put in a draft's ``attachments``."""
        file = Path(path)
        query = urllib.parse.urlencode({"name": name or file.name, "media_type": media_type})
        with file.open("rb") as body:
            status, raw, retry_after = self._stream(
                "POST",
                f"{self._prefix}/v1/attachments?{query}",
                body=body,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(file.stat().st_size),
                },
            )
        if status >= 400:
            raise _http_error(status, raw, retry_after)
        return cast(dict[str, Any], json.loads(raw))

    def attachments(self, message_id: str) -> list[dict[str, Any]]:
        """The files of a message: name, type, size, digest and state (never content)."""
        found: list[dict[str, Any]] = self.call("GET", f"/v1/messages/{message_id}/attachments")[
            "attachments"
        ]
        return found

    def download_attachment(
        self,
        message_id: str,
        attachment_id: str,
        dest: str | os.PathLike[str],
        *,
        justification: str | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> int:
        """Stream a file (or bytes ``start``..``end``-1 of it) into ``dest``; bytes written.
        A received file needs a ``justification`` (opening it is a consultation)."""
        headers = {"X-Justification": justification} if justification else {}
        if start is not None or end is not None:
            last = "" if end is None else str(end - 1)
            headers["Range"] = f"bytes={start or 0}-{last}"
        target = f"{self._prefix}/v1/messages/{message_id}/attachments/{attachment_id}"
        written = 0
        connection = self._fresh()
        try:
            connection.request("GET", target, headers={**self._auth(), **headers})
            response = connection.getresponse()
            if response.status >= 400:
                raise _http_error(response.status, response.read(), None)
            with Path(dest).open("wb") as out:
                while piece := response.read(256 * 1024):
                    out.write(piece)
                    written += len(piece)
        except (OSError, http.client.HTTPException) as exc:
            raise NodeError("node_unreachable", f"{self.base_url}: {exc}") from None
        finally:
            connection.close()
        return written

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}

    def _fresh(self) -> http.client.HTTPConnection:
        return (http.client.HTTPSConnection if self._https else http.client.HTTPConnection)(
            self._netloc, timeout=self.timeout
        )

    def _stream(
        self, method: str, target: str, *, body: BinaryIO, headers: Mapping[str, str]
    ) -> tuple[int, bytes, str | None]:
        connection = self._fresh()
        try:
            connection.request(method, target, body=body, headers={**self._auth(), **headers})
            response = connection.getresponse()
            return response.status, response.read(), response.getheader("Retry-After")
        except (OSError, http.client.HTTPException) as exc:
            raise NodeError("node_unreachable", f"{self.base_url}: {exc}") from None
        finally:
            connection.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str | None] | None = None,
        retry: bool | None = None,
    ) -> Any:
        """One request; the decoded JSON answer, or :class:`NodeError`. ``retry`` (default:
        for GET only) retries what :attr:`NodeError.retryable` says may succeed later; give
        it for a POST only when repeating it is safe (an Idempotency-Key, no side effect)."""
        attempts = self.retries.attempts if (method == "GET" if retry is None else retry) else 1
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._once(
                    method, path, body=body, headers=headers, query=query, reuse=attempts > 1
                )
            except NodeError as exc:
                if not exc.retryable or attempt >= attempts:
                    raise
                self._sleep(self.retries.delay(attempt, exc.retry_after))

    def _once(
        self,
        method: str,
        path: str,
        *,
        body: object,
        headers: Mapping[str, str] | None,
        query: Mapping[str, str | None] | None,
        reuse: bool = True,
    ) -> Any:
        """One request on this thread's kept-alive connection. ``reuse`` (a request safe to
        repeat): a kept connection the node closed meanwhile is replaced and the request sent
        again on a fresh one; otherwise the request goes on a fresh connection."""
        params = {k: v for k, v in (query or {}).items() if v is not None}
        target = self._prefix + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = json.dumps(body).encode("utf-8") if body is not None else None
        sent = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        while True:
            connection, kept = self._connection(fresh=not reuse)
            try:
                connection.request(method, target, body=data, headers=sent)
                response = connection.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._drop()
                if kept:
                    continue  # the node closed an idle kept connection: a fresh one
                raise NodeError("node_unreachable", f"{self.base_url}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:  # refused, timed out...
                self._drop()
                raise NodeError("node_unreachable", f"{self.base_url}: {exc}") from None
            if response.will_close:
                self._drop()
            if response.status >= 400:
                raise _http_error(response.status, raw, response.getheader("Retry-After"))
            return json.loads(raw or b"null")

    def _connection(self, *, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection and whether it was kept from an earlier request."""
        kept: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if kept is not None and not fresh:
            return kept, True
        self._drop()
        made = (http.client.HTTPSConnection if self._https else http.client.HTTPConnection)(
            self._netloc, timeout=self.timeout
        )
        self._local.connection = made
        with self._open_lock:
            # Connections of threads that ended are closed here (nobody can use them again).
            for connection, thread in list(self._open.items()):
                if not thread.is_alive():
                    connection.close()
                    del self._open[connection]
            self._open[made] = threading.current_thread()
        return made, False

    def _drop(self) -> None:
        kept: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if kept is not None:
            kept.close()
            self._local.connection = None
            with self._open_lock:
                self._open.pop(kept, None)

    def close(self) -> None:
        """Close every kept-alive connection (call it when no request is running)."""
        with self._open_lock:
            connections, self._open = list(self._open), {}
        for connection in connections:
            connection.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A client dropped without close(): no socket left to the garbage collector.
        if hasattr(self, "_open"):
            self.close()


def events_query(after: int, limit: int | None, types: Sequence[str]) -> dict[str, str | None]:
    """The query of ``GET /v1/events`` (shared with the async client)."""
    return {
        "after": str(after),
        "limit": None if limit is None else str(limit),
        "types": ",".join(types) or None,
    }


class WebhookVerificationError(NodeError):
    """A webhook delivery that does not verify (bad signature, stale timestamp, no headers)."""

    def __init__(self, detail: str) -> None:
        super().__init__("webhook_invalid", detail)


# Standard Webhooks header shapes (bounded: nothing unverified is parsed beyond them).
_WEBHOOK_ID: Final = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,255}")  # printable, no comma
_WEBHOOK_TS: Final = re.compile(r"[0-9]{1,12}")


def webhook_signer(secret: str) -> Webhook:
    """The Standard Webhooks signer of a subscription's ``secret`` (``whsec_`` + base64 of 16
    bytes or more). Checked strictly: the ``standardwebhooks`` library skips characters that
    are not base64, so a mangled secret would otherwise become a short or empty key and every
    verification would fail for a reason nobody could see."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if not secret.startswith("whsec_") or len(key) < 16:
        raise WebhookVerificationError(
            "the webhook secret is not a whsec_ base64 secret of 16 bytes or more"
        )
    return Webhook(key)


def verify_webhook_delivery(
    signer: Webhook,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float,
    tolerance: float = 300.0,
) -> tuple[str, dict[str, Any]]:
    """``(webhook-id, payload)`` of a verified delivery, else :class:`WebhookVerificationError`
    saying why. The one verification both the SDK and the reference receiver use.

    Checks, before parsing anything: the three headers are there, the timestamp is within
    ``tolerance`` seconds of ``now`` (a replay of an old delivery fails whatever its
    signature), and one ``v1`` signature is the HMAC-SHA256 of ``id.timestamp.body``
    (``standardwebhooks`` computes it), compared in constant time; only then is the body
    parsed, and it must be a webhook event (``type`` and ``data``)."""
    lower = {k.lower(): v for k, v in headers.items()}
    unverified_id = lower.get("webhook-id", "")
    unverified_ts = lower.get("webhook-timestamp", "")
    unverified_signatures = lower.get("webhook-signature", "")
    if not _WEBHOOK_ID.fullmatch(unverified_id) or not unverified_signatures:
        raise WebhookVerificationError("missing or malformed webhook-id or webhook-signature")
    if not _WEBHOOK_TS.fullmatch(unverified_ts):
        raise WebhookVerificationError("webhook-timestamp is not a Unix time")
    age = now - int(unverified_ts)
    if abs(age) > tolerance:
        when = "too old" if age > 0 else "in the future"
        raise WebhookVerificationError(f"webhook-timestamp {when} ({int(age)} s): replay?")
    try:
        text = body.decode("utf-8")
    except UnicodeError:
        raise WebhookVerificationError("body is not UTF-8") from None
    signed_at = datetime.fromtimestamp(int(unverified_ts), tz=UTC)
    expected = base64.b64decode(signer.sign(unverified_id, signed_at, text).split(",", 1)[1])
    matched = False
    for candidate in unverified_signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        matched = hmac.compare_digest(expected, given) or matched
    if not matched:
        raise WebhookVerificationError("no valid v1 signature")
    try:
        payload = json.loads(text)
    except ValueError:
        raise WebhookVerificationError("the signed body is not JSON") from None
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("type"), str)
        or not isinstance(payload.get("data"), dict)
    ):
        raise WebhookVerificationError("the signed body is not a webhook event")
    return unverified_id, payload


def verify_webhook(
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float | None = None,
    tolerance: float = 300.0,
) -> Event:
    """Verify a Standard Webhooks delivery from a node and return its event
    (:func:`verify_webhook_delivery` with the wall clock unless ``now`` is given). Raises
    :class:`WebhookVerificationError`. Deduplicate on ``webhook-id`` afterwards: delivery is
    at least once."""
    current = time.time() if now is None else now
    _, payload = verify_webhook_delivery(
        webhook_signer(secret), body, headers, now=current, tolerance=tolerance
    )
    return cast(Event, payload["data"])


def new_idempotency_key() -> str:
    """A fresh Idempotency-Key for one logical send (random; never derived from content)."""
    return str(uuid.uuid4())


def _path(collection: str, identifier: str) -> str:
    return f"/v1/{collection}/{urllib.parse.quote(identifier, safe='')}"


def _http_error(status: int, body: bytes, retry_after_header: str | None) -> NodeError:
    try:
        raw = json.loads(body)
    except ValueError:
        raw = None
    retry_after = _retry_after(retry_after_header)
    if isinstance(raw, dict) and isinstance(raw.get("error"), dict):
        error = raw["error"]
        rule_id = error.get("rule_id")
        return NodeError(
            str(error.get("reason")),
            str(error.get("detail")),
            rule_id if isinstance(rule_id, str) else None,
            status=status,
            errors=[e for e in error.get("errors") or () if isinstance(e, dict)],
            retry_after=retry_after,
        )
    if isinstance(raw, dict) and raw.get("status") == "not_ready":
        # /readyz answers 503 with its own document, not an error document.
        return NodeError("not_ready", str(raw.get("detail")), status=status)
    return NodeError(
        "http_error", f"HTTP {status} from the node", status=status, retry_after=retry_after
    )


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is not used by the node: ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
