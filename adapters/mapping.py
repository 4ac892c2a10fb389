"""The mapping adapter: a case system's export (CSV or JSON lines) turned into drafts by a
declarative YAML mapping, checked row by row, then sent (or, with ``--dry-run``, only shown).

The settings file is the mapping (``docs/adapters/mapping.example.yaml``)::

    node: {url: "http://127.0.0.1:8470", token_file: token.txt}   # optional for --dry-run
    export: {path: export.csv, format: csv, delimiter: ";"}       # or format: jsonl
    tables: {offences: {THB: trafficking_in_human_beings}}        # named code tables
    draft: {type: request.assistance, purpose: investigation, handling: H2, ...}
    fields:
      - {from: deadline, to: /body/due_date, date: "%d.%m.%Y"}
      - {from: offence_codes, to: /body/offences, split: "|", codes: offences}

``draft`` holds the constant header fields (and constant body parts) of every row; each
field copies one source value (a CSV column, or a JSON pointer into a JSON-lines record) to a
JSON pointer in the draft, through transforms applied in this order: ``split`` (a list, each
item transformed), ``codes`` (a named table or an inline one; a value not in it is an error
unless the table has ``default``), ``date`` (parse with a ``strptime`` format, write ISO
``YYYY-MM-DD``; ``{from, to}`` for another output format), ``as`` (``integer``, ``number``,
``boolean``, ``string``). An empty value leaves the pointer unset unless ``default`` is given;
``required: true`` makes it an error.

Row numbers are line numbers of the export (a CSV's header is line 1, its first record line
2; the first JSON line is line 1), as a spreadsheet or an editor shows them.

Each row passes three checks, every error reported with its row number: the mapping (bad
date, unknown code, missing required value), the schema of the message type (locally), and
the node's pre-flight policy (``POST /v1/explain``; only when a node is configured). A row
that fails any check fails alone; the others go on. Sending uses an ``Idempotency-Key`` from
the draft's canonical JSON, so running the same export twice sends nothing twice.

What it must never do
    Send a row that failed a check, stop at a bad row, or guess a value the mapping does not
    define (an unknown code is an error, never passed through).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, TextIO

from broker.core import canonical
from broker.core.schemas import SchemaRegistry
from broker.errors import CasebridgeError, ConfigError, SchemaInvalid
from broker.loaders import load_schema_registry
from broker.sdk import NodeClient, NodeError

from .common import NodeAccess, load_document, node_access, reject_unknown

KEY_PREFIX: Final = "mapping-sha256:"
FORMATS: Final = ("csv", "jsonl")
_TYPES: Final = ("integer", "number", "boolean", "string")
_TRUE: Final = frozenset({"1", "true", "yes", "y", "ja", "x"})
_FALSE: Final = frozenset({"0", "false", "no", "n", "nein", ""})
_FIELD_MEMBERS: Final = {"from", "to", "split", "codes", "date", "as", "default", "required"}

Stage = Literal["mapping", "schema", "policy", "node"]


class RowError(Exception):
    """One value of a row that the mapping cannot turn into a draft value."""

    def __init__(self, source: str, detail: str) -> None:
        self.source = source
        self.detail = detail
        super().__init__(f"{source}: {detail}")


# ------------------------------------------------------------------ the mapping ---


@dataclass(frozen=True, kw_only=True, slots=True)
class CodeTable:
    """Source code -> draft value; ``default`` for codes not listed (else an error)."""

    name: str
    codes: Mapping[str, Any]
    default: Any = None
    has_default: bool = False

    def look_up(self, source: str, value: str) -> Any:
        if value in self.codes:
            return self.codes[value]
        if self.has_default:
            return self.default
        raise RowError(source, f"{value!r} is not in code table {self.name}")


@dataclass(frozen=True, kw_only=True, slots=True)
class DateFormat:
    """Parse with ``source``, write with ``target`` (``strptime``/``strftime`` formats)."""

    source: str
    target: str = "%Y-%m-%d"


@dataclass(frozen=True, kw_only=True, slots=True)
class Field:
    """One source value copied to one JSON pointer of the draft, through transforms."""

    source: str
    target: tuple[str, ...]
    split: str | None = None
    codes: CodeTable | None = None
    date: DateFormat | None = None
    as_type: str | None = None
    default: Any = None
    has_default: bool = False
    required: bool = False

    def convert(self, raw: Any) -> Any:
        """The draft value of ``raw`` (a str from CSV, any JSON value from JSON lines)."""
        if self.split is not None and isinstance(raw, str):
            return [self._one(part.strip()) for part in raw.split(self.split) if part.strip()]
        if isinstance(raw, list):
            return [self._one(item) for item in raw]
        return self._one(raw)

    def _one(self, value: Any) -> Any:
        if self.codes is not None:
            value = self.codes.look_up(self.source, str(value))
        if self.date is not None:
            try:
                value = datetime.strptime(str(value), self.date.source).strftime(self.date.target)  # noqa: DTZ007 - a calendar date, no instant
            except ValueError:
                raise RowError(
                    self.source, f"{value!r} is not a date in the format {self.date.source}"
                ) from None
        if self.as_type is not None:
            value = _as(self.source, value, self.as_type)
        return value


def _as(source: str, value: Any, kind: str) -> Any:
    text = str(value).strip()
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text.replace(",", "."))
    except ValueError:
        raise RowError(
            source, f"{value!r} is not a{'n' if kind == 'integer' else ''} {kind}"
        ) from None
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise RowError(source, f"{value!r} is not a yes/no value")
    return text


@dataclass(frozen=True, kw_only=True, slots=True)
class Export:
    """Where the export is and how it is written."""

    path: Path | None
    format: str = "csv"
    delimiter: str = ","
    encoding: str = "utf-8"


@dataclass(frozen=True, kw_only=True, slots=True)
class MappingSpec:
    """A loaded mapping: constant draft parts, fields, the export, the node (optional)."""

    constant: Mapping[str, Any]
    fields: tuple[Field, ...]
    export: Export
    node: NodeAccess | None = None

    @classmethod
    def load(cls, path: Path) -> MappingSpec:
        """Read and check a mapping file (every problem is a ``ConfigError`` naming it)."""
        raw = load_document(path)
        reject_unknown(raw, {"node", "export", "tables", "draft", "fields"}, str(path))
        return cls.parse(raw, base=path.parent, where=str(path))

    @classmethod
    def parse(cls, raw: Mapping[str, Any], *, base: Path, where: str = "mapping") -> MappingSpec:
        tables = {
            str(name): _table(str(name), value, where)
            for name, value in (_mapping(raw.get("tables", {}), f"{where}: tables")).items()
        }
        constant = _mapping(raw.get("draft", {}), f"{where}: draft")
        fields = raw.get("fields")
        if not isinstance(fields, list) or not fields:
            raise ConfigError(f"{where}: fields must be a non-empty list")
        parsed = tuple(
            _field(item, tables, f"{where}: fields[{i}]") for i, item in enumerate(fields)
        )
        export = _mapping(raw.get("export", {}), f"{where}: export")
        reject_unknown(export, {"path", "format", "delimiter", "encoding"}, f"{where}: export")
        kind = export.get("format", "csv")
        if kind not in FORMATS:
            raise ConfigError(f"{where}: export.format must be one of {list(FORMATS)}")
        delimiter = export.get("delimiter", ",")
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            raise ConfigError(f"{where}: export.delimiter must be one character")
        node = node_access(raw["node"], base=base) if raw.get("node") is not None else None
        return cls(
            constant=constant,
            fields=parsed,
            export=Export(
                path=base / str(export["path"]) if export.get("path") else None,
                format=kind,
                delimiter=delimiter,
                encoding=str(export.get("encoding", "utf-8")),
            ),
            node=node,
        )

    def draft(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The draft of one record, or :class:`RowErrors` listing every bad value."""
        draft: dict[str, Any] = json.loads(json.dumps(self.constant))  # a deep copy
        problems: list[RowError] = []
        for item in self.fields:
            raw = _source(record, item.source, jsonl=self.export.format == "jsonl")
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                if item.has_default:
                    _put(draft, item.target, item.default)
                elif item.required:
                    problems.append(RowError(item.source, "a value is required"))
                continue
            try:
                _put(draft, item.target, item.convert(raw.strip() if isinstance(raw, str) else raw))
            except RowError as exc:
                problems.append(exc)
        if problems:
            raise RowErrors(problems)
        return draft


class RowErrors(Exception):
    """Every bad value of one row."""

    def __init__(self, errors: Sequence[RowError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(str(e) for e in errors))


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping")
    return value


def _table(name: str, value: object, where: str) -> CodeTable:
    codes = dict(_mapping(value, f"{where}: table {name}"))
    has_default = "default" in codes
    default = codes.pop("default", None)
    return CodeTable(
        name=name,
        codes={str(k): v for k, v in codes.items()},
        default=default,
        has_default=has_default,
    )


def _field(item: object, tables: Mapping[str, CodeTable], where: str) -> Field:
    spec = _mapping(item, where)
    reject_unknown(spec, _FIELD_MEMBERS, where)
    source, target = spec.get("from"), spec.get("to")
    if not isinstance(source, str) or not source:
        raise ConfigError(f"{where}: from (a column, or a JSON pointer for jsonl) is required")
    if not isinstance(target, str) or not target.startswith("/"):
        raise ConfigError(f"{where}: to must be a JSON pointer into the draft (/body/...)")
    codes = spec.get("codes")
    table = None
    if isinstance(codes, str):
        if codes not in tables:
            raise ConfigError(f"{where}: no code table {codes!r} under tables")
        table = tables[codes]
    elif codes is not None:
        table = _table(f"of {source}", codes, where)
    date = spec.get("date")
    parsed_date = None
    if isinstance(date, str):
        parsed_date = DateFormat(source=date)
    elif isinstance(date, dict) and set(date) <= {"from", "to"} and "from" in date:
        parsed_date = DateFormat(source=str(date["from"]), target=str(date.get("to", "%Y-%m-%d")))
    elif date is not None:
        raise ConfigError(f"{where}: date must be a strptime format or {{from, to}}")
    as_type = spec.get("as")
    if as_type is not None and as_type not in _TYPES:
        raise ConfigError(f"{where}: as must be one of {list(_TYPES)}")
    split = spec.get("split")
    if split is not None and (not isinstance(split, str) or not split):
        raise ConfigError(f"{where}: split must be a separator string")
    return Field(
        source=source,
        target=tuple(_pointer_tokens(target)),
        split=split,
        codes=table,
        date=parsed_date,
        as_type=as_type,
        default=spec.get("default"),
        has_default="default" in spec,
        required=bool(spec.get("required", False)),
    )


def _pointer_tokens(pointer: str) -> list[str]:
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def _source(record: Mapping[str, Any], source: str, *, jsonl: bool) -> Any:
    """A CSV column, or (JSON lines) the value at a JSON pointer; None when absent."""
    if not jsonl or not source.startswith("/"):
        return record.get(source)
    value: Any = record
    for token in _pointer_tokens(source):
        if isinstance(value, dict):
            value = value.get(token)
        elif isinstance(value, list) and token.isdigit() and int(token) < len(value):
            value = value[int(token)]
        else:
            return None
        if value is None:
            return None
    return value


def _put(document: dict[str, Any], tokens: Sequence[str], value: Any) -> None:
    """Set ``value`` at ``tokens``, creating objects (and lists for numeric tokens, ``-``
    appends) on the way."""
    node: Any = document
    for i, step in enumerate(tokens):
        last = i == len(tokens) - 1
        following = None if last else tokens[i + 1]
        fresh: Any = (
            [] if following is not None and (following.isdigit() or following == "-") else {}
        )
        if isinstance(node, list):
            if step == "-":
                node.append(value if last else fresh)
                node = node[-1]
                continue
            index = int(step)
            while len(node) <= index:
                node.append({} if not last else None)
            if last:
                node[index] = value
            else:
                if not isinstance(node[index], dict | list):
                    node[index] = fresh
                node = node[index]
        elif last:
            node[step] = value
        else:
            if not isinstance(node.get(step), dict | list):
                node[step] = fresh
            node = node[step]


# ------------------------------------------------------------------ the export ---


def records(
    export: Export, text: str
) -> Iterator[tuple[int, Mapping[str, Any] | None, str | None]]:
    """``(row number, record, error)`` for every record of the export: a record that cannot be
    read (a JSON line that is not an object) comes with its error instead."""
    if export.format == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=export.delimiter)
        for record in reader:
            if None in record:
                yield reader.line_num, None, "more cells than the header has columns"
                continue
            yield reader.line_num, record, None
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = canonical.loads_strict(line, what=f"line {number}")
        except CasebridgeError as exc:
            yield number, None, exc.detail
            continue
        if not isinstance(value, dict):
            yield number, None, "a JSON line must hold an object"
            continue
        yield number, value, None


# ------------------------------------------------------------------------ rows ---


@dataclass(kw_only=True, slots=True)
class RowReport:
    """What became of one row: its draft and every error (stage, source, detail, rule id)."""

    row: int
    draft: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    decision: dict[str, Any] | None = None
    sent: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def fail(self, stage: Stage, detail: str, **extra: Any) -> None:
        error = {"stage": stage, "detail": detail} | {k: v for k, v in extra.items() if v}
        if error not in self.errors:  # one source mapped to two pointers fails once
            self.errors.append(error)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"row": self.row, "ok": self.ok}
        for name in ("draft", "decision", "sent"):
            value = getattr(self, name)
            if value is not None:
                document[name] = value
        if self.errors:
            document["errors"] = self.errors
        return document


def idempotency_key(draft: Mapping[str, Any]) -> str:
    """The Idempotency-Key of a mapped draft: the same row mapped the same way is one send."""
    return KEY_PREFIX + hashlib.sha256(canonical.dumps(dict(draft))).hexdigest()


def check_row(
    spec: MappingSpec,
    row: int,
    record: Mapping[str, Any],
    *,
    schemas: SchemaRegistry,
    client: NodeClient | None,
) -> RowReport:
    """Map one record and check it: mapping, schema, then (with a client) pre-flight policy."""
    report = RowReport(row=row)
    try:
        draft = spec.draft(record)
    except RowErrors as exc:
        for error in exc.errors:
            report.fail("mapping", error.detail, source=error.source)
        return report
    report.draft = draft
    message_type, version = draft.get("type"), draft.get("type_version", 1)
    if not isinstance(message_type, str) or message_type not in schemas.types():
        report.fail("schema", f"unknown message type {message_type!r}")
        return report
    try:
        schemas.validate(message_type, version, draft.get("body"))
    except SchemaInvalid as exc:
        for problem in exc.errors:
            report.fail(
                "schema",
                problem.message,
                pointer="/body" + problem.path,
                validator=problem.validator,
            )
        return report
    except CasebridgeError as exc:
        report.fail("schema", exc.detail)
        return report
    if client is not None:
        try:
            decision = dict(client.explain(draft))
        except NodeError as exc:
            report.fail("node", exc.detail, reason=exc.reason, status=exc.status)
            return report
        report.decision = decision
        if not decision.get("allowed"):
            report.fail("policy", str(decision.get("reason")), rule_id=decision.get("rule_id"))
    return report


def run(
    spec: MappingSpec,
    text: str,
    *,
    dry_run: bool,
    client: NodeClient | None,
    out: TextIO,
    schemas: SchemaRegistry | None = None,
) -> list[RowReport]:
    """Check every row and (unless ``dry_run``) send each that passed; one JSON line per row
    on ``out`` and a summary line last."""
    registry = schemas or load_schema_registry()
    reports = []
    for row, record, error in records(spec.export, text):
        if record is None:
            report = RowReport(row=row)
            report.fail("mapping", error or "unreadable record")
        else:
            report = check_row(spec, row, record, schemas=registry, client=client)
        if report.ok and not dry_run and client is not None and report.draft is not None:
            try:
                result = client.send(report.draft, idempotency_key=idempotency_key(report.draft))
                report.sent = {"message_id": result["message_id"], "state": result["state"]}
            except NodeError as exc:
                report.fail(
                    "node", exc.detail, reason=exc.reason, status=exc.status, rule_id=exc.rule_id
                )
        reports.append(report)
        out.write(json.dumps(report.to_json(), ensure_ascii=False, sort_keys=True) + "\n")
    failed = [r.row for r in reports if not r.ok]
    summary = {
        "rows": len(reports),
        "ok": len(reports) - len(failed),
        "failed": len(failed),
        "failed_rows": failed,
        "dry_run": dry_run,
        "policy_checked": client is not None,
    }
    out.write(json.dumps({"summary": summary}, sort_keys=True) + "\n")
    return reports


def main(settings: Path, *, export: Path | None, dry_run: bool, out: TextIO) -> int:
    """``casebridge adapter mapping``: 0 every row passed, 1 some row failed."""
    spec = MappingSpec.load(settings)
    path = export or spec.export.path
    if path is None:
        raise ConfigError("no export: give --input or export.path in the mapping")
    try:
        text = path.read_text(encoding=spec.export.encoding)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"{path}: cannot read the export ({exc})") from None
    if spec.node is None and not dry_run:
        raise ConfigError("sending needs node: {url, token_file} in the mapping")
    client = spec.node.client() if spec.node is not None else None
    try:
        reports = run(spec, text, dry_run=dry_run, client=client, out=out)
    finally:
        if client is not None:
            client.close()
    return 0 if all(r.ok for r in reports) else 1
