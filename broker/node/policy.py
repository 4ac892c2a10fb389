"""The node's seams to the policy engine, and policy-free defaults.

The node calls policy at two points and knows nothing else about it:

* :class:`Preflight` — before sealing: given the draft header and body, return the body and
  categories to seal (redactions applied, categories recomputed) or raise
  :class:`~broker.errors.PolicyDenied` (rule id + reason). ``SchemaInvalid`` for a bad draft.
* :class:`RecipientCheck` — the ``admit`` step of :func:`broker.core.envelope.open_message`
  (recipient policy and honesty): return to accept, raise ``PolicyDenied`` to refuse.

``broker.node.policy_engine`` adapts ``broker.core.policy`` to these. The defaults here apply
no country policy: :class:`SchemaOnlyPreflight` declares exactly what the body holds (plus
what the draft declares), :class:`HonestyCheck` refuses a body holding undeclared categories.
Border gateways still enforce country policy on the header. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from broker.core.envelope import OpenedMessage
from broker.core.header import Header
from broker.errors import PolicyDenied, Reason

NO_POLICY_RULE: Final = "node.no-policy"
HONESTY_RULE: Final = "builtin.honesty"


@dataclass(frozen=True, kw_only=True, slots=True)
class Clearance:
    """Pre-flight allowed the draft: seal ``body`` declaring ``categories``."""

    body: Mapping[str, Any]
    categories: tuple[str, ...]
    rule_id: str
    reason: str
    redactions: tuple[str, ...] = ()  # human-readable, e.g. "drop /victims/*/name [rule]"
    details: tuple[Mapping[str, Any], ...] = ()  # per-unit decisions, for explain


class PreflightDenied(PolicyDenied):
    """Pre-flight refused the draft: the deciding rule, plus every unit's decision (ours at
    egress, the destination's ingress where its policy is held), so explain can show both."""

    def __init__(
        self,
        rule_id: str,
        detail: str,
        *,
        reason: Reason = Reason.POLICY_DENIED,
        details: tuple[Mapping[str, Any], ...] = (),
    ) -> None:
        super().__init__(rule_id, detail, reason=reason)
        self.details = details


class Preflight(Protocol):
    """Sender-side policy on a draft. Raises ``PolicyDenied`` to refuse."""

    def __call__(self, header: Header, body: Mapping[str, Any]) -> Clearance: ...


class RecipientCheck(Protocol):
    """Recipient-side policy and honesty on an opened message. Raises ``PolicyDenied``."""

    def __call__(self, opened: OpenedMessage) -> None: ...


class CategorySchemas(Protocol):
    """What the defaults need from ``broker.core.schemas.SchemaRegistry``."""

    def validate(self, message_type: str, version: int, body: object) -> object: ...

    def categories(self, message_type: str, version: int, body: object) -> frozenset[str]: ...


class SchemaOnlyPreflight:
    """Pre-flight without a country policy: validate, declare the body's real categories."""

    def __init__(self, schemas: CategorySchemas) -> None:
        self._schemas = schemas

    def __call__(self, header: Header, body: Mapping[str, Any]) -> Clearance:
        self._schemas.validate(header.type, header.type_version, body)
        found = self._schemas.categories(header.type, header.type_version, body)
        return Clearance(
            body=body,
            categories=tuple(sorted(found | frozenset(header.categories))),
            rule_id=NO_POLICY_RULE,
            reason="no country policy configured on this node; the border gateways decide",
        )


class HonestyCheck:
    """Recipient check without a country policy: the body holds no undeclared category."""

    def __init__(self, schemas: CategorySchemas) -> None:
        self._schemas = schemas

    def __call__(self, opened: OpenedMessage) -> None:
        header = opened.header
        present = self._schemas.categories(header.type, header.type_version, opened.body)
        undeclared = present - frozenset(header.categories)
        if undeclared:
            raise PolicyDenied(
                HONESTY_RULE,
                f"the body holds undeclared categories: {', '.join(sorted(undeclared))}",
                reason=Reason.CATEGORY_UNDECLARED,
            )
