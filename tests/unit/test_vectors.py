"""Replays the published protocol test vectors (tests/vectors/, docs/protocol.md section 11)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from broker.core.envelope import RecipientIdentity, open_message
from broker.core.replay import MemoryReplayStore
from broker.errors import CasebridgeError
from broker.loaders import load_schema_registry
from tests.vectors.generate import load_keys, private_keys, resolver_from

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
VALID = sorted(VECTORS.glob("valid-*.json"))
INVALID = sorted(VECTORS.glob("invalid-*.json"))
KEYS = load_keys()
RESOLVER = resolver_from(KEYS)
REGISTRY = load_schema_registry()


def _open(doc: dict[str, Any]) -> Any:
    agency = doc["recipient"]
    _, agreement = private_keys(KEYS[agency])
    return open_message(
        doc["wire"].encode(),
        recipient=RecipientIdentity(
            agency_id=agency, agreement_kid=KEYS[agency]["agreement_kid"], agreement_key=agreement
        ),
        resolver=RESOLVER,
        replay=MemoryReplayStore(),
        validator=REGISTRY,
        now=datetime.fromisoformat(doc["now"]),
    )


def test_vector_set_is_complete() -> None:
    """The repository ships both valid and invalid vectors, and their key file says test-only."""
    assert len(VALID) >= 3
    assert len(INVALID) >= 10
    assert "TEST-ONLY" in json.loads((VECTORS / "keys.json").read_text())["warning"]


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_vector_opens(path: Path) -> None:
    """Each valid vector opens to exactly the expected header, body and digest."""
    doc = json.loads(path.read_text())
    opened = _open(doc)
    assert opened.header.to_json() == doc["header"]
    assert opened.body == doc["body"]
    assert opened.routed.digest == doc["digest"]


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_vector_is_refused_with_its_reason(path: Path) -> None:
    """Each invalid vector is refused with the reason code it names."""
    doc = json.loads(path.read_text())
    with pytest.raises(CasebridgeError) as info:
        _open(doc)
    assert info.value.reason.value == doc["reason"]


def test_vector_key_ids_are_certificate_thumbprints() -> None:
    """keys.json kids follow the one definition: <agency>#base64url(SHA-256(cert DER))."""
    import base64
    import hashlib

    for agency, entry in KEYS.items():
        for usage in ("signing", "agreement"):
            der = base64.b64decode(entry[f"{usage}_cert"])
            thumb = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
            assert entry[f"{usage}_kid"] == f"{agency}#{thumb}"
            assert "kid" not in entry[f"{usage}_jwk"]
