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
from dataclasses import dataclass, replace
from typing import Any, Final

from broker.core.attachments import Descriptor
from broker.core.policy.model import Decision, Direction, PatternSet, PeerSpec, Unit, Verdict

DEFAULT_DENY: Final = "builtin.attachments-default-deny"


@dataclass(frozen=True, kw_only=True, slots=True)
class AttachmentRule:
    """One entry of a policy's ``attachments`` list. ``None`` limits are not limits."""

    id: str
    reason: str
    line: int | None
    decision: Verdict
    directions: frozenset[Direction]
    peer: PeerSpec
    types: PatternSet | None = None
    max_count: int | None = None
    max_size: int | None = None
    max_total: int | None = None
    media_types: tuple[str, ...] | None = None

    def selects(self, unit: Unit) -> bool:
        return (
            unit.direction in self.directions
            and self.peer.holds(unit.peer, unit.peer_eu)
            and (self.types is None or self.types.holds(unit.type))
        )

    def media_allowed(self, media_type: str) -> bool:
        if self.media_types is None:
            return True
        major = media_type.split("/", 1)[0]
        return any(p in ("*", media_type, f"{major}/*") for p in self.media_types)

    def violation(self, files: Sequence[Descriptor]) -> str | None:
        """Which limit ``files`` break, in words; None when every limit holds."""
        if self.max_count is not None and len(files) > self.max_count:
            return f"{len(files)} files, at most {self.max_count} allowed"
        total = 0
        for n, f in enumerate(files, start=1):
            total += f.size
            if self.max_size is not None and f.size > self.max_size:
                return f"file {n} has {f.size} bytes, at most {self.max_size} allowed"
            if not self.media_allowed(f.media_type):
                return f"file {n} is {f.media_type}, not one of {', '.join(self.media_types or ())}"
        if self.max_total is not None and total > self.max_total:
            return f"{total} bytes in all, at most {self.max_total} allowed"
        return None


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
