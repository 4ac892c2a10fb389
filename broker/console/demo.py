"""The console in ``make demo``: every demo node serves its console, with synthetic people.

What it is for
    :func:`enable_consoles` (called by the demo after it wrote the node settings, before the
    nodes start) adds a ``console`` section on a free loopback port to each node's settings
    and creates three synthetic accounts in each node's store: an officer, a supervisor and an
    auditor, with one demo password. :func:`format_logins` prints where to sign in.

What it must never do
    Run outside the demo: the password is printed on the terminal, on purpose.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from broker.console.accounts import Accounts, Role
from broker.node.store import Store

DEMO_PASSWORD: Final = "casebridge-demo"  # noqa: S105 - printed for the demo, dev only
PEOPLE: Final = (
    ("officer", "Demo Officer", Role.OFFICER),
    ("supervisor", "Demo Supervisor", Role.SUPERVISOR),
    ("auditor", "Demo Auditor", Role.AUDITOR),
)


@dataclass(frozen=True, kw_only=True, slots=True)
class ConsoleLogin:
    agency: str
    url: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def enable_consoles(settings_files: Iterable[tuple[str, Path]]) -> list[ConsoleLogin]:
    """Turn the console on for each ``(agency, settings file)`` and add the demo people."""
    logins = []
    for agency, path in settings_files:
        doc = json.loads(path.read_text(encoding="utf-8"))
        port = _free_port()
        doc["console"] = {"host": "127.0.0.1", "port": port}
        path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        store_path = (path.parent / doc["store"]).resolve()
        with Store(store_path) as store:
            accounts = Accounts(store, agency=agency, clock=lambda: datetime.now(UTC))
            for username, name, role in PEOPLE:
                accounts.add(
                    username, display_name=name, role=role, password=DEMO_PASSWORD, by="demo"
                )
        logins.append(ConsoleLogin(agency=agency, url=f"http://127.0.0.1:{port}"))
    return logins


def format_logins(logins: Iterable[ConsoleLogin]) -> str:
    lines = [
        f"Consoles (sign in as {', '.join(p[0] for p in PEOPLE)}; "
        f"password {DEMO_PASSWORD!r}; docs/console.md):"
    ]
    lines += [f"  {c.agency:<22} {c.url}" for c in logins]
    return "\n".join(lines)
