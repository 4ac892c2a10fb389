"""The conformance cases: at least one vector per receiving step and per reason code.

Order: accepted messages, then the receiving steps 1-19 in order, then the directory checks.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from broker.core import canonical, jose
from broker.core.envelope import INNER_TYP, JWE_TYP, OUTER_TYP
from tests.vectors.conformance.generate import (
    DE,
    NL,
    NL2,
    NL_POLICY,
    T0,
    UA,
    Gen,
    _b64j,
    _example,
    wire_of,
)
from tests.vectors.conformance.material import DIRECTORY_NEXT, NOW, SERIAL

MIB = 1024 * 1024
DAY = 86400


def write_all(g: Gen) -> None:
    accepted(g)
    wire_and_outer(g)
    sender_trust(g)
    header_and_addressing(g)
    jwe_structure(g)
    recipient_steps(g)
    directory_checks(g)


def accepted(g: Gen) -> None:
    body = _example("request.assistance")
    h = g.header(1, "request.assistance", (NL,), body, due="2026-12-12")
    wire = g.seal(h, body, name="valid-request")
    g.accepted("valid-request-one-recipient", "A request to one agency.", wire, h, body)
    g.accepted(
        "valid-request-at-gateway",
        "The same request passes a border gateway's steps 1-11.",
        wire,
        h,
        body,
        role="gateway",
    )

    bulletin = _example("bulletin")
    hb = g.header(
        2, "bulletin", (NL, UA), bulletin, handling="H0", tlp="GREEN", purpose="prevention"
    )
    wb = g.seal(hb, bulletin, name="valid-bulletin")
    for r in (NL, UA):
        g.accepted(
            f"valid-bulletin-two-recipients-{r}",
            f"A bulletin to two agencies in two countries, opened by {r}.",
            wb,
            hb,
            bulletin,
            recipient=r,
        )

    ht = g.header(
        3,
        "bulletin",
        (NL2, NL, UA),
        bulletin,
        task_force="tf.eastern-route",
        handling="H1",
        tlp="GREEN",
        purpose="coordination",
    )
    wt = g.seal(ht, bulletin, name="valid-task-force")
    for r in (NL2, UA):
        g.accepted(
            f"valid-task-force-three-recipients-{r}",
            "A task-force message: recipients are exactly the other three members "
            f"(JWE entries in header.recipients order), opened by {r}.",
            wt,
            ht,
            bulletin,
            recipient=r,
        )

    text = dict(bulletin)
    text["title"] = "Zoë Ševčík — Київ → Łódź: 東京 route indicators"
    hn = g.header(
        4,
        "bulletin",
        (NL,),
        text,
        handling="H0",
        tlp="GREEN",
        purpose="prevention",
        legal_basis="Convention d'application de l'accord de Schengen, art. 46 — coopération",
    )
    wn = g.seal(hn, text, name="valid-non-ascii")
    g.accepted(
        "valid-non-ascii",
        "Non-ASCII text in the header (legal_basis) and the body travels as raw UTF-8.",
        wn,
        hn,
        text,
    )

    evidence = _example("evidence.delivered")
    he = g.header(
        5,
        "evidence.delivered",
        (DE,),
        evidence,
        sender=NL,
        purpose="system",
        in_reply_to=evidence["subject_message_id"],
        conversation="00000000-0000-4000-9000-000000000001",
    )
    g.accepted(
        "valid-evidence-delivered",
        "Evidence (delivered) from the recipient back to the sender.",
        g.seal(he, evidence, name="valid-evidence"),
        he,
        evidence,
        recipient=DE,
    )
    relay = _example("evidence.relay_accepted")
    hr = g.header(
        6,
        "evidence.relay_accepted",
        (DE,),
        relay,
        sender="de.gateway",
        purpose="system",
        in_reply_to=relay["subject_message_id"],
    )
    g.accepted(
        "valid-evidence-from-gateway",
        "A border gateway (kind gateway) may sign evidence; it is never a recipient.",
        g.seal(hr, relay, name="valid-relay"),
        hr,
        relay,
        recipient=DE,
    )

    correction = _example("correction")
    hc = g.header(7, "correction", (NL,), correction, purpose="data_quality")
    g.accepted(
        "valid-correction",
        "A correction declares the categories its new values have in the corrected type "
        f"({', '.join(hc['categories'])}).",
        g.seal(hc, correction, name="valid-correction"),
        hc,
        correction,
    )

    hi = g.header(8, "bulletin", (NL,), bulletin, iat=T0 + 120, exp=T0 + 120 + DAY)
    g.accepted(
        "time-iat-at-skew-limit",
        "iat = now + 120 s is accepted (tolerance inclusive).",
        g.seal(hi, bulletin, name="iat-120"),
        hi,
        bulletin,
    )
    hx = g.header(9, "bulletin", (NL,), bulletin, iat=T0 - 10 * DAY, exp=T0 - 119)
    g.accepted(
        "time-exp-inside-skew",
        "exp = now - 119 s is still accepted (refused from now - 120 s on).",
        g.seal(hx, bulletin, name="exp-119"),
        hx,
        bulletin,
    )
    hl = g.header(10, "bulletin", (NL,), bulletin, iat=T0 - 60, exp=T0 - 60 + 90 * DAY)
    g.accepted(
        "time-lifetime-90-days",
        "exp - iat = 90 days exactly is accepted.",
        g.seal(hl, bulletin, name="life-90"),
        hl,
        bulletin,
    )
    h_old = g.header(11, "bulletin", (NL,), bulletin)
    g.accepted(
        "replay-store-entry-expired",
        "An id in the replay store whose entry expired (expires_at < now) is accepted again.",
        g.seal(h_old, bulletin, name="replay-expired"),
        h_old,
        bulletin,
        replay=[{"id": h_old["id"], "expires_at": T0 - 1}],
    )
    hp = g.header(12, "bulletin", (NL,), bulletin, handling="H0", tlp="GREEN")
    g.accepted(
        "policy-allows",
        "With the NL recipient policy, a bulletin is allowed by rule nl.in.all.",
        g.seal(hp, bulletin, name="policy-allows"),
        hp,
        bulletin,
        policy=NL_POLICY,
    )


def wire_and_outer(g: Gen) -> None:
    body = _example("bulletin")
    h = g.header(20, "bulletin", (NL,), body)
    good = g.seal(h, body, name="base")
    obj = json.loads(good)
    head, payload, sig = obj["outer"].split(".")

    def refused(name: str, description: str, wire: bytes, step: int, reason: str) -> None:
        g.write(name, description, wire=wire, step=step, reason=reason)

    def padded(size: int) -> bytes:
        head = good[:-1] + b',"pad":"'
        return head + b"x" * (size - len(head) - 2) + b'"}'

    refused(
        "too-large", "1 MiB + 1 byte is refused before parsing.", padded(MIB + 1), 1, "too_large"
    )
    refused(
        "size-exactly-1-mib",
        "Exactly 1 MiB passes step 1 (and is refused at step 2 for its extra member).",
        padded(MIB),
        2,
        "malformed",
    )
    refused("wire-not-json", "Not JSON.", b"casebridge", 2, "malformed")
    refused(
        "wire-duplicate-member",
        "A duplicate member name.",
        good[:-1] + b',"v":1}',
        2,
        "malformed",
    )
    refused(
        "wire-bom", "A byte-order mark before the object.", b"\xef\xbb\xbf" + good, 2, "malformed"
    )
    refused(
        "wire-invalid-utf8",
        "Invalid UTF-8 inside a string.",
        good.replace(b'"v":1', b'"v":1,"x":"\xff"'),
        2,
        "malformed",
    )
    refused(
        "wire-lone-surrogate",
        "A lone surrogate escape in the wire object.",
        good[:-1] + b',"x":"\\ud800"}',
        2,
        "malformed",
    )
    refused(
        "wire-unknown-version",
        "Wire version 2 is not spoken: refused (protocol version rule).",
        wire_of(obj["outer"], obj["jwe"], v=2),
        2,
        "malformed",
    )
    refused(
        "wire-version-true",
        "v is JSON true, not 1.",
        wire_of(obj["outer"], obj["jwe"], v=True),
        2,
        "malformed",
    )
    refused(
        "wire-extra-member",
        "A member besides v, outer, jwe.",
        canonical.dumps({**obj, "aad": "x"}),
        2,
        "malformed",
    )
    refused(
        "wire-non-canonical",
        "The wire object pretty-printed (not canonical).",
        json.dumps(obj, indent=1).encode(),
        2,
        "malformed",
    )
    refused(
        "wire-non-ascii-outer",
        "The outer string holds a non-ASCII character.",
        wire_of(obj["outer"] + "é", obj["jwe"]),
        2,
        "malformed",
    )

    refused(
        "outer-five-parts",
        "OUTER is a compact JWE (five parts).",
        wire_of(obj["outer"] + ".AA.AA", obj["jwe"]),
        3,
        "malformed",
    )
    refused(
        "outer-padded-base64",
        "OUTER's header part has base64 padding.",
        wire_of(head + "=." + payload + "." + sig, obj["jwe"]),
        3,
        "malformed",
    )
    kid = g.m.agency(DE).signing_kid
    for member, value in (
        ("jku", "https://keys.invalid/jwks.json"),
        ("x5c", ["MIIB"]),
        ("crit", ["exp"]),
        ("jwk", {"kty": "EC"}),
    ):
        refused(
            f"outer-header-{member}",
            f"OUTER header carries {member}.",
            g.seal(
                h,
                body,
                name=f"outer-{member}",
                outer_jws_header={"alg": "ES256", "kid": kid, "typ": OUTER_TYP, member: value},
            ),
            3,
            "forbidden_header",
        )
    refused(
        "outer-header-enc",
        "OUTER header has enc (a JWE header where a JWS belongs).",
        g.seal(
            h,
            body,
            name="outer-enc",
            outer_jws_header={"alg": "ES256", "enc": "A256GCM", "kid": kid, "typ": OUTER_TYP},
        ),
        3,
        "malformed",
    )

    none_head = _b64j({"alg": "none", "kid": kid, "typ": OUTER_TYP})
    refused(
        "outer-alg-none",
        "alg none with an empty signature.",
        wire_of(f"{none_head}.{payload}.", obj["jwe"]),
        4,
        "alg_not_allowed",
    )
    refused(
        "outer-alg-hs256",
        "alg HS256.",
        g.seal(
            h,
            body,
            name="outer-hs",
            outer_jws_header={"alg": "HS256", "kid": kid, "typ": OUTER_TYP},
        ),
        4,
        "alg_not_allowed",
    )
    refused(
        "outer-header-extra-member",
        "OUTER header has cty besides alg, kid, typ.",
        g.seal(
            h,
            body,
            name="outer-cty",
            outer_jws_header={"alg": "ES256", "cty": "json", "kid": kid, "typ": OUTER_TYP},
        ),
        4,
        "forbidden_header",
    )
    refused(
        "outer-no-kid",
        "OUTER header without kid.",
        g.seal(h, body, name="outer-nokid", outer_jws_header={"alg": "ES256", "typ": OUTER_TYP}),
        4,
        "malformed",
    )
    refused(
        "outer-wrong-typ",
        "OUTER typ is the inner typ.",
        g.seal(
            h,
            body,
            name="outer-typ",
            outer_jws_header={"alg": "ES256", "kid": kid, "typ": INNER_TYP},
        ),
        4,
        "malformed",
    )
    raw = jose.b64url_decode(sig, what="s")
    refused(
        "outer-signature-63-bytes",
        "A signature of 63 bytes.",
        wire_of(f"{head}.{payload}.{jose.b64url_encode(raw[:63])}", obj["jwe"]),
        4,
        "bad_signature",
    )
    high = (jose.P256_ORDER - int.from_bytes(raw[32:], "big")).to_bytes(32, "big")
    refused(
        "outer-high-s",
        "The high-S twin of a valid signature.",
        wire_of(f"{head}.{payload}.{jose.b64url_encode(raw[:32] + high)}", obj["jwe"]),
        4,
        "bad_signature",
    )
    spaced = json.dumps({"alg": "ES256", "kid": kid, "typ": OUTER_TYP}).encode()
    refused(
        "outer-header-non-canonical",
        "OUTER header bytes with spaces (signed as sent).",
        g.seal(h, body, name="outer-spaces", outer_jws_header=spaced),
        4,
        "malformed",
    )
    flipped = bytearray(raw)
    flipped[0] ^= 1
    refused(
        "outer-bad-signature",
        "One bit of the outer signature flipped.",
        wire_of(f"{head}.{payload}.{jose.b64url_encode(bytes(flipped))}", obj["jwe"]),
        6,
        "bad_signature",
    )
    refused(
        "outer-signed-by-another-key",
        "The outer JWS names de.lka-berlin's kid but nl.politie-nec's key signed it.",
        g.seal(h, body, name="outer-other-key", outer_key=g.m.agency(NL).signing.key),
        6,
        "bad_signature",
    )


def sender_trust(g: Gen) -> None:
    body = _example("bulletin")

    def msg(
        n: int, sender: str, recipients: tuple[str, ...] = (NL,)
    ) -> tuple[dict[str, Any], bytes]:
        h = g.header(n, "bulletin", recipients, body, sender=sender)
        return h, g.seal(h, body, name=f"sender-{n}")

    h, w = msg(30, DE)
    ka_kid = g.m.agency(DE).agreement_kid
    g.write(
        "sender-agreement-key-signs",
        "The outer JWS names the sender's key-agreement kid (a kid that is not a signing kid).",
        wire=g.seal(
            h,
            body,
            name="sender-ka",
            outer_jws_header={"alg": "ES256", "kid": ka_kid, "typ": OUTER_TYP},
            outer_key=g.m.agency(DE).agreement.key,
        ),
        step=5,
        reason="unknown_sender",
    )
    g.write(
        "sender-unknown-kid",
        "A kid the directory does not list.",
        wire=g.seal(
            h,
            body,
            name="sender-unknown",
            outer_jws_header={"alg": "ES256", "kid": "de.lka-berlin#AAAA", "typ": OUTER_TYP},
        ),
        step=5,
        reason="unknown_sender",
    )
    _, w = msg(31, "nl.revoked-unit", (UA,))
    g.write(
        "sender-revoked",
        "The sender's certificate is on the NL CRL.",
        wire=w,
        recipient=UA,
        step=5,
        reason="sender_revoked",
    )
    _, w = msg(32, "de.rogue")
    g.write(
        "sender-cert-invalid",
        "The sender's certificates chain to a CA outside the federation.",
        wire=w,
        step=5,
        reason="cert_invalid",
    )
    _, w = msg(33, UA)
    g.write(
        "sender-crl-stale",
        "The directory is fresh but the sender's country CRL is past its next update.",
        wire=w,
        directory="crl-stale-ua.jws",
        step=5,
        reason="directory_stale",
    )
    later = DIRECTORY_NEXT + timedelta(minutes=5)
    hs = g.header(34, "bulletin", (NL,), body, now=int(later.timestamp()))
    g.write(
        "directory-stale-at-receipt",
        "The receiver loaded the directory when it was fresh; now it is past next_update "
        "(the receiver's own fault: never reported to the sender).",
        wire=g.seal(hs, body, name="dir-stale"),
        now=later,
        directory_loaded_at=NOW,
        step=5,
        reason="directory_stale",
    )


def header_and_addressing(g: Gen) -> None:
    body = _example("bulletin")
    base = g.header(40, "bulletin", (NL,), body)

    def refused(name: str, description: str, step: int, reason: str, **kw: Any) -> None:
        h = kw.pop("h", base)
        wire = g.seal(h, body, name=name, **kw)
        g.write(name, description, wire=wire, step=step, reason=reason, recipient=kw.get("r", NL))

    refused(
        "payload-not-json",
        "The outer payload is not JSON.",
        7,
        "malformed",
        outer_payload=b"not json",
    )
    refused(
        "payload-extra-member",
        "The outer payload has a member besides header, jwe_sha256, commitment.",
        7,
        "malformed",
        outer_edit=lambda o: o.__setitem__("extra", 1),
    )
    h_e = {**base, "legal_basis": "Code pénal, art. 225-4-1"}
    escaped = json.dumps(
        {"commitment": "C", "header": h_e, "jwe_sha256": "J"},
        sort_keys=True,
        separators=(",", ":"),
    )  # ensure_ascii: é written as \u00e9 (not canonical)

    def escaped_payload(o: dict[str, Any]) -> None:
        o["header"] = h_e

    # Build the valid message first to learn its digests, then re-sign the escaped form.
    ok = json.loads(g.seal(h_e, body, name="payload-escaped"))
    ok_payload = json.loads(jose.b64url_decode(ok["outer"].split(".")[1], what="p"))
    escaped = escaped.replace('"C"', json.dumps(ok_payload["commitment"])).replace(
        '"J"', json.dumps(ok_payload["jwe_sha256"])
    )
    agency = g.m.agency(DE)
    from tests.vectors.conformance.generate import jws

    outer = jws(
        {"alg": "ES256", "kid": agency.signing_kid, "typ": OUTER_TYP},
        escaped.encode("ascii"),
        agency.signing.key,
    )
    g.write(
        "payload-non-canonical-escape",
        "The outer payload writes é as \\u00e9 (valid JSON, not canonical).",
        wire=wire_of(outer, ok["jwe"]),
        step=7,
        reason="malformed",
    )
    lone = canonical.dumps({"commitment": "C", "header": base, "jwe_sha256": "J"}).replace(
        b"Council", b"\\ud800Council"
    )
    g.write(
        "payload-lone-surrogate",
        "A signed header field holds a lone surrogate escape (\\ud800).",
        wire=wire_of(
            jws(
                {"alg": "ES256", "kid": agency.signing_kid, "typ": OUTER_TYP},
                lone,
                agency.signing.key,
            ),
            ok["jwe"],
        ),
        step=7,
        reason="malformed",
    )
    refused(
        "header-v1-uuid",
        "The message id is a version-1 UUID.",
        7,
        "header_invalid",
        h={**base, "id": "6fa459ea-ee8a-11ca-8d0e-00000000002a"},
    )
    refused(
        "header-extra-member",
        "The header has a member section 3 does not define.",
        7,
        "header_invalid",
        h={**base, "priority": "high"},
    )
    refused(
        "header-recipient-trailing-newline",
        "A recipient id followed by a newline (identifiers match their whole pattern).",
        7,
        "header_invalid",
        h={**base, "recipients": ["nl.politie-nec\n"]},
    )
    refused(
        "header-unknown-version",
        "Header v 2: a receiver refuses a protocol version it does not speak.",
        7,
        "header_invalid",
        h={**base, "v": 2},
    )
    refused(
        "header-unknown-category",
        "A declared category outside the list.",
        7,
        "header_invalid",
        h={**base, "categories": ["shoe_size"]},
    )
    refused(
        "foreign-federation",
        "fed names another federation.",
        8,
        "foreign_federation",
        h={**base, "fed": "other-fed"},
    )
    refused(
        "sender-mismatch",
        "header.sender is nl.comensha, the signer is de.lka-berlin.",
        9,
        "sender_mismatch",
        h={**base, "sender": {"agency": NL2, "country": "NL"}},
        outer_jws_header={"alg": "ES256", "kid": g.m.agency(DE).signing_kid, "typ": OUTER_TYP},
        outer_key=g.m.agency(DE).signing.key,
    )
    tf = {"task_force": "tf.eastern-route", "recipients": [NL2, NL, UA], "countries": ["NL", "UA"]}
    refused(
        "task-force-unknown",
        "The task force does not exist in the directory.",
        9,
        "unknown_recipient",
        h={**base, **tf, "task_force": "tf.nowhere"},
    )
    refused(
        "task-force-sender-not-member",
        "The sender is not a member of the task force.",
        9,
        "header_invalid",
        h={**base, "task_force": "tf.nl-ua", "recipients": [NL, UA], "countries": ["NL", "UA"]},
    )
    refused(
        "task-force-recipients-not-the-others",
        "A task-force message that leaves out a member.",
        9,
        "header_invalid",
        h={**base, **tf, "recipients": [NL, UA]},
    )
    refused(
        "recipient-unknown",
        "A recipient the directory does not list.",
        9,
        "unknown_recipient",
        h={**base, "recipients": ["nl.nobody"]},
        recipients=[(g.m.agency(NL).agreement_kid, g.m.agency(NL).agreement.key.public_key())],
    )
    refused(
        "recipient-is-gateway",
        "A border gateway is never a recipient.",
        9,
        "unknown_recipient",
        h={**base, "recipients": ["de.gateway"], "countries": ["DE"]},
    )
    refused(
        "recipient-revoked",
        "A recipient whose certificates are revoked.",
        9,
        "unknown_recipient",
        h={**base, "recipients": [NL, "nl.revoked-unit"]},
    )
    refused(
        "time-iat-beyond-skew",
        "iat = now + 121 s.",
        10,
        "not_yet_valid",
        h={**base, "iat": T0 + 121, "exp": T0 + DAY},
    )
    refused(
        "time-expired-at-skew",
        "exp = now - 120 s is expired.",
        10,
        "expired",
        h={**base, "iat": T0 - 10 * DAY, "exp": T0 - 120},
    )
    refused(
        "time-lifetime-over-90-days",
        "exp - iat = 90 days + 1 s (the lifetime rule is step 10, not step 7).",
        10,
        "header_invalid",
        h={**base, "iat": T0 - 60, "exp": T0 - 60 + 90 * DAY + 1},
    )


def jwe_structure(g: Gen) -> None:
    body = _example("bulletin")
    h = g.header(50, "bulletin", (NL, UA), body)

    def refused(name: str, description: str, reason: str, **kw: Any) -> None:
        g.write(name, description, wire=g.seal(h, body, name=name, **kw), step=11, reason=reason)

    other = json.loads(g.seal(g.header(51, "bulletin", (NL, UA), body), body, name="other"))
    own = json.loads(g.seal(h, body, name="swap-base"))
    g.write(
        "jwe-swapped",
        "The JWE of another message under this outer signature.",
        wire=wire_of(own["outer"], other["jwe"]),
        step=11,
        reason="digest_mismatch",
    )
    refused(
        "jwe-digest-short",
        "jwe_sha256 is not a 32-byte digest.",
        "malformed",
        outer_edit=lambda o: o.__setitem__("jwe_sha256", "AAAA"),
    )
    compact = "eyJhbGciOiJFQ0RILUVTK0EyNTZLVyJ9.AA.AA.AA.AA"
    refused("jwe-compact", "The JWE is compact, not JSON.", "malformed", jwe_text=lambda t: compact)

    def edit(fn: Any) -> Any:
        return fn

    refused(
        "jwe-aad-member",
        "The JWE has an aad member.",
        "forbidden_header",
        jwe_edit=lambda o: o.__setitem__("aad", "AAAA"),
    )
    refused(
        "jwe-unprotected-member",
        "The JWE has an unprotected member.",
        "forbidden_header",
        jwe_edit=lambda o: o.__setitem__("unprotected", {"kid": "x"}),
    )
    refused(
        "jwe-missing-tag",
        "The JWE has no tag.",
        "malformed",
        jwe_edit=lambda o: o.pop("tag"),
    )
    refused(
        "jwe-zip",
        "The protected header has zip.",
        "forbidden_header",
        jwe_edit=lambda o: o.__setitem__(
            "protected", _b64j({"enc": "A256GCM", "typ": JWE_TYP, "zip": "DEF"})
        ),
    )
    refused(
        "jwe-enc-a128gcm",
        "enc is A128GCM.",
        "alg_not_allowed",
        jwe_edit=lambda o: o.__setitem__("protected", _b64j({"enc": "A128GCM", "typ": JWE_TYP})),
    )
    refused(
        "jwe-protected-non-canonical",
        "The protected header bytes have a space.",
        "malformed",
        jwe_edit=lambda o: o.__setitem__(
            "protected", jose.b64url_encode(b'{"enc": "A256GCM","typ":"' + JWE_TYP.encode() + b'"}')
        ),
    )
    refused(
        "jwe-recipient-pbes2",
        "A recipient entry with alg PBES2-HS256+A128KW.",
        "alg_not_allowed",
        jwe_edit=lambda o: o["recipients"][0]["header"].__setitem__("alg", "PBES2-HS256+A128KW"),
    )
    refused(
        "jwe-recipient-apu",
        "A recipient header with apu.",
        "forbidden_header",
        jwe_edit=lambda o: o["recipients"][0]["header"].__setitem__("apu", "AAAA"),
    )
    refused(
        "jwe-epk-p384",
        "An epk on P-384.",
        "alg_not_allowed",
        jwe_edit=lambda o: o["recipients"][1]["header"]["epk"].__setitem__("crv", "P-384"),
    )
    refused(
        "jwe-duplicate-kid",
        "Two recipient entries name the same kid.",
        "malformed",
        jwe_edit=lambda o: o["recipients"][1]["header"].__setitem__(
            "kid", o["recipients"][0]["header"]["kid"]
        ),
    )
    refused(
        "jwe-iv-64-bits",
        "An IV of 64 bits.",
        "malformed",
        jwe_edit=lambda o: o.__setitem__("iv", jose.b64url_encode(b"\x00" * 8)),
    )
    refused(
        "jwe-non-canonical",
        "The JWE text pretty-printed.",
        "malformed",
        jwe_text=lambda t: json.dumps(json.loads(t), indent=1),
    )
    refused(
        "jwe-flattened",
        "The flattened JWE form (header and encrypted_key at the top).",
        "malformed",
        jwe_edit=lambda o: (
            o.update(o.pop("recipients")[0]),
            None,
        ),
    )


def recipient_steps(g: Gen) -> None:
    body = _example("bulletin")
    h = g.header(60, "bulletin", (NL,), body)
    w = g.seal(h, body, name="rcpt-base")
    g.write(
        "not-addressed",
        "ua.npu-ctd opens a message addressed to nl.politie-nec only.",
        wire=w,
        recipient=UA,
        step=12,
        reason="not_addressed",
    )
    g.write(
        "replay",
        "The id is already in the replay store (accepted before).",
        wire=w,
        replay=[{"id": h["id"], "expires_at": h["exp"] + 120}],
        step=13,
        reason="replay",
    )
    g.write(
        "replay-concurrent",
        "Another worker records the same id between step 13 and step 19.",
        wire=w,
        concurrent_accept=True,
        step=19,
        reason="replay",
    )
    ua = g.m.agency(UA)
    g.write(
        "no-jwe-entry",
        "nl.politie-nec is in header.recipients but the JWE has no entry for its kid.",
        wire=g.seal(
            h,
            body,
            name="no-entry",
            recipients=[(ua.agreement_kid, ua.agreement.key.public_key())],
        ),
        step=14,
        reason="not_addressed",
    )

    def off_curve(o: dict[str, Any]) -> None:
        epk = o["recipients"][0]["header"]["epk"]
        y = bytearray(jose.b64url_decode(epk["y"], what="y"))
        y[-1] ^= 1
        epk["y"] = jose.b64url_encode(bytes(y))

    def flip(member: str) -> Any:
        def edit(o: dict[str, Any]) -> None:
            target = o["recipients"][0] if member == "encrypted_key" else o
            raw = bytearray(jose.b64url_decode(target[member], what=member))
            raw[0] ^= 1
            target[member] = jose.b64url_encode(bytes(raw))

        return edit

    for name, description, edit in (
        ("epk-off-curve", "The ephemeral key is not on P-256.", off_curve),
        ("encrypted-key-flipped", "The wrapped key does not unwrap.", flip("encrypted_key")),
        ("tag-flipped", "The GCM tag does not authenticate.", flip("tag")),
    ):
        g.write(
            name,
            description,
            wire=g.seal(h, body, name=name, jwe_edit=edit),
            step=14,
            reason="decrypt_failed",
        )
    g.write(
        "commitment-mismatch",
        "OUTER commits to other content than the JWE holds.",
        wire=g.seal(h, body, name="commit", commitment=jose.sha256_b64url(b"other")),
        step=15,
        reason="commitment_mismatch",
    )
    kid = g.m.agency(DE).signing_kid
    nl = g.m.agency(NL)
    for name, description, reason, kw in (
        (
            "inner-header-mismatch",
            "INNER's header says H3, OUTER's H2.",
            "header_mismatch",
            {"inner_header": {**h, "handling": "H3"}},
        ),
        (
            "inner-other-signer",
            "INNER is signed by nl.politie-nec (its kid), OUTER by de.lka-berlin.",
            "sender_mismatch",
            {
                "inner_jws_header": {"alg": "ES256", "kid": nl.signing_kid, "typ": INNER_TYP},
                "inner_key": nl.signing.key,
            },
        ),
        (
            "inner-bad-signature",
            "INNER names de.lka-berlin's kid but another key signed it.",
            "bad_signature",
            {"inner_key": nl.signing.key},
        ),
        (
            "inner-alg-none",
            "INNER's header has alg none.",
            "alg_not_allowed",
            {"inner_jws_header": {"alg": "none", "kid": kid, "typ": INNER_TYP}},
        ),
        (
            "inner-wrong-typ",
            "INNER's typ is the outer typ.",
            "malformed",
            {"inner_jws_header": {"alg": "ES256", "kid": kid, "typ": OUTER_TYP}},
        ),
        ("inner-salt-short", "The salt is 8 bytes.", "malformed", {"salt": b"\x01" * 8}),
        (
            "inner-payload-non-canonical",
            "INNER's payload has a space after a colon.",
            "malformed",
            {
                "inner_payload": canonical.dumps(
                    {"body": body, "header": h, "salt": jose.b64url_encode(b"\x02" * 16)}
                ).replace(b'"body":', b'"body": ', 1)
            },
        ),
    ):
        g.write(
            name,
            description,
            wire=g.seal(h, body, name=name, **kw),
            step=16,
            reason=reason,
        )
    hb = dict(h)
    g.write(
        "body-not-object",
        "The body is a JSON array.",
        wire=g.seal(hb, ["not", "an", "object"], name="body-array"),
        step=16,
        reason="malformed",
    )

    hu = g.header(61, "notice.unknown", (NL,), body)
    g.write(
        "unknown-type",
        "No schema for the type.",
        wire=g.seal(hu, body, name="unknown-type"),
        step=17,
        reason="unknown_type",
    )
    evidence = _example("evidence.delivered")
    hev = g.header(
        62,
        "evidence.forged",
        (NL,),
        body,
        purpose="system",
        in_reply_to=evidence["subject_message_id"],
    )
    g.write(
        "unknown-evidence-type",
        "evidence.forged is not one of the five evidence types.",
        wire=g.seal(hev, evidence, name="evidence-forged"),
        step=17,
        reason="unknown_type",
    )
    bad = {**body}
    bad.pop(next(iter(sorted(bad))))
    bad["unexpected_member"] = 1
    g.write(
        "schema-invalid",
        "The body breaks the bulletin schema.",
        wire=g.seal(g.header(63, "bulletin", (NL,), body), bad, name="schema-invalid"),
        step=17,
        reason="schema_invalid",
    )
    request = _example("request.assistance")
    h_lie = g.header(64, "request.assistance", (NL,), request, categories=[])
    g.write(
        "category-undeclared",
        "The body holds categories the header does not declare "
        "(no recipient policy: honesty only).",
        wire=g.seal(h_lie, request, name="lie"),
        step=18,
        reason="category_undeclared",
    )
    h3 = g.header(65, "request.assistance", (NL,), request, handling="H3")
    g.write(
        "policy-denied",
        "The NL recipient policy refuses H3 requests (rule nl.in.no-h3-requests).",
        wire=g.seal(h3, request, name="policy-denied"),
        policy=NL_POLICY,
        step=18,
        reason="policy_denied",
        expect={"rule_id": "nl.in.no-h3-requests"},
    )


def directory_checks(g: Gen) -> None:
    def load(
        name: str, description: str, directory: str, step: int | None, reason: str | None, **kw: Any
    ) -> None:
        g.write(
            name,
            description,
            wire=None,
            role="directory",
            directory=directory,
            step=step,
            reason=reason,
            **kw,
        )

    load("directory-valid", "The current directory loads.", "current.jws", None, None)
    load(
        "directory-newer-serial",
        "Serial 8 supersedes the serial 7 already accepted.",
        "serial-8.jws",
        None,
        None,
        min_serial=SERIAL,
    )
    load(
        "directory-same-serial",
        "Re-loading the serial already accepted is allowed.",
        "current.jws",
        None,
        None,
        min_serial=SERIAL,
    )
    load(
        "directory-older-serial",
        "Serial 6 after serial 7 was accepted (rollback).",
        "serial-6.jws",
        9,
        "directory_stale",
        min_serial=SERIAL,
    )
    load(
        "directory-other-root",
        "Signed by a root key other than the pinned one.",
        "other-root.jws",
        3,
        "directory_invalid",
    )
    load(
        "directory-bad-signature",
        "One bit of the signature flipped.",
        "bad-signature.jws",
        4,
        "directory_invalid",
    )
    load(
        "directory-missing-member",
        "Signed correctly, but without task_forces.",
        "missing-member.jws",
        5,
        "directory_invalid",
    )
    load(
        "directory-issued-in-future",
        "issued_at is an hour after now.",
        "issued-in-future.jws",
        7,
        "directory_invalid",
    )
    load("directory-expired", "Past next_update.", "expired.jws", 8, "directory_stale")
    load(
        "directory-not-a-jws",
        "The document is not a compact JWS.",
        "not-a-jws.jws",
        2,
        "directory_invalid",
    )
