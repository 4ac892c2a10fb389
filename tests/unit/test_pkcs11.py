"""Root and country CA keys in a PKCS#11 token (SoftHSM2): they sign, and never leave it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.cli import main
from broker.core import pki
from broker.core.directory import Directory
from broker.errors import ConfigError
from broker.pki import ceremony
from broker.pki.signer import (
    DEFAULT_MODULE,
    MODULE_ENV,
    PIN_ENV,
    Pkcs11Key,
    TokenAccess,
    TokenKeyRef,
)
from broker.pki.store import ROOT, PkiStore, agency_stem, country_stem
from tests.ceremony_world import pki as run_pki

PIN = "4321"
SO_PIN = "87654321"
TOKEN = "cb-test"  # noqa: S105 - a token label, not a secret


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenAccess]:
    """A fresh SoftHSM2 token in a temporary directory (one per module: SoftHSM reads its
    configuration once per process)."""
    tool = shutil.which("softhsm2-util")
    if tool is None or not DEFAULT_MODULE.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail("softhsm2 is required in CI (apt-get install softhsm2)")
        pytest.skip("softhsm2 is not installed")
    base = tmp_path_factory.mktemp("softhsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(conf))
        patch.setenv(PIN_ENV, PIN)
        patch.setenv(MODULE_ENV, str(DEFAULT_MODULE))
        subprocess.run(
            [tool, "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", SO_PIN],
            check=True,
            capture_output=True,
        )
        yield TokenAccess(module=DEFAULT_MODULE, pin=PIN)


def _ref(label: str) -> TokenKeyRef:
    return TokenKeyRef(token=TOKEN, label=label)


class TestTokenKey:
    def test_signs_verifiable_ecdsa_sha256(self, token: TokenAccess) -> None:
        """A signature made in the token verifies with its public key (DER, ECDSA-SHA256)."""
        key = Pkcs11Key.generate(_ref("sig-test"), token)
        signature = key.sign(b"casebridge", ec.ECDSA(hashes.SHA256()))
        key.public_key().verify(signature, b"casebridge", ec.ECDSA(hashes.SHA256()))
        with pytest.raises(InvalidSignature):
            key.public_key().verify(signature, b"casebridgf", ec.ECDSA(hashes.SHA256()))

    def test_never_exported(self, token: TokenAccess) -> None:
        """The token key refuses serialisation and ECDH: it cannot leave the token."""
        key = Pkcs11Key.generate(_ref("export-test"), token)
        with pytest.raises(ConfigError, match="cannot be exported"):
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )

    def test_other_hash_refused(self, token: TokenAccess) -> None:
        """Only ECDSA with SHA-256 is signed (the federation's one algorithm)."""
        key = Pkcs11Key.generate(_ref("alg-test"), token)
        with pytest.raises(ConfigError, match="SHA-256 only"):
            key.sign(b"x", ec.ECDSA(hashes.SHA384()))

    def test_existing_label_never_replaced(self, token: TokenAccess) -> None:
        """Generating a key under a label already in use is refused."""
        Pkcs11Key.generate(_ref("twice"), token)
        with pytest.raises(ConfigError, match="already exists"):
            Pkcs11Key.generate(_ref("twice"), token)

    def test_wrong_pin(self, token: TokenAccess) -> None:
        """A wrong PIN is a clear configuration error, not a crash."""
        Pkcs11Key.generate(_ref("pin-test"), token)
        with pytest.raises(ConfigError, match="PinIncorrect"):
            Pkcs11Key.open(_ref("pin-test"), TokenAccess(module=token.module, pin="0000"))

    def test_uri_round_trip(self) -> None:
        """A token key reference reads back from its pkcs11: URI; anything else is refused."""
        ref = TokenKeyRef(token="de ca", label="root;1")  # noqa: S106 - a label
        assert TokenKeyRef.parse(ref.to_uri()) == ref
        with pytest.raises(ConfigError):
            TokenKeyRef.parse("pkcs11:token=a;object=b;pin-value=1234")


def test_ceremony_with_root_and_country_keys_in_the_token(
    token: TokenAccess, tmp_path: Path
) -> None:
    """Root and DE CA keys made in the token sign the country CA, agency certs, CRL and the
    directory; no key file for either exists and everything validates."""
    del token
    sec, de = tmp_path / "secretariat", tmp_path / "de"
    run_pki(sec, "init", "hsm", "--pkcs11", _ref("root").to_uri())
    run_pki(de, "request-country", "DE", "--federation", "hsm", "--name", "Germany", "--eu",
            "--pkcs11", _ref("de-ca").to_uri())  # fmt: skip
    run_pki(sec, "sign-country", "DE", str(de / "requests/country-de.csr.pem"),
            str(de / "requests/leaf-de.csr.pem"), "--name", "Germany", "--eu",
            "--reply", str(tmp_path / "reply"))  # fmt: skip
    run_pki(de, "join", "--reply", str(tmp_path / "reply"))
    run_pki(de, "request-agency", "de.lka-berlin", "--kind", "law_enforcement", "--name", "LKA")
    run_pki(de, "sign-agency", str(de / "requests/agency-de.lka-berlin"))
    run_pki(de, "crl")
    run_pki(de, "export-country", "--out", str(tmp_path / "public"))
    run_pki(sec, "accept-country", str(tmp_path / "public"))
    run_pki(sec, "directory")

    assert not (sec / "root/ca.key").exists()
    assert (sec / "root/ca.pkcs11").read_text().strip() == _ref("root").to_uri()
    assert not (de / "countries/de/ca.key").exists()
    assert (de / "countries/de/ca.pkcs11").is_file()
    now = datetime.now(UTC)
    sec_store, de_store = PkiStore(sec), PkiStore(de)
    root_cert = sec_store.read_cert(ROOT)
    loaded = Directory.load((sec / "directory.jws").read_bytes(), root_cert=root_cert, now=now)
    assert loaded.problems == ()
    info = pki.validate_agency_cert(
        de_store.read_cert(agency_stem("de.lka-berlin", "signing")),
        de_store.read_cert(country_stem("DE", "ca")),
        root_cert,
        x509.load_pem_x509_crl(de_store.read_bytes(f"{country_stem('DE', 'crl')}.pem")),
        now=now,
        usage=pki.CertUsage.SIGNING,
    )
    assert info.agency_id == "de.lka-berlin"
    # The country signs its policy with the CA key in the token, in its own directory.
    signed = tmp_path / "de.policy.jws"
    policy = Path(__file__).resolve().parents[2] / "docs" / "policies" / "de.yaml"
    assert main(["policy", "sign", str(policy), "--pki", str(de), "-o", str(signed)]) == 0
    assert main(["policy", "verify", str(signed), "--pki", str(de)]) == 0
    assert ceremony.private_key_files(sec) == sorted(
        [sec / "root/ca.pkcs11", sec / "secretariat/ca.key"]
    )
