"""What the envelope needs to know about agencies, and where it gets it: the ``KeyResolver`` seam.

The production resolver is the verified federation directory (``broker.core.directory``); tests
may use :class:`StaticResolver`. A resolver never fetches anything: keys come only from the
signed directory that was loaded and verified against the pinned federation root.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from broker.core.jose import b64url_encode
from broker.errors import InvalidMessage, Reason

AGENCY_KINDS = (
    "law_enforcement",
    "prosecutor",
    "judiciary",
    "labour_inspectorate",
    "border_guard",
    "ngo",
    "shelter",
    "social_services",
    "national_rapporteur",
    "international_organisation",
    "gateway",  # a country's border gateway: signs evidence, connects with its own TLS cert
)
# The kind of a border gateway's entry: it sends evidence but is never a message's recipient.
GATEWAY_KIND: Final = "gateway"


def cert_kid(agency_id: str, cert: x509.Certificate) -> str:
    """Key id of an agency certificate: ``<agency_id>#<base64url(SHA-256(cert DER))>``."""
    return f"{agency_id}#{b64url_encode(cert.fingerprint(hashes.SHA256()))}"


@dataclass(frozen=True, kw_only=True, slots=True)
class AgencyKeys:
    """The public keys and facts the federation directory vouches for, for one agency."""

    agency_id: str
    country: str
    kind: str
    name: str
    # key id (``kid``) of the signing certificate: "<agency_id>#<sha256 thumbprint, base64url>"
    signing_kid: str
    signing_key: ec.EllipticCurvePublicKey
    agreement_kid: str
    agreement_key: ec.EllipticCurvePublicKey


class KeyResolver(Protocol):
    """Looks agencies and task forces up in trusted (already verified) federation data."""

    @property
    def federation_id(self) -> str: ...

    def agency(self, agency_id: str, *, now: datetime) -> AgencyKeys:
        """The agency's current keys.

        Raises ``InvalidMessage`` with UNKNOWN_SENDER/UNKNOWN_RECIPIENT, SENDER_REVOKED,
        CERT_INVALID (expired, wrong chain, wrong country) or DIRECTORY_STALE.
        """
        ...

    def signing_key(self, kid: str, *, now: datetime) -> AgencyKeys:
        """The agency whose signing certificate has key id ``kid``."""
        ...

    def task_force(self, task_force_id: str, *, now: datetime) -> tuple[str, ...]:
        """Member agency ids of a task force, sorted."""
        ...


class StaticResolver:
    """An in-memory resolver over a fixed set of agencies (tests, benchmarks, the offline demo)."""

    def __init__(
        self,
        federation_id: str,
        agencies: Iterable[AgencyKeys],
        task_forces: Mapping[str, Iterable[str]] | None = None,
        revoked: Iterable[str] = (),
    ) -> None:
        self._fed = federation_id
        self._by_id = {a.agency_id: a for a in agencies}
        self._by_kid = {a.signing_kid: a for a in self._by_id.values()}
        self._tf = {k: tuple(sorted(v)) for k, v in (task_forces or {}).items()}
        self._revoked = frozenset(revoked)

    @property
    def federation_id(self) -> str:
        return self._fed

    def agency(self, agency_id: str, *, now: datetime) -> AgencyKeys:
        del now
        found = self._by_id.get(agency_id)
        if found is None:
            raise InvalidMessage(Reason.UNKNOWN_RECIPIENT, f"unknown agency {agency_id!r}")
        if found.signing_kid in self._revoked:
            raise InvalidMessage(Reason.SENDER_REVOKED, f"{agency_id} is revoked")
        return found

    def signing_key(self, kid: str, *, now: datetime) -> AgencyKeys:
        del now
        found = self._by_kid.get(kid)
        if found is None:
            raise InvalidMessage(Reason.UNKNOWN_SENDER, f"unknown signing key {kid!r}")
        if kid in self._revoked:
            raise InvalidMessage(Reason.SENDER_REVOKED, f"signing key {kid!r} is revoked")
        return found

    def task_force(self, task_force_id: str, *, now: datetime) -> tuple[str, ...]:
        del now
        try:
            return self._tf[task_force_id]
        except KeyError:
            raise InvalidMessage(
                Reason.UNKNOWN_RECIPIENT, f"unknown task force {task_force_id!r}"
            ) from None
