"""Fair sharing of a border gateway between the agencies of its country, without I/O.

What it is for
    One agency publishing tens of thousands of messages must not delay the others. The gateway
    therefore reads ``SUBMIT`` through one durable consumer per agency (filtered on that
    agency's ``cb.submit.<agency>``), each in its own pull loop, so a backlog of one sender
    never stands in front of another sender's message; and each loop takes from its consumer
    only what that sender's :class:`TokenBucket` allows. Over-limit messages are *delayed*:
    they stay in ``SUBMIT`` (a work-queue stream, kept until taken) until tokens come back.

What it must never do
    Drop or refuse a message for being over the limit, read the clock (``now`` comes in as
    monotonic seconds), or hold per-message state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from broker.errors import ConfigError

DEFAULT_SENDER_RATE: Final = 20.0
DEFAULT_SENDER_BURST: Final = 200


@dataclass(frozen=True, kw_only=True, slots=True)
class FairShare:
    """Per-sender limits of a gateway (settings ``fair_share``; docs/operations.md).

    ``sender_rate``: messages per second each agency may have taken from ``SUBMIT`` in the
    long run; ``sender_burst``: how many it may send at once after a quiet period. The
    defaults leave an honest bulk import at 20 messages a second after its first 200, and keep
    one flooding agency to a fraction of a gateway's capacity (docs/operations.md, Capacity).
    """

    sender_rate: float = DEFAULT_SENDER_RATE
    sender_burst: int = DEFAULT_SENDER_BURST

    def __post_init__(self) -> None:
        if not 0 < self.sender_rate <= 100_000:
            raise ConfigError("settings: fair_share.sender_rate must be in (0, 100000]")
        if not 1 <= self.sender_burst <= 1_000_000:
            raise ConfigError("settings: fair_share.sender_burst must be in [1, 1000000]")

    @classmethod
    def from_json(cls, raw: Any) -> FairShare:
        """From the settings member (None: the defaults); unknown members are refused."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or set(raw) - {"sender_rate", "sender_burst"}:
            raise ConfigError("settings: fair_share must be {sender_rate?, sender_burst?}")
        rate = raw.get("sender_rate", DEFAULT_SENDER_RATE)
        burst = raw.get("sender_burst", DEFAULT_SENDER_BURST)
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise ConfigError("settings: fair_share.sender_rate must be a number")
        if isinstance(burst, bool) or not isinstance(burst, int):
            raise ConfigError("settings: fair_share.sender_burst must be an integer")
        return cls(sender_rate=float(rate), sender_burst=burst)


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` held; starts full.

    Time is monotonic seconds passed in by the caller, so the bucket is deterministic in tests.
    """

    def __init__(self, *, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
            self._at = now

    def available(self, now: float) -> int:
        """Whole tokens available at ``now``."""
        self._refill(now)
        return int(self._tokens)

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until one whole token is available (0: one is there now)."""
        self._refill(now)
        missing = 1.0 - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, count: int, now: float) -> None:
        """Spend ``count`` tokens (the messages actually taken; never more than available)."""
        self._refill(now)
        self._tokens = max(0.0, self._tokens - count)
