"""Attachment limits of a country policy: how many files, how large, of which declared types.

A policy's ``attachments:`` list (docs/policy.md section 13) is tried, in file order, for each
border unit (peer country + recipient agency) of a message that carries files, *after* the
policy's rules allowed that unit. The first entry whose selectors (direction, peer, message
type) match decides: ``deny`` refuses; ``allow`` lets the files through if every limit it sets
holds (count, per-file size, total size, media types), and otherwise refuses with the entry's
id and a reason naming the limit. No matching entry: ``builtin.attachments-default-deny`` (a
country that says nothing about files lets none cross). Only the header's descriptors are
looked at (borders never see content). Never does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from broker.core.attachments import Descriptor
from broker.core.policy.model import (
    AttachmentRule,
    Decision,
    Direction,
    PatternSet,
    PeerSpec,
    Unit,
    Verdict,
)

DEFAULT_DENY: Final = "builtin.attachments-default-deny"


def decide_attachments(
    rules: Sequence[AttachmentRule], unit: Unit, files: Sequence[Descriptor], allowed: Decision
) -> Decision:
    """The decision for one unit already ``allowed`` by the policy's rules, given its files."""
    if not files:
        return allowed
    rule = next((r for r in rules if r.selects(unit)), None)
    if rule is None:
        return replace(
            allowed,
            verdict=Verdict.DENY,
            rule_id=DEFAULT_DENY,
            reason="no attachment rule of this policy lets files cross here",
            redactions=(),
        )
    if rule.decision is Verdict.DENY:
        return replace(
            allowed, verdict=Verdict.DENY, rule_id=rule.id, reason=rule.reason, redactions=()
        )
    broken = rule.violation(files)
    if broken is None:
        return allowed
    return replace(
        allowed,
        verdict=Verdict.DENY,
        rule_id=rule.id,
        reason=f"{rule.reason} ({broken})",
        redactions=(),
    )


def parse_attachment_rule(
    raw: Mapping[str, Any], line: int | None, peer: PeerSpec
) -> AttachmentRule:
    """One schema-checked ``attachments`` entry (``peer`` already expanded by the loader)."""
    direction = raw["direction"]
    directions = frozenset(Direction) if direction == "any" else frozenset({Direction(direction)})
    types = raw.get("type")
    patterns = (types,) if isinstance(types, str) else tuple(types) if types else None
    media = raw.get("media_types")
    return AttachmentRule(
        id=raw["id"],
        reason=raw["reason"],
        line=line,
        decision=Verdict(raw["decision"]),
        directions=directions,
        peer=peer,
        types=None if patterns is None or "*" in patterns else PatternSet(patterns=patterns),
        max_count=raw.get("max_count"),
        max_size=raw.get("max_size"),
        max_total=raw.get("max_total"),
        media_types=None if media is None else tuple(media),
    )
