"""The asynchronous twin of :mod:`broker.sdk` (aiohttp): the same types, the same errors.

What it is for
    Case-system integrations that run on asyncio talk to their node through
    :class:`AsyncNodeClient`: send drafts (with derived data), read the inbox and outbox,
    report a person's reading, follow the change feed -- paged (:meth:`AsyncNodeClient.events`)
    or streamed live over server-sent events (:meth:`AsyncNodeClient.stream`, resuming from the
    last ``seq``) -- and manage webhooks and API clients. Webhook deliveries are verified with
    :func:`broker.sdk.verify_webhook` (re-exported here).

Errors and retries
    As :mod:`broker.sdk`: every failure is one :class:`~broker.sdk.NodeError`; GETs and sends
    (with their Idempotency-Key) are retried when the node is unreachable or answers 503.

What it must never do
    Read keys or the node's database, log message content, or print a token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import aiohttp

from broker.sdk import (
    DEFAULT_TIMEOUT,
    NO_RETRIES,
    ApiClient,
    Draft,
    Event,
    EventPage,
    EvidenceTrail,
    Explanation,
    InboxEntry,
    IssuedSecret,
    NodeError,
    OutboxEntry,
    ReadReport,
    Rejection,
    Retries,
    SendResult,
    Thread,
    WebhookSubscription,
    WebhookVerificationError,
    _http_error,
    _path,
    events_query,
    new_idempotency_key,
    verify_webhook,
)

__all__ = [
    "NO_RETRIES",
    "AsyncNodeClient",
    "NodeError",
    "Retries",
    "WebhookVerificationError",
    "verify_webhook",
]


class AsyncNodeClient:
    """``async with AsyncNodeClient("http://127.0.0.1:8470", token) as node: ...``"""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: Retries | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise NodeError("bad_request", f"the node URL must be http(s), not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries or Retries()
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"AsyncNodeClient({self.base_url!r})"  # never the token

    async def __aenter__(self) -> AsyncNodeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    # ------------------------------------------------------------ messages

    async def send(
        self, draft: Draft | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> SendResult:
        """Submit ``draft`` (one logical send: retries carry the same Idempotency-Key)."""
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        answer = await self.call("POST", "/v1/messages", body=draft, headers=headers, retry=True)
        return cast(SendResult, answer)

    async def explain(self, draft: Draft | Mapping[str, Any]) -> Explanation:
        return cast(Explanation, await self.call("POST", "/v1/explain", body=draft, retry=True))

    async def inbox(
        self, *, unread: bool = False, conversation: str | None = None, limit: int | None = None
    ) -> list[InboxEntry]:
        query = {
            "unread": "1" if unread else None,
            "conversation": conversation,
            "limit": None if limit is None else str(limit),
        }
        return cast(
            list[InboxEntry], (await self.call("GET", "/v1/inbox", query=query))["messages"]
        )

    async def outbox(self, *, pending: bool = False, limit: int | None = None) -> list[OutboxEntry]:
        query = {
            "pending": "1" if pending else None,
            "limit": None if limit is None else str(limit),
        }
        answer = await self.call("GET", "/v1/outbox", query=query)
        return cast(list[OutboxEntry], answer["messages"])

    async def show(
        self, message_id: str, *, justification: str | None = None, actor: str | None = None
    ) -> dict[str, Any]:
        """One message. With a case system's client: a transfer to it (no read evidence)."""
        headers = {}
        if justification:
            headers["X-Justification"] = justification
        if actor:
            headers["X-Actor"] = actor
        answer = await self.call("GET", _path("messages", message_id), headers=headers)
        return cast(dict[str, Any], answer)

    async def evidence(self, message_id: str) -> EvidenceTrail:
        answer = await self.call("GET", _path("messages", message_id) + "/evidence")
        return cast(EvidenceTrail, answer)

    async def thread(self, conversation: str) -> Thread:
        return cast(Thread, await self.call("GET", _path("threads", conversation)))

    async def rejections(self, *, limit: int | None = None) -> list[Rejection]:
        query = {"limit": None if limit is None else str(limit)}
        answer = await self.call("GET", "/v1/rejections", query=query)
        return cast(list[Rejection], answer["rejections"])

    async def mark_read(self, message_id: str, *, person: str, purpose: str) -> ReadReport:
        """Report a person's reading: consultation logged, ``read`` evidence the first time."""
        path = _path("messages", message_id) + "/read"
        body = {"person": person, "purpose": purpose}
        return cast(ReadReport, await self.call("POST", path, body=body, retry=True))

    # ---------------------------------------------------------------- feed

    async def events(
        self, *, after: int = 0, limit: int | None = None, types: Sequence[str] = ()
    ) -> EventPage:
        query = events_query(after, limit, types)
        return cast(EventPage, await self.call("GET", "/v1/events", query=query))

    async def stream(
        self, *, after: int = 0, types: Sequence[str] = ()
    ) -> AsyncGenerator[Event, None]:
        """Every event after ``after``, live (server-sent events), each once and in order.
        A dropped connection is resumed from the last event seen (``Last-Event-ID``)."""
        attempt = 0
        while True:
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
            query = {k: v for k, v in events_query(after, None, types).items() if v}
            try:
                async with self._client().get(
                    self.base_url + "/v1/events/stream",
                    params=query,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
                ) as response:
                    if response.status >= 400:
                        raise _http_error(
                            response.status,
                            await response.read(),
                            response.headers.get("Retry-After"),
                        )
                    attempt = 0
                    data: list[str] = []
                    async for raw in response.content:
                        line = raw.decode("utf-8").rstrip("\r\n")
                        if line.startswith("data:"):
                            data.append(line[5:].removeprefix(" "))
                        elif not line and data:
                            event = cast(Event, json.loads("\n".join(data)))
                            data = []
                            after = event["seq"]
                            yield event
            except (aiohttp.ClientError, TimeoutError) as exc:
                attempt += 1
                if attempt >= self.retries.attempts:
                    raise NodeError("node_unreachable", f"{self.base_url}: {exc}") from None
                await asyncio.sleep(self.retries.delay(attempt))

    # ------------------------------------------------------------ webhooks

    async def add_webhook(
        self, url: str, *, system: str, event_types: Sequence[str] = (), after: int | None = None
    ) -> WebhookSubscription:
        body: dict[str, Any] = {"url": url, "system": system, "event_types": list(event_types)}
        if after is not None:
            body["after"] = after
        return cast(WebhookSubscription, await self.call("POST", "/v1/webhooks", body=body))

    async def webhooks(self) -> list[WebhookSubscription]:
        answer = await self.call("GET", "/v1/webhooks")
        return cast(list[WebhookSubscription], answer["subscriptions"])

    async def remove_webhook(self, subscription_id: str) -> None:
        await self.call("DELETE", _path("webhooks", subscription_id), retry=True)

    async def replay_webhook(self, subscription_id: str, *, after: int | None = None) -> int:
        body = {} if after is None else {"after": after}
        path = _path("webhooks", subscription_id) + "/replay"
        return int((await self.call("POST", path, body=body, retry=True))["queued"])

    # ------------------------------------------------------------- clients

    async def add_client(
        self, client_id: str, *, system: str, purpose: str, scopes: Sequence[str]
    ) -> IssuedSecret:
        body = {
            "client_id": client_id,
            "system": system,
            "purpose": purpose,
            "scopes": list(scopes),
        }
        return cast(IssuedSecret, await self.call("POST", "/v1/clients", body=body))

    async def clients(self) -> list[ApiClient]:
        return cast(list[ApiClient], (await self.call("GET", "/v1/clients"))["clients"])

    async def rotate_client(
        self, client_id: str, *, overlap_seconds: int | None = None
    ) -> IssuedSecret:
        body = {} if overlap_seconds is None else {"overlap_seconds": overlap_seconds}
        path = _path("clients", client_id) + "/rotate"
        return cast(IssuedSecret, await self.call("POST", path, body=body))

    async def revoke_client(self, client_id: str) -> None:
        await self.call("POST", _path("clients", client_id) + "/revoke", retry=True)

    # ----------------------------------------------------------------- raw

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str | None] | None = None,
        retry: bool | None = None,
    ) -> Any:
        """One request (retried as :meth:`broker.sdk.NodeClient.call` does)."""
        attempts = self.retries.attempts if (method == "GET" if retry is None else retry) else 1
        params = {k: v for k, v in (query or {}).items() if v is not None}
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._once(method, path, body=body, headers=headers, params=params)
            except NodeError as exc:
                if not exc.retryable or attempt >= attempts:
                    raise
                await asyncio.sleep(self.retries.delay(attempt, exc.retry_after))

    async def _once(
        self,
        method: str,
        path: str,
        *,
        body: object,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str],
    ) -> Any:
        sent = {"Accept": "application/json", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            sent["Content-Type"] = "application/json"
        try:
            async with self._client().request(
                method, self.base_url + path, data=data, headers=sent, params=params
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise _http_error(response.status, raw, response.headers.get("Retry-After"))
                return json.loads(raw or b"null")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NodeError("node_unreachable", f"{self.base_url}: {exc}") from None
