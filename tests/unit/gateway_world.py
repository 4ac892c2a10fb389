"""Test-only: an in-process federation of border gateways (the real ``Border`` logic) that
routes their publications by subject until nothing is left, so unit tests can follow a message
from submission to delivery without NATS. Integration tests use real servers."""

from __future__ import annotations

import json
import secrets
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from broker.core.envelope import RecipientIdentity, SenderIdentity, seal
from broker.core.header import Header, agency_country
from broker.core.policy import Policy, parse_policy
from broker.federation.spec import load_description
from broker.gateway.border import Border, MemoryCrossings, Outcome
from broker.loaders import load_schema_registry
from broker.pki.dev import DevFederation, build_dev_federation

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "schemas" / "examples"


def build(now: datetime) -> DevFederation:
    spec = load_description(ROOT / "docs" / "federation.example.yaml").to_pki_spec()
    return build_dev_federation(spec, now=now)


def policies() -> dict[str, Policy]:
    return {
        cc: parse_policy((ROOT / "docs" / "policies" / f"{cc.lower()}.yaml").read_bytes())
        for cc in ("DE", "NL", "UA")
    }


def sender(dev: DevFederation, agency_id: str) -> SenderIdentity:
    a = dev.agency(agency_id)
    return SenderIdentity(agency_id=agency_id, signing_kid=a.signing_kid, signing_key=a.signing.key)


def recipient(dev: DevFederation, agency_id: str) -> RecipientIdentity:
    a = dev.agency(agency_id)
    return RecipientIdentity(
        agency_id=agency_id, agreement_kid=a.agreement_kid, agreement_key=a.agreement.key
    )


@dataclass
class GatewayWorld:
    dev: DevFederation
    now: datetime
    policy: dict[str, Policy]
    borders: dict[str, Border] = field(default_factory=dict)
    crossings: dict[str, MemoryCrossings] = field(default_factory=dict)
    delivered: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    outcomes: list[tuple[str, str, Outcome]] = field(default_factory=list)
    down: set[str] = field(default_factory=set)
    parked: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    _seen: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        for cc in ("DE", "NL", "UA"):
            self.crossings[cc] = MemoryCrossings()
            self.borders[cc] = Border(
                country=cc,
                identity=sender(self.dev, f"{cc.lower()}.gateway"),
                directory=lambda: self.dev.directory,
                policy=lambda cc=cc: self.policy.get(cc),  # type: ignore[misc]
                crossings=self.crossings[cc],
            )

    def seal(
        self, agency: str, recipients: tuple[str, ...], example: str, **kw: Any
    ) -> tuple[Header, bytes]:
        registry = load_schema_registry()
        body = json.loads((EXAMPLES / f"{example}.json").read_text())
        t = int(self.now.timestamp())
        fields: dict[str, Any] = {
            "fed": self.dev.federation_id,
            "id": str(uuid.uuid4()),
            "type": example,
            "type_version": 1,
            "conversation": str(uuid.uuid4()),
            "sender": agency,
            "recipients": tuple(sorted(recipients)),
            "handling": "H1",
            "tlp": "GREEN",
            "purpose": "prevention",
            "legal_basis": "test",
            "categories": tuple(sorted(registry.categories(example, 1, body))),
            "iat": t,
            "exp": t + 86400,
        }
        fields.update(kw)
        header = Header(**fields)
        wire = seal(
            header=header,
            body=body,
            sender=sender(self.dev, agency),
            resolver=self.dev.directory,
            now=self.now,
            salt=secrets.token_bytes(16),
        )
        return header, wire

    def submit(self, agency: str, wire: bytes) -> None:
        self._route(f"cb.submit.{agency}", f"submit:{uuid.uuid4()}", wire)

    def bring_up(self, cc: str) -> None:
        self.down.discard(cc)
        for data in self.parked.pop(cc, []):
            self._inbound(cc, data)

    def _route(self, subject: str, msg_id: str, data: bytes) -> None:
        key = (subject, msg_id)
        if key in self._seen:  # JetStream duplicate window
            return
        self._seen.add(key)
        parts = subject.split(".")
        if parts[1] == "submit":
            agency = ".".join(parts[2:])
            cc = agency_country(agency)
            outcome = self.borders[cc].submission(data, subject_agency=agency, now=self.now)
            # Recorded before publishing, as the runner does with the ledger.
            self.crossings[cc].record("egress", [outcome], now=self.now)
            self.outcomes.append((cc, "egress", outcome))
            for p in outcome.publishes:
                self._route(p.subject, p.msg_id, p.data)
        elif parts[1] == "out":
            destination = parts[3].upper()
            if destination in self.down:
                self.parked[destination].append(data)
            else:
                self._inbound(destination, data)
        elif parts[1] == "deliver":
            # cb.deliver.<agency> or cb.deliver.<agency>.evidence (agency ids have one dot)
            self.delivered[".".join(parts[2:4])].append(data)

    def _inbound(self, cc: str, data: bytes) -> None:
        outcome = self.borders[cc].inbound(data, now=self.now)
        self.crossings[cc].record("ingress", [outcome], now=self.now)
        self.outcomes.append((cc, "ingress", outcome))
        for p in outcome.publishes:
            self._route(p.subject, p.msg_id, p.data)
