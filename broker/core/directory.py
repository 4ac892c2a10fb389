"""The signed federation directory: who is in the federation, with which keys, until when.

The secretariat publishes one JSON document (format below), signed by the federation root key
as a compact JWS (``typ`` ``casebridge-directory+jws``, ``kid`` ``root#<b64url SHA-256 of the
root certificate DER>``). Nodes and gateways load it with :meth:`Directory.load`, which verifies
the signature with the *pinned* root certificate (never with a key from the document), checks
freshness, validates every country CA, CRL and agency certificate, and builds O(1) lookup
tables. :class:`Directory` implements :class:`broker.core.trust.KeyResolver`.

Document (specified in docs/protocol.md section 9, with the load checks in order; canonical
JSON, see ``broker.core.canonical``; times are RFC 3339 UTC, whole seconds, ``Z`` suffix;
certificates and CRLs are standard base64 of DER; lists are sorted by id)::

    {
      "v": 1,
      "federation": "<federation id>",
      "serial": <int >= 1, increases with every issue>,
      "issued_at": "2026-11-28T12:00:00Z",
      "next_update": "2026-11-29T12:00:00Z",
      "root_sha256": "<base64url SHA-256 of the root certificate DER>",
      "countries": [{"code": "DE", "name": "Germany", "eu": true,
                     "ca_cert": "<b64 DER>", "crl": "<b64 DER>"}],
      "agencies": [{"id": "de.lka-berlin", "country": "DE", "kind": "law_enforcement",
                    "name": "LKA Berlin", "signing_cert": "<b64 DER>",
                    "agreement_cert": "<b64 DER>", "tls_cert": "<b64 DER>" (optional)}],
      "task_forces": [{"id": "tf.example", "name": "...", "members": ["de.x", "nl.y"]}]
    }

Failure model: anything wrong with the document as a whole (signature, root, federation,
shape, duplicates) refuses it with ``InvalidMessage(DIRECTORY_INVALID)``; past ``next_update``
(or older than a serial already seen) with ``DIRECTORY_STALE``. One bad country or agency
entry does not take the federation down: it is skipped, recorded in :attr:`Directory.problems`,
and every lookup of it fails closed with the recorded reason. Revoked agencies are kept only to
answer ``SENDER_REVOKED``. A refusal of :meth:`Directory.load` carries the number of the check
that failed (``exc.step``, 1-9 of docs/protocol.md section 9.4).

Sans-io: no clock (``now`` is passed in), no files, no network.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from broker.core import canonical, jose
from broker.core.header import (
    AGENCY_RE,
    COUNTRY_RE,
    FEDERATION_RE,
    MAX_RECIPIENTS,
    MAX_TEXT,
    TASK_FORCE_RE,
    agency_country,
)
from broker.core.pki import (
    CLOCK_SKEW,
    AgencyCertInfo,
    CertifiedKey,
    CertUsage,
    FederationValidator,
    RevocationStatus,
    federation_id_of,
)
from broker.core.trust import AGENCY_KINDS, AgencyKeys, cert_kid
from broker.errors import InvalidMessage, PKIError, Reason

DIRECTORY_TYP: Final = "casebridge-directory+jws"
DIRECTORY_VERSION: Final = 1
# Refused before parsing; a federation of a few thousand agencies is far below this.
MAX_DIRECTORY_BYTES: Final = 16 * 1024 * 1024

_TOP: Final = frozenset(
    {
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
)
_COUNTRY: Final = frozenset({"code", "name", "eu", "ca_cert", "crl"})
_AGENCY: Final = frozenset({"id", "country", "kind", "name", "signing_cert", "agreement_cert"})
_AGENCY_OPTIONAL: Final = frozenset({"tls_cert"})
_TASK_FORCE: Final = frozenset({"id", "name", "members"})
# ASCII digits only (\d is any Unicode digit); \Z, not $ (which allows a trailing newline).
_TIME_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z")


# ------------------------------------------------------------------------ values ---


@dataclass(frozen=True, kw_only=True, slots=True)
class CountryEntry:
    """A country as the secretariat enters it into a directory."""

    code: str
    name: str
    eu: bool
    ca_cert: x509.Certificate
    crl: x509.CertificateRevocationList


@dataclass(frozen=True, kw_only=True, slots=True)
class AgencyEntry:
    """An agency as the secretariat enters it into a directory."""

    agency_id: str
    kind: str
    name: str
    signing_cert: x509.Certificate
    agreement_cert: x509.Certificate
    tls_cert: x509.Certificate | None = None

    @property
    def country(self) -> str:
        return agency_country(self.agency_id)


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskForce:
    """A named group of agencies (possibly across countries) addressable as one recipient."""

    task_force_id: str
    name: str
    members: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class CountryInfo:
    """A country of the federation: ISO code, display name, EU membership."""

    code: str
    name: str
    eu: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class DirectoryProblem:
    """One directory entry that was skipped at load, and why."""

    entry: str
    reason: Reason
    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AgencyStatus:
    """How the directory treats one listed agency: accepted (``reason`` None) or refused."""

    agency_id: str
    country: str
    kind: str
    name: str
    reason: Reason | None
    detail: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class _Agency:
    """An accepted agency, prebuilt so that lookups are a dict access and three comparisons."""

    keys: AgencyKeys
    valid_from: datetime
    valid_until: datetime
    crl_next_update: datetime
    tls_cert: x509.Certificate | None


# ---------------------------------------------------------------------- helpers ---


def root_kid(root_cert: x509.Certificate) -> str:
    """The JWS ``kid`` of directory signatures: ``root#<b64url SHA-256 of the root DER>``."""
    return cert_kid("root", root_cert)


def root_fingerprint(root_cert: x509.Certificate) -> str:
    """base64url SHA-256 of the root certificate DER (the document's ``root_sha256``)."""
    return jose.b64url_encode(root_cert.fingerprint(hashes.SHA256()))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _format_time(when: datetime) -> str:
    if when.tzinfo is None or when.utcoffset() is None:
        raise PKIError("directory times must be timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _invalid(detail: str, *, step: int | None = None) -> InvalidMessage:
    exc = InvalidMessage(Reason.DIRECTORY_INVALID, detail)
    exc.step = step  # the directory check (docs/protocol.md section 9.4), when known
    return exc


# ------------------------------------------------------------------------ build ---


def build_directory(
    *,
    root: CertifiedKey,
    serial: int,
    issued_at: datetime,
    next_update: datetime,
    countries: Sequence[CountryEntry],
    agencies: Sequence[AgencyEntry],
    task_forces: Sequence[TaskForce] = (),
) -> bytes:
    """Serialise and sign a directory with the root key; returns the compact JWS as bytes.

    Checks the secretariat's own input for consistency (PKIError); certificate validity is
    left to :meth:`Directory.load`, which the caller should run on the result.
    """
    federation = federation_id_of(root.cert)
    if serial < 1:
        raise PKIError("directory serial must be >= 1")
    if _format_time(next_update) <= _format_time(issued_at):
        raise PKIError("next_update must be after issued_at")
    codes = [c.code for c in countries]
    ids = [a.agency_id for a in agencies]
    tf_ids = [t.task_force_id for t in task_forces]
    for what, values in (("country", codes), ("agency", ids), ("task force", tf_ids)):
        if len(set(values)) != len(values):
            raise PKIError(f"duplicate {what} in directory input")
    for agency in agencies:
        if agency.country not in codes:
            raise PKIError(f"{agency.agency_id}: country {agency.country} is not in the directory")
        if agency.kind not in AGENCY_KINDS:
            raise PKIError(f"{agency.agency_id}: unknown kind {agency.kind!r}")
    for tf in task_forces:
        missing = sorted(set(tf.members) - set(ids))
        if missing or not tf.members:
            raise PKIError(f"{tf.task_force_id}: members not in the directory: {missing}")
    document = {
        "v": DIRECTORY_VERSION,
        "federation": federation,
        "serial": serial,
        "issued_at": _format_time(issued_at),
        "next_update": _format_time(next_update),
        "root_sha256": root_fingerprint(root.cert),
        "countries": [_country_json(c) for c in sorted(countries, key=lambda c: c.code)],
        "agencies": [_agency_json(a) for a in sorted(agencies, key=lambda a: a.agency_id)],
        "task_forces": [
            {"id": t.task_force_id, "name": t.name, "members": sorted(t.members)}
            for t in sorted(task_forces, key=lambda t: t.task_force_id)
        ],
    }
    token = jose.sign_compact(
        canonical.dumps(document), root.key, kid=root_kid(root.cert), typ=DIRECTORY_TYP
    )
    return token.encode("ascii")


def _country_json(country: CountryEntry) -> dict[str, Any]:
    return {
        "code": country.code,
        "name": country.name,
        "eu": country.eu,
        "ca_cert": _b64(country.ca_cert.public_bytes(Encoding.DER)),
        "crl": _b64(country.crl.public_bytes(Encoding.DER)),
    }


def _agency_json(agency: AgencyEntry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": agency.agency_id,
        "country": agency.country,
        "kind": agency.kind,
        "name": agency.name,
        "signing_cert": _b64(agency.signing_cert.public_bytes(Encoding.DER)),
        "agreement_cert": _b64(agency.agreement_cert.public_bytes(Encoding.DER)),
    }
    if agency.tls_cert is not None:
        out["tls_cert"] = _b64(agency.tls_cert.public_bytes(Encoding.DER))
    return out


# ---------------------------------------------------------------- strict parsing ---


def _obj(
    value: object, members: frozenset[str], what: str, optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{what} must be an object")
    missing = sorted(members - set(value))
    extra = sorted(set(value) - members - optional)
    if missing or extra:
        raise _invalid(f"{what}: missing {missing}, unexpected {extra}")
    return value


def _str(value: object, what: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise _invalid(f"{what} must be a non-empty string of at most {MAX_TEXT} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise _invalid(f"{what} {value!r} is malformed")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _invalid(f"{what} must be a list")
    return value


def _time(value: object, what: str) -> datetime:
    text = _str(value, what)
    if not _TIME_RE.fullmatch(text):
        raise _invalid(f"{what} must be YYYY-MM-DDTHH:MM:SSZ")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(f"{what} is not a valid time") from None


def _unique(ids: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise _invalid(f"duplicate {what} {item!r}")
        seen.add(item)


def _der(value: str, what: str) -> bytes:
    """Strict standard base64; CERT_INVALID (an entry-level fault, not a document-level one)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidMessage(Reason.CERT_INVALID, f"{what} is not base64") from None
    if _b64(raw) != value:
        raise InvalidMessage(Reason.CERT_INVALID, f"{what} is not canonical base64")
    return raw


def _cert(value: str, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(_der(value, what))
    except ValueError:
        raise InvalidMessage(Reason.CERT_INVALID, f"{what} is not a DER certificate") from None


def _crl(value: str, what: str) -> x509.CertificateRevocationList:
    try:
        return x509.load_der_x509_crl(_der(value, what))
    except ValueError:
        raise InvalidMessage(Reason.DIRECTORY_INVALID, f"{what} is not a DER CRL") from None


@dataclass(frozen=True, kw_only=True, slots=True)
class _Document:
    """The verified document, shape-checked; certificate contents not yet validated."""

    federation: str
    serial: int
    issued_at: datetime
    next_update: datetime
    root_sha256: str
    countries: tuple[dict[str, Any], ...]
    agencies: tuple[dict[str, Any], ...]
    task_forces: tuple[TaskForce, ...]


def _parse_document(payload: bytes) -> _Document:
    """Shape-check a verified payload; DIRECTORY_INVALID for anything off."""
    try:
        raw = canonical.loads_strict(payload, what="directory")
    except InvalidMessage as exc:
        raise _invalid(exc.detail) from None
    doc = _obj(raw, _TOP, "directory")
    if doc["v"] != DIRECTORY_VERSION or isinstance(doc["v"], bool):
        raise _invalid(f"directory version {doc['v']!r} is not supported")
    serial = doc["serial"]
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 1:
        raise _invalid("directory serial must be a positive integer")
    countries = []
    for item in _list(doc["countries"], "countries"):
        country = _obj(item, _COUNTRY, "country")
        _str(country["code"], "country code", COUNTRY_RE)
        _str(country["name"], "country name")
        if not isinstance(country["eu"], bool):
            raise _invalid("country eu must be a boolean")
        _str_blob(country["ca_cert"], "country ca_cert")
        _str_blob(country["crl"], "country crl")
        countries.append(country)
    agencies = []
    for item in _list(doc["agencies"], "agencies"):
        agency = _obj(item, _AGENCY, "agency", _AGENCY_OPTIONAL)
        agency_id = _str(agency["id"], "agency id", AGENCY_RE)
        if TASK_FORCE_RE.fullmatch(agency_id) or agency["country"] != agency_country(agency_id):
            raise _invalid(f"agency {agency_id!r} does not belong to country {agency['country']!r}")
        _str(agency["kind"], "agency kind")
        _str(agency["name"], "agency name")
        for member in ("signing_cert", "agreement_cert", "tls_cert"):
            if member in agency:
                _str_blob(agency[member], f"agency {member}")
        agencies.append(agency)
    task_forces = []
    for item in _list(doc["task_forces"], "task_forces"):
        raw_tf = _obj(item, _TASK_FORCE, "task force")
        members = _list(raw_tf["members"], "task force members")
        if not members or len(members) > MAX_RECIPIENTS:
            raise _invalid(f"a task force has 1..{MAX_RECIPIENTS} members")
        task_forces.append(
            TaskForce(
                task_force_id=_str(raw_tf["id"], "task force id", TASK_FORCE_RE),
                name=_str(raw_tf["name"], "task force name"),
                members=tuple(sorted(_str(m, "task force member", AGENCY_RE) for m in members)),
            )
        )
    _unique((c["code"] for c in countries), "country")
    _unique((a["id"] for a in agencies), "agency")
    _unique((t.task_force_id for t in task_forces), "task force")
    for tf in task_forces:
        _unique(tf.members, f"member of {tf.task_force_id}")
    return _Document(
        federation=_str(doc["federation"], "federation", FEDERATION_RE),
        serial=serial,
        issued_at=_time(doc["issued_at"], "issued_at"),
        next_update=_time(doc["next_update"], "next_update"),
        root_sha256=_str(doc["root_sha256"], "root_sha256"),
        countries=tuple(countries),
        agencies=tuple(agencies),
        task_forces=tuple(task_forces),
    )


def _str_blob(value: object, what: str) -> str:
    """A base64 member: a string, possibly long (certificates exceed MAX_TEXT)."""
    if not isinstance(value, str) or not value:
        raise _invalid(f"{what} must be a non-empty string")
    return value


# ---------------------------------------------------------------------- loading ---


def _verify_signature(
    signed: bytes, root_cert: x509.Certificate, root_key: ec.EllipticCurvePublicKey
) -> bytes:
    """Check size, header, kid and signature against the pinned root; the verified payload."""
    if len(signed) > MAX_DIRECTORY_BYTES:
        raise _invalid(f"directory larger than {MAX_DIRECTORY_BYTES} bytes")
    try:
        token = signed.decode("ascii").strip()
        unverified = jose.parse_compact(token, typ=DIRECTORY_TYP, what="directory")
    except (UnicodeDecodeError, InvalidMessage) as exc:
        raise _invalid(f"directory is not a valid JWS: {exc}") from None
    if unverified.kid != root_kid(root_cert):
        raise _invalid("directory is signed by another root than the pinned root", step=3)
    try:
        return jose.verify_compact(unverified, root_key, what="directory")
    except InvalidMessage:
        raise _invalid("directory signature does not verify with the pinned root", step=4) from None


def _check_document(
    document: _Document,
    validator: FederationValidator,
    root_cert: x509.Certificate,
    *,
    now: datetime,
    min_serial: int,
) -> None:
    """Directory checks 6-9 (section 9.4): federation and root, times, freshness, serial."""
    if document.federation != validator.federation_id:
        raise _invalid(f"directory is for federation {document.federation!r}", step=6)
    if document.root_sha256 != root_fingerprint(root_cert):
        raise _invalid("directory names another root certificate", step=6)
    if document.next_update <= document.issued_at:
        raise _invalid("directory next_update is not after issued_at", step=7)
    if document.issued_at > now + CLOCK_SKEW:
        raise _invalid("directory is issued in the future", step=7)
    if now > document.next_update:
        stale = InvalidMessage(
            Reason.DIRECTORY_STALE, f"directory expired at {document.next_update.isoformat()}"
        )
        stale.step = 8
        raise stale
    if document.serial < min_serial:
        older = InvalidMessage(
            Reason.DIRECTORY_STALE, f"directory serial {document.serial} is older than {min_serial}"
        )
        older.step = 9
        raise older


class Directory:
    """A verified, loaded federation directory; the production :class:`KeyResolver`.

    Construct with :meth:`load`. Every lookup re-checks freshness at its ``now``: past the
    directory's or the country CRL's ``next_update`` -> DIRECTORY_STALE; outside any
    certificate's validity (agency, country CA, root) -> CERT_INVALID.
    """

    def __init__(
        self,
        *,
        root_cert: x509.Certificate,
        document: _Document,
        countries: Mapping[str, tuple[CountryInfo, x509.Certificate]],
        agencies: Mapping[str, _Agency],
        refused: Mapping[str, tuple[Reason, str]],
        refused_kids: Mapping[str, tuple[Reason, str]],
        refused_countries: Mapping[str, tuple[Reason, str]],
        revoked: Iterable[str],
        problems: Sequence[DirectoryProblem],
    ) -> None:
        self._root_cert = root_cert
        self._doc = document
        self._countries = dict(countries)
        self._agencies = dict(agencies)
        self._by_kid = {a.keys.signing_kid: a for a in self._agencies.values()}
        self._refused = dict(refused)
        self._refused_kids = dict(refused_kids)
        self._refused_countries = dict(refused_countries)
        self._revoked = tuple(sorted(revoked))
        self._problems = tuple(problems)
        self._task_forces = {t.task_force_id: t for t in document.task_forces}

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        signed: bytes,
        *,
        root_cert: x509.Certificate,
        now: datetime,
        min_serial: int = 0,
    ) -> Directory:
        """Verify and load a signed directory against the pinned ``root_cert`` at ``now``.

        ``min_serial``: the highest serial already accepted, to refuse a replayed older
        directory (DIRECTORY_STALE). See the module docstring for the failure model.
        """
        try:
            validator = FederationValidator(root_cert, now=now)
        except InvalidMessage as exc:
            raise _invalid(f"pinned root: {exc.detail}", step=1) from None
        try:
            payload = _verify_signature(signed, root_cert, validator.root_key)
        except InvalidMessage as exc:
            exc.step = exc.step or 2
            raise
        try:
            document = _parse_document(payload)
        except InvalidMessage as exc:
            exc.step = 5
            raise
        _check_document(document, validator, root_cert, now=now, min_serial=min_serial)
        return _Loader(validator, root_cert, document).build()

    # ---------------------------------------------------------- KeyResolver API

    @property
    def federation_id(self) -> str:
        return self._doc.federation

    def agency(self, agency_id: str, *, now: datetime) -> AgencyKeys:
        """The agency's keys (see :meth:`KeyResolver.agency` for the reasons raised)."""
        self._check_fresh(now)
        entry = self._agencies.get(agency_id)
        if entry is None:
            refused = self._refused.get(agency_id)
            if refused is not None:
                raise InvalidMessage(*refused)
            raise InvalidMessage(Reason.UNKNOWN_RECIPIENT, f"unknown agency {agency_id!r}")
        return self._live(entry, now)

    def signing_key(self, kid: str, *, now: datetime) -> AgencyKeys:
        """The agency whose signing certificate has key id ``kid``."""
        self._check_fresh(now)
        entry = self._by_kid.get(kid)
        if entry is None:
            refused = self._refused_kids.get(kid)
            if refused is not None:
                raise InvalidMessage(*refused)
            raise InvalidMessage(Reason.UNKNOWN_SENDER, f"unknown signing key {kid!r}")
        return self._live(entry, now)

    def task_force(self, task_force_id: str, *, now: datetime) -> tuple[str, ...]:
        """Member agency ids of a task force, sorted (members are resolved separately)."""
        self._check_fresh(now)
        found = self._task_forces.get(task_force_id)
        if found is None:
            raise InvalidMessage(Reason.UNKNOWN_RECIPIENT, f"unknown task force {task_force_id!r}")
        return found.members

    def _check_fresh(self, now: datetime) -> None:
        if now > self._doc.next_update:
            raise InvalidMessage(
                Reason.DIRECTORY_STALE,
                f"directory expired at {self._doc.next_update.isoformat()}",
            )

    @staticmethod
    def _live(entry: _Agency, now: datetime) -> AgencyKeys:
        if now > entry.crl_next_update:
            raise InvalidMessage(
                Reason.DIRECTORY_STALE, f"{entry.keys.country} CRL expired, revocation unknown"
            )
        if not entry.valid_from <= now <= entry.valid_until:
            raise InvalidMessage(
                Reason.CERT_INVALID, f"{entry.keys.agency_id}: a certificate is not valid now"
            )
        return entry.keys

    # ------------------------------------------------------------------ accessors

    @property
    def serial(self) -> int:
        return self._doc.serial

    @property
    def issued_at(self) -> datetime:
        return self._doc.issued_at

    @property
    def next_update(self) -> datetime:
        return self._doc.next_update

    def crl_next_updates(self) -> dict[str, datetime]:
        """Per country, when its CRL (as used for its accepted agencies) passes ``next_update``.

        Countries without an accepted agency are absent. For the expiry metrics and alerts.
        """
        found: dict[str, datetime] = {}
        for agency_id, entry in self._agencies.items():
            code = agency_country(agency_id)
            if code not in found or entry.crl_next_update < found[code]:
                found[code] = entry.crl_next_update
        return found

    @property
    def root_cert(self) -> x509.Certificate:
        return self._root_cert

    @property
    def problems(self) -> tuple[DirectoryProblem, ...]:
        """Entries skipped at load (invalid certificates, bad or stale CRLs), in document order."""
        return self._problems

    def statuses(self) -> tuple[AgencyStatus, ...]:
        """Every agency the document lists, accepted or not, sorted by id (for inspection)."""
        out = []
        for raw in self._doc.agencies:
            refused = self._refused.get(raw["id"])
            out.append(
                AgencyStatus(
                    agency_id=raw["id"],
                    country=raw["country"],
                    kind=raw["kind"],
                    name=raw["name"],
                    reason=None if refused is None else refused[0],
                    detail="" if refused is None else refused[1],
                )
            )
        return tuple(sorted(out, key=lambda a: a.agency_id))

    def revoked_agencies(self) -> tuple[str, ...]:
        """Ids of agencies whose certificates the CRLs revoke (lookups: SENDER_REVOKED)."""
        return self._revoked

    def countries(self) -> tuple[CountryInfo, ...]:
        """The countries whose CA validated, sorted by code."""
        return tuple(info for info, _ in sorted(self._countries.values(), key=lambda c: c[0].code))

    def country_ca(self, cc: str) -> x509.Certificate:
        """The validated CA certificate of country ``cc`` (e.g. to verify its policy file)."""
        found = self._countries.get(cc)
        if found is None:
            refused = self._refused_countries.get(cc)
            if refused is not None:
                raise InvalidMessage(*refused)
            raise InvalidMessage(Reason.UNKNOWN_SENDER, f"unknown country {cc!r}")
        return found[1]

    def agency_kind(self, agency_id: str) -> str:
        """The kind (one of AGENCY_KINDS) of an accepted agency; fails closed like lookups."""
        entry = self._agencies.get(agency_id)
        if entry is None:
            refused = self._refused.get(agency_id)
            if refused is not None:
                raise InvalidMessage(*refused)
            raise InvalidMessage(Reason.UNKNOWN_RECIPIENT, f"unknown agency {agency_id!r}")
        return entry.keys.kind

    def agency_tls_cert(self, agency_id: str) -> x509.Certificate | None:
        """The TLS client certificate listed for an accepted agency, if any."""
        entry = self._agencies.get(agency_id)
        return None if entry is None else entry.tls_cert

    def agencies(self, country: str | None = None) -> tuple[AgencyKeys, ...]:
        """Accepted (valid, not revoked) agencies, optionally of one country, sorted by id."""
        return tuple(
            entry.keys
            for agency_id, entry in sorted(self._agencies.items())
            if country is None or entry.keys.country == country
        )

    def task_forces(self) -> tuple[TaskForce, ...]:
        """All task forces, sorted by id."""
        return tuple(self._task_forces[k] for k in sorted(self._task_forces))


def _agency_certs(raw: Mapping[str, Any]) -> dict[CertUsage, x509.Certificate]:
    agency_id: str = raw["id"]
    members = {
        CertUsage.SIGNING: "signing_cert",
        CertUsage.AGREEMENT: "agreement_cert",
        CertUsage.TLS_CLIENT: "tls_cert",
    }
    return {
        usage: _cert(raw[member], f"{agency_id} {member}")
        for usage, member in members.items()
        if member in raw
    }


class _Loader:
    """Validates the entries of a verified document and assembles a :class:`Directory`."""

    def __init__(
        self, validator: FederationValidator, root_cert: x509.Certificate, document: _Document
    ) -> None:
        self._v = validator
        self._root = root_cert
        self._doc = document
        self._problems: list[DirectoryProblem] = []
        self._countries: dict[str, tuple[CountryInfo, x509.Certificate]] = {}
        self._crls: dict[str, RevocationStatus] = {}
        self._refused_countries: dict[str, tuple[Reason, str]] = {}
        # Agencies of a country whose CRL is unusable inherit this reason.
        self._country_fault: dict[str, tuple[Reason, str]] = {}
        self._agencies: dict[str, _Agency] = {}
        self._refused: dict[str, tuple[Reason, str]] = {}
        self._refused_kids: dict[str, tuple[Reason, str]] = {}
        self._revoked: list[str] = []

    def build(self) -> Directory:
        for country in self._doc.countries:
            self._load_country(country)
        for agency in self._doc.agencies:
            self._load_agency(agency)
        known = {a["id"] for a in self._doc.agencies}
        task_forces = []
        for tf in self._doc.task_forces:
            missing = sorted(set(tf.members) - known)
            if missing:
                self._problem(
                    f"task force {tf.task_force_id}",
                    Reason.DIRECTORY_INVALID,
                    f"unknown members {missing}",
                )
            else:
                task_forces.append(tf)
        return Directory(
            root_cert=self._root,
            document=replace(self._doc, task_forces=tuple(task_forces)),
            countries=self._countries,
            agencies=self._agencies,
            refused=self._refused,
            refused_kids=self._refused_kids,
            refused_countries=self._refused_countries,
            revoked=self._revoked,
            problems=self._problems,
        )

    def _problem(self, entry: str, reason: Reason, detail: str) -> None:
        self._problems.append(DirectoryProblem(entry=entry, reason=reason, detail=detail))

    def _load_country(self, raw: Mapping[str, Any]) -> None:
        code: str = raw["code"]
        try:
            ca = self._country_ca(raw)
        except InvalidMessage as exc:
            self._refused_countries[code] = (exc.reason, exc.detail)
            self._country_fault[code] = (exc.reason, f"country {code}: {exc.detail}")
            self._problem(f"country {code}", exc.reason, exc.detail)
            return
        self._countries[code] = (CountryInfo(code=code, name=raw["name"], eu=raw["eu"]), ca)
        try:
            self._crls[code] = self._v.crl(_crl(raw["crl"], f"{code} CRL"), ca)
        except InvalidMessage as exc:
            # The CA stays usable (e.g. for policy files); its agencies' revocation status is
            # unknown, so they fail closed.
            self._country_fault[code] = (exc.reason, exc.detail)
            self._problem(f"country {code} CRL", exc.reason, exc.detail)

    def _country_ca(self, raw: Mapping[str, Any]) -> x509.Certificate:
        code: str = raw["code"]
        ca = _cert(raw["ca_cert"], f"{code} CA")
        if self._v.country_ca(ca) != code:
            raise InvalidMessage(Reason.CERT_INVALID, f"{code} entry holds another country's CA")
        return ca

    def _load_agency(self, raw: Mapping[str, Any]) -> None:
        agency_id: str = raw["id"]
        try:
            certs = _agency_certs(raw)
        except InvalidMessage as exc:
            self._refuse(agency_id, (), exc)
            return
        kids = (cert_kid(agency_id, certs[CertUsage.SIGNING]),)
        try:
            self._accept(agency_id, raw, certs, self._validate_agency(raw, certs))
        except InvalidMessage as exc:
            self._refuse(agency_id, kids, exc)

    def _refuse(self, agency_id: str, kids: Iterable[str], exc: InvalidMessage) -> None:
        self._refused[agency_id] = (exc.reason, exc.detail)
        for kid in kids:
            self._refused_kids[kid] = (exc.reason, exc.detail)
        if exc.reason is Reason.SENDER_REVOKED:
            self._revoked.append(agency_id)
        else:
            self._problem(f"agency {agency_id}", exc.reason, exc.detail)

    def _validate_agency(
        self, raw: Mapping[str, Any], certs: Mapping[CertUsage, x509.Certificate]
    ) -> dict[CertUsage, AgencyCertInfo]:
        country: str = raw["country"]
        fault = self._country_fault.get(country)
        if fault is not None:
            raise InvalidMessage(*fault)
        if country not in self._countries:
            raise InvalidMessage(Reason.CERT_INVALID, f"country {country} is not in the directory")
        ca = self._countries[country][1]
        infos = {usage: self._v.agency_cert(c, ca, usage=usage) for usage, c in certs.items()}
        self._check_entry(raw, infos)
        return infos

    def _check_entry(
        self, raw: Mapping[str, Any], infos: Mapping[CertUsage, AgencyCertInfo]
    ) -> None:
        agency_id = raw["id"]
        for info in infos.values():
            if (info.agency_id, info.kind, info.name) != (agency_id, raw["kind"], raw["name"]):
                raise InvalidMessage(
                    Reason.CERT_INVALID,
                    f"{agency_id}: {info.usage.value} certificate names "
                    f"{info.agency_id}/{info.kind}/{info.name!r}, not the directory entry",
                )
        status = self._crls[raw["country"]]
        for info in infos.values():
            if status.is_revoked(info.serial):
                raise InvalidMessage(
                    Reason.SENDER_REVOKED, f"{agency_id}: {info.usage.value} certificate revoked"
                )

    def _accept(
        self,
        agency_id: str,
        raw: Mapping[str, Any],
        certs: Mapping[CertUsage, x509.Certificate],
        infos: Mapping[CertUsage, AgencyCertInfo],
    ) -> None:
        country = raw["country"]
        ca = self._countries[country][1]
        signing, agreement = certs[CertUsage.SIGNING], certs[CertUsage.AGREEMENT]
        keys = AgencyKeys(
            agency_id=agency_id,
            country=country,
            kind=raw["kind"],
            name=raw["name"],
            signing_kid=cert_kid(agency_id, signing),
            signing_key=infos[CertUsage.SIGNING].public_key,
            agreement_kid=cert_kid(agency_id, agreement),
            agreement_key=infos[CertUsage.AGREEMENT].public_key,
        )
        chain = (*certs.values(), ca, self._root)
        self._agencies[agency_id] = _Agency(
            keys=keys,
            valid_from=max(c.not_valid_before_utc for c in chain),
            valid_until=min(c.not_valid_after_utc for c in chain),
            crl_next_update=self._crls[country].next_update,
            tls_cert=certs.get(CertUsage.TLS_CLIENT),
        )
