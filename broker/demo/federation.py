"""The federation demo (``casebridge demo``): real servers, real nodes, scripted synthetic traffic.

What it does
    Generates a fresh federation (docs/federation.example.yaml: hub, DE and NL in the EU, UA
    outside it, three agencies each, border gateways, the example policies signed), starts every
    process, and sends through the nodes' HTTP APIs (:class:`broker.sdk.NodeClient`) one message
    of every application type in ``schemas/`` (bodies from ``schemas/examples``), plus a
    task-force message, a message the sender's policy refuses, a message redacted at pre-flight,
    and a message to UA while UA's server is down (delivered once it is back). It polls the
    senders' evidence trails until every expected ``relay_accepted``/``delivered`` has arrived,
    prints one table, the node API URLs, the NATS monitoring URLs and every Prometheus metrics
    URL (with a ready ``prometheus.yml`` in the demo directory), then (unless
    ``no_wait``) waits for SIGINT/SIGTERM and stops everything it started.

What it must never do
    Use anything but synthetic data, read a node's keys or database (everything goes through the
    node API), or leave a process running when it returns.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

from broker.core.header import agency_country
from broker.demo import catalogue as demo_catalogue
from broker.demo.files import synthetic_pdf, synthetic_png
from broker.federation.launcher import Federation
from broker.federation.observability import metrics_targets, prometheus_config
from broker.federation.processes import NodeEndpoint, prepare
from broker.federation.spec import load_description
from broker.sdk import Draft, EvidenceEntry, NodeClient, NodeError, SendResult
from broker.sniff import declared_type_for

ROOT: Final = Path(__file__).resolve().parents[2]
EXAMPLES: Final = ROOT / "schemas" / "examples"
DESCRIPTION: Final = ROOT / "docs" / "federation.example.yaml"
POLICIES: Final = ROOT / "docs" / "policies"
ALERT_RULES: Final = ROOT / "ops" / "prometheus" / "alerts.yml"
DEFAULT_DIR: Final = Path(".demo")
DOWN_COUNTRY: Final = "UA"
READY_TIMEOUT: Final = 30.0
DELIVERY_TIMEOUT: Final = 60.0
POLL: Final = 0.05
JUSTIFICATION: Final = "Casebridge demo: checking what arrived (synthetic data)"

EU_POLICE: Final = "Council Framework Decision 2006/960/JHA"
PARTNER_POLICE: Final = "Bilateral police cooperation agreement (synthetic demo)"
VICTIM_SUPPORT: Final = "Directive 2011/36/EU art. 11; written consent of the victim"
STATISTICS: Final = "Directive 2011/36/EU art. 19 (national rapporteurs)"


# --------------------------------------------------------------------- script ---


@dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    """One scripted message: who sends which example to whom, under which markings.

    ``reply_to`` and ``links`` name earlier steps: the reply joins that message's conversation;
    each ``(field, step)`` link writes that step's message id into the body's top-level field.
    ``open_as`` is a recipient that opens the delivered message to show what arrived.
    """

    key: str
    example: str
    sender: str
    purpose: str
    handling: str
    tlp: str
    legal_basis: str
    story: str
    to: tuple[str, ...] = ()
    task_force: str | None = None
    due_days: int | None = None
    reply_to: str | None = None
    links: tuple[tuple[str, str], ...] = ()
    open_as: str | None = None
    label: str | None = None
    refused: bool = False
    attach: bool = False  # send with a synthetic photo and PDF (broker/demo/files.py)

    @property
    def type(self) -> str:
        stem, _, suffix = self.example.rpartition(".")
        return stem if suffix.isdigit() else self.example


SCRIPT: Final = (
    Step(
        key="info",
        example="information.spontaneous",
        sender="nl.politie",
        to=("de.lka-berlin",),
        purpose="investigation",
        handling="H2",
        tlp="AMBER",
        legal_basis=EU_POLICE,
        story="Dutch police share intelligence on a Utrecht recruitment ring",
    ),
    Step(
        key="request",
        example="request.assistance",
        sender="de.lka-berlin",
        to=("nl.politie",),
        purpose="investigation",
        handling="H2",
        tlp="AMBER",
        due_days=14,
        legal_basis=EU_POLICE,
        story="LKA Berlin asks the Dutch police for account holders",
    ),
    Step(
        key="response",
        example="response.assistance",
        sender="nl.politie",
        reply_to="request",
        links=(("request_id", "request"),),
        purpose="investigation",
        handling="H2",
        tlp="AMBER",
        legal_basis=EU_POLICE,
        story="the Dutch police answer the request (reply)",
    ),
    Step(
        key="interview",
        example="coordination.interview",
        sender="de.lka-berlin",
        to=("nl.politie",),
        purpose="investigation",
        handling="H2",
        tlp="AMBER",
        legal_basis=EU_POLICE,
        story="LKA Berlin plans a video interview of a victim-witness",
    ),
    Step(
        key="referral",
        example="referral.victim",
        sender="de.fbs-berlin",
        to=("nl.hulp-ngo",),
        purpose="victim_support",
        handling="H2",
        tlp="AMBER",
        legal_basis=VICTIM_SUPPORT,
        story="a Berlin counselling centre refers a victim to a Dutch NGO",
    ),
    Step(
        key="referral-response",
        example="referral.response",
        sender="nl.hulp-ngo",
        reply_to="referral",
        links=(("referral_id", "referral"),),
        purpose="victim_support",
        handling="H2",
        tlp="AMBER",
        legal_basis=VICTIM_SUPPORT,
        story="the Dutch NGO accepts the referral (reply)",
    ),
    Step(
        key="report",
        example="report.confidential",
        sender="nl.arbeidsinspectie",
        to=("ua.hotline-ngo",),
        purpose="victim_protection",
        handling="H2",
        tlp="AMBER",
        legal_basis=VICTIM_SUPPORT,
        open_as="ua.hotline-ngo",
        story="a hotline report goes abroad; the reporter's identity stays in NL",
    ),
    Step(
        key="alert",
        example="alert.person.2",
        sender="nl.politie",
        to=("de.lka-berlin",),
        purpose="search_for_person",
        handling="H1",
        tlp="AMBER",
        legal_basis=EU_POLICE,
        story="the Dutch police alert LKA Berlin to a wanted recruiter",
    ),
    Step(
        key="bulletin",
        example="bulletin",
        sender="nl.arbeidsinspectie",
        to=("de.lka-berlin", "ua.npu"),
        purpose="prevention",
        handling="H0",
        tlp="GREEN",
        legal_basis="Public-interest prevention work (no personal data)",
        story="a modus-operandi bulletin to two countries",
    ),
    Step(
        key="remedy",
        example="request.legal_remedy",
        sender="de.sta-berlin",
        to=("nl.politie",),
        purpose="prosecution",
        handling="H2",
        tlp="AMBER",
        due_days=30,
        legal_basis=EU_POLICE,
        story="Berlin prosecutors ask about a victim's remedies in Dutch proceedings",
    ),
    Step(
        key="case-update",
        example="case.update",
        sender="nl.politie",
        to=("de.lka-berlin",),
        purpose="investigation",
        handling="H2",
        tlp="AMBER",
        legal_basis=EU_POLICE,
        story="the Dutch police report charges filed",
    ),
    Step(
        key="aftercare",
        example="aftercare.handover",
        sender="de.fbs-berlin",
        to=("ua.hotline-ngo",),
        purpose="victim_support",
        handling="H2",
        tlp="AMBER",
        legal_basis=VICTIM_SUPPORT,
        story="a victim returns home: aftercare handed over (health file stays)",
    ),
    Step(
        key="statistics",
        example="statistics.aggregate",
        sender="nl.arbeidsinspectie",
        to=("de.sta-berlin", "ua.pgo"),
        purpose="statistics",
        handling="H0",
        tlp="GREEN",
        legal_basis=STATISTICS,
        open_as="de.sta-berlin",
        story="yearly figures; cells under k = 15 are suppressed at the sender",
    ),
    Step(
        key="feedback",
        example="feedback",
        sender="ua.hotline-ngo",
        reply_to="aftercare",
        links=(("about_message_id", "aftercare"),),
        purpose="victim_support",
        handling="H1",
        tlp="AMBER",
        legal_basis=VICTIM_SUPPORT,
        story="the Ukrainian NGO gives feedback on the handover (reply)",
    ),
    Step(
        key="correction",
        example="correction",
        sender="nl.politie",
        reply_to="info",
        links=(("corrected_message_id", "info"),),
        purpose="data_quality",
        handling="H2",
        tlp="AMBER",
        legal_basis=EU_POLICE,
        story="the Dutch police correct their intelligence report",
    ),
    Step(
        key="withdrawal",
        example="withdrawal",
        sender="de.lka-berlin",
        reply_to="interview",
        links=(("withdrawn_message_id", "interview"),),
        purpose="data_quality",
        handling="H2",
        tlp="AMBER",
        legal_basis=EU_POLICE,
        story="LKA Berlin withdraws its interview plan",
    ),
    Step(
        key="task-force",
        example="alert.person",
        sender="ua.npu",
        task_force="tf.eastern-route",
        purpose="search_for_person",
        handling="H1",
        tlp="AMBER",
        legal_basis=PARTNER_POLICE,
        label="alert.person (task force)",
        story="missing child: the NPU alerts every member of tf.eastern-route",
    ),
    Step(
        key="refused",
        example="referral.victim",
        sender="de.fbs-berlin",
        to=("nl.politie",),
        purpose="victim_support",
        handling="H2",
        tlp="AMBER",
        legal_basis=VICTIM_SUPPORT,
        refused=True,
        label="referral.victim (refused)",
        story="a counselling centre tries to send a victim's identity to foreign police",
    ),
    Step(
        key="redacted",
        example="request.assistance.2",
        sender="de.lka-berlin",
        to=("ua.npu",),
        purpose="investigation",
        handling="H2",
        tlp="AMBER",
        due_days=14,
        legal_basis=PARTNER_POLICE,
        open_as="ua.npu",
        label="request.assistance (redacted)",
        story="to a non-EU partner a victim's date of birth goes as the year",
    ),
    *(Step(**fields) for fields in demo_catalogue.STEPS),  # issue 19: one of each new type
)

# Sent while UA's server is stopped, after everything above was delivered.
OUTAGE_STEP: Final = Step(
    key="outage",
    example="information.spontaneous.2",
    sender="de.lka-berlin",
    to=("ua.npu",),
    purpose="investigation",
    handling="H1",
    tlp="AMBER",
    legal_basis=PARTNER_POLICE,
    label="information.spontaneous (UA down)",
    story="sent while UA's server is down; delivered when it is back",
)


ATTACH_STEP: Final = Step(
    key="files",
    example="information.spontaneous.2",
    sender="de.lka-berlin",
    to=("nl.politie",),
    purpose="investigation",
    handling="H2",
    tlp="AMBER",
    legal_basis=EU_POLICE,
    label="information.spontaneous + photo + PDF",
    story="LKA Berlin sends a (synthetic) photo and statement PDF, sealed per file",
    open_as="nl.politie",
    attach=True,
)


# -------------------------------------------------------------------- results ---


@dataclass(kw_only=True, slots=True)
class Outcome:
    """What happened to one scripted message (filled in as the demo runs)."""

    step: Step
    number: int
    recipients: tuple[str, ...] = ()
    message_id: str | None = None
    conversation: str | None = None
    submitted_at: float = 0.0
    done_at: float | None = None
    refused_rule: str | None = None
    refused_reason: str | None = None
    redactions: tuple[str, ...] = ()
    evidence: list[EvidenceEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    opened: bool = False  # a recipient opened it: expect `read` evidence too

    @property
    def type_label(self) -> str:
        return self.step.label or self.step.type

    @property
    def route(self) -> str:
        to = ", ".join(self.recipients or self.step.to) or "-"
        tf = f" ({self.step.task_force})" if self.step.task_force else ""
        return f"{self.step.sender} -> {to}{tf}"

    @property
    def markings(self) -> str:
        return f"{self.step.handling} TLP:{self.step.tlp} {self.step.purpose}"

    def delivered_to(self) -> set[str]:
        return {e["actor"] for e in self.evidence if e["kind"] == "delivered"}

    def relayed_by(self) -> set[str]:
        return {e["actor"] for e in self.evidence if e["kind"] == "relay_accepted"}

    def expected_relays(self) -> set[str]:
        origin = agency_country(self.step.sender)
        countries = {agency_country(r) for r in self.recipients} - {origin}
        return {f"{c.lower()}.gateway" for c in (countries | {origin} if countries else set())}

    def complete(self) -> bool:
        """Every recipient delivered, every gateway on the path relayed, openings read."""
        if self.message_id is None:
            return True
        kinds = [e["kind"] for e in self.evidence]
        if any(k in ("rejected", "relay_rejected") for k in kinds):
            return True
        read_ok = not self.opened or "read" in kinds
        return (
            self.delivered_to() >= set(self.recipients)
            and self.relayed_by() >= self.expected_relays()
            and read_ok
        )

    @property
    def outcome(self) -> str:
        if self.refused_rule is not None:
            return f"refused by {self.refused_rule}"
        if self.message_id is None:
            return "not sent"
        refusals = [e for e in self.evidence if e["kind"] in ("rejected", "relay_rejected")]
        if refusals:
            e = refusals[0]
            return f"{e['kind'].replace('_', ' ')} by {e['actor']} ({e['rule_id'] or e['reason']})"
        delivered = len(self.delivered_to() & set(self.recipients))
        text = "delivered" if delivered == len(self.recipients) else "waiting"
        if len(self.recipients) > 1:
            text += f" {delivered}/{len(self.recipients)}"
        if self.redactions:
            text += "; redacted: " + ", ".join(_short_redaction(r) for r in self.redactions)
        return text

    @property
    def trail(self) -> str:
        return trail_summary(self.evidence, len(self.recipients))

    @property
    def latency(self) -> str:
        if self.done_at is None or self.message_id is None:
            return "-"
        return f"{self.done_at - self.submitted_at:.2f} s"


def _short_redaction(text: str) -> str:
    """``coarsen /victims/*/date_of_birth to date_to_year [rule]`` -> ``date_of_birth -> year``."""
    words = text.split()
    if len(words) < 2:
        return text
    op, path = words[0], words[1]
    leaf = path.rstrip("/").rsplit("/", 1)[-1]
    if op == "drop":
        return f"{path} dropped"
    if op == "coarsen" and len(words) >= 4:
        return f"{leaf} -> {words[3].removeprefix('date_to_').removeprefix('location_to_')}"
    if op == "suppress":
        return "small cells suppressed"
    return text


def trail_summary(evidence: Sequence[EvidenceEntry], recipients: int) -> str:
    """``relay ok DE, relay ok UA, delivered`` from an evidence trail, in arrival order.

    Repeated events are counted (``relay ok NL x2``: the origin gateway relays once per
    destination country; ``delivered 2/2`` for two recipients).
    """
    counts: dict[str, int] = {}
    for e in evidence:
        kind, actor = e["kind"], e["actor"]
        country = agency_country(actor) if "." in actor else actor
        why = e["rule_id"] or e["reason"]
        label = {
            "relay_accepted": f"relay ok {country}",
            "relay_rejected": f"relay refused {country} ({why})",
            "delivered": "delivered",
            "rejected": f"rejected by {actor} ({why})",
            "read": "read",
        }.get(kind)
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    parts = []
    for label, n in counts.items():
        if label == "delivered" and recipients > 1:
            parts.append(f"delivered {n}/{recipients}")
        else:
            parts.append(label if n == 1 else f"{label} x{n}")
    return ", ".join(parts) or "-"


def format_table(outcomes: Sequence[Outcome]) -> str:
    """One readable table of the demo's messages."""
    headers = (
        "#",
        "type",
        "from -> to",
        "markings",
        "outcome at the sender",
        "evidence",
        "latency",
    )
    rows = [
        (
            str(o.number),
            o.type_label,
            o.route,
            o.markings,
            o.outcome,
            o.trail,
            o.latency,
        )
        for o in outcomes
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
    return "\n".join(lines)


def format_notes(outcomes: Sequence[Outcome]) -> str:
    """What the table cannot show: refusal reasons, what redaction removed, what arrived."""
    lines = []
    for o in outcomes:
        for note in o.notes:
            lines.append(f"  #{o.number} {o.type_label}: {note}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- runner ---


class Stop(Exception):
    """SIGINT or SIGTERM arrived: stop the demo and everything it started."""


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _example(name: str) -> dict[str, Any]:
    value = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise TypeError(f"example {name} is not a JSON object")
    return value


def _fresh_dir(base: Path) -> None:
    """Empty ``base`` for a new federation; refuse to wipe a directory that is not one."""
    if base.exists():
        if (base / "federation.json").exists():
            Federation.open(base).down()  # a previous demo that was not stopped
        elif any(base.iterdir()):
            raise SystemExit(f"{base} exists and is not a demo federation: choose another --dir")
        shutil.rmtree(base)
    base.mkdir(parents=True)
    # Self-ignoring: nothing generated here (keys, stores) is ever committed.
    (base / ".gitignore").write_text("*\n", encoding="utf-8")


class Demo:
    """One run of the demo against a federation directory. Use :func:`run`."""

    def __init__(self, base: Path, *, out: TextIO, now: Callable[[], datetime]) -> None:
        self.base = base
        self.out = out
        self.now = now
        self.fed: Federation | None = None
        self.clients: dict[str, NodeClient] = {}
        self.endpoints: list[NodeEndpoint] = []
        self.outcomes: dict[str, Outcome] = {}
        self.consoles: list[Any] = []  # broker.console.demo.ConsoleLogin, one per node

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # --------------------------------------------------------------- setup

    def start(self) -> Federation:
        started = time.monotonic()
        _fresh_dir(self.base)
        fed = Federation.init(load_description(DESCRIPTION), self.base, now=self.now())
        self.fed = fed
        self.endpoints = prepare(fed, policy_dir=POLICIES)
        from broker.console.demo import enable_consoles  # noqa: PLC0415 - console on demand

        self.consoles = enable_consoles((e.agency_id, e.settings) for e in self.endpoints)
        countries = ", ".join(
            f"{c.code}{' (EU)' if c.eu else ' (non-EU)'}"
            for c in fed.settings.description.countries
        )
        self.say(f"Federation generated in {fed.base}: hub + {countries}")
        # The stream setup's TLS close makes asyncio warn about eof_received: noise here.
        logging.getLogger("asyncio").setLevel(logging.ERROR)
        fed.up()
        self.clients = {e.agency_id: NodeClient(e.url, e.token, timeout=15) for e in self.endpoints}
        self._wait_ready()
        n_proc = len(fed.status())
        self.say(
            f"Up in {time.monotonic() - started:.1f} s: {n_proc} processes (hub, "
            f"{len(fed.settings.countries)} country servers, {len(fed.settings.gateways)} "
            f"border gateways, {len(self.endpoints)} agency nodes)\n"
        )
        return fed

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        waiting = set(self.clients)
        while waiting:
            for agency in sorted(waiting):
                try:
                    if self.clients[agency].ready()["status"] == "ready":
                        waiting.discard(agency)
                except NodeError:
                    pass  # not listening yet
            if waiting and time.monotonic() > deadline:
                raise SystemExit(f"nodes not ready after {READY_TIMEOUT:.0f} s: {sorted(waiting)}")
            time.sleep(POLL * 2)

    # ---------------------------------------------------------------- send

    def _draft(self, step: Step) -> Draft:
        body = _example(step.example)
        for name, key in step.links:
            linked = self.outcomes[key].message_id
            if linked is not None:
                body[name] = linked
        draft: Draft = {
            "type": step.type,
            "purpose": step.purpose,
            "handling": step.handling,
            "tlp": step.tlp,
            "legal_basis": step.legal_basis,
            "body": body,
        }
        if step.to:
            draft["to"] = list(step.to)
        if step.task_force:
            draft["task_force"] = step.task_force
        if step.due_days is not None:
            draft["due"] = (self.now() + timedelta(days=step.due_days)).date().isoformat()
        if step.reply_to is not None:
            original = self.outcomes[step.reply_to].message_id
            if original is not None:
                draft["in_reply_to"] = original
        if step.attach:
            folder = self.base / "demo-files"
            folder.mkdir(exist_ok=True)
            files = [
                synthetic_png(folder / "scene-photo.png"),
                synthetic_pdf(folder / "witness-statement.pdf"),
            ]
            draft["attachments"] = [
                self.clients[step.sender].upload_attachment(f, media_type=declared_type_for(f))[
                    "attachment"
                ]
                for f in files
            ]
        return draft

    def send(self, step: Step, number: int) -> Outcome:
        outcome = Outcome(step=step, number=number)
        self.outcomes[step.key] = outcome
        for key in {step.reply_to, *(k for _, k in step.links)} - {None}:
            # A reply needs the original in the replier's inbox first.
            self.wait([self.outcomes[str(key)]], timeout=DELIVERY_TIMEOUT)
        client = self.clients[step.sender]
        draft = self._draft(step)
        try:
            explained = client.explain(draft)
            outcome.recipients = tuple(explained.get("recipients", step.to))
            outcome.submitted_at = time.monotonic()
            result: SendResult = client.send(draft)
        except NodeError as exc:
            if exc.reason != "policy_denied":
                raise
            outcome.refused_rule = exc.rule_id
            outcome.refused_reason = exc.detail
            outcome.notes.append(
                f"refused before sealing by rule {exc.rule_id}: "
                f"{exc.detail.removeprefix(f'[{exc.rule_id}] ')}"
            )
            return outcome
        outcome.message_id = result["message_id"]
        outcome.conversation = result["conversation"]
        outcome.redactions = tuple(result["redactions"])
        return outcome

    # ---------------------------------------------------------------- poll

    def refresh(self, outcome: Outcome) -> None:
        if outcome.message_id is None:
            return
        trail = self.clients[outcome.step.sender].evidence(outcome.message_id)
        outcome.evidence = trail["evidence"]
        if outcome.done_at is None and outcome.delivered_to() >= set(outcome.recipients):
            outcome.done_at = time.monotonic()

    def wait(self, outcomes: Sequence[Outcome], *, timeout: float) -> bool:
        """Poll the senders' evidence until ``outcomes`` are complete (False on timeout).

        Every message still in flight is polled, not only those waited for, so each one's
        latency is when its sender first saw it delivered (to within one polling round).
        """
        deadline = time.monotonic() + timeout
        while True:
            for outcome in [o for o in self.outcomes.values() if not o.complete()]:
                self.refresh(outcome)
            if all(o.complete() for o in outcomes):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL)

    def wait_inbox(self, outcome: Outcome, agency: str, *, timeout: float) -> float | None:
        """When ``outcome``'s message showed up in ``agency``'s inbox (monotonic), or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with suppress(NodeError):  # the node may still be reconnecting
                entries = self.clients[agency].inbox(conversation=outcome.conversation)
                if any(e["message_id"] == outcome.message_id for e in entries):
                    return time.monotonic()
            time.sleep(POLL)
        return None

    # ------------------------------------------------------------- inspect

    def inspect(self, outcome: Outcome) -> None:
        """Open a delivered message at ``open_as`` to show what crossed the border."""
        step = outcome.step
        if step.open_as is None or outcome.message_id is None:
            return
        if step.attach:
            # Listing files (name, type, size, state) is not opening them: no `read` evidence.
            files = self.clients[step.open_as].attachments(outcome.message_id)
            outcome.notes.append(
                f"{step.open_as} received "
                + "; ".join(
                    f"{f['name']} ({f['media_type']}, sniffed {f['sniffed_type']}, "
                    f"{f['size']} bytes, {f['state']})"
                    for f in files
                )
                + ": each sealed with its own key, verified chunk by chunk and by SHA-256"
            )
            return
        opened = self.clients[step.open_as].show(
            outcome.message_id, justification=JUSTIFICATION, actor="demo"
        )
        outcome.opened = True
        body: Mapping[str, Any] = opened.get("body") or {}
        original = _example(step.example)
        if step.type == "report.confidential":
            reporter = original.get("reporter", {})
            who = f"{reporter.get('given_names', '')} {reporter.get('family_name', '')}".strip()
            kept = "STILL PRESENT (bug)" if "reporter" in body else "absent"
            outcome.notes.append(
                f"the sender's draft named the reporter ({who}, {reporter.get('kind')}); "
                f"in the body {step.open_as} received, 'reporter' is {kept} "
                "[builtin.reporter-identity: stripped before leaving "
                f"{agency_country(step.sender)}]"
            )
        elif step.type == "statistics.aggregate":
            cells = body.get("cells") or []
            suppressed = sum(1 for c in cells if isinstance(c, dict) and c.get("suppressed"))
            outcome.notes.append(
                f"{step.open_as} received {len(cells)} cells, {suppressed} suppressed "
                f"(count null) at k = {body.get('k_threshold')} [builtin.small-cells]"
            )
        else:
            before = [v.get("date_of_birth") for v in original.get("victims", [])]
            after = [v.get("date_of_birth") for v in body.get("victims", [])]
            changes = ", ".join(f"{b} -> {a}" for b, a in zip(before, after, strict=False))
            outcome.notes.append(
                f"victims' date of birth as sent by the officer vs as {step.open_as} received "
                f"it: {changes} ({'; '.join(outcome.redactions)})"
            )

    def explain_redactions(self, outcome: Outcome) -> None:
        if outcome.redactions and outcome.step.open_as is None:
            outcome.notes.append("pre-flight redaction: " + "; ".join(outcome.redactions))

    # ---------------------------------------------------------------- main

    def traffic(self) -> list[Outcome]:
        assert self.fed is not None  # noqa: S101 - start() ran
        self.say(f"Sending {len(SCRIPT)} messages through the node APIs ...")
        for number, step in enumerate(SCRIPT, start=1):
            self.send(step, number)
        self.send(ATTACH_STEP, len(SCRIPT) + 1)
        scripted = list(self.outcomes.values())
        if not self.wait(scripted, timeout=DELIVERY_TIMEOUT):
            self.say("  (some evidence did not arrive in time: see the table)")
        for outcome in scripted:
            self.inspect(outcome)
            self.explain_redactions(outcome)
        self.wait(scripted, timeout=10)

        self.say(f"Stopping {DOWN_COUNTRY}'s server to show store-and-forward ...")
        self.fed.stop_country(DOWN_COUNTRY)
        outage = self.send(OUTAGE_STEP, len(SCRIPT) + 2)
        # Until UA returns the message can get no further than the sender's border.
        time.sleep(2.0)
        self.refresh(outage)
        self.say(
            f"  {DOWN_COUNTRY} down: message {outage.message_id} waits in "
            f"OUT_{DOWN_COUNTRY} on the DE server; evidence so far: {outage.trail}"
        )
        outage.notes.append(
            f"while {DOWN_COUNTRY} was down (2 s) the sender saw: {outage.trail}; "
            f"delivered after {DOWN_COUNTRY} was started again"
        )
        restarted = time.monotonic()
        self.fed.start_country(DOWN_COUNTRY)
        self.say(f"  {DOWN_COUNTRY} started again; waiting for the backlog ...")
        arrived = self.wait_inbox(outage, outage.recipients[0], timeout=DELIVERY_TIMEOUT)
        if arrived is not None:
            self.say(
                f"  in {outage.recipients[0]}'s inbox {arrived - restarted:.1f} s after the restart"
            )
        if self.wait([outage], timeout=DELIVERY_TIMEOUT):
            assert outage.done_at is not None  # noqa: S101 - complete() implies delivered
            self.say(
                f"  its `delivered` evidence reached {outage.step.sender} "
                f"{outage.done_at - restarted:.1f} s after the restart\n"
            )
            if arrived is not None:
                outage.notes.append(
                    f"in {outage.recipients[0]}'s inbox {arrived - restarted:.1f} s after "
                    f"{DOWN_COUNTRY} restarted; the evidence back to {outage.step.sender} took "
                    f"{outage.done_at - arrived:.1f} s more ({DOWN_COUNTRY} -> DE sourcing "
                    "resumes later than DE -> UA)"
                )
        return [*scripted, outage]

    def print_access(self) -> None:
        assert self.fed is not None  # noqa: S101 - start() ran
        settings = self.fed.settings
        self.say("Node APIs (Authorization: Bearer <token from the file>):")
        for e in self.endpoints:
            token_file = e.settings.with_suffix(".token")
            self.say(f"  {e.agency_id:<22} {e.url}  token: {token_file}")
        self.say("NATS monitoring:")
        self.say(f"  hub                    {settings.hub.monitor_url}")
        for code, server in settings.countries.items():
            self.say(f"  {code:<22} {server.monitor_url}")
        self.print_metrics()
        from broker.console.demo import format_logins  # noqa: PLC0415

        self.say(format_logins(self.consoles))
        self.say(
            "Try: casebridge inbox --node URL --token $(cat TOKEN_FILE); "
            "casebridge status ID --node URL --token ..."
        )

    def print_metrics(self) -> None:
        """Every /metrics URL, and a Prometheus configuration scraping them all."""
        assert self.fed is not None  # noqa: S101 - start() ran
        targets = metrics_targets(self.fed)
        self.say("Prometheus metrics (no token; docs/operations.md):")
        for target in targets:
            self.say(f"  {target.name:<22} {target.url}")
        config = self.fed.base / "prometheus.yml"
        config.write_text(
            prometheus_config(targets, scrape_interval="5s", rule_files=[ALERT_RULES]),
            encoding="utf-8",
        )
        self.say(
            f"  scrape them all: prometheus --config.file={config} "
            f"--storage.tsdb.path={self.fed.base / 'prometheus'}"
        )

    def stop(self) -> None:
        if self.fed is None:
            return
        self.fed.close()
        left = [s.name for s in self.fed.status() if s.alive]
        if left:
            self.say(f"Still running (stop with `casebridge federation down {self.base}`): {left}")
        else:
            self.say(f"Stopped {len(self.fed.status())} processes; nothing left running.")


def run(
    base: Path = DEFAULT_DIR,
    *,
    wait: bool = True,
    out: TextIO,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Outcome]:
    """Run the whole demo; returns the outcomes (also printed). Always stops what it started."""
    demo = Demo(base, out=out, now=now)
    outcomes: list[Outcome] = []
    with _stop_on_signals():
        try:
            demo.start()
            outcomes = demo.traffic()
            demo.say(format_table(outcomes))
            notes = format_notes(outcomes)
            if notes:
                demo.say("\nNotes:\n" + notes)
            demo.say("")
            demo.print_access()
            if wait:
                demo.say("\nThe federation keeps running. Ctrl-C stops everything.")
                while True:
                    time.sleep(3600)
        except Stop as exc:
            demo.say(f"\n{exc.args[0] if exc.args else 'signal'}: stopping ...")
        finally:
            demo.stop()
    return outcomes
