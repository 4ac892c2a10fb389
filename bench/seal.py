"""Seal and open+validate throughput against the bare jwcrypto floor, measured in the same run.

The floor is what the format cannot avoid: two ES256 signatures and one JWE encryption (to N
recipients) to seal; one JWE decryption and two ES256 verifications to open, done with jwcrypto's
JWS and JWE objects. The ratio says what Casebridge adds on top (canonical JSON, header checks,
allowlists, digests, commitment, schema validation).

A second floor, "primitives", calls the same jwcrypto algorithm implementations the core uses
(``JWA`` ES256, ECDH-ES+A256KW, A256GCM) with nothing around them: the ratio to it is the whole
cost of our strict parsing and checks. Run: ``.venv/bin/python bench/seal.py [--seconds S]``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwe, jwk, jws
from jwcrypto.jwa import JWA

from broker.core.envelope import RecipientIdentity, SenderIdentity, open_message, seal
from broker.core.header import Header
from broker.core.replay import MemoryReplayStore
from broker.core.trust import AgencyKeys, StaticResolver
from broker.loaders import load_schema_registry

EXAMPLE = Path(__file__).resolve().parents[1] / "schemas" / "examples" / "request.assistance.json"
AGENCIES = (
    "de.lka-berlin",
    "nl.politie-nec",
    "ua.npu-ctd",
    "ro.diicot",
    "at.bk-wien",
    "nl.comensha",
)


ROUNDS = 9


def _batch_size(fn: Callable[[], object], target: float) -> int:
    batch = 1
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        if time.perf_counter() - start >= target or batch > 100_000:
            return batch
        batch *= 2


def _timed(fn: Callable[[], object], batch: int) -> float:
    # CPU time of this process, not wall time: on a shared 2-core machine other processes
    # would otherwise decide the result. Everything measured here is single-threaded CPU work.
    start = time.process_time()
    for _ in range(batch):
        fn()
    return batch / (time.process_time() - start)


def _paired(
    ours: Callable[[], object], floor: Callable[[], object], seconds: float
) -> tuple[float, float, float]:
    """Median rates of ours and floor and the median per-round ratio, measured interleaved
    (ours, floor, ours, floor...) so that load changes on the machine hit both alike."""
    batch = _batch_size(floor, seconds / (2 * ROUNDS))
    ours_rates, floor_rates, ratios = [], [], []
    for _ in range(ROUNDS):
        r_ours = _timed(ours, batch)
        r_floor = _timed(floor, batch)
        ours_rates.append(r_ours)
        floor_rates.append(r_floor)
        ratios.append(r_floor / r_ours)
    return statistics.median(ours_rates), statistics.median(floor_rates), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="time per measurement (both sides)"
    )
    args = parser.parse_args()

    registry = load_schema_registry()
    body: dict[str, Any] = json.loads(EXAMPLE.read_text())
    keys = {
        a: (ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1()))
        for a in AGENCIES
    }
    resolver = StaticResolver(
        "bench",
        [
            AgencyKeys(
                agency_id=a,
                country=a[:2].upper(),
                kind="law_enforcement",
                name=a,
                signing_kid=f"{a}#sig",
                signing_key=s.public_key(),
                agreement_kid=f"{a}#ka",
                agreement_key=k.public_key(),
            )
            for a, (s, k) in keys.items()
        ],
    )
    now = datetime.now(UTC)
    t = int(now.timestamp())
    sender_id = AGENCIES[0]
    sender = SenderIdentity(
        agency_id=sender_id, signing_kid=f"{sender_id}#sig", signing_key=keys[sender_id][0]
    )
    rows: list[tuple[int, str, float, float, float, float, float]] = []
    wire_size = 0

    def run_for(n: int) -> int:
        recipients = tuple(sorted(AGENCIES[1 : 1 + n]))
        header = Header(
            fed="bench",
            id=str(uuid.uuid4()),
            type="request.assistance",
            type_version=1,
            conversation=str(uuid.uuid4()),
            sender=sender_id,
            recipients=recipients,
            handling="H2",
            tlp="AMBER",
            purpose="investigation",
            legal_basis="Directive (EU) 2016/680, Art. 8",
            categories=tuple(sorted(registry.categories("request.assistance", 1, body))),
            iat=t,
            exp=t + 86400,
        )
        wire = seal(
            header=header,
            body=body,
            sender=sender,
            resolver=resolver,
            now=now,
            salt=secrets.token_bytes(16),
        )
        me = recipients[0]
        recipient = RecipientIdentity(
            agency_id=me, agreement_kid=f"{me}#ka", agreement_key=keys[me][1]
        )

        def do_seal() -> None:
            seal(
                header=header,
                body=body,
                sender=sender,
                resolver=resolver,
                now=now,
                salt=secrets.token_bytes(16),
            )

        def do_open() -> None:
            open_message(
                wire,
                recipient=recipient,
                resolver=resolver,
                replay=MemoryReplayStore(),
                validator=registry,
                now=now,
            )

        # --- the floor: bare jwcrypto operations on payloads of the same size ---
        sig_jwk = jwk.JWK.from_pyca(keys[sender_id][0])
        sig_pub = jwk.JWK.from_pyca(keys[sender_id][0].public_key())
        rcpt_pub = [jwk.JWK.from_pyca(keys[r][1].public_key()) for r in recipients]
        my_priv = jwk.JWK.from_pyca(keys[me][1])
        inner_payload = json.dumps(
            {"header": header.to_json(), "body": body, "salt": "x" * 22}
        ).encode()
        outer_payload = json.dumps(
            {"header": header.to_json(), "jwe_sha256": "y" * 43, "commitment": "z" * 43}
        ).encode()

        def floor_sign(payload: bytes) -> str:
            token = jws.JWS(payload)
            token.add_signature(sig_jwk, alg="ES256", protected=json.dumps({"alg": "ES256"}))
            return str(token.serialize(compact=True))

        def floor_encrypt(plaintext: bytes) -> str:
            token = jwe.JWE(plaintext, protected=json.dumps({"enc": "A256GCM"}))
            for pub in rcpt_pub:
                token.add_recipient(pub, header=json.dumps({"alg": "ECDH-ES+A256KW"}))
            return str(token.serialize(compact=False))

        def floor_seal() -> None:
            inner = floor_sign(inner_payload)
            floor_encrypt(inner.encode())
            floor_sign(outer_payload)

        f_inner = floor_sign(inner_payload)
        f_outer = floor_sign(outer_payload)
        f_jwe = floor_encrypt(f_inner.encode())

        def floor_verify(token_text: str) -> None:
            token = jws.JWS()
            token.deserialize(token_text)
            token.verify(sig_pub, alg="ES256")

        def floor_open() -> None:
            floor_verify(f_outer)
            token = jwe.JWE()
            token.deserialize(f_jwe, my_priv)
            floor_verify(f_inner)

        # --- the primitive floor: jwcrypto's algorithm implementations, nothing around them ---
        es256 = JWA.signing_alg("ES256")
        kw = JWA.keymgmt_alg("ECDH-ES+A256KW")
        gcm = JWA.encryption_alg("A256GCM")
        kw_headers = {"alg": "ECDH-ES+A256KW", "enc": "A256GCM"}
        aad = b"eyJlbmMiOiJBMjU2R0NNIiwidHlwIjoiY2FzZWJyaWRnZS5pbm5lcitqd2UifQ"

        def prim_seal() -> None:
            inner = es256.sign(sig_jwk, inner_payload)
            cek = secrets.token_bytes(32)
            for pub in rcpt_pub:
                kw.wrap(pub, 256, cek, kw_headers)
            gcm.encrypt(cek, aad, inner_payload + inner)
            es256.sign(sig_jwk, outer_payload)

        p_cek = secrets.token_bytes(32)
        p_wrapped = kw.wrap(rcpt_pub[0], 256, p_cek, kw_headers)
        p_unwrap_headers = {**kw_headers, "epk": p_wrapped["header"]["epk"]}
        p_iv, p_ct, p_tag = gcm.encrypt(p_cek, aad, inner_payload + b"x" * 64)
        p_inner_sig = es256.sign(sig_jwk, inner_payload)
        p_outer_sig = es256.sign(sig_jwk, outer_payload)

        def prim_open() -> None:
            es256.verify(sig_pub, outer_payload, p_outer_sig)
            cek = kw.unwrap(my_priv, 256, p_wrapped["ek"], p_unwrap_headers)
            gcm.decrypt(cek, aad, p_iv, p_ct, p_tag)
            es256.verify(sig_pub, inner_payload, p_inner_sig)

        for op, ours, floor, prim in (
            ("seal", do_seal, floor_seal, prim_seal),
            ("open+validate", do_open, floor_open, prim_open),
        ):
            r_ours, r_floor, ratio = _paired(ours, floor, args.seconds)
            _, r_prim, prim_ratio = _paired(ours, prim, args.seconds)
            rows.append((n, op, r_ours, r_floor, ratio, r_prim, prim_ratio))
        return len(wire)

    for n in (1, 5):
        wire_size = run_for(n)

    body_size = len(json.dumps(body))
    print(f"message: request.assistance, body {body_size} bytes, {wire_size} bytes sealed to 5")
    titles = (
        "recipients",
        "operation",
        "casebridge msg/s",
        "jwcrypto floor msg/s",
        "ratio",
        "primitives msg/s",
        "ratio",
    )
    print(
        f"{titles[0]:>10}  {titles[1]:<14}{titles[2]:>17}{titles[3]:>22}{titles[4]:>8}"
        f"{titles[5]:>18}{titles[6]:>8}"
    )
    for n, op, r_ours, r_floor, ratio, r_prim, prim_ratio in rows:
        print(
            f"{n:>10}  {op:<14}{r_ours:>17.0f}{r_floor:>22.0f}{ratio:>8.2f}"
            f"{r_prim:>18.0f}{prim_ratio:>8.2f}"
        )
    print("ratio = floor rate / casebridge rate, median of interleaved rounds")
    print(
        "(1.00 = no overhead; target <= 1.30 against the jwcrypto floor, i.e. its JWS/JWE objects)"
    )
    print("primitives = the same jwcrypto JWA algorithms the core calls, with nothing around them")


if __name__ == "__main__":
    main()
