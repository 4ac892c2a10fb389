"""This project as an implementation under the conformance contract (docs/protocol.md 11.2).

Run ``python -m broker.conformance_impl`` (or ``casebridge conformance --serve``): it reads one
JSON request per line on stdin and writes one JSON answer per line on stdout, using only the
public facade :mod:`broker.protocol`. ``casebridge conformance --impl "python -m
broker.conformance_impl"`` therefore checks this implementation against the vectors.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import IO, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk

from broker import protocol
from broker.core.directory import Directory
from broker.core.policy import Federation, evaluate_recipient, parse_policy
from broker.core.replay import MemoryReplayStore
from broker.core.schemas import SchemaRegistry
from broker.errors import CasebridgeError


class _RacingReplayStore(MemoryReplayStore):
    """A replay store where another worker records every id between steps 13 and 19."""

    def remember(self, message_id: str, *, expires_at: int, now: datetime) -> bool:
        super().remember(message_id, expires_at=expires_at, now=now)
        return False


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@lru_cache(maxsize=1)
def _schemas() -> SchemaRegistry:
    return protocol.load_schemas()


@lru_cache(maxsize=32)
def _directory(signed: str, root_pem: str, loaded_at: str, min_serial: int) -> Directory:
    root = x509.load_pem_x509_certificate(root_pem.encode("ascii"))
    return protocol.load_directory(
        signed.encode("ascii", errors="replace"),
        root_cert=root,
        now=_time(loaded_at),
        min_serial=min_serial,
    )


def _agreement_key(data: dict[str, Any]) -> ec.EllipticCurvePrivateKey:
    key = jwk.JWK(**data).get_op_key("unwrapKey")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("agreement_jwk is not an EC private key")
    return key


def _policy(
    text: str | None, directory: Directory
) -> Callable[[protocol.OpenedMessage], None] | None:
    if text is None:
        return None
    policy = parse_policy(text.encode("utf-8"), source="vector policy")
    federation = Federation.from_directory(directory)

    def check(opened: protocol.OpenedMessage) -> None:
        evaluate_recipient(
            policy, opened.header, opened.body, federation=federation, schemas=_schemas()
        ).decision.raise_if_denied()

    return check


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """The answer of section 11.2 to one request."""
    now = _time(request["now"])
    role = request["role"]
    try:
        directory = _directory(
            request["directory"],
            request["root_cert_pem"],
            request["now"] if role == "directory" else request["directory_loaded_at"],
            int(request.get("min_serial", 0)),
        )
    except CasebridgeError as exc:
        return {"outcome": "refused", "reason": exc.reason.value, "step": exc.step}
    if role == "directory":
        return {"outcome": "accepted", "reason": None, "step": None}
    wire = base64.b64decode(request["wire_b64"])
    if role == "gateway":
        return protocol.check_routing(wire, directory=directory, now=now).to_json()
    recipient = request["recipient"]
    replay = _RacingReplayStore() if request.get("concurrent_accept") else MemoryReplayStore()
    for entry in request.get("replay", []):
        MemoryReplayStore.remember(replay, entry["id"], expires_at=entry["expires_at"], now=now)
    outcome = protocol.check(
        wire,
        recipient=protocol.RecipientIdentity(
            agency_id=recipient["agency"],
            agreement_kid=recipient["agreement_kid"],
            agreement_key=_agreement_key(recipient["agreement_jwk"]),
        ),
        directory=directory,
        schemas=_schemas(),
        now=now,
        policy=_policy(request.get("policy"), directory),
        replay=replay,
    )
    return outcome.to_json()


def serve(stdin: IO[str], stdout: IO[str]) -> int:
    """Answer requests line by line until stdin closes."""
    for line in stdin:
        if not line.strip():
            continue
        try:
            reply = answer(json.loads(line))
        except Exception as exc:  # noqa: BLE001 - an answer for every request, never a hang
            reply = {"outcome": "error", "reason": None, "step": None, "detail": repr(exc)}
        stdout.write(json.dumps(reply, ensure_ascii=False, sort_keys=True) + "\n")
        stdout.flush()
    return 0


def main() -> int:
    return serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    raise SystemExit(main())
