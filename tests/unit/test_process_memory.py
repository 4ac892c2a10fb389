"""Memory of long-running processes: what a node or gateway imports and keeps at start-up."""

from __future__ import annotations

import subprocess
import sys

import jsonschema_rs
import pytest

from broker.process_memory import release_free_memory


def _modules_after(*argv: str) -> set[str]:
    """The modules a fresh ``python -m broker.cli ARGV`` has loaded when it parses ARGV."""
    probe = (
        "import sys\n"
        "import broker.cli as c\n"
        "try:\n"
        f"    c.main({list(argv)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\n'.join(sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return set(out.split())


class TestCommandImports:
    def test_gateway_command_does_not_import_the_node_or_the_pki_ceremony(self) -> None:
        """`casebridge gateway ...` loads neither the node runtime nor other groups' libraries."""
        loaded = _modules_after("gateway", "--help")
        assert "broker.cli.gateway" in loaded
        assert {
            "broker.cli.node",
            "broker.node.runtime",
            "broker.cli.pki",
            "pkcs11",
        } & loaded == set()

    def test_a_module_name_that_is_no_command_still_gets_the_full_list(self) -> None:
        """`casebridge focal` (a group module, not a command) fails against every command."""
        run = subprocess.run(
            [sys.executable, "-m", "broker.cli", "focal"],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2
        assert "'send'" in run.stderr
        assert "'gateway'" in run.stderr


class TestHttpsUrlPattern:
    @pytest.mark.parametrize(
        ("value", "ok"),
        [
            ("https://example.org/a?b=c", True),
            ("https://" + "a" * 2040, True),
            ("https://" + "a" * 2041, False),
            ("https://", False),
            ("https://a b", False),
            ("http://example.org", False),
            ("https://a\u00a0b", False),
        ],
    )
    def test_same_language_as_the_bounded_pattern(self, value: str, ok: bool) -> None:
        """The cheap pattern under maxLength 2048 accepts exactly what {1,2040} accepted."""
        cheap = jsonschema_rs.validator_for(
            {"type": "string", "pattern": "^https://[^\\s]+$", "maxLength": 2048}
        )
        bounded = jsonschema_rs.validator_for(
            {"type": "string", "pattern": "^https://[^\\s]{1,2040}$", "maxLength": 2048}
        )
        assert cheap.is_valid(value) is ok
        assert bounded.is_valid(value) is ok


def test_release_free_memory_runs_on_this_platform() -> None:
    """On Linux with glibc the free heap is handed back (the call reports it did something)."""
    assert release_free_memory() is sys.platform.startswith("linux")
