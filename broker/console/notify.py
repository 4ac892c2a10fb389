"""E-mail notices of new messages, without content, through the SMTP server the settings name.

What it is for
    People with an e-mail address on their account (officers and supervisors) get one short
    mail per message that arrives: its type in plain words, its handling code and TLP marking,
    and a link to the console. Nothing else: not the sender, not a subject line from the body,
    not a name. The mail may cross systems the case data must never cross.

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
from email.message import EmailMessage
from typing import Final

import structlog

from broker.console.accounts import Accounts, Role
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


async def run_notices(
    *,
    store: Store,
    accounts: Accounts,
    smtp: SmtpSettings,
    agency: str,
    url: str,
    title_of: Callable[[str], str],
    interval: float = 10.0,
) -> None:
    """Mail a notice for every message received after start, every ``interval`` seconds."""
    log = structlog.get_logger("casebridge.console").bind(agency=agency)
    seen = await asyncio.to_thread(last_rowid, store)
    while True:
        await asyncio.sleep(interval)
        try:
            new = await asyncio.to_thread(arrivals_after, store, seen)
            if not new:
                continue
            people = await asyncio.to_thread(
                accounts.email_recipients, (Role.OFFICER, Role.SUPERVISOR)
            )
            mails = [
                notice(a, to=p, sender=smtp.sender, agency=agency, url=url, title=title_of(a.type))
                for a in new
                for p in people
            ]
            if mails:
                await asyncio.to_thread(send_mail, smtp, mails)
            seen = new[-1].rowid
            log.info("console_notices_sent", messages=len(new), mails=len(mails))
        except (OSError, smtplib.SMTPException) as exc:
            # The mail server is down or refuses: these notices are dropped (the inbox shows it).
            log.warning("console_notice_failed", error=type(exc).__name__, detail=str(exc)[:200])
            seen = new[-1].rowid if new else seen
