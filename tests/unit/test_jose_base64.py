"""Strict base64url (RFC 7515 section 2, RFC 4648 section 5): one text per byte string.

The decoder accepts exactly the unpadded, canonical encodings; everything else (padding,
the standard alphabet's ``+`` and ``/``, whitespace, non-zero unused bits, a length of 4n+1)
is MALFORMED.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core.jose import b64url_decode, b64url_encode
from broker.errors import InvalidMessage, Reason

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class TestStrictBase64url:
    @given(st.binary(max_size=300))
    def test_every_byte_string_round_trips(self, raw: bytes) -> None:
        """Decoding the encoding of any bytes gives them back."""
        assert b64url_decode(b64url_encode(raw), what="x") == raw

    @given(st.text(alphabet=ALPHABET + "+/= \n.é", max_size=40))
    def test_accepted_text_is_exactly_the_encoding_of_its_bytes(self, text: str) -> None:
        """Any text is either refused as MALFORMED or is the one canonical encoding of what
        it decodes to (so each byte string has one accepted text)."""
        refused: Reason | None = None
        try:
            raw = b64url_decode(text, what="x")
        except InvalidMessage as exc:
            refused = exc.reason
        if refused is not None:
            assert refused is Reason.MALFORMED
        else:
            assert b64url_encode(raw) == text

    @pytest.mark.parametrize(
        "text",
        ["Zg==", "Zh", "AB", "ab+c", "ab/c", "ab c", "ab\n", "a", "éa", "Zg=", "-_-_-"],
    )
    def test_non_canonical_or_foreign_text_is_refused(self, text: str) -> None:
        """Padding, non-zero unused bits, other alphabets, whitespace, impossible lengths."""
        with pytest.raises(InvalidMessage) as caught:
            b64url_decode(text, what="x")
        assert caught.value.reason is Reason.MALFORMED

    def test_agrees_with_the_standard_library_on_canonical_text(self) -> None:
        """Same bytes as base64.urlsafe_b64decode for a canonical encoding."""
        text = base64.urlsafe_b64encode(bytes(range(256))).rstrip(b"=").decode()
        assert b64url_decode(text, what="x") == bytes(range(256))
