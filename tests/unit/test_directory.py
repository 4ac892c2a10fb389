"""The signed federation directory (broker.core.directory): loading, lookups, failure model."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from broker.core import canonical, jose, pki
from broker.core.directory import (
    DIRECTORY_TYP,
    AgencyEntry,
    CountryEntry,
    Directory,
    TaskForce,
    build_directory,
    root_fingerprint,
    root_kid,
)
from broker.core.pki import CertifiedKey
from broker.core.trust import KeyResolver
from broker.errors import InvalidMessage, PKIError, Reason
from broker.pki import issuing
from broker.pki.dev import DevFederation

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def _country_entries(
    fed: DevFederation, *, now: datetime, crl_next_update: datetime
) -> list[CountryEntry]:
    return [
        CountryEntry(
            code=c.code,
            name=c.name,
            eu=c.eu,
            ca_cert=c.ca.cert,
            crl=issuing.build_crl(c.ca.key, c.ca.cert, [], now, crl_next_update),
        )
        for c in fed.countries.values()
    ]


def _sign(
    fed: DevFederation,
    *,
    now: datetime,
    next_update: datetime,
    countries: Sequence[CountryEntry] | None = None,
    agencies: Sequence[AgencyEntry] | None = None,
) -> bytes:
    """A directory of ``fed`` with the given parts replaced, signed by its root."""
    return build_directory(
        root=fed.root,
        serial=2,
        issued_at=now,
        next_update=next_update,
        countries=countries or _country_entries(fed, now=now, crl_next_update=next_update),
        agencies=fed.agency_entries() if agencies is None else agencies,
        task_forces=fed.task_forces,
    )


def _payload(signed: bytes) -> dict[str, Any]:
    unverified = jose.parse_compact(signed.decode("ascii"), typ=DIRECTORY_TYP, what="test")
    doc: dict[str, Any] = json.loads(unverified.unverified_payload)
    return doc


def _resign(fed: DevFederation, mutate: Callable[[dict[str, Any]], None]) -> bytes:
    """The dev directory with its document mutated, validly signed again by the root."""
    doc = _payload(fed.directory_bytes)
    mutate(doc)
    token = jose.sign_compact(
        canonical.dumps(doc), fed.root.key, kid=root_kid(fed.root.cert), typ=DIRECTORY_TYP
    )
    return token.encode("ascii")


def _load(fed: DevFederation, signed: bytes, now: datetime) -> Directory:
    return Directory.load(signed, root_cert=fed.root.cert, now=now)


def _reason(call: Callable[[], object]) -> Reason:
    with pytest.raises(InvalidMessage) as err:
        call()
    return err.value.reason


def _entry(fed: DevFederation, agency_id: str, **changes: Any) -> AgencyEntry:
    base = next(e for e in fed.agency_entries() if e.agency_id == agency_id)
    return replace(base, **changes)


class TestLoad:
    def test_loads_the_demo_federation(self, dev_federation: DevFederation) -> None:
        """The dev directory verifies and lists every country, agency and task force."""
        d = dev_federation.directory
        assert d.federation_id == "demo"
        assert d.serial == 1
        assert [(c.code, c.eu) for c in d.countries()] == [
            ("DE", True),
            ("NL", True),
            ("UA", False),
        ]
        assert len(d.agencies()) == 9
        assert [t.task_force_id for t in d.task_forces()] == ["tf.eastern-route"]
        assert d.problems == ()

    def test_signed_by_another_federation_root(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A directory signed by another federation's root is DIRECTORY_INVALID."""
        other = issuing.create_root_ca("otherfed", now=fixed_now)
        signed = build_directory(
            root=other,
            serial=1,
            issued_at=fixed_now,
            next_update=fixed_now + DAY,
            countries=[],
            agencies=[],
        )
        with pytest.raises(InvalidMessage, match="another root") as err:
            _load(dev_federation, signed, fixed_now)
        assert err.value.reason is Reason.DIRECTORY_INVALID

    def test_signed_by_another_key_claiming_our_root(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A directory naming our root's kid but signed by another key is DIRECTORY_INVALID."""
        payload = canonical.dumps(_payload(dev_federation.directory_bytes))
        token = jose.sign_compact(
            payload,
            issuing.generate_key(),
            kid=root_kid(dev_federation.root.cert),
            typ=DIRECTORY_TYP,
        )
        signed = token.encode("ascii")
        assert _reason(lambda: _load(dev_federation, signed, fixed_now)) is Reason.DIRECTORY_INVALID

    def test_tampered_payload(self, dev_federation: DevFederation, fixed_now: datetime) -> None:
        """Changing the signed document without re-signing is DIRECTORY_INVALID."""
        head, body, sig = dev_federation.directory_bytes.decode("ascii").split(".")
        doc = _payload(dev_federation.directory_bytes)
        doc["task_forces"] = []
        forged = jose.b64url_encode(canonical.dumps(doc))
        signed = f"{head}.{forged}.{sig}".encode("ascii")
        assert body != forged
        assert _reason(lambda: _load(dev_federation, signed, fixed_now)) is Reason.DIRECTORY_INVALID

    @pytest.mark.parametrize(
        "signed",
        [
            pytest.param(b"", id="empty"),
            pytest.param(b"not a jws", id="garbage"),
            pytest.param(b"a.b.c.d.e", id="jwe-shaped"),
            pytest.param("é.é.é".encode(), id="non-ascii"),
        ],
    )
    def test_malformed_bytes(
        self, dev_federation: DevFederation, fixed_now: datetime, signed: bytes
    ) -> None:
        """Bytes that are not a compact JWS are DIRECTORY_INVALID."""
        assert _reason(lambda: _load(dev_federation, signed, fixed_now)) is Reason.DIRECTORY_INVALID

    def test_flipped_signature_byte(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A corrupted signature is DIRECTORY_INVALID."""
        head, body, sig = dev_federation.directory_bytes.decode("ascii").split(".")
        raw = bytearray(jose.b64url_decode(sig, what="sig"))
        raw[5] ^= 0x01
        signed = f"{head}.{body}.{jose.b64url_encode(bytes(raw))}".encode("ascii")
        assert _reason(lambda: _load(dev_federation, signed, fixed_now)) is Reason.DIRECTORY_INVALID

    def test_wrong_typ(self, dev_federation: DevFederation, fixed_now: datetime) -> None:
        """A root-signed JWS of another type is not a directory."""
        payload = canonical.dumps(_payload(dev_federation.directory_bytes))
        token = jose.sign_compact(
            payload, dev_federation.root.key, kid=root_kid(dev_federation.root.cert), typ="JWT"
        )
        signed = token.encode("ascii")
        assert _reason(lambda: _load(dev_federation, signed, fixed_now)) is Reason.DIRECTORY_INVALID

    def test_past_next_update_is_stale_at_load(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """Loading a directory after its next_update is DIRECTORY_STALE."""
        later = dev_federation.directory.next_update + timedelta(seconds=1)
        signed = dev_federation.directory_bytes
        assert _reason(lambda: _load(dev_federation, signed, later)) is Reason.DIRECTORY_STALE

    def test_issued_in_the_future(self, dev_federation: DevFederation, fixed_now: datetime) -> None:
        """A directory issued beyond the clock-skew allowance after our now is DIRECTORY_INVALID."""
        ahead = fixed_now + pki.CLOCK_SKEW + timedelta(minutes=1)
        signed = _sign(dev_federation, now=ahead, next_update=ahead + DAY)
        with pytest.raises(InvalidMessage, match="future") as err:
            _load(dev_federation, signed, fixed_now)
        assert err.value.reason is Reason.DIRECTORY_INVALID

    def test_rollback_below_min_serial(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """An older directory than one already accepted is DIRECTORY_STALE."""
        signed = dev_federation.directory_bytes
        with pytest.raises(InvalidMessage) as err:
            Directory.load(signed, root_cert=dev_federation.root.cert, now=fixed_now, min_serial=2)
        assert err.value.reason is Reason.DIRECTORY_STALE

    def test_expired_pinned_root(self, fixed_now: datetime) -> None:
        """A pinned root past its lifetime cannot vouch for any directory."""
        root = issuing.create_root_ca("short", now=fixed_now, lifetime=DAY)
        signed = build_directory(
            root=root,
            serial=1,
            issued_at=fixed_now + 2 * DAY,
            next_update=fixed_now + 3 * DAY,
            countries=[],
            agencies=[],
        )
        with pytest.raises(InvalidMessage) as err:
            Directory.load(signed, root_cert=root.cert, now=fixed_now + 2 * DAY)
        assert err.value.reason is Reason.DIRECTORY_INVALID

    @pytest.mark.parametrize(
        "mutate",
        [
            pytest.param(lambda d: d.update(extra=1), id="unknown-member"),
            pytest.param(lambda d: d.pop("task_forces"), id="missing-member"),
            pytest.param(lambda d: d.update(v=2), id="unknown-version"),
            pytest.param(lambda d: d.update(serial=0), id="serial-zero"),
            pytest.param(lambda d: d.update(serial=True), id="serial-bool"),
            pytest.param(lambda d: d.update(federation="other"), id="other-federation"),
            pytest.param(lambda d: d.update(root_sha256="A" * 43), id="other-root-named"),
            pytest.param(lambda d: d.update(next_update=d["issued_at"]), id="no-validity"),
            pytest.param(lambda d: d.update(issued_at="2026-11-28 12:00:00"), id="bad-time"),
            pytest.param(lambda d: d["agencies"].append(d["agencies"][0]), id="duplicate-agency"),
            pytest.param(
                lambda d: d["countries"].append(d["countries"][0]), id="duplicate-country"
            ),
            pytest.param(lambda d: d["agencies"][0].update(country="NL"), id="agency-country"),
            pytest.param(lambda d: d["countries"][0].update(eu="yes"), id="eu-not-bool"),
            pytest.param(lambda d: d["task_forces"][0].update(members=[]), id="empty-task-force"),
        ],
    )
    def test_malformed_document_is_refused_whole(
        self,
        dev_federation: DevFederation,
        fixed_now: datetime,
        mutate: Callable[[dict[str, Any]], None],
    ) -> None:
        """A validly signed but malformed document is DIRECTORY_INVALID as a whole."""
        signed = _resign(dev_federation, mutate)
        assert _reason(lambda: _load(dev_federation, signed, fixed_now)) is Reason.DIRECTORY_INVALID


class TestLookups:
    def test_agency_keys_match_the_issued_certificates(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """agency() returns the kids and public keys of the agency's two certificates."""
        mine = dev_federation.agency("nl.politie")
        keys = dev_federation.directory.agency("nl.politie", now=fixed_now)
        assert (keys.country, keys.kind, keys.name) == ("NL", "law_enforcement", "Politie")
        assert keys.signing_kid == mine.signing_kid
        assert keys.agreement_kid == mine.agreement_kid
        assert keys.signing_key == mine.signing.key.public_key()
        assert keys.agreement_key == mine.agreement.key.public_key()

    def test_signing_key_by_kid(self, dev_federation: DevFederation, fixed_now: datetime) -> None:
        """signing_key() finds the agency by its signing certificate's kid."""
        kid = dev_federation.agency("ua.npu").signing_kid
        assert dev_federation.directory.signing_key(kid, now=fixed_now).agency_id == "ua.npu"

    @pytest.mark.parametrize(
        "kid",
        [
            pytest.param("ua.npu#AAAA", id="unknown-thumbprint"),
            pytest.param("", id="empty"),
        ],
    )
    def test_unknown_kid(
        self, dev_federation: DevFederation, fixed_now: datetime, kid: str
    ) -> None:
        """An unknown signing kid is UNKNOWN_SENDER."""
        d = dev_federation.directory
        assert _reason(lambda: d.signing_key(kid, now=fixed_now)) is Reason.UNKNOWN_SENDER

    def test_agreement_kid_is_not_a_signing_kid(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A key-agreement certificate's kid never resolves as a signing key."""
        kid = dev_federation.agency("ua.npu").agreement_kid
        d = dev_federation.directory
        assert _reason(lambda: d.signing_key(kid, now=fixed_now)) is Reason.UNKNOWN_SENDER

    def test_unknown_agency_and_task_force(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """Unknown agencies and task forces are UNKNOWN_RECIPIENT."""
        d = dev_federation.directory
        assert _reason(lambda: d.agency("fr.police", now=fixed_now)) is Reason.UNKNOWN_RECIPIENT
        assert _reason(lambda: d.task_force("tf.nope", now=fixed_now)) is Reason.UNKNOWN_RECIPIENT
        assert _reason(lambda: d.agency_kind("fr.police")) is Reason.UNKNOWN_RECIPIENT

    def test_task_force_members_sorted(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A task force resolves to its sorted member ids."""
        members = dev_federation.directory.task_force("tf.eastern-route", now=fixed_now)
        assert members == ("de.lka-berlin", "nl.politie", "ua.npu")

    @pytest.mark.parametrize(
        "lookup",
        [
            pytest.param(lambda d, now: d.agency("de.lka-berlin", now=now), id="agency"),
            pytest.param(lambda d, now: d.task_force("tf.eastern-route", now=now), id="task-force"),
            pytest.param(
                lambda d, now: d.signing_key(d.agencies()[0].signing_kid, now=now), id="kid"
            ),
        ],
    )
    def test_lookup_after_next_update_is_stale(
        self, dev_federation: DevFederation, lookup: Callable[[Directory, datetime], object]
    ) -> None:
        """Every lookup after the directory's next_update is DIRECTORY_STALE."""
        d = dev_federation.directory
        later = d.next_update + timedelta(seconds=1)
        assert _reason(lambda: lookup(d, later)) is Reason.DIRECTORY_STALE
        lookup(d, d.next_update)  # still fresh at the instant itself

    def test_accessors(self, dev_federation: DevFederation) -> None:
        """countries, country_ca, agency_kind and agencies(country) expose the verified data."""
        d = dev_federation.directory
        assert d.country_ca("UA") == dev_federation.country("UA").ca.cert
        assert d.agency_kind("nl.arbeidsinspectie") == "labour_inspectorate"
        assert [a.agency_id for a in d.agencies("UA")] == ["ua.hotline-ngo", "ua.npu", "ua.pgo"]
        assert d.agency_tls_cert("ua.npu") == dev_federation.agency("ua.npu").tls.cert
        assert _reason(lambda: d.country_ca("FR")) is Reason.UNKNOWN_SENDER

    def test_is_a_key_resolver(self, dev_federation: DevFederation, fixed_now: datetime) -> None:
        """The directory serves the envelope through the KeyResolver protocol."""
        resolver: KeyResolver = dev_federation.directory
        assert resolver.federation_id == "demo"
        assert resolver.agency("de.sta-berlin", now=fixed_now).kind == "prosecutor"


class TestRevocationAndFreshness:
    def test_revoked_agency_fails_closed(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A revoked agency is SENDER_REVOKED by id and by kid, and is not listed as usable."""
        signed = dev_federation.sign_directory(now=fixed_now, revoked=["nl.politie"])
        d = _load(dev_federation, signed, fixed_now)
        kid = dev_federation.agency("nl.politie").signing_kid
        assert _reason(lambda: d.agency("nl.politie", now=fixed_now)) is Reason.SENDER_REVOKED
        assert _reason(lambda: d.signing_key(kid, now=fixed_now)) is Reason.SENDER_REVOKED
        assert d.revoked_agencies() == ("nl.politie",)
        assert "nl.politie" not in [a.agency_id for a in d.agencies()]
        assert d.problems == ()
        assert d.agency("nl.hulp-ngo", now=fixed_now).country == "NL"

    def test_crl_expiring_before_directory_is_stale_at_lookup(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """Past a country's CRL next_update its agencies are DIRECTORY_STALE, others not."""
        fed = dev_federation
        countries = _country_entries(fed, now=fixed_now, crl_next_update=fixed_now + 3 * DAY)
        countries = [
            replace(
                c,
                crl=issuing.build_crl(
                    fed.country("DE").ca.key, c.ca_cert, [], fixed_now, fixed_now + DAY
                ),
            )
            if c.code == "DE"
            else c
            for c in countries
        ]
        d = _load(
            fed,
            _sign(fed, now=fixed_now, next_update=fixed_now + 3 * DAY, countries=countries),
            fixed_now,
        )
        later = fixed_now + 2 * DAY
        assert d.agency("de.lka-berlin", now=fixed_now).country == "DE"
        assert _reason(lambda: d.agency("de.lka-berlin", now=later)) is Reason.DIRECTORY_STALE
        assert d.agency("nl.politie", now=later).country == "NL"

    def test_certificate_expiring_during_directory_is_invalid_at_lookup(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """An agency whose certificate expires before next_update is CERT_INVALID after expiry."""
        fed = dev_federation
        creds = issuing.issue_agency(
            fed.country("DE").ca,
            agency_id="de.short",
            kind="ngo",
            name="Short-lived",
            now=fixed_now,
            lifetime=DAY,
        )
        short = AgencyEntry(
            agency_id="de.short",
            kind="ngo",
            name="Short-lived",
            signing_cert=creds.signing.cert,
            agreement_cert=creds.agreement.cert,
        )
        signed = _sign(
            fed,
            now=fixed_now,
            next_update=fixed_now + 3 * DAY,
            agencies=[*fed.agency_entries(), short],
        )
        d = _load(fed, signed, fixed_now)
        later = fixed_now + 2 * DAY
        assert d.agency("de.short", now=fixed_now).name == "Short-lived"
        assert _reason(lambda: d.agency("de.short", now=later)) is Reason.CERT_INVALID
        kid = d.agency("de.short", now=fixed_now).signing_kid
        assert _reason(lambda: d.signing_key(kid, now=later)) is Reason.CERT_INVALID
        assert d.agency("de.lka-berlin", now=later).country == "DE"


class TestBadEntries:
    def _check_skipped(self, d: Directory, agency_id: str, reason: Reason, now: datetime) -> None:
        assert [(p.entry, p.reason) for p in d.problems] == [(f"agency {agency_id}", reason)]
        assert _reason(lambda: d.agency(agency_id, now=now)) is reason
        assert _reason(lambda: d.agency_kind(agency_id)) is reason
        assert agency_id not in [a.agency_id for a in d.agencies()]
        assert len(d.agencies()) == 8  # the other agencies still work
        assert d.agency("ua.npu", now=now).agency_id == "ua.npu"

    def test_agreement_cert_as_signing_cert(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """An entry whose signing cert is a key-agreement cert is skipped and reported."""
        fed = dev_federation
        bad = _entry(fed, "de.sta-berlin", signing_cert=fed.agency("de.sta-berlin").agreement.cert)
        entries = [bad if e.agency_id == "de.sta-berlin" else e for e in fed.agency_entries()]
        d = _load(fed, fed.sign_directory(now=fixed_now, agencies=entries), fixed_now)
        self._check_skipped(d, "de.sta-berlin", Reason.CERT_INVALID, fixed_now)
        kid = fed.agency("de.sta-berlin").agreement_kid
        assert _reason(lambda: d.signing_key(kid, now=fixed_now)) is Reason.CERT_INVALID

    def test_certificate_from_another_countrys_ca(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """An NL agency certified by DE's CA (bypassing the issuing guard) is skipped."""
        fed = dev_federation
        de_ca = fed.country("DE").ca
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Slachtofferhulp NGO"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ngo"),
                x509.NameAttribute(NameOID.COMMON_NAME, "nl.hulp-ngo"),
            ]
        )
        rogue = issuing.sign_certificate(
            de_ca,
            subject=name,
            public_key=issuing.generate_key().public_key(),
            now=fixed_now,
            lifetime=DAY,
            ca=False,
            usage=issuing.key_usage("digital_signature", "content_commitment"),
            extended_usage=(pki.DOCUMENT_SIGNING,),
            san=[x509.UniformResourceIdentifier("urn:casebridge:agency:nl.hulp-ngo")],
        )
        bad = _entry(fed, "nl.hulp-ngo", signing_cert=rogue)
        entries = [bad if e.agency_id == "nl.hulp-ngo" else e for e in fed.agency_entries()]
        d = _load(fed, fed.sign_directory(now=fixed_now, agencies=entries), fixed_now)
        self._check_skipped(d, "nl.hulp-ngo", Reason.CERT_INVALID, fixed_now)

    def test_entry_disagreeing_with_its_certificate(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """An entry whose kind differs from its certificate's OU is skipped."""
        fed = dev_federation
        entries = [
            replace(e, kind="ngo") if e.agency_id == "ua.pgo" else e for e in fed.agency_entries()
        ]
        d = _load(fed, fed.sign_directory(now=fixed_now, agencies=entries), fixed_now)
        self._check_skipped(d, "ua.pgo", Reason.CERT_INVALID, fixed_now)

    def test_undecodable_certificate(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """An entry whose certificate is not base64 DER is skipped, not fatal."""

        def mutate(doc: dict[str, Any]) -> None:
            entry = next(a for a in doc["agencies"] if a["id"] == "de.fbs-berlin")
            entry["agreement_cert"] = base64.b64encode(b"not a certificate").decode("ascii")

        d = _load(dev_federation, _resign(dev_federation, mutate), fixed_now)
        self._check_skipped(d, "de.fbs-berlin", Reason.CERT_INVALID, fixed_now)

    def test_country_ca_from_another_root(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A country whose CA does not chain is skipped with all its agencies; others work."""
        fed = dev_federation
        other_root = issuing.create_root_ca("demo", now=fixed_now)
        foreign: CertifiedKey = issuing.issue_country_ca(other_root, country="NL", now=fixed_now)
        countries = [
            replace(
                c,
                ca_cert=foreign.cert,
                crl=issuing.build_crl(foreign.key, foreign.cert, [], fixed_now, fixed_now + DAY),
            )
            if c.code == "NL"
            else c
            for c in _country_entries(fed, now=fixed_now, crl_next_update=fixed_now + DAY)
        ]
        d = _load(
            fed,
            _sign(fed, now=fixed_now, next_update=fixed_now + DAY, countries=countries),
            fixed_now,
        )
        assert ("country NL", Reason.CERT_INVALID) in [(p.entry, p.reason) for p in d.problems]
        assert [c.code for c in d.countries()] == ["DE", "UA"]
        assert _reason(lambda: d.country_ca("NL")) is Reason.CERT_INVALID
        assert _reason(lambda: d.agency("nl.politie", now=fixed_now)) is Reason.CERT_INVALID
        assert d.agency("de.lka-berlin", now=fixed_now).country == "DE"

    def test_stale_crl_at_load(self, dev_federation: DevFederation, fixed_now: datetime) -> None:
        """A country whose CRL is already stale keeps its CA but its agencies fail closed."""
        fed = dev_federation
        ua = fed.country("UA")
        countries = [
            replace(
                c,
                crl=issuing.build_crl(
                    ua.ca.key, ua.ca.cert, [], fixed_now - 2 * DAY, fixed_now - DAY
                ),
            )
            if c.code == "UA"
            else c
            for c in _country_entries(fed, now=fixed_now, crl_next_update=fixed_now + DAY)
        ]
        d = _load(
            fed,
            _sign(fed, now=fixed_now, next_update=fixed_now + DAY, countries=countries),
            fixed_now,
        )
        assert ("country UA CRL", Reason.DIRECTORY_STALE) in [
            (p.entry, p.reason) for p in d.problems
        ]
        assert d.country_ca("UA") == ua.ca.cert
        assert _reason(lambda: d.agency("ua.npu", now=fixed_now)) is Reason.DIRECTORY_STALE
        assert d.agency("nl.politie", now=fixed_now).country == "NL"

    def test_task_force_with_unknown_member(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A task force naming an agency absent from the directory is skipped and reported."""

        def mutate(doc: dict[str, Any]) -> None:
            doc["task_forces"][0]["members"].append("fr.police")

        d = _load(dev_federation, _resign(dev_federation, mutate), fixed_now)
        assert [(p.entry, p.reason) for p in d.problems] == [
            ("task force tf.eastern-route", Reason.DIRECTORY_INVALID)
        ]
        tf_id = "tf.eastern-route"
        assert _reason(lambda: d.task_force(tf_id, now=fixed_now)) is Reason.UNKNOWN_RECIPIENT


class TestBuild:
    def test_document_format(self, dev_federation: DevFederation) -> None:
        """The signed form is a root-signed compact JWS over the documented JSON members."""
        token = dev_federation.directory_bytes.decode("ascii")
        header = json.loads(jose.b64url_decode(token.split(".")[0], what="header"))
        assert header == {
            "alg": "ES256",
            "kid": "root#" + root_fingerprint(dev_federation.root.cert),
            "typ": "casebridge-directory+jws",
        }
        doc = _payload(dev_federation.directory_bytes)
        assert set(doc) == {
            "v",
            "federation",
            "serial",
            "issued_at",
            "next_update",
            "root_sha256",
            "countries",
            "agencies",
            "task_forces",
        }
        assert doc["issued_at"] == "2026-11-28T12:00:00Z"
        assert [a["id"] for a in doc["agencies"]] == sorted(a["id"] for a in doc["agencies"])
        agency = doc["agencies"][0]
        cert = x509.load_der_x509_certificate(base64.b64decode(agency["signing_cert"]))
        assert cert == dev_federation.agency(agency["id"]).signing.cert
        assert doc["task_forces"] == [
            {
                "id": "tf.eastern-route",
                "name": "Eastern route joint task force",
                "members": ["de.lka-berlin", "nl.politie", "ua.npu"],
            }
        ]

    @pytest.mark.parametrize(
        "change",
        [
            pytest.param("duplicate-country", id="duplicate-country"),
            pytest.param("orphan-agency", id="agency-without-country"),
            pytest.param("unknown-member", id="task-force-unknown-member"),
            pytest.param("no-validity", id="next-update-not-after-issued"),
        ],
    )
    def test_refuses_inconsistent_input(
        self, dev_federation: DevFederation, fixed_now: datetime, change: str
    ) -> None:
        """build_directory refuses input the secretariat got wrong (PKIError)."""
        fed = dev_federation
        countries = _country_entries(fed, now=fixed_now, crl_next_update=fixed_now + DAY)
        agencies = fed.agency_entries()
        task_forces = list(fed.task_forces)
        next_update = fixed_now + DAY
        if change == "duplicate-country":
            countries.append(countries[0])
        elif change == "orphan-agency":
            countries = [c for c in countries if c.code != "UA"]
        elif change == "unknown-member":
            task_forces.append(TaskForce(task_force_id="tf.x", name="X", members=("fr.police",)))
        else:
            next_update = fixed_now
        with pytest.raises(PKIError):
            build_directory(
                root=fed.root,
                serial=1,
                issued_at=fixed_now,
                next_update=next_update,
                countries=countries,
                agencies=agencies,
                task_forces=task_forces,
            )
