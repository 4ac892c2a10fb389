"""Sealing and opening: the happy paths and every refusal the protocol promises."""

from __future__ import annotations

import copy
import json
import secrets
import string
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core import canonical, jose
from broker.core.envelope import (
    INNER_TYP,
    JWE_TYP,
    OUTER_TYP,
    Limits,
    open_message,
    seal,
    verify_routing,
)
from broker.core.replay import MemoryReplayStore
from broker.core.schemas import SchemaRegistry
from broker.errors import CasebridgeError, InvalidMessage, Reason, SchemaInvalid
from broker.loaders import load_schema_registry

from . import forge
from .forge import NOW, World

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


@pytest.fixture(scope="module")
def world() -> World:
    return forge.make_world(revoked=("de.sta-berlin",))


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return load_schema_registry()


@pytest.fixture(scope="module")
def body() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES / "bulletin.json").read_text())
    return loaded


def open_as(
    world: World,
    registry: SchemaRegistry,
    wire: bytes,
    agency_id: str = "nl.politie-nec",
    **kwargs: Any,
) -> Any:
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("replay", MemoryReplayStore())
    return open_message(
        wire,
        recipient=world[agency_id].recipient,
        resolver=world.resolver,
        validator=registry,
        **kwargs,
    )


def refused(reason: Reason, world: World, registry: SchemaRegistry, wire: bytes, **kw: Any) -> None:
    with pytest.raises(InvalidMessage) as info:
        open_as(world, registry, wire, **kw)
    assert info.value.reason == reason, info.value


class TestRoundTrip:
    def test_recipient_gets_the_body_and_header(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A sealed message opens at its recipient to exactly the header and body sealed."""
        h = forge.header()
        opened = open_as(world, registry, forge.seal_for(world, h, body))
        assert opened.body == body
        assert opened.header == h

    def test_every_task_force_member_opens_the_same_content(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A task-force message opens at every member to the same body."""
        h = forge.header(recipients=("nl.politie-nec", "ua.npu-ctd"), task_force="tf.balkan-route")
        wire = forge.seal_for(world, h, body)
        for member in ("nl.politie-nec", "ua.npu-ctd"):
            assert open_as(world, registry, wire, member).body == body

    def test_gateway_verifies_routing_without_a_decryption_key(
        self, world: World, body: dict[str, Any]
    ) -> None:
        """verify_routing returns the signed header and sender using only public data."""
        h = forge.header()
        wire = forge.seal_for(world, h, body)
        routed = verify_routing(wire, resolver=world.resolver, now=NOW)
        assert routed.header == h
        assert routed.sender.agency_id == "de.lka-berlin"
        assert routed.digest == jose.sha256_b64url(wire)

    def test_body_is_not_visible_on_the_wire(self, world: World, body: dict[str, Any]) -> None:
        """No body text appears in the sealed bytes."""
        wire = forge.seal_for(world, forge.header(), body)
        assert body["title"].encode() not in wire

    def test_outer_and_inner_signatures_are_low_s(self, world: World, body: dict[str, Any]) -> None:
        """Signatures are emitted in low-s form so the message has a single byte encoding."""
        outer, _ = forge.split(forge.seal_for(world, forge.header(), body))
        sig = jose.b64url_decode(outer.split(".")[2], what="sig")
        assert int.from_bytes(sig[32:], "big") <= jose.P256_ORDER // 2


class TestSealRefuses:
    def test_sealing_as_someone_else(self, world: World, body: dict[str, Any]) -> None:
        """The sealing key's agency must be header.sender."""
        h = forge.header(sender="nl.politie-nec", recipients=("ua.npu-ctd",))
        with pytest.raises(InvalidMessage) as info:
            seal(
                header=h,
                body=body,
                sender=world["de.lka-berlin"].sender,
                resolver=world.resolver,
                now=NOW,
                salt=secrets.token_bytes(16),
            )
        assert info.value.reason == Reason.SENDER_MISMATCH

    def test_task_force_with_wrong_members(self, world: World, body: dict[str, Any]) -> None:
        """A task-force header must list exactly the other members."""
        h = forge.header(recipients=("nl.politie-nec",), task_force="tf.balkan-route")
        with pytest.raises(InvalidMessage) as info:
            forge.seal_for(world, h, body)
        assert info.value.reason == Reason.HEADER_INVALID

    def test_short_salt(self, world: World, body: dict[str, Any]) -> None:
        """A salt under 128 bits is refused."""
        with pytest.raises(InvalidMessage):
            seal(
                header=forge.header(),
                body=body,
                sender=world["de.lka-berlin"].sender,
                resolver=world.resolver,
                now=NOW,
                salt=b"short",
            )

    def test_unknown_recipient(self, world: World, body: dict[str, Any]) -> None:
        """Sealing to an agency not in the directory fails."""
        with pytest.raises(InvalidMessage) as info:
            forge.seal_for(world, forge.header(recipients=("fr.ocrteh",)), body)
        assert info.value.reason == Reason.UNKNOWN_RECIPIENT


class TestFraming:
    def test_oversized_refused_before_parsing(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A message over the size cap is refused as too_large even if it is not JSON."""
        refused(Reason.TOO_LARGE, world, registry, b"x" * 2048, limits=Limits(max_bytes=1024))

    @pytest.mark.parametrize(
        "wire",
        [b"", b"not json", b"[]", b'{"v":1}', b'{"v":1,"outer":"a","jwe":"b","x":1}', b"\xff\xfe"],
    )
    def test_malformed(self, world: World, registry: SchemaRegistry, wire: bytes) -> None:
        """Bytes that are not a {v, outer, jwe} object are malformed."""
        refused(Reason.MALFORMED, world, registry, wire)

    def test_duplicate_member(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """Duplicate JSON members are refused (no parser-differential games)."""
        outer, jwe_text = forge.split(forge.seal_for(world, forge.header(), body))
        wire = json.dumps({"v": 1, "outer": outer, "jwe": jwe_text})[:-1] + ',"v":1}'
        refused(Reason.MALFORMED, world, registry, wire.encode())

    def test_non_canonical_whitespace(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A re-serialised (non-canonical) message is refused."""
        wire = forge.seal_for(world, forge.header(), body)
        refused(Reason.MALFORMED, world, registry, json.dumps(json.loads(wire), indent=1).encode())

    def test_unknown_wire_version(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """Only wire version 1 is accepted."""
        outer, jwe_text = forge.split(forge.seal_for(world, forge.header(), body))
        refused(Reason.MALFORMED, world, registry, forge.assemble(outer, jwe_text, v=2))
        refused(Reason.MALFORMED, world, registry, forge.assemble(outer, jwe_text, v=True))


class TestAlgorithms:
    def _outer_payload(self, world: World, body: dict[str, Any]) -> tuple[bytes, str]:
        outer, jwe_text = forge.split(forge.seal_for(world, forge.header(), body))
        return jose.b64url_decode(outer.split(".")[1], what="p"), jwe_text

    def test_alg_none(self, world: World, registry: SchemaRegistry, body: dict[str, Any]) -> None:
        """An unsigned outer JWS (alg none) is refused."""
        payload, jwe_text = self._outer_payload(world, body)
        outer = forge.compact(
            {"alg": "none", "kid": "de.lka-berlin#sig", "typ": OUTER_TYP}, payload, b""
        )
        refused(Reason.ALG_NOT_ALLOWED, world, registry, forge.assemble(outer, jwe_text))

    def test_hs256_with_the_public_key_as_secret(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """HMAC keyed with the sender's public key (key confusion) is refused."""
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        payload, jwe_text = self._outer_payload(world, body)
        secret = (
            world["de.lka-berlin"]
            .signing.public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )
        outer = forge.hs256(
            {"alg": "HS256", "kid": "de.lka-berlin#sig", "typ": OUTER_TYP}, payload, secret
        )
        refused(Reason.ALG_NOT_ALLOWED, world, registry, forge.assemble(outer, jwe_text))

    @pytest.mark.parametrize("alg", ["ES384", "ES512", "RS256", "PS256", "EdDSA", "ES256K"])
    def test_other_signature_algorithms(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any], alg: str
    ) -> None:
        """Only ES256 is accepted for signatures."""
        payload, jwe_text = self._outer_payload(world, body)
        outer = forge.compact(
            {"alg": alg, "kid": "de.lka-berlin#sig", "typ": OUTER_TYP}, payload, b"\x01" * 64
        )
        refused(Reason.ALG_NOT_ALLOWED, world, registry, forge.assemble(outer, jwe_text))

    @pytest.mark.parametrize("member", ["jku", "x5u", "jwk", "x5c", "crit"])
    def test_key_naming_headers_in_outer_jws(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any], member: str
    ) -> None:
        """jku/x5u/jwk/x5c/crit in a JWS header are refused, never fetched or used."""
        payload, jwe_text = self._outer_payload(world, body)
        hdr = {
            "alg": "ES256",
            "kid": "de.lka-berlin#sig",
            "typ": OUTER_TYP,
            member: "https://attacker.invalid/k",
        }
        outer = forge.compact(hdr, payload, b"\x01" * 64)
        refused(Reason.FORBIDDEN_HEADER, world, registry, forge.assemble(outer, jwe_text))

    def test_jwe_where_jws_is_expected(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A compact JWE in the outer slot is refused."""
        _, jwe_text = self._outer_payload(world, body)
        outer = ".".join(
            [forge.b64(b'{"alg":"ECDH-ES+A256KW","enc":"A256GCM"}'), "", "aaaa", "bbbb", "cccc"]
        )
        refused(Reason.MALFORMED, world, registry, forge.assemble(outer, jwe_text))

    def test_jws_where_jwe_is_expected(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A validly signed message whose jwe member is a JWS is refused."""
        sender = world["de.lka-berlin"]
        h = forge.header()
        inner = forge.inner_jws(sender, h, body)
        fake_jwe = inner.decode()
        wire = forge.assemble(forge.outer_jws(sender, h, fake_jwe, inner), fake_jwe)
        refused(Reason.MALFORMED, world, registry, wire)

    def _jwe_variant(
        self, world: World, body: dict[str, Any], mutate: Callable[[dict[str, Any]], None]
    ) -> bytes:
        sender, rcpt = world["de.lka-berlin"], world["nl.politie-nec"]
        h = forge.header()
        inner = forge.inner_jws(sender, h, body)
        obj = json.loads(forge.encrypt_to(inner, rcpt))
        mutate(obj)
        jwe_text = canonical.dumps(obj).decode()
        return forge.assemble(forge.outer_jws(sender, h, jwe_text, inner), jwe_text)

    def test_zip_in_jwe(self, world: World, registry: SchemaRegistry, body: dict[str, Any]) -> None:
        """A compressed JWE (zip) is refused."""

        def mutate(obj: dict[str, Any]) -> None:
            obj["protected"] = forge.b64(
                canonical.dumps({"enc": "A256GCM", "typ": JWE_TYP, "zip": "DEF"})
            )

        refused(Reason.FORBIDDEN_HEADER, world, registry, self._jwe_variant(world, body, mutate))

    @pytest.mark.parametrize(
        "alg", ["PBES2-HS256+A128KW", "dir", "RSA1_5", "RSA-OAEP", "A256KW", "ECDH-ES"]
    )
    def test_other_key_management_algorithms(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any], alg: str
    ) -> None:
        """Only ECDH-ES+A256KW wraps the content key (no PBES2, dir, RSA1_5...)."""

        def mutate(obj: dict[str, Any]) -> None:
            obj["recipients"][0]["header"]["alg"] = alg

        refused(Reason.ALG_NOT_ALLOWED, world, registry, self._jwe_variant(world, body, mutate))

    @pytest.mark.parametrize("enc", ["A128GCM", "A256CBC-HS512", "A128CBC-HS256"])
    def test_other_content_encryption(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any], enc: str
    ) -> None:
        """Only A256GCM encrypts content."""

        def mutate(obj: dict[str, Any]) -> None:
            obj["protected"] = forge.b64(canonical.dumps({"enc": enc, "typ": JWE_TYP}))

        refused(Reason.ALG_NOT_ALLOWED, world, registry, self._jwe_variant(world, body, mutate))

    @pytest.mark.parametrize("member", ["jku", "x5u", "jwk", "p2s"])
    def test_extra_jwe_recipient_header(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any], member: str
    ) -> None:
        """Unexpected or key-naming members in a JWE recipient header are refused."""

        def mutate(obj: dict[str, Any]) -> None:
            obj["recipients"][0]["header"][member] = "AAAA"

        refused(Reason.FORBIDDEN_HEADER, world, registry, self._jwe_variant(world, body, mutate))

    def test_off_curve_ephemeral_key(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """An ephemeral key not on P-256 (invalid-curve attack) is refused before any ECDH."""

        def mutate(obj: dict[str, Any]) -> None:
            epk = obj["recipients"][0]["header"]["epk"]
            y = bytearray(jose.b64url_decode(epk["y"], what="y"))
            y[-1] ^= 1
            epk["y"] = forge.b64(bytes(y))

        refused(Reason.DECRYPT_FAILED, world, registry, self._jwe_variant(world, body, mutate))

    def test_high_s_signature(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """The malleable twin (r, n-s) of a valid signature is refused."""
        outer, jwe_text = forge.split(forge.seal_for(world, forge.header(), body))
        head, payload, sig = outer.split(".")
        raw = jose.b64url_decode(sig, what="s")
        s = jose.P256_ORDER - int.from_bytes(raw[32:], "big")
        twin = f"{head}.{payload}.{forge.b64(raw[:32] + s.to_bytes(32, 'big'))}"
        refused(Reason.BAD_SIGNATURE, world, registry, forge.assemble(twin, jwe_text))


class TestTampering:
    def test_flipped_outer_signature(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A modified outer signature fails verification."""
        outer, jwe_text = forge.split(forge.seal_for(world, forge.header(), body))
        head, payload, sig = outer.split(".")
        raw = bytearray(jose.b64url_decode(sig, what="s"))
        raw[5] ^= 0x40
        refused(
            Reason.BAD_SIGNATURE,
            world,
            registry,
            forge.assemble(f"{head}.{payload}.{forge.b64(bytes(raw))}", jwe_text),
        )

    def test_header_edited_in_transit(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """Editing the signed header (e.g. lowering the handling code) breaks the signature."""
        outer, jwe_text = forge.split(forge.seal_for(world, forge.header(handling="H3"), body))
        head, payload, sig = outer.split(".")
        edited = json.loads(jose.b64url_decode(payload, what="p"))
        edited["header"]["handling"] = "H0"
        forged = f"{head}.{forge.b64(canonical.dumps(edited))}.{sig}"
        refused(Reason.BAD_SIGNATURE, world, registry, forge.assemble(forged, jwe_text))

    def test_signed_by_another_key_under_the_senders_kid(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A signature by a different key than the kid names fails (wrong key)."""
        mallory, h = world["ua.npu-ctd"], forge.header()
        inner = forge.inner_jws(world["de.lka-berlin"], h, body)
        jwe_text = forge.encrypt_to(inner, world["nl.politie-nec"])
        outer = forge.outer_jws(mallory, h, jwe_text, inner, kid="de.lka-berlin#sig")
        refused(Reason.BAD_SIGNATURE, world, registry, forge.assemble(outer, jwe_text))

    def test_outer_inner_header_mismatch(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """The sender signs one header outside and another inside: refused."""
        sender, rcpt = world["de.lka-berlin"], world["nl.politie-nec"]
        h_outer = forge.header(handling="H1")
        h_inner = replace(h_outer, handling="H3", categories=("victim_identity",))
        inner = forge.inner_jws(sender, h_inner, body)
        jwe_text = forge.encrypt_to(inner, rcpt)
        wire = forge.assemble(forge.outer_jws(sender, h_outer, jwe_text, inner), jwe_text)
        refused(Reason.HEADER_MISMATCH, world, registry, wire)

    def test_ciphertext_swapped_under_valid_outer_signature(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """Another message's JWE under this message's outer signature is refused."""
        outer_a, _ = forge.split(forge.seal_for(world, forge.header(), body))
        _, jwe_b = forge.split(forge.seal_for(world, forge.header(), body))
        refused(Reason.DIGEST_MISMATCH, world, registry, forge.assemble(outer_a, jwe_b))

    def test_surreptitious_forwarding_keeping_the_header(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A recipient re-encrypting the sender's inner JWS to a third agency is refused."""
        alice, bob, carol = world["de.lka-berlin"], world["nl.politie-nec"], world["ua.npu-ctd"]
        h = forge.header(recipients=("nl.politie-nec",))
        inner = forge.inner_jws(alice, h, body)  # what Bob decrypted from Alice's message
        jwe_text = forge.encrypt_to(inner, carol)
        wire = forge.assemble(forge.outer_jws(bob, h, jwe_text, inner), jwe_text)
        refused(Reason.SENDER_MISMATCH, world, registry, wire, agency_id="ua.npu-ctd")

    def test_surreptitious_forwarding_with_a_new_header(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """Forwarding under a header naming the forwarder and new recipient is refused."""
        alice, bob, carol = world["de.lka-berlin"], world["nl.politie-nec"], world["ua.npu-ctd"]
        inner = forge.inner_jws(alice, forge.header(recipients=("nl.politie-nec",)), body)
        h_new = forge.header(sender="nl.politie-nec", recipients=("ua.npu-ctd",))
        jwe_text = forge.encrypt_to(inner, carol)
        wire = forge.assemble(forge.outer_jws(bob, h_new, jwe_text, inner), jwe_text)
        refused(Reason.SENDER_MISMATCH, world, registry, wire, agency_id="ua.npu-ctd")

    def test_task_force_members_given_different_content(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A sender giving one member other content than committed to is caught by that member."""
        alice, bob, carol = world["de.lka-berlin"], world["nl.politie-nec"], world["ua.npu-ctd"]
        h = forge.header(recipients=("nl.politie-nec", "ua.npu-ctd"), task_force="tf.balkan-route")
        inner_real = forge.inner_jws(alice, h, body)
        other = copy.deepcopy(body)
        other["title"] = "A different story for one member"
        inner_other = forge.inner_jws(alice, h, other)
        honest = json.loads(forge.encrypt_to(inner_real, bob))
        dishonest = json.loads(forge.encrypt_to(inner_other, carol))
        # Carol's entry wraps a different content key; the shared ciphertext is Bob's.
        honest["recipients"].append(dishonest["recipients"][0])
        jwe_text = canonical.dumps(honest).decode()
        wire = forge.assemble(forge.outer_jws(alice, h, jwe_text, inner_real), jwe_text)
        assert open_as(world, registry, wire, "nl.politie-nec").body == body
        with pytest.raises(InvalidMessage) as info:
            open_as(world, registry, wire, "ua.npu-ctd")
        assert info.value.reason in (Reason.DECRYPT_FAILED, Reason.COMMITMENT_MISMATCH)

    def test_content_not_matching_the_commitment(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A JWE whose plaintext is not the committed inner JWS is refused."""
        alice, bob = world["de.lka-berlin"], world["nl.politie-nec"]
        h = forge.header()
        inner_committed = forge.inner_jws(alice, h, body)
        inner_sent = forge.inner_jws(alice, h, body)  # same content, other salt
        jwe_text = forge.encrypt_to(inner_sent, bob)
        wire = forge.assemble(forge.outer_jws(alice, h, jwe_text, inner_committed), jwe_text)
        refused(Reason.COMMITMENT_MISMATCH, world, registry, wire)


class TestAddressingTimeTrust:
    def test_not_addressed(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """An agency not among the recipients cannot open the message."""
        wire = forge.seal_for(world, forge.header(), body)
        refused(Reason.NOT_ADDRESSED, world, registry, wire, agency_id="ua.npu-ctd")

    def test_expired(self, world: World, registry: SchemaRegistry, body: dict[str, Any]) -> None:
        """A message past exp (beyond clock tolerance) is refused."""
        wire = forge.seal_for(world, forge.header(), body)
        refused(Reason.EXPIRED, world, registry, wire, now=forge.later(7 * 86400 + 121))

    def test_within_clock_tolerance(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A message up to 120 s past exp still opens (documented tolerance)."""
        wire = forge.seal_for(world, forge.header(), body)
        assert open_as(world, registry, wire, now=forge.later(7 * 86400 + 60)).body == body

    def test_not_yet_valid(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A message issued in the future (beyond tolerance) is refused."""
        wire = forge.seal_for(world, forge.header(now=forge.later(600)), body)
        refused(Reason.NOT_YET_VALID, world, registry, wire)

    def test_lifetime_too_long(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """exp more than 90 days after iat is refused."""
        h = forge.header()
        wire = forge.seal_for(world, replace(h, exp=h.iat + 91 * 86400), body)
        refused(Reason.HEADER_INVALID, world, registry, wire)

    def test_replay(self, world: World, registry: SchemaRegistry, body: dict[str, Any]) -> None:
        """The same message accepted once is refused the second time."""
        wire = forge.seal_for(world, forge.header(), body)
        store = MemoryReplayStore()
        open_as(world, registry, wire, replay=store)
        refused(Reason.REPLAY, world, registry, wire, replay=store)

    def test_refused_message_does_not_poison_replay_store(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A message refused for its body leaves no replay entry."""
        store = MemoryReplayStore()
        bad = dict(body, unexpected_member=True)
        wire = forge.seal_for(world, forge.header(), bad)
        with pytest.raises(SchemaInvalid):
            open_as(world, registry, wire, replay=store)
        assert len(store) == 0

    def test_foreign_federation(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A header naming another federation is refused even if validly signed."""
        sender, rcpt = world["de.lka-berlin"], world["nl.politie-nec"]
        wire = forge.forge(sender, forge.header(fed="other-fed"), body, rcpt)
        refused(Reason.FOREIGN_FEDERATION, world, registry, wire)

    def test_unknown_sender_key(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A kid the directory does not know is refused."""
        stranger = forge.Agency("de.unknown", "ngo")
        h = forge.header(sender="de.unknown")
        wire = forge.forge(stranger, h, body, world["nl.politie-nec"])
        refused(Reason.UNKNOWN_SENDER, world, registry, wire)

    def test_revoked_sender(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A message signed by a revoked agency is refused."""
        sender = world["de.sta-berlin"]
        wire = forge.forge(
            sender, forge.header(sender="de.sta-berlin"), body, world["nl.politie-nec"]
        )
        refused(Reason.SENDER_REVOKED, world, registry, wire)

    def test_schema_invalid_body(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A body that breaks its schema is refused with schema_invalid and error paths."""
        bad = dict(body)
        bad.pop("title")
        wire = forge.seal_for(world, forge.header(), bad)
        with pytest.raises(SchemaInvalid) as info:
            open_as(world, registry, wire)
        assert info.value.reason == Reason.SCHEMA_INVALID
        assert info.value.errors

    def test_unknown_type(
        self, world: World, registry: SchemaRegistry, body: dict[str, Any]
    ) -> None:
        """A validly sealed message of a type the catalogue lacks is refused."""
        wire = forge.seal_for(world, forge.header(message_type="gossip.idle"), body)
        refused(Reason.UNKNOWN_TYPE, world, registry, wire)

    def test_every_refusal_is_a_casebridge_error(
        self, world: World, registry: SchemaRegistry
    ) -> None:
        """Garbage of many shapes never raises anything outside the error tree."""
        for wire in (b"{}", b'{"v":1,"outer":"..","jwe":"{}"}', b"null", b'"x"', b"1e999"):
            with pytest.raises(CasebridgeError):
                open_as(world, registry, wire)


def test_typ_constants_are_distinct() -> None:
    """Outer, inner and JWE typ values differ, so layers cannot be swapped for one another."""
    assert len({OUTER_TYP, INNER_TYP, JWE_TYP}) == 3


class TestBase64url:
    @pytest.mark.parametrize("text", ["ab+c", "ab/c", "abc=", "a", "ab c", "abé", "AB"])
    def test_non_base64url_is_malformed(self, text: str) -> None:
        """Padding, the standard alphabet, bad lengths and set unused bits are refused."""
        with pytest.raises(InvalidMessage) as info:
            jose.b64url_decode(text, what="t")
        assert info.value.reason == Reason.MALFORMED

    @given(st.text(alphabet=string.ascii_letters + string.digits + "-_+/= \n.é", max_size=24))
    def test_accepted_text_is_the_one_encoding_of_its_bytes(self, text: str) -> None:
        """Whatever is accepted re-encodes to exactly the same text (one form per byte string);
        everything else is MALFORMED, never another error."""
        refused: Reason | None = None
        try:
            raw = jose.b64url_decode(text, what="t")
        except InvalidMessage as exc:
            refused = exc.reason
        if refused is None:
            assert jose.b64url_encode(raw) == text
        else:
            assert refused == Reason.MALFORMED

    def test_round_trip(self) -> None:
        """Every byte string survives encode/decode."""
        for n in range(40):
            data = bytes(range(n))
            assert jose.b64url_decode(jose.b64url_encode(data), what="t") == data
