"""Forms generated from the message catalogue's JSON Schemas, and their submissions parsed back.

What it is for
    :func:`build_form` walks a message schema (following ``$ref`` into the shared definitions,
    merging mixins) and returns a tree of :class:`Field` values the templates render: strings,
    long texts, numbers, yes/no, dates, enums as selects, arrays of enums as checkbox groups,
    nested objects as fieldsets, arrays of objects with add/remove buttons. Form control names
    are ``b`` + the JSON pointer of the value (``b/requested_measures/0/measure``); array
    lengths travel as ``n`` + pointer. :func:`parse_body` turns the submitted pairs back into a
    body; :func:`attach_errors` puts schema errors next to their fields. The typed text is
    always re-rendered as typed (a wrong number stays in its box with its error).

What it must never do
    Trust the submission's shape: every value is read by the names the schema defines (an
    extra form member is ignored), array lengths are capped by ``maxItems`` and a hard bound.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from broker.errors import SchemaErrorDetail

MAX_DEPTH: Final = 6
MAX_ARRAY: Final = 50  # hard bound on items a form may hold, whatever maxItems says
LONG_TEXT: Final = 500  # strings allowed to be longer than this get a text area
_COMMON_PREFIX: Final = "https://schemas.casebridge.org/"


@dataclass(kw_only=True)
class Field:
    """One control (or group of controls) of a generated form."""

    pointer: str  # JSON pointer of the value in the body ("" for the body itself)
    label: str
    description: str
    kind: str  # text, textarea, integer, number, boolean, enum, multi, date, object, array
    required: bool
    options: tuple[tuple[str, str], ...] = ()  # (value, label)
    value: str = ""
    values: tuple[str, ...] = ()  # multi
    children: list[Field] = field(default_factory=list)
    error: str | None = None
    min_items: int = 0
    max_items: int = MAX_ARRAY
    open: bool = True  # optional groups start folded unless something is in them

    @property
    def name(self) -> str:
        return "b" + self.pointer

    @property
    def count_name(self) -> str:
        return "n" + self.pointer

    @property
    def dom_id(self) -> str:
        return "f" + re.sub(r"[^A-Za-z0-9_-]", "-", self.pointer)

    def walk(self) -> Iterable[Field]:
        yield self
        for child in self.children:
            yield from child.walk()


def humanize(name: str) -> str:
    text = name.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


class SchemaWalker:
    """Resolves ``$ref`` (absolute ``$id`` + fragment) against the catalogue's documents."""

    def __init__(self, documents: Iterable[Mapping[str, Any]]) -> None:
        self._by_id = {str(d["$id"]): d for d in documents if "$id" in d}

    def resolve(self, schema: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
        """``schema`` with its ``$ref`` chain and ``allOf`` merged in (properties united)."""
        merged: dict[str, Any] = {}
        ref = schema.get("$ref")
        if isinstance(ref, str) and depth < 10:
            merged = self._merge(merged, self.resolve(self._target(ref), depth + 1))
        for part in schema.get("allOf", []) if depth < 10 else []:
            merged = self._merge(merged, self.resolve(part, depth + 1))
        own = {k: v for k, v in schema.items() if k not in ("$ref", "allOf")}
        return self._merge(merged, own)

    @staticmethod
    def _merge(base: dict[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in more.items():
            if key == "properties" and isinstance(value, dict):
                out["properties"] = {**out.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list):
                out["required"] = sorted(set(out.get("required", [])) | set(value))
            else:
                out[key] = value
        return out

    def _target(self, ref: str) -> Mapping[str, Any]:
        base, _, fragment = ref.partition("#")
        node: Any = self._by_id.get(base, {})
        for part in [p for p in fragment.split("/") if p]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}


def _kind(schema: Mapping[str, Any]) -> str:
    types = schema.get("type")
    if isinstance(types, list):
        types = next((t for t in types if t != "null"), "string") if len(types) == 1 else "string"
    if "enum" in schema:
        return "enum"
    if types == "string":
        if (
            schema.get("format") == "date"
            or schema.get("pattern") == "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
        ):
            return "date"
        return "textarea" if int(schema.get("maxLength", 0)) > LONG_TEXT else "text"
    if types in ("integer", "number", "boolean", "object", "array"):
        return str(types)
    return "text"


def build_form(
    walker: SchemaWalker,
    schema: Mapping[str, Any],
    form: Mapping[str, list[str]] | None = None,
    *,
    ops: Iterable[str] = (),
) -> Field:
    """The form of ``schema``, filled from a submission (``form``: name -> values).

    ``ops``: ``add:<pointer>`` / ``remove:<pointer>/<index>`` changes of array lengths asked
    for by the person (the buttons next to an array)."""
    adds = {op[4:] for op in ops if op.startswith("add:")}
    removes = {op[7:] for op in ops if op.startswith("remove:")}
    submitted = form is not None
    values = form or {}

    def make(
        schema_in: Mapping[str, Any], pointer: str, label: str, required: bool, depth: int
    ) -> Field:
        s = walker.resolve(schema_in)
        kind = _kind(s)
        title = str(s.get("title") or label)
        description = str(s.get("description", ""))
        f = Field(
            pointer=pointer, label=title, description=description, kind=kind, required=required
        )
        if kind == "enum":
            f.options = tuple((str(v), humanize(str(v))) for v in s["enum"])
            f.value = (values.get(f.name) or [""])[0]
        elif kind == "object" and depth < MAX_DEPTH:
            needed = set(s.get("required", []))
            for name, sub in s.get("properties", {}).items():
                f.children.append(
                    make(sub, f"{pointer}/{name}", humanize(name), name in needed, depth + 1)
                )
            f.open = required or any(
                c.value or c.values or c.children for c in f.children if c.kind != "object"
            )
        elif kind == "array" and depth < MAX_DEPTH:
            items = walker.resolve(s.get("items", {}))
            f.min_items = int(s.get("minItems", 0))
            f.max_items = min(int(s.get("maxItems", MAX_ARRAY)), MAX_ARRAY)
            if "enum" in items:
                f.kind = "multi"
                f.options = tuple((str(v), humanize(str(v))) for v in items["enum"])
                f.values = tuple(values.get(f.name, []))
                return f
            if submitted and f.count_name in values:
                try:
                    count = int((values.get(f.count_name) or ["0"])[0])
                except ValueError:
                    count = 0
            else:
                count = max(f.min_items, 1) if required else 0
            keep = list(range(max(0, min(count, f.max_items))))
            removed = [i for i in keep if f"{pointer}/{i}" in removes]
            if pointer in adds and len(keep) < f.max_items:
                keep.append(len(keep))
            for new_index, old_index in enumerate(i for i in keep if i not in removed):
                child = make(
                    items, f"{pointer}/{old_index}", f"{title} {new_index + 1}", True, depth + 1
                )
                if old_index != new_index:
                    _renumber(child, f"{pointer}/{old_index}", f"{pointer}/{new_index}")
                f.children.append(child)
            f.open = required or bool(f.children)
        elif kind in ("object", "array"):
            f.kind = "text"  # deeper than MAX_DEPTH: not offered
        else:
            f.value = (values.get(f.name) or [""])[0]
        return f

    return make(schema, "", str(schema.get("title", "")), True, 0)


def _renumber(f: Field, old: str, new: str) -> None:
    """After a removal the later items move up; their names follow (values travel along)."""
    for node in f.walk():
        node.pointer = new + node.pointer[len(old) :]


def parse_body(root: Field, walker: SchemaWalker, schema: Mapping[str, Any]) -> dict[str, Any]:
    """The body the form holds (empty controls left out; numbers and yes/no typed)."""
    resolved = walker.resolve(schema)

    def value(f: Field, s: Mapping[str, Any]) -> Any:
        s = walker.resolve(s)
        if f.kind == "object":
            out: dict[str, Any] = {}
            props = s.get("properties", {})
            for child in f.children:
                name = child.pointer.rsplit("/", 1)[-1]
                got = value(child, props.get(name, {}))
                if got is not None:
                    out[name] = got
            return out if out or f.required else None
        if f.kind == "array":
            items = s.get("items", {})
            got_items = [value(c, items) for c in f.children]
            kept = [g if g is not None else {} for g in got_items]
            return kept if kept else None
        if f.kind == "multi":
            allowed = {str(v): v for v in walker.resolve(s.get("items", {})).get("enum", [])}
            chosen = [allowed[v] for v in f.values if v in allowed]
            return chosen or None
        text = f.value.strip()
        if not text:
            return None
        if f.kind == "enum":
            for option in s.get("enum", []):
                if str(option) == text:
                    return option
            return text
        if f.kind == "boolean":
            return text == "true"
        if f.kind == "integer" or (f.kind == "text" and "integer" in _types(s)):
            try:
                return int(text)
            except ValueError:
                return text
        if f.kind == "number":
            try:
                return float(text)
            except ValueError:
                return text
        return text

    body = value(root, resolved)
    return body if isinstance(body, dict) else {}


def _types(schema: Mapping[str, Any]) -> tuple[str, ...]:
    types = schema.get("type")
    return tuple(types) if isinstance(types, list) else (str(types),)


def attach_errors(root: Field, errors: Iterable[SchemaErrorDetail]) -> int:
    """Put each schema error on the field it is about (or its nearest shown ancestor).
    Also marks required controls left empty. Returns how many fields carry an error."""
    by_pointer = {f.pointer: f for f in root.walk()}

    def in_play(f: Field) -> bool:
        # A required member of an optional group left empty is no error: the group is left out.
        parts = f.pointer.split("/")
        for i in range(1, len(parts)):
            ancestor = by_pointer.get("/".join(parts[:i]))
            if ancestor is not None and not ancestor.required and not _filled(ancestor):
                return False
        return True

    for f in root.walk():
        if f.required and f.kind in _LEAVES and not f.value.strip() and in_play(f):
            f.error = "This field is required."
    for error in errors:
        pointer = error.path
        message = error.message
        missing = re.fullmatch(r"missing required member '([^']+)'", message)
        if missing:
            pointer = f"{pointer}/{missing.group(1)}"
            message = "This field is required."
        target = by_pointer.get(pointer)
        while target is None and pointer:
            pointer = pointer.rsplit("/", 1)[0]
            target = by_pointer.get(pointer)
        if target is not None and target.error is None:
            target.error = message[:1].upper() + message[1:] + "."
            target.open = True
    shown = [f for f in root.walk() if f.error]
    # an error deep inside a folded group unfolds its ancestors
    for f in shown:
        parts = f.pointer.split("/")
        for i in range(1, len(parts)):
            ancestor = by_pointer.get("/".join(parts[:i]))
            if ancestor is not None:
                ancestor.open = True
    return len(shown)


_LEAVES: Final = frozenset({"text", "textarea", "date", "enum", "integer", "number"})


def _filled(f: Field) -> bool:
    return any(bool(n.value.strip() or n.values) for n in f.walk())


def fill_from_body(root: Field, body: Mapping[str, Any]) -> dict[str, list[str]]:
    """Form values (name -> values) that show ``body`` (a draft read back, a reply's defaults)."""
    out: dict[str, list[str]] = {}

    def put(pointer: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                put(f"{pointer}/{k}", v)
        elif isinstance(value, list):
            if value and all(not isinstance(v, (dict, list)) for v in value):
                out["b" + pointer] = [str(v) for v in value]
            out["n" + pointer] = [str(len(value))]
            for i, v in enumerate(value):
                put(f"{pointer}/{i}", v)
        elif isinstance(value, bool):
            out["b" + pointer] = ["true" if value else "false"]
        elif value is not None:
            out["b" + pointer] = [str(value)]

    put("", body)
    return out
