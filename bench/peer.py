"""The point-to-point peer a team would hand-roll instead of Casebridge: the yardstick.

The same JWS-in-JWE sealing (``broker.core.envelope``: ES256, ECDH-ES+A256KW, A256GCM, the
outer signature and commitment), sent straight from sender to recipient over HTTPS with aiohttp
(kept-alive connections), the body validated with jsonschema-rs (``SchemaRegistry``), ONE SQLite
commit per side (the sender's outbox row; the recipient's inbox row with its replay id) and a
signed receipt (ES256 JWS over id, digest and outcome) that the sender verifies. No borders, no
store-and-forward, no evidence trail: what it does not do is what Casebridge adds.

Three commands (``bench/federation.py`` runs them as subprocesses and reads /proc for CPU):
``keys DIR`` (key pairs and a self-signed TLS certificate, minted per run), ``serve DIR PORT``
and ``send DIR URL --messages N --concurrency C [--rate R]`` (prints one JSON line).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import sqlite3
import ssl
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.core import jose
from broker.core.envelope import RecipientIdentity, SenderIdentity, open_message, seal
from broker.core.header import Header
from broker.core.trust import AgencyKeys, StaticResolver
from broker.loaders import load_schema_registry

ROOT = Path(__file__).resolve().parents[1]
BODY = json.loads((ROOT / "schemas" / "examples" / "request.assistance.json").read_text())
SENDER, RECIPIENT = "de.lka-berlin", "nl.politie"
FED = "peer-bench"
RECEIPT_TYP = "peer.receipt+jws"


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_keys(directory: Path) -> None:
    """Signing and agreement keys of both agencies, and the recipient's TLS certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    for agency in (SENDER, RECIPIENT):
        for use in ("sig", "ka"):
            (directory / f"{agency}.{use}.pem").write_bytes(
                _pem(ec.generate_private_key(ec.SECP256R1()))
            )
    tls_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(tls_key, hashes.SHA256())
    )
    (directory / "tls.key").write_bytes(_pem(tls_key))
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _key(directory: Path, agency: str, use: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((directory / f"{agency}.{use}.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _resolver(directory: Path) -> StaticResolver:
    return StaticResolver(
        FED,
        [
            AgencyKeys(
                agency_id=a,
                country=a[:2].upper(),
                kind="law_enforcement",
                name=a,
                signing_kid=f"{a}#sig",
                signing_key=_key(directory, a, "sig").public_key(),
                agreement_kid=f"{a}#ka",
                agreement_key=_key(directory, a, "ka").public_key(),
            )
            for a in (SENDER, RECIPIENT)
        ],
    )


def _db(path: Path, schema: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")  # as the node: an acknowledged message survives
    db.executescript(schema)
    return db


class _Replay:
    """The replay store on the recipient's SQLite (the id is written with the inbox row)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.pending: tuple[str, int] | None = None

    def seen(self, message_id: str, *, now: dt.datetime) -> bool:
        row = self.db.execute("SELECT 1 FROM replay WHERE id = ?", (message_id,)).fetchone()
        return row is not None

    def remember(self, message_id: str, *, expires_at: int, now: dt.datetime) -> bool:
        if self.seen(message_id, now=now):
            return False
        self.pending = (message_id, expires_at)
        return True


def serve(directory: Path, port: int) -> None:
    """The recipient: open, validate, one commit, signed receipt."""
    resolver = _resolver(directory)
    registry = load_schema_registry()
    me = RecipientIdentity(
        agency_id=RECIPIENT,
        agreement_kid=f"{RECIPIENT}#ka",
        agreement_key=_key(directory, RECIPIENT, "ka"),
    )
    signing = _key(directory, RECIPIENT, "sig")
    db = _db(
        directory / "recipient.sqlite",
        "CREATE TABLE IF NOT EXISTS inbox (id TEXT PRIMARY KEY, header TEXT, body TEXT, "
        "digest TEXT, at TEXT); CREATE TABLE IF NOT EXISTS replay (id TEXT PRIMARY KEY, "
        "expires_at INTEGER);",
    )

    async def receive(request: web.Request) -> web.Response:
        wire = await request.read()
        now = dt.datetime.now(dt.UTC)
        replay = _Replay(db)
        digest = jose.sha256_b64url(wire)
        try:
            opened = open_message(
                wire, recipient=me, resolver=resolver, replay=replay, validator=registry, now=now
            )
        except Exception as exc:  # noqa: BLE001 - refused: a signed refusal
            outcome, message_id = f"rejected:{type(exc).__name__}", ""
        else:
            assert replay.pending is not None
            message_id = opened.header.id
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO replay VALUES (?, ?)", replay.pending)
            db.execute(
                "INSERT INTO inbox VALUES (?, ?, ?, ?, ?)",
                (
                    message_id,
                    json.dumps(opened.header.to_json()),
                    json.dumps(opened.body),
                    digest,
                    now.isoformat(),
                ),
            )
            db.execute("COMMIT")
            outcome = "delivered"
        receipt = jose.sign_compact(
            json.dumps({"id": message_id, "digest": digest, "outcome": outcome}).encode(),
            signing,
            kid=f"{RECIPIENT}#sig",
            typ=RECEIPT_TYP,
        )
        return web.Response(text=receipt)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/messages", receive)
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=context, print=None, access_log=None)


async def send(
    directory: Path, url: str, *, messages: int, concurrency: int, rate: float | None
) -> dict[str, Any]:
    """The sender: seal, one commit, POST over a kept-alive HTTPS connection, verify the
    receipt. Open loop at ``rate`` per second, or as fast as ``concurrency`` allows."""
    resolver = _resolver(directory)
    registry = load_schema_registry()
    me = SenderIdentity(
        agency_id=SENDER, signing_kid=f"{SENDER}#sig", signing_key=_key(directory, SENDER, "sig")
    )
    their_key = _key(directory, RECIPIENT, "sig").public_key()
    categories = tuple(sorted(registry.categories("request.assistance", 1, BODY)))
    db = _db(
        directory / "sender.sqlite",
        "CREATE TABLE IF NOT EXISTS outbox (id TEXT PRIMARY KEY, wire BLOB, at TEXT);",
    )
    context = ssl.create_default_context(cafile=str(directory / "tls.crt"))
    latencies: list[float] = []
    failures = 0
    window = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, index: int, start: float) -> None:
        nonlocal failures
        if rate:
            await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
        async with window:
            t0 = time.monotonic()
            now = dt.datetime.now(dt.UTC)
            iat = int(now.timestamp())
            header = Header(
                fed=FED,
                id=str(uuid.uuid4()),
                type="request.assistance",
                type_version=1,
                conversation=str(uuid.uuid4()),
                sender=SENDER,
                recipients=(RECIPIENT,),
                handling="H2",
                tlp="AMBER",
                purpose="investigation",
                legal_basis="Council Framework Decision 2006/960/JHA",
                categories=categories,
                iat=iat,
                exp=iat + 86400,
            )
            wire = seal(
                header=header,
                body=BODY,
                sender=me,
                resolver=resolver,
                now=now,
                salt=secrets.token_bytes(16),
            )
            db.execute("INSERT INTO outbox VALUES (?, ?, ?)", (header.id, wire, now.isoformat()))
            try:
                async with session.post(url, data=wire) as response:
                    token = await response.text()
                unverified = jose.parse_compact(token, typ=RECEIPT_TYP, what="receipt")
                receipt = json.loads(jose.verify_compact(unverified, their_key, what="receipt"))
            except Exception:  # noqa: BLE001 - counted
                receipt = {}
            if receipt.get("outcome") != "delivered" or receipt.get("id") != header.id:
                failures += 1
                return
            latencies.append(time.monotonic() - t0)

    cpu_start = os.times()
    connector = aiohttp.TCPConnector(ssl=context, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.monotonic()
        await asyncio.gather(*(one(session, i, start) for i in range(messages)))
        elapsed = time.monotonic() - start
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000

    usage = os.times()
    return {
        "delivered": len(latencies),
        "failures": failures,
        "rate": len(latencies) / elapsed if elapsed else 0.0,
        "p50": pct(50),
        "p99": pct(99),
        "cpu": usage.user + usage.system - cpu_start.user - cpu_start.system,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys")
    keys.add_argument("dir", type=Path)
    server = sub.add_parser("serve")
    server.add_argument("dir", type=Path)
    server.add_argument("port", type=int)
    sender = sub.add_parser("send")
    sender.add_argument("dir", type=Path)
    sender.add_argument("url")
    sender.add_argument("--messages", type=int, default=600)
    sender.add_argument("--concurrency", type=int, default=12)
    sender.add_argument("--rate", type=float, default=None)
    args = parser.parse_args()
    if args.command == "keys":
        make_keys(args.dir)
    elif args.command == "serve":
        serve(args.dir, args.port)
    else:
        result = asyncio.run(
            send(
                args.dir,
                args.url,
                messages=args.messages,
                concurrency=args.concurrency,
                rate=args.rate,
            )
        )
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
