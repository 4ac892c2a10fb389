"""The policy linter: finds rules that can never decide, and rules that cannot work as written.

Semantics checked are exactly the engine's: rules are tried in file order, the first matching
rule decides, no match is default deny. So a rule *never decides* if

* it is **unreachable**: no message can satisfy its conditions (contradictory category
  conditions; a peer list holding only the policy's own country; agency ids on the wrong side
  of the border for its direction), or
* it is **shadowed**: an earlier rule matches every message it matches. Detected pairwise:
  a rule covered only by the *union* of several earlier rules is not reported.

It also reports rules naming message types, or redacting paths, that no schema of the
catalogue has; ``removes`` lists the redactions do not achieve for some annotated field;
allow rules limited to TLP:RED/H3 that name no recipient agency (``builtin.red-h3-explicit``
always refuses them); and redactions the border cannot verify (no ``removes``).

Containment of type and agency patterns is decided on the catalogue's types when one is
given, else syntactically (pattern A covers pattern B if A matches B's text, ``*`` as a
literal), which is exact for ``*``-only globs. Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final, Protocol

from broker.core.header import DATA_CATEGORIES, HANDLING_CODES, PURPOSES, TLP_MARKINGS
from broker.core.policy.model import (
    CategoryCondition,
    Coarsener,
    Direction,
    PatternSet,
    PeerSpec,
    Policy,
    Rule,
)
from broker.core.policy.redaction import PRECISE_LOCATION_MEMBERS, parse_path
from broker.core.policy.safeguards import H3, RED

_ALL: Final = {
    "handling": frozenset(HANDLING_CODES),
    "tlp": frozenset(TLP_MARKINGS),
    "purpose": frozenset(PURPOSES),
}
_MAX_LISTED: Final = 3


class Severity(StrEnum):
    """``warning``: the rule does not do what it says. ``note``: worth knowing, may be intended."""

    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True, kw_only=True, slots=True)
class Finding:
    """One lint result about one rule."""

    rule_id: str
    line: int | None
    code: str
    severity: Severity
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "?"
        return f"{where}: {self.severity.value} [{self.code}] rule {self.rule_id}: {self.message}"


class Catalogue(Protocol):
    """What the linter needs of the schema registry (``broker.core.schemas.SchemaRegistry``)."""

    def types(self) -> tuple[str, ...]: ...

    def versions(self, message_type: str) -> tuple[int, ...]: ...

    def path_patterns(self, message_type: str, version: int) -> frozenset[str]: ...

    def annotated_paths(self, message_type: str, version: int) -> Mapping[str, frozenset[str]]: ...


# ------------------------------------------------------------- containment ---


def _pattern_covers(outer: PatternSet | None, inner: PatternSet | None) -> bool:
    if outer is None:
        return True
    if inner is None:
        return False
    return all(outer.holds(p) for p in inner.patterns)


def _set_covers(
    outer: frozenset[str] | None, inner: frozenset[str] | None, universe: frozenset[str] | None
) -> bool:
    if outer is None:
        return True
    if inner is None:
        return universe is not None and universe <= outer
    return inner <= outer


def categories_imply(inner: CategoryCondition, outer: CategoryCondition) -> bool:
    """Whether every category set meeting ``inner`` also meets ``outer`` (exact).

    ``outer`` is a conjunction, so each of its conditions is checked on its own: it is implied
    iff ``inner`` plus the condition's negation is unsatisfiable.
    """
    if not inner.satisfiable():
        return True
    if (
        outer.any_of is not None
        and replace(inner, none_of=inner.none_of | outer.any_of).satisfiable()
    ):
        return False
    for category in outer.all_of:
        if replace(inner, none_of=inner.none_of | {category}).satisfiable():
            return False
    excluded = outer.none_of | (
        frozenset(DATA_CATEGORIES) - outer.only if outer.only is not None else frozenset()
    )
    return not any(
        replace(inner, all_of=inner.all_of | {category}).satisfiable() for category in excluded
    )


def _peer_covers(outer: PeerSpec, inner: PeerSpec, own: str, eu: Mapping[str, bool]) -> bool:
    if outer.any:
        return True
    if inner.any or (inner.eu and not outer.eu) or (inner.non_eu and not outer.non_eu):
        return False
    for country in inner.countries - {own}:
        if country in outer.countries:
            continue
        member = eu.get(country)
        if member is None or not (outer.eu if member else outer.non_eu):
            return False
    return True


def _types_of(rule: Rule, catalogue: Catalogue | None) -> frozenset[str] | None:
    if catalogue is None:
        return None
    return frozenset(t for t in catalogue.types() if rule.types is None or rule.types.holds(t))


def covers(
    outer: Rule,
    inner: Rule,
    *,
    own: str,
    eu: Mapping[str, bool],
    catalogue: Catalogue | None = None,
) -> bool:
    """Whether ``outer`` matches every message ``inner`` matches (so ``inner`` after it is dead)."""
    if not inner.directions <= outer.directions:
        return False
    if not _peer_covers(outer.peer, inner.peer, own, eu):
        return False
    if outer.types is not None and inner.types is None:
        # inner matches every type, including any the catalogue does not know yet.
        return False
    if catalogue is not None and outer.types is not None:
        inner_types, outer_types = _types_of(inner, catalogue), _types_of(outer, catalogue)
        if inner_types is None or outer_types is None or not inner_types <= outer_types:
            return False
    elif not _pattern_covers(outer.types, inner.types):
        return False
    return (
        _set_covers(outer.handling, inner.handling, _ALL["handling"])
        and _set_covers(outer.tlp, inner.tlp, _ALL["tlp"])
        and _set_covers(outer.purpose, inner.purpose, _ALL["purpose"])
        and _set_covers(outer.sender_kind, inner.sender_kind, None)
        and _set_covers(outer.recipient_kind, inner.recipient_kind, None)
        and _pattern_covers(outer.sender_agency, inner.sender_agency)
        and _pattern_covers(outer.recipient_agency, inner.recipient_agency)
        and categories_imply(inner.categories, outer.categories)
    )


# ------------------------------------------------------------ reachability ---


def _prefixes(patterns: PatternSet | None) -> frozenset[str] | None:
    if patterns is None:
        return None
    return frozenset(p[:2].upper() for p in patterns.patterns)


def _peer_possible(peer: PeerSpec, candidates: Iterable[str] | None, own: str) -> bool:
    if candidates is None:
        return peer.any or peer.eu or peer.non_eu or bool(peer.countries - {own})
    # With no directory at hand an eu/non_eu group may hold any country: assume it can.
    return any(
        c != own and (peer.any or peer.eu or peer.non_eu or c in peer.countries) for c in candidates
    )


def _direction_possible(rule: Rule, direction: Direction, own: str) -> bool:
    own_side, peer_side = (
        (rule.sender_agency, rule.recipient_agency)
        if direction is Direction.EGRESS
        else (rule.recipient_agency, rule.sender_agency)
    )
    own_prefixes = _prefixes(own_side)
    if own_prefixes is not None and own not in own_prefixes:
        return False
    return _peer_possible(rule.peer, _prefixes(peer_side), own)


def unreachable_reason(rule: Rule, own: str) -> str | None:
    """Why no message can match ``rule``, or None if some can."""
    if not rule.categories.satisfiable():
        return "its category conditions contradict each other"
    if not any(_direction_possible(rule, d, own) for d in rule.directions):
        if not (rule.peer.any or rule.peer.eu or rule.peer.non_eu or rule.peer.countries - {own}):
            return f"its peer is only {own}, the policy's own country (never a peer)"
        return "its agencies are on the wrong side of the border for its direction"
    return None


# ------------------------------------------------------------------ checks ---


def _segments_match(path: Sequence[str], location: Sequence[str]) -> bool:
    return len(path) == len(location) and all(
        p in ("*", s) for p, s in zip(path, location, strict=True)
    )


def _reaches_location(path: str, locations: Iterable[str]) -> bool:
    segments = parse_path(path)
    return any(_segments_match(segments, parse_path(loc)) for loc in locations)


def _removes_location(rule: Rule, location: str) -> bool:
    target = parse_path(location)
    for redaction in rule.redact:
        segments = parse_path(redaction.path)
        if redaction.op == "drop" and _segments_match(segments, target[: len(segments)]):
            return True
        if (
            redaction.op == "coarsen"
            and redaction.to == Coarsener.LOCATION_TO_CITY
            and len(target) == len(segments) + 1
            and target[-1] in PRECISE_LOCATION_MEMBERS
            and _segments_match(segments, target[:-1])
        ):
            return True
    return False


def _finding(rule: Rule, code: str, severity: Severity, message: str) -> Finding:
    return Finding(rule_id=rule.id, line=rule.line, code=code, severity=severity, message=message)


def _catalogue_findings(rule: Rule, catalogue: Catalogue) -> list[Finding]:
    findings: list[Finding] = []
    types = _types_of(rule, catalogue) or frozenset()
    if rule.types is not None and not types:
        findings.append(
            _finding(
                rule,
                "unknown-type",
                Severity.WARNING,
                f"no message type in the catalogue matches {', '.join(rule.types.patterns)}",
            )
        )
        return findings
    versions = [(t, v) for t in sorted(types) for v in catalogue.versions(t)]
    for redaction in rule.redact:
        if not any(
            _reaches_location(redaction.path, catalogue.path_patterns(t, v)) for t, v in versions
        ):
            findings.append(
                _finding(
                    rule,
                    "unknown-path",
                    Severity.WARNING,
                    f"{redaction.op} {redaction.path}: "
                    "no field of the matching message types has this path",
                )
            )
    for category in sorted(rule.removes):
        missed = sorted(
            f"{loc} ({t})"
            for t, v in versions
            for loc, cats in catalogue.annotated_paths(t, v).items()
            if category in cats and not _removes_location(rule, loc)
        )
        if missed:
            more = f" and {len(missed) - _MAX_LISTED} more" if len(missed) > _MAX_LISTED else ""
            findings.append(
                _finding(
                    rule,
                    "removes-incomplete",
                    Severity.WARNING,
                    f"removes {category} but leaves {', '.join(missed[:_MAX_LISTED])}{more}: "
                    "pre-flight refuses messages carrying those fields",
                )
            )
    return findings


def lint(
    policy: Policy,
    *,
    eu: Mapping[str, bool] | None = None,
    catalogue: Catalogue | None = None,
) -> list[Finding]:
    """Every finding about ``policy``, in rule order. ``eu``: country -> EU member (directory)."""
    eu = eu or {}
    own = policy.country
    findings: list[Finding] = []
    live: list[Rule] = []
    for rule in policy.rules:
        why = unreachable_reason(rule, own)
        if why is not None:
            findings.append(
                _finding(rule, "unreachable", Severity.WARNING, f"never matches: {why}")
            )
        else:
            shadow = next(
                (r for r in live if covers(r, rule, own=own, eu=eu, catalogue=catalogue)), None
            )
            if shadow is not None:
                same = shadow.decision is rule.decision and shadow.redact == rule.redact
                findings.append(
                    _finding(
                        rule,
                        "redundant" if same else "shadowed",
                        Severity.WARNING,
                        f"never decides: rule {shadow.id} (line {shadow.line}) matches every "
                        "message it matches"
                        + ("" if same else f" and decides {shadow.decision.value}"),
                    )
                )
            live.append(rule)
        if (
            rule.decision.value == "allow"
            and (rule.tlp == frozenset({RED}) or rule.handling == frozenset({H3}))
            and (rule.recipient_agency is None or not rule.recipient_agency.exact)
        ):
            findings.append(
                _finding(
                    rule,
                    "red-h3-never",
                    Severity.WARNING,
                    "allows only TLP:RED/H3 but names no recipient agency exactly: "
                    "builtin.red-h3-explicit refuses every such message",
                )
            )
        if rule.redact and not rule.removes:
            findings.append(
                _finding(
                    rule,
                    "unverifiable-redaction",
                    Severity.NOTE,
                    "has redactions but no removes: border gateways cannot check they were applied",
                )
            )
        if catalogue is not None:
            findings.extend(_catalogue_findings(rule, catalogue))
    return findings
