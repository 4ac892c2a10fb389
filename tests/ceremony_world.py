"""A federation built through the key ceremony only, each party in its own directory (tests).

Every step is the ``casebridge pki`` command a real party would run, in process: the
secretariat in ``<base>/secretariat``, the hub in ``<base>/hub``, each country in
``<base>/<cc>`` (its CA key, its server's and agencies' keys, made there), and only public
files (CSRs, replies, exports, the signed directory) passing between them. Servers are named
by IP address (127.0.0.1 unless given), permitted explicitly by the secretariat; no loopback
exception is used for countries.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.cli import main
from broker.pki.store import DIRECTORY_FILE, PkiStore


class CeremonyFailed(AssertionError):
    """A ceremony command exited non-zero."""


def pki(directory: Path, *args: str) -> str:
    """Run ``casebridge pki <args> --dir <directory>``; its stdout (CeremonyFailed if non-zero)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["pki", *args, "--dir", str(directory)])
    if status != 0:
        raise CeremonyFailed(f"pki {' '.join(args)}: {status} {err.getvalue()} {out.getvalue()}")
    return out.getvalue()


@dataclass(frozen=True, kw_only=True, slots=True)
class CountryPlan:
    """A country to bring in: code, name, EU flag, agencies (id, kind, name), server address."""

    code: str
    name: str
    eu: bool
    agencies: Sequence[tuple[str, str, str]]
    server_ip: str = "127.0.0.1"


@dataclass(frozen=True, kw_only=True, slots=True)
class CeremonyWorld:
    """Where each party's directory is."""

    base: Path
    secretariat: Path
    hub: Path
    countries: Mapping[str, Path]

    @property
    def directory(self) -> Path:
        return self.secretariat / DIRECTORY_FILE

    def store(self, code: str) -> PkiStore:
        return PkiStore(self.countries[code])


def _flag(eu: bool) -> str:
    return "--eu" if eu else "--non-eu"


def build(
    base: Path,
    *,
    federation_id: str,
    plans: Sequence[CountryPlan],
    hub_ip: str = "127.0.0.1",
    federation_file: Path | None = None,
) -> CeremonyWorld:
    """Run the whole ceremony for ``plans`` (each country also gets its ``<cc>.gateway``)."""
    sec = base / "secretariat"
    pki(sec, "init", federation_id, "--hub-domain", "hub.casebridge.test", "--allow-loopback")
    hub = base / "hub"
    pki(hub, "request-hub", "--ip", hub_ip)
    pki(sec, "sign-hub", str(hub / "requests" / "hub.csr.pem"))
    countries: dict[str, Path] = {}
    for plan in plans:
        cc, lower = plan.code, plan.code.lower()
        here = base / lower
        net = f"{plan.server_ip}/32"
        pki(here, "request-country", cc, "--federation", federation_id, "--name", plan.name,
            _flag(plan.eu), "--ip-network", net)  # fmt: skip
        reply = base / "travel" / f"reply-{lower}"
        pki(sec, "sign-country", cc, str(here / "requests" / f"country-{lower}.csr.pem"),
            str(here / "requests" / f"leaf-{lower}.csr.pem"), "--name", plan.name,
            _flag(plan.eu), "--ip-network", net, "--reply", str(reply))  # fmt: skip
        pki(here, "join", "--reply", str(reply))
        pki(here, "request-server", "--ip", plan.server_ip)
        pki(here, "sign-server", str(here / "requests" / f"server-{lower}.csr.pem"))
        agencies = [*plan.agencies, (f"{lower}.gateway", "gateway", f"{plan.name} border gateway")]
        for agency_id, kind, name in agencies:
            pki(here, "request-agency", agency_id, "--kind", kind, "--name", name)
            pki(here, "sign-agency", str(here / "requests" / f"agency-{agency_id}"))
        pki(here, "crl")
        public = base / "travel" / f"public-{lower}"
        pki(here, "export-country", "--out", str(public))
        pki(sec, "accept-country", str(public))
        countries[cc] = here
    pki(sec, "directory", "--valid-hours", "48")
    for here in countries.values():
        args = ["join", "--directory", str(sec / DIRECTORY_FILE)]
        if federation_file is not None:
            args += ["--federation-file", str(federation_file)]
        pki(here, *args)
    return CeremonyWorld(base=base, secretariat=sec, hub=hub, countries=countries)
