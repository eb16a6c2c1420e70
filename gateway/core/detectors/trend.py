"""Least-squares slope of the last readings of one series (rule key ``max_slope_per_min``)."""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from typing import Any

_NS_PER_MIN = 60e9


class Trend:
    """Least-squares slope (value per minute) of the last `window` readings.

    `update(ts_ns, x)` learns the reading and returns the slope over the
    window including it, or None with fewer than `min_points` readings (or
    all at one timestamp). Times are minutes from an anchor that moves to the
    oldest reading whenever the ring wraps and is re-summed exactly.
    """

    __slots__ = (
        "_mt",
        "_mv",
        "_n",
        "_pos",
        "_stt",
        "_stv",
        "_t0",
        "_ts",
        "_vs",
        "limit",
        "min_points",
        "window",
    )

    def __init__(self, window: int, limit: float, min_points: int = 2) -> None:
        if window < 2 or limit <= 0:
            raise ValueError("need window >= 2 and limit > 0")
        self.window = window
        self.limit = limit  # max |slope| per minute
        self.min_points = max(2, min(min_points, window))
        self._ts = array("q", bytes(8 * window))
        self._vs = array("d", bytes(8 * window))
        self._reset()

    def _reset(self) -> None:
        self._pos = self._n = 0
        self._t0: int | None = None
        self._mt = self._mv = self._stt = self._stv = 0.0

    def update(self, ts: int, x: float) -> float | None:
        t0 = self._t0
        if t0 is None:
            t0 = self._t0 = ts
        t = (ts - t0) / _NS_PER_MIN
        n = self._n
        pos = self._pos
        mt, mv = self._mt, self._mv
        stt, stv = self._stt, self._stv
        if n == self.window:  # remove the oldest point
            ot = (self._ts[pos] - t0) / _NS_PER_MIN
            ov = self._vs[pos]
            n -= 1
            mt1 = mt - (ot - mt) / n
            mv1 = mv - (ov - mv) / n
            stt -= (ot - mt1) * (ot - mt)
            stv -= (ot - mt1) * (ov - mv)
            mt, mv = mt1, mv1
        n += 1
        dt = t - mt
        mt += dt / n
        mv += (x - mv) / n
        stt += dt * (t - mt)
        stv += dt * (x - mv)
        self._ts[pos] = ts
        self._vs[pos] = x
        pos += 1
        self._n = n
        self._mt, self._mv, self._stt, self._stv = mt, mv, stt, stv
        if pos == self.window:
            pos = 0
            self._refresh()
        self._pos = pos
        if n < self.min_points or self._stt <= 0.0:
            return None
        return self._stv / self._stt

    @property
    def slope(self) -> float | None:
        if self._n < self.min_points or self._stt <= 0.0:
            return None
        return self._stv / self._stt

    def _refresh(self) -> None:
        n = self._n
        ts = self._ts[:n]
        vs = self._vs[:n]
        t0 = self._t0 = min(ts)
        tm = [(t - t0) / _NS_PER_MIN for t in ts]
        mt = math.fsum(tm) / n
        mv = math.fsum(vs) / n
        self._mt, self._mv = mt, mv
        self._stt = math.fsum([(t - mt) * (t - mt) for t in tm])
        self._stv = math.fsum([(t - mt) * (v - mv) for t, v in zip(tm, vs, strict=True)])

    def to_state(self) -> dict[str, Any]:
        return {
            "ts": self._ts[: self._n].tolist(),
            "vs": self._vs[: self._n].tolist(),
            "pos": self._pos,
            "t0": self._t0,
            "sums": [self._mt, self._mv, self._stt, self._stv],
        }

    def load_state(self, st: dict[str, Any]) -> None:
        ts, vs = array("q", st["ts"]), array("d", st["vs"])
        pos, n = int(st["pos"]), len(ts)
        if n != len(vs) or not (0 <= pos < n == self.window or pos == n < self.window):
            raise ValueError("bad trend state (or a different window size)")
        self._ts[:n], self._vs[:n] = ts, vs
        self._n, self._pos = n, pos
        self._t0 = None if st["t0"] is None else int(st["t0"])
        self._mt, self._mv, self._stt, self._stv = (float(v) for v in st["sums"])

    def load_points(self, points: Iterable[tuple[int, float]]) -> None:
        """Restart from (ts, value) points, oldest first; only the last `window` kept."""
        pts = list(points)[-self.window :]
        self._reset()
        for ts, v in pts:
            self.update(int(ts), float(v))
