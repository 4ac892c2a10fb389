"""A hostile agency with valid credentials, on real nats-server processes (issue 10).

The NGO FBS plays a compromised agency: it holds its real signing key and NATS identity and
publishes hand-made messages straight on its own ``cb.submit`` subject, bypassing its node.
Every case must be refused at the DE border with its documented reason code, be settled (no
redelivery loop, nothing left pending on its consumer, nothing routed to a subject nobody
reads), and leave honest traffic flowing.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest

from broker.core import jose
from broker.core import wire as s
from broker.core.envelope import INNER_TYP, JWE_TYP, OUTER_TYP
from broker.core.trust import cert_kid
from broker.pki.keyfiles import read_certificate, read_private_key
from tests.integration.conftest import run
from tests.integration.e2e_helpers import (
    DESCRIPTION,
    Running,
    bulletin,
    example,
    wait_until,
)

pytestmark = pytest.mark.integration

LKA: Final = "de.lka-berlin"
STA: Final = "de.sta-berlin"
FBS: Final = "de.fbs-berlin"
NPU: Final = "ua.npu"
TASK_FORCE: Final = "tf.eastern-route"
DELIVERY: Final = 20.0
WITH_TASK_FORCE: Final = DESCRIPTION | {
    "task_forces": [
        {"id": TASK_FORCE, "name": "Eastern route", "members": [FBS, LKA, NPU]},
    ]
}


def _json(value: Any) -> bytes:
    # What a hostile implementation may emit: sorted and compact, but ASCII-escaped, so a
    # lone surrogate goes out as a "\\ud800" escape (canonical.dumps would refuse to encode it).
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")


def _forge(
    fed: Running,
    *,
    encrypt_to: list[str],
    jwe_text: Callable[[str], str] = lambda jwe: jwe,
    **changes: Any,
) -> tuple[str, bytes]:
    """A message signed with FBS's real key, with header ``changes`` no honest node makes;
    encrypted to ``encrypt_to`` (real agreement keys from the directory). Returns (id, wire)."""
    keys = fed.fed.settings.client(FBS)
    kid = cert_kid(FBS, read_certificate(keys.signing_cert))
    signing_key = read_private_key(keys.signing_key)
    now = datetime.now(UTC)
    iat = int(now.timestamp())
    header: dict[str, Any] = {
        "v": 1,
        "fed": fed.fed.settings.federation_id,
        "id": str(uuid.uuid4()),
        "type": "bulletin",
        "type_version": 1,
        "conversation": str(uuid.uuid4()),
        "in_reply_to": None,
        "derived_from": None,
        "sender": {"agency": FBS, "country": "DE"},
        "recipients": [STA],
        "task_force": None,
        "countries": ["DE"],
        "handling": "H1",
        "tlp": "GREEN",
        "purpose": "prevention",
        "legal_basis": "Directive 2011/36/EU, Art. 18",
        "categories": [],
        "onward": {"allowed": False, "exclude": []},
        "iat": iat,
        "exp": iat + int(timedelta(days=7).total_seconds()),
        "due": None,
    } | changes
    directory = fed.directory()
    inner = jose.sign_compact(
        _json(
            {
                "header": header,
                "body": example("bulletin"),
                "salt": jose.b64url_encode(secrets.token_bytes(16)),
            }
        ),
        signing_key,
        kid=kid,
        typ=INNER_TYP,
    ).encode("ascii")
    recipients = [directory.agency(r, now=now) for r in encrypt_to]
    jwe = jwe_text(
        jose.encrypt_general(
            inner, [(k.agreement_kid, k.agreement_key) for k in recipients], typ=JWE_TYP
        )
    )
    outer = jose.sign_compact(
        _json(
            {
                "header": header,
                "jwe_sha256": jose.sha256_b64url(jwe.encode("utf-8")),
                "commitment": jose.sha256_b64url(inner),
            }
        ),
        signing_key,
        kid=kid,
        typ=OUTER_TYP,
    )
    wire = _json({"jwe": jwe, "outer": outer, "v": 1})
    return str(header["id"]), wire


def _pretty(jwe: str) -> str:
    return json.dumps(json.loads(jwe), indent=2, sort_keys=True)


def _v1() -> str:
    return str(uuid.uuid1())


# (case, header changes, encrypted to, JWE rewrite, reason the border must give)
CASES: Final[list[tuple[str, dict[str, Any], list[str], Callable[[str], str], str]]] = [
    ("lone surrogate", {"legal_basis": "Art. 18 x\ud800"}, [STA], str, "malformed"),
    (
        "lone surrogate abroad",
        {"legal_basis": "x\udfff", "recipients": [NPU], "countries": ["UA"]},
        [NPU],
        str,
        "malformed",
    ),
    ("trailing newline", {"recipients": [STA + "\n"]}, [STA], str, "header_invalid"),
    (
        "trailing newline abroad",
        {"recipients": [NPU + "\n"], "countries": ["UA"]},
        [NPU],
        str,
        "header_invalid",
    ),
    ("unknown recipient", {"recipients": ["de.nobody"]}, [STA], str, "unknown_recipient"),
    (
        "unknown recipient abroad",
        {"recipients": ["ua.nobody"], "countries": ["UA"]},
        [NPU],
        str,
        "unknown_recipient",
    ),
    (
        "task force, a member left out",
        {"recipients": [NPU], "countries": ["UA"], "task_force": TASK_FORCE},
        [NPU],
        str,
        "header_invalid",
    ),
    (
        "task force, a non-member added",
        {
            "recipients": [LKA, STA, NPU],
            "countries": ["DE", "UA"],
            "task_force": TASK_FORCE,
        },
        [LKA, STA, NPU],
        str,
        "header_invalid",
    ),
    (
        "unknown task force",
        {"recipients": [LKA, NPU], "countries": ["DE", "UA"], "task_force": "tf.nothing"},
        [LKA, NPU],
        str,
        "unknown_recipient",
    ),
    ("version-1 uuid", {"id": _v1()}, [STA], str, "header_invalid"),
    ("pretty-printed JWE", {}, [STA], _pretty, "malformed"),
]


def _refusals(fed: Running, offset: int) -> list[dict[str, Any]]:
    return [
        e
        for e in fed.log_events("gateway-de", offset=offset)
        if e.get("event") == "message_refused"
    ]


def _fbs_settled(fed: Running) -> bool:
    async def go() -> bool:
        nc = await fed.fed.connect_gateway("DE", allow_reconnect=False)
        try:
            info = await nc.jetstream().consumer_info(
                s.SUBMIT_STREAM, s.gateway_submit_durable(FBS)
            )
            return not info.num_pending and not info.num_ack_pending
        finally:
            await nc.close()

    return run(go())


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, nats_binary: Path) -> Any:
    """DE + UA with a task force of FBS, LKA and NPU; nodes of LKA, STA and NPU."""
    del nats_binary
    fed = Running.start(
        tmp_path_factory.mktemp("hostile") / "fed",
        nodes=[LKA, STA, NPU],
        description=WITH_TASK_FORCE,
    )
    yield fed
    fed.close()


@pytest.mark.parametrize(
    ("case", "changes", "encrypt_to", "rewrite", "reason"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_refused_at_the_border_and_nothing_stalls(
    hostile: Running,
    *,
    case: str,
    changes: dict[str, Any],
    encrypt_to: list[str],
    rewrite: Callable[[str], str],
    reason: str,
) -> None:
    """Each hostile message is refused once at the DE gateway with its reason code and
    settled; honest LKA -> STA and LKA -> NPU messages published after it are delivered."""
    del case
    fed = hostile
    offset = fed.fed.log_file("gateway-de").stat().st_size
    message_id, wire = _forge(fed, encrypt_to=encrypt_to, jwe_text=rewrite, **changes)
    fed.publish(FBS, s.submit_subject(FBS), [(message_id, wire)])
    refused = wait_until(lambda: _refusals(fed, offset), DELIVERY, what="the DE gateway's refusal")
    assert [e["reason"] for e in refused] == [reason]
    wait_until(lambda: _fbs_settled(fed), DELIVERY, what="FBS's submission settled")
    for recipient in (STA, NPU):
        sent: dict[str, Any] = fed.client(LKA).call(
            "POST", "/v1/messages", body=bulletin([recipient])
        )
        wait_until(
            lambda r=recipient, i=sent["message_id"]: i in fed.inbox_ids(r),  # type: ignore[misc]
            DELIVERY,
            what=f"honest traffic to {recipient}",
        )
    # Refused once, never retried; never routed anywhere; no decision failed.
    events = fed.log_events("gateway-de", offset=offset)
    assert len(_refusals(fed, offset)) == 1
    assert not [e for e in events if e.get("event") in {"decision_failed", "publish_failed"}]
    assert message_id not in fed.stream_ids("DE", s.DELIVER_STREAM)
    assert message_id not in fed.stream_ids("DE", s.out_stream("UA"))
    assert message_id not in fed.inbox_ids(STA)
    assert message_id not in fed.inbox_ids(NPU)
