"""The policy a node or border gateway runs on, and what happens when a new one is refused.

:class:`PolicyStore` holds the country's current :class:`~broker.core.policy.Policy`. Loading
a new signed policy file either replaces it or, if the file is unreadable, unsigned,
foreign-signed, schema-invalid, for another country, or older than the one in force
(rollback), leaves the last good policy in force and says so: a structured log line naming
every problem with its line, and the metrics below. It never raises on a bad file; it never
starts without a policy silently (``current`` is None until the first good load, and the
engine must then not be called: callers deny everything).

Metrics (registered on the caller's ``CollectorRegistry``; bounded labels only)::

    casebridge_policy_version_loaded            gauge   version in force (0: none)
    casebridge_policy_loaded_timestamp_seconds  gauge   when the policy in force was loaded
    casebridge_policy_last_load_ok              gauge   1 if the last attempt succeeded, else 0
    casebridge_policy_load_failures_total       counter by reason: unreadable, signature,
                                                        invalid, country, rollback
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge

from broker.core.policy import Policy, parse_policy
from broker.core.policy.signing import verify_policy_payload
from broker.errors import PolicyError, PolicyProblem


class LoadFailure(StrEnum):
    """Why a policy file was refused (the ``reason`` label of the failure counter)."""

    UNREADABLE = "unreadable"
    SIGNATURE = "signature"
    INVALID = "invalid"
    COUNTRY = "country"
    ROLLBACK = "rollback"


class PolicyStore:
    """Holds the policy in force for one country; keeps the last good one on a bad load."""

    def __init__(
        self,
        *,
        country: str,
        root_cert: x509.Certificate,
        registry: CollectorRegistry,
        logger: Any = None,
    ) -> None:
        self.country = country
        self._root_cert = root_cert
        self._current: Policy | None = None
        self._log = logger if logger is not None else structlog.get_logger("casebridge.policy")
        self._version = Gauge(
            "casebridge_policy_version_loaded",
            "Version of the policy in force (0 when none is loaded).",
            registry=registry,
        )
        self._loaded_at = Gauge(
            "casebridge_policy_loaded_timestamp_seconds",
            "Unix time at which the policy in force was loaded.",
            registry=registry,
        )
        self._last_ok = Gauge(
            "casebridge_policy_last_load_ok",
            "1 if the last policy load succeeded, 0 if it was refused.",
            registry=registry,
        )
        self._failures = Counter(
            "casebridge_policy_load_failures",
            "Policy files refused at load, by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in LoadFailure:
            self._failures.labels(reason=reason.value)

    @property
    def current(self) -> Policy | None:
        """The policy in force, or None if no good policy was ever loaded."""
        return self._current

    def load_file(self, path: Path | str, *, ca_cert: x509.Certificate, now: datetime) -> bool:
        """Load a signed policy file. True if it is now in force, False if it was refused."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            return self._refuse(
                LoadFailure.UNREADABLE, _error(str(path), exc.strerror or "unreadable")
            )
        return self.load_bytes(data, ca_cert=ca_cert, now=now, source=str(path))

    def load_bytes(
        self,
        signed: bytes | str,
        *,
        ca_cert: x509.Certificate,
        now: datetime,
        source: str = "<policy>",
    ) -> bool:
        """Load a signed policy (compact JWS). True if it is now in force, False if refused."""
        try:
            signer, payload = verify_policy_payload(
                signed, ca_cert=ca_cert, root_cert=self._root_cert, now=now, source=source
            )
        except PolicyError as exc:
            return self._refuse(LoadFailure.SIGNATURE, exc)
        try:
            policy = parse_policy(payload, source=source)
        except PolicyError as exc:
            return self._refuse(LoadFailure.INVALID, exc)
        if not policy.country == signer == self.country:
            why = f"policy for {policy.country} signed by {signer}; this node is in {self.country}"
            return self._refuse(LoadFailure.COUNTRY, _error(source, why))
        current = self._current
        if current is not None and (
            policy.version < current.version
            or (policy.version == current.version and policy.digest != current.digest)
        ):
            why = (
                f"version {policy.version} would replace version {current.version}"
                if policy.version < current.version
                else f"version {policy.version} is already in force with other content"
            )
            return self._refuse(LoadFailure.ROLLBACK, _error(source, why))
        self._current = policy
        self._version.set(policy.version)
        self._loaded_at.set(now.timestamp())
        self._last_ok.set(1)
        self._log.info(
            "policy_loaded",
            country=policy.country,
            version=policy.version,
            digest=policy.digest,
            rules=len(policy.rules),
            source=source,
        )
        return True

    def _refuse(self, reason: LoadFailure, exc: PolicyError) -> bool:
        self._failures.labels(reason=reason.value).inc()
        self._last_ok.set(0)
        current = self._current
        self._log.error(
            "policy_refused",
            reason=reason.value,
            source=exc.source,
            detail=exc.detail,
            problems=[{"line": p.line, "message": p.message} for p in exc.problems],
            keeping_version=current.version if current is not None else None,
            keeping_digest=current.digest if current is not None else None,
        )
        return False


def _error(source: str, message: str) -> PolicyError:
    return PolicyError(source, [PolicyProblem(line=None, message=message)])
