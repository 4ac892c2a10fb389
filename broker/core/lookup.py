"""Hit/no-hit lookups: normalised identifiers, pairwise keys, keyed probes and answers.

What it is for
    An agency asks another country "do you hold anything on X?" without sending X. Both
    sides normalise the identifier the same way (:func:`normalise`), key it with HMAC-SHA-256
    under the pairwise lookup key of the two countries (:func:`pairwise_key`, derived with
    HKDF from the secret the two countries agreed, bound to both country codes and the key
    id), and compare digests. The holder registers its records' identifiers as digests only
    (:func:`probe_digest`); a query carries digests only; an answer carries, per matching
    probe, an opaque reference and the agency to contact (:func:`answer_body`), padded so
    every answer has the same size. docs/protocol.md ("Hit/no-hit lookup") says why this and
    not a PSI construction, and what each side learns.

What it must never do
    I/O, reading the clock or randomness, or logging or returning an identifier in clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SCHEME: Final = "hmac-sha256/v1"
QUERY_TYPE: Final = "lookup.query"
ANSWER_TYPE: Final = "lookup.answer"
KINDS: Final = ("document_number", "phone_number", "name_dob")
MAX_PROBES: Final = 10
MIN_SECRET_BYTES: Final = 32
# Every answer is padded to this many characters of compact JSON (ten hits with full contact
# points fit), so a
# hit and a miss look the same size to anyone who sees only the ciphertext.
ANSWER_SIZE: Final = 8000
MAX_PAD: Final = 8192  # schemas/lookup.answer.v1.json pad maxLength
KEY_ID_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
_DOC_RE: Final = re.compile(r"[A-Z0-9]{4,20}\Z")
_PHONE_RE: Final = re.compile(r"\+[1-9][0-9]{6,14}\Z")
_DOB_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


class LookupInputError(ValueError):
    """An identifier cannot be normalised (the message never says what it was)."""


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def normalise(kind: str, value: str) -> str:
    """The canonical form both sides key: the same person's identifier, written differently,
    gives the same string.

    * ``document_number``: letters and digits only, upper case (``ab-123 456`` -> ``AB123456``).
    * ``phone_number``: international E.164, ``00`` read as ``+``; spaces, dots, dashes and
      brackets dropped. A national number without a country code is refused (it would match
      the wrong person abroad).
    * ``name_dob``: ``"<names>|YYYY-MM-DD"``; names lose diacritics and case, every
      non-letter separates words, and the words are sorted (given and family names are written
      in either order across countries).
    """
    if kind == "document_number":
        text = re.sub(r"[\s./-]", "", value).upper()
        if not _DOC_RE.fullmatch(text):
            raise LookupInputError("document_number: 4 to 20 letters and digits expected")
        return text
    if kind == "phone_number":
        text = re.sub(r"[\s.()/-]", "", value)
        if text.startswith("00"):
            text = "+" + text[2:]
        if not _PHONE_RE.fullmatch(text):
            raise LookupInputError("phone_number: an international number (+ or 00) expected")
        return text
    if kind == "name_dob":
        name, sep, dob = value.rpartition("|")
        if not sep or not _DOB_RE.fullmatch(dob.strip()):
            raise LookupInputError("name_dob: '<names>|YYYY-MM-DD' expected")
        words = sorted(w for w in re.split(r"[^a-z]+", _strip_marks(name).casefold()) if w)
        if not words:
            raise LookupInputError("name_dob: no name")
        return " ".join(words) + "|" + dob.strip()
    raise LookupInputError(f"unknown identifier kind (one of {', '.join(KINDS)})")


def pairwise_key(secret: bytes, countries: Iterable[str], key_id: str) -> bytes:
    """The 32-byte HMAC key for a country pair, from the secret the two countries agreed.

    HKDF-SHA-256 binds it to both (sorted) country codes and the key id, so the same secret
    configured by mistake for another pair, or another epoch, never gives the same key.
    """
    pair = sorted(set(countries))
    if len(pair) != 2 or not KEY_ID_RE.fullmatch(key_id):
        raise ValueError("a pairwise key needs two countries and a key id")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"a lookup secret needs at least {MIN_SECRET_BYTES} bytes")
    info = f"casebridge/lookup/{SCHEME}|{pair[0]}|{pair[1]}|{key_id}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def probe_digest(key: bytes, kind: str, normalised: str) -> str:
    """base64url (no padding) HMAC-SHA-256 of ``kind NUL normalised`` under ``key``."""
    mac = hmac.new(key, kind.encode() + b"\x00" + normalised.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, kw_only=True, slots=True)
class PartnerKey:
    """The lookup key this country uses with ``country``."""

    country: str
    key_id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class Match:
    """A registered record matching probe number ``probe``."""

    probe: int
    reference: str
    agency: str


def query_body(
    probes: Sequence[tuple[str, str]],
    partner: PartnerKey,
    *,
    case_ref: str | None = None,
    purpose_note: str | None = None,
) -> dict[str, Any]:
    """A ``lookup.query`` body for (kind, clear value) pairs: only digests go in it."""
    if not 0 < len(probes) <= MAX_PROBES:
        raise LookupInputError(f"1 to {MAX_PROBES} identifiers per lookup")
    body: dict[str, Any] = {
        "scheme": SCHEME,
        "key_id": partner.key_id,
        "probes": [
            {"kind": kind, "digest": probe_digest(partner.key, kind, normalise(kind, value))}
            for kind, value in probes
        ],
    }
    if case_ref:
        body["case_ref"] = case_ref
    if purpose_note:
        body["purpose_note"] = purpose_note
    return body


def match(
    body: Mapping[str, Any], holders: Callable[[str], Sequence[tuple[str, str]]]
) -> list[Match]:
    """Probes of a query body the index knows: ``holders(digest)`` -> [(reference, agency)]."""
    found: list[Match] = []
    for number, probe in enumerate(body.get("probes", ())[:MAX_PROBES]):
        digest = str(probe.get("digest", ""))
        found.extend(Match(probe=number, reference=r, agency=a) for r, a in holders(digest))
    return found[:MAX_PROBES]


def answer_body(
    query_id: str,
    result: str,
    matches: Sequence[Match] = (),
    *,
    contact: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``lookup.answer`` body, padded to :data:`ANSWER_SIZE` characters of compact JSON."""
    body: dict[str, Any] = {"query_id": query_id, "result": result}
    if result == "hit":
        hits = []
        for m in matches[:MAX_PROBES]:
            hit: dict[str, Any] = {"probe": m.probe, "reference": m.reference, "agency": m.agency}
            if contact:
                hit["contact_point"] = dict(contact)
            hits.append(hit)
        body["hits"] = hits
    size = len(json.dumps({**body, "pad": ""}, separators=(",", ":"), ensure_ascii=False))
    body["pad"] = "=" * max(0, min(MAX_PAD, ANSWER_SIZE - size))
    return body
