"""Key ceremony (broker.pki.ceremony, `casebridge pki` CSR verbs): keys stay where they were made,
and every request that does not fit is refused with a reason before anything is signed."""

from __future__ import annotations

import filecmp
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from broker.core.directory import Directory
from broker.pki import ceremony, issuing
from broker.pki.ceremony import RequestRefused
from broker.pki.store import ROOT, PkiStore, country_stem
from tests.ceremony_world import CeremonyFailed, CeremonyWorld, CountryPlan, build, pki

FED = "cer"
PLANS = (
    CountryPlan(
        code="DE",
        name="Germany",
        eu=True,
        agencies=(("de.lka-berlin", "law_enforcement", "LKA Berlin"),),
    ),
    CountryPlan(
        code="NL",
        name="Netherlands",
        eu=True,
        agencies=(("nl.politie", "law_enforcement", "Politie"),),
    ),
)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _snapshot(base: Path) -> dict[str, bytes]:
    """Every file under ``base`` but the decision log (a refusal is logged, nothing else)."""
    return {
        str(p.relative_to(base)): p.read_bytes()
        for p in base.rglob("*")
        if p.is_file() and p.name != ceremony.LOG_FILE
    }


def _last_decision(base: Path) -> dict[str, str]:
    lines = (base / ceremony.LOG_FILE).read_text(encoding="utf-8").splitlines()
    entry: dict[str, str] = json.loads(lines[-1])
    return entry


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> CeremonyWorld:
    """DE and NL brought in through the ceremony, each in its own directory."""
    return build(tmp_path_factory.mktemp("ceremony"), federation_id=FED, plans=PLANS)


def _fresh_country(base: Path, code: str, *, extra: tuple[str, ...] = ()) -> Path:
    here = base / code.lower()
    pki(here, "request-country", code, "--federation", FED, "--name", code, "--eu", *extra)
    return here


class TestCeremonyBuildsAFederation:
    def test_directory_lists_every_country_and_agency(self, world: CeremonyWorld) -> None:
        """The directory signed from the countries' public exports holds all their agencies."""
        sec = PkiStore(world.secretariat)
        loaded = Directory.load(
            (world.directory).read_bytes(),
            root_cert=sec.read_cert(ROOT),
            now=_now(),
        )
        assert loaded.problems == ()
        assert {c.code for c in loaded.countries()} == {"DE", "NL"}
        assert {a.agency_id for a in loaded.agencies()} == {
            "de.lka-berlin",
            "de.gateway",
            "nl.politie",
            "nl.gateway",
        }

    def test_no_private_key_leaves_its_party(self, world: CeremonyWorld) -> None:
        """Each directory holds only its own keys; the secretariat holds no country key."""
        base: Path = world.base
        sec_keys = ceremony.private_key_files(base / "secretariat")
        assert {str(p.relative_to(base / "secretariat")) for p in sec_keys} == {
            "root/ca.key",
            "secretariat/ca.key",
        }
        assert ceremony.private_key_files(world.hub) == [world.hub / "hub/hub.key"]
        for code in ("de", "nl"):
            mine = ceremony.private_key_files(base / code)
            assert mine, f"{code} holds its own keys"
            for key in mine:
                relative = key.relative_to(base / code).parts
                assert relative[0] in ("countries", "agencies")
                owner = relative[1] if relative[0] == "countries" else relative[1].split(".")[0]
                assert owner == code, f"{key} is not {code}'s"
        assert ceremony.private_key_files(base / "travel") == []

    def test_every_signature_is_logged_where_it_was_made(self, world: CeremonyWorld) -> None:
        """The secretariat's and each country's decision logs name what they issued."""
        sec_log = (world.secretariat / ceremony.LOG_FILE).read_text(encoding="utf-8")
        actions = [json.loads(line)["action"] for line in sec_log.splitlines()]
        assert actions.count("sign-country DE") == 1
        assert actions.count("accept-country") == 2
        de_log = (world.countries["DE"] / ceremony.LOG_FILE).read_text(encoding="utf-8")
        done = [json.loads(line) for line in de_log.splitlines()]
        assert [d["action"] for d in done].count("sign-agency") == 2  # the LKA and the gateway
        assert all(d["outcome"] == "done" for d in done)

    def test_each_country_keeps_the_directory_and_root(self, world: CeremonyWorld) -> None:
        """After `pki join` a country's directory is identical to the secretariat's."""
        for here in world.countries.values():
            assert filecmp.cmp(here / "directory.jws", world.directory, shallow=False)
            assert (here / "bundle.json").is_file()


class TestCountryRequestsRefused:
    def test_csr_for_another_countrys_name(self, tmp_path: Path) -> None:
        """The secretariat signing for NL refuses a request that names DE."""
        pki(tmp_path / "sec", "init", FED)
        de = _fresh_country(tmp_path, "DE")
        before = _snapshot(tmp_path / "sec")
        with pytest.raises(RequestRefused, match="for country 'DE', not NL"):
            ceremony.sign_country(
                PkiStore(tmp_path / "sec"),
                country="NL",
                ca_request=de / "requests/country-de.csr.pem",
                leaf_request=de / "requests/leaf-de.csr.pem",
                name="Netherlands",
                eu=True,
                reply=PkiStore(tmp_path / "reply"),
                now=_now(),
            )
        assert _snapshot(tmp_path / "sec") == before
        assert not (tmp_path / "reply").exists()
        logged = _last_decision(tmp_path / "sec")
        assert (logged["action"], logged["outcome"]) == ("sign-country NL", "refused")
        assert "not NL" in logged["detail"]

    def test_dns_subtree_of_another_country(self, tmp_path: Path) -> None:
        """A DE CA request asking for the nl subtree is refused, naming the subtree."""
        pki(tmp_path / "sec", "init", FED)
        de = _fresh_country(tmp_path, "DE", extra=("--dns-domain", "nl"))
        with pytest.raises(CeremonyFailed, match="DNS subtree 'nl' is outside what DE may name"):
            pki(tmp_path / "sec", "sign-country", "DE", str(de / "requests/country-de.csr.pem"),
                str(de / "requests/leaf-de.csr.pem"), "--name", "Germany", "--eu",
                "--reply", str(tmp_path / "reply"))  # fmt: skip

    def test_ip_network_not_granted(self, tmp_path: Path) -> None:
        """An IP network the secretariat did not grant is refused."""
        pki(tmp_path / "sec", "init", FED)
        de = _fresh_country(tmp_path, "DE", extra=("--ip-network", "192.0.2.0/24"))
        with pytest.raises(RequestRefused, match=re.escape("IP network 192.0.2.0/24 is outside")):
            ceremony.sign_country(
                PkiStore(tmp_path / "sec"),
                country="DE",
                ca_request=de / "requests/country-de.csr.pem",
                leaf_request=de / "requests/leaf-de.csr.pem",
                name="Germany",
                eu=True,
                reply=PkiStore(tmp_path / "reply"),
                now=_now(),
                permitted_networks=(),
            )

    def test_leaf_identity_of_another_country(self, tmp_path: Path) -> None:
        """DE's CA request paired with NL's leaf-node request is refused (hub identity)."""
        pki(tmp_path / "sec", "init", FED)
        de = _fresh_country(tmp_path, "DE")
        nl = _fresh_country(tmp_path, "NL")
        with pytest.raises(RequestRefused, match="a country gets its own hub identity only"):
            ceremony.sign_country(
                PkiStore(tmp_path / "sec"),
                country="DE",
                ca_request=de / "requests/country-de.csr.pem",
                leaf_request=nl / "requests/leaf-nl.csr.pem",
                name="Germany",
                eu=True,
                reply=PkiStore(tmp_path / "reply"),
                now=_now(),
            )

    def test_second_ca_for_a_joined_country(self, tmp_path: Path) -> None:
        """A second CA request for a country that already joined is refused."""
        pki(tmp_path / "sec", "init", FED)
        de = _fresh_country(tmp_path, "DE")
        args = ("sign-country", "DE", str(de / "requests/country-de.csr.pem"),
                str(de / "requests/leaf-de.csr.pem"), "--name", "Germany", "--eu")  # fmt: skip
        pki(tmp_path / "sec", *args, "--reply", str(tmp_path / "r1"))
        other = _fresh_country(tmp_path / "impostor", "DE")
        with pytest.raises(CeremonyFailed, match="DE already has a CA"):
            pki(tmp_path / "sec", "sign-country", "DE",
                str(other / "requests/country-de.csr.pem"),
                str(other / "requests/leaf-de.csr.pem"), "--name", "Germany", "--eu",
                "--reply", str(tmp_path / "r2"))  # fmt: skip

    def test_tampered_request(self, tmp_path: Path) -> None:
        """A request whose signature does not verify is refused."""
        pki(tmp_path / "sec", "init", FED)
        de = _fresh_country(tmp_path, "DE")
        path = de / "requests/country-de.csr.pem"
        csr = x509.load_pem_x509_csr(path.read_bytes())
        # The same subject and requested extensions, but the signature of another key over
        # them, with DE's public key spliced in: possession of DE's key is not proven.
        forged = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(csr.subject)
            .add_extension(
                csr.extensions.get_extension_for_class(x509.NameConstraints).value, critical=False
            )
            .sign(issuing.generate_key(), hashes.SHA256())
        )
        good_der = csr.public_bytes(serialization.Encoding.DER)
        other_der = forged.public_bytes(serialization.Encoding.DER)
        good_spki = csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        other_spki = forged.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert good_spki in good_der
        bad = path.with_name("bad.csr.pem")
        spliced = x509.load_der_x509_csr(other_der.replace(other_spki, good_spki))
        bad.write_bytes(spliced.public_bytes(serialization.Encoding.PEM))
        with pytest.raises(RequestRefused, match="signature does not verify"):
            ceremony.read_request(bad)

    def test_reply_for_another_key_is_not_installed(self, tmp_path: Path) -> None:
        """A country refuses a reply whose CA certificate is not for the key it made."""
        pki(tmp_path / "sec", "init", FED)
        de = _fresh_country(tmp_path, "DE")
        pki(tmp_path / "sec", "sign-country", "DE", str(de / "requests/country-de.csr.pem"),
            str(de / "requests/leaf-de.csr.pem"), "--name", "Germany", "--eu",
            "--reply", str(tmp_path / "reply"))  # fmt: skip
        twin = _fresh_country(tmp_path / "twin", "DE")
        with pytest.raises(CeremonyFailed, match="not for the key made here"):
            pki(twin, "join", "--reply", str(tmp_path / "reply"))


class TestCountryCaRefuses:
    def test_agency_of_another_country(self, world: CeremonyWorld, tmp_path: Path) -> None:
        """The DE country CA refuses an agency request for nl.* with a clear reason."""
        de = PkiStore(world.countries["DE"])
        agency = tmp_path / "rogue"
        prefix = ceremony.request_agency(
            PkiStore(agency), agency_id="nl.spy", kind="law_enforcement", name="Spy"
        )
        before = _snapshot(de.base)
        with pytest.raises(
            CeremonyFailed, match=re.escape("the DE country CA cannot issue for 'nl.spy'")
        ):
            pki(de.base, "sign-agency", str(prefix))
        assert _snapshot(de.base) == before
        assert _last_decision(de.base)["outcome"] == "refused"

    def test_agency_id_of_de_with_another_countrys_subject(
        self, world: CeremonyWorld, tmp_path: Path
    ) -> None:
        """A de.* id carried in a C=NL subject is refused too."""
        de = PkiStore(world.countries["DE"])
        store = PkiStore(tmp_path / "odd")
        key = issuing.generate_key()
        subject = issuing.agency_subject("de.odd", "NL", "ngo", "Odd")
        for usage in ("signing", "agreement"):
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(subject)
                .sign(key, hashes.SHA256())
            )
            store.write_bytes(f"requests/agency-de.odd.{usage}.csr.pem", ceremony.csr_pem(csr))
        with pytest.raises(
            RequestRefused, match=re.escape("cannot issue for 'de.odd' (country NL)")
        ):
            ceremony.sign_agency(de, request=store.path("requests/agency-de.odd"), now=_now())

    def test_server_name_outside_the_country(self, world: CeremonyWorld, tmp_path: Path) -> None:
        """A server request for a name outside the country CA's subtrees is refused."""
        de = PkiStore(world.countries["DE"])
        copy = PkiStore(tmp_path / "de")
        shutil.copytree(de.base, copy.base)
        copy.path("countries/de/server.key").unlink()  # a server key is never replaced
        path = ceremony.request_server(copy, host_names=("nats.example.nl",))
        with pytest.raises(RequestRefused, match="outside the issuing CA's DNS subtrees"):
            ceremony.sign_server(copy, request=path, now=_now())

    def test_secretariat_refuses_an_export_with_a_foreign_agency(
        self, world: CeremonyWorld, tmp_path: Path
    ) -> None:
        """An export listing another country's agency is refused by the secretariat."""
        de = PkiStore(world.countries["DE"])
        out = PkiStore(tmp_path / "pub")
        ceremony.export_public(de, out)
        manifest = out.read_bytes(ceremony.PUBLIC_FILE).replace(b'"de.lka-berlin"', b'"nl.x"')
        out.write_bytes(ceremony.PUBLIC_FILE, manifest)
        sec = PkiStore(tmp_path / "sec")
        shutil.copytree(world.secretariat, sec.base)
        with pytest.raises(RequestRefused, match=re.escape("DE cannot publish 'nl.x'")):
            ceremony.accept_country(sec, out, now=_now())


def test_country_ca_cert_carries_the_requested_constraints(world: CeremonyWorld) -> None:
    """The signed country CA is constrained to C=DE, its ccTLD and its server's address."""
    de = PkiStore(world.countries["DE"])
    ca = de.read_cert(country_stem("DE", "ca"))
    nc = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    permitted = list(nc.permitted_subtrees or [])
    assert x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")])) in (
        permitted
    )
    assert x509.DNSName("de") in permitted
    assert [g.value.exploded for g in permitted if isinstance(g, x509.IPAddress)] == [
        "127.0.0.1/32"
    ]
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > timedelta(days=365)


def test_leaving_country_gone_from_the_next_directory(world: CeremonyWorld, tmp_path: Path) -> None:
    """`pki leave NL` then `pki directory`: NL and its agencies are no longer listed."""
    sec = tmp_path / "sec"
    shutil.copytree(world.secretariat, sec)
    pki(sec, "leave", "NL")
    pki(sec, "directory")
    loaded = Directory.load(
        (sec / "directory.jws").read_bytes(), root_cert=PkiStore(sec).read_cert(ROOT), now=_now()
    )
    assert {c.code for c in loaded.countries()} == {"DE"}
    assert all(not a.agency_id.startswith("nl.") for a in loaded.agencies())
    assert not (sec / "countries" / "nl").exists()
