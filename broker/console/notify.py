"""E-mail notices of new and overdue messages, without content, through the SMTP server the
settings name.

What it is for
    People with an e-mail address on their account (officers and supervisors) get one short
    mail per message that arrives, and one per request of ours to answer that becomes overdue
    (its due date passed, no answer sent): its type in plain words, its handling code and TLP
    marking, the due date for an overdue one, and a link to the console. Nothing else: not
    the sender, not a subject line from the body, not a name. The mail may cross systems the
    case data must never cross. Overdue notices are recorded in the store (table
    ``console_notices``), so each request gets one, restarts included.

What it must never do
    Put message content in a mail, block the event loop (smtplib runs in a worker thread), or
    stop the console when the mail server is down (a failed notice is logged and dropped: the
    inbox and its live counts remain the record).
"""

from __future__ import annotations

import asyncio
import smtplib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Final

import structlog

from broker.console.accounts import Accounts, Role
from broker.console.queries import ANSWERED_SQL
from broker.console.settings import SmtpSettings
from broker.node.store import Store

BATCH: Final = 100


@dataclass(frozen=True, kw_only=True, slots=True)
class Arrival:
    """What a notice may say about a received message."""

    rowid: int
    message_id: str
    type: str
    handling: str
    tlp: str
    due: str = ""  # overdue notices only


def arrivals_after(store: Store, rowid: int) -> list[Arrival]:
    def run(db: sqlite3.Connection) -> list[Arrival]:
        rows = db.execute(
            "SELECT rowid, id, type, json_extract(header, '$.handling'), "
            "json_extract(header, '$.tlp') FROM inbox WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (rowid, BATCH),
        ).fetchall()
        return [
            Arrival(rowid=r[0], message_id=r[1], type=r[2], handling=r[3] or "", tlp=r[4] or "")
            for r in rows
        ]

    return store.query(run)


def last_rowid(store: Store) -> int:
    return int(
        store.query(
            lambda db: db.execute("SELECT coalesce(max(rowid), 0) FROM inbox").fetchone()[0]
        )
    )


def overdue_unnoticed(store: Store, today: str) -> list[Arrival]:
    """Received requests past their due date, not answered, without an overdue notice yet."""

    def run(db: sqlite3.Connection) -> list[Arrival]:
        rows = db.execute(
            "SELECT rowid, id, type, json_extract(header, '$.handling'), "  # noqa: S608
            "json_extract(header, '$.tlp'), due FROM inbox "
            f"WHERE due IS NOT NULL AND due < ? AND NOT {ANSWERED_SQL} "
            "AND NOT EXISTS (SELECT 1 FROM console_notices n "
            "WHERE n.message_id = inbox.id AND n.kind = 'overdue') "
            "ORDER BY due, rowid LIMIT ?",
            (today, BATCH),
        ).fetchall()
        return [
            Arrival(
                rowid=r[0],
                message_id=r[1],
                type=r[2],
                handling=r[3] or "",
                tlp=r[4] or "",
                due=r[5],
            )
            for r in rows
        ]

    return store.query(run)


def record_noticed(store: Store, message_ids: list[str], kind: str, at: str) -> None:
    with store.transaction() as db:
        db.executemany(
            "INSERT OR IGNORE INTO console_notices (message_id, kind, sent_at) VALUES (?, ?, ?)",
            [(m, kind, at) for m in message_ids],
        )


def overdue_notice(
    item: Arrival, *, to: str, sender: str, agency: str, url: str, title: str
) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = f"Casebridge {agency}: overdue {title} ({item.handling}, TLP:{item.tlp})"
    mail.set_content(
        f"A request to {agency} is overdue: it was due on {item.due} and has no answer yet.\n\n"
        f"Type: {title}\nHandling code: {item.handling}\nTLP: {item.tlp}\n\n"
        f"Open it in the console (you will be asked why you open it):\n"
        f"{url}/messages/{item.message_id}\n"
    )
    return mail


def notice(
    arrival: Arrival, *, to: str, sender: str, agency: str, url: str, title: str
) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = f"Casebridge {agency}: new {title} ({arrival.handling}, TLP:{arrival.tlp})"
    mail.set_content(
        f"A new message arrived for {agency}.\n\n"
        f"Type: {title}\nHandling code: {arrival.handling}\nTLP: {arrival.tlp}\n\n"
        f"Open it in the console (you will be asked why you open it):\n"
        f"{url}/messages/{arrival.message_id}\n"
    )
    return mail


def send_mail(smtp: SmtpSettings, mails: list[EmailMessage]) -> None:
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
        if smtp.starttls:
            client.starttls()
        for mail in mails:
            client.send_message(mail)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Notices:
    """What one notifier mails with, and to whom."""

    store: Store
    accounts: Accounts
    smtp: SmtpSettings
    agency: str
    url: str
    title_of: Callable[[str], str]
    log: Any

    async def people(self) -> list[str]:
        return await asyncio.to_thread(
            self.accounts.email_recipients, (Role.OFFICER, Role.SUPERVISOR)
        )


async def run_notices(
    *,
    store: Store,
    accounts: Accounts,
    smtp: SmtpSettings,
    agency: str,
    url: str,
    title_of: Callable[[str], str],
    today: Callable[[], str] | None = None,
    interval: float = 10.0,
) -> None:
    """Every ``interval`` seconds: mail a notice for every message received after start and,
    with ``today`` (the node's date), one for every request that became overdue."""
    ctx = _Notices(
        store=store,
        accounts=accounts,
        smtp=smtp,
        agency=agency,
        url=url,
        title_of=title_of,
        log=structlog.get_logger("casebridge.console").bind(agency=agency),
    )
    seen = await asyncio.to_thread(last_rowid, store)
    while True:
        await asyncio.sleep(interval)
        seen = await _arrivals(ctx, seen)
        if today is not None:
            await _overdue(ctx, today())


async def _arrivals(ctx: _Notices, seen: int) -> int:
    new: list[Arrival] = []
    try:
        new = await asyncio.to_thread(arrivals_after, ctx.store, seen)
        if not new:
            return seen
        people = await ctx.people()
        mails = [
            notice(
                a,
                to=p,
                sender=ctx.smtp.sender,
                agency=ctx.agency,
                url=ctx.url,
                title=ctx.title_of(a.type),
            )
            for a in new
            for p in people
        ]
        if mails:
            await asyncio.to_thread(send_mail, ctx.smtp, mails)
        ctx.log.info("console_notices_sent", messages=len(new), mails=len(mails))
    except (OSError, smtplib.SMTPException) as exc:
        # The mail server is down or refuses: these notices are dropped (the inbox shows it).
        ctx.log.warning("console_notice_failed", error=type(exc).__name__, detail=str(exc)[:200])
    return new[-1].rowid if new else seen


async def _overdue(ctx: _Notices, today: str) -> None:
    try:
        due = await asyncio.to_thread(overdue_unnoticed, ctx.store, today)
        if not due:
            return
        people = await ctx.people()
        mails = [
            overdue_notice(
                d,
                to=p,
                sender=ctx.smtp.sender,
                agency=ctx.agency,
                url=ctx.url,
                title=ctx.title_of(d.type),
            )
            for d in due
            for p in people
        ]
        if mails:
            await asyncio.to_thread(send_mail, ctx.smtp, mails)
        # Recorded once mailed (or when nobody has an address): a request is noticed once.
        # A mail server that is down leaves them unrecorded: tried again at the next tick.
        at = datetime.now(UTC).isoformat(timespec="seconds")
        await asyncio.to_thread(
            record_noticed, ctx.store, [d.message_id for d in due], "overdue", at
        )
        ctx.log.info("console_overdue_notices_sent", messages=len(due), mails=len(mails))
    except (OSError, smtplib.SMTPException) as exc:
        ctx.log.warning("console_notice_failed", error=type(exc).__name__, detail=str(exc)[:200])
