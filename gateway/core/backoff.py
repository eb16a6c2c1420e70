"""Capped exponential backoff with jitter, shared by every retry loop.

>>> b = Backoff(0.5, 4.0, jitter=0.0)
>>> [b.next() for _ in range(5)]
[0.5, 1.0, 2.0, 4.0, 4.0]
>>> b.reset(); b.next()
0.5
"""

from __future__ import annotations

import random


class Backoff:
    __slots__ = ("_attempt", "_rng", "factor", "jitter", "max_s", "min_s")

    def __init__(
        self, min_s: float, max_s: float, factor: float = 2.0, jitter: float = 0.1
    ) -> None:
        self.min_s = min_s
        self.max_s = max(max_s, min_s)
        self.factor = factor
        self.jitter = jitter
        self._attempt = 0
        self._rng = random.Random()

    @property
    def attempts(self) -> int:
        return self._attempt

    def next(self) -> float:
        """Delay before the next attempt; grows until `max_s`."""
        delay = min(self.max_s, self.min_s * self.factor**self._attempt)
        self._attempt += 1
        if self.jitter:
            delay *= 1.0 + self._rng.uniform(-self.jitter, self.jitter)
        return delay

    def reset(self) -> None:
        self._attempt = 0
