"""The console in real headless Chromium (Playwright) against a running federation: real
nats-server processes, border gateways and DE/NL nodes each serving its console.

DE officer composes a request.assistance through the generated form, sees the denied NGO with
its rule, sends to the allowed NL police; the NL officer, inbox open, sees it appear without
reload (announced in the live region) with its due date and opens it
with a purpose; DE sees the ``read`` step; NL replies; the DE scorecard shows the response
time. axe-core runs on every page visited: no serious or critical violation. Files: DE adds
three with progress bars (a forbidden ZIP shows its rule and is removed), NL sees types, the
sniffed-type mismatch and the scanner's quarantine, and downloads one with a purpose.
``CASEBRIDGE_SCREENSHOTS=DIR`` saves screenshots of the main pages (docs/img/ was made so).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe  # type: ignore[import-untyped]
from playwright.sync_api import sync_playwright

from broker.console.accounts import Accounts, Role
from broker.core.header import agency_country
from broker.core.policy import sign_policy
from broker.node.store import Store
from broker.pki.store import PkiStore, country_stem
from tests.integration.e2e_helpers import POLICIES, Running, wait_until

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "synthetic demo password"  # noqa: S105 - synthetic test account
DESCRIPTION: dict[str, Any] = {
    "federation": "console",
    "countries": [
        {
            "code": "DE",
            "name": "Germany",
            "eu": True,
            "agencies": [{"id": "de.lka-berlin", "kind": "law_enforcement", "name": "LKA Berlin"}],
        },
        {
            "code": "NL",
            "name": "Netherlands",
            "eu": True,
            "agencies": [
                {"id": "nl.politie", "kind": "law_enforcement", "name": "Politie Nederland"},
                {"id": "nl.fairwork", "kind": "ngo", "name": "FairWork"},
            ],
        },
    ],
}
MARKER = b"SYNTHETIC-MALWARE-MARKER"
# The NL node's scanner: quarantines a file holding MARKER, approves anything else.
SCANNER = [
    sys.executable,
    "-c",
    "import sys; data = open(sys.argv[1], 'rb').read(); "
    f"sys.exit(print('marker found: synthetic test signature') or 1) if {MARKER!r} in data "
    "else sys.exit(0)",
]
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def federation(nats_binary: Path, tmp_path: Path) -> Iterator[tuple[Running, dict[str, str]]]:
    del nats_binary
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("the browser tests need /usr/bin/chromium in CI")
        pytest.skip("chromium not installed")
    ports = {a: free_port() for a in ("de.lka-berlin", "nl.politie")}
    running = Running.start(
        tmp_path,
        nodes=ports,
        description=DESCRIPTION,
        settings={
            a: {"console": {"port": p, "time_zone": "Europe/Berlin"}}
            | ({"attachments": {"scanner": SCANNER}} if a == "nl.politie" else {})
            for a, p in ports.items()
        },
    )
    try:
        people = {
            "de.lka-berlin": (("officer", Role.OFFICER), ("supervisor", Role.SUPERVISOR)),
            "nl.politie": (
                ("officer", Role.OFFICER),
                ("auditor", Role.AUDITOR),
                ("guest", Role.OFFICER),
            ),
        }
        for agency in ports:
            with Store(running.store_path(agency)) as store:
                accounts = Accounts(store, agency=agency, clock=_now)
                for username, role in people[agency]:
                    accounts.add(
                        username,
                        display_name=f"{username.title()} {agency_country(agency)}",
                        role=role,
                        password=PASSWORD,
                        by="test",
                        time_zone="Europe/Berlin",
                    )
        yield running, {a: f"http://127.0.0.1:{p}" for a, p in ports.items()}
    finally:
        running.close()


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def check_axe(page: Any, axe: Any, shots: Path | None, name: str) -> None:
    results = axe.run(page)
    bad = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == [], f"{name}: {bad}"
    if shots is not None:
        page.screenshot(path=str(shots / f"console-{name}.png"), full_page=True)


def publish_nl_policy(running: Running) -> None:
    """NL publishes its policy (a new version of docs/policies/nl.yaml) to the federation."""
    text = (POLICIES / "nl.yaml").read_text(encoding="utf-8")
    text = text.replace("\nversion: 12\n", "\nversion: 13\n", 1)
    ca = PkiStore(running.fed.settings.pki_dir).read_certified(country_stem("NL", "ca"))
    signed = running.fed.base / "nl-v13.policy.jws"
    signed.write_bytes(sign_policy(text.encode(), ca_key=ca.key, ca_cert=ca.cert).encode())
    command = [sys.executable, "-m", "broker.cli", "policy", "publish", str(signed)]
    command += ["--country", "NL", "--federation", str(running.fed.base)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def sign_in(page: Any, base: str, username: str = "officer") -> None:
    page.goto(f"{base}/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda address: "/login" not in address)


def test_request_read_reply_and_scorecard_in_chromium(
    federation: tuple[Running, dict[str, str]],
) -> None:
    """DE sends via the form (NGO denied, rule shown); NL reads; DE sees it read; NL replies."""

    running, url = federation
    de, nl = url["de.lka-berlin"], url["nl.politie"]
    shots_dir = os.environ.get("CASEBRIDGE_SCREENSHOTS")
    shots = Path(shots_dir) if shots_dir else None
    axe = Axe()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            de_page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            nl_page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            # The NL officer signs in with the keyboard alone (skip link, user name, password,
            # code, Enter) and keeps the inbox open while DE writes.
            nl_page.goto(f"{nl}/login")
            nl_page.keyboard.press("Tab")
            nl_page.keyboard.press("Tab")
            nl_page.keyboard.type("officer")
            nl_page.keyboard.press("Tab")
            nl_page.keyboard.type(PASSWORD)
            nl_page.keyboard.press("Enter")
            nl_page.wait_for_url(f"{nl}/inbox")
            assert nl_page.locator("#list[data-live]").count() == 1
            de_page.goto(f"{de}/login")
            check_axe(de_page, axe, shots, "login")
            sign_in(de_page, de)
            # NL publishes its rules: the DE Directory shows them in words, and the preview
            # below shows what NL's border will decide.
            publish_nl_policy(running)
            wait_until(
                lambda: (
                    de_page.goto(f"{de}/directory"),
                    de_page.locator("tr[data-rule^='nl.in.']").count() > 0,
                )[1],
                60,
                what="DE holds NL's published policy",
            )
            check_axe(de_page, axe, shots, "directory")
            de_page.goto(f"{de}/compose")
            check_axe(de_page, axe, shots, "pick-type")
            de_page.click("a[href='/compose?type=request.assistance']")
            de_page.fill("[name='b/title']", "Workers at a vegetable farm")
            de_page.check("[name='b/offences'][value='forced_labour']")
            de_page.fill(
                "[name='b/facts']", "Seasonal workers report withheld passports and unpaid wages."
            )
            de_page.select_option("[name='b/requested_measures/0/measure']", "identify_person")
            de_page.fill(
                "[name='b/requested_measures/0/description']", "Identify the farm manager."
            )
            de_page.select_option("[name='b/urgency']", "routine")
            de_page.fill("#legal_basis", "Council Framework Decision 2006/960/JHA")
            de_page.check("input[name='to'][value='nl.politie']")
            de_page.check("input[name='to'][value='nl.fairwork']")
            de_page.click("button[name='op'][value='preview']")
            denied = de_page.locator("tr.denied[data-recipient='nl.fairwork']")
            denied.wait_for()
            assert "de." in denied.inner_text() or "builtin." in denied.inner_text()
            assert de_page.locator("tr.allowed[data-recipient='nl.politie']").count() == 1
            theirs = de_page.inner_text("tr[data-recipient='nl.politie'] td.theirs")
            assert "nl." in theirs, theirs  # NL's own rule id, from its published policy
            check_axe(de_page, axe, shots, "compose")
            de_page.click("button[name='op'][value='send']")
            assert de_page.locator("#cp-err").count() == 1  # denied ones need an explicit choice
            de_page.check("#confirm_partial")
            de_page.click("button[name='op'][value='send']")
            de_page.wait_for_url("**/messages/*")
            message_id = de_page.url.split("/messages/")[1].split("?")[0]

            # The message appears in the open inbox without a reload, announced politely.
            row = nl_page.locator("table.messages tbody tr", has_text="Request for assistance")
            wait_until(lambda: row.count() == 1, 60, what="NL inbox shows it without reload")
            assert "fresh" in (row.get_attribute("class") or "")
            assert "New in the list" in nl_page.inner_text("#live")
            assert running is not None
            check_axe(nl_page, axe, shots, "inbox")
            badge = row.locator(".badge").first
            badge.focus()
            assert "H2" in (badge.get_attribute("aria-label") or "")
            row.locator("a").click()
            check_axe(nl_page, axe, shots, "purpose")
            nl_page.fill("#detail", "case NL-2026-17")
            nl_page.click("form[action$='/open'] button[type=submit]")
            nl_page.locator("article.document").wait_for()
            assert "Workers at a vegetable farm" in nl_page.inner_text("article.document")
            check_axe(nl_page, axe, shots, "message")

            de_page.goto(f"{de}/messages/{message_id}")
            wait_until(
                lambda: (
                    de_page.reload(),
                    "Opened by a person" in de_page.inner_text("ol.timeline"),
                )[1],
                60,
                what="DE sees the read evidence",
            )
            check_axe(de_page, axe, shots, "timeline")

            nl_page.click("a[href^='/compose?reply_to=']")
            nl_page.select_option("[name='b/outcome']", "completed")
            nl_page.click("button[name='op'][value='add:/results']")
            nl_page.select_option("[name='b/results/0/measure']", "identify_person")
            nl_page.select_option("[name='b/results/0/status']", "executed")
            nl_page.fill(
                "[name='b/results/0/findings']", "Manager identified through the trade register."
            )
            nl_page.click("button[name='op'][value='send']")
            nl_page.wait_for_url("**/messages/*")

            de_page.goto(f"{de}/scorecard?from=2000-01-01&to=2100-01-01")
            wait_until(
                lambda: (
                    de_page.reload(),
                    " h" in de_page.inner_text("tr[data-partner='nl.politie'] td.median"),
                )[1],
                60,
                what="DE scorecard shows the response time",
            )
            check_axe(de_page, axe, shots, "scorecard")
            de_page.goto(f"{de}/messages/{message_id}")
            de_page.click("a[href^='/threads/']")
            assert de_page.locator("ol.thread li").count() == 2
            check_axe(de_page, axe, shots, "thread")
            de_page.goto(f"{de}/outbox")
            check_axe(de_page, axe, shots, "outbox")
        finally:
            browser.close()


def test_four_eyes_xss_csrf_roles_and_lockout_in_chromium(
    federation: tuple[Running, dict[str, str]],
) -> None:
    """A person alert waits for a DE supervisor; script stays text in NL; bad cases refused."""

    running, url = federation
    de, nl = url["de.lka-berlin"], url["nl.politie"]
    axe = Axe()
    payload = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            officer = browser.new_context().new_page()
            sign_in(officer, de)
            officer.goto(f"{de}/compose?type=alert.person")
            officer.select_option("[name='b/alert_kind']", "person_of_interest")
            officer.click("#f-person_of_interest > summary")
            officer.fill("[name='b/person_of_interest/family_name']", "Doe-Synthetic")
            officer.fill("[name='b/reason']", payload)
            officer.check("[name='b/requested_actions'][value='report_sightings']")
            officer.fill("[name='b/valid_until']", "2099-01-01")
            officer.fill("[name='b/contact_point/unit']", "LKA 42 desk")
            officer.fill("#legal_basis", "Council Framework Decision 2006/960/JHA")
            officer.check("input[name='to'][value='nl.politie']")
            officer.click("button[name='op'][value='send']")
            officer.wait_for_url("**/releases?held=*")
            release_id = officer.url.split("held=")[1]
            check_axe(officer, axe, None, "releases")
            token = officer.locator("input[name='csrf']").first.get_attribute("value")
            refused = officer.request.post(
                f"{de}/releases/{release_id}/release", form={"csrf": token or ""}
            )
            assert refused.status == 403  # an officer never releases

            supervisor = browser.new_context().new_page()
            sign_in(supervisor, de, "supervisor")
            forged = supervisor.request.post(f"{de}/releases/{release_id}/release", form={})
            assert forged.status == 403  # no CSRF token: refused, nothing released
            supervisor.goto(f"{de}/releases")
            assert "waiting" in supervisor.inner_text(f"#release-{release_id}")
            supervisor.click(f"#release-{release_id} form[action$='/release'] button")
            supervisor.wait_for_url("**/messages/*")
            supervisor.goto(f"{de}/people")
            check_axe(supervisor, axe, None, "people")

            reader = browser.new_context().new_page()
            sign_in(reader, nl)
            row = reader.locator("table.messages tbody tr", has_text="Person alert")
            wait_until(lambda: (reader.reload(), row.count() == 1)[1], 60, what="alert in NL")
            row.locator("a").click()
            reader.click("form[action$='/open'] button[type=submit]")
            reader.locator("article.document").wait_for()
            assert payload in reader.inner_text("article.document")
            assert reader.evaluate("window.__xss") is None
            message_path = reader.url.split(nl)[1]

            auditor = browser.new_context().new_page()
            sign_in(auditor, nl, "auditor")
            assert auditor.url == f"{nl}/audit"  # an auditor starts at the audit log
            response = auditor.goto(f"{nl}{message_path}")
            assert response is not None
            assert response.status == 403
            assert "Doe-Synthetic" not in auditor.content()
            check_axe(auditor, axe, None, "refused")
            audit = auditor.goto(f"{nl}/audit")
            assert audit is not None
            assert audit.status == 200
            assert "refused for role auditor" in auditor.inner_text("table.messages")
            check_axe(auditor, axe, None, "audit")

            guest = browser.new_context().new_page()
            for _ in range(5):
                guest.goto(f"{nl}/login")
                guest.fill("#username", "guest")
                guest.fill("#password", "not the password")
                guest.click("button[type=submit]")
            guest.goto(f"{nl}/login")
            guest.fill("#username", "guest")
            guest.fill("#password", PASSWORD)
            guest.click("button[type=submit]")
            assert "locked" in guest.inner_text("#login-error")
            assert running is not None
        finally:
            browser.close()


def _fill_request(page: Any) -> None:
    page.fill("[name='b/title']", "Workers at a vegetable farm")
    page.check("[name='b/offences'][value='forced_labour']")
    page.fill("[name='b/facts']", "Seasonal workers report withheld passports and unpaid wages.")
    page.select_option("[name='b/requested_measures/0/measure']", "identify_person")
    page.fill("[name='b/requested_measures/0/description']", "Identify the farm manager.")
    page.select_option("[name='b/urgency']", "routine")
    page.fill("#legal_basis", "Council Framework Decision 2006/960/JHA")


def test_files_uploaded_with_progress_and_downloaded_as_a_consultation_in_chromium(
    federation: tuple[Running, dict[str, str]], tmp_path: Path
) -> None:
    """DE adds files (progress, size and type shown; a ZIP refused by rule and removed) and
    sends; NL sees declared and sniffed types, the quarantine and why, and downloads the
    verified PDF with a purpose (logged as a consultation)."""
    running, url = federation
    de, nl = url["de.lka-berlin"], url["nl.politie"]
    pdf = b"%PDF-1.4\n" + b"synthetic bank statement line\n" * 200_000  # ~6 MB
    (tmp_path / "statement.pdf").write_bytes(pdf)
    png = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + os.urandom(20_000)
    (tmp_path / "photo.png").write_bytes(png + MARKER)
    (tmp_path / "scan.pdf").write_bytes(png)  # a PNG under a PDF's name: a type mismatch
    (tmp_path / "bundle.zip").write_bytes(b"PK\x03\x04" + os.urandom(2_000))
    axe = Axe()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_context().new_page()
            sign_in(page, de)
            page.goto(f"{de}/compose?type=request.assistance")
            _fill_request(page)
            page.check("input[name='to'][value='nl.politie']")
            page.set_input_files(
                "#file-input",
                [str(tmp_path / n) for n in ("statement.pdf", "photo.png", "scan.pdf")],
            )
            done = page.locator("#file-list li input[name='attachment']")
            wait_until(lambda: done.count() == 3, 60, what="three uploads finished")
            item = page.locator("#file-list li", has_text="statement.pdf")
            assert "application/pdf" in item.inner_text()
            assert "MB" in item.inner_text()
            bar = item.locator("progress")
            assert bar.get_attribute("max") == bar.evaluate("p => String(p.value)")
            page.set_input_files("#file-input", str(tmp_path / "bundle.zip"))
            wait_until(lambda: done.count() == 4, 60, what="the ZIP uploaded")
            denied = page.locator("#preview tr.denied[data-recipient='nl.politie']")
            denied.wait_for(timeout=30_000)
            assert "de.att.case-files" in denied.inner_text()
            check_axe(page, axe, None, "compose-files")
            page.locator("#file-list li", has_text="bundle.zip").locator("[data-detach]").click()
            assert page.locator("#file-list li").count() == 3
            page.locator("#preview tr.allowed[data-recipient='nl.politie']").wait_for(
                timeout=30_000
            )
            page.click("button[name='op'][value='send']")
            page.wait_for_url("**/messages/*")
            message_id = page.url.split("/messages/")[1].split("?")[0]
            assert page.locator("table.files tbody tr").count() == 3

            reader = browser.new_context().new_page()
            sign_in(reader, nl)
            wait_until(
                lambda: message_id in running.inbox_ids("nl.politie"),
                120,
                what="NL holds the message with its verified files",
            )
            reader.goto(f"{nl}/messages/{message_id}")
            assert "statement.pdf" not in reader.inner_text("table.files")  # not opened yet
            reader.fill("#detail", "case NL-2026-18")
            reader.click("form[action$='/open'] button[type=submit]")
            reader.locator("article.document").wait_for()
            wait_until(
                lambda: (
                    reader.reload(),
                    "waiting for the scanner" not in reader.inner_text("table.files"),
                )[1],
                60,
                what="the scanner decided on every file",
            )
            files = reader.locator("table.files")
            held = files.locator("tr", has_text="photo.png")
            assert "quarantined" in held.inner_text()
            assert "marker found: synthetic test signature" in held.inner_text()
            assert held.locator("form").count() == 0
            mismatch = files.locator("tr", has_text="scan.pdf")
            assert "image/png" in mismatch.inner_text()
            assert mismatch.locator(".mismatch").count() == 1
            check_axe(reader, axe, None, "message-files")
            good = files.locator("tr", has_text="statement.pdf")
            good.locator("input[name='detail']").fill("case NL-2026-18 statement")
            with reader.expect_download() as info:
                good.locator("button[type=submit]").click()
            download = info.value
            assert download.suggested_filename == "statement.pdf"
            assert Path(download.path()).read_bytes() == pdf
            reader.goto(f"{nl}/messages/{message_id}")
            timeline = reader.inner_text("ol.timeline")
            assert "case NL-2026-18 statement (file " in timeline
        finally:
            browser.close()
