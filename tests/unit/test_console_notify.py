"""E-mail notices of new messages through a real SMTP server (aiosmtpd), without content."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from argon2 import PasswordHasher

from broker.console.accounts import Accounts, Role
from broker.console.notify import run_notices
from broker.console.settings import SmtpSettings
from broker.pki.dev import DevFederation

from .node_world import World, request_draft, world_at

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class Inbox:
    """An aiosmtpd handler keeping every mail it receives."""

    def __init__(self) -> None:
        self.mails: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.mails.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def test_new_message_mails_type_handling_and_link_only(
    world: World, smtp_server: tuple[Inbox, int]
) -> None:
    """Officers with an address get a mail with type, handling, TLP and a link; no content."""
    handler, port = smtp_server
    de, nl = world.node("de.lka-berlin"), world.node("nl.politie")
    accounts = Accounts(nl.store, agency="nl.politie", clock=world.clock, hasher=FAST)
    accounts.add(
        "olga",
        display_name="Olga",
        role=Role.OFFICER,
        password="p" * 12,
        email="olga@nl.example",
        by="setup",
    )
    accounts.add(
        "ada",
        display_name="Ada",
        role=Role.AUDITOR,
        password="p" * 12,
        email="ada@nl.example",
        by="setup",
    )

    async def scenario() -> None:
        task = asyncio.create_task(
            run_notices(
                store=nl.store,
                accounts=accounts,
                agency="nl.politie",
                smtp=SmtpSettings(host="127.0.0.1", port=port, sender="console@nl.example"),
                url="https://console.nl.example",
                title_of=lambda t: "Request for assistance",
                interval=0.05,
            )
        )
        try:
            await asyncio.sleep(0.1)  # the notifier starts after what is already there
            await de.send(request_draft())
            await world.pump()
            for _ in range(200):
                if handler.mails:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert [to for to, _ in handler.mails] == [["olga@nl.example"]]
    mail = message_from_bytes(handler.mails[0][1])
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    text = payload.decode()
    message_id = nl.store.list_inbox()[0].message_id
    assert "Request for assistance" in mail["Subject"]
    assert "H2" in mail["Subject"]
    assert f"https://console.nl.example/messages/{message_id}" in text
    body = request_draft().body
    for secret in (str(body["title"]), str(body["facts"])[:30], "de.lka-berlin", "LKA"):
        assert secret not in text
        assert secret not in mail["Subject"]


def test_overdue_request_mails_once_without_content(
    world: World, smtp_server: tuple[Inbox, int]
) -> None:
    """A request passing its due date unanswered gets one notice, restarts included; no content."""
    handler, port = smtp_server
    de, nl = world.node("de.lka-berlin"), world.node("nl.politie")
    accounts = Accounts(nl.store, agency="nl.politie", clock=world.clock, hasher=FAST)
    accounts.add(
        "olga",
        display_name="Olga",
        role=Role.OFFICER,
        password="p" * 12,
        email="olga@nl.example",
        by="setup",
    )
    smtp = SmtpSettings(host="127.0.0.1", port=port, sender="console@nl.example")

    async def notifier_for(seconds: float) -> None:
        task = asyncio.create_task(
            run_notices(
                store=nl.store,
                accounts=accounts,
                agency="nl.politie",
                smtp=smtp,
                url="https://console.nl.example",
                title_of=lambda t: "Request for assistance",
                today=nl.today,
                interval=0.05,
            )
        )
        try:
            await asyncio.sleep(seconds)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    async def scenario() -> None:
        # Received before the notifier starts: no arrival notice, only the overdue one.
        await de.send(request_draft(due="2026-11-29"))
        await de.send(request_draft(due="2026-12-15"))  # not yet due: no notice
        await world.pump()
        await notifier_for(0.3)
        assert handler.mails == []  # not overdue yet
        world.clock.advance(timedelta(days=2))
        await notifier_for(0.5)
        await notifier_for(0.3)  # a restart: the notice is remembered in the store

    asyncio.run(scenario())
    assert [to for to, _ in handler.mails] == [["olga@nl.example"]]
    mail = message_from_bytes(handler.mails[0][1])
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    text = payload.decode()
    overdue = [m for m in nl.store.list_inbox() if m.due == "2026-11-29"]
    assert len(overdue) == 1
    assert "overdue" in mail["Subject"]
    assert "2026-11-29" in text
    assert f"https://console.nl.example/messages/{overdue[0].message_id}" in text
    body = request_draft().body
    for secret in (str(body["title"]), str(body["facts"])[:30], "de.lka-berlin", "LKA"):
        assert secret not in text
        assert secret not in mail["Subject"]
