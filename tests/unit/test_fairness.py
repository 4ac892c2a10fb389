"""Fair share at the gateway: the token bucket and its settings (broker/gateway/fairness.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import ConfigError
from broker.gateway.fairness import (
    DEFAULT_SENDER_BURST,
    DEFAULT_SENDER_RATE,
    FairShare,
    TokenBucket,
)


class TestTokenBucket:
    def test_starts_full(self) -> None:
        """A new bucket holds its whole burst: a quiet sender may send a burst at once."""
        bucket = TokenBucket(rate=10.0, burst=50, now=100.0)
        assert bucket.available(100.0) == 50
        assert bucket.wait(100.0) == 0.0

    def test_spent_tokens_come_back_at_the_rate(self) -> None:
        """After spending everything, tokens return at ``rate`` a second."""
        bucket = TokenBucket(rate=10.0, burst=50, now=0.0)
        bucket.take(50, 0.0)
        assert bucket.available(0.0) == 0
        assert bucket.wait(0.0) == pytest.approx(0.1)
        assert bucket.available(0.5) == 5
        assert bucket.wait(0.5) == 0.0

    def test_never_exceeds_burst(self) -> None:
        """A long quiet period refills to the burst and no further."""
        bucket = TokenBucket(rate=1000.0, burst=7, now=0.0)
        bucket.take(7, 0.0)
        assert bucket.available(3600.0) == 7

    def test_clock_going_backwards_adds_nothing(self) -> None:
        """A monotonic reading older than the last one is ignored, not a negative refill."""
        bucket = TokenBucket(rate=10.0, burst=10, now=5.0)
        bucket.take(10, 5.0)
        assert bucket.available(4.0) == 0
        assert bucket.available(5.2) == 2

    @given(
        rate=st.floats(min_value=0.1, max_value=1000.0),
        burst=st.integers(min_value=1, max_value=1000),
        steps=st.lists(
            st.tuples(st.floats(min_value=0.0, max_value=5.0), st.integers(0, 2000)),
            max_size=50,
        ),
    )
    def test_long_run_rate_is_bounded(
        self, rate: float, burst: int, steps: list[tuple[float, int]]
    ) -> None:
        """Whatever a greedy sender does, it takes at most burst + rate * elapsed messages."""
        now = 0.0
        bucket = TokenBucket(rate=rate, burst=burst, now=now)
        taken = 0
        for advance, wanted in steps:
            now += advance
            got = min(wanted, bucket.available(now))
            bucket.take(got, now)
            taken += got
            assert bucket.available(now) >= 0
        assert taken <= burst + rate * now + 1e-6


class TestFairShareSettings:
    def test_defaults(self) -> None:
        """No ``fair_share`` member: the documented defaults."""
        share = FairShare.from_json(None)
        assert (share.sender_rate, share.sender_burst) == (
            DEFAULT_SENDER_RATE,
            DEFAULT_SENDER_BURST,
        )

    def test_values_read(self) -> None:
        """Both members are taken from the settings."""
        share = FairShare.from_json({"sender_rate": 5, "sender_burst": 30})
        assert (share.sender_rate, share.sender_burst) == (5.0, 30)

    @pytest.mark.parametrize(
        "raw",
        [
            {"sender_rate": 0},
            {"sender_rate": -1},
            {"sender_rate": True},
            {"sender_rate": "10"},
            {"sender_burst": 0},
            {"sender_burst": 1.5},
            {"sender_burst": False},
            {"rate": 10},
            [],
        ],
    )
    def test_bad_values_refused(self, raw: object) -> None:
        """Out-of-range, mistyped or unknown members are a configuration error."""
        with pytest.raises(ConfigError):
            FairShare.from_json(raw)
