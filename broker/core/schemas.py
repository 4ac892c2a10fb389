"""The message catalogue: one JSON Schema per message type, body validation, data categories.

What it is for
    :class:`SchemaRegistry` compiles ``schemas/<type>.v<N>.json`` (JSON Schema 2020-12, read
    at the edge by :mod:`broker.loaders` and handed over as parsed documents) once,
    checks every document against the 2020-12 metaschema, and then answers three questions on
    the hot path: is this body valid for its declared type (:meth:`~SchemaRegistry.validate`),
    which data categories does it really contain (:meth:`~SchemaRegistry.categories`), and,
    for the policy linter, which paths exist and which are annotated
    (:meth:`~SchemaRegistry.path_patterns`, :meth:`~SchemaRegistry.annotated_paths`).

What it must never do
    Read a file or an environment variable (the edge does: ``broker/loaders.py``), fetch a schema
    from the network (both validators resolve ``$ref`` only inside the loaded documents),
    import asyncio/nats/aiohttp, or put body content into an error message: errors name a
    JSON pointer, the keyword and what the schema expects, never the offending value.

Validation
    ``jsonschema_rs`` (compiled once per type, formats checked) gives the yes/no answer. Only
    when it says no does the pure-Python ``jsonschema`` validator run, to explain why: errors
    most relevant first (``jsonschema.exceptions.relevance`` / ``best_match``). If the two ever
    disagree (Rust refuses, Python finds nothing), the body is still refused with a generic
    detail: fail closed. ``correction`` bodies get one more check: the corrected type must be
    known and every path must name a field of that type's schema.

Data categories (``x-data-category``)
    A schema annotates a location with ``"x-data-category": "<category>"`` (or a list of
    them), each one of :data:`broker.core.header.DATA_CATEGORIES`. A category is *present*
    in a body when an annotated location holds a value that is not null, not ``""``, not
    ``[]`` and not ``{}``. ``"x-data-category-when": <schema>`` (a JSON Schema) narrows this:
    the category counts only when the value is also valid against that schema; it is how
    ``is_minor`` counts as ``minor`` only when ``true`` and ``age`` only at 17 or less.

    The annotations are compiled at load into a tree of locations (object members and array
    items) that :meth:`~SchemaRegistry.categories` walks along the body, visiting only
    branches that carry an annotation somewhere below. How keywords map onto that tree:

    * ``$ref``: followed at load (into ``common`` or a local ``$defs``); the target's
      annotations apply at the referring location. Recursive references are refused.
    * ``allOf`` / ``anyOf`` / ``oneOf`` / ``if`` / ``then`` / ``else`` /
      ``dependentSchemas``: every branch is merged into the same location (union). The
      result may over-approximate when branches annotate differently, so schemas express
      role-dependent categories with separate members (``victims``, ``suspects``,
      ``witnesses``), never with branches.
    * ``properties``: one child location per member name.
    * ``items``: one child location for every array item (path segment ``*``).
    * annotations under ``additionalProperties``, ``patternProperties``, ``prefixItems``,
      ``unevaluated*``, ``contains``, ``propertyNames`` or ``not`` are refused at load.

    ``correction`` bodies carry values of another type: each new value counts with the
    categories it would have at its path in the corrected type's schema, plus the
    unconditional categories of the locations above that path.

Path patterns are JSON pointers with ``*`` for every array item, e.g. ``/victims/*/age``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import jsonschema_rs
import referencing.exceptions
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from broker.core.header import DATA_CATEGORIES
from broker.errors import (
    InvalidMessage,
    Reason,
    SchemaErrorDetail,
    SchemaInvalid,
    SchemaRegistryError,
)

if TYPE_CHECKING:
    import jsonschema  # type: ignore[import-untyped]  # ships no py.typed marker

    # Resolver is public API (Registry.resolver returns it) but only importable from here.
    from referencing._core import Resolver

SCHEMA_BASE: Final = "https://schemas.casebridge.org/"
METASCHEMA: Final = "https://json-schema.org/draft/2020-12/schema"
CORRECTION_TYPE: Final = "correction"
MAX_ERRORS: Final = 20
# Bounds the Python explanation pass (the slow path) on a body with very many violations.
MAX_EXPLAINED: Final = 200

_FILE_RE: Final = re.compile(
    r"(?P<name>[a-z][a-z_]*(?:\.[a-z][a-z_]*)*)\.v(?P<version>[1-9][0-9]{0,3})\.json\Z"
)
_MEMBER_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_ARRAY_TOKEN_RE: Final = re.compile(r"(?:0|[1-9][0-9]{0,8}|-)\Z")
_SAME_LOCATION_LISTS: Final = ("allOf", "anyOf", "oneOf")
_SAME_LOCATION_SINGLE: Final = ("if", "then", "else")
_NOT_ANNOTATABLE: Final = (
    "additionalProperties",
    "patternProperties",
    "prefixItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contains",
    "propertyNames",
    "not",
)
_GENERIC: Final = SchemaErrorDetail(
    path="", validator="schema", message="refused by the schema validator"
)
_NOT_JSON: Final = SchemaErrorDetail(path="", validator="type", message="is not a JSON value")


def schema_id_for(message_type: str, version: int) -> str:
    """The ``$id`` a schema for ``message_type`` and ``version`` must have."""
    return f"{SCHEMA_BASE}{message_type}/v{version}.json"


def _no_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def parse_documents(files: Mapping[str, str]) -> dict[str, Any]:
    """Parse schema files given as file name -> JSON text (read at the edge, see
    ``broker/loaders.py``): every name must be ``<name>.v<N>.json``, no member may repeat."""
    documents: dict[str, Any] = {}
    for name in sorted(files):
        if not _FILE_RE.fullmatch(name):
            raise SchemaRegistryError(f"{name}: file name must be <type>.v<N>.json")
        try:
            documents[name] = json.loads(files[name], object_pairs_hook=_no_duplicate_members)
        except ValueError as exc:
            raise SchemaRegistryError(f"{name}: unreadable: {exc}") from exc
    if not documents:
        raise SchemaRegistryError("no schema files")
    return documents


# ------------------------------------------------------------ category tree ---


@dataclass(slots=True)
class _Shape:
    """One body location while compiling: its annotations and its child locations."""

    categories: set[str] = field(default_factory=set)
    # canonical JSON of the x-data-category-when schema -> (that schema, categories)
    conditions: dict[str, tuple[Any, set[str]]] = field(default_factory=dict)
    members: dict[str, _Shape] = field(default_factory=dict)
    items: _Shape | None = None

    def annotated(self) -> bool:
        if self.categories or self.conditions:
            return True
        if self.items is not None and self.items.annotated():
            return True
        return any(child.annotated() for child in self.members.values())

    def all_categories(self) -> frozenset[str]:
        found = set(self.categories)
        for _, cats in self.conditions.values():
            found |= cats
        return frozenset(found)


@dataclass(frozen=True, slots=True)
class _Node:
    """One body location, compiled: what :meth:`SchemaRegistry.categories` walks."""

    categories: frozenset[str]
    conditions: tuple[tuple[jsonschema_rs.Validator, frozenset[str]], ...]
    members: Mapping[str, _Node]
    items: _Node | None

    def child(self, token: str) -> _Node | None:
        """The location one JSON-pointer token below this one, if the schema has it."""
        found = self.members.get(token)
        if found is None and self.items is not None and _ARRAY_TOKEN_RE.fullmatch(token):
            return self.items
        return found


_EMPTY_NODE: Final = _Node(frozenset(), (), MappingProxyType({}), None)


def _present(value: object) -> bool:
    if value is None:
        return False
    return not (isinstance(value, str | list | dict) and not value)


def _condition_holds(validator: jsonschema_rs.Validator, value: object) -> bool:
    try:
        return validator.is_valid(value)
    except ValueError:  # not a JSON value: count the category (fail closed)
        return True


def _collect(node: _Node, value: object, found: set[str]) -> None:
    if not _present(value):
        return
    if node.categories:
        found |= node.categories
    for validator, cats in node.conditions:
        if _condition_holds(validator, value):
            found |= cats
    if node.members and isinstance(value, dict):
        for name, child in node.members.items():
            member = value.get(name)
            if member is not None:
                _collect(child, member, found)
    if node.items is not None and isinstance(value, list):
        for item in value:
            _collect(node.items, item, found)


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _pointer(parts: Iterable[object]) -> str:
    return "".join(f"/{_escape(str(part))}" for part in parts)


class _Compiler:
    """Builds the location tree of one message schema, resolving ``$ref`` as it goes."""

    def __init__(self, file_name: str) -> None:
        self.file_name = file_name

    def fail(self, why: str) -> SchemaRegistryError:
        return SchemaRegistryError(f"{self.file_name}: {why}")

    def shape(self, schema: object, resolver: Resolver[Any]) -> _Shape:
        root = _Shape()
        self._walk(schema, resolver, root, ())
        return root

    def _walk(
        self, schema: object, resolver: Resolver[Any], into: _Shape, refs: tuple[int, ...]
    ) -> None:
        if not isinstance(schema, Mapping):
            return  # boolean schemas carry no annotations
        if "$id" in schema:
            resolver = resolver.in_subresource(DRAFT202012.create_resource(schema))
        self._annotate(schema, into)
        if "$dynamicRef" in schema:
            raise self.fail("$dynamicRef is not supported")
        if "$ref" in schema:
            self._follow(schema["$ref"], resolver, into, refs)
        for keyword in _SAME_LOCATION_LISTS:
            for sub in schema.get(keyword, ()):
                self._walk(sub, resolver, into, refs)
        for keyword in _SAME_LOCATION_SINGLE:
            if keyword in schema:
                self._walk(schema[keyword], resolver, into, refs)
        for sub in schema.get("dependentSchemas", {}).values():
            self._walk(sub, resolver, into, refs)
        for name, sub in schema.get("properties", {}).items():
            self._walk(sub, resolver, into.members.setdefault(name, _Shape()), refs)
        if "items" in schema:
            if into.items is None:
                into.items = _Shape()
            self._walk(schema["items"], resolver, into.items, refs)
        for keyword in _NOT_ANNOTATABLE:
            for sub in _subschemas(keyword, schema.get(keyword)):
                probe = _Shape()
                self._walk(sub, resolver, probe, refs)
                if probe.annotated():
                    raise self.fail(f"x-data-category under {keyword} is not supported")

    def _follow(
        self, ref: str, resolver: Resolver[Any], into: _Shape, refs: tuple[int, ...]
    ) -> None:
        try:
            resolved = resolver.lookup(ref)
        except referencing.exceptions.Unresolvable as exc:
            raise self.fail(f"unresolvable $ref {ref!r}") from exc
        key = id(resolved.contents)
        if key in refs:
            raise self.fail(f"recursive $ref {ref!r} is not supported")
        self._walk(resolved.contents, resolved.resolver, into, (*refs, key))

    def _annotate(self, schema: Mapping[str, Any], into: _Shape) -> None:
        raw = schema.get("x-data-category")
        when = schema.get("x-data-category-when")
        if raw is None:
            if when is not None:
                raise self.fail("x-data-category-when without x-data-category")
            return
        cats = [raw] if isinstance(raw, str) else raw
        if not isinstance(cats, list) or not cats:
            raise self.fail("x-data-category must be a category or a non-empty list of them")
        unknown = [c for c in cats if c not in DATA_CATEGORIES]
        if unknown:
            raise self.fail(f"unknown data categories {unknown} (see header.DATA_CATEGORIES)")
        if when is None:
            into.categories.update(cats)
            return
        try:
            jsonschema_rs.meta.validate(when)
        except jsonschema_rs.ValidationError as exc:
            raise self.fail(f"x-data-category-when is not a schema: {exc.message}") from exc
        key = json.dumps(when, sort_keys=True)
        into.conditions.setdefault(key, (when, set()))[1].update(cats)


def _subschemas(keyword: str, value: object) -> Iterable[object]:
    if value is None:
        return ()
    if keyword == "patternProperties" and isinstance(value, Mapping):
        return value.values()  # {regex: schema}
    if keyword == "prefixItems" and isinstance(value, list):
        return value
    return (value,)


def _freeze(shape: _Shape, *, prune: bool) -> _Node | None:
    members: dict[str, _Node] = {}
    for name, child in shape.members.items():
        node = _freeze(child, prune=prune)
        if node is not None:
            members[name] = node
    items = _freeze(shape.items, prune=prune) if shape.items is not None else None
    conditions = tuple(
        (jsonschema_rs.validator_for(when), frozenset(cats))
        for when, cats in shape.conditions.values()
    )
    if prune and not (shape.categories or conditions or members or items is not None):
        return None
    return _Node(frozenset(shape.categories), conditions, MappingProxyType(members), items)


def _patterns(
    shape: _Shape, prefix: str, paths: set[str], annotated: dict[str, frozenset[str]]
) -> None:
    children = [(f"{prefix}/{_escape(name)}", child) for name, child in shape.members.items()]
    if shape.items is not None:
        children.append((f"{prefix}/*", shape.items))
    for path, child in children:
        paths.add(path)
        cats = child.all_categories()
        if cats:
            annotated[path] = annotated.get(path, frozenset()) | cats
        _patterns(child, path, paths, annotated)


# ------------------------------------------------------------ error details ---


def _alternatives(expected: object) -> str:
    if isinstance(expected, list):
        return " or ".join(str(t) for t in expected)
    return str(expected)


def _limit_text(values: object) -> str:
    if not isinstance(values, list):
        return "an allowed value"
    if len(values) > 12:
        return f"one of the {len(values)} allowed values"
    return "one of " + ", ".join(json.dumps(v) for v in values)


def _describe(keyword: str, expected: object) -> str:
    """A readable message built from the keyword and the schema's value, never the body's."""
    messages: dict[str, str] = {
        "type": f"must be of type {_alternatives(expected)}",
        "enum": f"must be {_limit_text(expected)}",
        "const": f"must be {json.dumps(expected)}",
        "format": f"must be a valid {expected}",
        "pattern": f"must match the pattern {expected}",
        "minLength": f"must be at least {expected} characters long",
        "maxLength": f"must be at most {expected} characters long",
        "minItems": f"must have at least {expected} items",
        "maxItems": f"must have at most {expected} items",
        "minProperties": f"must have at least {expected} members",
        "maxProperties": f"must have at most {expected} members",
        "minimum": f"must be at least {expected}",
        "maximum": f"must be at most {expected}",
        "exclusiveMinimum": f"must be greater than {expected}",
        "exclusiveMaximum": f"must be less than {expected}",
        "uniqueItems": "must not contain duplicate items",
        "oneOf": "must match exactly one of the allowed forms",
        "anyOf": "must match at least one of the allowed forms",
        "not": "is not allowed here" if expected == {} else "matches a form the schema forbids",
        "false": "is not allowed",
    }
    return messages.get(keyword, f"fails the schema keyword {keyword}")


class _Explainer:
    """Turns ``jsonschema`` errors of one type into :class:`SchemaErrorDetail` values."""

    def __init__(self, document: Mapping[str, Any], registry: Registry[Any], shape: _Node) -> None:
        self._document = document
        self._registry = registry
        self._shape = shape
        self._validator: jsonschema.Draft202012Validator | None = None

    def _python_validator(self) -> jsonschema.Draft202012Validator:
        if self._validator is None:
            # Imported on the first invalid body only: importing jsonschema with its format
            # extras builds a grammar (rfc3987-syntax) and takes seconds on a small machine.
            import jsonschema  # noqa: PLC0415

            self._validator = jsonschema.Draft202012Validator(
                self._document,
                registry=self._registry,
                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
            )
        return self._validator

    def explain(self, body: object) -> list[SchemaErrorDetail]:
        """Readable errors for an invalid body, most relevant first (empty if none found)."""
        # Lazy for the reason given in _python_validator; jsonschema ships no py.typed marker.
        from jsonschema.exceptions import (  # type: ignore[import-untyped]  # noqa: PLC0415
            best_match,
            relevance,
        )

        errors = list(islice(self._python_validator().iter_errors(body), MAX_EXPLAINED))
        if not errors:
            return []
        ordered = sorted(errors, key=relevance, reverse=True)
        best = best_match(ordered)
        top = best
        while top.parent is not None:
            top = top.parent
        details: list[SchemaErrorDetail] = []
        for error in [best, *(e for e in ordered if e is not top)]:
            for detail in self._details(error):
                if detail not in details:
                    details.append(detail)
        return details[:MAX_ERRORS]

    def _details(self, error: jsonschema.ValidationError) -> list[SchemaErrorDetail]:
        path = _pointer(error.absolute_path)
        # A ``false`` subschema reports no keyword.
        keyword = "false" if error.validator is None else str(error.validator)
        if keyword == "required":
            missing = [m for m in error.validator_value if m not in error.instance]
            return [
                SchemaErrorDetail(
                    path=path, validator=keyword, message=f"missing required member {m!r}"
                )
                for m in missing
            ]
        if keyword in {"additionalProperties", "unevaluatedProperties"}:
            message = self._unexpected_members(error.absolute_path, error.instance)
            return [SchemaErrorDetail(path=path, validator=keyword, message=message)]
        return [
            SchemaErrorDetail(
                path=path, validator=keyword, message=_describe(keyword, error.validator_value)
            )
        ]

    def _unexpected_members(self, parts: Iterable[object], instance: object) -> str:
        node: _Node | None = self._shape
        for part in parts:
            node = node.child(str(part)) if node is not None else None
        known = node.members if node is not None else {}
        extra = [k for k in instance if k not in known] if isinstance(instance, dict) else []
        # Member names are echoed only when they look like field names, not like content.
        named = [k for k in extra if _MEMBER_NAME_RE.fullmatch(k)][:5]
        others = len(extra) - len(named)
        listed = ", ".join(repr(k) for k in named)
        if others:
            listed = f"{listed} and {others} other" if listed else f"{others} unnamed"
        return f"has members the schema does not allow: {listed or 'some'}"


# ----------------------------------------------------------------- registry ---


@dataclass(frozen=True, slots=True)
class _Entry:
    """Everything precompiled for one message type and version."""

    message_type: str
    version: int
    schema: Mapping[str, Any]
    fast: jsonschema_rs.Validator
    explainer: _Explainer
    categories_tree: _Node
    shape_tree: _Node
    paths: frozenset[str]
    annotated: Mapping[str, frozenset[str]]


def _check_document(file_name: str, document: object) -> tuple[str, int]:
    match = _FILE_RE.fullmatch(file_name)
    if match is None:
        raise SchemaRegistryError(f"{file_name}: file name must be <type>.v<N>.json")
    name, version = match["name"], int(match["version"])
    if not isinstance(document, dict):
        raise SchemaRegistryError(f"{file_name}: a schema must be a JSON object")
    if document.get("$schema") != METASCHEMA:
        raise SchemaRegistryError(f"{file_name}: $schema must be {METASCHEMA}")
    try:
        jsonschema_rs.meta.validate(document)
    except jsonschema_rs.ValidationError as exc:
        where = _pointer(exc.instance_path) or "/"
        raise SchemaRegistryError(
            f"{file_name}: not a valid 2020-12 schema at {where}: {exc.message}"
        ) from exc
    if document.get("$id") != schema_id_for(name, version):
        raise SchemaRegistryError(f"{file_name}: $id must be {schema_id_for(name, version)}")
    if document.get("x-version", version) != version:
        raise SchemaRegistryError(f"{file_name}: x-version must be {version}")
    declared = document.get("x-message-type", name)
    if declared != name:
        raise SchemaRegistryError(f"{file_name}: x-message-type must be {name!r}")
    return name, version


class SchemaRegistry:
    """The loaded message catalogue. Build with :meth:`from_documents` (from files at the
    edge: :func:`broker.loaders.load_schema_registry`)."""

    def __init__(self, entries: Mapping[tuple[str, int], _Entry]) -> None:
        self._entries = dict(entries)
        self._types = tuple(sorted({t for t, _ in self._entries}))

    @classmethod
    def from_documents(cls, documents: Mapping[str, Any]) -> SchemaRegistry:
        """Check and compile parsed schema documents keyed by file name (``<type>.v<N>.json``).

        Documents with ``x-message-type`` are message types; the others (``common``) are
        shared definitions that ``$ref`` can reach.
        """
        checked = {name: _check_document(name, doc) for name, doc in documents.items()}
        py_registry: Registry[Any] = Registry().with_resources(
            (doc["$id"], DRAFT202012.create_resource(doc)) for doc in documents.values()
        )
        rs_registry = jsonschema_rs.Registry(
            [(doc["$id"], doc) for doc in documents.values()], draft=jsonschema_rs.Draft202012
        )
        entries: dict[tuple[str, int], _Entry] = {}
        for file_name, doc in documents.items():
            if "x-message-type" in doc:
                entry = _compile(file_name, doc, checked[file_name], py_registry, rs_registry)
                entries[(entry.message_type, entry.version)] = entry
        if not entries:
            raise SchemaRegistryError("no message schemas (no document has x-message-type)")
        return cls(entries)

    # ---- catalogue -------------------------------------------------------

    def types(self) -> tuple[str, ...]:
        """Every message type with at least one version, sorted."""
        return self._types

    def versions(self, message_type: str) -> tuple[int, ...]:
        """The versions known for ``message_type`` (empty if none), ascending."""
        return tuple(sorted(v for t, v in self._entries if t == message_type))

    def schema_id(self, message_type: str, version: int) -> str:
        """The ``$id`` of the schema of a known type and version."""
        return schema_id_for(self._entry(message_type, version).message_type, version)

    def schema(self, message_type: str, version: int) -> Mapping[str, Any]:
        """The schema document of a known type and version (do not mutate it)."""
        return self._entry(message_type, version).schema

    def path_patterns(self, message_type: str, version: int) -> frozenset[str]:
        """Every location the schema defines, as a pattern (``/victims/*/age``)."""
        return self._entry(message_type, version).paths

    def annotated_paths(self, message_type: str, version: int) -> Mapping[str, frozenset[str]]:
        """Every annotated location pattern and the categories it can carry."""
        return self._entry(message_type, version).annotated

    # ---- hot path --------------------------------------------------------

    def validate(self, message_type: str, version: int, body: object) -> None:
        """Return if ``body`` is valid; raise ``SchemaInvalid`` (or ``UNKNOWN_TYPE``) if not."""
        entry = self._entry(message_type, version)
        try:
            valid = entry.fast.is_valid(body)
        except ValueError:  # jsonschema_rs refuses values JSON cannot hold (sets, bytes...)
            raise SchemaInvalid(message_type, [_NOT_JSON]) from None
        if not valid:
            raise SchemaInvalid(message_type, entry.explainer.explain(body) or [_GENERIC])
        if message_type == CORRECTION_TYPE:
            self._check_correction(body)

    def categories(self, message_type: str, version: int, body: object) -> frozenset[str]:
        """The data categories ``body`` really contains (see the module docstring)."""
        entry = self._entry(message_type, version)
        found: set[str] = set()
        _collect(entry.categories_tree, body, found)
        if message_type == CORRECTION_TYPE:
            self._correction_categories(body, found)
        return frozenset(found)

    # ---- internals -------------------------------------------------------

    def _entry(self, message_type: str, version: int) -> _Entry:
        entry = self._entries.get((message_type, version))
        if entry is None:
            shown = str(message_type)[:64]
            raise InvalidMessage(Reason.UNKNOWN_TYPE, f"no schema for {shown!r} v{version!r}")
        return entry

    def _target(self, body: object) -> _Entry | None:
        if not isinstance(body, dict):
            return None
        message_type = body.get("corrected_type")
        version = body.get("corrected_type_version")
        if not isinstance(message_type, str) or type(version) is not int:
            return None
        return self._entries.get((message_type, version))

    def _check_correction(self, body: object) -> None:
        target = self._target(body)
        if target is None or not isinstance(body, dict):
            raise SchemaInvalid(
                CORRECTION_TYPE,
                [
                    SchemaErrorDetail(
                        path="/corrected_type",
                        validator="x-known-type",
                        message="corrected_type and corrected_type_version name no known schema",
                    )
                ],
            )
        errors = [
            SchemaErrorDetail(
                path=f"/corrections/{index}/path",
                validator="x-path-exists",
                message=f"names no field of {target.message_type} v{target.version}",
            )
            for index, change in enumerate(body["corrections"])
            if _walk_pointer(target.shape_tree, change["path"]) is None
        ]
        if errors:
            raise SchemaInvalid(CORRECTION_TYPE, errors[:MAX_ERRORS])

    def _correction_categories(self, body: object, found: set[str]) -> None:
        target = self._target(body)
        changes = body.get("corrections") if isinstance(body, dict) else None
        if target is None or not isinstance(changes, list):
            return
        for change in changes:
            if not isinstance(change, dict) or not isinstance(change.get("path"), str):
                continue
            value = change.get("value")
            if not _present(value):
                continue
            node: _Node | None = target.categories_tree
            for token in change["path"].split("/")[1:]:
                assert node is not None  # noqa: S101 - loop breaks before it can be None
                found |= node.categories
                node = node.child(_unescape(token))
                if node is None:
                    break
            if node is not None:
                _collect(node, value, found)


def _walk_pointer(root: _Node, pointer: str) -> _Node | None:
    node: _Node | None = root
    for token in pointer.split("/")[1:]:
        if node is None:
            return None
        node = node.child(_unescape(token))
    return node


def _compile(
    file_name: str,
    document: dict[str, Any],
    key: tuple[str, int],
    py_registry: Registry[Any],
    rs_registry: jsonschema_rs.Registry,
) -> _Entry:
    message_type, version = key
    if document.get("x-version") != version:
        raise SchemaRegistryError(f"{file_name}: a message schema needs x-version {version}")
    # Walk first: it resolves every $ref through the Python registry and names what is wrong.
    shape = _Compiler(file_name).shape(document, py_registry.resolver(document["$id"]))
    try:
        fast = jsonschema_rs.validator_for(
            document, validate_formats=True, registry=rs_registry, offline=True
        )
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        raise SchemaRegistryError(f"{file_name}: jsonschema_rs refused it: {exc}") from exc
    paths: set[str] = set()
    annotated: dict[str, frozenset[str]] = {}
    _patterns(shape, "", paths, annotated)
    if shape.all_categories():
        annotated[""] = shape.all_categories()
    full = _freeze(shape, prune=False) or _EMPTY_NODE
    return _Entry(
        message_type=message_type,
        version=version,
        schema=document,
        fast=fast,
        explainer=_Explainer(document, py_registry, full),
        categories_tree=_freeze(shape, prune=True) or _EMPTY_NODE,
        shape_tree=full,
        paths=frozenset(paths),
        annotated=MappingProxyType(annotated),
    )


__all__ = [
    "CORRECTION_TYPE",
    "SCHEMA_BASE",
    "SchemaRegistry",
    "parse_documents",
    "schema_id_for",
]
