"""Published federation material: the signed directory and every country's signed policy.

What it is for: the names under which the secretariat and the countries publish their signed
documents into the federation (docs/federation.md, "Directory and policy distribution"), and
the decision whether a published document may replace the one in force. A gateway or node
feeds every document it reads from its country's ``PUBLISHED`` stream to :class:`Published`
and gets back a :class:`Change` (a new directory or policy to swap in) or a refusal with a
reason; the document in force is untouched by a refusal.

Rules (issue 14, section 9.4 of docs/protocol.md for the directory checks):

- a directory must verify against the pinned root, be unexpired, and have a serial **greater**
  than the one in force (an older one is refused even if valid: it could undo a revocation);
  the document in force published again is a no-op; another document under the same serial
  is refused;
- a policy must be signed by its own country's CA as listed in the directory in force
  (a policy signed by another country is refused), be valid, and not be older than the
  version in force (the same version with other content is refused too).

What it must never do: touch files, the network, the clock or metrics; trust anything it
has not verified (values not yet checked are named ``unverified_*``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final

from cryptography import x509

from broker.core.directory import Directory
from broker.core.policy import Policy, parse_policy
from broker.core.policy.signing import verify_policy_payload
from broker.errors import CasebridgeError, InvalidMessage, LocalError, PolicyError, Reason

# ------------------------------------------------------------------------- names ---

# Stream (in every country's JetStream domain) holding the directory and every policy.
PUBLISHED_STREAM: Final = "PUBLISHED"
# Stream on the hub (JetStream domain ``hub``) where the secretariat publishes directories.
HUB_DIRECTORY_STREAM: Final = "DIRECTORY"
HUB_DOMAIN: Final = "hub"
DIRECTORY_SUBJECT: Final = "cb.pub.directory"
POLICY_SUBJECTS: Final = "cb.pub.policy.*"
PUBLISHED_SUBJECTS: Final = "cb.pub.>"
# Deliver prefixes of the sourcing consumers for publications (distinct from ``cb.xd``, the
# message traffic, so the hub permissions can tell the two apart).
PUBLICATION_DELIVERY_ROOT: Final = "cb.xp"


def policy_subject(code: str) -> str:
    """Where country ``code`` publishes its signed policy: ``cb.pub.policy.<cc>``."""
    return f"cb.pub.policy.{code.lower()}"


def policy_country(subject: str) -> str | None:
    """The country code (upper case) of a policy subject, None for any other subject."""
    prefix = "cb.pub.policy."
    if not subject.startswith(prefix):
        return None
    code = subject[len(prefix) :]
    return code.upper() if len(code) == 2 and code.isalpha() else None


def publication_delivery_prefix(source: str, destination: str) -> str:
    """Deliver prefix of the sourcing consumer from ``source`` (a country or ``hub``) into
    ``destination``'s ``PUBLISHED`` stream: ``cb.xp.<source>.<destination>``."""
    return f"{PUBLICATION_DELIVERY_ROOT}.{source.lower()}.{destination.lower()}"


def content_id(data: bytes) -> str:
    """The ``Nats-Msg-Id`` of a publication: SHA-256 of its bytes (a republication of the
    same document is a JetStream duplicate)."""
    return hashlib.sha256(data.strip()).hexdigest()


# --------------------------------------------------------------------- decisions ---


class Refusal(StrEnum):
    """Why a published document was not put in force (a bounded metrics label)."""

    SIGNATURE = "signature"  # bad signature, wrong signer, not a signed document at all
    EXPIRED = "expired"  # directory past next_update
    ROLLBACK = "rollback"  # older than (or conflicting with) the one in force
    INVALID = "invalid"  # verified but not a valid document
    COUNTRY = "country"  # policy for another country than its subject / signer
    UNKNOWN = "unknown"  # a subject this node does not know


class PublicationRefused(LocalError):
    """A published document was refused; the one in force stays. A local fault (it is never
    answered with evidence to anybody): the reason is ``directory_invalid`` for a directory,
    ``config_invalid`` for a policy, and :attr:`refusal` says why."""

    def __init__(self, refusal: Refusal, detail: str, *, what: str) -> None:
        reason = Reason.DIRECTORY_INVALID if what == "directory" else Reason.CONFIG_INVALID
        super().__init__(reason, f"{what}: {detail}")
        self.refusal = refusal
        self.what = what


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """A verified document that replaces the one in force (``policy`` for ``country``)."""

    directory: Directory | None = None
    country: str | None = None
    policy: Policy | None = None
    signed: bytes = b""


@dataclass(kw_only=True, slots=True)
class Published:
    """What is in force: the directory (with the digest of its bytes) and the policies.

    Sans-io: :meth:`offer` is fed the bytes read from a subject and ``now``; it returns the
    :class:`Change` to apply (and applies it to this object), None when the document is the
    one in force already, or raises :class:`PublicationRefused`.
    """

    root_cert: x509.Certificate
    directory: Directory
    directory_digest: str = ""
    policies: dict[str, Policy] = field(default_factory=dict)

    def offer(self, subject: str, unverified: bytes, *, now: datetime) -> Change | None:
        """Check a published document against what is in force; see the module docstring."""
        if subject == DIRECTORY_SUBJECT:
            return self._directory(unverified, now=now)
        country = policy_country(subject)
        if country is None:
            raise PublicationRefused(Refusal.UNKNOWN, f"unknown subject {subject}", what=subject)
        return self._policy(country, unverified, now=now)

    def _directory(self, unverified: bytes, *, now: datetime) -> Change | None:
        digest = content_id(unverified)
        if digest == self.directory_digest:
            return None
        try:
            directory = Directory.load(
                unverified, root_cert=self.root_cert, now=now, min_serial=self.directory.serial
            )
        except InvalidMessage as exc:
            raise PublicationRefused(
                _directory_refusal(exc), exc.detail, what="directory"
            ) from None
        if directory.serial == self.directory.serial:
            if directory.issued_at == self.directory.issued_at:
                # The document in force, published again (e.g. the file a process started
                # from): nothing to do, and nothing refused.
                self.directory_digest = digest
                return None
            # Another document under the serial in force: never swap.
            raise PublicationRefused(
                Refusal.ROLLBACK,
                f"directory serial {directory.serial} is already in force",
                what="directory",
            )
        self.directory = directory
        self.directory_digest = digest
        return Change(directory=directory, signed=unverified)

    def _policy(self, country: str, unverified: bytes, *, now: datetime) -> Change | None:
        what = f"policy {country}"
        try:
            ca_cert = self.directory.country_ca(country)
        except CasebridgeError as exc:
            raise PublicationRefused(Refusal.COUNTRY, exc.detail, what=what) from None
        try:
            signer, payload = verify_policy_payload(
                unverified, ca_cert=ca_cert, root_cert=self.root_cert, now=now, source=what
            )
        except PolicyError as exc:
            raise PublicationRefused(Refusal.SIGNATURE, _policy_detail(exc), what=what) from None
        try:
            policy = parse_policy(payload, source=what)
        except PolicyError as exc:
            raise PublicationRefused(Refusal.INVALID, _policy_detail(exc), what=what) from None
        if not policy.country == signer == country:
            raise PublicationRefused(
                Refusal.COUNTRY,
                f"policy for {policy.country} signed by {signer}, published as {country}'s",
                what=what,
            )
        current = self.policies.get(country)
        if current is not None:
            if policy.version == current.version and policy.digest == current.digest:
                return None
            if policy.version <= current.version:
                raise PublicationRefused(
                    Refusal.ROLLBACK,
                    f"version {policy.version} would replace version {current.version}",
                    what=what,
                )
        self.policies[country] = policy
        return Change(country=country, policy=policy, signed=unverified)

    def peer_policies(self, own: str) -> Mapping[str, Policy]:
        """Every published policy but ``own`` country's (pre-flight and explain use them)."""
        return {c: p for c, p in self.policies.items() if c != own.upper()}


def _directory_refusal(exc: InvalidMessage) -> Refusal:
    step = getattr(exc, "step", None)
    if step == 9:
        return Refusal.ROLLBACK
    if step == 8:
        return Refusal.EXPIRED
    if step is not None and step >= 5:
        return Refusal.INVALID
    return Refusal.SIGNATURE


def _policy_detail(exc: PolicyError) -> str:
    return "; ".join(p.message for p in exc.problems) or exc.detail
