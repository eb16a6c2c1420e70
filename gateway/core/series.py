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
>>> reg.stamp("press-2", "temperature", 6_000_000)  # refused: the registry is full
-1
>>> seen = RecentKeys(capacity=2)
>>> [seen.seen_before(k) for k in ("a", "b", "a", "c", "a")]
[False, False, True, False, False]

Idle series expire (`series_idle_s`); when the registry is full, the longest-idle series
past the grace period (`series_idle_s / GRACE_DIVISOR`) make room for new ones:

>>> reg = SeriesRegistry(max_series=2, idle_s=7.0)  # grace 1 s
>>> reg.admit("a", "x", 1_000_000_000), reg.admit("a", "y", 5_000_000_000)
(True, True)
>>> reg.sweep(6_500_000_000, 100)  # nothing idle for 7 s yet; a/x is past the grace
[]
>>> reg.sweep(6_500_000_000, 100)  # the next cycle offers the candidates the last one found
[]
>>> reg.admit("b", "x", 6_600_000_000), reg.drain_evicted(), reg.of_equipment("a")
(True, [('a', 'x')], [('a', 'y')])
>>> reg.sweep(13_000_000_000, 100), reg.expired  # a/y silent for 8 s
([('a', 'y')], 1)
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Hashable, Iterable
from typing import Any, Final

import orjson

# Keys are remembered by a 60-bit slice of their hash: 60 bits fit in a 32-byte
# int object (a full 64-bit hash needs 36 bytes, rounded up to 48 by pymalloc).
_MASK: Final = (1 << 60) - 1
# A reading without a payload timestamp is stamped at least this much after the previous
# one of its series: 1 µs, so it stays distinct in stores that keep µs (not only ns), and a
# burst of 10,000 queued values shifts by 10 ms at most.
STAMP_STEP_NS: Final = 1_000
# A full registry may drop a series silent for series_idle_s / GRACE_DIVISOR (one day at
# the default 7 days) to admit a new one; README "Choices and known limits".
GRACE_DIVISOR: Final = 7
# Room candidates one sweep cycle keeps (the longest idle past the grace).
ROOM_CANDIDATES: Final = 4096
_SNAPSHOT_VERSION: Final = 2

Key = tuple[str, str]


class SeriesRegistry:
    """The distinct (equipment, sensor) pairs seen, capped at `max_series`, each with
    the time it was last seen: its newest receive time (gateway clock, ns) or, when
    later, the last receive-time stamp given to one of its readings.

    A series registers itself on first sight; once the cap is reached a new series is
    refused, unless a series silent for the grace period makes room for it (the
    longest-idle first, from the candidates the last full `sweep` cycle found; the
    dropped keys wait in `drain_evicted()` for the caller to forget their state).
    `sweep(now_ns, n)` looks at n series per call and returns those silent for
    `idle_s` (0: never), which it has dropped. Memory: one 2-tuple (64 B) plus a dict
    slot (~50-100 B) per series; the name strings are the readings'.
    """

    __slots__ = (
        "_heap",
        "_keys",
        "_known",
        "_pos",
        "_room",
        "complete",
        "evicted",
        "expired",
        "grace_ns",
        "idle_ns",
        "max_series",
    )

    def __init__(self, max_series: int, idle_s: float = 0.0) -> None:
        self.max_series = max_series
        self.idle_ns = int(idle_s * 1e9)
        self.grace_ns = self.idle_ns // GRACE_DIVISOR
        self._known: dict[Key, int] = {}
        self._keys: list[Key] = []  # the keys of the sweep cycle in progress
        self._pos = 0
        self._heap: list[tuple[int, Key]] = []  # (-last, key): this cycle's room candidates
        self._room: list[tuple[int, Key]] = []  # (last, key) of the last cycle, oldest at the end
        self.evicted: list[Key] = []  # dropped to make room, not yet drained
        self.expired = 0  # series dropped by `sweep` since start
        self.complete = False  # restored from a snapshot that lists every series

    def admit(self, equipment: str, sensor: str, now_ns: int = 0) -> bool:
        """True if the series is known or could be registered now; it was seen at `now_ns`.

        Recorded as `now_ns` - STAMP_STEP_NS, so a reading without ts received at the
        same time is still stamped `now_ns` (1 µs does not matter to idleness).
        """
        key = (equipment, sensor)
        known = self._known
        last = known.get(key)
        seen = now_ns - STAMP_STEP_NS if now_ns else 0
        if last is not None:
            if seen > last:
                known[key] = seen
            return True
        if len(known) >= self.max_series and not self._make_room():
            return False
        known[key] = seen
        return True

    def stamp(self, equipment: str, sensor: str, now_ns: int) -> int:
        """A timestamp for a reading that carries none: `now_ns`, or just after the last one;
        -1 if the series is new and refused (the registry is full).

        InfluxDB keeps one point per series and timestamp, so readings of one series that
        share a receive time (a burst read from one socket read, a batch of bare values)
        would overwrite each other. Each gets max(now_ns, previous + STAMP_STEP_NS): strictly
        increasing per series, in arrival order. Registers a new series like `admit`.
        """
        key = (equipment, sensor)
        known = self._known
        last = known.get(key)
        if last is None:
            if len(known) >= self.max_series and not self._make_room():
                return -1
            known[key] = now_ns
            return now_ns
        ts = now_ns if now_ns > last else last + STAMP_STEP_NS
        known[key] = ts
        return ts

    def _make_room(self) -> bool:
        """Drop the longest-idle candidate still silent since the sweep saw it."""
        room = self._room
        known = self._known
        while room:
            last, key = room.pop()
            if known.get(key) == last:
                del known[key]
                self.evicted.append(key)
                return True
        return False

    def drain_evicted(self) -> list[Key]:
        """The series dropped to make room since the last call (to forget their state)."""
        out, self.evicted = self.evicted, []
        return out

    # ------------------------------------------------------------------ expiry
    def sweep(self, now_ns: int, budget: int) -> list[Key]:
        """Look at up to `budget` series; drop and return those silent for `idle_s`.

        One cycle walks a copy of the key list taken at its start (series registered
        since wait for the next cycle); the series past the grace it met become the room
        candidates of the next one. Pure: `now_ns` is the caller's (gateway) clock.
        """
        if not self.idle_ns:
            return []
        keys = self._keys
        pos = self._pos
        if pos >= len(keys):  # a cycle ended: start the next one
            self._room = [(-neg, key) for neg, key in sorted(self._heap)]
            self._heap = []
            keys = self._keys = list(self._known)
            pos = 0
        end = min(pos + budget, len(keys))
        known = self._known
        expire_at = now_ns - self.idle_ns
        grace_at = now_ns - self.grace_ns
        heap = self._heap
        out: list[Key] = []
        for i in range(pos, end):
            key = keys[i]
            last = known.get(key)
            if last is None:
                continue  # gone since the cycle began
            if last <= expire_at:
                del known[key]
                out.append(key)
            elif last <= grace_at:
                if len(heap) < ROOM_CANDIDATES:
                    heapq.heappush(heap, (-last, key))
                elif -last > heap[0][0]:  # older than the newest kept
                    heapq.heapreplace(heap, (-last, key))
        self._pos = end
        if end >= len(keys):
            self._keys = []  # let the copy go between cycles
            self._pos = 0
        self.expired += len(out)
        return out

    def forget(self, key: Key) -> bool:
        """Drop one series (a forgotten equipment's); True if it was known."""
        return self._known.pop(key, None) is not None

    def of_equipment(self, equipment: str) -> list[Key]:
        """The series of one equipment (a scan of the registry: for rare commands)."""
        return [k for k in self._known if k[0] == equipment]

    def last_seen(self, key: Key) -> int | None:
        return self._known.get(key)

    def adopt(self, keys: Iterable[Key], now_ns: int) -> list[Key]:
        """Register `keys` (restored detector state) seen at `now_ns`, up to the cap;
        returns those that did not fit."""
        known = self._known
        left: list[Key] = []
        for key in keys:
            if key in known:
                continue
            if len(known) < self.max_series:
                known[key] = now_ns
            else:
                left.append(key)
        return left

    # ------------------------------------------------------------- persistence
    def stamps_snapshot(self) -> bytes:
        """Every series with its last-seen time (and stamp), for the state file: a restart
        keeps the cap, the idle times, and stamps strictly later."""
        rows = [[eq, sn, ts] for (eq, sn), ts in self._known.items()]
        return orjson.dumps({"v": _SNAPSHOT_VERSION, "stamps": rows})

    def restore_stamps(self, data: bytes) -> None:
        """Load `stamps_snapshot()` output (those series count as known again, up to the
        cap, most recently seen first); raises ValueError if it is not one.

        A version-2 snapshot lists every series (`complete`); an older one only those
        that had a receive-time stamp.
        """
        try:
            doc = orjson.loads(data)
            rows: Iterable[Any] = doc["stamps"]
            loaded = {(str(eq), str(sn)): int(ts) for eq, sn, ts in rows}
            complete = doc.get("v") == _SNAPSHOT_VERSION
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # JSONDecodeError too
            raise ValueError(f"series stamps: {e}") from None
        known = self._known
        for key, ts in sorted(loaded.items(), key=lambda kv: kv[1], reverse=True):
            if key in known:
                if ts > known[key]:
                    known[key] = ts
            elif len(known) < self.max_series:
                known[key] = ts
        self.complete = complete

    def __contains__(self, key: object) -> bool:
        return key in self._known

    def view(self) -> Container[Key]:
        """The registered series as a live, read-only container (C-speed `in`)."""
        return self._known.keys()

    @property
    def count(self) -> int:
        return len(self._known)

    def __len__(self) -> int:
        return len(self._known)


class CachePruner:
    """Walks a cache dict a few entries per `step`, dropping those of series no longer
    known. An entry's series is its key's first two items, or with `value_at` = (i, j)
    its value's items i and j (an entry where either is None is kept).

    For the caches kept per series beside the registry (topic routes, physical bounds,
    line-protocol tag prefixes): each is bounded anyway (cleared when full), the pruner
    lets an expired series' entries go without waiting for that.
    """

    __slots__ = ("_keys", "_pos", "_value_at")

    def __init__(self, value_at: tuple[int, int] | None = None) -> None:
        self._value_at = value_at
        self._keys: list[Any] = []
        self._pos = 0

    def step(self, cache: dict[Any, Any], known: Container[Key], budget: int) -> int:
        """Look at up to `budget` entries; returns how many were dropped."""
        keys = self._keys
        pos = self._pos
        if pos >= len(keys):
            if not cache:
                return 0
            keys = self._keys = list(cache)
            pos = 0
        end = min(pos + budget, len(keys))
        gone: list[Any] = []
        if self._value_at is None:
            gone = [k for k in keys[pos:end] if (k[0], k[1]) not in known]
        else:
            i, j = self._value_at
            get = cache.get
            for k in keys[pos:end]:
                v = get(k)
                if v is None or v[i] is None or v[j] is None:
                    continue
                if (v[i], v[j]) not in known:
                    gone.append(k)
        for k in gone:
            cache.pop(k, None)
        self._pos = end
        if end >= len(keys):
            self._keys = []
            self._pos = 0
        return len(gone)


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
