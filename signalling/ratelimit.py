"""A token bucket per connection: ``rate`` messages per second, bursts up to ``burst``."""

from __future__ import annotations

from .clock import Clock


class TokenBucket:
    __slots__ = ("_burst", "_clock", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock.monotonic()

    def full(self) -> bool:
        """Refilled to its burst: indistinguishable from a new bucket."""
        now = self._clock.monotonic()
        return self._tokens + (now - self._last) * self._rate >= self._burst

    def allow(self) -> bool:
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
