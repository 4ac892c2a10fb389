"""Per-country policy engine: what may leave a country and what it accepts (sans-io).

Modules, by what they hold:

* ``model``      — value objects (Policy, Rule, Decision, Outcome, Federation) and the compiled
  rule index;
* ``loading``    — YAML policy file -> Policy, every refusal with its line (``PolicyError``);
* ``engine``     — evaluation at pre-flight, border egress/ingress, recipient;
* ``redaction``  — drop / coarsen by path;
* ``safeguards`` — the built-in protections no policy can switch off;
* ``signing``    — policy files signed by the country CA, verified against the federation root;
* ``lint``       — unreachable, shadowed and ineffective rules.

Rule order: rules are tried in file order and the **first rule that matches decides**, like a
firewall; a deny is final; no matching rule means deny (``builtin.default-deny``). Safeguards
run around the rules (see ``engine``) and cannot be overridden. Full guide: ``docs/policy.md``.

This package never imports asyncio, nats or aiohttp, never reads a clock, and never reads a
file (policy files are read by ``broker/loaders.py``).
"""

from __future__ import annotations

from broker.core.policy.engine import (
    OnwardLookup,
    decide_unit,
    evaluate_egress,
    evaluate_ingress,
    evaluate_recipient,
    preflight,
)
from broker.core.policy.lint import Finding, Severity, lint
from broker.core.policy.loading import parse_policy
from broker.core.policy.model import (
    DEFAULT_SMALL_CELL_K,
    Builtin,
    Coarsener,
    Decision,
    Direction,
    Federation,
    Outcome,
    Point,
    Policy,
    Redaction,
    Rule,
    Unit,
    Verdict,
)
from broker.core.policy.redaction import apply_redactions
from broker.core.policy.signing import (
    POLICY_TYP,
    policy_kid,
    sign_policy,
    verify_policy,
)

__all__ = [
    "DEFAULT_SMALL_CELL_K",
    "POLICY_TYP",
    "Builtin",
    "Coarsener",
    "Decision",
    "Direction",
    "Federation",
    "Finding",
    "OnwardLookup",
    "Outcome",
    "Point",
    "Policy",
    "Redaction",
    "Rule",
    "Severity",
    "Unit",
    "Verdict",
    "apply_redactions",
    "decide_unit",
    "evaluate_egress",
    "evaluate_ingress",
    "evaluate_recipient",
    "lint",
    "parse_policy",
    "policy_kid",
    "preflight",
    "sign_policy",
    "verify_policy",
]
