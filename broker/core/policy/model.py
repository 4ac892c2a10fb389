"""Value objects of the policy engine: a loaded policy, its rules, and the decisions it makes.

Everything here is a frozen, keyword-only value. A :class:`Rule` knows how to match one
evaluation unit by itself (:meth:`Rule.matches`); that plain predicate is the *reference*
semantics. :class:`RuleIndex`, built once when a :class:`Policy` is constructed, evaluates the
same semantics through precompiled bitmasks (one bit per rule, so "the first matching rule" is
the lowest set bit of an AND of a few cached masks) and is tested against the predicate.
This module never does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol

from broker.core.attachments import Descriptor
from broker.core.header import (
    DATA_CATEGORIES,
    HANDLING_CODES,
    PURPOSES,
    TLP_MARKINGS,
    agency_country,
)
from broker.errors import CasebridgeError, PolicyDenied, Reason

# The floor below which no policy can lower small-cell suppression (DESIGN.md section 3).
DEFAULT_SMALL_CELL_K: Final = 11


class Verdict(StrEnum):
    """What a decision says about a message."""

    ALLOW = "allow"
    DENY = "deny"


class Direction(StrEnum):
    """Which border a rule guards, seen from the policy's country."""

    EGRESS = "egress"
    INGRESS = "ingress"


class Point(StrEnum):
    """Where the engine ran: the three evaluation points, with the border split in two."""

    PREFLIGHT = "preflight"
    EGRESS = "egress"
    INGRESS = "ingress"
    RECIPIENT = "recipient"


class Builtin(StrEnum):
    """Rule ids of the built-in safeguards. Policies cannot use the ``builtin.`` prefix."""

    REPORTER_IDENTITY = "builtin.reporter-identity"
    SMALL_CELLS = "builtin.small-cells"
    ONWARD_TRANSFER = "builtin.onward-transfer"
    RED_H3_EXPLICIT = "builtin.red-h3-explicit"
    HONESTY = "builtin.honesty"
    DEFAULT_DENY = "builtin.default-deny"
    DOMESTIC = "builtin.domestic"
    SCOPE = "builtin.scope"
    REDACTION_INVALID = "builtin.redaction-invalid"


class Coarsener(StrEnum):
    """Named ways to make a value less precise. Kept deliberately few; see docs/policy.md."""

    DATE_TO_YEAR = "date_to_year"
    DATE_TO_MONTH = "date_to_month"
    LOCATION_TO_CITY = "location_to_city"
    AGE_TO_RANGE = "age_to_range"


# ------------------------------------------------------------------ redaction ---


@dataclass(frozen=True, kw_only=True, slots=True)
class Redaction:
    """One redaction step: drop the field(s) at ``path`` or coarsen them with ``to``.

    ``rule_id`` names the rule (or safeguard) that asked for it. ``op`` ``suppress`` only
    records what the small-cells safeguard did (counts 1..k-1 nulled); it is never applied
    through :func:`~broker.core.policy.redaction.apply_redactions`.
    """

    op: str
    path: str
    rule_id: str
    to: str | None = None

    @property
    def key(self) -> tuple[str, str, str | None]:
        """Identity of the operation regardless of which rule asked for it."""
        return (self.op, self.path, self.to)

    def describe(self) -> str:
        target = f" to {self.to}" if self.to else ""
        return f"{self.op} {self.path}{target} [{self.rule_id}]"


# --------------------------------------------------------------- conditions ---


@dataclass(frozen=True, kw_only=True, slots=True)
class CategoryCondition:
    """Conditions on the declared categories; all given ones must hold.

    ``any_of``: at least one is declared; ``all_of``: every one is declared; ``only``: nothing
    outside this set is declared; ``none_of``: none is declared. ``None`` means no condition.
    """

    any_of: frozenset[str] | None = None
    all_of: frozenset[str] = frozenset()
    only: frozenset[str] | None = None
    none_of: frozenset[str] = frozenset()

    def holds(self, declared: frozenset[str]) -> bool:
        if self.any_of is not None and not (declared & self.any_of):
            return False
        if not self.all_of <= declared:
            return False
        if self.only is not None and not declared <= self.only:
            return False
        return not (declared & self.none_of)

    def satisfiable(self) -> bool:
        """Whether some set of known categories meets every condition."""
        universe = (self.only if self.only is not None else frozenset(DATA_CATEGORIES)) - (
            self.none_of
        )
        if not self.all_of <= universe:
            return False
        return self.any_of is None or bool(self.any_of & universe)

    @property
    def unconditional(self) -> bool:
        return self.any_of is None and not self.all_of and self.only is None and not self.none_of


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerSpec:
    """Which peer countries a rule applies to: built-in groups and explicit countries.

    Custom groups from the policy file are expanded into ``countries`` at load.
    """

    any: bool = True
    eu: bool = False
    non_eu: bool = False
    countries: frozenset[str] = frozenset()

    def holds(self, peer: str, peer_eu: bool | None) -> bool:
        """``peer_eu`` is None when the federation directory does not know the country."""
        if self.any or peer in self.countries:
            return True
        if peer_eu is None:
            return False
        return self.eu if peer_eu else self.non_eu


def _pattern_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    # '*' is the only wildcard; everything else is literal (fnmatch would also treat [ and ?).
    alternatives = "|".join(".*".join(re.escape(p) for p in pat.split("*")) for pat in patterns)
    return re.compile(f"(?:{alternatives})\\Z")


@dataclass(frozen=True, kw_only=True, slots=True)
class PatternSet:
    """Glob patterns where ``*`` matches any run of characters; nothing else is special."""

    patterns: tuple[str, ...]
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", _pattern_regex(self.patterns))

    def holds(self, value: str) -> bool:
        return self.regex.match(value) is not None

    @property
    def exact(self) -> frozenset[str]:
        """The patterns without a wildcard: values named explicitly."""
        return frozenset(p for p in self.patterns if "*" not in p)


# -------------------------------------------------------------------- rules ---


@dataclass(frozen=True, kw_only=True, slots=True)
class Unit:
    """One evaluation unit: a message crossing one border towards (or from) one recipient.

    A message to several agencies is evaluated once per recipient agency in the peer country
    (egress) or in the policy's country (ingress); it passes only if every unit is allowed.
    """

    direction: Direction
    peer: str
    peer_eu: bool | None
    type: str
    handling: str
    tlp: str
    purpose: str
    categories: frozenset[str]
    sender: str
    sender_kind: str | None
    recipient: str
    recipient_kind: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Rule:
    """One rule of a policy. ``None`` conditions match everything."""

    id: str
    reason: str
    line: int | None
    decision: Verdict
    directions: frozenset[Direction]
    peer: PeerSpec = field(default_factory=PeerSpec)
    types: PatternSet | None = None
    handling: frozenset[str] | None = None
    tlp: frozenset[str] | None = None
    purpose: frozenset[str] | None = None
    categories: CategoryCondition = field(default_factory=CategoryCondition)
    sender_kind: frozenset[str] | None = None
    recipient_kind: frozenset[str] | None = None
    sender_agency: PatternSet | None = None
    recipient_agency: PatternSet | None = None
    redact: tuple[Redaction, ...] = ()
    removes: frozenset[str] = frozenset()

    def matches(self, unit: Unit) -> bool:
        """Reference semantics of matching: every given condition holds for the unit."""
        return (
            unit.direction in self.directions
            and self.peer.holds(unit.peer, unit.peer_eu)
            and (self.types is None or self.types.holds(unit.type))
            and (self.handling is None or unit.handling in self.handling)
            and (self.tlp is None or unit.tlp in self.tlp)
            and (self.purpose is None or unit.purpose in self.purpose)
            and self.categories.holds(unit.categories)
            and (self.sender_kind is None or unit.sender_kind in self.sender_kind)
            and (self.recipient_kind is None or unit.recipient_kind in self.recipient_kind)
            and (self.sender_agency is None or self.sender_agency.holds(unit.sender))
            and (self.recipient_agency is None or self.recipient_agency.holds(unit.recipient))
        )

    def names_recipient(self, agency_id: str) -> bool:
        """Whether the rule names this recipient agency exactly (no wildcard): the RED/H3 test."""
        return self.recipient_agency is not None and agency_id in self.recipient_agency.exact


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


@dataclass(frozen=True, kw_only=True, slots=True)
class Policy:
    """A loaded, schema-checked country policy. Build with ``loading.parse_policy``."""

    country: str
    version: int
    rules: tuple[Rule, ...]
    description: str = ""
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    small_cell_k: int = DEFAULT_SMALL_CELL_K
    # SHA-256 (base64url) of the exact YAML bytes: names the revision in logs and evidence.
    digest: str = ""
    source: str = "<policy>"
    attachment_rules: tuple[AttachmentRule, ...] = ()  # docs/policy.md section 13
    index: RuleIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", RuleIndex(self.rules))


# ---------------------------------------------------------------- decisions ---


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """The result of one evaluation: verdict, the rule that decided, why, and what was redacted.

    ``peer`` is the other country of the border crossing and ``recipient`` the agency the unit
    concerned (both ``None`` for decisions about the whole message, e.g. honesty).
    """

    verdict: Verdict
    rule_id: str
    reason: str
    point: Point
    redactions: tuple[Redaction, ...] = ()
    peer: str | None = None
    recipient: str | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    @property
    def reason_code(self) -> Reason | None:
        """The protocol reason code of a denial (docs/protocol.md section 6, step 18)."""
        if self.allowed:
            return None
        if self.rule_id == Builtin.HONESTY:
            return Reason.CATEGORY_UNDECLARED
        return Reason.POLICY_DENIED

    def raise_if_denied(self) -> None:
        """Raise :class:`PolicyDenied` naming the rule, if this decision is a denial.

        An honesty failure carries reason ``category_undeclared`` instead of ``policy_denied``.
        """
        if self.allowed:
            return
        raise PolicyDenied(
            self.rule_id, self.reason, reason=self.reason_code or Reason.POLICY_DENIED
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "rule_id": self.rule_id,
            "reason": self.reason,
            "point": self.point.value,
            "reason_code": None if self.reason_code is None else self.reason_code.value,
            "peer": self.peer,
            "recipient": self.recipient,
            "redactions": [
                {"op": r.op, "path": r.path, "to": r.to, "rule_id": r.rule_id}
                for r in self.redactions
            ],
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """Everything an evaluation point decided about one message.

    ``decision`` is the overall one: the first denial if any unit was denied, otherwise the
    first allow (carrying, at pre-flight, every redaction applied). ``decisions`` holds one
    decision per unit, in order (peer country, then recipient agency). At pre-flight ``body``
    is the redacted body and ``categories`` the categories to declare in the header.
    """

    decision: Decision
    decisions: tuple[Decision, ...]
    body: Mapping[str, Any] | None = None
    categories: tuple[str, ...] | None = None

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


# ----------------------------------------------------------- engine inputs ---


@dataclass(frozen=True, kw_only=True, slots=True)
class Federation:
    """What the engine needs from the federation directory, as plain values.

    ``eu`` maps country code to EU membership (countries missing are unknown: only ``any``
    and explicit lists match them); ``agency_kind`` returns an agency's kind or ``None``.
    """

    eu: Mapping[str, bool]
    agency_kind: Callable[[str], str | None]

    def is_eu(self, country: str) -> bool | None:
        return self.eu.get(country)

    @classmethod
    def from_directory(cls, directory: DirectoryView) -> Federation:
        """The federation as a verified directory describes it (unknown agencies: kind None)."""

        def kind(agency_id: str) -> str | None:
            try:
                return directory.agency_kind(agency_id)
            except CasebridgeError:
                return None

        return cls(eu={c.code: bool(c.eu) for c in directory.countries()}, agency_kind=kind)


class SchemaView(Protocol):
    """The part of the schema registry the engine uses (``broker.core.schemas.SchemaRegistry``)."""

    def validate(self, message_type: str, version: int, body: Mapping[str, Any]) -> object:
        """Raise ``SchemaInvalid`` unless ``body`` is valid for the type and version."""
        ...

    def categories(
        self, message_type: str, version: int, body: Mapping[str, Any]
    ) -> frozenset[str]:
        """The data categories the body really contains."""
        ...


# Annotated path patterns of a type and version and the categories each can carry
# (``SchemaRegistry.annotated_paths``).
CategoryPaths = Callable[[str, int], Mapping[str, frozenset[str]]]


class DirectoryView(Protocol):
    """The part of ``broker.core.directory.Directory`` a :class:`Federation` is built from."""

    def countries(self) -> tuple[Any, ...]:
        """Country infos with ``code`` and ``eu`` attributes."""
        ...

    def agency_kind(self, agency_id: str) -> str:
        """The agency's kind; raises a Casebridge error if unknown."""
        ...


def recipients_in(recipients: tuple[str, ...], country: str) -> tuple[str, ...]:
    """The recipient agencies that belong to ``country``."""
    return tuple(a for a in recipients if agency_country(a) == country)


# ---------------------------------------------------------------- compiled ---

_CACHE_LIMIT: Final = 4096


def _bits(rules: tuple[Rule, ...], predicate: Callable[[Rule], bool]) -> int:
    mask = 0
    for i, rule in enumerate(rules):
        if predicate(rule):
            mask |= 1 << i
    return mask


_SetGetter = Callable[[Rule], frozenset[str] | None]


def _has_direction(direction: Direction) -> Callable[[Rule], bool]:
    return lambda rule: direction in rule.directions


def _allows(get: _SetGetter, value: str) -> Callable[[Rule], bool]:
    def predicate(rule: Rule) -> bool:
        allowed = get(rule)
        return allowed is None or value in allowed

    return predicate


def _get_handling(rule: Rule) -> frozenset[str] | None:
    return rule.handling


def _get_tlp(rule: Rule) -> frozenset[str] | None:
    return rule.tlp


def _get_purpose(rule: Rule) -> frozenset[str] | None:
    return rule.purpose


def _get_sender_kind(rule: Rule) -> frozenset[str] | None:
    return rule.sender_kind


def _get_recipient_kind(rule: Rule) -> frozenset[str] | None:
    return rule.recipient_kind


class _PatternIndex:
    """Masks for one glob-pattern condition: exact values by dict, wildcards by regex."""

    __slots__ = ("_cache", "_exact", "_unconditional", "_wild")

    def __init__(self, rules: tuple[Rule, ...], get: Callable[[Rule], PatternSet | None]) -> None:
        self._unconditional = 0
        self._exact: dict[str, int] = {}
        wild: dict[str, int] = {}
        for i, rule in enumerate(rules):
            patterns = get(rule)
            if patterns is None:
                self._unconditional |= 1 << i
                continue
            for pattern in patterns.patterns:
                table = wild if "*" in pattern else self._exact
                table[pattern] = table.get(pattern, 0) | 1 << i
        self._wild = tuple(
            (PatternSet(patterns=(pattern,)).regex, mask) for pattern, mask in wild.items()
        )
        self._cache: dict[str, int] = {}

    def mask(self, value: str) -> int:
        mask = self._cache.get(value)
        if mask is None:
            mask = self._unconditional | self._exact.get(value, 0)
            for regex, bits in self._wild:
                if regex.match(value):
                    mask |= bits
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[value] = mask
        return mask


def _lists_any(category: str) -> Callable[[Rule], bool]:
    return lambda rule: category in (rule.categories.any_of or ())


def _requires(category: str) -> Callable[[Rule], bool]:
    return lambda rule: category in rule.categories.all_of


def _refuses(category: str) -> Callable[[Rule], bool]:
    def predicate(rule: Rule) -> bool:
        only = rule.categories.only
        return category in rule.categories.none_of or (only is not None and category not in only)

    return predicate


class _CategoryIndex:
    """Masks for category conditions, computed per declared category, never per rule.

    For a declared set D: ``any`` holds where some c in D is listed (or no ``any``);
    ``all`` holds unless some c not in D is required; ``only`` and ``none`` hold unless some
    c in D is outside ``only`` or inside ``none``. Categories outside DATA_CATEGORIES cannot
    be declared (the header parser refuses them), so the universe is closed.
    """

    __slots__ = ("_all_missing", "_any", "_any_unconditional", "_cache", "_full", "_refuses")

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self._full = (1 << len(rules)) - 1
        self._any_unconditional = _bits(rules, lambda r: r.categories.any_of is None)
        self._any = {c: _bits(rules, _lists_any(c)) for c in DATA_CATEGORIES}
        # Rules that fail when category c is *absent* (it is in their all_of).
        self._all_missing = {c: _bits(rules, _requires(c)) for c in DATA_CATEGORIES}
        # Rules that fail when category c is *present* (outside only, or inside none_of).
        self._refuses = {c: _bits(rules, _refuses(c)) for c in DATA_CATEGORIES}
        self._cache: dict[frozenset[str], int] = {}

    def mask(self, declared: frozenset[str]) -> int:
        mask = self._cache.get(declared)
        if mask is None:
            any_ok = self._any_unconditional
            failing = 0
            for category in DATA_CATEGORIES:
                if category in declared:
                    any_ok |= self._any[category]
                    failing |= self._refuses[category]
                else:
                    failing |= self._all_missing[category]
            mask = any_ok & ~failing & self._full
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[declared] = mask
        return mask


class RuleIndex:
    """The rules of a policy compiled to bitmasks: bit i set means rule i can match.

    Enumerated conditions (direction, handling, TLP, purpose, agency kinds) are tables built
    here; types and agency ids go through exact-value dicts plus the few wildcard patterns;
    categories are combined per declared category. Per-value results are cached (bounded;
    cleared when full, since they are pure), so a message costs a few dict lookups and ANDs
    of 200-bit integers, and a never-seen value costs one pass over its index, not the rules.
    """

    __slots__ = (
        "_categories",
        "_direction",
        "_handling",
        "_kind_default",
        "_kinds",
        "_peer_cache",
        "_purpose",
        "_recipients",
        "_senders",
        "_tlp",
        "_types",
        "rules",
    )

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        self._direction = {d: _bits(rules, _has_direction(d)) for d in Direction}
        self._handling = self._table(HANDLING_CODES, _get_handling)
        self._tlp = self._table(TLP_MARKINGS, _get_tlp)
        self._purpose = self._table(PURPOSES, _get_purpose)
        kinds: set[str] = set()
        for rule in rules:
            kinds |= (rule.sender_kind or frozenset()) | (rule.recipient_kind or frozenset())
        self._kinds = (
            self._table(tuple(kinds), _get_sender_kind),
            self._table(tuple(kinds), _get_recipient_kind),
        )
        self._kind_default = (
            _bits(rules, lambda r: r.sender_kind is None),
            _bits(rules, lambda r: r.recipient_kind is None),
        )
        self._types = _PatternIndex(rules, lambda r: r.types)
        self._senders = _PatternIndex(rules, lambda r: r.sender_agency)
        self._recipients = _PatternIndex(rules, lambda r: r.recipient_agency)
        self._categories = _CategoryIndex(rules)
        self._peer_cache: dict[tuple[str, bool | None], int] = {}

    def _table(self, values: tuple[str, ...], get: _SetGetter) -> dict[str, int]:
        return {v: _bits(self.rules, _allows(get, v)) for v in values}

    def _peer(self, peer: str, peer_eu: bool | None) -> int:
        key = (peer, peer_eu)
        mask = self._peer_cache.get(key)
        if mask is None:
            mask = _bits(self.rules, lambda r: r.peer.holds(peer, peer_eu))
            if len(self._peer_cache) >= _CACHE_LIMIT:
                self._peer_cache.clear()
            self._peer_cache[key] = mask
        return mask

    def candidates(self, unit: Unit) -> int:
        """Bitmask of every rule matching ``unit`` (bit i for ``rules[i]``)."""
        senders, recipients = self._kinds
        mask = (
            self._direction[unit.direction]
            & self._handling.get(unit.handling, 0)
            & self._tlp.get(unit.tlp, 0)
            & self._purpose.get(unit.purpose, 0)
            & senders.get(unit.sender_kind or "", self._kind_default[0])
            & recipients.get(unit.recipient_kind or "", self._kind_default[1])
        )
        if not mask:
            return 0
        return (
            mask
            & self._types.mask(unit.type)
            & self._peer(unit.peer, unit.peer_eu)
            & self._categories.mask(unit.categories)
            & self._senders.mask(unit.sender)
            & self._recipients.mask(unit.recipient)
        )

    def first(self, unit: Unit) -> Rule | None:
        """The first rule (in file order) that matches ``unit``, or None."""
        mask = self.candidates(unit)
        if not mask:
            return None
        return self.rules[(mask & -mask).bit_length() - 1]
