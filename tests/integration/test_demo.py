"""`casebridge demo --no-wait` end to end: a real federation, scripted traffic, one table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker.demo import catalogue as demo_catalogue
from broker.federation.launcher import Federation

pytestmark = pytest.mark.integration

APPLICATION_TYPES = (
    "information.spontaneous",
    "request.assistance",
    "response.assistance",
    "coordination.interview",
    "referral.victim",
    "referral.response",
    "report.confidential",
    "alert.person",
    "bulletin",
    "request.legal_remedy",
    "case.update",
    "aftercare.handover",
    "statistics.aggregate",
    "feedback",
    "correction",
    "withdrawal",
    *demo_catalogue.TYPES,  # issue 19
)


def _rows(output: str) -> dict[str, str]:
    """Table rows keyed by their type column (the text between the number and the route)."""
    rows = {}
    for line in output.splitlines():
        number, _, rest = line.partition("  ")
        if number.strip().isdigit() and " -> " in rest:
            label = rest.strip().split("  ")[0].strip()
            rows[label] = rest
    return rows


def _processes_under(base: Path) -> list[str]:
    """Command lines of live processes that mention the demo directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if str(base) in cmdline and state != "Z":
            found.append(cmdline)
    return found


@pytest.fixture(scope="module")
def demo_run(nats_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Run the demo once (in a subprocess, as `make demo` would) and keep its output."""
    base = tmp_path_factory.mktemp("demo") / "fed"
    env = {**os.environ, "CASEBRIDGE_NATS_SERVER": str(nats_binary)}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "broker.cli", "demo", "--no-wait", "--dir", str(base)],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            check=False,
        )
    finally:
        if (base / "federation.json").exists():
            Federation.open(base).close()  # whatever happened, leave nothing running
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return base, done.stdout


class TestDemo:
    def test_every_application_type_is_delivered(self, demo_run: tuple[Path, str]) -> None:
        """Each application type has a row whose outcome is `delivered`."""
        rows = _rows(demo_run[1])
        for message_type in APPLICATION_TYPES:
            assert message_type in rows, f"no row for {message_type}"
            assert " delivered" in rows[message_type], rows[message_type]
            assert "refused" not in rows[message_type], rows[message_type]

    def test_cross_border_rows_show_relays_and_delivery(self, demo_run: tuple[Path, str]) -> None:
        """A cross-border row's evidence names both gateways and the delivery."""
        row = _rows(demo_run[1])["request.assistance"]
        assert "relay ok DE, relay ok NL, delivered" in row

    def test_task_force_reaches_every_other_member(self, demo_run: tuple[Path, str]) -> None:
        """The task-force alert goes to the two other members and both deliver."""
        row = _rows(demo_run[1])["alert.person (task force)"]
        assert "(tf.eastern-route)" in row
        assert "delivered 2/2" in row

    def test_refusal_shows_rule_and_reason(self, demo_run: tuple[Path, str]) -> None:
        """The refused message shows the denying rule in the table and its reason in the notes."""
        output = demo_run[1]
        assert (
            "refused by de.out.ngo-no-police-abroad" in _rows(output)["referral.victim (refused)"]
        )
        assert "German counselling centres do not pass victims' identities" in output

    def test_redaction_shows_what_was_removed(self, demo_run: tuple[Path, str]) -> None:
        """The redacted request shows the date of birth coarsened to the year as received."""
        output = demo_run[1]
        assert "date_of_birth -> year" in _rows(output)["request.assistance (redacted)"]
        assert "2009-07-03 -> 2009" in output

    def test_confidential_reporter_is_stripped(self, demo_run: tuple[Path, str]) -> None:
        """The confidential report arrives without its reporter."""
        output = demo_run[1]
        assert "/reporter dropped" in _rows(output)["report.confidential"]
        assert "'reporter' is absent" in output

    def test_small_cells_are_suppressed(self, demo_run: tuple[Path, str]) -> None:
        """The statistics row says small cells were suppressed and the note counts them."""
        output = demo_run[1]
        assert "small cells suppressed" in _rows(output)["statistics.aggregate"]
        assert "suppressed (count null) at k = 15" in output

    def test_message_to_a_stopped_country_arrives_after_restart(
        self, demo_run: tuple[Path, str]
    ) -> None:
        """The message sent while UA was down waits at DE, then is delivered after the restart."""
        output = demo_run[1]
        row = _rows(output)["information.spontaneous (UA down)"]
        assert "delivered" in row
        assert "relay ok UA" in row
        assert "UA down: message" in output
        assert "evidence so far: relay ok DE" in output

    def test_message_with_photo_and_pdf_is_delivered_with_verified_files(
        self, demo_run: tuple[Path, str]
    ) -> None:
        """The message with a synthetic photo and PDF is delivered; both files verified."""
        output = demo_run[1]
        assert "delivered" in _rows(output)["information.spontaneous + photo + PDF"]
        assert "scene-photo.png (image/png, sniffed image/png" in output
        assert "witness-statement.pdf (application/pdf, sniffed application/pdf" in output
        assert output.count(" bytes, verified)") == 2

    def test_prints_node_urls_and_monitoring(self, demo_run: tuple[Path, str]) -> None:
        """The demo prints each node's API URL with its token file and the NATS monitors."""
        output = demo_run[1]
        assert "ua.npu" in output
        assert "settings/ua.npu.token" in output
        assert "NATS monitoring:" in output

    def test_prints_console_urls_with_demo_logins(self, demo_run: tuple[Path, str]) -> None:
        """The demo prints a console URL per node with the synthetic logins."""
        output = demo_run[1]
        assert "Consoles (sign in as officer, supervisor, auditor" in output
        assert re.search(r"ua\.npu\s+http://127\.0\.0\.1:\d+", output.split("Consoles")[1])

    def test_prints_every_metrics_url(self, demo_run: tuple[Path, str]) -> None:
        """The demo lists a /metrics URL per node and gateway, the exporter's, and a config."""
        base, output = demo_run
        _, _, section = output.partition("Prometheus metrics")
        urls = [line.split()[1] for line in section.splitlines() if line.endswith("/metrics")]
        assert len(urls) == 9 + 3 + 1
        assert len(set(urls)) == len(urls)
        assert (base / "prometheus.yml").exists()

    def test_nothing_is_left_running(self, demo_run: tuple[Path, str]) -> None:
        """After `--no-wait` every federation process is gone."""
        base, output = demo_run
        assert "nothing left running" in output
        assert not [s.name for s in Federation.open(base).status() if s.alive]
        assert _processes_under(base) == []
