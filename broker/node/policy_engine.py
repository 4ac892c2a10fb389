"""Adapter from ``broker.core.policy`` (the country policy engine) to the node's seams.

The only node module that imports the engine: if the engine's API moves, this file moves with
it and nothing else in the node changes. The policy in force is read through a callable (e.g.
``PolicyStore.current``) so a reloaded policy applies to the next message; with no policy in
force both checks refuse (fail closed), naming :data:`NO_POLICY_IN_FORCE`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from broker.core.envelope import OpenedMessage
from broker.core.header import Header, Onward
from broker.core.policy import (
    Federation,
    Outcome,
    Policy,
    evaluate_recipient,
    preflight,
)
from broker.core.schemas import SchemaRegistry
from broker.errors import PolicyDenied, Reason
from broker.node.policy import Clearance, PreflightDenied

NO_POLICY_IN_FORCE: Final = "node.no-policy-in-force"


class EnginePolicy:
    """Country policy at the node: :meth:`preflight` and :meth:`recipient_check` seams."""

    def __init__(
        self,
        *,
        policy: Callable[[], Policy | None],
        federation: Callable[[], Federation],
        schemas: SchemaRegistry,
        original_onward: Callable[[str], Onward | None],
        peer_policies: Callable[[], Mapping[str, Policy]] | None = None,
    ) -> None:
        self._policy = policy
        self._federation = federation
        self._schemas = schemas
        self._onward = original_onward
        self._peers = peer_policies

    def _current(self) -> Policy:
        found = self._policy()
        if found is None:
            raise PolicyDenied(NO_POLICY_IN_FORCE, "no valid country policy is loaded")
        return found

    def preflight(self, header: Header, body: Mapping[str, Any]) -> Clearance:
        outcome = preflight(
            self._current(),
            header,
            body,
            federation=self._federation(),
            schemas=self._schemas,
            original_onward=self._onward,
            category_paths=self._schemas.annotated_paths,
            peer_policies=self._peers() if self._peers is not None else None,
        )
        return _clearance(outcome)

    def recipient_check(self, opened: OpenedMessage) -> None:
        outcome = evaluate_recipient(
            self._current(),
            opened.header,
            opened.body,
            federation=self._federation(),
            schemas=self._schemas,
        )
        outcome.decision.raise_if_denied()


def _clearance(outcome: Outcome) -> Clearance:
    decision = outcome.decision
    if not decision.allowed:
        # Every unit's decision travels with the refusal: explain (and the console's preview)
        # shows ours and the destination's side by side, not only the first denial.
        raise PreflightDenied(
            decision.rule_id,
            decision.reason,
            reason=decision.reason_code or Reason.POLICY_DENIED,
            details=tuple(d.to_json() for d in outcome.decisions),
        )
    if outcome.body is None or outcome.categories is None:
        raise PolicyDenied(decision.rule_id, "pre-flight returned no body to seal")
    return Clearance(
        body=outcome.body,
        categories=outcome.categories,
        rule_id=decision.rule_id,
        reason=decision.reason,
        redactions=tuple(r.describe() for r in decision.redactions),
        details=tuple(d.to_json() for d in outcome.decisions),
    )
