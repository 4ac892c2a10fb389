"""The focal-point console through aiohttp's test client, on two in-memory nodes (DE and NL)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from broker.console.accounts import Accounts, Role
from broker.console.app import create_console_app
from broker.console.settings import ConsoleSettings
from broker.node.service import Node
from broker.pki.dev import DevFederation

from .node_world import World, request_draft, world_at

PASSWORD = "correct horse battery"  # noqa: S105 - a test password
Client = TestClient[Any, Any]
# Still argon2id, with small parameters: the default costs ~0.3 s a hash on the test machine.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def world(dev_federation: DevFederation, tmp_path: Path, fixed_now: datetime) -> Iterator[World]:
    yield from world_at(dev_federation, tmp_path, fixed_now)


def people(node: Node, world: World) -> Accounts:
    accounts = Accounts(node.store, agency=node.agency_id, clock=world.clock, hasher=FAST)
    for name, role in (("olga", Role.OFFICER), ("sven", Role.SUPERVISOR), ("ada", Role.AUDITOR)):
        accounts.add(name, display_name=name.title(), role=role, password=PASSWORD, by="setup")
    return accounts


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


async def sign_in(client: Client, username: str, password: str = PASSWORD) -> str:
    page = await client.get("/login")
    token = csrf_of(await page.text())
    response = await client.post(
        "/login",
        data={"csrf": token, "username": username, "password": password},
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    page = await client.get("/directory")
    return csrf_of(await page.text())


Scenario = Callable[[World, Client, Client], Awaitable[None]]


def serve(world: World, scenario: Scenario, settings: ConsoleSettings | None = None) -> None:
    de, nl = world.node("de.lka-berlin"), world.node("nl.politie")
    people(de, world)
    people(nl, world)
    settings = settings or ConsoleSettings(lockout_attempts=3)

    async def run() -> None:
        async with (
            TestClient(TestServer(create_console_app(de, settings, hasher=FAST))) as de_c,
            TestClient(TestServer(create_console_app(nl, settings, hasher=FAST))) as nl_c,
        ):
            await scenario(world, de_c, nl_c)

    asyncio.run(run())


def audit_details(node: Node) -> list[tuple[str, str, str]]:
    return node.store.query(
        lambda db: [
            (r[0], r[1], r[2] or "")
            for r in db.execute("SELECT operation, actor, detail FROM audit ORDER BY seq")
        ]
    )


class TestSecurity:
    def test_pages_need_a_session_and_carry_a_strict_csp(self, world: World) -> None:
        """Without a session pages redirect to sign-in; responses carry a strict CSP."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            response = await de.get("/inbox", allow_redirects=False)
            assert response.status == 303
            assert response.headers["Location"] == "/login"
            login = await de.get("/login")
            csp = login.headers["Content-Security-Policy"]
            assert "unsafe-inline" not in csp
            assert "script-src 'self'" in csp
            assert "frame-ancestors 'none'" in csp
            cookie = login.headers["Set-Cookie"]
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
            assert "Secure" not in cookie

        serve(world, scenario)

    def test_missing_or_wrong_csrf_token_is_refused_and_changes_nothing(self, world: World) -> None:
        """A POST without the session's CSRF token gets 403, opens nothing and is audited."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            await w.nodes["de.lka-berlin"].send(request_draft())
            await w.pump()
            message_id = w.nodes["nl.politie"].store.list_inbox()[0].message_id
            await sign_in(nl, "olga")
            for token in (None, "forged"):
                data = {"purpose": "Handling this request"} | ({"csrf": token} if token else {})
                response = await nl.post(
                    f"/messages/{message_id}/open", data=data, allow_redirects=False
                )
                assert response.status == 403
            assert w.nodes["nl.politie"].store.inbox_message(message_id).read_at is None  # type: ignore[union-attr]
            refused = [d for d in audit_details(w.nodes["nl.politie"]) if "CSRF" in d[2]]
            assert len(refused) == 2
            assert refused[0][1] == "olga"

        serve(world, scenario)

    def test_lockout_after_repeated_failures(self, world: World) -> None:
        """Three wrong passwords lock the account; then even the right one is refused (audited)."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            page = await de.get("/login")
            token = csrf_of(await page.text())
            for _ in range(3):
                bad = await de.post(
                    "/login",
                    data={"csrf": token, "username": "olga", "password": "wrong password!!"},
                )
                assert bad.status == 401
            locked = await de.post(
                "/login", data={"csrf": token, "username": "olga", "password": PASSWORD}
            )
            assert locked.status == 401
            assert "locked" in (await locked.text())
            details = [d[2] for d in audit_details(w.nodes["de.lka-berlin"]) if d[1] == "olga"]
            assert any("locked until" in d for d in details)
            assert "sign-in refused: locked" in details
            w.clock.advance(timedelta(minutes=16))
            await sign_in(de, "olga")

        serve(world, scenario)

    def test_session_refused_after_logout_and_idle_timeout(self, world: World) -> None:
        """A session cookie stops working after sign-out and after the idle timeout."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            token = await sign_in(de, "olga")
            cookie = de.session.cookie_jar.filter_cookies(de.make_url("/"))[
                "casebridge_console"
            ].value
            await de.post("/logout", data={"csrf": token})
            again = await de.get(
                "/inbox", cookies={"casebridge_console": cookie}, allow_redirects=False
            )
            assert again.status == 303
            await sign_in(de, "olga")
            w.clock.advance(timedelta(minutes=31))
            idle = await de.get("/inbox", allow_redirects=False)
            assert idle.status == 303

        serve(world, scenario)

    def test_auditor_never_reads_content_and_officer_never_releases(self, world: World) -> None:
        """An auditor is refused content, an officer the audit log; each refusal is audited."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            await w.nodes["de.lka-berlin"].send(request_draft())
            await w.pump()
            message_id = w.nodes["nl.politie"].store.list_inbox()[0].message_id
            await sign_in(nl, "ada")
            assert (await nl.get(f"/messages/{message_id}")).status == 403
            assert (await nl.get("/inbox")).status == 403
            assert (await nl.get("/audit")).status == 200
            await sign_in(de, "olga")
            assert (await de.get("/audit")).status == 403
            refused = [
                d
                for d in audit_details(w.nodes["nl.politie"])
                if d[1] == "ada" and "refused" in d[2]
            ]
            assert len(refused) == 2

        serve(world, scenario)


class TestReading:
    def test_body_html_renders_as_text_and_opening_sends_read_evidence(self, world: World) -> None:
        """A peer's <script> shows as text; opening asks a purpose and the sender sees `read`."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            draft = request_draft()
            body = dict(draft.body) | {"title": "<script>alert(1)</script><b>x</b>"}
            from dataclasses import replace

            sent = await w.nodes["de.lka-berlin"].send(replace(draft, body=body))
            await w.pump()
            token = await sign_in(nl, "olga")
            listing = await nl.get("/inbox")
            text = await listing.text()
            assert "Request for assistance" in text
            assert "2026-12-15" in text
            closed = await (await nl.get(f"/messages/{sent.message_id}")).text()
            assert "Why are you opening this message?" in closed
            assert "alert(1)" not in closed
            await nl.post(
                f"/messages/{sent.message_id}/open",
                data={"csrf": token, "purpose": "Handling this request", "detail": "case 17"},
            )
            page = await (await nl.get(f"/messages/{sent.message_id}")).text()
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
            assert "<script>alert" not in page
            assert "Facts" in page or "facts" in page.lower()
            await w.pump()
            await sign_in(de, "olga")
            timeline = await (await de.get(f"/messages/{sent.message_id}")).text()
            assert "Opened by a person" in timeline

        serve(world, scenario)


class TestCompose:
    def _form(self, token: str, **extra: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "csrf": token,
            "type": "request.assistance",
            "to": "nl.politie",
            "purpose": "investigation",
            "legal_basis": "Council Framework Decision 2006/960/JHA",
            "handling": "H2",
            "tlp": "AMBER",
            "due": "2026-12-15",
            "b/title": "Workers at a farm",
            "b/offences": "forced_labour",
            "b/facts": "Workers report withheld passports.",
            "n/requested_measures": "1",
            "b/requested_measures/0/measure": "identify_person",
            "b/requested_measures/0/description": "Identify the farm manager.",
            "b/due_date": "2026-12-15",
            "b/urgency": "routine",
        }
        data.update(extra)
        return data

    def test_invalid_fields_show_errors_and_keep_typed_values(self, world: World) -> None:
        """Missing and bad fields show inline errors; the typed text stays."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            token = await sign_in(de, "olga")
            form = await (await de.get("/compose?type=request.assistance")).text()
            assert 'name="b/title"' in form
            assert "<select" in form
            assert 'name="n/requested_measures"' in form
            data = self._form(token, op="send")
            data["b/title"] = ""
            data["b/due_date"] = "15.12.2026"
            response = await de.post("/compose", data=data)
            assert response.status == 422
            page = await response.text()
            assert "This field is required." in page
            assert "Workers report withheld passports." in page
            assert 'value="15.12.2026"' in page
            assert "Must be a valid date." in page
            assert (
                w.nodes["de.lka-berlin"].store.list_outbox() == []
                if hasattr(w.nodes["de.lka-berlin"].store, "list_outbox")
                else True
            )

        serve(world, scenario)

    def test_array_add_and_remove_keep_the_rest(self, world: World) -> None:
        """Adding a measure adds an empty item; removing the first moves the second up."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            token = await sign_in(de, "olga")
            added = await (
                await de.post("/compose", data=self._form(token, op="add:/requested_measures"))
            ).text()
            assert 'name="b/requested_measures/1/measure"' in added
            data = self._form(token, op="remove:/requested_measures/0")
            data["n/requested_measures"] = "2"
            data["b/requested_measures/1/description"] = "Second measure"
            removed = await (await de.post("/compose", data=data)).text()
            assert 'name="b/requested_measures/1/measure"' not in removed
            assert "Second measure" in removed
            assert "Identify the farm manager." not in removed

        serve(world, scenario)

    def test_preview_and_send_then_reply_keeps_the_thread(self, world: World) -> None:
        """The preview names the rule; the message lands in NL; the reply joins the thread."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            token = await sign_in(de, "olga")
            preview = await (await de.post("/compose", data=self._form(token, op="preview"))).text()
            assert "node.no-policy" in preview
            assert "allowed" in preview
            sent = await de.post(
                "/compose", data=self._form(token, op="send"), allow_redirects=False
            )
            assert sent.status == 303
            message_id = sent.headers["Location"].split("/")[2].split("?")[0]
            await w.pump()
            assert w.nodes["nl.politie"].store.inbox_message(message_id) is not None
            nl_token = await sign_in(nl, "olga")
            await nl.post(
                f"/messages/{message_id}/open",
                data={"csrf": nl_token, "purpose": "Preparing an answer"},
            )
            reply = await (await nl.get(f"/compose?reply_to={message_id}")).text()
            assert "Response to a request for assistance" in reply
            data = {
                "csrf": nl_token,
                "type": "response.assistance",
                "reply_to": message_id,
                "to": "de.lka-berlin",
                "purpose": "investigation",
                "legal_basis": "",
                "handling": "H2",
                "tlp": "AMBER",
                "due": "",
                "b/request_id": message_id,
                "b/outcome": "completed",
                "n/results": "1",
                "b/results/0/measure": "identify_person",
                "b/results/0/status": "executed",
                "b/results/0/findings": "Manager identified.",
                "op": "send",
            }
            answered = await nl.post("/compose", data=data, allow_redirects=False)
            assert answered.status == 303, await answered.text()
            await w.pump()
            stored = w.nodes["de.lka-berlin"].store.outbox_message(message_id)
            assert stored is not None
            conversation = stored.header["conversation"]
            thread = await (await de.get(f"/threads/{conversation}")).text()
            assert "Response to a request for assistance" in thread
            assert "Request for assistance" in thread
            card = await (await de.get("/scorecard?from=2000-01-01&to=2100-01-01")).text()
            assert 'data-partner="nl.politie"' in card
            assert " h</td>" in card
            csv_text = await (await de.get("/scorecard.csv?from=2000-01-01&to=2100-01-01")).text()
            assert csv_text.startswith("partner,country,sent")
            assert "nl.politie,NL,1,1,1" in csv_text

        serve(world, scenario)

    def test_four_eyes_release_by_a_supervisor_only(self, world: World) -> None:
        """A TLP:RED draft waits; an officer cannot release it, a supervisor can (audited)."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            token = await sign_in(de, "olga")
            held = await de.post(
                "/compose", data=self._form(token, op="send", tlp="RED"), allow_redirects=False
            )
            assert held.status == 303
            assert held.headers["Location"].startswith("/releases?held=")
            release_id = held.headers["Location"].split("=")[1]
            await w.pump()
            assert w.nodes["nl.politie"].store.list_inbox() == []
            refused = await de.post(f"/releases/{release_id}/release", data={"csrf": token})
            assert refused.status == 403
            sup = await sign_in(de, "sven")
            done = await de.post(
                f"/releases/{release_id}/release", data={"csrf": sup}, allow_redirects=False
            )
            assert done.status == 303
            await w.pump()
            assert len(w.nodes["nl.politie"].store.list_inbox()) == 1
            details = audit_details(w.nodes["de.lka-berlin"])
            assert any(a == "sven" and "four-eyes released" in d for _, a, d in details)
            assert any(a == "olga" and "refused for role officer" in d for _, a, d in details)

        serve(world, scenario)


class TestLanguage:
    # Navigation, markings, buttons and errors: what the issue asks in every language.
    REQUIRED = (
        "Inbox",
        "Awaiting our answer",
        "Overdue",
        "Sent",
        "New message",
        "Releases",
        "Directory",
        "Scorecard",
        "Audit log",
        "Sign in",
        "Sign out",
        "Handling code",
        "TLP marking",
        "Withdrawn by the sender",
        "Reply",
        "Send",
        "Check",
        "Add",
        "Remove",
        "Release",
        "Refuse",
        "Your role does not allow this.",
        "User name, password or code not accepted.",
        "Some fields need your attention.",
        "Choose at least one recipient.",
    )

    @pytest.mark.parametrize("language", ["de", "uk"])
    def test_catalogues_cover_navigation_markings_buttons_errors(self, language: str) -> None:
        """German and Ukrainian translate every navigation, marking, button and error text."""
        from broker.console.i18n import translations

        gettext = translations(language).gettext
        missing = [m for m in self.REQUIRED if gettext(m) == m]
        assert missing == []

    def test_a_person_switches_to_german_and_sees_times_in_their_zone(self, world: World) -> None:
        """After choosing Deutsch the navigation is German; times show in the person's zone."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            await w.nodes["de.lka-berlin"].send(request_draft())
            await w.pump()
            token = await sign_in(nl, "olga")
            await nl.post(
                "/preferences",
                data={
                    "csrf": token,
                    "language": "de",
                    "time_zone": "Europe/Kyiv",
                    "back": "/inbox",
                },
            )
            page = await (await nl.get("/inbox")).text()
            assert "Posteingang" in page
            assert "Abmelden" in page
            assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d EET", page)

        serve(world, scenario)


class TestPeople:
    def test_only_a_supervisor_changes_roles_and_a_disabled_person_is_signed_out(
        self, world: World
    ) -> None:
        """An officer's role change is refused and audited; a supervisor's works and is audited."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            officer = await sign_in(de, "olga")
            refused = await de.post("/people/ada/role", data={"csrf": officer, "role": "officer"})
            assert refused.status == 403
            accounts = Accounts(
                w.nodes["de.lka-berlin"].store, agency="de.lka-berlin", clock=w.clock
            )
            ada = accounts.get("ada")
            assert ada is not None
            assert ada.role is Role.AUDITOR
            supervisor = await sign_in(nl, "sven")  # NL's console, NL's accounts
            done = await nl.post(
                "/people/ada/role",
                data={"csrf": supervisor, "role": "officer"},
                allow_redirects=False,
            )
            assert done.status == 303
            nl_ada = Accounts(w.nodes["nl.politie"].store, agency="nl.politie", clock=w.clock).get(
                "ada"
            )
            assert nl_ada is not None
            assert nl_ada.role is Role.OFFICER
            de_details = audit_details(w.nodes["de.lka-berlin"])
            nl_details = audit_details(w.nodes["nl.politie"])
            assert any(
                a == "olga" and "refused for role officer: role account ada" in d
                for _, a, d in de_details
            )
            assert any(a == "sven" and "role set to officer" in d for _, a, d in nl_details)

        serve(world, scenario)

    def test_second_factor_is_required_when_set(self, world: World) -> None:
        """An account with TOTP signs in only with the current code."""
        import pyotp

        de = world.node("de.lka-berlin")
        world.node("nl.politie")
        accounts = Accounts(de.store, agency="de.lka-berlin", clock=world.clock, hasher=FAST)
        secret = accounts.add(
            "tom", display_name="Tom", role=Role.OFFICER, password=PASSWORD, totp=True, by="setup"
        )
        assert secret is not None
        assert accounts.sign_in("tom", PASSWORD).user is None
        assert accounts.sign_in("tom", PASSWORD, "000000").user is None
        code = pyotp.TOTP(secret).at(world.clock())
        signed = accounts.sign_in("tom", PASSWORD, code).user
        assert signed is not None
        assert signed.username == "tom"


class TestDrafts:
    def test_a_saved_draft_comes_back_for_its_author_only_and_goes_when_sent(
        self, world: World
    ) -> None:
        """Save keeps the typed form; only its author reopens it; sending removes it."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            token = await sign_in(de, "olga")
            form = TestCompose()._form(token, op="save")
            form["b/title"] = "Half-written request"
            saved = await (await de.post("/compose", data=form)).text()
            assert "Draft saved." in saved
            draft_id = re.search(r'name="draft_id" value="([0-9a-f]+)"', saved)
            assert draft_id is not None
            listing = await (await de.get("/compose")).text()
            assert f"/compose?draft={draft_id.group(1)}" in listing
            reopened = await (await de.get(f"/compose?draft={draft_id.group(1)}")).text()
            assert 'value="Half-written request"' in reopened
            sven = await sign_in(de, "sven")
            assert (await de.get(f"/compose?draft={draft_id.group(1)}")).status == 404
            del sven
            token = await sign_in(de, "olga")
            sent = TestCompose()._form(token, op="send", draft_id=draft_id.group(1))
            assert (await de.post("/compose", data=sent, allow_redirects=False)).status == 303
            assert (await de.get(f"/compose?draft={draft_id.group(1)}")).status == 404

        serve(world, scenario)


class TestForward:
    def test_no_onward_transfer_refuses_forward_with_the_reason(self, world: World) -> None:
        """A message marked for no onward transfer cannot be forwarded; the refusal is audited."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            sent = await w.nodes["de.lka-berlin"].send(request_draft())
            await w.pump()
            await sign_in(nl, "olga")
            refused = await nl.get(f"/compose?forward={sent.message_id}")
            assert refused.status == 403
            assert "no onward transfer" in await refused.text()
            details = audit_details(w.nodes["nl.politie"])
            assert any(a == "olga" and "no onward transfer" in d for _, a, d in details)

        serve(world, scenario)

    def test_allowed_forward_carries_derived_from(self, world: World) -> None:
        """A forwardable message opens filled in; the copy names its original (derived_from)."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            from dataclasses import replace

            sent = await w.nodes["de.lka-berlin"].send(
                replace(request_draft(), onward_allowed=True)
            )
            await w.pump()
            token = await sign_in(nl, "olga")
            page = await (await nl.get(f"/compose?forward={sent.message_id}")).text()
            assert f'name="derived_from" value="{sent.message_id}"' in page
            title = str(request_draft().body["title"])
            assert f'value="{title}"' in page
            form = TestCompose()._form(token, op="send", derived_from=sent.message_id)
            form.update({"to": "nl.arbeidsinspectie", "legal_basis": "Arbeidsomstandighedenwet"})
            done = await nl.post("/compose", data=form, allow_redirects=False)
            assert done.status == 303
            forwarded_id = done.headers["Location"].split("/")[2].split("?")[0]
            stored = w.nodes["nl.politie"].store.outbox_message(forwarded_id)
            assert stored is not None
            assert stored.header["derived_from"] == sent.message_id

        serve(world, scenario)


class TestCorrections:
    def test_correction_shown_applied_and_marked_withdrawal_shown_as_withdrawn(
        self, world: World
    ) -> None:
        """A corrected field shows its new value marked `corrected`; a withdrawn message says so."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            from broker.node import corrections

            de_node = w.nodes["de.lka-berlin"]
            sent = await de_node.send(request_draft())
            await w.pump()
            await corrections.send_notice(
                de_node,
                kind="correction",
                message_id=sent.message_id,
                body={
                    "corrections": [{"op": "replace", "path": "/title", "value": "Fixed title"}],
                    "reason": "factual_error",
                },
                actor="olga",
            )
            await w.pump()
            token = await sign_in(nl, "olga")
            await nl.post(
                f"/messages/{sent.message_id}/open",
                data={"csrf": token, "purpose": "Handling this request"},
            )
            page = await (await nl.get(f"/messages/{sent.message_id}")).text()
            assert "Fixed title" in page
            assert re.search(r'class="corrected"><dt>Title <span class="tag mark-corrected">', page)
            assert "Corrected by the sender" in page
            listing = await (await nl.get("/inbox")).text()
            assert "mark-corrected" in listing
            await corrections.send_notice(
                de_node,
                kind="withdrawal",
                message_id=sent.message_id,
                body={"reason": "wrong_recipient", "action_requested": "disregard"},
                actor="olga",
            )
            await w.pump()
            page = await (await nl.get(f"/messages/{sent.message_id}")).text()
            assert "Withdrawn by the sender" in page

        serve(world, scenario)


class TestReleaseRace:
    def test_two_supervisors_releasing_at_once_send_one_message(self, world: World) -> None:
        """Concurrent releases of one held message: exactly one is sent, the other refused."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            Accounts(
                w.nodes["de.lka-berlin"].store, agency="de.lka-berlin", clock=w.clock, hasher=FAST
            ).add("vera", display_name="Vera", role=Role.SUPERVISOR, password=PASSWORD, by="setup")
            token = await sign_in(de, "olga")
            held = await de.post(
                "/compose",
                data=TestCompose()._form(token, op="send", tlp="RED"),
                allow_redirects=False,
            )
            release_id = held.headers["Location"].split("=")[1]
            async with TestClient(TestServer(de.app)) as other:  # a second browser, same node
                first = await sign_in(de, "sven")
                second = await sign_in(other, "vera")
                results = await asyncio.gather(
                    de.post(
                        f"/releases/{release_id}/release",
                        data={"csrf": first},
                        allow_redirects=False,
                    ),
                    other.post(
                        f"/releases/{release_id}/release",
                        data={"csrf": second},
                        allow_redirects=False,
                    ),
                )
            assert sorted(r.status for r in results)[0] == 303
            assert sorted(r.status for r in results)[1] in (404, 409)
            await w.pump()
            assert len(w.nodes["nl.politie"].store.list_inbox()) == 1

        serve(world, scenario)


class TestRedirects:
    @pytest.mark.parametrize(
        "back", ["//evil.example/", "/\\evil.example/", "https://evil.example/"]
    )
    def test_preferences_never_redirect_off_the_console(self, world: World, back: str) -> None:
        """The page to return to after changing preferences is always a path of this console."""

        async def scenario(w: World, de: Client, nl: Client) -> None:
            token = await sign_in(de, "olga")
            response = await de.post(
                "/preferences",
                data={"csrf": token, "language": "en", "time_zone": "UTC", "back": back},
                allow_redirects=False,
            )
            assert response.headers["Location"] == "/inbox"

        serve(world, scenario)


def test_a_flood_of_sign_in_pages_does_not_sign_people_out(fixed_now: datetime) -> None:
    """When the session table is full, sessions without a person are dropped first."""
    from broker.console import sessions as module

    table = module.Sessions(
        idle=timedelta(hours=1), absolute=timedelta(hours=2), clock=lambda: fixed_now
    )
    cookie, _ = table.new("olga")
    for _ in range(module.MAX_SESSIONS + 10):
        table.new(None)
    assert table.get(cookie) is not None
