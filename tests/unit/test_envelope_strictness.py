"""Core strictness: every malformed input class is refused with one documented reason code,
the same at the border gateway (``verify_routing``) and at the recipient (``open_message``).

Each deviant message is forged by a sender holding a valid signing key and re-signed, so the
check under test is the one that fails (not the signature over the part that was changed).
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st
from jwcrypto import jwk
from jwcrypto.jwa import JWA

from broker.core import canonical, jose
from broker.core.envelope import (
    INNER_TYP,
    JWE_TYP,
    OUTER_TYP,
    RoutedMessage,
    open_message,
    seal,
    verify_routing,
)
from broker.core.replay import MemoryReplayStore
from broker.core.trust import AgencyKeys, KeyResolver, StaticResolver
from broker.errors import InvalidMessage, Reason
from broker.loaders import load_schema_registry

from . import forge
from .forge import NOW, Agency, World

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
BODY: dict[str, Any] = json.loads((EXAMPLES / "bulletin.json").read_text())
REGISTRY = load_schema_registry()
Serialise = Callable[[Any], bytes]


def canonical_bytes(value: Any) -> bytes:
    return canonical.dumps(value)


def pretty(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False).encode()


def unsorted(value: Any) -> bytes:
    def reverse(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: reverse(v[k]) for k in sorted(v, reverse=True)}
        if isinstance(v, list):
            return [reverse(x) for x in v]
        return v

    return json.dumps(reverse(value), separators=(",", ":"), ensure_ascii=False).encode()


def ascii_escaped(value: Any) -> bytes:
    """Sorted and compact, but non-ASCII (and lone surrogates) as \\u escapes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


NON_CANONICAL: dict[str, Serialise] = {
    "pretty": pretty,
    "unsorted": unsorted,
    "spaced": lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False).encode(),
}


def jws(agency: Agency, payload: bytes, typ: str, head: Serialise = canonical_bytes) -> str:
    """A compact ES256 JWS with the protected header serialised by ``head`` (low-s)."""
    header = head({"alg": "ES256", "kid": f"{agency.agency_id}#sig", "typ": typ})
    signing_input = f"{forge.b64(header)}.{forge.b64(payload)}"
    r, s = decode_dss_signature(
        agency.signing.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    )
    s = min(s, jose.P256_ORDER - s)
    return f"{signing_input}.{forge.b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def jwe_object(
    plaintext: bytes, recipients: list[Agency], protected: Serialise = canonical_bytes
) -> dict[str, Any]:
    """The JWE as encrypt_general builds it, with the protected header serialised by
    ``protected`` (it is the AAD, so a non-canonical one still decrypts)."""
    protected_b64 = forge.b64(protected({"enc": jose.ENC_ALG, "typ": JWE_TYP}))
    cek = secrets.token_bytes(32)
    entries = []
    for r in recipients:
        wrapped = JWA.keymgmt_alg(jose.KEY_ALG).wrap(
            jwk.JWK.from_pyca(r.agreement.public_key()),
            256,
            cek,
            {"alg": jose.KEY_ALG, "enc": jose.ENC_ALG},
        )
        epk = wrapped["header"]["epk"]
        entries.append(
            {
                "encrypted_key": forge.b64(wrapped["ek"]),
                "header": {
                    "alg": jose.KEY_ALG,
                    "epk": {k: epk[k] for k in ("crv", "kty", "x", "y")},
                    "kid": f"{r.agency_id}#ka",
                },
            }
        )
    iv, ciphertext, tag = jose._CONTENT_CIPHER.encrypt(cek, protected_b64.encode(), plaintext)
    return {
        "ciphertext": forge.b64(ciphertext),
        "iv": forge.b64(iv),
        "protected": protected_b64,
        "recipients": entries,
        "tag": forge.b64(tag),
    }


def build(
    signer: Agency,
    header: dict[str, Any],
    recipients: list[Agency],
    *,
    body: Any = None,
    outer_head: Serialise = canonical_bytes,
    outer_payload: Serialise = canonical_bytes,
    inner_head: Serialise = canonical_bytes,
    inner_payload: Serialise = canonical_bytes,
    jwe_protected: Serialise = canonical_bytes,
    jwe_text: Serialise = canonical_bytes,
) -> bytes:
    """A fully signed message whose every layer is serialised by the given function."""
    inner_doc = {
        "body": BODY if body is None else body,
        "header": header,
        "salt": forge.b64(secrets.token_bytes(16)),
    }
    inner = jws(signer, inner_payload(inner_doc), INNER_TYP, inner_head).encode()
    text = jwe_text(jwe_object(inner, recipients, jwe_protected)).decode("ascii")
    outer_doc = {
        "commitment": jose.sha256_b64url(inner),
        "header": header,
        "jwe_sha256": jose.sha256_b64url(text.encode()),
    }
    outer = jws(signer, outer_payload(outer_doc), OUTER_TYP, outer_head)
    return forge.assemble(outer, text)


@pytest.fixture(scope="module")
def world() -> World:
    return forge.make_world(revoked=("de.sta-berlin",))


def route(world: World | KeyResolver, wire: bytes) -> RoutedMessage:
    resolver = world.resolver if isinstance(world, World) else world
    return verify_routing(wire, resolver=resolver, now=NOW)


def open_at(
    world: World,
    wire: bytes,
    agency_id: str = "nl.politie-nec",
    resolver: KeyResolver | None = None,
) -> Any:
    return open_message(
        wire,
        recipient=world[agency_id].recipient,
        resolver=resolver or world.resolver,
        replay=MemoryReplayStore(),
        validator=REGISTRY,
        now=NOW,
    )


def refused_by_both(
    reason: Reason,
    world: World,
    wire: bytes,
    agency_id: str = "nl.politie-nec",
    resolver: KeyResolver | None = None,
) -> None:
    """The gateway check and the recipient refuse ``wire`` with the same ``reason``."""
    with pytest.raises(InvalidMessage) as at_gateway:
        verify_routing(wire, resolver=resolver or world.resolver, now=NOW)
    with pytest.raises(InvalidMessage) as at_recipient:
        open_at(world, wire, agency_id, resolver)
    assert at_gateway.value.reason == reason, at_gateway.value
    assert at_recipient.value.reason == reason, at_recipient.value


def refused_by_recipient_only(reason: Reason, world: World, wire: bytes) -> None:
    """An inner-layer fault: the gateway cannot see it, the recipient refuses with ``reason``."""
    route(world, wire)
    with pytest.raises(InvalidMessage) as info:
        open_at(world, wire)
    assert info.value.reason == reason, info.value


def hdr(
    *,
    sender: str = "de.lka-berlin",
    recipients: tuple[str, ...] | list[str] = ("nl.politie-nec",),
    message_type: str = "bulletin",
    **members: Any,
) -> dict[str, Any]:
    """A header as JSON (members set verbatim, so deviant values are possible)."""
    h = forge.header(
        sender=sender, recipients=tuple(recipients), message_type=message_type
    ).to_json()
    h.update({k: list(v) if isinstance(v, tuple) else v for k, v in members.items()})
    return h


class TestForgeryBaseline:
    def test_the_forging_helper_builds_valid_messages(self, world: World) -> None:
        """A message built by the test's forging helper with canonical layers opens normally
        (so each refusal below is caused by the one deviation it introduces)."""
        wire = build(world["de.lka-berlin"], hdr(), [world["nl.politie-nec"]])
        route(world, wire)
        assert open_at(world, wire).body == BODY


class TestCanonicalLayers:
    @pytest.mark.parametrize("variant", sorted(NON_CANONICAL))
    @pytest.mark.parametrize("layer", ["outer_head", "outer_payload", "jwe_protected", "jwe_text"])
    def test_non_canonical_visible_layer(self, world: World, layer: str, variant: str) -> None:
        """A non-canonical outer JWS header or payload, JWE text or JWE protected header is
        refused as malformed at the gateway and at the recipient."""
        wire = build(
            world["de.lka-berlin"],
            hdr(),
            [world["nl.politie-nec"]],
            **{layer: NON_CANONICAL[variant]},
        )
        refused_by_both(Reason.MALFORMED, world, wire)

    @pytest.mark.parametrize("variant", sorted(NON_CANONICAL))
    @pytest.mark.parametrize("layer", ["inner_head", "inner_payload"])
    def test_non_canonical_inner_layer(self, world: World, layer: str, variant: str) -> None:
        """A non-canonical inner JWS header or payload is refused as malformed by the recipient
        (the gateway cannot see inside the JWE)."""
        wire = build(
            world["de.lka-berlin"],
            hdr(),
            [world["nl.politie-nec"]],
            **{layer: NON_CANONICAL[variant]},
        )
        refused_by_recipient_only(Reason.MALFORMED, world, wire)

    def test_pretty_printed_jwe_from_seal_output(self, world: World) -> None:
        """Re-indenting the JWE of a sealed message and re-signing its digest is refused."""
        sender = world["de.lka-berlin"]
        wire = build(sender, hdr(), [world["nl.politie-nec"]], jwe_text=pretty)
        refused_by_both(Reason.MALFORMED, world, wire)

    def test_non_ascii_as_raw_utf8_is_accepted(self, world: World) -> None:
        """Non-ASCII text in a header or body travels as raw UTF-8 and opens."""
        body = dict(BODY, title="Ärztliche Hilfe — допомога 😀")
        h = hdr(legal_basis="Art. 5 Übereinkommen — угода")
        wire = build(world["de.lka-berlin"], h, [world["nl.politie-nec"]], body=body)
        route(world, wire)
        opened = open_at(world, wire)
        assert opened.body == body
        assert opened.header.legal_basis == h["legal_basis"]

    def test_non_ascii_as_escapes_in_the_header_is_refused(self, world: World) -> None:
        """The same header with non-ASCII written as \\u escapes is not canonical: malformed at
        both points."""
        h = hdr(legal_basis="Art. 5 Übereinkommen 😀")
        wire = build(
            world["de.lka-berlin"], h, [world["nl.politie-nec"]], outer_payload=ascii_escaped
        )
        refused_by_both(Reason.MALFORMED, world, wire)

    def test_non_ascii_as_escapes_in_the_body_is_refused(self, world: World) -> None:
        """A body with non-ASCII written as \\u escapes is refused by the recipient."""
        body = dict(BODY, title="Ärztliche Hilfe")
        wire = build(
            world["de.lka-berlin"],
            hdr(),
            [world["nl.politie-nec"]],
            body=body,
            inner_payload=ascii_escaped,
        )
        refused_by_recipient_only(Reason.MALFORMED, world, wire)

    def test_seal_output_is_canonical_at_every_layer(self, world: World) -> None:
        """seal produces canonical bytes for every layer (what the receiving checks demand)."""
        wire = forge.seal_for(world, forge.header(legal_basis="Übereinkommen"), BODY)
        outer, jwe_text = forge.split(wire)
        head, payload, _ = outer.split(".")
        for part in (head, payload):
            raw = jose.b64url_decode(part, what="part")
            assert canonical.dumps(json.loads(raw)) == raw
        assert canonical.dumps(json.loads(jwe_text)) == jwe_text.encode()
        protected = jose.b64url_decode(json.loads(jwe_text)["protected"], what="protected")
        assert canonical.dumps(json.loads(protected)) == protected


class TestLoneSurrogates:
    @pytest.mark.parametrize("text", ["x\ud800", "\udfff", "a\udc00b", "\ud83d!"])
    def test_in_a_signed_header_value(self, world: World, text: str) -> None:
        """A header string holding a lone surrogate escape is malformed at both points."""
        wire = build(
            world["de.lka-berlin"],
            hdr(legal_basis=text),
            [world["nl.politie-nec"]],
            outer_payload=ascii_escaped,
            inner_payload=ascii_escaped,
        )
        refused_by_both(Reason.MALFORMED, world, wire)

    def test_in_a_header_member_name(self, world: World) -> None:
        """A member name holding a lone surrogate is malformed (not header_invalid)."""
        h = dict(hdr(), **{"x\ud800": 1})
        wire = build(
            world["de.lka-berlin"],
            h,
            [world["nl.politie-nec"]],
            outer_payload=ascii_escaped,
            inner_payload=ascii_escaped,
        )
        refused_by_both(Reason.MALFORMED, world, wire)

    def test_in_the_body(self, world: World) -> None:
        """A body string with a lone surrogate is malformed at the recipient (a refusal, not a
        UnicodeEncodeError)."""
        body = dict(BODY, title="x\ud800")
        wire = build(
            world["de.lka-berlin"],
            hdr(),
            [world["nl.politie-nec"]],
            body=body,
            inner_payload=ascii_escaped,
        )
        refused_by_recipient_only(Reason.MALFORMED, world, wire)

    def test_in_a_jws_header(self, world: World) -> None:
        """A JWS protected header (kid) with a lone surrogate is malformed at both points."""
        sender = world["de.lka-berlin"]

        def head(value: Any) -> bytes:
            return ascii_escaped(dict(value, kid="de.lka-berlin#sig\ud800"))

        wire = build(sender, hdr(), [world["nl.politie-nec"]], outer_head=head)
        refused_by_both(Reason.MALFORMED, world, wire)

    @pytest.mark.parametrize("where", ["header", "body"])
    def test_seal_refuses_instead_of_raising(self, world: World, where: str) -> None:
        """Sealing a header or body with a lone surrogate raises MALFORMED, not UnicodeError."""
        h = forge.header(legal_basis="x\ud800") if where == "header" else forge.header()
        body = dict(BODY, title="x\udc00") if where == "body" else BODY
        with pytest.raises(InvalidMessage) as info:
            seal(
                header=h,
                body=body,
                sender=world["de.lka-berlin"].sender,
                resolver=world.resolver,
                now=NOW,
                salt=secrets.token_bytes(16),
            )
        assert info.value.reason == Reason.MALFORMED

    @pytest.mark.parametrize(
        "raw",
        [b'"x\\ud800"', b'{"\\udfff":1}', b'["\\uDBFF"]', b'"\\ud800\\u0041"', b'"\\udc00\\ud800"'],
    )
    def test_loads_strict_refuses_lone_surrogate_escapes(self, raw: bytes) -> None:
        """Lone (or reversed) surrogate escapes in keys or values are MALFORMED."""
        with pytest.raises(InvalidMessage) as info:
            canonical.loads_strict(raw)
        assert info.value.reason == Reason.MALFORMED
        with pytest.raises(InvalidMessage):
            canonical.loads_strict(raw.decode("ascii"))

    def test_loads_strict_accepts_escaped_pairs(self) -> None:
        """A valid escaped surrogate pair decodes to its one character."""
        assert canonical.loads_strict(b'"\\ud83d\\ude00"') == "\U0001f600"
        assert canonical.loads_strict(b'"\\\\ud800"') == "\\ud800"  # an escaped backslash

    def test_loads_strict_refuses_raw_surrogate_in_str_input(self) -> None:
        """A str argument holding a raw lone surrogate is MALFORMED too."""
        with pytest.raises(InvalidMessage) as info:
            canonical.loads_strict('{"a":"x\ud800"}')
        assert info.value.reason == Reason.MALFORMED

    @given(
        st.text(
            st.one_of(st.characters(), st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]))
        )
    )
    def test_any_string_round_trips_or_is_malformed(self, text: str) -> None:
        """Any Python string, as value or key, either round-trips through dumps/loads_strict or
        is MALFORMED; its \\u-escaped form parses to valid text or is MALFORMED. Nothing else."""
        for value in (text, {text: [text]}):
            reasons: list[Reason] = []
            try:
                assert canonical.loads_strict(canonical.dumps(value)) == value
            except InvalidMessage as exc:
                reasons.append(exc.reason)
            escaped = json.dumps(value, ensure_ascii=True).encode()
            try:
                parsed = canonical.loads_strict(escaped)
                canonical.dumps(parsed)  # no lone surrogate got through
                if _encodable(text):
                    assert parsed == value
            except InvalidMessage as exc:
                reasons.append(exc.reason)
            assert set(reasons) <= {Reason.MALFORMED}
            assert bool(reasons) == (not _encodable(text))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class TestMessageIds:
    @pytest.mark.parametrize(
        "msg_id",
        [
            str(uuid.uuid1()),
            str(uuid.uuid5(uuid.NAMESPACE_URL, "x")),
            "00000000-0000-0000-0000-000000000000",
            str(uuid.uuid4()).upper(),
            "6f1c2a52-4d0e-4c4b-ca51-1c1b8f0e2d77",  # version 4, variant 110x (Microsoft)
            "6f1c2a524d0e4c4b9a511c1b8f0e2d77",
            "6f1c2a52-4d0e-4c4b-9a51-1c1b8f0e2d77\n",
        ],
    )
    def test_message_id_must_be_v4(self, world: World, msg_id: str) -> None:
        """A message id that is not a lower-case hyphenated v4 RFC 4122 UUID is header_invalid."""
        wire = build(world["de.lka-berlin"], hdr(id=msg_id), [world["nl.politie-nec"]])
        refused_by_both(Reason.HEADER_INVALID, world, wire)

    def test_other_uuid_members_accept_any_version(self, world: World) -> None:
        """conversation, in_reply_to and derived_from may be any lower-case UUID."""
        h = hdr(
            conversation=str(uuid.uuid1()),
            in_reply_to=str(uuid.uuid5(uuid.NAMESPACE_URL, "a")),
            derived_from=str(uuid.uuid4()),
        )
        wire = build(world["de.lka-berlin"], h, [world["nl.politie-nec"]])
        route(world, wire)
        assert open_at(world, wire).header.conversation == h["conversation"]


class TestExactIdentifiers:
    @pytest.mark.parametrize("suffix", ["\n", "\r", "\x00", " "])
    @pytest.mark.parametrize(
        ("member", "value"),
        [
            ("recipients", ["nl.politie-nec{}"]),
            ("fed", "test-fed{}"),
            ("type", "bulletin{}"),
            ("task_force", "tf.balkan-route{}"),
            ("countries", ["NL{}"]),
            ("due", "2026-12-01{}"),
        ],
    )
    def test_trailing_characters_are_header_invalid(
        self, world: World, member: str, value: Any, suffix: str
    ) -> None:
        """An identifier with a trailing newline, CR, NUL or space is header_invalid at both
        points (never routed to a subject that cannot be published)."""
        bad = [v.format(suffix) for v in value] if isinstance(value, list) else value.format(suffix)
        h = hdr()
        h[member] = bad
        wire = build(world["de.lka-berlin"], h, [world["nl.politie-nec"]])
        refused_by_both(Reason.HEADER_INVALID, world, wire)

    def test_trailing_newline_in_sender(self, world: World) -> None:
        """A sender agency id with a trailing newline is header_invalid."""
        h = hdr()
        h["sender"] = {"agency": "de.lka-berlin\n", "country": "DE"}
        wire = build(world["de.lka-berlin"], h, [world["nl.politie-nec"]])
        refused_by_both(Reason.HEADER_INVALID, world, wire)

    def test_week_date_is_not_a_due_date(self, world: World) -> None:
        """due must be YYYY-MM-DD (ISO week dates of the same length are refused)."""
        wire = build(world["de.lka-berlin"], hdr(due="2026-W01-1"), [world["nl.politie-nec"]])
        refused_by_both(Reason.HEADER_INVALID, world, wire)


class _Faulty:
    """A resolver that refuses one agency with a given reason (as a directory would for an
    expired certificate or an expired CRL), and delegates everything else."""

    def __init__(self, inner: StaticResolver, agency_id: str, reason: Reason) -> None:
        self._inner, self._agency_id, self._reason = inner, agency_id, reason

    @property
    def federation_id(self) -> str:
        return self._inner.federation_id

    def agency(self, agency_id: str, *, now: Any) -> AgencyKeys:
        if agency_id == self._agency_id:
            raise InvalidMessage(self._reason, "test refusal")
        return self._inner.agency(agency_id, now=now)

    def signing_key(self, kid: str, *, now: Any) -> AgencyKeys:
        return self._inner.signing_key(kid, now=now)

    def task_force(self, task_force_id: str, *, now: Any) -> tuple[str, ...]:
        return self._inner.task_force(task_force_id, now=now)


class TestDirectoryAddressing:
    def test_unknown_recipient(self, world: World) -> None:
        """A recipient the directory does not list is unknown_recipient at both points."""
        h = hdr(recipients=("fr.ocrteh", "nl.politie-nec"))
        wire = build(world["de.lka-berlin"], h, [world["nl.politie-nec"]])
        refused_by_both(Reason.UNKNOWN_RECIPIENT, world, wire)

    def test_revoked_recipient(self, world: World) -> None:
        """A revoked recipient is unknown_recipient (not the sender's revocation code)."""
        h = hdr(recipients=("de.sta-berlin", "nl.politie-nec"))
        wire = build(world["de.lka-berlin"], h, [world["nl.politie-nec"], world["de.sta-berlin"]])
        refused_by_both(Reason.UNKNOWN_RECIPIENT, world, wire)

    def test_recipient_with_invalid_certificate(self, world: World) -> None:
        """A recipient whose certificate the directory refuses (expired) is unknown_recipient."""
        faulty = _Faulty(world.resolver, "ua.npu-ctd", Reason.CERT_INVALID)
        h = hdr(recipients=("nl.politie-nec", "ua.npu-ctd"))
        wire = build(world["de.lka-berlin"], h, [world["nl.politie-nec"], world["ua.npu-ctd"]])
        refused_by_both(Reason.UNKNOWN_RECIPIENT, world, wire, resolver=faulty)

    def test_stale_directory_stays_directory_stale(self, world: World) -> None:
        """A recipient lookup failing because our directory (or CRL) is stale stays
        directory_stale: the receiver's own transient fault, not the sender's."""
        faulty = _Faulty(world.resolver, "nl.politie-nec", Reason.DIRECTORY_STALE)
        wire = build(world["de.lka-berlin"], hdr(), [world["nl.politie-nec"]])
        refused_by_both(Reason.DIRECTORY_STALE, world, wire, resolver=faulty)

    def test_border_gateway_is_not_a_recipient(self, world: World) -> None:
        """A gateway's directory entry signs evidence but is never a recipient."""
        gateway = Agency("nl.gateway", "gateway")
        resolver = StaticResolver(
            forge.FED, [a.keys for a in world.agencies.values()] + [gateway.keys]
        )
        h = hdr(recipients=("nl.gateway", "nl.politie-nec"))
        wire = build(world["de.lka-berlin"], h, [world["nl.politie-nec"], gateway])
        refused_by_both(Reason.UNKNOWN_RECIPIENT, world, wire, resolver=resolver)

    def test_gateway_evidence_is_routed(self, world: World) -> None:
        """Evidence signed by a border gateway (directory kind gateway) to an agency passes."""
        gateway = Agency("de.gateway", "gateway")
        resolver = StaticResolver(
            forge.FED, [a.keys for a in world.agencies.values()] + [gateway.keys]
        )
        h = hdr(
            sender="de.gateway",
            recipients=("de.lka-berlin",),
            message_type="evidence.relay_accepted",
            purpose="system",
            in_reply_to=str(uuid.uuid4()),
        )
        wire = build(gateway, h, [world["de.lka-berlin"]])
        assert route(resolver, wire).sender.agency_id == "de.gateway"

    def test_unknown_task_force(self, world: World) -> None:
        """A task force the directory does not list is unknown_recipient."""
        h = hdr(recipients=("nl.politie-nec",), task_force="tf.nowhere")
        wire = build(world["de.lka-berlin"], h, [world["nl.politie-nec"]])
        refused_by_both(Reason.UNKNOWN_RECIPIENT, world, wire)

    def test_sender_not_a_member(self, world: World) -> None:
        """A non-member sending to a task force is header_invalid."""
        members = ("de.lka-berlin", "nl.politie-nec", "ua.npu-ctd")
        h = hdr(sender="nl.comensha", recipients=members, task_force="tf.balkan-route")
        wire = build(world["nl.comensha"], h, [world[m] for m in members])
        refused_by_both(Reason.HEADER_INVALID, world, wire)

    @pytest.mark.parametrize(
        "recipients",
        [
            ("nl.politie-nec",),  # a member left out
            ("nl.comensha", "nl.politie-nec", "ua.npu-ctd"),  # a non-member added
            ("nl.comensha", "nl.politie-nec"),  # one swapped for a non-member
        ],
    )
    def test_recipients_not_exactly_the_other_members(
        self, world: World, recipients: tuple[str, ...]
    ) -> None:
        """Task-force recipients must be exactly the other members: else header_invalid."""
        h = hdr(recipients=recipients, task_force="tf.balkan-route")
        wire = build(world["de.lka-berlin"], h, [world[r] for r in recipients])
        refused_by_both(Reason.HEADER_INVALID, world, wire)

    def test_seal_applies_the_same_addressing_rules(self, world: World) -> None:
        """seal refuses a non-member sender and a revoked recipient with the same codes."""
        h = forge.header(
            sender="nl.comensha",
            recipients=("de.lka-berlin", "nl.politie-nec", "ua.npu-ctd"),
            task_force="tf.balkan-route",
        )
        with pytest.raises(InvalidMessage) as info:
            forge.seal_for(world, h, BODY)
        assert info.value.reason == Reason.HEADER_INVALID
        with pytest.raises(InvalidMessage) as info:
            forge.seal_for(world, forge.header(recipients=("de.sta-berlin",)), BODY)
        assert info.value.reason == Reason.UNKNOWN_RECIPIENT

    def test_routed_message_carries_the_recipients_entries(self, world: World) -> None:
        """verify_routing returns the directory entries of the recipients it checked."""
        h = replace(forge.header(), recipients=("nl.politie-nec", "ua.npu-ctd"))
        routed = route(world, forge.seal_for(world, h, BODY))
        assert [r.agency_id for r in routed.recipients] == ["nl.politie-nec", "ua.npu-ctd"]


class TestJweStructureAtTheGateway:
    @pytest.mark.parametrize(
        "mutate",
        [
            lambda o: o["recipients"][0]["header"]["epk"].update(x=[[[[[[[["deep"]]]]]]]]),
            lambda o: o["recipients"][0]["header"]["epk"].update(y=7),
            lambda o: o["recipients"][0]["header"].update(kid=["k"]),
            lambda o: o.update(iv=forge.b64(b"\0" * 8)),
            lambda o: o["recipients"][0].update(encrypted_key="!!"),
            lambda o: o["recipients"].append(copy_of(o["recipients"][0])),
        ],
        ids=["nested-epk", "number-epk", "list-kid", "short-iv", "bad-encrypted-key", "kid-twice"],
    )
    def test_malformed_jwe_refused_before_relay(
        self, world: World, mutate: Callable[[dict[str, Any]], None]
    ) -> None:
        """A JWE whose structure breaks section 4.4 is malformed at the gateway already, with
        the same reason as at the recipient."""

        def text(obj: Any) -> bytes:
            mutate(obj)
            return canonical.dumps(obj)

        wire = build(world["de.lka-berlin"], hdr(), [world["nl.politie-nec"]], jwe_text=text)
        refused_by_both(Reason.MALFORMED, world, wire)


def copy_of(value: Any) -> Any:
    return json.loads(json.dumps(value))
