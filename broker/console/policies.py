"""Country policies in the console's words: the policy preview per recipient (ours and the
destination's decision side by side) and each partner country's published rules.

What it is for
    :func:`preview_row` turns what the node's ``explain`` returned for a one-recipient draft
    into a row: the overall verdict, the decision of our own country's pre-flight (egress)
    and, where the node holds the destination country's published policy, the destination's
    ingress decision with its rule id, reason and the redactions its rules asked for.
    :func:`rules_in_words` states each rule of a published policy as a sentence.

What it must never do
    Decide anything itself: every verdict comes from the node's pre-flight (the engine of
    ``casebridge explain``); this module only sorts and words it. Never import the engine's
    evaluation functions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from broker.core.header import agency_country
from broker.core.policy import Policy
from broker.core.policy.model import Direction, Rule, Verdict

_RULE_OF: Final = re.compile(r"\[([^\]]+)\]\s*$")


@dataclass(frozen=True, kw_only=True, slots=True)
class Side:
    """One country's decision about one recipient."""

    country: str
    allowed: bool
    rule_id: str
    reason: str
    redactions: tuple[str, ...] = ()


def _side(decision: Mapping[str, Any], country: str, redactions: tuple[str, ...]) -> Side:
    return Side(
        country=country,
        allowed=decision.get("verdict") == Verdict.ALLOW.value,
        rule_id=str(decision.get("rule_id", "")),
        reason=str(decision.get("reason", "")),
        redactions=redactions,
    )


def preview_row(
    agency: str,
    explained: Mapping[str, Any],
    *,
    own_country: str,
    peer_policy: Policy | None,
) -> dict[str, Any]:
    """The preview row of one recipient from the node's ``explain`` answer.

    The engine's unit decisions say which border they concern through ``peer``: at egress it
    is the destination country, at the destination's ingress it is the sender's country (ours)
    — that is how the destination's decision is told apart from ours.
    """
    country = agency_country(agency)
    decisions = [
        d
        for d in explained.get("decisions", ())
        if isinstance(d, Mapping) and d.get("recipient") in (agency, None)
    ]
    theirs_ids = {r.id for r in peer_policy.rules} if peer_policy is not None else set()
    applied = [str(r) for r in explained.get("redactions", ())]
    by_them = tuple(r for r in applied if (m := _RULE_OF.search(r)) and m.group(1) in theirs_ids)
    ours_found = next((d for d in decisions if d.get("peer") != own_country), None)
    theirs_found = next(
        (d for d in decisions if d.get("peer") == own_country and country != own_country), None
    )
    ours = (
        _side(ours_found, own_country, tuple(r for r in applied if r not in by_them))
        if ours_found is not None
        else None
    )
    theirs = _side(theirs_found, country, by_them) if theirs_found is not None else None
    return {
        "agency": agency,
        **explained,
        "ours": ours,
        "theirs": theirs,
        "country": country,
        # Their border decides anyway; the preview can only predict it with their policy.
        "unpredicted": country != own_country and peer_policy is None,
    }


# ---------------------------------------------------------------- rules in words ---


def _list(values: Iterable[str], word: Callable[[str], str] = str) -> str:
    return ", ".join(word(v) for v in sorted(values))


def _peers(rule: Rule) -> str:
    spec = rule.peer
    if spec.any:
        return "any country"
    parts = (["EU members"] if spec.eu else []) + (["non-EU countries"] if spec.non_eu else [])
    return ", ".join(parts + sorted(spec.countries)) or "no country"


def _redaction(op: str, path: str, to: str | None) -> str:
    if op == "drop":
        return f"removes {path}"
    return f"coarsens {path} to {to}" if to else f"{op} {path}"


def rules_in_words(
    policy: Policy,
    *,
    type_title: Callable[[str], str] = str,
    kind: Callable[[str], str] = str,
    purpose: Callable[[str], str] = str,
) -> list[dict[str, str]]:
    """Each rule of ``policy``, first to last: id, what it does in a sentence, and why.
    ``type_title``, ``kind``, ``purpose``: plain words for message types, agency kinds and
    purposes."""
    out = []
    for rule in policy.rules:
        verb = "allows" if rule.decision is Verdict.ALLOW else "refuses"
        if rule.directions == frozenset({Direction.INGRESS}):
            where = f"messages coming into {policy.country} from {_peers(rule)}"
        elif rule.directions == frozenset({Direction.EGRESS}):
            where = f"messages leaving {policy.country} for {_peers(rule)}"
        else:
            where = f"messages in both directions with {_peers(rule)}"
        conditions = []
        if rule.types is not None:
            conditions.append(f"of type {_list(rule.types.patterns, type_title)}")
        if rule.purpose is not None:
            conditions.append(f"for {_list(rule.purpose, purpose)}")
        if rule.handling is not None:
            conditions.append(f"handling {_list(rule.handling)}")
        if rule.tlp is not None:
            conditions.append(f"TLP {_list(rule.tlp)}")
        if rule.sender_kind is not None:
            conditions.append(f"from {_list(rule.sender_kind, kind)}")
        if rule.sender_agency is not None:
            conditions.append(f"from {_list(rule.sender_agency.patterns)}")
        if rule.recipient_kind is not None:
            conditions.append(f"to {_list(rule.recipient_kind, kind)}")
        if rule.recipient_agency is not None:
            conditions.append(f"to {_list(rule.recipient_agency.patterns)}")
        cats = rule.categories
        if cats.any_of is not None:
            conditions.append(f"holding any of {_list(cats.any_of)}")
        if cats.all_of:
            conditions.append(f"holding all of {_list(cats.all_of)}")
        if cats.only is not None:
            conditions.append(f"holding nothing but {_list(cats.only) or 'no personal data'}")
        if cats.none_of:
            conditions.append(f"holding none of {_list(cats.none_of)}")
        sentence = f"{verb.capitalize()} {where}"
        if conditions:
            sentence += " " + "; ".join(conditions)
        redacts = [_redaction(r.op, r.path, r.to) for r in rule.redact]
        out.append(
            {
                "id": rule.id,
                "decision": rule.decision.value,
                "text": sentence + ".",
                "redacts": "; ".join(redacts),
                "reason": rule.reason,
            }
        )
    return out
