"""Recent readings per series, in bounded rings, for the operator page's charts.

Pure: no I/O. `SeriesRings.record(out, latest)` runs once per processed batch and
does what the pipeline did for the status API anyway (the newest reading per series
into `latest`) plus one write into the series' ring: a timestamp, a value and an
anomaly flag in preallocated arrays (17 bytes a point; 120 points are about 2.3 KB a
series). With ``size == 0`` there are no rings and `record` is `latest.update`.

A ring counts every point written (`Ring.count`), so a reader asks for the points
after the count it has seen (`Ring.since`) and misses none unless more than `size`
arrived in between.

>>> from gateway.core.model import Reading, Score
>>> rings, latest = SeriesRings(3), {}
>>> out = [(Reading("eq", "t", float(v), v * 10**9), Score(None, ())) for v in range(5)]
>>> rings.record(out, latest)
>>> rings.get("eq", "t").points()
[(2000000000, 2.0, False), (3000000000, 3.0, False), (4000000000, 4.0, False)]
>>> latest[("eq", "t")][0].value
4.0
"""

from __future__ import annotations

from array import array
from collections.abc import MutableMapping, Sequence

from gateway.core.model import Reading, Score

__all__ = ["Ring", "SeriesRings"]

Point = tuple[int, float, bool]  # (ts ns, value, anomaly)


class Ring:
    """The last `size` points of one series; `count` is every point ever written."""

    __slots__ = ("count", "flag", "size", "ts", "v")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ts = array("q", bytes(8 * size))
        self.v = array("d", bytes(8 * size))
        self.flag = bytearray(size)
        self.count = 0

    def points(self) -> list[Point]:
        """Oldest first."""
        return self.since(0)

    def since(self, count: int) -> list[Point]:
        """The points written after the first `count` (at most `size`), oldest first."""
        n, size = self.count, self.size
        first = max(count, n - size, 0)
        ts, v, flag = self.ts, self.v, self.flag
        return [(ts[i % size], v[i % size], flag[i % size] == 1) for i in range(first, n)]


class SeriesRings:
    """A `Ring` per (equipment, sensor), made at its first reading."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.rings: dict[tuple[str, str], Ring] = {}

    def record(
        self,
        out: Sequence[tuple[Reading, Score]],
        latest: MutableMapping[tuple[str, str], tuple[Reading, Score]],
    ) -> None:
        """One processed batch: `latest` gets each series' newest, its ring every point."""
        n = self.size
        if not n:
            latest.update({(p[0].equipment, p[0].sensor): p for p in out})
            return
        rings = self.rings
        get = rings.get
        for p in out:
            r, sc = p
            k = (r.equipment, r.sensor)
            latest[k] = p
            g = get(k)
            if g is None:
                g = rings[k] = Ring(n)
            i = g.count
            j = i % n
            g.ts[j] = r.ts
            g.v[j] = r.value
            g.flag[j] = 1 if sc.findings else 0
            g.count = i + 1
        if len(rings) > len(latest) + 64:  # series forgotten (expiry pops `latest`)
            for k in [k for k in rings if k not in latest]:
                del rings[k]

    def get(self, equipment: str, sensor: str) -> Ring | None:
        return self.rings.get((equipment, sensor))

    def forget(self, keys: Sequence[tuple[str, str]]) -> None:
        for k in keys:
            self.rings.pop(k, None)
