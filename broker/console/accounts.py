"""People who may use the console: accounts, roles, passwords, second factor, lockout.

What it is for
    One row per person in the node's store (``console_users``). Passwords are hashed with
    argon2id (``argon2-cffi`` defaults: RFC 9106 low-memory profile); an optional TOTP secret
    (``pyotp``) is the second factor. After ``lockout_attempts`` failed sign-ins in a row the
    account is locked for ``lockout_minutes``. Every change and every sign-in attempt writes an
    audit record in the same transaction (an unlogged change cannot happen).

What it must never do
    Store or log a password, say whether a user name exists (the same answer for an unknown
    name and a wrong password), or let a disabled or locked account sign in.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from broker.core.audit import ActorKind, AuditEntry, Operation
from broker.errors import ConfigError
from broker.node import audit_log
from broker.node.model import iso
from broker.node.store import Store

USERNAME_RE: Final = re.compile(r"[a-z][a-z0-9._-]{1,63}")
MIN_PASSWORD: Final = 12
LANGUAGES: Final = ("en", "de", "uk")
_HASHER: Final = PasswordHasher()  # argon2id
# Verified when the name is unknown, so that both failures take the same time.
_DUMMY_HASH: Final = _HASHER.hash("casebridge-no-such-user")


_RESET_KEEP_TOTP: Final = (
    "UPDATE console_users SET password_hash = ?, failed_logins = 0, locked_until = NULL, "
    "updated_at = ? WHERE username = ?"
)
_RESET_NEW_TOTP: Final = (
    "UPDATE console_users SET password_hash = ?, failed_logins = 0, locked_until = NULL, "
    "totp_secret = ?, updated_at = ? WHERE username = ?"
)


class Role(StrEnum):
    """What a person may do in the console."""

    OFFICER = "officer"  # read, send, answer
    SUPERVISOR = "supervisor"  # also release four-eyes messages and manage accounts
    AUDITOR = "auditor"  # audit log and statistics, never message content


@dataclass(frozen=True, kw_only=True, slots=True)
class User:
    """A console account as the console sees it (never the password hash)."""

    username: str
    display_name: str
    role: Role
    disabled: bool
    totp: bool
    locked_until: str | None
    time_zone: str
    language: str
    email: str | None
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "display_name": self.display_name,
            "role": self.role.value,
            "disabled": self.disabled,
            "totp": self.totp,
            "locked_until": self.locked_until,
            "time_zone": self.time_zone,
            "language": self.language,
            "email": self.email,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class SignIn:
    """The outcome of a sign-in attempt: the user, or why not (``refused``: a short code)."""

    user: User | None
    refused: str | None = None


class AccountError(ConfigError):
    """A console account could not be made or changed as asked (bad name, weak password...)."""


def _user(row: sqlite3.Row | tuple[Any, ...]) -> User:
    return User(
        username=row[0],
        display_name=row[1],
        role=Role(row[2]),
        disabled=bool(row[3]),
        totp=row[4] is not None,
        locked_until=row[5],
        time_zone=row[6],
        language=row[7],
        email=row[8],
        created_at=row[9],
    )


_COLUMNS: Final = (
    "username, display_name, role, disabled, totp_secret, locked_until, time_zone, language, "
    "email, created_at"
)


def check_password(password: str) -> None:
    """A password long enough to resist guessing (length over composition rules, NIST 800-63B)."""
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")


def check_zone(zone: str) -> str:
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise AccountError(f"unknown time zone {zone!r}") from None
    return zone


class Accounts:
    """Console accounts in the node's store; ``agency`` names the node in audit records."""

    def __init__(
        self,
        store: Store,
        *,
        agency: str,
        clock: Callable[[], datetime],
        lockout_attempts: int = 5,
        lockout_minutes: int = 15,
        hasher: PasswordHasher = _HASHER,
    ) -> None:
        self._hasher = hasher
        self._store = store
        self._agency = agency
        self._clock = clock
        self._attempts = lockout_attempts
        self._lock_for = timedelta(minutes=lockout_minutes)

    # ------------------------------------------------------------------ audit

    def audit_entry(
        self,
        operation: Operation,
        *,
        actor: str,
        detail: str,
        justification: str | None = None,
        message_id: str | None = None,
        message_type: str | None = None,
    ) -> AuditEntry:
        return AuditEntry(
            operation=operation,
            actor=actor,
            actor_kind=ActorKind.PERSON,
            agency=self._agency,
            justification=justification,
            message_id=message_id,
            message_type=message_type,
            detail=detail,
        )

    def audit(self, operation: Operation, *, actor: str, detail: str, **more: Any) -> None:
        """Write one audit record under ``actor`` (a console action that changes nothing else)."""
        entry = self.audit_entry(operation, actor=actor, detail=detail, **more)
        with self._store.transaction() as db:
            audit_log.append(db, [entry], now=self._clock())

    # ----------------------------------------------------------------- reading

    def get(self, username: str) -> User | None:
        row = self._store.query(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM console_users WHERE username = ?",  # noqa: S608
                (username,),
            ).fetchone()
        )
        return _user(row) if row is not None else None

    def all(self) -> list[User]:
        rows = self._store.query(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM console_users ORDER BY username"  # noqa: S608
            ).fetchall()
        )
        return [_user(r) for r in rows]

    def email_recipients(self, roles: tuple[Role, ...]) -> list[str]:
        """E-mail addresses of enabled people with one of ``roles`` (for notices)."""
        return [u.email for u in self.all() if u.email and not u.disabled and u.role in roles]

    # ----------------------------------------------------------------- changes

    def add(
        self,
        username: str,
        *,
        display_name: str,
        role: Role,
        password: str,
        totp: bool = False,
        time_zone: str = "UTC",
        language: str = "en",
        email: str | None = None,
        by: str,
    ) -> str | None:
        """Create an account; returns the TOTP secret to hand over (when ``totp``)."""
        if not USERNAME_RE.fullmatch(username):
            raise AccountError("a user name is 2-64 of a-z 0-9 . _ - starting with a letter")
        if language not in LANGUAGES:
            raise AccountError(f"language must be one of {', '.join(LANGUAGES)}")
        check_password(password)
        check_zone(time_zone)
        secret = pyotp.random_base32() if totp else None
        now = self._clock()
        entry = self.audit_entry(
            Operation.ADMINISTRATION, actor=by, detail=f"account {username} added as {role.value}"
        )
        with self._store.transaction() as db:
            try:
                db.execute(
                    f"INSERT INTO console_users ({_COLUMNS}, password_hash, updated_at) "  # noqa: S608
                    "VALUES (?, ?, ?, 0, ?, NULL, ?, ?, ?, ?, ?, ?)",
                    (
                        username,
                        display_name,
                        role.value,
                        secret,
                        time_zone,
                        language,
                        email,
                        iso(now),
                        self._hasher.hash(password),
                        iso(now),
                    ),
                )
            except sqlite3.IntegrityError:
                raise AccountError(f"an account {username!r} exists already") from None
            audit_log.append(db, [entry], now=now)
        return secret

    def _change(self, username: str, detail: str, by: str, sql: str, args: tuple[Any, ...]) -> None:
        now = self._clock()
        entry = self.audit_entry(Operation.ADMINISTRATION, actor=by, detail=detail)
        with self._store.transaction() as db:
            changed = db.execute(sql, (*args, iso(now), username)).rowcount
            if changed != 1:
                raise AccountError(f"no account {username!r}")
            audit_log.append(db, [entry], now=now)

    def disable(self, username: str, *, by: str) -> None:
        self._change(
            username,
            f"account {username} disabled",
            by,
            "UPDATE console_users SET disabled = 1, updated_at = ? WHERE username = ?",
            (),
        )

    def enable(self, username: str, *, by: str) -> None:
        self._change(
            username,
            f"account {username} enabled",
            by,
            "UPDATE console_users SET disabled = 0, failed_logins = 0, locked_until = NULL, "
            "updated_at = ? WHERE username = ?",
            (),
        )

    def reset(self, username: str, *, password: str, totp: bool | None, by: str) -> str | None:
        """New password (and a new TOTP secret, or none); unlocks. Returns the new secret."""
        check_password(password)
        secret = pyotp.random_base32() if totp else None
        keep = totp is None
        self._change(
            username,
            f"account {username} reset"
            + ("" if keep else f" (second factor {'on' if totp else 'off'})"),
            by,
            _RESET_KEEP_TOTP if keep else _RESET_NEW_TOTP,
            (self._hasher.hash(password),) if keep else (self._hasher.hash(password), secret),
        )
        return secret

    def set_role(self, username: str, role: Role, *, by: str) -> None:
        self._change(
            username,
            f"account {username} role set to {role.value}",
            by,
            "UPDATE console_users SET role = ?, updated_at = ? WHERE username = ?",
            (role.value,),
        )

    def set_preferences(self, username: str, *, time_zone: str, language: str) -> None:
        check_zone(time_zone)
        if language not in LANGUAGES:
            raise AccountError(f"language must be one of {', '.join(LANGUAGES)}")
        self._change(
            username,
            f"preferences of {username}: {time_zone}, {language}",
            username,
            "UPDATE console_users SET time_zone = ?, language = ?, updated_at = ? "
            "WHERE username = ?",
            (time_zone, language),
        )

    # ----------------------------------------------------------------- sign in

    def sign_in(self, username: str, password: str, code: str = "") -> SignIn:
        """Check a sign-in attempt; count failures, lock after too many, audit every attempt."""
        now = self._clock()
        row = self._store.query(
            lambda db: db.execute(
                "SELECT password_hash, totp_secret, disabled, failed_logins, locked_until "
                "FROM console_users WHERE username = ?",
                (username,),
            ).fetchone()
        )
        if row is None:
            _verify(self._hasher, _DUMMY_HASH, password)
            # No record under an unknown name: it is not a person of ours (and the log must
            # not fill with whatever strangers type); the node's log shows the attempt.
            return SignIn(user=None, refused="bad_credentials")
        password_hash, secret, disabled, failed, locked_until = row
        if locked_until is not None and locked_until > iso(now):
            self.audit(Operation.ACCESS, actor=username, detail="sign-in refused: locked")
            return SignIn(user=None, refused="locked")
        good = _verify(self._hasher, password_hash, password)
        if good and secret is not None:
            good = bool(code) and pyotp.TOTP(secret).verify(code, for_time=now, valid_window=1)
        if disabled:
            self.audit(Operation.ACCESS, actor=username, detail="sign-in refused: disabled")
            return SignIn(user=None, refused="bad_credentials")
        if not good:
            failed += 1
            lock = failed >= self._attempts
            until = iso(now + self._lock_for) if lock else None
            detail = "sign-in failed" + (f"; locked until {until}" if lock else "")
            entry = self.audit_entry(Operation.ACCESS, actor=username, detail=detail)
            with self._store.transaction() as db:
                db.execute(
                    "UPDATE console_users SET failed_logins = ?, locked_until = ? "
                    "WHERE username = ?",
                    (0 if lock else failed, until, username),
                )
                audit_log.append(db, [entry], now=now)
            return SignIn(user=None, refused="locked" if lock else "bad_credentials")
        entry = self.audit_entry(Operation.ACCESS, actor=username, detail="signed in")
        with self._store.transaction() as db:
            db.execute(
                "UPDATE console_users SET failed_logins = 0, locked_until = NULL "
                "WHERE username = ?",
                (username,),
            )
            if self._hasher.check_needs_rehash(password_hash):
                db.execute(
                    "UPDATE console_users SET password_hash = ? WHERE username = ?",
                    (self._hasher.hash(password), username),
                )
            audit_log.append(db, [entry], now=now)
        return SignIn(user=self.get(username))

    def totp_uri(self, username: str, secret: str, issuer: str) -> str:
        return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=issuer)


def _verify(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
