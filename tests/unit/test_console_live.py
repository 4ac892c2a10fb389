"""The inbox list updating without reload: /inbox/rows renders the list alone, as the page
would now, for console.js to swap in (the browser side is in test_console_browser.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from broker.pki.dev import DevFederation

from .node_world import World, request_draft, world_at
from .test_console import Client, serve, sign_in


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def test_rows_fragment_shows_new_and_overdue_messages_without_the_page(world: World) -> None:
    """A message arriving after the page was drawn is in the fragment; overdue is flagged."""

    async def scenario(w: World, de: Client, nl: Client) -> None:
        await sign_in(nl, "olga")
        page = await (await nl.get("/inbox?type=request.assistance")).text()
        assert 'data-live="/inbox/rows?type=request.assistance"' in page
        assert 'aria-live="polite"' in page
        before = await (await nl.get("/inbox/rows?type=request.assistance")).text()
        assert "data-id=" not in before
        sent = await w.nodes["de.lka-berlin"].send(request_draft(due="2026-11-29"))
        await w.pump()
        fragment = await nl.get("/inbox/rows?type=request.assistance")
        html = await fragment.text()
        assert fragment.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert f'data-id="{sent.message_id}"' in html
        assert "<html" not in html
        assert "<nav" not in html
        assert "overdue-flag" not in html
        w.clock.advance(timedelta(days=2))
        await sign_in(nl, "olga")  # the session timed out meanwhile
        html = await (await nl.get("/inbox/rows")).text()
        assert "overdue-flag" in html
        # Another filter leaves it out, as the page would.
        html = await (await nl.get("/inbox/rows?type=referral.victim")).text()
        assert f'data-id="{sent.message_id}"' not in html

    serve(world, scenario)


def test_rows_fragment_needs_a_session_and_is_refused_to_auditors(world: World) -> None:
    """Without a session it redirects to sign-in; an auditor gets 403 (no content lists)."""

    async def scenario(w: World, de: Client, nl: Client) -> None:
        anonymous = await nl.get("/inbox/rows", allow_redirects=False)
        assert anonymous.status in (302, 303)
        await sign_in(nl, "ada")
        refused = await nl.get("/inbox/rows", allow_redirects=False)
        assert refused.status == 403

    serve(world, scenario)
