"""The file edge of the PKI: where keys, certificates, CRLs, the directory and state live on disk.

Layout of a PKI directory (default ``certs/dev/``; documented in ``certs/README.md``)::

    state.json                          federation id, countries, agencies, revocations, ...
    directory.jws                       the last signed federation directory
    root/ca.key, ca.pem                 federation root CA
    secretariat/ca.key, ca.pem          secretariat TLS CA (hub + leaf-node certificates)
    hub/hub.key, hub.pem, hub-chain.pem hub leaf-node listener (server) certificate
    countries/<cc>/ca.key, ca.pem       country CA;  crl.pem: its last CRL
                                        (ca.pkcs11 instead of ca.key: the key is in a token)
    countries/<cc>/server.*             the country's nats-server certificate
    countries/<cc>/leaf.*               the country server's client certificate towards the hub
    agencies/<id>/signing.*             message signing key + certificate
    agencies/<id>/agreement.*           key-agreement (decryption) key + certificate
    agencies/<id>/tls.*                 mTLS client key + certificate for the national server

``*.key``: PKCS#8 PEM, mode 0600, encrypted when ``CASEBRIDGE_KEY_PASSPHRASE`` is set (the dev
PKI may be unencrypted). ``*.pem``: the certificate; ``*-chain.pem``: certificate + issuing CA
(what a TLS server or client presents). Directories are created 0700.

This module only reads and writes; it decides nothing about what to issue (``broker.pki.issuing``)
and never prints. It must never log or print key material.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.core import canonical
from broker.core.pki import CertifiedKey
from broker.errors import ConfigError, InvalidMessage
from broker.pki.signer import Pkcs11Key, TokenAccess, TokenKeyRef

DEFAULT_DIR: Final = Path("certs/dev")
KEY_ENV_VAR: Final = "CASEBRIDGE_KEY_PASSPHRASE"
STATE_FILE: Final = "state.json"
DIRECTORY_FILE: Final = "directory.jws"
STATE_VERSION: Final = 1

ROOT: Final = "root/ca"
SECRETARIAT: Final = "secretariat/ca"
# The secretariat's client credential that alone may publish directories into the hub.
PUBLISHER: Final = "secretariat/publisher"
HUB: Final = "hub/hub"


def country_stem(code: str, what: str) -> str:
    """Path stem of a country file: ``countries/<cc>/<what>`` (what: ca, server, leaf)."""
    return f"countries/{code.lower()}/{what}"


def agency_stem(agency_id: str, what: str) -> str:
    """Path stem of an agency file: ``agencies/<id>/<what>`` (what: signing, agreement, tls)."""
    return f"agencies/{agency_id}/{what}"


# ------------------------------------------------------------------------ state ---


@dataclass(frozen=True, kw_only=True, slots=True)
class CountryRecord:
    """A country as the PKI operator created it."""

    code: str
    name: str
    eu: bool
    dns_domains: tuple[str, ...]
    ip_networks: tuple[str, ...] = ()
    allow_loopback: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Revocation:
    """One revoked certificate: in the CRL of ``country`` (its issuing CA)."""

    country: str
    serial: int
    revoked_at: datetime
    reason: str
    subject: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AgencyRecord:
    """An agency, the serials of its current certificates (by usage) and whether it is revoked."""

    agency_id: str
    kind: str
    name: str
    serials: Mapping[str, int]
    revoked: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskForceRecord:
    """A task force definition."""

    task_force_id: str
    name: str
    members: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreState:
    """Everything about the PKI that is not a key or certificate file."""

    federation_id: str
    hub_domains: tuple[str, ...]
    allow_loopback: bool
    directory_serial: int = 0
    countries: Mapping[str, CountryRecord] = field(default_factory=dict)
    agencies: Mapping[str, AgencyRecord] = field(default_factory=dict)
    revocations: tuple[Revocation, ...] = ()
    task_forces: Mapping[str, TaskForceRecord] = field(default_factory=dict)

    def with_country(self, record: CountryRecord) -> StoreState:
        return replace(self, countries={**self.countries, record.code: record})

    def with_agency(self, record: AgencyRecord) -> StoreState:
        return replace(self, agencies={**self.agencies, record.agency_id: record})

    def with_task_force(self, record: TaskForceRecord) -> StoreState:
        return replace(self, task_forces={**self.task_forces, record.task_force_id: record})

    def with_revocations(self, added: Sequence[Revocation]) -> StoreState:
        return replace(self, revocations=self.revocations + tuple(added))

    def with_directory_serial(self, serial: int) -> StoreState:
        return replace(self, directory_serial=serial)

    def without_task_force(self, task_force_id: str) -> StoreState:
        rest = {k: v for k, v in self.task_forces.items() if k != task_force_id}
        return replace(self, task_forces=rest)


def _time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def state_to_json(state: StoreState) -> dict[str, Any]:
    """The JSON form of ``state.json`` (serial numbers as hex strings)."""
    return {
        "version": STATE_VERSION,
        "federation": state.federation_id,
        "hub_domains": list(state.hub_domains),
        "allow_loopback": state.allow_loopback,
        "directory_serial": state.directory_serial,
        "countries": {
            c.code: {
                "name": c.name,
                "eu": c.eu,
                "dns_domains": list(c.dns_domains),
                "ip_networks": list(c.ip_networks),
                "allow_loopback": c.allow_loopback,
            }
            for c in state.countries.values()
        },
        "agencies": {
            a.agency_id: {
                "kind": a.kind,
                "name": a.name,
                "serials": {usage: f"{s:x}" for usage, s in a.serials.items()},
                "revoked": a.revoked,
            }
            for a in state.agencies.values()
        },
        "revocations": [
            {
                "country": r.country,
                "serial": f"{r.serial:x}",
                "revoked_at": _time(r.revoked_at),
                "reason": r.reason,
                "subject": r.subject,
            }
            for r in state.revocations
        ],
        "task_forces": {
            t.task_force_id: {"name": t.name, "members": list(t.members)}
            for t in state.task_forces.values()
        },
    }


def state_from_json(raw: object) -> StoreState:
    """Parse ``state.json``; ConfigError if it is not what :func:`state_to_json` writes."""
    if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
        raise ConfigError(f"{STATE_FILE}: not a version {STATE_VERSION} PKI state file")
    try:
        return StoreState(
            federation_id=str(raw["federation"]),
            hub_domains=tuple(raw["hub_domains"]),
            allow_loopback=bool(raw["allow_loopback"]),
            directory_serial=int(raw["directory_serial"]),
            countries={
                code: CountryRecord(
                    code=code,
                    name=c["name"],
                    eu=bool(c["eu"]),
                    dns_domains=tuple(c["dns_domains"]),
                    ip_networks=tuple(c["ip_networks"]),
                    allow_loopback=bool(c["allow_loopback"]),
                )
                for code, c in raw["countries"].items()
            },
            agencies={
                agency_id: AgencyRecord(
                    agency_id=agency_id,
                    kind=a["kind"],
                    name=a["name"],
                    serials={usage: int(s, 16) for usage, s in a["serials"].items()},
                    revoked=bool(a["revoked"]),
                )
                for agency_id, a in raw["agencies"].items()
            },
            revocations=tuple(
                Revocation(
                    country=r["country"],
                    serial=int(r["serial"], 16),
                    revoked_at=_parse_time(r["revoked_at"]),
                    reason=r["reason"],
                    subject=r["subject"],
                )
                for r in raw["revocations"]
            ),
            task_forces={
                tf_id: TaskForceRecord(
                    task_force_id=tf_id, name=t["name"], members=tuple(t["members"])
                )
                for tf_id, t in raw["task_forces"].items()
            },
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{STATE_FILE} is malformed: {exc!r}") from None


# ------------------------------------------------------------------------ store ---


class PkiStore:
    """One PKI directory on disk. Paths given to methods are relative to it."""

    def __init__(self, base: Path, *, passphrase: bytes | None = None) -> None:
        self.base = base
        self._passphrase = passphrase or None

    @classmethod
    def from_env(cls, base: Path) -> PkiStore:
        """A store whose keys are encrypted with ``$CASEBRIDGE_KEY_PASSPHRASE`` when it is set."""
        secret = os.environ.get(KEY_ENV_VAR, "")
        return cls(base, passphrase=secret.encode("utf-8") if secret else None)

    @property
    def encrypts_keys(self) -> bool:
        return self._passphrase is not None

    def path(self, relative: str) -> Path:
        return self.base / relative

    def exists(self) -> bool:
        return self.path(STATE_FILE).is_file()

    # -------------------------------------------------------------- raw writing

    def _write(self, relative: str, data: bytes, *, mode: int) -> Path:
        target = self.path(relative)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Write a sibling temp file with the final mode, then rename: a reader never sees a
        # half-written file and a key never exists on disk with wider permissions.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            Path(tmp).replace(target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                Path(tmp).unlink()
            raise
        return target

    def write_bytes(self, relative: str, data: bytes) -> Path:
        return self._write(relative, data, mode=0o644)

    def read_bytes(self, relative: str) -> bytes:
        try:
            return self.path(relative).read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"missing PKI file {self.path(relative)}") from None

    # ----------------------------------------------------------------- state

    def read_state(self) -> StoreState:
        if not self.exists():
            raise ConfigError(f"no PKI in {self.base} (run `casebridge pki init` first)")
        try:
            raw = canonical.loads_strict(self.read_bytes(STATE_FILE), what=STATE_FILE)
        except InvalidMessage as exc:
            raise ConfigError(f"{STATE_FILE}: {exc.detail}") from None
        return state_from_json(raw)

    def write_state(self, state: StoreState) -> None:
        # Indented, not canonical: operators read and diff this file.
        text = json.dumps(state_to_json(state), indent=2, sort_keys=True, ensure_ascii=False)
        self._write(STATE_FILE, text.encode("utf-8") + b"\n", mode=0o644)

    # ------------------------------------------------------- keys and certs

    def write_key(self, stem: str, key: ec.EllipticCurvePrivateKey) -> Path:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(self._passphrase)
            if self._passphrase
            else serialization.NoEncryption()
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        return self._write(f"{stem}.key", pem, mode=0o600)

    def write_token_ref(self, stem: str, ref: TokenKeyRef) -> Path:
        """``<stem>.pkcs11``: the key lives in a PKCS#11 token (no ``<stem>.key`` is kept)."""
        self.path(f"{stem}.key").unlink(missing_ok=True)
        return self.write_bytes(f"{stem}.pkcs11", ref.to_uri().encode("ascii") + b"\n")

    def has_key(self, stem: str) -> bool:
        """Whether this store holds the private key of ``stem`` (a file or a token reference)."""
        return self.path(f"{stem}.key").is_file() or self.path(f"{stem}.pkcs11").is_file()

    def read_key(self, stem: str) -> ec.EllipticCurvePrivateKey:
        """The key of ``stem``: in a token if ``<stem>.pkcs11`` names one, else the PEM file."""
        if self.path(f"{stem}.pkcs11").is_file():
            ref = TokenKeyRef.parse(self.read_bytes(f"{stem}.pkcs11").decode("ascii", "replace"))
            return Pkcs11Key.open(ref, TokenAccess.from_env())
        data = self.read_bytes(f"{stem}.key")
        try:
            key = serialization.load_pem_private_key(data, password=self._passphrase)
        except TypeError:
            raise ConfigError(
                f"{stem}.key is encrypted: set {KEY_ENV_VAR}"
                if self._passphrase is None
                else f"{stem}.key is not encrypted but {KEY_ENV_VAR} is set"
            ) from None
        except ValueError:
            raise ConfigError(f"{stem}.key cannot be decrypted or parsed") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{stem}.key is not an EC private key")
        return key

    def write_cert(
        self, stem: str, cert: x509.Certificate, chain: Sequence[x509.Certificate] = ()
    ) -> Path:
        """``<stem>.pem``; with ``chain`` also ``<stem>-chain.pem`` (cert then issuers)."""
        pem = cert.public_bytes(serialization.Encoding.PEM)
        if chain:
            full = pem + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
            self.write_bytes(f"{stem}-chain.pem", full)
        return self.write_bytes(f"{stem}.pem", pem)

    def read_cert(self, stem: str) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(self.read_bytes(f"{stem}.pem"))
        except ValueError:
            raise ConfigError(f"{stem}.pem is not a PEM certificate") from None

    def write_certified(
        self, stem: str, certified: CertifiedKey, chain: Sequence[x509.Certificate] = ()
    ) -> None:
        self.write_key(stem, certified.key)
        self.write_cert(stem, certified.cert, chain)

    def read_certified(self, stem: str) -> CertifiedKey:
        return CertifiedKey(key=self.read_key(stem), cert=self.read_cert(stem))

    def has(self, stem: str) -> bool:
        return self.path(f"{stem}.pem").is_file()

    def write_crl(self, code: str, crl: x509.CertificateRevocationList) -> Path:
        pem = crl.public_bytes(serialization.Encoding.PEM)
        return self.write_bytes(f"{country_stem(code, 'crl')}.pem", pem)
