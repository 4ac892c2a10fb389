"""The cleartext routing header of a sealed message, and its strict parser.

The header is what border gateways decide on without reading content, so it is small, typed
and closed: unknown members are refused, every member is checked here. It is never trusted
before the outer signature over it has been verified (callers name such dicts ``unverified_*``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

from broker.core.attachments import Descriptor, parse_descriptors
from broker.core.ids import is_uuid, is_uuid4
from broker.errors import InvalidMessage, Reason

PROTOCOL_VERSION: Final = 1

HANDLING_CODES: Final = ("H0", "H1", "H2", "H3")
TLP_MARKINGS: Final = ("CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED")
PURPOSES: Final = (
    "investigation",
    "prosecution",
    "victim_protection",
    "victim_support",
    "search_for_person",
    "prevention",
    "coordination",
    "statistics",
    "evaluation",
    "data_quality",
    "system",
)
# Data categories a header may declare. Schemas annotate fields with these (x-data-category).
DATA_CATEGORIES: Final = (
    "victim_identity",
    "minor",
    "suspect_identity",
    "witness_identity",
    "reporter_identity",
    "contact_details",
    "health",
    "biometric",
    "precise_location",
    "financial",
    "criminal_record",
    "communications",
    "immigration_status",
    "sexual_life",
    "ethnic_origin",
    "religion",
    "case_facts",
    "aggregate_statistics",
)

# Identifier patterns. Each ends in \Z, not $ ($ also matches before a final newline, so
# "nl.politie\n" would pass): use them with fullmatch. Ids accepted here become NATS subject
# tokens (tests/unit/test_identifiers.py), so they are ASCII, without spaces, '*' or '>'.
COUNTRY_RE: Final = re.compile(r"[A-Z]{2}\Z")
AGENCY_RE: Final = re.compile(r"[a-z]{2}\.[a-z0-9](?:[a-z0-9-]{0,62})\Z")
TASK_FORCE_RE: Final = re.compile(r"tf\.[a-z0-9](?:[a-z0-9-]{0,62})\Z")
TYPE_RE: Final = re.compile(r"[a-z][a-z_]*(?:\.[a-z][a-z_]*)*\Z")
FEDERATION_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")
# ISO 8601 calendar date only (date.fromisoformat also takes week dates such as 2026-W01-1).
DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
MAX_RECIPIENTS: Final = 64
MAX_TEXT: Final = 256

_KEYS: Final = frozenset(
    {
        "v",
        "fed",
        "id",
        "type",
        "type_version",
        "conversation",
        "in_reply_to",
        "derived_from",
        "sender",
        "recipients",
        "task_force",
        "countries",
        "handling",
        "tlp",
        "purpose",
        "legal_basis",
        "categories",
        "onward",
        "iat",
        "exp",
        "due",
    }
)
# Optional member, present only on a message that carries files (docs/protocol.md 17.1), so
# that every header without attachments keeps the exact form of earlier versions.
ATTACHMENTS_KEY: Final = "attachments"


def agency_country(agency_id: str) -> str:
    """The ISO country code an agency id belongs to (its two-letter prefix, upper-cased)."""
    return agency_id[:2].upper()


@dataclass(frozen=True, kw_only=True, slots=True)
class Onward:
    """Onward-transfer marking: may derived data be passed on, and never to which countries."""

    allowed: bool = False
    exclude: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "exclude": list(self.exclude)}


@dataclass(frozen=True, kw_only=True, slots=True)
class Header:
    """Routing header. Construct it when sending; use :func:`parse_header` on received data."""

    fed: str
    id: str
    type: str
    type_version: int
    conversation: str
    sender: str
    recipients: tuple[str, ...]
    handling: str
    tlp: str
    purpose: str
    legal_basis: str
    categories: tuple[str, ...]
    iat: int
    exp: int
    in_reply_to: str | None = None
    derived_from: str | None = None
    task_force: str | None = None
    onward: Onward = field(default_factory=Onward)
    due: str | None = None
    attachments: tuple[Descriptor, ...] = ()
    v: int = PROTOCOL_VERSION

    @property
    def sender_country(self) -> str:
        return agency_country(self.sender)

    @property
    def countries(self) -> tuple[str, ...]:
        """Recipient countries, sorted and unique (derived from the recipient agency ids)."""
        return tuple(sorted({agency_country(a) for a in self.recipients}))

    def to_json(self) -> dict[str, Any]:
        """The JSON object form, exactly as it goes on the wire (members as in docs/protocol.md)."""
        out: dict[str, Any] = {
            "v": self.v,
            "fed": self.fed,
            "id": self.id,
            "type": self.type,
            "type_version": self.type_version,
            "conversation": self.conversation,
            "in_reply_to": self.in_reply_to,
            "derived_from": self.derived_from,
            "sender": {"agency": self.sender, "country": self.sender_country},
            "recipients": list(self.recipients),
            "task_force": self.task_force,
            "countries": list(self.countries),
            "handling": self.handling,
            "tlp": self.tlp,
            "purpose": self.purpose,
            "legal_basis": self.legal_basis,
            "categories": list(self.categories),
            "onward": self.onward.to_json(),
            "iat": self.iat,
            "exp": self.exp,
            "due": self.due,
        }
        if self.attachments:
            out[ATTACHMENTS_KEY] = [a.to_json() for a in self.attachments]
        return out

    def validate(self) -> Header:
        """Check every member; raise ``InvalidMessage(HEADER_INVALID)`` naming the first bad one."""
        parse_header(self.to_json())
        return self


def _fail(member: str, why: str) -> InvalidMessage:
    return InvalidMessage(Reason.HEADER_INVALID, f"header.{member}: {why}")


def _uuid(value: Any, member: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not is_uuid(value):
        raise _fail(member, "must be a lower-case hyphenated UUID")
    return str(value)


def _message_id(value: Any) -> str:
    if not is_uuid4(value):
        raise _fail("id", "must be a random (version 4, RFC 4122) lower-case hyphenated UUID")
    return str(value)


def _int(value: Any, member: str) -> int:
    # bool is an int subclass in Python; it is not an integer on the wire.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise _fail(member, "must be a non-negative integer below 2^53")
    return value


def _choice(value: Any, member: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _fail(member, f"must be one of {', '.join(allowed)}")
    return value


def _sorted_unique(values: list[str], member: str) -> tuple[str, ...]:
    if values != sorted(set(values)):
        raise _fail(member, "must be sorted and without duplicates")
    return tuple(values)


def _str_list(value: Any, member: str, pattern: re.Pattern[str], max_items: int) -> list[str]:
    if not isinstance(value, list) or len(value) > max_items:
        raise _fail(member, f"must be a list of at most {max_items} strings")
    for item in value:
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise _fail(member, f"{item!r} is not valid")
    return value


def parse_header(unverified: Any) -> Header:
    """Turn a decoded JSON value into a :class:`Header`, checking every member strictly."""
    if not isinstance(unverified, Mapping):
        raise _fail("", "must be a JSON object")
    keys = set(unverified) - {ATTACHMENTS_KEY}
    if keys != _KEYS:
        missing = sorted(_KEYS - keys)
        extra = sorted(keys - _KEYS)
        raise _fail("", f"missing {missing}, unexpected {extra}")
    h = unverified
    if h["v"] != PROTOCOL_VERSION or isinstance(h["v"], bool):
        raise _fail("v", f"unsupported protocol version (this node speaks {PROTOCOL_VERSION})")
    if not isinstance(h["fed"], str) or not FEDERATION_RE.fullmatch(h["fed"]):
        raise _fail("fed", "must be a federation id")
    msg_id = _message_id(h["id"])
    conversation = _uuid(h["conversation"], "conversation")
    in_reply_to = _uuid(h["in_reply_to"], "in_reply_to", optional=True)
    derived_from = _uuid(h["derived_from"], "derived_from", optional=True)
    if not isinstance(h["type"], str) or not TYPE_RE.fullmatch(h["type"]) or len(h["type"]) > 64:
        raise _fail("type", "must be a dotted lower-case message type")
    type_version = _int(h["type_version"], "type_version")
    if type_version < 1:
        raise _fail("type_version", "must be >= 1")

    sender = h["sender"]
    if not isinstance(sender, Mapping) or set(sender) != {"agency", "country"}:
        raise _fail("sender", "must be an object with agency and country")
    if not isinstance(sender["agency"], str) or not AGENCY_RE.fullmatch(sender["agency"]):
        raise _fail("sender.agency", "must be an agency id like 'de.lka-berlin'")
    if sender["country"] != agency_country(sender["agency"]):
        raise _fail("sender.country", "must match the agency id's country prefix")

    recipients = _str_list(h["recipients"], "recipients", AGENCY_RE, MAX_RECIPIENTS)
    if not recipients:
        raise _fail("recipients", "must name at least one agency")
    recipients_t = _sorted_unique(recipients, "recipients")
    if sender["agency"] in recipients_t:
        raise _fail("recipients", "must not include the sender")
    task_force = h["task_force"]
    if task_force is not None and (
        not isinstance(task_force, str) or not TASK_FORCE_RE.fullmatch(task_force)
    ):
        raise _fail("task_force", "must be null or a task force id like 'tf.balkan-route'")
    countries = _str_list(h["countries"], "countries", COUNTRY_RE, MAX_RECIPIENTS)
    if tuple(countries) != tuple(sorted({agency_country(a) for a in recipients_t})):
        raise _fail("countries", "must list exactly the recipients' countries, sorted")

    handling = _choice(h["handling"], "handling", HANDLING_CODES)
    tlp = _choice(h["tlp"], "tlp", TLP_MARKINGS)
    purpose = _choice(h["purpose"], "purpose", PURPOSES)
    legal_basis = h["legal_basis"]
    if not isinstance(legal_basis, str) or not 0 < len(legal_basis) <= MAX_TEXT:
        raise _fail("legal_basis", f"must be a non-empty string of at most {MAX_TEXT} chars")
    categories = h["categories"]
    if not isinstance(categories, list) or any(c not in DATA_CATEGORIES for c in categories):
        raise _fail("categories", "must list known data categories")
    categories_t = _sorted_unique(categories, "categories")

    onward = h["onward"]
    if not isinstance(onward, Mapping) or set(onward) != {"allowed", "exclude"}:
        raise _fail("onward", "must be an object with allowed and exclude")
    if not isinstance(onward["allowed"], bool):
        raise _fail("onward.allowed", "must be a boolean")
    exclude = _sorted_unique(
        _str_list(onward["exclude"], "onward.exclude", COUNTRY_RE, 250), "onward.exclude"
    )

    iat = _int(h["iat"], "iat")
    exp = _int(h["exp"], "exp")
    if exp <= iat:
        raise _fail("exp", "must be later than iat")
    due = h["due"]
    if due is not None:
        if not isinstance(due, str) or not DATE_RE.fullmatch(due):
            raise _fail("due", "must be null or a date YYYY-MM-DD")
        try:
            date.fromisoformat(due)
        except ValueError:
            raise _fail("due", "must be null or a date YYYY-MM-DD") from None

    attachments: tuple[Descriptor, ...] = ()
    if ATTACHMENTS_KEY in h:
        try:
            attachments = parse_descriptors(h[ATTACHMENTS_KEY])
        except InvalidMessage as exc:
            raise _fail(ATTACHMENTS_KEY, exc.detail) from None

    if conversation is None:  # pragma: no cover - _uuid never returns None here
        raise _fail("conversation", "missing")
    return Header(
        fed=h["fed"],
        id=msg_id,
        type=h["type"],
        type_version=type_version,
        conversation=conversation,
        in_reply_to=in_reply_to,
        derived_from=derived_from,
        sender=sender["agency"],
        recipients=recipients_t,
        task_force=task_force,
        handling=handling,
        tlp=tlp,
        purpose=purpose,
        legal_basis=legal_basis,
        categories=categories_t,
        onward=Onward(allowed=onward["allowed"], exclude=exclude),
        iat=iat,
        exp=exp,
        due=due,
        attachments=attachments,
    )
