"""Per-series anomaly detection (SPEC §5): z-score, threshold rules, trend, offline.

Pure and synchronous: no I/O, no logging, no clock reads (callers pass `now`).
`Detectors.score(reading)` is the hot path; everything it keeps per series
(equipment, sensor) lives in one slotted `_Series` object.

The rolling statistics are those of ``river.utils.Rolling(river.stats.Var,
window_size=window)`` (mean and sample variance, ddof=1, of the last `window`
learned values), kept here by sliding Welford updates over a flat
``array('d')`` ring instead: `Rolling` stores an ``(args, kwargs)`` tuple per
value (~19 KB per series at window 100, ~2 GB at the default `max_series` of
100 000) and costs ~1.5 µs per update+get; this costs ~1.4 KB and well under
1 µs, and its state snapshots exactly. The ring is re-summed exactly each time
it wraps, so rounding never builds up (a huge value leaving the window cannot
leave a negative variance behind). A test checks it against river's numbers.
"""

from __future__ import annotations

import fnmatch
import math
import re
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.config import DetectionConfig, Rule
from gateway.model import (
    NO_FINDINGS,
    THRESHOLD_HIGH,
    THRESHOLD_LOW,
    TREND,
    ZSCORE,
    Finding,
    Reading,
    Score,
)
from gateway.snapshots import json_pieces

__all__ = [
    "Detectors",
    "OfflineTracker",
    "ResolvedRule",
    "RuleSet",
    "Trend",
    "ZScore",
    "out_of_range",
]

# Floor of the std used for z: a flat series has std 0, and a jump off it must
# still alarm (with a large but finite z) while float jitter of a few ulps must
# not. Relative to |mean|, with an absolute floor for series that sit at 0.
_REL_EPS = 1e-6
_ABS_EPS = 1e-9
_NS_PER_MIN = 60e9
_INF = math.inf
_SNAPSHOT_VERSION = 1
_sqrt = math.sqrt


class ZScore:
    """Rolling z-score of one series, river-style: ``score_one(x)`` then ``learn_one(x)``.

    z is taken against the baseline (mean, std of the last `window` learned
    values) before `x` is learned, and is None while fewer than `warmup`
    values have been learned. The std is floored at ``1e-6 * |mean|`` (at
    least ``1e-9``), so a flat series that jumps gets a large finite z.

    Robustness: a value with ``|z| >= threshold`` is learned clipped to
    ``mean ± threshold * std``, so one spike barely moves the baseline. After
    `shift_after` consecutive anomalous values on the same side of the mean,
    the level is taken as the new normal: the window restarts from those
    values (and warms up again), so a lasting shift stops alarming.

    >>> import random
    >>> rng = random.Random(42)
    >>> zs = ZScore(window=100, warmup=30, threshold=3.0)
    >>> for _ in range(30):
    ...     x = rng.gauss(20.0, 0.5)
    ...     assert zs.score_one(x) is None  # warming up
    ...     zs.learn_one(x)
    >>> round(zs.mean, 2), round(zs.std, 2)
    (20.01, 0.35)
    >>> round(zs.score_one(20.5), 2)
    1.41
    >>> round(zs.score_one(35.0), 1)
    43.3
    >>> zs.learn_one(35.0)  # learned as mean + 3 std, not as 35.0
    >>> round(zs.score_one(35.0), 1)  # so the next spike still stands out
    38.6
    """

    __slots__ = (
        "_buf",
        "_m2",
        "_mean",
        "_n",
        "_pos",
        "_recent",
        "_run",
        "shift_after",
        "threshold",
        "warmup",
        "window",
    )

    def __init__(
        self, window: int = 100, warmup: int = 30, threshold: float = 3.0, shift_after: int = 10
    ) -> None:
        if not 2 <= warmup <= window or threshold <= 0 or shift_after < 1:
            raise ValueError("need 2 <= warmup <= window, threshold > 0, shift_after >= 1")
        self.window = window
        self.warmup = warmup
        self.threshold = threshold
        self.shift_after = shift_after
        self._buf = array("d", bytes(8 * window))
        self._pos = 0  # next slot to write; the oldest value once the ring is full
        self._n = 0  # learned values in the window
        self._mean = 0.0
        self._m2 = 0.0  # sum of squared deviations
        self._run = 0  # +k / -k: k consecutive anomalies above / below the mean
        self._recent: list[float] | None = None  # raw values of the current run

    @property
    def n(self) -> int:
        return self._n

    @property
    def mean(self) -> float:
        return self._mean

    @property
    def std(self) -> float:
        """Sample std (ddof=1) of the window, floored as described above."""
        n = self._n
        var = self._m2 / (n - 1) if n > 1 else 0.0
        std = _sqrt(var) if var > 0.0 else 0.0
        floor = _REL_EPS * abs(self._mean)
        if floor < _ABS_EPS:
            floor = _ABS_EPS
        return std if std > floor else floor

    def score_one(self, x: float) -> float | None:
        """z of `x` against the current baseline; None while warming up."""
        n = self._n
        if n < self.warmup:
            return None
        mean = self._mean
        var = self._m2 / (n - 1)  # `std`, inlined: this runs once per reading
        std = _sqrt(var) if var > 0.0 else 0.0
        floor = _REL_EPS * (mean if mean >= 0.0 else -mean)
        if std <= floor or std <= _ABS_EPS:
            std = floor if floor > _ABS_EPS else _ABS_EPS
        return (x - mean) / std

    def learn_one(self, x: float) -> None:
        self.learn_scored(x, self.score_one(x))

    def learn_scored(self, x: float, z: float | None) -> None:
        """`learn_one` for a caller that already has ``z = score_one(x)``."""
        t = self.threshold
        if z is not None and (z >= t or z <= -t):
            side = 1 if z > 0 else -1
            run = self._run
            if run * side > 0 and self._recent is not None:
                run += side
                self._recent.append(x)
            else:
                run = side
                self._recent = [x]
            if run * side >= self.shift_after:
                self._rebase(self._recent)
                return
            self._run = run
            x = self._mean + side * t * self.std
        elif self._run:
            self._run = 0
            self._recent = None
        self._push(x)

    def _push(self, x: float) -> None:
        buf = self._buf
        n = self._n
        pos = self._pos
        if n == self.window:  # slide: replace the oldest value
            old = buf[pos]
            mean = self._mean
            new_mean = mean + (x - old) / n
            self._m2 += (x - old) * (x - new_mean + old - mean)
            self._mean = new_mean
        else:
            n += 1
            self._n = n
            d = x - self._mean
            self._mean += d / n
            self._m2 += d * (x - self._mean)
        buf[pos] = x
        pos += 1
        if pos == self.window:  # wrapped (so the window is full)
            pos = 0
            self._refresh()
        self._pos = pos

    def _refresh(self) -> None:
        """Exact mean and m2 from the full ring (rounding of the updates discarded)."""
        buf = self._buf
        mean = math.fsum(buf) / len(buf)
        self._mean = mean
        self._m2 = math.fsum([(v - mean) * (v - mean) for v in buf])

    def _rebase(self, values: Iterable[float]) -> None:
        self._n = self._pos = self._run = 0
        self._mean = self._m2 = 0.0
        self._recent = None
        for v in values:
            self._push(v)

    def values(self) -> list[float]:
        """The window, oldest first."""
        if self._n < self.window:
            return self._buf[: self._n].tolist()
        return self._buf[self._pos :].tolist() + self._buf[: self._pos].tolist()

    def to_state(self) -> dict[str, Any]:
        return {
            "buf": self._buf[: self._n].tolist(),
            "pos": self._pos,
            "mean": self._mean,
            "m2": self._m2,
            "run": self._run,
            "recent": self._recent,
        }

    def load_state(self, st: dict[str, Any]) -> None:
        """Inverse of `to_state`; exact if the window size is unchanged."""
        buf = array("d", st["buf"])
        pos, run, recent = int(st["pos"]), int(st["run"]), st["recent"]
        n = len(buf)
        if not (0 <= pos < n == self.window or pos == n < self.window):
            raise ValueError("bad z-score state (or a different window size)")
        self._buf[:n] = buf
        self._n, self._pos = n, pos
        self._mean, self._m2 = float(st["mean"]), float(st["m2"])
        if recent is not None and run and len(recent) == abs(run):
            self._run, self._recent = run, [float(v) for v in recent]
        else:
            self._run, self._recent = 0, None

    def load_values(self, values: Iterable[float]) -> None:
        """Restart the baseline from `values` (oldest first; only the last `window` kept)."""
        vals = [float(v) for v in values][-self.window :]
        self._rebase(vals)


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


# --------------------------------------------------------------------- rules

_LIMITS = ("high", "low", "critical_high", "critical_low", "min", "max", "max_slope_per_min")


@dataclass(slots=True, frozen=True)
class ResolvedRule:
    """The limits that apply to one series after merging every matching rule."""

    high: float | None = None
    low: float | None = None
    critical_high: float | None = None
    critical_low: float | None = None
    min: float | None = None
    max: float | None = None
    max_slope_per_min: float | None = None


NO_RULE = ResolvedRule()


def out_of_range(rule: ResolvedRule, value: float) -> bool:
    """True if `value` is outside the rule's physical bounds (`min`/`max`, inclusive)."""
    lo, hi = rule.min, rule.max
    return (lo is not None and value < lo) or (hi is not None and value > hi)


def _glob(pattern: str) -> Callable[[str], object] | None:
    """A matcher for an fnmatch glob (case-sensitive); None for '*' (matches all)."""
    if pattern == "*":
        return None
    return re.compile(fnmatch.translate(pattern)).match


class RuleSet:
    """Compiled ``[[rules]]``: which limits apply to a series.

    A rule matches when its `equipment`, `sensor` and `line` globs (fnmatch,
    case-sensitive, default ``*``) all match. Every matching rule applies in
    file order, and a later rule overrides only the keys it sets (non-None):
    ``[{sensor="temperature", high=85, low=15}, {equipment="oven-*", high=250}]``
    gives oven temperatures high=250, low=15. Results are cached per series
    (the cache is dropped when it exceeds `cache_size` entries).
    """

    __slots__ = ("_cache", "_rules", "cache_size")

    out_of_range = staticmethod(out_of_range)

    def __init__(self, rules: Iterable[Rule] = (), cache_size: int = 200_000) -> None:
        self._rules = [
            (
                _glob(r.equipment),
                _glob(r.sensor),
                _glob(r.line),
                {k: float(getattr(r, k)) for k in _LIMITS if getattr(r, k) is not None},
            )
            for r in rules
        ]
        self._cache: dict[tuple[str, str, str], ResolvedRule] = {}
        self.cache_size = cache_size

    def __len__(self) -> int:
        return len(self._rules)

    def resolve(self, equipment: str, sensor: str, line: str = "") -> ResolvedRule:
        if not self._rules:
            return NO_RULE
        key = (equipment, sensor, line)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        merged: dict[str, float] = {}
        for eq, se, li, limits in self._rules:
            if (
                (eq is None or eq(equipment))
                and (se is None or se(sensor))
                and (li is None or li(line))
            ):
                merged.update(limits)
        res = ResolvedRule(**merged) if merged else NO_RULE
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[key] = res
        return res


# ----------------------------------------------------------------- detectors


class _Series:
    """Detector state of one series."""

    __slots__ = ("hi", "line", "lo", "rule", "trend", "zs")

    def __init__(self, zs: ZScore, rule: ResolvedRule, line: str, trend: Trend | None) -> None:
        self.zs = zs
        self.rule = rule
        self.line = line
        self.trend = trend
        # the tightest limits, so a normal reading costs two float compares
        highs = [v for v in (rule.high, rule.critical_high) if v is not None]
        lows = [v for v in (rule.low, rule.critical_low) if v is not None]
        self.hi = min(highs) if highs else _INF
        self.lo = max(lows) if lows else -_INF


def _threshold_finding(sensor: str, v: float, rule: ResolvedRule) -> Finding | None:
    ch, h, cl, lo = rule.critical_high, rule.high, rule.critical_low, rule.low
    if ch is not None and v > ch:
        return Finding(THRESHOLD_HIGH, "critical", v, ch, f"{sensor} {v} above critical limit {ch}")
    if h is not None and v > h:
        return Finding(THRESHOLD_HIGH, "high", v, h, f"{sensor} {v} above high limit {h}")
    if cl is not None and v < cl:
        return Finding(THRESHOLD_LOW, "critical", v, cl, f"{sensor} {v} below critical limit {cl}")
    if lo is not None and v < lo:
        return Finding(THRESHOLD_LOW, "high", v, lo, f"{sensor} {v} below low limit {lo}")
    return None


class Detectors:
    """All detectors of all series; `score` is called once per reading.

    State is created on a series' first reading; its rule is resolved then,
    with the line of that reading. `Score.findings` is a fresh list per call,
    or the shared empty `NO_FINDINGS` tuple when there are none; treat it (and
    the findings) as read-only: the alert manager and the sink both read it.
    """

    __slots__ = ("_crit", "_med", "_series", "_thr", "cfg", "rules")

    def __init__(self, cfg: DetectionConfig, rules: RuleSet) -> None:
        self.cfg = cfg
        self.rules = rules
        self._thr = cfg.threshold_sigma
        self._med = cfg.medium_sigma
        self._crit = cfg.critical_sigma
        self._series: dict[tuple[str, str], _Series] = {}

    @property
    def series_count(self) -> int:
        return len(self._series)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._series

    def forget(self, key: tuple[str, str]) -> bool:
        """Drop the state of series (equipment, sensor); True if it existed."""
        return self._series.pop(key, None) is not None

    def _new(self, key: tuple[str, str], line: str) -> _Series:
        c = self.cfg
        rule = self.rules.resolve(key[0], key[1], line)
        zs = ZScore(c.window, c.warmup, c.threshold_sigma, c.shift_after)
        slope = rule.max_slope_per_min
        trend = Trend(c.window, slope, c.warmup) if slope is not None else None
        st = self._series[key] = _Series(zs, rule, line, trend)
        return st

    def score(self, r: Reading) -> Score:
        key = (r.equipment, r.sensor)
        st = self._series.get(key)
        if st is None:
            st = self._new(key, r.line)
        v = r.value
        findings: list[Finding] | None = None  # most readings have none: no list for them
        if v > st.hi or v < st.lo:
            f = _threshold_finding(r.sensor, v, st.rule)
            if f is not None:
                findings = [f]
        zs = st.zs
        z = zs.score_one(v)
        if z is not None and (z >= self._thr or z <= -self._thr):
            f = self._z_finding(r.sensor, v, z, zs)
            if findings is None:
                findings = [f]
            else:
                findings.append(f)
        zs.learn_scored(v, z)
        tr = st.trend
        if tr is not None:
            slope = tr.update(r.ts, v)
            if slope is not None and (slope > tr.limit or slope < -tr.limit):
                way = "rising" if slope > 0 else "falling"
                msg = f"{r.sensor} {way} {abs(slope):.4g}/min, limit {tr.limit:g}/min"
                f = Finding(TREND, "medium", v, tr.limit, msg)
                if findings is None:
                    findings = [f]
                else:
                    findings.append(f)
        return Score(z, NO_FINDINGS if findings is None else findings)

    def _z_finding(self, sensor: str, v: float, z: float, zs: ZScore) -> Finding:
        az = abs(z)
        sev = "critical" if az >= self._crit else "medium" if az >= self._med else "low"
        mean, std = zs.mean, zs.std
        way = "above" if z > 0 else "below"
        msg = f"{sensor} {v} is {az:.1f} sigma {way} mean {round(mean, 3)}"
        return Finding(ZSCORE, sev, v, self._thr, msg, z=z, mean=mean, std=std)

    # ---------------------------------------------------------- persistence
    def snapshot(self) -> bytes:
        """All series state as JSON bytes (orjson), for `restore` after a restart."""
        return b"".join(self.snapshot_chunks())

    def snapshot_chunks(self, per_chunk: int = 500) -> Iterator[bytes]:
        """`snapshot` in pieces that join to it, so a caller can let other work run between.

        At 10,000 series the whole snapshot takes ~130 ms; in pieces of 500 series
        no piece takes more than a few ms. Each series' state is taken whole; series
        added between pieces wait for the next snapshot.
        """
        keys = list(self._series)
        return json_pieces(
            _SNAPSHOT_VERSION,
            "series",
            (self._snapshot_items(keys[i : i + per_chunk]) for i in range(0, len(keys), per_chunk)),
        )

    def _snapshot_items(self, keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
        items = []
        for key in keys:
            st = self._series.get(key)
            if st is None:
                continue  # forgotten since the snapshot began
            items.append(
                {
                    "equipment": key[0],
                    "sensor": key[1],
                    "line": st.line,
                    "window": st.zs.window,
                    "zscore": st.zs.to_state(),
                    "trend": st.trend.to_state() if st.trend is not None else None,
                }
            )
        return items

    def restore(self, data: bytes) -> int:
        """Load a `snapshot`, replacing state of the series it holds; returns their count.

        Rules are re-resolved from the current config. If the window size
        changed, the saved values seed the new window. Raises ValueError on
        data that is not a snapshot (nothing is loaded then).
        """
        try:
            doc = orjson.loads(data)
            if doc.get("version") != _SNAPSHOT_VERSION:
                raise ValueError(f"unknown snapshot version {doc.get('version')!r}")
            loaded: dict[tuple[str, str], _Series] = {}
            scratch = Detectors(self.cfg, self.rules)
            for rec in doc["series"]:
                key = (str(rec["equipment"]), str(rec["sensor"]))
                st = scratch._new(key, str(rec["line"]))
                same = int(rec["window"]) == st.zs.window
                zstate = rec["zscore"]
                if same:
                    st.zs.load_state(zstate)
                else:
                    st.zs.load_values(_logical(zstate["buf"], int(zstate["pos"]), rec["window"]))
                tstate = rec.get("trend")
                if st.trend is not None and tstate is not None:
                    if same:
                        st.trend.load_state(tstate)
                    else:
                        pts = list(zip(tstate["ts"], tstate["vs"], strict=True))
                        st.trend.load_points(_logical(pts, int(tstate["pos"]), rec["window"]))
                loaded[key] = st
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a detector snapshot: {e}") from None
        self._series.update(loaded)
        return len(loaded)


def _logical(buf: list[Any], pos: int, window: int) -> list[Any]:
    """A saved ring buffer in oldest-first order."""
    if len(buf) < window:
        return list(buf)
    return list(buf[pos:]) + list(buf[:pos])


# ------------------------------------------------------------------ offline


class OfflineTracker:
    """Deadman per equipment; pure: the caller passes `now` (monotonic seconds)."""

    __slots__ = ("_last", "_line", "_offline", "offline_after_s")

    def __init__(self, offline_after_s: float) -> None:
        self.offline_after_s = offline_after_s
        self._last: dict[str, float] = {}
        self._line: dict[str, str] = {}
        self._offline: set[str] = set()

    def seen(self, equipment: str, line: str, now: float) -> bool:
        """Record a reading; True if the equipment was reported offline and is back."""
        self._last[equipment] = now
        self._line[equipment] = line
        if self._offline and equipment in self._offline:
            self._offline.discard(equipment)
            return True
        return False

    def check(self, now: float) -> list[tuple[str, str]]:
        """(equipment, line) silent for more than `offline_after_s`, each reported once."""
        limit = now - self.offline_after_s
        offline = self._offline
        out: list[tuple[str, str]] = []
        for eq, t in self._last.items():
            if t < limit and eq not in offline:
                offline.add(eq)
                out.append((eq, self._line[eq]))
        return out

    def last_seen(self, equipment: str) -> float | None:
        return self._last.get(equipment)

    def is_offline(self, equipment: str) -> bool:
        return equipment in self._offline

    def forget(self, equipment: str) -> None:
        self._last.pop(equipment, None)
        self._line.pop(equipment, None)
        self._offline.discard(equipment)

    def __len__(self) -> int:
        return len(self._last)

    def snapshot(self) -> bytes:
        """Known equipment, their line, and which are offline (times are not kept)."""
        return orjson.dumps({"v": 1, "lines": self._line, "offline": sorted(self._offline)})

    def restore(self, data: bytes, now: float) -> None:
        """Reload a snapshot; every known equipment counts as seen at `now`.

        So one that stays silent after a restart goes offline `offline_after_s`
        later, and one that was offline stays offline until its next reading.
        """
        try:
            doc = orjson.loads(data)
            lines = {str(k): str(v) for k, v in doc["lines"].items()}
            offline = {str(e) for e in doc["offline"]}
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"offline snapshot unreadable: {e}") from None
        self._line.update(lines)
        for eq in lines:
            self._last.setdefault(eq, now)
        self._offline |= offline & set(lines)
