"""The conformance runner: feed every vector to an implementation, report the mismatches.

What it is for
    ``casebridge conformance --impl CMD`` starts ``CMD`` once and talks to it through the
    contract of docs/protocol.md section 11.2: one JSON request per line on its stdin (one per
    vector, in file order), one JSON answer per line on its stdout. Each answer is compared
    with the vector's expectation (outcome, step, reason; header, body, digest and rule id
    when the answer includes them) and the mismatches are printed as a table.

What it must never do
    Interpret a message itself: it only builds requests from vector files and compares
    answers (``broker.conformance_impl`` is this project's own implementation of the contract).
"""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

COMPARED: Final = ("outcome", "step", "reason")
OPTIONAL: Final = ("header", "body", "digest", "rule_id")


@dataclass(frozen=True, kw_only=True, slots=True)
class Vector:
    """One vector file and its expectation."""

    path: Path
    doc: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def expect(self) -> dict[str, Any]:
        expect: dict[str, Any] = self.doc["expect"]
        return expect


@dataclass(frozen=True, kw_only=True, slots=True)
class Mismatch:
    vector: str
    field: str
    expected: Any
    got: Any


@dataclass(frozen=True, kw_only=True, slots=True)
class Report:
    total: int
    passed: int
    skipped: tuple[str, ...]
    mismatches: tuple[Mismatch, ...]

    @property
    def ok(self) -> bool:
        return not self.mismatches


def default_vector_dir() -> Path:
    """The vectors of a repository checkout (``tests/vectors/conformance``)."""
    return Path(__file__).resolve().parents[1] / "tests" / "vectors" / "conformance"


def load_vectors(base: Path) -> list[Vector]:
    """Every ``vectors/*.json`` under ``base``, in file-name order."""
    return [
        Vector(path=p, doc=json.loads(p.read_text(encoding="utf-8")))
        for p in sorted((base / "vectors").glob("*.json"))
    ]


def wire_bytes(doc: dict[str, Any]) -> bytes | None:
    """The exact wire bytes of a vector (``wire`` as UTF-8, or ``wire_b64``)."""
    if "wire_b64" in doc:
        return base64.b64decode(doc["wire_b64"])
    if "wire" in doc:
        text: str = doc["wire"]
        return text.encode("utf-8")
    return None


def request_for(vector: Vector, base: Path) -> dict[str, Any]:
    """The JSON request of section 11.2 for one vector (files resolved, keys included)."""
    doc = vector.doc
    pki = json.loads((base / "pki.json").read_text())
    request: dict[str, Any] = {
        "vector": vector.name,
        "role": doc["role"],
        "now": doc["now"],
        "root_cert_pem": (base / "root.pem").read_text(),
        "directory": (base / "directories" / doc["directory"]).read_text().strip(),
        "directory_loaded_at": doc.get("directory_loaded_at", doc["now"]),
        "min_serial": doc.get("min_serial", 0),
    }
    wire = wire_bytes(doc)
    if wire is not None:
        request["wire_b64"] = base64.b64encode(wire).decode("ascii")
    if doc["role"] == "recipient":
        agency = pki["agencies"][doc["recipient"]]
        request["recipient"] = {
            "agency": doc["recipient"],
            "agreement_kid": agency["agreement_kid"],
            "agreement_jwk": agency["agreement_jwk"],
        }
        request["replay"] = doc["replay"]
        request["concurrent_accept"] = doc["concurrent_accept"]
        request["policy"] = doc["policy"]
    return request


def compare(vector: Vector, answer: dict[str, Any]) -> list[Mismatch]:
    """The fields where ``answer`` differs from the vector's expectation."""
    if not isinstance(answer, dict):
        return [Mismatch(vector=vector.name, field="answer", expected="object", got=answer)]
    expect = vector.expect
    found = [
        Mismatch(vector=vector.name, field=f, expected=expect.get(f), got=answer.get(f))
        for f in COMPARED
        if expect.get(f) != answer.get(f)
    ]
    found.extend(
        Mismatch(vector=vector.name, field=f, expected=expect[f], got=answer[f])
        for f in OPTIONAL
        if f in expect and f in answer and expect[f] != answer[f]
    )
    return found


class Implementation:
    """A running implementation under test: one request line in, one answer line out."""

    def __init__(self, command: str) -> None:
        self._proc = subprocess.Popen(  # noqa: S603 - the user's own command, by design
            shlex.split(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )

    def ask(self, request: dict[str, Any]) -> Any:
        stdin, stdout = self._streams()
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the implementation exited (status {self._proc.poll()})")
        try:
            return json.loads(line)
        except ValueError:
            return {"outcome": "unparseable answer", "raw": line[:200]}

    def _streams(self) -> tuple[IO[str], IO[str]]:
        if self._proc.stdin is None or self._proc.stdout is None:  # pragma: no cover
            raise RuntimeError("no pipes to the implementation")
        return self._proc.stdin, self._proc.stdout

    def close(self) -> int:
        stdin, _ = self._streams()
        stdin.close()
        return self._proc.wait(timeout=30)


def run(command: str, base: Path) -> Report:
    """Run every vector under ``base`` through ``command``."""
    vectors = load_vectors(base)
    impl = Implementation(command)
    mismatches: list[Mismatch] = []
    skipped: list[str] = []
    passed = 0
    try:
        for vector in vectors:
            answer = impl.ask(request_for(vector, base))
            if isinstance(answer, dict) and answer.get("outcome") == "skipped":
                skipped.append(vector.name)
                continue
            found = compare(vector, answer)
            mismatches.extend(found)
            passed += not found
    finally:
        impl.close()
    return Report(
        total=len(vectors), passed=passed, skipped=tuple(skipped), mismatches=tuple(mismatches)
    )


def table(report: Report) -> Iterator[str]:
    """The report as plain-text lines: the mismatch table, then the totals."""
    rows = [
        (
            m.vector,
            m.field,
            json.dumps(m.expected, ensure_ascii=False)[:40],
            json.dumps(m.got, ensure_ascii=False)[:40],
        )
        for m in report.mismatches
    ]
    head = ("vector", "field", "expected", "got")
    widths = [max([len(head[i]), *(len(r[i]) for r in rows)]) for i in range(4)]
    yield "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()
    yield "  ".join("-" * w for w in widths)
    for row in rows:
        yield "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
    if not rows:
        yield "(no mismatch)"
    yield (
        f"{report.total} vectors: {report.passed} passed, "
        f"{len({m.vector for m in report.mismatches})} mismatched, {len(report.skipped)} skipped"
    )
