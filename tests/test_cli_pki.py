"""`casebridge pki ...` end to end in a temporary directory (broker.cli.pki)."""

from __future__ import annotations

import contextlib
import io
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from broker.cli import main
from broker.core.directory import Directory
from broker.errors import InvalidMessage, Reason
from broker.pki.dev import build_dev_federation
from broker.pki.store import KEY_ENV_VAR

SUBCOMMANDS = (
    "init",
    "issue-country",
    "issue-agency",
    "issue-tls",
    "task-force",
    "revoke",
    "directory",
    "verify-directory",
    "show",
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Run:
    """Exit status and output of one CLI invocation."""

    status: int
    out: str
    err: str


def run(*argv: str) -> Run:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return Run(status=status, out=out.getvalue(), err=err.getvalue())


def pki(pki_dir: Path, command: str, *args: str) -> Run:
    return run("pki", command, *args, "--dir", str(pki_dir))


@dataclass(frozen=True, kw_only=True, slots=True)
class Session:
    """A PKI built through the CLI: two countries, three agencies, one revoked."""

    pki_dir: Path
    runs: dict[str, Run]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    d = tmp_path_factory.mktemp("cli") / "pki"
    steps = {
        "init": ("init", "demo", "--allow-loopback"),
        "country-de": ("issue-country", "DE", "--name", "Germany", "--eu", "--allow-loopback"),
        "country-ua": ("issue-country", "UA", "--name", "Ukraine", "--non-eu"),
        "agency-lka": (
            "issue-agency",
            "de.lka-berlin",
            "--kind",
            "law_enforcement",
            "--name",
            "LKA Berlin",
        ),
        "agency-sta": ("issue-agency", "de.sta-berlin", "--kind", "prosecutor", "--name", "StA"),
        "agency-npu": ("issue-agency", "ua.npu", "--kind", "law_enforcement", "--name", "NPU"),
        "task-force": (
            "task-force",
            "tf.eastern-route",
            "--name",
            "Eastern route",
            "--member",
            "de.lka-berlin",
            "--member",
            "ua.npu",
        ),
        "server-tls": ("issue-tls", "server", "DE", "--host", "localhost", "--ip", "127.0.0.1"),
        "leaf-tls": ("issue-tls", "leaf", "DE"),
        "hub-tls": ("issue-tls", "hub", "--host", "localhost"),
        "directory-1": ("directory",),
        "revoke": ("revoke", "de.sta-berlin", "--reason", "key_compromise"),
        "directory-2": ("directory", "--valid-hours", "48"),
        "verify": ("verify-directory", str(d / "directory.jws")),
        "show": ("show",),
    }
    runs = {name: pki(d, command, *args) for name, (command, *args) in steps.items()}
    return Session(pki_dir=d, runs=runs)


class TestSession:
    def test_every_step_succeeds(self, session: Session) -> None:
        """Every step of a full session (init ... revoke, directory, verify) exits 0."""
        failed = {name: r.err for name, r in session.runs.items() if r.status != 0}
        assert failed == {}

    def test_directory_reflects_the_revocation(self, session: Session) -> None:
        """The signed directory verifies; the revoked agency fails closed, the others resolve."""
        root = _root(session.pki_dir)
        signed = (session.pki_dir / "directory.jws").read_bytes()
        now = datetime.now(UTC)
        d = Directory.load(signed, root_cert=root, now=now)
        assert d.serial == 2
        assert [c.code for c in d.countries()] == ["DE", "UA"]
        assert d.agency("de.lka-berlin", now=now).kind == "law_enforcement"
        with pytest.raises(InvalidMessage) as err:
            d.agency("de.sta-berlin", now=now)
        assert err.value.reason is Reason.SENDER_REVOKED
        assert d.task_force("tf.eastern-route", now=now) == ("de.lka-berlin", "ua.npu")

    def test_verify_directory_prints_a_summary(self, session: Session) -> None:
        """verify-directory prints countries, agencies with status, and task forces."""
        out = session.runs["verify"].out
        assert "signature OK" in out
        assert "serial 2" in out
        assert "Ukraine" in out
        lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
        assert lines["de.sta-berlin"].rstrip().endswith("REVOKED")
        assert lines["de.lka-berlin"].rstrip().endswith("ok")
        assert "tf.eastern-route" in lines

    def test_show_lists_the_state(self, session: Session) -> None:
        """show lists countries, agencies with their status, and the last directory serial."""
        out = session.runs["show"].out
        assert "federation demo" in out
        assert "serial 2" in out
        assert "REVOKED" in out
        assert "yes (dev)" in out  # DE allows loopback, UA does not

    def test_private_keys_are_owner_only(self, session: Session) -> None:
        """Every private key file is mode 0600, and keys are unencrypted without a passphrase."""
        keys = sorted(session.pki_dir.rglob("*.key"))
        assert len(keys) >= 10
        assert {stat.S_IMODE(k.stat().st_mode) for k in keys} == {0o600}
        assert b"BEGIN PRIVATE KEY" in keys[0].read_bytes()

    def test_tls_files_carry_the_chain(self, session: Session) -> None:
        """TLS certificates come with a chain file (certificate + issuing CA)."""
        chain = (session.pki_dir / "countries/de/server-chain.pem").read_bytes()
        assert chain.count(b"BEGIN CERTIFICATE") == 2
        assert "CN=leaf.de,O=Casebridge federation demo,C=DE" in session.runs["leaf-tls"].out

    def test_tampered_directory_is_refused(self, session: Session, tmp_path: Path) -> None:
        """verify-directory of a modified file exits 2 with directory_invalid."""
        token = (session.pki_dir / "directory.jws").read_text("ascii")
        head, body, sig = token.split(".")
        tampered = tmp_path / "tampered.jws"
        tampered.write_text(f"{head}.{body[:-4]}AAAA.{sig}", "ascii")
        result = pki(session.pki_dir, "verify-directory", str(tampered))
        assert result.status == 2
        assert "directory_invalid" in result.err


class TestErrors:
    def test_commands_need_an_initialised_pki(self, tmp_path: Path) -> None:
        """Any command before init exits 2 and says to run init."""
        result = pki(tmp_path, "issue-country", "DE", "--name", "Germany", "--eu")
        assert result.status == 2
        assert "pki init" in result.err

    def test_init_refuses_to_overwrite(self, tmp_path: Path) -> None:
        """A second init exits 2 unless --force is given."""
        assert pki(tmp_path, "init", "demo").status == 0
        again = pki(tmp_path, "init", "demo")
        assert again.status == 2
        assert "--force" in again.err
        assert pki(tmp_path, "init", "demo", "--force").status == 0

    def test_agency_needs_its_country(self, tmp_path: Path) -> None:
        """issue-agency for a country without a CA exits 2 and names the missing step."""
        assert pki(tmp_path, "init", "demo").status == 0
        result = pki(tmp_path, "issue-agency", "at.bmi", "--kind", "law_enforcement", "--name", "X")
        assert result.status == 2
        assert "issue-country AT" in result.err

    def test_server_name_outside_the_country_subtree(self, tmp_path: Path) -> None:
        """issue-tls server refuses a host name outside the country's DNS subtrees."""
        assert pki(tmp_path, "init", "demo").status == 0
        assert pki(tmp_path, "issue-country", "UA", "--name", "Ukraine", "--non-eu").status == 0
        result = pki(tmp_path, "issue-tls", "server", "UA", "--host", "nats.example.de")
        assert result.status == 2
        assert "outside" in result.err

    def test_directory_needs_a_country(self, tmp_path: Path) -> None:
        """directory before any country exists exits 2."""
        assert pki(tmp_path, "init", "demo").status == 0
        assert pki(tmp_path, "directory").status == 2


class TestPassphrase:
    def test_keys_encrypted_with_the_env_passphrase(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With $CASEBRIDGE_KEY_PASSPHRASE keys are encrypted; without it they cannot be used."""
        monkeypatch.setenv(KEY_ENV_VAR, "correct horse battery staple")
        assert pki(tmp_path, "init", "demo").status == 0
        assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "root/ca.key").read_bytes()
        assert pki(tmp_path, "issue-country", "NL", "--name", "Netherlands", "--eu").status == 0
        monkeypatch.delenv(KEY_ENV_VAR)
        result = pki(tmp_path, "issue-country", "DE", "--name", "Germany", "--eu")
        assert result.status == 2
        assert KEY_ENV_VAR in result.err


class TestDevFederationOnDisk:
    def test_cli_continues_a_written_dev_federation(self, tmp_path: Path) -> None:
        """A dev federation written by devpki uses the CLI's layout: show and directory work."""
        build_dev_federation(now=datetime.now(UTC), out_dir=tmp_path)
        verified = pki(tmp_path, "verify-directory", str(tmp_path / "directory.jws"))
        assert verified.status == 0, verified.err
        assert pki(tmp_path, "show").status == 0
        rebuilt = pki(tmp_path, "directory")
        assert rebuilt.status == 0, rebuilt.err
        assert "serial 2" in rebuilt.out


class TestHelp:
    @pytest.mark.parametrize("command", SUBCOMMANDS)
    def test_every_command_has_examples(self, command: str) -> None:
        """Each sub-command's --help shows an examples section and the --dir option."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            main(["pki", command, "--help"])
        assert exit_.value.code == 0
        assert "examples:" in out.getvalue()
        assert "--dir" in out.getvalue()


def _root(pki_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((pki_dir / "root/ca.pem").read_bytes())
