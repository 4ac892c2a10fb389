"""docs/threat-model.md stays true: every test, module and function it names exists."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
DOC: Final = ROOT / "docs" / "threat-model.md"
# `path.py` or `path.py::name` (tests: Class::test; code: function, Class, Class.method)
REFERENCE: Final = re.compile(r"`((?:tests|broker|bench)/[\w/.-]+?\.py)(?:::([\w.:]+))?`")
THREAT: Final = re.compile(r"^## (T\d+)\. (.+)$", re.MULTILINE)
STATUS: Final = re.compile(r"^- \*\*Status\*\*: (answered|partly|open)$", re.MULTILINE)


@cache
def _tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text(encoding="utf-8"))


def _defined(path: str, dotted: list[str]) -> bool:
    """Whether ``dotted`` (``[Class, method]`` or ``[function]``) is defined in ``path``."""
    scope: list[ast.stmt] = _tree(path).body
    for depth, name in enumerate(dotted):
        found = next(
            (
                node
                for node in scope
                if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name == name
            ),
            None,
        )
        if found is None:
            # A module-level constant or alias also counts as "defined" for code references.
            if depth == 0 and not path.startswith("tests/"):
                return any(
                    isinstance(node, ast.Assign | ast.AnnAssign)
                    and name in {t.id for t in _targets(node) if isinstance(t, ast.Name)}
                    for node in scope
                )
            return False
        scope = found.body if isinstance(found, ast.ClassDef) else []
    return True


def _targets(node: ast.Assign | ast.AnnAssign) -> list[ast.expr]:
    return list(node.targets) if isinstance(node, ast.Assign) else [node.target]


def _sections() -> list[tuple[str, str, str]]:
    """``(id, title, text)`` of every threat section."""
    text = DOC.read_text(encoding="utf-8")
    heads = list(THREAT.finditer(text))
    out = []
    for index, head in enumerate(heads):
        end = heads[index + 1].start() if index + 1 < len(heads) else text.index("\n## Fuzz run")
        out.append((head.group(1), head.group(2), text[head.end() : end]))
    return out


def _references() -> list[tuple[str, str | None]]:
    return sorted(set(REFERENCE.findall(DOC.read_text(encoding="utf-8"))))


def test_the_model_lists_the_threats_the_issue_names() -> None:
    """The threats of issue 12 each have a section, numbered in order."""
    sections = _sections()
    titles = " ".join(title.lower() for _, title, _ in sections)
    for threat in (
        "compromised or malicious agency",
        "compromised border gateway",
        "hub operator",
        "replay",
        "equivocation in task forces",
        "denial of service",
        "stolen node disk",
        "insider at a node",
        "rollback",
        "key compromise",
    ):
        assert threat in titles, threat
    assert [i for i, _, _ in sections] == [f"T{n}" for n in range(1, len(sections) + 1)]


def test_every_threat_has_a_status_and_tests_unless_open() -> None:
    """Each threat states its status; one that is not open names at least one test."""
    for threat_id, _, text in _sections():
        status = STATUS.search(text)
        assert status is not None, f"{threat_id} has no status"
        tests = [path for path, _ in REFERENCE.findall(text) if path.startswith("tests/")]
        if status.group(1) != "open":
            assert tests, f"{threat_id} is {status.group(1)} but names no test"
        if status.group(1) != "answered":
            assert "**Open**" in text, f"{threat_id} is {status.group(1)}: say what is open"


@pytest.mark.parametrize(("path", "name"), _references())
def test_every_reference_exists(path: str, name: str) -> None:
    """A referenced file exists, and so does the test, function or class it names."""
    assert (ROOT / path).is_file(), path
    if not name:
        return
    parts = name.split("::") if path.startswith("tests/") else name.split(".")
    assert _defined(path, parts), f"{path}::{name} is not defined"
    if path.startswith("tests/"):
        assert parts[-1].startswith("test_"), f"{path}::{name} is not a test"


def test_the_checker_notices_a_missing_test() -> None:
    """The reference check fails for a test that does not exist (so it can fail at all)."""
    assert not _defined("tests/unit/test_envelope.py", ["TestTampering", "test_no_such_test"])
    assert not _defined("broker/core/envelope.py", ["no_such_function"])
    assert _defined("broker/core/directory.py", ["Directory", "load"])


def test_the_fuzz_table_is_recorded() -> None:
    """The differential fuzz run's table is in the document, with its count and 0 crashes."""
    fuzz = DOC.read_text(encoding="utf-8").split("\n## Fuzz run", 1)[1]
    count = re.search(r"messages: (\d+)", fuzz)
    assert count is not None
    assert int(count.group(1)) >= 100_000
    assert "crashes (exceptions outside the error tree): 0" in fuzz
