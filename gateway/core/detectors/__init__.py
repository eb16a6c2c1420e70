"""Per-series anomaly detection (SPEC §5): z-score, threshold rules, trend, offline.

Pure and synchronous: no I/O, no logging, no clock reads (callers pass `now`).
`Detectors.score(reading)` is the hot path; everything it keeps per series
(equipment, sensor) lives in one slotted `_Series` object. One module per detector:

- `zscore`: rolling z-score (`ZScore`), river's rolling variance kept in a flat ring;
- `trend`: least-squares slope per minute (`Trend`, rule key ``max_slope_per_min``);
- `rules`: ``[[rules]]`` limits and threshold findings (`RuleSet`);
- `offline`: deadman per equipment (`OfflineTracker`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import orjson

from gateway.config import DetectionConfig
from gateway.core.detectors.offline import OfflineTracker
from gateway.core.detectors.rules import (
    NO_RULE,
    ResolvedRule,
    RuleSet,
    out_of_range,
    threshold_finding,
)
from gateway.core.detectors.trend import Trend
from gateway.core.detectors.zscore import ZScore
from gateway.core.model import NO_FINDINGS, TREND, ZSCORE, Finding, Reading, Score
from gateway.core.snapshots import json_pieces

__all__ = [
    "NO_RULE",
    "Detectors",
    "OfflineTracker",
    "ResolvedRule",
    "RuleSet",
    "Trend",
    "ZScore",
    "out_of_range",
]

_INF = math.inf
_SNAPSHOT_VERSION = 1


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
            f = threshold_finding(r.sensor, v, st.rule)
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
