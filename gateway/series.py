"""Bounded per-series bookkeeping for normalization: the series registry and de-dup memory.

>>> reg = SeriesRegistry(max_series=2)
>>> reg.admit("press-1", "temperature"), reg.admit("press-1", "vibration")
(True, True)
>>> reg.admit("press-2", "temperature"), reg.admit("press-1", "temperature"), reg.count
(False, True, 2)
>>> seen = RecentKeys(capacity=2)
>>> [seen.seen_before(k) for k in ("a", "b", "a", "c", "a")]
[False, False, True, False, False]
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final

# Keys are remembered by a 60-bit slice of their hash: 60 bits fit in a 32-byte
# int object (a full 64-bit hash needs 36 bytes, rounded up to 48 by pymalloc).
_MASK: Final = (1 << 60) - 1


class SeriesRegistry:
    """The distinct (equipment, sensor) pairs seen, capped at `max_series`.

    A series registers itself on first sight; once the cap is reached new
    series are refused and known ones still pass. Memory: one 2-tuple (64 B)
    plus a set slot (~30-60 B) per series; the name strings are the readings'.
    """

    __slots__ = ("_known", "max_series")

    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self._known: set[tuple[str, str]] = set()

    def admit(self, equipment: str, sensor: str) -> bool:
        """True if the series is known or could be registered now."""
        key = (equipment, sensor)
        known = self._known
        if key in known:
            return True
        if len(known) >= self.max_series:
            return False
        known.add(key)
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._known

    @property
    def count(self) -> int:
        return len(self._known)

    def __len__(self) -> int:
        return len(self._known)


class RecentKeys:
    """FIFO memory of the last `capacity` distinct keys; `capacity` 0 remembers nothing.

    Stores a 60-bit hash of each key, not the key: about 80 bytes per entry
    (32 B int + ~40 B set slot + 8 B ring slot) whatever the key holds. Two
    different keys share a hash with probability ~2**-60 per pair, i.e. a false
    duplicate roughly once per 10**12 lookups at 200k entries; acceptable for a
    redelivery filter. Python's str hash is salted per process, so this cannot
    be steered by senders.
    """

    __slots__ = ("_pos", "_ring", "_set", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._set: set[int] = set()
        self._ring: list[int] = []
        self._pos = 0

    def seen_before(self, key: Hashable) -> bool:
        """Whether `key` is among the remembered ones; remembers it if not."""
        if not self.capacity:
            return False
        h = hash(key) & _MASK
        s = self._set
        if h in s:
            return True
        s.add(h)
        ring = self._ring
        if len(ring) < self.capacity:
            ring.append(h)
        else:
            pos = self._pos
            s.discard(ring[pos])
            ring[pos] = h
            self._pos = pos + 1 if pos + 1 < self.capacity else 0
        return False

    def __len__(self) -> int:
        return len(self._set)

    def clear(self) -> None:
        self._set.clear()
        self._ring.clear()
        self._pos = 0
