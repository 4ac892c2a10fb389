"""Parse a policy file (YAML bytes) into a :class:`Policy`, refusing anything doubtful by line.

The YAML is read with a restricted loader: one document, string keys, no duplicate keys, no
anchors, aliases, merge keys or custom tags, and YAML 1.2 scalars (``NO`` is Norway, not
``false``; dates stay strings). The result is checked against ``schemas/policy.v1.json`` and
then semantically (unique rule ids, known groups). Every refusal is a :class:`PolicyError`
listing each problem with its 1-based line. Files are read at the edge (``broker/loaders.py``);
never here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import jsonschema_rs
import yaml

from broker.core.jose import b64url_encode
from broker.core.policy.attachments import parse_attachment_rule
from broker.core.policy.model import (
    DEFAULT_SMALL_CELL_K,
    AttachmentRule,
    CategoryCondition,
    Direction,
    PatternSet,
    PeerSpec,
    Policy,
    Redaction,
    Rule,
    Verdict,
)
from broker.core.policy.schema import POLICY_SCHEMA
from broker.errors import PolicyError, PolicyProblem

MAX_POLICY_BYTES: Final = 1 << 20

_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
_TIMESTAMP_TAG: Final = "tag:yaml.org,2002:timestamp"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_ALLOWED_TAGS: Final = frozenset(
    {
        "tag:yaml.org,2002:str",
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
        _BOOL_TAG,
        "tag:yaml.org,2002:null",
        "tag:yaml.org,2002:map",
        "tag:yaml.org,2002:seq",
    }
)

Marks = dict[tuple[str | int, ...], int]


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans, no timestamps, and no anchors or aliases."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        # Aliases make one edit change many rules unseen, and enable "billion laughs".
        if self.check_event(yaml.NodeEvent):
            event = self.current_event
            if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
                raise yaml.MarkedYAMLError(
                    problem="anchors and aliases are not allowed in a policy",
                    problem_mark=event.start_mark,
                )
        return super().compose_node(parent, index)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _line(mark: yaml.Mark | None) -> int | None:
    return mark.line + 1 if mark is not None else None


class _Builder:
    """Turns a composed node tree into plain values, recording each value's line by path."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.marks: Marks = {}

    def build(self, node: yaml.Node, path: tuple[str | int, ...]) -> object:
        self.marks[path] = node.start_mark.line + 1
        if node.tag not in _ALLOWED_TAGS:
            raise _problem(_line(node.start_mark), f"tag {node.tag!r} is not allowed")
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    raise _problem(_line(key_node.start_mark), "merge keys (<<) are not allowed")
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _problem(_line(key_node.start_mark), "keys must be plain strings")
                key = self.loader.construct_object(key_node)
                if not isinstance(key, str):
                    raise _problem(_line(key_node.start_mark), f"key {key!r} is not a string")
                if key in out:
                    first = self.marks.get((*path, key))
                    raise _problem(
                        _line(key_node.start_mark),
                        f"duplicate key {key!r} (first at line {first})",
                    )
                out[key] = self.build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node)


class _RefusedError(Exception):
    """Internal: carries one problem up to :func:`parse_policy`, which adds the source name."""

    def __init__(self, problem: PolicyProblem) -> None:
        self.problem = problem


def _problem(line: int | None, message: str) -> _RefusedError:
    return _RefusedError(PolicyProblem(line=line, message=message))


def parse_yaml(data: bytes) -> tuple[object, Marks]:
    """Parse one YAML document with the restricted loader; returns the value and line marks."""
    if len(data) > MAX_POLICY_BYTES:
        raise _problem(None, f"larger than {MAX_POLICY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _problem(line, "not valid UTF-8") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise _problem(1, "empty document")
        builder = _Builder(loader)
        value = builder.build(node, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        why = str(exc.problem or exc.context or "YAML syntax error")
        raise _problem(_line(mark), why) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise _problem(None, f"YAML error: {type(exc).__name__}") from None
    finally:
        loader.dispose()
    return value, builder.marks


def _line_of(marks: Marks, path: Sequence[str | int]) -> int | None:
    for cut in range(len(path), -1, -1):
        line = marks.get(tuple(path[:cut]))
        if line is not None:
            return line
    return None


_MAX_MESSAGE: Final = 300


_Error = jsonschema_rs.ValidationError
_Kind = jsonschema_rs.ValidationErrorKind


def _specific(error: _Error) -> _Error:
    """Descend through failed oneOf alternatives to the error the author most likely meant."""
    chosen = _alternative(error)
    return error if chosen is error else _specific(chosen)


def _alternative(error: _Error) -> _Error:
    """For a failed oneOf, the sub-error from the alternative the author most likely meant.

    Alternatives that fail on the value's type at the same place are the ones not meant
    (a list given where one string or a list is allowed); among the rest the deepest wins.
    """
    if not isinstance(error.kind, _Kind.OneOfNotValid):
        return error
    alternatives = [alt for alt in error.kind.context if alt]
    depth = len(error.instance_path)

    def score(alt: list[_Error]) -> tuple[int, int]:
        wrong_type = any(
            isinstance(e.kind, _Kind.Type) and len(e.instance_path) == depth for e in alt
        )
        return (int(wrong_type), -max(len(e.instance_path) for e in alt))

    if not alternatives:
        return error
    return min(alternatives, key=score)[0]


def _message(error: _Error) -> str:
    """A reader-friendly message for one schema error (never the whole offending rule)."""
    path = error.instance_path
    where = "/".join(str(p) for p in path)
    prefix = f"{where}: " if where else ""
    kind = error.kind
    if isinstance(kind, _Kind.Not) and "then" in error.schema_path:
        return f"{prefix}a deny rule cannot have redact or removes"
    if isinstance(kind, _Kind.Not) and path and path[-1] == "id":
        return f"{prefix}rule ids starting with 'builtin.' are reserved"
    if isinstance(kind, _Kind.PropertyNames):
        return f"{prefix}group names must be lower-case words other than eu, non_eu and any"
    if "dependentRequired" in error.schema_path:
        return f"{prefix}removes needs redact (it names what the redactions remove)"
    if isinstance(kind, _Kind.Enum):
        options = ", ".join(str(o) for o in kind.options)
        return f"{prefix}{json.dumps(error.instance)} is not one of: {options}"[:_MAX_MESSAGE]
    message = str(error.message)
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return f"{prefix}{message}"


# Compiled once at import from the schema held as data: a constant, not a cache.
_VALIDATOR: Final = jsonschema_rs.Draft202012Validator(POLICY_SCHEMA)


def _one_or_many(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    assert isinstance(value, list)  # noqa: S101 - the policy schema allows a string or a list
    return tuple(value)


def _set(value: object) -> frozenset[str] | None:
    items = _one_or_many(value)
    return None if items is None else frozenset(items)


def _peer(
    value: object,
    groups: Mapping[str, frozenset[str]],
    line: int | None,
    problems: list[PolicyProblem],
) -> PeerSpec:
    items = _one_or_many(value)
    if items is None or "any" in items:
        return PeerSpec(any=True)
    countries: set[str] = set()
    eu = non_eu = False
    for item in items:
        if item == "eu":
            eu = True
        elif item == "non_eu":
            non_eu = True
        elif item in groups:
            countries |= groups[item]
        elif item.isupper():
            countries.add(item)
        else:
            problems.append(PolicyProblem(line=line, message=f"unknown country group {item!r}"))
    return PeerSpec(any=False, eu=eu, non_eu=non_eu, countries=frozenset(countries))


def _categories(value: Mapping[str, Any] | None) -> CategoryCondition:
    if not value:
        return CategoryCondition()
    return CategoryCondition(
        any_of=_set(value.get("any")),
        all_of=_set(value.get("all")) or frozenset(),
        only=_set(value.get("only")),
        none_of=_set(value.get("none")) or frozenset(),
    )


def _rule(
    raw: Mapping[str, Any],
    line: int | None,
    groups: Mapping[str, frozenset[str]],
    problems: list[PolicyProblem],
) -> Rule:
    rule_id: str = raw["id"]
    direction = raw["direction"]
    directions = frozenset(Direction) if direction == "any" else frozenset({Direction(direction)})
    redact = tuple(
        Redaction(op="drop", path=r["drop"], rule_id=rule_id)
        if "drop" in r
        else Redaction(op="coarsen", path=r["coarsen"], to=r["to"], rule_id=rule_id)
        for r in raw.get("redact", ())
    )
    types = _one_or_many(raw.get("type"))
    senders = _one_or_many(raw.get("sender_agency"))
    recipients = _one_or_many(raw.get("recipient_agency"))
    return Rule(
        id=rule_id,
        reason=raw["reason"],
        line=line,
        decision=Verdict(raw["decision"]),
        directions=directions,
        peer=_peer(raw.get("peer"), groups, line, problems),
        types=None if types is None or "*" in types else PatternSet(patterns=types),
        handling=_set(raw.get("handling")),
        tlp=_set(raw.get("tlp")),
        purpose=_set(raw.get("purpose")),
        categories=_categories(raw.get("categories")),
        sender_kind=_set(raw.get("sender_kind")),
        recipient_kind=_set(raw.get("recipient_kind")),
        sender_agency=None if senders is None else PatternSet(patterns=senders),
        recipient_agency=None if recipients is None else PatternSet(patterns=recipients),
        redact=redact,
        removes=_set(raw.get("removes")) or frozenset(),
    )


def parse_policy(data: bytes, *, source: str = "<policy>", schema: str | None = None) -> Policy:
    """Parse and check policy YAML bytes; raise :class:`PolicyError` listing every problem.

    ``schema`` is the policy JSON Schema as text (default: ``schemas/policy.v1.json``, held
    as data in :mod:`broker.core.policy.schema`).
    """
    try:
        parsed, marks = parse_yaml(data)
    except _RefusedError as refused:
        raise PolicyError(source, [refused.problem]) from None
    validator = (
        _VALIDATOR if schema is None else jsonschema_rs.Draft202012Validator(json.loads(schema))
    )
    found = []
    for error in validator.iter_errors(parsed):
        chosen = _specific(error)
        line = _line_of(marks, list(chosen.instance_path))
        found.append(PolicyProblem(line=line, message=_message(chosen)))
    if found:
        raise PolicyError(source, sorted(found, key=lambda p: (p.line or 0, p.message)))
    assert isinstance(parsed, dict)  # noqa: S101 - the schema requires an object
    value: dict[str, Any] = parsed
    problems: list[PolicyProblem] = []
    groups = {name: frozenset(members) for name, members in value.get("groups", {}).items()}
    rules: list[Rule] = []
    seen: dict[str, int | None] = {}
    for index, raw in enumerate(value["rules"]):
        line = marks.get(("rules", index))
        if raw["id"] in seen:
            problems.append(
                PolicyProblem(
                    line=marks.get(("rules", index, "id"), line),
                    message=f"duplicate rule id {raw['id']!r} (first at line {seen[raw['id']]})",
                )
            )
        seen[raw["id"]] = line
        rules.append(_rule(raw, line, groups, problems))
    attachment_rules: list[AttachmentRule] = []
    for index, raw in enumerate(value.get("attachments", ())):
        line = marks.get(("attachments", index))
        if raw["id"] in seen:
            problems.append(PolicyProblem(line=line, message=f"duplicate rule id {raw['id']!r}"))
        seen[raw["id"]] = line
        peer = _peer(raw.get("peer"), groups, line, problems)
        attachment_rules.append(parse_attachment_rule(raw, line, peer))
    if problems:
        raise PolicyError(source, problems)
    return Policy(
        attachment_rules=tuple(attachment_rules),
        country=value["country"],
        version=value["version"],
        description=value.get("description", ""),
        groups=groups,
        rules=tuple(rules),
        small_cell_k=value.get("safeguards", {}).get("small_cell_k", DEFAULT_SMALL_CELL_K),
        digest=b64url_encode(hashlib.sha256(data).digest()),
        source=source,
    )
