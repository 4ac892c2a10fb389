"""In-process demo: a dev PKI, then sample messages sealed, checked as a gateway would, opened.

No network and no servers: it shows the sealed-message core and the PKI working together on
synthetic data (schemas/examples). The federation demo (real NATS servers) builds on this.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from broker.core.envelope import (
    RecipientIdentity,
    SenderIdentity,
    open_message,
    seal,
    verify_routing,
)
from broker.core.header import Header
from broker.core.replay import MemoryReplayStore
from broker.core.schemas import SchemaRegistry
from broker.errors import CasebridgeError
from broker.loaders import load_schema_registry
from broker.pki.dev import DEMO_SPEC, DevFederation, build_dev_federation

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


@dataclass(frozen=True, kw_only=True, slots=True)
class Sample:
    """One demo message: who sends what to whom, under which markings."""

    example: str
    sender: str
    recipients: tuple[str, ...]
    purpose: str
    handling: str
    tlp: str
    task_force: str | None = None
    due_days: int | None = None


SAMPLES = (
    Sample(
        example="request.assistance",
        sender="de.lka-berlin",
        recipients=("nl.politie",),
        purpose="investigation",
        handling="H2",
        tlp="AMBER",
        due_days=14,
    ),
    Sample(
        example="referral.victim",
        sender="nl.hulp-ngo",
        recipients=("ua.hotline-ngo",),
        purpose="victim_support",
        handling="H3",
        tlp="RED",
    ),
    Sample(
        example="information.spontaneous",
        sender="ua.npu",
        recipients=("de.lka-berlin",),
        purpose="investigation",
        handling="H2",
        tlp="AMBER",
    ),
    Sample(
        example="alert.person",
        sender="de.lka-berlin",
        recipients=("nl.politie", "ua.npu"),
        purpose="search_for_person",
        handling="H1",
        tlp="AMBER",
        task_force="tf.eastern-route",
    ),
    Sample(
        example="bulletin",
        sender="nl.arbeidsinspectie",
        recipients=("de.lka-berlin", "ua.npu"),
        purpose="prevention",
        handling="H0",
        tlp="GREEN",
    ),
    Sample(
        example="statistics.aggregate",
        sender="ua.pgo",
        recipients=("de.sta-berlin",),
        purpose="statistics",
        handling="H0",
        tlp="CLEAR",
    ),
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Row:
    example: str
    route: str
    markings: str
    categories: str
    size: int
    seal_ms: float
    open_ms: float
    outcome: str


def _sender(dev: DevFederation, agency_id: str) -> SenderIdentity:
    a = dev.agency(agency_id)
    return SenderIdentity(
        agency_id=a.agency_id, signing_kid=a.signing_kid, signing_key=a.signing.key
    )


def _recipient(dev: DevFederation, agency_id: str) -> RecipientIdentity:
    a = dev.agency(agency_id)
    return RecipientIdentity(
        agency_id=a.agency_id, agreement_kid=a.agreement_kid, agreement_key=a.agreement.key
    )


def _header(
    dev: DevFederation, sample: Sample, body: Any, registry: SchemaRegistry, now: datetime
) -> Header:
    t = int(now.timestamp())
    return Header(
        fed=dev.federation_id,
        id=str(uuid.uuid4()),
        type=sample.example,
        type_version=1,
        conversation=str(uuid.uuid4()),
        sender=sample.sender,
        recipients=tuple(sorted(sample.recipients)),
        task_force=sample.task_force,
        handling=sample.handling,
        tlp=sample.tlp,
        purpose=sample.purpose,
        legal_basis="Directive 2011/36/EU; bilateral police cooperation agreement (demo)",
        categories=tuple(sorted(registry.categories(sample.example, 1, body))),
        iat=t,
        exp=t + 14 * 86400,
        due=(now + timedelta(days=sample.due_days)).date().isoformat() if sample.due_days else None,
    )


def run(*, out_dir: Path | None, now: datetime) -> list[Row]:
    """Build the dev PKI (written to ``out_dir`` if given) and push every sample through."""
    dev = build_dev_federation(DEMO_SPEC, now=now, out_dir=out_dir)
    registry = load_schema_registry()
    rows: list[Row] = []
    for sample in SAMPLES:
        body = json.loads((EXAMPLES / f"{sample.example}.json").read_text())
        header = _header(dev, sample, body, registry, now)
        started = time.perf_counter()
        wire = seal(
            header=header,
            body=body,
            sender=_sender(dev, sample.sender),
            resolver=dev.directory,
            now=now,
            salt=secrets.token_bytes(16),
        )
        seal_ms = (time.perf_counter() - started) * 1000
        verify_routing(wire, resolver=dev.directory, now=now)  # what each border gateway checks
        outcomes = []
        open_ms = 0.0
        for rcpt in header.recipients:
            started = time.perf_counter()
            opened = open_message(
                wire,
                recipient=_recipient(dev, rcpt),
                resolver=dev.directory,
                replay=MemoryReplayStore(),
                validator=registry,
                now=now,
            )
            ms = (time.perf_counter() - started) * 1000
            open_ms = max(open_ms, ms)
            outcomes.append("opened" if opened.body == body else "MISMATCH")
        rows.append(
            Row(
                example=sample.example,
                route=f"{sample.sender} -> {', '.join(header.recipients)}"
                + (f" ({sample.task_force})" if sample.task_force else ""),
                markings=f"{sample.handling}/TLP:{sample.tlp}",
                categories=", ".join(header.categories) or "-",
                size=len(wire),
                seal_ms=seal_ms,
                open_ms=open_ms,
                outcome=", ".join(sorted(set(outcomes))),
            )
        )
    rows.extend(_refusals(dev, registry, now))
    return rows


def _refusals(dev: DevFederation, registry: SchemaRegistry, now: datetime) -> list[Row]:
    """Two messages that must not open: read by a non-recipient, and altered in transit."""
    sample = Sample(
        example="bulletin",
        sender="de.lka-berlin",
        recipients=("nl.politie",),
        purpose="prevention",
        handling="H0",
        tlp="GREEN",
    )
    body = json.loads((EXAMPLES / "bulletin.json").read_text())
    sender = dev.agency("de.lka-berlin")
    wire = seal(
        header=_header(dev, sample, body, registry, now),
        body=body,
        sender=SenderIdentity(
            agency_id=sender.agency_id,
            signing_kid=sender.signing_kid,
            signing_key=sender.signing.key,
        ),
        resolver=dev.directory,
        now=now,
        salt=secrets.token_bytes(16),
    )
    at = wire.index(b"ciphertext") + 20
    altered = wire[:at] + (b"A" if wire[at : at + 1] != b"A" else b"B") + wire[at + 1 :]
    rows = []
    for label, data, reader in (
        ("bulletin, read by a non-recipient", wire, "ua.npu"),
        ("bulletin, ciphertext altered in transit", altered, "nl.politie"),
    ):
        agency = dev.agency(reader)
        try:
            open_message(
                data,
                recipient=RecipientIdentity(
                    agency_id=agency.agency_id,
                    agreement_kid=agency.agreement_kid,
                    agreement_key=agency.agreement.key,
                ),
                resolver=dev.directory,
                replay=MemoryReplayStore(),
                validator=registry,
                now=now,
            )
            outcome = "ACCEPTED (bug)"
        except CasebridgeError as exc:
            outcome = f"refused: {exc.reason.value}"
        rows.append(
            Row(
                example=label,
                route=f"de.lka-berlin -> nl.politie, opened by {reader}",
                markings="H0/TLP:GREEN",
                categories="-",
                size=len(data),
                seal_ms=0.0,
                open_ms=0.0,
                outcome=outcome,
            )
        )
    return rows


def _short(categories: str, limit: int = 44) -> str:
    return (
        categories
        if len(categories) <= limit
        else categories[: limit - 3].rsplit(",", 1)[0] + ", ..."
    )


def format_table(rows: list[Row]) -> str:
    headers = (
        "message type",
        "route",
        "markings",
        "declared categories",
        "bytes",
        "seal ms",
        "open ms",
        "result",
    )
    cells = [
        (
            r.example,
            r.route,
            r.markings,
            _short(r.categories),
            str(r.size),
            f"{r.seal_ms:.1f}",
            f"{r.open_ms:.1f}",
            r.outcome,
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells)
    return "\n".join(lines)
