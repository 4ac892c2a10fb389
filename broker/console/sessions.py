"""Server-side console sessions: an opaque cookie value, everything else in memory here.

What it is for
    A session holds who signed in, their CSRF token, when it started and when it was last
    used. It ends at logout, after ``idle`` without a request, or ``absolute`` after sign-in,
    whichever comes first. Sessions live in the console process: a restart signs everybody
    out (fail closed; nothing to steal from the database). The cookie carries a 256-bit random
    value; the table is keyed by its SHA-256, so a memory dump of keys is no cookie.

What it must never do
    Accept a session past its limits, keep a session id across sign-in (a new id is issued,
    against session fixation), or compare tokens in non-constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

COOKIE: Final = "casebridge_console"
MAX_SESSIONS: Final = 10_000  # the oldest are dropped beyond this (memory bound)


@dataclass(frozen=True, kw_only=True, slots=True)
class Session:
    """One browser's session. ``username`` is None before sign-in (it still has a CSRF token,
    so the sign-in form itself is protected)."""

    key: str
    csrf: str
    username: str | None
    started: datetime
    last_seen: datetime
    language: str | None = None

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf, token)


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()


class Sessions:
    """The session table of one console process."""

    def __init__(
        self, *, idle: timedelta, absolute: timedelta, clock: Callable[[], datetime]
    ) -> None:
        self._idle = idle
        self._absolute = absolute
        self._clock = clock
        self._table: dict[str, Session] = {}

    def new(self, username: str | None, *, language: str | None = None) -> tuple[str, Session]:
        """A fresh session; returns the cookie value (shown to the browser once) and the session."""
        cookie = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(
            key=_key(cookie),
            csrf=secrets.token_urlsafe(32),
            username=username,
            started=now,
            last_seen=now,
            language=language,
        )
        if len(self._table) >= MAX_SESSIONS:
            # Sign-in pages (no person yet) go first: a flood of them must not sign people out.
            anonymous = [s for s in self._table.values() if s.username is None]
            pool = anonymous or list(self._table.values())
            oldest = min(pool, key=lambda s: s.last_seen)
            del self._table[oldest.key]
        self._table[session.key] = session
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        """The live session for ``cookie`` (its idle time restarts), or None (expired: dropped)."""
        if not cookie:
            return None
        key = _key(cookie)
        session = self._table.get(key)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > self._idle or now - session.started > self._absolute:
            del self._table[key]
            return None
        session = replace(session, last_seen=now)
        self._table[key] = session
        return session

    def set_language(self, session: Session, language: str) -> None:
        if session.key in self._table:
            self._table[session.key] = replace(session, language=language)

    def end(self, session: Session) -> None:
        self._table.pop(session.key, None)

    def end_all(self, username: str) -> int:
        """Sign a person out everywhere (account disabled or reset)."""
        keys = [k for k, s in self._table.items() if s.username == username]
        for key in keys:
            del self._table[key]
        return len(keys)

    def alive(self, key: str) -> bool:
        """Whether a session (by its key) is still in the table (expiry is checked on use)."""
        return key in self._table

    def __len__(self) -> int:
        return len(self._table)
