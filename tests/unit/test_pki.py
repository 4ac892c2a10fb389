"""Issuing and validating federation certificates (broker.core.pki)."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.core import pki
from broker.core.pki import CertifiedKey, CertUsage
from broker.errors import InvalidMessage, PKIError, Reason
from broker.pki import issuing
from broker.pki.dev import DevFederation

DAY = timedelta(days=1)


def _name(**attrs: str) -> x509.Name:
    oids = {
        "C": NameOID.COUNTRY_NAME,
        "O": NameOID.ORGANIZATION_NAME,
        "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
        "CN": NameOID.COMMON_NAME,
    }
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attrs.items()])


def _rogue_agency_cert(
    issuer: CertifiedKey, *, country: str, agency_id: str, now: datetime
) -> x509.Certificate:
    """An agency signing certificate signed by ``issuer`` with no issuing guard at all."""
    return issuing.sign_certificate(
        issuer,
        subject=_name(C=country, O="Rogue", OU="law_enforcement", CN=agency_id),
        public_key=issuing.generate_key().public_key(),
        now=now,
        lifetime=DAY,
        ca=False,
        usage=issuing.key_usage("digital_signature", "content_commitment"),
        extended_usage=(pki.DOCUMENT_SIGNING,),
        san=[x509.UniformResourceIdentifier(pki.AGENCY_URN_PREFIX + agency_id)],
    )


def _empty_crl(ca: CertifiedKey, now: datetime) -> x509.CertificateRevocationList:
    return issuing.build_crl(ca.key, ca.cert, [], now, now + DAY)


@pytest.fixture(scope="module")
def root(fixed_now: datetime) -> CertifiedKey:
    return issuing.create_root_ca("testfed", now=fixed_now)


@pytest.fixture(scope="module")
def de_ca(root: CertifiedKey, fixed_now: datetime) -> CertifiedKey:
    return issuing.issue_country_ca(root, country="DE", now=fixed_now)


@pytest.fixture(scope="module")
def at_ca(root: CertifiedKey, fixed_now: datetime) -> CertifiedKey:
    return issuing.issue_country_ca(root, country="AT", now=fixed_now)


@pytest.fixture(scope="module")
def lka(de_ca: CertifiedKey, fixed_now: datetime) -> pki.AgencyCredentials:
    return issuing.issue_agency(
        de_ca, agency_id="de.lka-berlin", kind="law_enforcement", name="LKA Berlin", now=fixed_now
    )


class TestRootAndCountryCA:
    def test_root_names_its_federation(self, root: CertifiedKey) -> None:
        """The root subject carries the federation id, which federation_id_of reads back."""
        assert pki.federation_id_of(root.cert) == "testfed"
        assert root.cert.issuer == root.cert.subject

    def test_root_refuses_invalid_federation_id(self, fixed_now: datetime) -> None:
        """A federation id outside the allowed syntax is refused at creation."""
        with pytest.raises(PKIError):
            issuing.create_root_ca("Not Valid!", now=fixed_now)

    def test_country_ca_is_name_constrained_to_its_country(self, de_ca: CertifiedKey) -> None:
        """A country CA permits directoryName C=<CC> and its ccTLD, and excludes every IP."""
        ext = de_ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
        permitted = ext.value.permitted_subtrees or []
        assert x509.DirectoryName(_name(C="DE")) in permitted
        assert x509.DNSName("de") in permitted
        excluded = ext.value.excluded_subtrees or []
        assert x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")) in excluded
        assert not ext.critical  # see the pki module docstring: Go and cryptography need this

    def test_country_ca_path_length_is_zero(self, de_ca: CertifiedKey) -> None:
        """A country CA may only issue end-entity certificates."""
        bc = de_ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert bc.ca
        assert bc.path_length == 0

    def test_loopback_flag_adds_loopback_subtrees(
        self, root: CertifiedKey, fixed_now: datetime
    ) -> None:
        """allow_loopback permits localhost, 127.0.0.0/8 and ::1 (and nothing else by IP)."""
        ca = issuing.issue_country_ca(root, country="NL", now=fixed_now, allow_loopback=True)
        nc = ca.cert.extensions.get_extension_for_class(x509.NameConstraints).value
        permitted = nc.permitted_subtrees or []
        assert x509.DNSName("localhost") in permitted
        assert x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")) in permitted
        assert nc.excluded_subtrees is None

    def test_validate_country_ca_returns_country(
        self, de_ca: CertifiedKey, root: CertifiedKey, fixed_now: datetime
    ) -> None:
        """A country CA issued by the root validates and yields its country code."""
        assert pki.validate_country_ca(de_ca.cert, root.cert, now=fixed_now) == "DE"

    def test_country_ca_of_another_root_is_refused(
        self, de_ca: CertifiedKey, fixed_now: datetime
    ) -> None:
        """A country CA does not validate against another federation's root."""
        other = issuing.create_root_ca("otherfed", now=fixed_now)
        with pytest.raises(InvalidMessage) as err:
            pki.validate_country_ca(de_ca.cert, other.cert, now=fixed_now)
        assert err.value.reason is Reason.CERT_INVALID

    def test_expired_country_ca_is_refused(self, root: CertifiedKey, fixed_now: datetime) -> None:
        """A country CA past its notAfter is refused."""
        ca = issuing.issue_country_ca(root, country="FR", now=fixed_now, lifetime=DAY)
        with pytest.raises(InvalidMessage) as err:
            pki.validate_country_ca(ca.cert, root.cert, now=fixed_now + 2 * DAY)
        assert err.value.reason is Reason.CERT_INVALID

    def test_secretariat_ca_is_not_a_country_ca(
        self, root: CertifiedKey, fixed_now: datetime
    ) -> None:
        """The secretariat TLS CA carries no country and cannot pass as a country CA."""
        sec = issuing.issue_secretariat_ca(root, now=fixed_now, dns_domains=["casebridge.test"])
        with pytest.raises(InvalidMessage) as err:
            pki.validate_country_ca(sec.cert, root.cert, now=fixed_now)
        assert err.value.reason is Reason.CERT_INVALID

    @pytest.mark.parametrize(
        ("path_length", "constraints"),
        [
            pytest.param(0, None, id="no-name-constraints"),
            pytest.param(1, "DE", id="path-length-1"),
            pytest.param(0, "AT", id="constraints-name-another-country"),
        ],
    )
    def test_country_ca_outside_profile_is_refused(
        self,
        root: CertifiedKey,
        fixed_now: datetime,
        path_length: int,
        constraints: str | None,
    ) -> None:
        """A root-signed C=DE CA without the country-CA profile is refused."""
        nc = None
        if constraints is not None:
            nc = x509.NameConstraints(
                permitted_subtrees=[
                    x509.DirectoryName(_name(C=constraints)),
                    x509.DNSName("de"),
                    x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")),
                ],
                excluded_subtrees=None,
            )
        cert = issuing.sign_certificate(
            root,
            subject=_name(C="DE", O=pki.federation_org("testfed"), CN="rogue"),
            public_key=issuing.generate_key().public_key(),
            now=fixed_now,
            lifetime=DAY,
            ca=True,
            path_length=path_length,
            usage=issuing.key_usage("key_cert_sign", "crl_sign"),
            name_constraints=nc,
        )
        with pytest.raises(InvalidMessage) as err:
            pki.validate_country_ca(cert, root.cert, now=fixed_now)
        assert err.value.reason is Reason.CERT_INVALID


class TestAgencyIssuance:
    def test_agency_gets_two_key_pairs(self, lka: pki.AgencyCredentials) -> None:
        """Signing and key-agreement certificates have distinct P-256 keys and the same subject."""
        signing, agreement = lka.signing.cert, lka.agreement.cert
        assert signing.public_key() != agreement.public_key()
        assert (
            signing.subject
            == agreement.subject
            == _name(C="DE", O="LKA Berlin", OU="law_enforcement", CN="de.lka-berlin")
        )
        assert isinstance(lka.signing.key.curve, ec.SECP256R1)

    def test_signing_profile(self, lka: pki.AgencyCredentials) -> None:
        """The signing cert: digitalSignature+nonRepudiation, documentSigning EKU, agency URN."""
        exts = lka.signing.cert.extensions
        ku = exts.get_extension_for_class(x509.KeyUsage).value
        assert ku.digital_signature
        assert ku.content_commitment
        assert not ku.key_agreement
        eku = exts.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [pki.DOCUMENT_SIGNING]
        san = exts.get_extension_for_class(x509.SubjectAlternativeName).value
        assert list(san) == [x509.UniformResourceIdentifier("urn:casebridge:agency:de.lka-berlin")]

    def test_agreement_profile(self, lka: pki.AgencyCredentials) -> None:
        """The key-agreement cert has keyAgreement only and no EKU."""
        exts = lka.agreement.cert.extensions
        ku = exts.get_extension_for_class(x509.KeyUsage).value
        assert ku.key_agreement
        assert not ku.digital_signature
        with pytest.raises(x509.ExtensionNotFound):
            exts.get_extension_for_class(x509.ExtendedKeyUsage)

    def test_refuses_agency_of_another_country(
        self, at_ca: CertifiedKey, fixed_now: datetime
    ) -> None:
        """AT's CA refuses to issue for a de. agency."""
        with pytest.raises(PKIError, match="cannot issue"):
            issuing.issue_agency(
                at_ca, agency_id="de.bka", kind="law_enforcement", name="BKA", now=fixed_now
            )

    def test_refuses_unknown_kind(self, de_ca: CertifiedKey, fixed_now: datetime) -> None:
        """An agency kind outside AGENCY_KINDS is refused."""
        with pytest.raises(PKIError, match="kind"):
            issuing.issue_agency(
                de_ca, agency_id="de.x", kind="spy_agency", name="X", now=fixed_now
            )

    def test_refuses_task_force_shaped_id(self, root: CertifiedKey, fixed_now: datetime) -> None:
        """An id of the form tf.<name> is a task force, never an agency (even for country TF)."""
        tf_ca = issuing.issue_country_ca(root, country="TF", now=fixed_now)
        with pytest.raises(PKIError, match="invalid agency id"):
            issuing.issue_agency(tf_ca, agency_id="tf.x", kind="ngo", name="X", now=fixed_now)

    def test_refuses_non_p256_key(self, de_ca: CertifiedKey, fixed_now: datetime) -> None:
        """Only P-256 keys are certified."""
        with pytest.raises(PKIError, match="P-256"):
            issuing.issue_agency(
                de_ca,
                agency_id="de.x",
                kind="ngo",
                name="X",
                now=fixed_now,
                signing_key=ec.generate_private_key(ec.SECP384R1()),
            )

    def test_refuses_naive_now(self, de_ca: CertifiedKey) -> None:
        """A naive datetime is refused rather than guessed."""
        with pytest.raises(PKIError, match="timezone"):
            issuing.issue_agency(
                de_ca,
                agency_id="de.x",
                kind="ngo",
                name="X",
                now=datetime(2026, 11, 28, 12),  # noqa: DTZ001 - the naive value under test
            )

    def test_lifetime_is_clipped_to_issuer(self, root: CertifiedKey, fixed_now: datetime) -> None:
        """No certificate outlives the CA that issued it."""
        ca = issuing.issue_country_ca(root, country="BE", now=fixed_now, lifetime=10 * DAY)
        creds = issuing.issue_agency(ca, agency_id="be.x", kind="ngo", name="X", now=fixed_now)
        assert creds.signing.cert.not_valid_after_utc == ca.cert.not_valid_after_utc


class TestValidateAgencyCert:
    def test_valid_chain_for_each_usage(
        self,
        lka: pki.AgencyCredentials,
        de_ca: CertifiedKey,
        root: CertifiedKey,
        fixed_now: datetime,
    ) -> None:
        """Signing and agreement certificates validate for their own usage."""
        crl = _empty_crl(de_ca, fixed_now)
        for cert, usage in (
            (lka.signing.cert, CertUsage.SIGNING),
            (lka.agreement.cert, CertUsage.AGREEMENT),
        ):
            info = pki.validate_agency_cert(
                cert, de_ca.cert, root.cert, crl, now=fixed_now, usage=usage
            )
            assert (info.agency_id, info.country, info.kind, info.name) == (
                "de.lka-berlin",
                "DE",
                "law_enforcement",
                "LKA Berlin",
            )
            assert info.public_key == cert.public_key()

    def test_tls_client_cert_validates(
        self, de_ca: CertifiedKey, root: CertifiedKey, fixed_now: datetime
    ) -> None:
        """An agency TLS client certificate validates for TLS_CLIENT."""
        tls = issuing.issue_agency_tls(de_ca, agency_id="de.x", kind="ngo", name="X", now=fixed_now)
        crl = _empty_crl(de_ca, fixed_now)
        info = pki.validate_agency_cert(
            tls.cert, de_ca.cert, root.cert, crl, now=fixed_now, usage=CertUsage.TLS_CLIENT
        )
        assert info.agency_id == "de.x"

    @pytest.mark.parametrize(
        "case",
        [
            pytest.param(("agreement", CertUsage.SIGNING), id="agreement-as-signing"),
            pytest.param(("signing", CertUsage.AGREEMENT), id="signing-as-agreement"),
            pytest.param(("signing", CertUsage.TLS_CLIENT), id="signing-as-tls"),
        ],
    )
    def test_wrong_key_usage_is_refused(
        self,
        lka: pki.AgencyCredentials,
        de_ca: CertifiedKey,
        root: CertifiedKey,
        fixed_now: datetime,
        case: tuple[str, CertUsage],
    ) -> None:
        """A certificate used for another purpose than its profile is CERT_INVALID."""
        which, usage = case
        cert = lka.agreement.cert if which == "agreement" else lka.signing.cert
        with pytest.raises(InvalidMessage) as err:
            pki.validate_agency_cert(
                cert,
                de_ca.cert,
                root.cert,
                _empty_crl(de_ca, fixed_now),
                now=fixed_now,
                usage=usage,
            )
        assert err.value.reason is Reason.CERT_INVALID

    def test_key_usage_is_checked_besides_eku(
        self, de_ca: CertifiedKey, root: CertifiedKey, fixed_now: datetime
    ) -> None:
        """A documentSigning cert without nonRepudiation is not a signing certificate."""
        cert = issuing.sign_certificate(
            de_ca,
            subject=_name(C="DE", O="X", OU="ngo", CN="de.x"),
            public_key=issuing.generate_key().public_key(),
            now=fixed_now,
            lifetime=DAY,
            ca=False,
            usage=issuing.key_usage("digital_signature"),
            extended_usage=(pki.DOCUMENT_SIGNING,),
            san=[x509.UniformResourceIdentifier(pki.AGENCY_URN_PREFIX + "de.x")],
        )
        with pytest.raises(InvalidMessage, match="key usage") as err:
            pki.validate_agency_cert(
                cert,
                de_ca.cert,
                root.cert,
                _empty_crl(de_ca, fixed_now),
                now=fixed_now,
                usage=CertUsage.SIGNING,
            )
        assert err.value.reason is Reason.CERT_INVALID

    def test_rogue_ca_without_constraints_cannot_issue_abroad(
        self, root: CertifiedKey, fixed_now: datetime
    ) -> None:
        """A root-signed AT CA that omitted its name constraints cannot vouch for a de. agency."""
        rogue_key = issuing.generate_key()
        rogue = CertifiedKey(
            key=rogue_key,
            cert=issuing.sign_certificate(
                root,
                subject=_name(C="AT", O=pki.federation_org("testfed"), CN="rogue AT CA"),
                public_key=rogue_key.public_key(),
                now=fixed_now,
                lifetime=DAY,
                ca=True,
                path_length=0,
                usage=issuing.key_usage("key_cert_sign", "crl_sign"),
            ),
        )
        cert = _rogue_agency_cert(rogue, country="DE", agency_id="de.bka", now=fixed_now)
        with pytest.raises(InvalidMessage) as err:
            pki.validate_agency_cert(
                cert,
                rogue.cert,
                root.cert,
                _empty_crl(rogue, fixed_now),
                now=fixed_now,
                usage=CertUsage.SIGNING,
            )
        assert err.value.reason is Reason.CERT_INVALID

    @pytest.mark.parametrize(
        "case",
        [
            pytest.param(("DE", "de.bka", "subject country"), id="foreign-subject-country"),
            pytest.param(("AT", "de.bka", "agency id is not in AT"), id="foreign-agency-prefix"),
        ],
    )
    def test_constrained_ca_cannot_issue_abroad_either(
        self,
        at_ca: CertifiedKey,
        root: CertifiedKey,
        fixed_now: datetime,
        case: tuple[str, str, str],
    ) -> None:
        """The explicit country checks refuse what cryptography lets through (directoryName)."""
        subject_country, agency_id, expected = case
        cert = _rogue_agency_cert(
            at_ca, country=subject_country, agency_id=agency_id, now=fixed_now
        )
        with pytest.raises(InvalidMessage, match=expected) as err:
            pki.validate_agency_cert(
                cert,
                at_ca.cert,
                root.cert,
                _empty_crl(at_ca, fixed_now),
                now=fixed_now,
                usage=CertUsage.SIGNING,
            )
        assert err.value.reason is Reason.CERT_INVALID

    def test_expired_cert_is_refused(
        self, de_ca: CertifiedKey, root: CertifiedKey, fixed_now: datetime
    ) -> None:
        """A certificate past its notAfter is CERT_INVALID (even with a fresh CRL)."""
        creds = issuing.issue_agency(
            de_ca, agency_id="de.x", kind="ngo", name="X", now=fixed_now, lifetime=DAY
        )
        later = fixed_now + 2 * DAY
        with pytest.raises(InvalidMessage) as err:
            pki.validate_agency_cert(
                creds.signing.cert,
                de_ca.cert,
                root.cert,
                _empty_crl(de_ca, later),
                now=later,
                usage=CertUsage.SIGNING,
            )
        assert err.value.reason is Reason.CERT_INVALID

    def test_not_yet_valid_cert_is_refused(
        self, de_ca: CertifiedKey, root: CertifiedKey, fixed_now: datetime
    ) -> None:
        """A certificate before its notBefore is CERT_INVALID."""
        creds = issuing.issue_agency(
            de_ca, agency_id="de.x", kind="ngo", name="X", now=fixed_now + DAY
        )
        with pytest.raises(InvalidMessage) as err:
            pki.validate_agency_cert(
                creds.signing.cert,
                de_ca.cert,
                root.cert,
                _empty_crl(de_ca, fixed_now),
                now=fixed_now,
                usage=CertUsage.SIGNING,
            )
        assert err.value.reason is Reason.CERT_INVALID

    def test_cert_from_another_country_ca_is_refused(
        self,
        lka: pki.AgencyCredentials,
        at_ca: CertifiedKey,
        root: CertifiedKey,
        fixed_now: datetime,
    ) -> None:
        """A DE agency certificate presented with AT's CA does not chain."""
        with pytest.raises(InvalidMessage) as err:
            pki.validate_agency_cert(
                lka.signing.cert,
                at_ca.cert,
                root.cert,
                _empty_crl(at_ca, fixed_now),
                now=fixed_now,
                usage=CertUsage.SIGNING,
            )
        assert err.value.reason is Reason.CERT_INVALID

    def test_cert_directly_under_root_is_refused(
        self, root: CertifiedKey, de_ca: CertifiedKey, fixed_now: datetime
    ) -> None:
        """An agency certificate signed by the root itself (no country CA) is refused."""
        cert = _rogue_agency_cert(root, country="DE", agency_id="de.x", now=fixed_now)
        with pytest.raises(InvalidMessage) as err:
            pki.validate_agency_cert(
                cert,
                de_ca.cert,
                root.cert,
                _empty_crl(de_ca, fixed_now),
                now=fixed_now,
                usage=CertUsage.SIGNING,
            )
        assert err.value.reason is Reason.CERT_INVALID

    def test_forged_issuer_signature_is_refused(
        self, de_ca: CertifiedKey, root: CertifiedKey, fixed_now: datetime
    ) -> None:
        """A certificate naming the DE CA as issuer but signed by another key is refused."""
        impostor = CertifiedKey(key=issuing.generate_key(), cert=de_ca.cert)
        cert = _rogue_agency_cert(impostor, country="DE", agency_id="de.x", now=fixed_now)
        with pytest.raises(InvalidMessage) as err:
            pki.validate_agency_cert(
                cert,
                de_ca.cert,
                root.cert,
                _empty_crl(de_ca, fixed_now),
                now=fixed_now,
                usage=CertUsage.SIGNING,
            )
        assert err.value.reason is Reason.CERT_INVALID

    def test_stale_crl_is_directory_stale(
        self,
        lka: pki.AgencyCredentials,
        de_ca: CertifiedKey,
        root: CertifiedKey,
        fixed_now: datetime,
    ) -> None:
        """A CRL past its next_update means revocation status is unknown: DIRECTORY_STALE."""
        crl = issuing.build_crl(de_ca.key, de_ca.cert, [], fixed_now, fixed_now + DAY)
        later = fixed_now + 2 * DAY
        with pytest.raises(InvalidMessage) as err:
            pki.validate_agency_cert(
                lka.signing.cert, de_ca.cert, root.cert, crl, now=later, usage=CertUsage.SIGNING
            )
        assert err.value.reason is Reason.DIRECTORY_STALE

    def test_crl_signed_by_another_ca_is_refused(
        self,
        lka: pki.AgencyCredentials,
        de_ca: CertifiedKey,
        at_ca: CertifiedKey,
        root: CertifiedKey,
        fixed_now: datetime,
    ) -> None:
        """A CRL not signed by the issuing CA cannot clear (or revoke) its certificates."""
        forged = issuing.build_crl(at_ca.key, de_ca.cert, [], fixed_now, fixed_now + DAY)
        with pytest.raises(InvalidMessage) as err:
            pki.validate_agency_cert(
                lka.signing.cert,
                de_ca.cert,
                root.cert,
                forged,
                now=fixed_now,
                usage=CertUsage.SIGNING,
            )
        assert err.value.reason is Reason.DIRECTORY_INVALID

    def test_revoked_cert_is_sender_revoked(
        self,
        lka: pki.AgencyCredentials,
        de_ca: CertifiedKey,
        root: CertifiedKey,
        fixed_now: datetime,
    ) -> None:
        """A certificate listed in its CA's CRL is SENDER_REVOKED."""
        entry = (lka.signing.cert.serial_number, fixed_now, x509.ReasonFlags.key_compromise)
        crl = issuing.build_crl(de_ca.key, de_ca.cert, [entry], fixed_now, fixed_now + DAY)
        with pytest.raises(InvalidMessage) as err:
            pki.validate_agency_cert(
                lka.signing.cert, de_ca.cert, root.cert, crl, now=fixed_now, usage=CertUsage.SIGNING
            )
        assert err.value.reason is Reason.SENDER_REVOKED

    def test_other_revocations_do_not_affect_a_cert(
        self,
        lka: pki.AgencyCredentials,
        de_ca: CertifiedKey,
        root: CertifiedKey,
        fixed_now: datetime,
    ) -> None:
        """Revoking the agreement cert leaves the signing cert valid on its own."""
        entry = (lka.agreement.cert.serial_number, fixed_now, None)
        crl = issuing.build_crl(de_ca.key, de_ca.cert, [entry], fixed_now, fixed_now + DAY)
        info = pki.validate_agency_cert(
            lka.signing.cert, de_ca.cert, root.cert, crl, now=fixed_now, usage=CertUsage.SIGNING
        )
        assert info.serial == lka.signing.cert.serial_number


class TestCRL:
    def test_reason_is_recorded_and_unspecified_omitted(
        self, de_ca: CertifiedKey, fixed_now: datetime
    ) -> None:
        """CRL entries carry their reason; 'unspecified' is expressed by omission (RFC 5280)."""
        crl = issuing.build_crl(
            de_ca.key,
            de_ca.cert,
            [
                (1, fixed_now, x509.ReasonFlags.key_compromise),
                (2, fixed_now, x509.ReasonFlags.unspecified),
            ],
            fixed_now,
            fixed_now + DAY,
        )
        first = crl.get_revoked_certificate_by_serial_number(1)
        second = crl.get_revoked_certificate_by_serial_number(2)
        assert first is not None
        assert second is not None
        assert first.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
            x509.ReasonFlags.key_compromise
        )
        assert len(second.extensions) == 0
        assert crl.is_signature_valid(de_ca.key.public_key())

    def test_next_update_must_follow_now(self, de_ca: CertifiedKey, fixed_now: datetime) -> None:
        """A CRL that is stale on issue is refused."""
        with pytest.raises(PKIError):
            issuing.build_crl(de_ca.key, de_ca.cert, [], fixed_now, fixed_now)


class TestTLS:
    def test_dev_server_cert_validates_for_loopback(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A dev country server certificate is valid for localhost and 127.0.0.1."""
        de = dev_federation.country("DE")
        for name in ("localhost", "127.0.0.1"):
            chain = pki.validate_tls_cert(
                de.server_tls.cert,
                [de.ca.cert],
                dev_federation.root.cert,
                now=fixed_now,
                server_name=name,
            )
            assert chain[1] == de.ca.cert

    def test_server_cert_wrong_name_is_refused(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A server certificate does not validate for a name it does not carry."""
        de = dev_federation.country("DE")
        with pytest.raises(InvalidMessage) as err:
            pki.validate_tls_cert(
                de.server_tls.cert,
                [de.ca.cert],
                dev_federation.root.cert,
                now=fixed_now,
                server_name="nats.example.de",
            )
        assert err.value.reason is Reason.CERT_INVALID

    def test_server_and_hub_certs_can_authenticate_routes(
        self, dev_federation: DevFederation
    ) -> None:
        """Country server and hub certificates carry serverAuth and clientAuth (a clustered
        server dials its peers' routes with them); a leaf-node certificate clientAuth only."""
        both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        de = dev_federation.country("DE")
        for cert in (de.server_tls.cert, dev_federation.hub_tls.cert):
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert list(usage) == both
        usage = de.leaf_tls.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]

    def test_hub_and_leaf_certs_chain_through_secretariat(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """Hub server and country leaf-node client certs validate via the secretariat CA."""
        sec, root = dev_federation.secretariat.cert, dev_federation.root.cert
        pki.validate_tls_cert(
            dev_federation.hub_tls.cert, [sec], root, now=fixed_now, server_name="localhost"
        )
        leaf = dev_federation.country("NL").leaf_tls.cert
        assert pki.validate_tls_cert(leaf, [sec], root, now=fixed_now)[1] == sec
        assert leaf.subject.rfc4514_string() == "CN=leaf.nl,O=Casebridge federation demo,C=NL"

    def test_leaf_and_hub_need_the_secretariat(
        self, de_ca: CertifiedKey, fixed_now: datetime
    ) -> None:
        """A country CA is refused as issuer of hub or leaf-node certificates."""
        with pytest.raises(PKIError, match="secretariat"):
            issuing.issue_leaf_tls(de_ca, country="DE", now=fixed_now)
        with pytest.raises(PKIError, match="secretariat"):
            issuing.issue_hub_tls(de_ca, host_names=["localhost"], now=fixed_now)

    def test_server_name_outside_subtrees_is_refused_at_issue(
        self, de_ca: CertifiedKey, fixed_now: datetime
    ) -> None:
        """DE's CA will not issue for a host outside its DNS subtrees, nor for loopback."""
        with pytest.raises(PKIError, match="outside"):
            issuing.issue_server_tls(de_ca, host_names=["nats.example.at"], now=fixed_now)
        with pytest.raises(PKIError, match="outside"):
            issuing.issue_server_tls(
                de_ca,
                host_names=["nats.bka.de"],
                ip_addresses=[ipaddress.ip_address("127.0.0.1")],
                now=fixed_now,
            )

    @pytest.mark.parametrize(
        ("san", "server_name"),
        [
            pytest.param(x509.DNSName("nats.example.at"), "nats.example.at", id="dns-outside"),
            pytest.param(
                x509.IPAddress(ipaddress.ip_address("10.0.0.1")), "10.0.0.1", id="ip-excluded"
            ),
        ],
    )
    def test_name_constraints_are_enforced_on_validation(
        self,
        de_ca: CertifiedKey,
        root: CertifiedKey,
        fixed_now: datetime,
        san: x509.GeneralName,
        server_name: str,
    ) -> None:
        """A server cert the DE CA signed for a foreign name or any IP fails validation."""
        cert = issuing.sign_certificate(
            de_ca,
            subject=_name(C="DE", CN="x"),
            public_key=issuing.generate_key().public_key(),
            now=fixed_now,
            lifetime=DAY,
            ca=False,
            usage=issuing.key_usage("digital_signature"),
            extended_usage=(ExtendedKeyUsageOID.SERVER_AUTH,),
            san=[san],
        )
        with pytest.raises(InvalidMessage) as err:
            pki.validate_tls_cert(
                cert, [de_ca.cert], root.cert, now=fixed_now, server_name=server_name
            )
        assert err.value.reason is Reason.CERT_INVALID
