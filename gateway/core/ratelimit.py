"""Token bucket for rate-limited side channels (dead letters).

>>> tb = TokenBucket(rate=2.0, burst=2, now=0.0)
>>> [tb.take(0.0), tb.take(0.0), tb.take(0.0), tb.take(0.5)]
[True, True, False, True]
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
