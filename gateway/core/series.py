"""Bounded per-series bookkeeping for normalization: the series registry and de-dup memory.

>>> reg = SeriesRegistry(max_series=2)
>>> reg.admit("press-1", "temperature"), reg.admit("press-1", "vibration")
(True, True)
>>> reg.admit("press-2", "temperature"), reg.admit("press-1", "temperature"), reg.count
(False, True, 2)
>>> [reg.stamp("press-1", "temperature", 1_000_000) for _ in range(3)]  # one receive time
[1000000, 1001000, 1002000]
>>> reg.stamp("press-1", "temperature", 5_000_000), reg.stamp("press-1", "vibration", 1_000_000)
(5000000, 1000000)
>>> seen = RecentKeys(capacity=2)
>>> [seen.seen_before(k) for k in ("a", "b", "a", "c", "a")]
[False, False, True, False, False]
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, Final

import orjson

# Keys are remembered by a 60-bit slice of their hash: 60 bits fit in a 32-byte
# int object (a full 64-bit hash needs 36 bytes, rounded up to 48 by pymalloc).
_MASK: Final = (1 << 60) - 1
# A reading without a payload timestamp is stamped at least this much after the previous
# one of its series: 1 µs, so it stays distinct in stores that keep µs (not only ns), and a
# burst of 10,000 queued values shifts by 10 ms at most.
STAMP_STEP_NS: Final = 1_000


class SeriesRegistry:
    """The distinct (equipment, sensor) pairs seen, capped at `max_series`, each with the
    last receive-time stamp given to one of its readings (0: none yet).

    A series registers itself on first sight; once the cap is reached new
    series are refused and known ones still pass. Memory: one 2-tuple (64 B)
    plus a dict slot (~50-100 B) per series; the name strings are the readings'.
    """

    __slots__ = ("_known", "max_series")

    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self._known: dict[tuple[str, str], int] = {}

    def admit(self, equipment: str, sensor: str) -> bool:
        """True if the series is known or could be registered now."""
        key = (equipment, sensor)
        known = self._known
        if key in known:
            return True
        if len(known) >= self.max_series:
            return False
        known[key] = 0
        return True

    def stamp(self, equipment: str, sensor: str, now_ns: int) -> int:
        """A timestamp for a reading that carries none: `now_ns`, or just after the last one.

        InfluxDB keeps one point per series and timestamp, so readings of one series that
        share a receive time (a burst read from one socket read, a batch of bare values)
        would overwrite each other. Each gets max(now_ns, previous + STAMP_STEP_NS): strictly
        increasing per series, in arrival order. Call for admitted series only.
        """
        key = (equipment, sensor)
        known = self._known
        last = known[key]
        ts = now_ns if now_ns > last else last + STAMP_STEP_NS
        known[key] = ts
        return ts

    def stamps_snapshot(self) -> bytes:
        """The last stamp per series, for the state file (strictly later after a restart)."""
        rows = [[eq, sn, ts] for (eq, sn), ts in self._known.items() if ts]
        return orjson.dumps({"stamps": rows})

    def restore_stamps(self, data: bytes) -> None:
        """Load `stamps_snapshot()` output (those series count as known again, up to the
        cap, newest stamps first); raises ValueError if it is not one."""
        try:
            rows: Iterable[Any] = orjson.loads(data)["stamps"]
            loaded = {(str(eq), str(sn)): int(ts) for eq, sn, ts in rows}
        except (KeyError, TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
            raise ValueError(f"series stamps: {e}") from None
        known = self._known
        for key, ts in sorted(loaded.items(), key=lambda kv: kv[1], reverse=True):
            if key in known:
                if ts > known[key]:
                    known[key] = ts
            elif len(known) < self.max_series:
                known[key] = ts

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
