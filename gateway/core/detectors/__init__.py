"""Per-series anomaly detection (SPEC §5): z-score, threshold rules, trend, offline.

Pure and synchronous: no I/O, no logging, no clock reads (callers pass `now`).
`Detectors.score(reading)` is the hot path; everything it keeps per series
(equipment, sensor) lives in one slotted `_Series` object. One module per detector:

- `zscore`: rolling z-score (`ZScore`), river's rolling variance kept in a flat ring;
- `trend`: least-squares slope per minute (`Trend`, rule key ``max_slope_per_min``);
- `rules`: ``[[rules]]`` limits and threshold findings (`RuleSet`);
- `offline`: deadman per equipment (`OfflineTracker`).

Why ~440 lines here: `Detectors` is where the per-series detectors meet — the z-score
alert gate reads the drift detector and the equipment episode of the same reading,
and the snapshot covers them all; each detector itself is its own module.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterator
from typing import Any

import orjson

from gateway.config import DetectionConfig
from gateway.core.detectors.drift import LevelShift
from gateway.core.detectors.equipment import Episode, EquipmentShift
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
    """Detector state of one series, and where its z-score alert stands.

    ``zheld``: 0 no z-score alert, 1 one is active (raised), 2 one would be active but
    is part of its equipment's episode (absorbed, not published). ``zrun`` / ``zmax``:
    the readings in a row beyond the threshold and their largest |z|; ``zok`` the
    readings in a row below threshold - deadband while held.
    """

    __slots__ = (
        "ep",
        "hi",
        "line",
        "lo",
        "rule",
        "shift",
        "trend",
        "zheld",
        "zlast",
        "zmax",
        "zok",
        "zrun",
        "zs",
    )

    def __init__(
        self,
        zs: ZScore,
        rule: ResolvedRule,
        line: str,
        trend: Trend | None,
        shift: LevelShift | None,
        ep: EquipmentShift | None,
    ) -> None:
        self.zs = zs
        self.rule = rule
        self.line = line
        self.trend = trend
        self.shift = shift
        self.ep = ep  # the equipment's episode detector (shared by its series)
        self.zheld = 0
        self.zrun = 0
        self.zmax = 0.0
        self.zok = 0
        self.zlast: Finding | None = None
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

    __slots__ = (
        "_after",
        "_clear_after",
        "_confirm",
        "_crit",
        "_equipment",
        "_held_below",
        "_med",
        "_per_equipment",
        "_series",
        "_suppress",
        "_thr",
        "cfg",
        "episodes",
        "rules",
        "suppressed",
    )

    def __init__(self, cfg: DetectionConfig, rules: RuleSet, clear_after: int = 5) -> None:
        self.cfg = cfg
        self.rules = rules
        self._thr = cfg.threshold_sigma
        self._med = cfg.medium_sigma
        self._crit = cfg.critical_sigma
        self._after = cfg.zscore_alert_after
        self._held_below = cfg.threshold_sigma - cfg.zscore_deadband
        self._clear_after = clear_after  # the alert manager's: a held z alert ends with it
        self._suppress = cfg.equipment.enabled and cfg.equipment.suppress_zscore
        self._confirm = cfg.zscore_confirm_sigma if cfg.equipment.enabled else 0.0
        self._series: dict[tuple[str, str], _Series] = {}
        self._equipment: dict[str, EquipmentShift] = {}
        self._per_equipment: dict[str, int] = {}  # series per equipment
        # (equipment, line, Episode) transitions of equipment episodes, for the alerts
        self.episodes: list[tuple[str, str, Episode]] = []
        # z-score alerts not published: shorter than zscore_alert_after (on_delay) or
        # part of an active equipment episode (by_design)
        self.suppressed = {"on_delay": 0, "by_design": 0}

    @property
    def series_count(self) -> int:
        return len(self._series)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._series

    @property
    def episodes_active(self) -> int:
        return sum(1 for ep in self._equipment.values() if ep.active)

    def episode_active(self, equipment: str) -> bool:
        ep = self._equipment.get(equipment)
        return ep is not None and ep.active

    def series_keys(self) -> list[tuple[str, str]]:
        return list(self._series)

    def forget(self, key: tuple[str, str]) -> bool:
        """Drop the state of series (equipment, sensor); True if it existed.

        Its sensor leaves the equipment's episode detector; the detector itself goes with
        the equipment's last series, unless an episode is active (its alert ends with the
        equipment: `forget_equipment`).
        """
        st = self._series.pop(key, None)
        if st is None:
            return False
        eq = key[0]
        counts = self._per_equipment
        n = counts.get(eq, 1) - 1
        if n > 0:
            counts[eq] = n
        else:
            counts.pop(eq, None)
        ep = st.ep
        if ep is not None:
            ep.drop(key[1])
            if n <= 0 and not ep.active and self._equipment.get(eq) is ep:
                del self._equipment[eq]
        return True

    def forget_equipment(self, equipment: str) -> int:
        """Drop every series of `equipment` and its episode detector; how many series."""
        keys = [k for k in self._series if k[0] == equipment]
        for k in keys:
            del self._series[k]
        self._per_equipment.pop(equipment, None)
        self._equipment.pop(equipment, None)
        return len(keys)

    def drain_episodes(self) -> list[tuple[str, str, Episode]]:
        out, self.episodes = self.episodes, []
        return out

    def _episode_detector(self, equipment: str) -> EquipmentShift | None:
        e = self.cfg.equipment
        if not e.enabled:
            return None
        ep = self._equipment.get(equipment)
        if ep is None:
            ep = self._equipment[equipment] = EquipmentShift(
                e.warmup,
                e.baseline_s,
                e.fast_s,
                e.on_sigma,
                e.off_sigma,
                e.on_delay_s,
                e.off_delay_s,
                e.accept_s,
            )
        return ep

    def _new(self, key: tuple[str, str], line: str) -> _Series:
        # names are kept once, not once per series: an equipment's name is shared by its
        # sensors, a sensor's name ("flow") by every equipment that has one
        key = (sys.intern(key[0]), sys.intern(key[1]))
        line = sys.intern(line)
        c = self.cfg
        rule = self.rules.resolve(key[0], key[1], line)
        zs = ZScore(c.window, c.warmup, c.threshold_sigma, c.shift_after)
        slope = rule.max_slope_per_min
        trend = Trend(c.window, slope, c.warmup) if slope is not None else None
        d = c.drift
        ep = self._episode_detector(key[0])
        warm = c.equipment.warmup if ep is not None else c.window
        shift = LevelShift(d.delta, d.clock, d.gate_sigma, warm) if d.enabled else None
        st = self._series[key] = _Series(zs, rule, line, trend, shift, ep)
        counts = self._per_equipment
        counts[key[0]] = counts.get(key[0], 0) + 1
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
        if z is None:  # warming up (also again after a level shift): a held alert stays
            f = st.zlast if st.zheld == 1 else None
        elif st.zheld or st.zrun or z >= self._thr or z <= -self._thr:
            f = self._z_alert(st, r, z, zs)
        else:  # the common case: a normal reading, no alert held, no run to end
            f = None
        if f is not None:
            if findings is None:
                findings = [f]
            else:
                findings.append(f)
        zs.learn_scored(v, z)
        ep = st.ep
        shift = st.shift
        change = None
        if shift is not None:
            if shift.update(v):  # ADWIN found a change: is it a level shift of note?
                change = shift.gated(ep.std_of(r.sensor) if ep is not None else zs.std)
            if change is not None:
                zs.rebase(v)  # the new level is the baseline from now on
        if ep is not None:
            episode = ep.update(r.ts, r.sensor, v, change)
            if episode is not None:
                self.episodes.append((r.equipment, r.line, episode))
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

    def _z_alert(self, st: _Series, r: Reading, z: float, zs: ZScore) -> Finding | None:
        """The z-score finding for the alert manager, if the z-score alert is to be active.

        A run of readings beyond the threshold raises once it is `zscore_alert_after`
        long, or at once when one reading reaches the critical band; an active alert is
        kept while |z| stays above threshold - deadband and ends with the alert
        manager's `clear_after` readings below it.
        """
        az = z if z >= 0.0 else -z
        sensor, v = r.sensor, r.value
        held = st.zheld
        if held:
            if az >= self._held_below:
                st.zok = 0
                if held == 1:
                    f = st.zlast = self._z_finding(sensor, v, z, zs, max(az, self._thr))
                    return f
                return None
            st.zok += 1
            if st.zok >= self._clear_after:
                st.zheld = st.zok = st.zrun = 0
                st.zmax = 0.0
                st.zlast = None
            return None
        if az < self._thr:
            if st.zrun:
                self.suppressed["on_delay"] += 1  # an excursion too short to raise
                st.zrun = 0
                st.zmax = 0.0
            return None
        st.zrun += 1
        if az > st.zmax:
            st.zmax = az
        if st.zmax < self._crit:
            if st.zrun < self._after:
                return None
            ep = st.ep
            if self._confirm and ep is not None:
                d = ep.departure(sensor)
                if d is not None and d < self._confirm:
                    return None  # within its long baseline: a slow trend, not an alarm
        st.zok = 0
        ep = st.ep
        if self._suppress and ep is not None and ep.active:
            st.zheld = 2  # part of the equipment's episode: absorbed, counted
            self.suppressed["by_design"] += 1
            if st.zmax >= self._crit:  # but the episode got worse: it escalates
                f = self._z_finding(r.sensor, v, z, zs, st.zmax)
                self.episodes.append((r.equipment, st.line, ep.worse(r.sensor, v, f.message, r.ts)))
            return None
        st.zheld = 1
        f = st.zlast = self._z_finding(sensor, v, z, zs, st.zmax)
        return f

    def _z_finding(self, sensor: str, v: float, z: float, zs: ZScore, band: float) -> Finding:
        az = abs(z)
        sev = "critical" if band >= self._crit else "medium" if band >= self._med else "low"
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
                    "drift": st.shift.to_state() if st.shift is not None else None,
                    "gate": [
                        st.zheld,
                        st.zrun,
                        st.zmax,
                        st.zok,
                        None if st.zlast is None else dataclasses.asdict(st.zlast),
                    ],
                }
            )
        return items

    def episodes_snapshot(self) -> bytes:
        """The equipment episode detectors' state (references, episode in progress)."""
        return orjson.dumps(
            {
                "version": _SNAPSHOT_VERSION,
                "equipment": {eq: ep.to_state() for eq, ep in self._equipment.items()},
            }
        )

    def restore_episodes(self, data: bytes) -> int:
        """Load `episodes_snapshot()` output; raises ValueError on anything else."""
        if not self.cfg.equipment.enabled:
            return 0
        try:
            doc = orjson.loads(data)
            if doc.get("version") != _SNAPSHOT_VERSION:
                raise ValueError(f"unknown snapshot version {doc.get('version')!r}")
            states = dict(doc["equipment"])
            for eq, st in states.items():
                ep = self._episode_detector(str(eq))
                assert ep is not None
                ep.load_state(st)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"not an episode snapshot: {e}") from None
        return len(states)

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
                dstate = rec.get("drift")
                if st.shift is not None and dstate is not None:
                    st.shift.load_state(dstate)
                gate = rec.get("gate")
                if gate is not None:
                    held, run, zmax, ok, last = gate
                    st.zheld, st.zrun, st.zmax, st.zok = int(held), int(run), float(zmax), int(ok)
                    st.zlast = None if last is None else Finding(**last)
                st.ep = self._episode_detector(key[0])  # this instance's, not the scratch one
                loaded[key] = st
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a detector snapshot: {e}") from None
        self._series.update(loaded)
        counts: dict[str, int] = {}
        for eq, _ in self._series:
            counts[eq] = counts.get(eq, 0) + 1
        self._per_equipment = counts
        return len(loaded)


def _logical(buf: list[Any], pos: int, window: int) -> list[Any]:
    """A saved ring buffer in oldest-first order."""
    if len(buf) < window:
        return list(buf)
    return list(buf[pos:]) + list(buf[:pos])
